"""`sweep_model`'s engines: the default is the batched ensemble solver and agrees with `engine="vmap"` to the solver
tolerance; the solver object decides the engine (a diffrax solver -> vmap, an ensemble method -> the batched
engine); conflicting `engine`/`solver` pairs raise; `slots` (a field of the ensemble method) does not change results;
`max_steps` bounds the steps over the whole horizon, identically in `simulate` and `simulate_ensemble`."""

import diffrax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import carkinetics as ck
from carkinetics.models import OneCompartmentPK, TwoCompartmentPK
from carkinetics.models.sle import SLECarTModel

TS = jnp.linspace(0.0, 3.0, 31)
DOSES = ck.Regimen([ck.Bolus(0.0, 45.0, "central", ii=1.0, addl=1)])  # two doses: three segments
KEYS = ("concentration_cmax", "concentration_tmax", "concentration_auc", "concentration_last")
SAMPLES = {"cl": np.linspace(100.0, 300.0, 9), "q": np.linspace(150.0, 250.0, 9)[::-1]}


def test_default_is_ensemble_and_matches_vmap():
    args = (TwoCompartmentPK(), DOSES, TS, SAMPLES)
    default = ck.sweep_model(*args, chunk_size=8, progress=False)
    explicit = ck.sweep_model(*args, chunk_size=8, progress=False, engine="ensemble")
    method = ck.sweep_model(*args, chunk_size=8, progress=False, solver=ck.EnsembleTsit5())
    small = ck.sweep_model(*args, chunk_size=8, progress=False, solver=ck.EnsembleTsit5(slots=3))
    ref = ck.sweep_model(*args, chunk_size=8, progress=False, engine="vmap")
    assert default.engine == explicit.engine == method.engine == small.engine == "ensemble"
    assert ref.engine == "vmap"
    assert default.n_failed == 0 and ref.n_failed == 0
    for k in KEYS:
        np.testing.assert_array_equal(default.outputs[k], explicit.outputs[k])  # the same program
        np.testing.assert_array_equal(default.outputs[k], method.outputs[k])  # the default method, named
        np.testing.assert_allclose(small.outputs[k], default.outputs[k], rtol=1e-13)  # slots do not change results
        # Both engines run Tsit5 at rtol 1e-6 / atol 1e-8 with different step sequences: agreement to 1e-5.
        np.testing.assert_allclose(default.outputs[k], ref.outputs[k], rtol=1e-5, atol=1e-9)
    # Cmax right after the second dose (day 1): at least the first dose's 45 mg / Vc.
    assert np.all(default.outputs["concentration_cmax"] >= 45.0 / float(TwoCompartmentPK().v1))


def test_solver_decides_the_engine_and_implicit_methods_agree():
    args = (TwoCompartmentPK(), DOSES, TS, SAMPLES)
    ens = ck.sweep_model(*args, chunk_size=9, progress=False, solver=ck.EnsembleRodas5())
    ref = ck.sweep_model(*args, chunk_size=9, progress=False, solver=diffrax.Kvaerno5())  # a diffrax solver: vmap
    assert ens.engine == "ensemble" and ref.engine == "vmap"
    assert ens.n_failed == 0 and ref.n_failed == 0
    for k in KEYS:
        # Rodas5 vs Kvaerno5, both rtol 1e-6: agreement to 1e-4 (two methods, each within ~1e-5 of the truth).
        np.testing.assert_allclose(ens.outputs[k], ref.outputs[k], rtol=1e-4, atol=1e-8)
    # The model class decides the defaults: explicit methods for a non-stiff class, implicit ones for a stiff class
    # (the SLE model), and a class may name its own per-member diffrax solver.
    assert type(ck.default_solver(TwoCompartmentPK())) is ck.EnsembleTsit5
    assert type(ck.default_solver(TwoCompartmentPK(), "vmap")) is diffrax.Tsit5
    assert type(ck.default_solver(SLECarTModel)) is ck.EnsembleRodas5
    assert type(ck.default_solver(SLECarTModel, "vmap")) is diffrax.Kvaerno5

    class OwnSolverPK(OneCompartmentPK):
        diffrax_solver = diffrax.Dopri8()

    assert type(ck.default_solver(OwnSolverPK, "vmap")) is diffrax.Dopri8
    assert type(ck.default_solver(OwnSolverPK)) is ck.EnsembleTsit5

    class StiffPK(OneCompartmentPK):
        stiff = True

    assert type(ck.default_solver(StiffPK)) is ck.EnsembleRodas5
    assert type(ck.default_solver(StiffPK, "vmap")) is diffrax.Kvaerno5
    with pytest.raises(ValueError, match="`engine` must be one of"):
        ck.default_solver(StiffPK, "scan")


def test_any_diffrax_solver_runs_on_vmap_and_conflicts_raise():
    cl = np.linspace(50.0, 200.0, 5)
    args = (OneCompartmentPK(), ck.Bolus(0.0, 100.0, "central"), TS, {"cl": cl})
    v = float(OneCompartmentPK().v)
    exact_last = 100.0 / v * np.exp(-cl / v * 3.0)
    res = ck.sweep_model(*args, progress=False, solver=diffrax.Dopri5())  # no ensemble counterpart needed: vmap
    assert res.engine == "vmap"
    np.testing.assert_allclose(res.outputs["concentration_last"], exact_last, rtol=1e-5, atol=1e-9)  # atol 1e-8 mg
    same = ck.sweep_model(*args, progress=False, solver=diffrax.Dopri5(), engine="vmap")  # consistent: accepted
    np.testing.assert_array_equal(same.outputs["concentration_last"], res.outputs["concentration_last"])
    # A solver of one engine with the other engine named: ValueError naming both.
    with pytest.raises(ValueError, match=r"`solver` Tsit5 runs on the 'vmap' engine but `engine` = 'ensemble'"):
        ck.sweep_model(*args, progress=False, solver=diffrax.Tsit5(), engine="ensemble")
    with pytest.raises(
        ValueError,
        match=r"`solver` EnsembleTsit5 runs on the 'ensemble' engine but `engine` = "
        r"'vmap'",
    ):
        ck.sweep_model(*args, progress=False, solver=ck.EnsembleTsit5(), engine="vmap")
    with pytest.raises(ValueError, match="`engine` must be one of"):
        ck.sweep_model(*args, progress=False, engine="jit")
    with pytest.raises(ValueError, match="`solver` must be a diffrax solver"):
        ck.sweep_model(*args, progress=False, solver="tsit5")


@pytest.mark.parametrize("solver", [diffrax.Tsit5(), ck.EnsembleTsit5()], ids=["diffrax", "ensemble"])
def test_max_steps_counts_the_whole_horizon(solver):
    # Three segments (doses at days 0 and 1, end at day 3). A run that needs K steps in all succeeds with
    # max_steps = K and fails with max_steps_reached at K - 1, although every segment needs fewer than K - 1 steps
    # (the old per-segment budget of `simulate` would have passed). The same K, and the same outcome, whether a
    # member goes through `simulate` or through `simulate_ensemble` (vmap of the per-member engine with a diffrax
    # solver, the batched engine with an ensemble method), where every member has its own budget.
    models = jax.vmap(lambda cl: OneCompartmentPK(cl=cl))(jnp.array([50.0, 400.0]))
    one = OneCompartmentPK(cl=50.0)
    full = ck.simulate(one, DOSES, TS, solver=solver)
    k = int(full.num_steps)
    assert k > 3 and int(full.num_accepted_steps) + int(full.num_rejected_steps) == k
    batch = ck.simulate_ensemble(models, DOSES, TS, solver=solver)
    assert int(batch.num_steps[0]) == k
    k1 = int(batch.num_steps[1])
    assert k1 > k  # the faster clearance needs more steps
    short = ck.simulate(one, DOSES, TS, solver=solver, max_steps=k - 1, throw=False)
    assert short.result == ck.RESULTS.max_steps_reached and not bool(short.ok)
    ok = ck.simulate(one, DOSES, TS, solver=solver, max_steps=k, throw=False)
    assert bool(ok.ok) and int(ok.num_steps) == k
    np.testing.assert_array_equal(np.asarray(ok.y_array), np.asarray(full.y_array))
    # In a batch every member has its own budget: with max_steps = K the first member (K steps) succeeds with the
    # steps it takes without a budget, the second (K1 > K steps) fails.
    part = ck.simulate_ensemble(models, DOSES, TS, solver=solver, max_steps=k, throw=False)
    np.testing.assert_array_equal(np.asarray(part.ok), [True, False])
    np.testing.assert_array_equal(np.asarray(part.result == ck.RESULTS.max_steps_reached), [False, True])
    np.testing.assert_array_equal(np.asarray(part.y_array[0]), np.asarray(batch.y_array[0]))  # steps unchanged
    assert bool(jnp.isnan(part.y_array[1, -1, 0]))  # save times the failed member never reached


def test_max_steps_in_sweeps_fails_stiff_members_in_both_engines():
    # A stiff member (huge CL) needs more steps than allowed and fails with both engines; the others succeed.
    cl = np.array([50.0, 1e5, 60.0])
    args = (OneCompartmentPK(), DOSES, TS, {"cl": cl})
    ens = ck.sweep_model(*args, progress=False, max_steps=60)
    ref = ck.sweep_model(*args, progress=False, max_steps=60, engine="vmap")
    np.testing.assert_array_equal(ens.ok, [True, False, True])
    np.testing.assert_array_equal(ref.ok, ens.ok)
    assert np.all(np.isnan(ens.outputs["concentration_auc"][1]))
    assert np.all(np.isnan(ref.outputs["concentration_auc"][1]))
