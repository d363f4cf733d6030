"""Every batched analysis runs on the batched ensemble engine by default, and agrees with the vmap engine
(`jax.vmap` of the per-member diffrax engine) to 1e-6 relative on a small problem solved at tight tolerances."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import carkinetics as ck
from carkinetics.models import TwoCompartmentPK

TOL = dict(rtol=1e-10, atol=1e-12)
TS = jnp.linspace(0.0, 3.0, 31)
REGIMEN = ck.Regimen([ck.Bolus(0.0, 100.0, "central"), ck.Infusion(1.0, "central", amount=50.0, duration=0.25)])
MODEL = TwoCompartmentPK()
REL = 1e-6


def _metrics(sol):
    c = sol.observables.concentration
    return {"auc": ck.metrics.auc(sol.ts, c), "cmax": ck.metrics.cmax(sol.ts, c), "last": c[-1]}


def _close(a, b):
    a, b = np.asarray(a, float), np.asarray(b, float)
    assert a.shape == b.shape
    np.testing.assert_allclose(a, b, rtol=REL, atol=REL * np.max(np.abs(b)))


def test_sweep_model():
    samples = {"cl": np.linspace(4.0, 12.0, 6), "v1": np.linspace(30.0, 60.0, 6)}
    ens = ck.sweep_model(MODEL, REGIMEN, TS, samples, metrics=_metrics, chunk_size=4, progress=False, **TOL)
    assert ens.engine == "ensemble"
    vm = ck.sweep_model(
        MODEL, REGIMEN, TS, samples, metrics=_metrics, chunk_size=4, progress=False, engine="vmap", **TOL
    )
    assert vm.engine == "vmap"
    for k in ("auc", "cmax", "last"):
        _close(ens.outputs[k], vm.outputs[k])


def _gsa_inputs():
    names = ["cl", "v1", "q"]
    prob = {"names": names, "bounds": [[4.0, 12.0], [30.0, 60.0], [5.0, 20.0]]}
    return names, prob


def test_sobol():
    names, prob = _gsa_inputs()
    f = ck.model_function(MODEL, REGIMEN, TS, names, _metrics, **TOL)
    ens, x, res = ck.sobol_analysis(f, prob, 16, key=jax.random.key(0), progress=False, n_bootstrap=10)
    assert res.engine == "ensemble"
    g = ck.model_function(MODEL, REGIMEN, TS, names, _metrics, engine="vmap", **TOL)
    vm, x2, res2 = ck.sobol_analysis(g, prob, 16, key=jax.random.key(0), progress=False, n_bootstrap=10)
    assert res2.engine == "vmap"
    np.testing.assert_array_equal(x, x2)
    for k in ("auc", "cmax"):
        _close(res.outputs[k], res2.outputs[k])
        _close(ens[k].S1, vm[k].S1)
        _close(ens[k].ST, vm[k].ST)


def test_morris():
    names, prob = _gsa_inputs()
    f = ck.model_function(MODEL, REGIMEN, TS, names, _metrics, **TOL)
    ens, _, res = ck.morris_analysis(f, prob, 6, key=jax.random.key(1), progress=False, n_bootstrap=10)
    assert res.engine == "ensemble"
    g = ck.model_function(MODEL, REGIMEN, TS, names, _metrics, engine="vmap", **TOL)
    vm, _, res2 = ck.morris_analysis(g, prob, 6, key=jax.random.key(1), progress=False, n_bootstrap=10)
    assert res2.engine == "vmap"
    for k in ("auc", "last"):
        _close(ens[k].mu_star, vm[k].mu_star)
        _close(ens[k].sigma, vm[k].sigma)


A = TwoCompartmentPK(cl=2.0, v1=10.0, q=4.0, v2=20.0)
B = TwoCompartmentPK()
GROUPS = [
    ck.MechanismGroup("clearance", ("cl",)),
    ck.MechanismGroup("volumes", ("v1", "v2")),
    ck.MechanismGroup("distribution", ("q",)),
]


def test_shapley():
    exp = ck.Experiment(REGIMEN, TS, _metrics, **TOL)
    ens = ck.shapley_attribution(exp, A, B, GROUPS)
    vm = ck.shapley_attribution(exp, A, B, GROUPS, engine="vmap")
    assert (ens.engine, vm.engine) == ("ensemble", "vmap")
    for k in ("auc", "cmax", "last"):
        _close(ens.values[k], vm.values[k])
        _close(ens.total[k], vm.total[k])
        # efficiency: the attributions sum to the gap
        np.testing.assert_allclose(np.sum(ens.values[k]), ens.total[k], rtol=1e-9)


def test_translation_map():
    exp = ck.Experiment(REGIMEN, TS, _metrics, **TOL)
    units = {"auc": "mg d/L", "cmax": "mg/L", "last": "mg/L"}
    ens = ck.translation_map(exp, A, B, GROUPS, units=units, n_samples=3, key=jax.random.key(2))
    vm = ck.translation_map(exp, A, B, GROUPS, units=units, n_samples=3, key=jax.random.key(2), engine="vmap")
    assert (ens.engine, vm.engine) == ("ensemble", "vmap")
    _close(ens.shapley, vm.shapley)
    _close(ens.sample_shapley, vm.sample_shapley)
    _close(ens.value_b, vm.value_b)


def test_population():
    pop = ck.virtual_population(MODEL, jax.random.key(3), 12, omega={"cl": 0.3, "v1": 0.2})
    ens = ck.sweep_model(MODEL, REGIMEN, TS, pop.samples, metrics=_metrics, progress=False, **TOL)
    assert ens.engine == "ensemble"
    vm = ck.sweep_model(MODEL, REGIMEN, TS, pop.samples, metrics=_metrics, progress=False, engine="vmap", **TOL)
    _close(ens.outputs["auc"], vm.outputs["auc"])
    bands_e = ck.percentile_bands(ens.outputs["auc"][:, None], (5.0, 50.0, 95.0), ok=ens.ok)
    bands_v = ck.percentile_bands(vm.outputs["auc"][:, None], (5.0, 50.0, 95.0), ok=vm.ok)
    _close(bands_e, bands_v)


def _calibration_problem():
    truth = TwoCompartmentPK(cl=8.0, v1=40.0)
    t_obs = jnp.array([0.1, 0.5, 1.2, 2.0, 3.0])
    y = ck.simulate(truth, REGIMEN, t_obs, **TOL).observables.concentration
    data = ck.TimeCourseData("concentration", t_obs, y, ck.LogNormalError(0.1))
    problem = ck.CalibrationProblem(MODEL, REGIMEN, [data], ["cl", "v1"], priors=None, n_grid=31, **TOL)
    zs = jnp.stack([problem.z0, problem.to_vector({"cl": 8.0, "v1": 40.0}), problem.z0 + 0.3])
    return problem, zs


def test_calibration_losses():
    problem, zs = _calibration_problem()
    # the ensemble engine's losses (one batched solve of all starts) equal the vmap engine's
    _close(problem.ensemble_losses(zs), jax.vmap(problem.loss)(zs))
    assert problem.ensemble_solver() == ck.default_solver(MODEL, "ensemble")


@pytest.mark.slow
def test_calibration_fit_and_gradients():
    problem, zs = _calibration_problem()
    assert ck.fit(problem, n_starts=2, adam_steps=0, lbfgs_steps=2).engine == "ensemble"
    loss_e, grad_e = jax.value_and_grad(lambda z: jnp.sum(problem.ensemble_losses(z)))(zs)
    loss_v, grad_v = jax.value_and_grad(lambda z: jnp.sum(jax.vmap(problem.loss)(z)))(zs)
    _close(loss_e, loss_v)
    _close(grad_e, grad_v)
