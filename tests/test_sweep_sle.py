"""sweep_model on the composed SLE model with the SLE metric set (slow: compiles the 29-state model under vmap and in
the ensemble engine)."""

import jax.numpy as jnp
import numpy as np
import pytest

import carkinetics as ck


@pytest.mark.slow
def test_sle_sweep_matches_single_simulations():
    from carkinetics.models.sle import erlangen_regimen, load_preset, sle_metrics

    model = load_preset("human")
    regimen = erlangen_regimen(model)
    ts = jnp.linspace(-6.0, 120.0, 253)
    rho = float(model.car.rho) * np.array([0.8, 1.0, 1.25])
    res = ck.sweep_model(model, regimen, ts, {"car.rho": rho}, metrics=sle_metrics, chunk_size=2,
                         rtol=1e-6, atol=1e-6, max_steps=50_000, progress=False, engine="vmap")
    assert res.n_failed == 0 and res.engine == "vmap"
    for i in (0, 2):
        # ck.simulate's defaults for this model class: diffrax.Tsit5(), rtol = atol = 1e-6 (the vmap engine's too)
        sol = ck.simulate(model.replace({"car.rho": rho[i]}), regimen, ts, max_steps=50_000)
        ref = sle_metrics(sol)
        for k, v in ref.items():
            assert res.outputs[k][i] == pytest.approx(float(v), rel=1e-7, abs=1e-9), k
    # The default engine (batched ensemble, the model class's EnsembleRodas5 at the same tolerances) agrees to 1e-3
    # relative (another method and step sequence at rtol = atol = 1e-6 on a 29-state model; metrics read off a
    # 0.5-day grid).
    ens = ck.sweep_model(model, regimen, ts, {"car.rho": rho}, metrics=sle_metrics, chunk_size=3,
                         rtol=1e-6, atol=1e-6, max_steps=50_000, progress=False)
    assert ens.engine == "ensemble" and ens.n_failed == 0
    for k in res.outputs:
        np.testing.assert_allclose(ens.outputs[k], res.outputs[k], rtol=1e-3, atol=1e-6, err_msg=k)
    out = res.outputs
    # Deep B-cell aplasia after CAR-T (clinical: months), and a faster-expanding CAR-T peaks higher.
    assert np.all(out["B aplasia"] > 20.0) and np.all(out["B nadir"] < 5.0)
    assert out["CAR Cmax"][2] > out["CAR Cmax"][1] > out["CAR Cmax"][0]
    assert np.all((out["CRS grade"] >= 0.0) & (out["CRS grade"] <= 4.0))
