"""`sweep_model`'s default engine is the batched ensemble solver (issue 8): default == EnsembleEvaluator, agreement
with vmap(simulate) to the solver tolerance, solver -> method mapping, fallbacks to vmap, `slots` pass-through."""

import diffrax
import jax.numpy as jnp
import numpy as np
import pytest

import carkinetics as ck
from carkinetics._analysis._sweep import ensemble_kwargs, ensemble_method_for, ensemble_unsupported
from carkinetics.models import OneCompartmentPK, TwoCompartmentPK

TS = jnp.linspace(0.0, 3.0, 31)
DOSES = ck.Regimen([ck.Bolus(0.0, 45.0, "central", ii=1.0, addl=1)])  # two doses: three segments
KEYS = ("concentration_cmax", "concentration_tmax", "concentration_auc", "concentration_last")
SAMPLES = {"cl": np.linspace(100.0, 300.0, 9), "q": np.linspace(150.0, 250.0, 9)[::-1]}


def test_default_is_ensemble_and_matches_vmap():
    args = (TwoCompartmentPK(), DOSES, TS, SAMPLES)
    default = ck.sweep_model(*args, chunk_size=8, progress=False)
    explicit = ck.sweep_model(*args, chunk_size=8, progress=False, evaluator=ck.EnsembleEvaluator())
    small = ck.sweep_model(*args, chunk_size=8, progress=False, evaluator=ck.EnsembleEvaluator(slots=3))
    ref = ck.sweep_model(*args, chunk_size=8, progress=False, evaluator=ck.vmap_evaluator)
    assert default.engine == "ensemble" and explicit.engine == "ensemble" and ref.engine == "vmap"
    assert default.n_failed == 0 and ref.n_failed == 0
    for k in KEYS:
        np.testing.assert_array_equal(default.outputs[k], explicit.outputs[k])  # the same program
        np.testing.assert_allclose(small.outputs[k], default.outputs[k], rtol=1e-13)  # slots do not change results
        # Both engines run Tsit5 at rtol 1e-6 / atol 1e-8 with different step sequences: agreement to 1e-5.
        np.testing.assert_allclose(default.outputs[k], ref.outputs[k], rtol=1e-5, atol=1e-9)
    # Cmax right after the second dose (day 1): at least the first dose's 45 mg / Vc.
    assert np.all(default.outputs["concentration_cmax"] >= 45.0 / float(TwoCompartmentPK().v1))


def test_implicit_solver_maps_to_rodas5_and_agrees():
    args = (TwoCompartmentPK(), DOSES, TS, SAMPLES)
    ens = ck.sweep_model(*args, chunk_size=9, progress=False, solver=diffrax.Kvaerno5())
    ref = ck.sweep_model(*args, chunk_size=9, progress=False, solver=diffrax.Kvaerno5(), evaluator=ck.vmap_evaluator)
    assert ens.engine == "ensemble" and ens.n_failed == 0
    for k in KEYS:
        # Rodas5 vs Kvaerno5, both rtol 1e-6: agreement to 1e-4 (two methods, each within ~1e-5 of the truth).
        np.testing.assert_allclose(ens.outputs[k], ref.outputs[k], rtol=1e-4, atol=1e-8)
    assert type(ensemble_method_for(diffrax.Kvaerno5())) is ck.EnsembleRodas5
    assert type(ensemble_method_for(diffrax.ImplicitEuler())) is ck.EnsembleRodas5
    assert type(ensemble_method_for(diffrax.Tsit5())) is ck.EnsembleTsit5
    assert type(ensemble_method_for(None)) is ck.EnsembleTsit5
    assert ensemble_method_for(diffrax.Dopri5()) is None


def test_fallback_to_vmap_and_explicit_errors():
    cl = np.linspace(50.0, 200.0, 5)
    args = (OneCompartmentPK(), ck.Bolus(0.0, 100.0, "central"), TS, {"cl": cl})
    v = float(OneCompartmentPK().v)
    exact_last = 100.0 / v * np.exp(-cl / v * 3.0)
    res = ck.sweep_model(*args, progress=False, solver=diffrax.Dopri5())  # no ensemble counterpart: vmap
    assert res.engine == "vmap"
    np.testing.assert_allclose(res.outputs["concentration_last"], exact_last, rtol=1e-5, atol=1e-9)  # atol 1e-8 mg
    for kw in ({"solver": diffrax.Dopri5()}, {"dt0": 0.01}, {"adjoint": diffrax.BacksolveAdjoint()}):
        assert ensemble_unsupported(kw) is not None
        with pytest.raises(ValueError, match="vmap_evaluator"):
            ck.sweep_model(*args, progress=False, evaluator=ck.EnsembleEvaluator(), **kw)
    assert ensemble_unsupported({"solver": diffrax.Tsit5(), "rtol": 1e-8, "adjoint": diffrax.ForwardMode()}) is None
    with pytest.raises(ValueError, match="give only one"):
        ck.sweep_model(*args, progress=False, solver=diffrax.Tsit5(),
                       evaluator=ck.EnsembleEvaluator(solver=ck.EnsembleTsit5()))
    with pytest.raises(ValueError, match="`evaluator` must be"):
        ck.sweep_model(*args, progress=False, evaluator="ensemble")


def test_max_steps_keeps_per_segment_meaning():
    # Three segments (doses at days 0 and 1, end at day 3): the ensemble gets 3 x max_steps for the whole horizon.
    kw = ensemble_kwargs(TwoCompartmentPK(), DOSES, TS, {"max_steps": 50, "solver": diffrax.Kvaerno5(), "rtol": 1e-7})
    assert kw == {"max_steps": 150, "method": ck.EnsembleRodas5(), "rtol": 1e-7}
    # A stiff member (huge CL) needs more steps than allowed and fails with both engines; the others succeed.
    cl = np.array([50.0, 1e5, 60.0])
    args = (OneCompartmentPK(), DOSES, TS, {"cl": cl})
    ens = ck.sweep_model(*args, progress=False, max_steps=60)
    ref = ck.sweep_model(*args, progress=False, max_steps=60, evaluator=ck.vmap_evaluator)
    np.testing.assert_array_equal(ens.ok, [True, False, True])
    np.testing.assert_array_equal(ref.ok, ens.ok)
    assert np.all(np.isnan(ens.outputs["concentration_auc"][1]))
