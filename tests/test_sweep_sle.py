"""sweep_model on the composed SLE model with `sle_metrics` (slow: compiles the 30-state model under vmap and in the ensemble engine)."""

import jax.numpy as jnp
import numpy as np
import pytest

import carkinetics as ck


@pytest.mark.slow
def test_sle_sweep_matches_single_simulations():
    from carkinetics.models.sle import SLECarTModel, erlangen_regimen, load_preset, simulate_default

    model = load_preset("human")
    regimen = erlangen_regimen(model)
    ts = jnp.linspace(-6.0, 120.0, 253)
    rho = float(model.car.rho) * np.array([0.8, 1.0, 1.25])
    res = ck.sweep_model(model, regimen, ts, {"car.rho": rho}, metrics=ck.sle_metrics, chunk_size=2,
                         solver=SLECarTModel.default_solver(), rtol=1e-6, atol=1e-6, max_steps=50_000,
                         progress=False, evaluator=ck.vmap_evaluator)
    assert res.n_failed == 0 and res.engine == "vmap"
    for i in (0, 2):
        sol = simulate_default(model.replace({"car.rho": rho[i]}), regimen, ts)
        ref = ck.sle_metrics(sol)
        for k, v in ref.items():
            assert res.outputs[k][i] == pytest.approx(float(v), rel=1e-7, abs=1e-9), k
    # The default engine (batched ensemble, EnsembleTsit5 at the same tolerances) agrees to 1e-3 relative
    # (a different step sequence at rtol = atol = 1e-6 on a 29-state model; metrics read off a 0.5-day grid).
    ens = ck.sweep_model(model, regimen, ts, {"car.rho": rho}, metrics=ck.sle_metrics, chunk_size=3,
                         solver=SLECarTModel.default_solver(), rtol=1e-6, atol=1e-6, max_steps=50_000,
                         progress=False)
    assert ens.engine == "ensemble" and ens.n_failed == 0
    for k in res.outputs:
        np.testing.assert_allclose(ens.outputs[k], res.outputs[k], rtol=1e-3, atol=1e-6, err_msg=k)
    out = res.outputs
    # Deep B-cell aplasia after CAR-T (clinical: months), and a faster-expanding CAR-T peaks higher.
    assert np.all(out["b_aplasia_days"] > 20.0) and np.all(out["b_nadir_pct"] < 5.0)
    assert out["car_cmax"][2] > out["car_cmax"][1] > out["car_cmax"][0]
    assert np.all((out["crs_grade_max"] >= 0.0) & (out["crs_grade_max"] <= 4.0))
