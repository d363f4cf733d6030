"""`fit`'s default engine evaluates all starts in one batched ensemble solve (issue 8): same optimum as the vmap
engine, parameter recovery, a failed start gets `failure_loss` without NaN gradients, no retrace, fallbacks.

Synthetic Stein 2019 data exactly as in test_calibrate.py (27 days, log-normal noise sd 0.02, numpy seed 0)."""

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import TraceCounter
from test_calibrate import NAMES, SIGMA, problem, truth  # noqa: F401  (shared module-scoped fixtures; F811 below)

import carkinetics as ck
import carkinetics._inference._fit as _fit

ALPHA = NAMES.index("alpha")


@pytest.fixture(scope="module")
def starts(problem):  # noqa: F811
    return ck.make_starts(problem, jax.random.key(7), 4, scale=0.3, include_default=False)


@pytest.fixture(scope="module")
def fitted(problem, starts):  # noqa: F811  same call as test_calibrate's fixture (shares its compiled program)
    return ck.fit(problem, starts=starts, adam_steps=0, lbfgs_steps=60)


@pytest.mark.slow  # ~45 s; the engines' agreement per batch path is in test_engine_paths.py
def test_ensemble_and_vmap_engines_reach_the_same_optimum(problem, starts, fitted, truth):  # noqa: F811
    ref = ck.fit(problem, starts=starts, adam_steps=0, lbfgs_steps=60, engine="vmap")
    assert fitted.engine == "ensemble" and ref.engine == "vmap"
    print(fitted.convergence_report(), ref.convergence_report(), sep="\n")
    # Judged with ONE loss (ck.simulate's), the two optima agree to 1e-6 relative; the engines' own losses differ
    # by the solvers' discretisation (rtol 1e-6), about 1e-6 relative here.
    loss = eqx.filter_jit(lambda p, z: p.loss(z))
    l_ens, l_vmap = float(loss(problem, fitted.z)), float(loss(problem, ref.z))
    assert abs(l_ens - l_vmap) <= 1e-6 * abs(l_vmap), (l_ens, l_vmap)
    assert abs(float(fitted.loss) - float(ref.loss)) <= 1e-5 * abs(float(ref.loss))
    est_e = np.array([fitted.values()[n] for n in NAMES])
    est_v = np.array([ref.values()[n] for n in NAMES])
    np.testing.assert_allclose(est_e, est_v, rtol=1e-4)
    # recovery: every parameter within 5 % of the truth, every start at the optimum
    true = np.array([getattr(truth, n) for n in NAMES])
    assert np.all(np.abs(est_e / true - 1) <= 0.05), est_e / true - 1
    assert fitted.n_agree == 4 and bool(np.all(np.asarray(fitted.converged)))


def test_failed_start_gets_failure_loss_no_nan_and_no_retrace(problem, starts, fitted):  # noqa: F811
    z = np.array(starts)
    z[1, ALPHA] += 30.0  # alpha ~ e^30 x default: the solve fails (step limit)
    # Raw batched loss and gradient: the failed member gets failure_loss (priors=None: no prior term) and a
    # finite (zero) gradient; the other rows equal ck.simulate's loss and gradient to the solver tolerance.
    vg = eqx.filter_jit(lambda p, zz: jax.value_and_grad(lambda q: jnp.sum(p.ensemble_losses(q)))(zz))
    _, g = vg(problem, jnp.asarray(z))
    vals = np.asarray(problem.ensemble_losses(jnp.asarray(z)))
    g = np.asarray(g)
    assert vals[1] == problem.failure_loss and np.all(np.isfinite(g)) and np.all(g[1] == 0.0)
    ok = [0, 2, 3]
    # Reverse-mode gradient of the batched solve vs central differences of the batched loss (step 1e-5 on z).
    h = 1e-5
    for j in range(len(NAMES)):
        e = np.zeros_like(z)
        e[:, j] = h
        fd = (
            np.asarray(problem.ensemble_losses(jnp.asarray(z + e)))
            - np.asarray(problem.ensemble_losses(jnp.asarray(z - e)))
        ) / (2 * h)
        np.testing.assert_allclose(g[ok, j], fd[ok], rtol=1e-4, atol=1e-4 * np.abs(fd[ok]).max(), err_msg=NAMES[j])
    # The fit: same shapes as `fitted`, so nothing is traced again; the failed start stays at failure_loss.
    with TraceCounter() as traces:
        res = ck.fit(problem, starts=z, adam_steps=0, lbfgs_steps=60)
    assert traces["_run_multistart_ensemble"] == 0 and traces["_run_multistart"] == 0
    losses = np.asarray(res.losses)
    assert losses[1] == problem.failure_loss and np.all(np.isfinite(np.asarray(res.z_final)))
    assert np.all(np.isfinite(np.asarray(res.history))) and np.all(np.isfinite(np.asarray(res.grad_norms)))
    np.testing.assert_allclose(losses[ok], float(fitted.loss), rtol=1e-6)
    assert res.best != 1


def test_adam_phase_fallbacks_and_validation(truth):  # noqa: F811
    # A two-parameter problem (cheap to compile) through Adam then L-BFGS: recovers the truth from noise-free data.
    days = np.array([1.0, 3.0, 7.0, 14.0, 28.0, 56.0, 90.0, 180.0])
    sol = ck.simulate(truth, None, jnp.asarray(days), t0=0.0, rtol=1e-10, atol=1e-10)
    clean = np.asarray(sol.observables.transgene)
    data = ck.TimeCourseData("transgene", jnp.asarray(days), jnp.asarray(clean), ck.LogNormalError(SIGMA))
    prob = ck.CalibrationProblem(truth, None, [data], ["alpha", "beta"], priors=None, n_grid=30)
    z0 = np.asarray(prob.z0)
    starts = z0[None, :] + np.array([[0.3, -0.3], [-0.3, 0.3], [0.2, 0.2]])
    res = ck.fit(prob, starts=starts, adam_steps=30, lbfgs_steps=25, slots=2)  # 2 slots: a queue of 3 members
    assert res.engine == "ensemble" and res.history.shape == (3, 56)
    est = np.array([res.values()["alpha"], res.values()["beta"]])
    np.testing.assert_allclose(est, [truth.alpha, truth.beta], rtol=2e-3)  # noise-free data, n_grid=30 interpolation
    # The Adam phase decreases every start's loss.
    h = np.asarray(res.history)
    assert np.all(h[:, 30] < h[:, 0])
    # The engine follows the problem's solver: a diffrax solver runs the vmap engine, an ensemble method (or none)
    # the batched engine; the zoom line search runs on vmap. An explicit engine that conflicts with either raises.
    dopri = ck.CalibrationProblem(
        truth, None, [data], ["alpha", "beta"], priors=None, n_grid=30, solver=diffrax.Dopri5()
    )
    rodas = ck.CalibrationProblem(
        truth, None, [data], ["alpha", "beta"], priors=None, n_grid=30, solver=ck.EnsembleRodas5()
    )
    assert _fit._choose_engine(dopri, None, "backtracking") == "vmap"
    assert _fit._choose_engine(prob, None, "zoom") == "vmap"
    assert _fit._choose_engine(prob, None, "backtracking") == "ensemble"
    assert _fit._choose_engine(rodas, None, "backtracking") == "ensemble"
    assert _fit._choose_engine(prob, "vmap", "backtracking") == "vmap"
    assert rodas.ensemble_solver(slots=2) == ck.EnsembleRodas5(slots=2)  # `fit(..., slots=)` sets the method's slots
    assert prob.ensemble_solver() == ck.default_solver(truth, "ensemble")
    with pytest.raises(ValueError, match="`engine` = 'ensemble' but the problem's solver Dopri5 runs on the 'vmap'"):
        ck.fit(dopri, starts=starts, engine="ensemble")
    with pytest.raises(
        ValueError, match="`engine` = 'vmap' but the problem's solver EnsembleRodas5 runs on the 'ensemble'"
    ):
        ck.fit(rodas, starts=starts, engine="vmap")
    with pytest.raises(ValueError, match="zoom line search runs on the vmap engine only"):
        ck.fit(prob, starts=starts, engine="ensemble", linesearch="zoom")
    with pytest.raises(ValueError, match="Dopri5 is a diffrax solver; batched losses need an ensemble method"):
        dopri.ensemble_losses(jnp.asarray(starts))
    with pytest.raises(ValueError, match="`engine` must be"):
        ck.fit(prob, starts=starts, engine="batched")
    with pytest.raises(ValueError, match="`slots` must be"):
        ck.fit(prob, starts=starts, slots=0)
