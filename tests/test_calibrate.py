"""Calibration machinery on the Stein 2019 model: recovery, gradients, identifiability, fit files, no retrace.

Synthetic data: Stein 2019 Table 1 values, 27 sampling days, log-normal noise sd 0.02 from numpy seed 0.
"""

import json
import math
import warnings

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import TraceCounter

import carkinetics as ck
import carkinetics._inference._identifiability as _ident
from carkinetics.models import Stein2019CK

NAMES = ["foldx", "tmax", "cmax", "alpha", "fb", "beta"]
DAYS = np.array(
    [1.0, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 14, 17, 21, 28, 35, 42, 56, 70, 90, 120, 150, 180, 240, 300, 365]
)
SIGMA = 0.02


def _synthetic(truth, seed=0, sigma=SIGMA):
    sol = ck.simulate(truth, None, jnp.asarray(DAYS), t0=0.0, rtol=1e-10, atol=1e-10)
    clean = np.asarray(sol.observables.transgene)
    rng = np.random.default_rng(seed)
    return clean * np.exp(sigma * rng.standard_normal(DAYS.shape))


@pytest.fixture(scope="module")
def truth():
    return Stein2019CK()


@pytest.fixture(scope="module")
def problem(truth):
    data = ck.TimeCourseData("transgene", jnp.asarray(DAYS), jnp.asarray(_synthetic(truth)), ck.LogNormalError(SIGMA))
    return ck.CalibrationProblem(truth, None, [data], NAMES, priors=None, n_grid=40)


@pytest.fixture(scope="module")
def fitted(problem):
    # starts perturbed from the truth by sd 0.3 on the log/logit scale (factors up to ~2); L-BFGS only
    starts = ck.make_starts(problem, jax.random.key(7), 4, scale=0.3, include_default=False)
    return ck.fit(problem, starts=starts, adam_steps=0, lbfgs_steps=60)


def test_parameter_recovery_stein(problem, fitted, truth):
    print(fitted.convergence_report())
    lap = ck.laplace(fitted, warn=False)
    print(fitted.parameter_table(lap.sd_z))
    true = np.array([getattr(truth, n) for n in NAMES])
    est = np.array([fitted.values()[n] for n in NAMES])
    rel = np.abs(est / true - 1)
    print("relative errors:", dict(zip(NAMES, np.round(rel, 4))))
    # every parameter is identifiable from these data: recovered within 5 % and within 3 Laplace sd
    assert np.all(rel <= 0.05), rel
    assert np.all(np.abs(est - true) <= 3 * lap.sd), (est - true) / lap.sd
    assert fitted.n_agree == 4 and bool(np.all(np.asarray(fitted.converged)))
    assert lap.warnings == ()


def test_loss_gradient_matches_finite_differences(problem):
    z = problem.z0 + jnp.array([0.1, -0.05, 0.08, -0.1, 0.2, 0.15])
    # autodiff gradient through the ODE solve (the batched program laplace() uses; priors=None so loss = data nll)
    zs = jnp.tile(z, (2 * len(NAMES), 1))
    g = np.asarray(_ident._grad_batch(problem, zs))[0]
    jloss = eqx.filter_jit(lambda p, q: p.loss(q))
    loss = lambda q: jloss(problem, q)
    h = 1e-5
    for i in range(len(NAMES)):
        e = jnp.zeros_like(z).at[i].set(h)
        fd = (float(loss(z + e)) - float(loss(z - e))) / (2 * h)
        assert abs(g[i] - fd) <= 1e-4 * max(1.0, abs(fd)), (NAMES[i], g[i], fd)


def test_identifiability_flags_unpinned_parameters(problem, fitted, truth):
    # Expansion-phase data only (27 points over days 0.5-13): the memory phase (fb, beta) cannot be determined.
    # Same shapes as the main problem, so the compiled fit/Hessian programs are reused (priors are values).
    early = np.linspace(0.5, 13.0, DAYS.shape[0])
    sol = ck.simulate(truth, None, jnp.asarray(early), t0=0.0, rtol=1e-10, atol=1e-10)
    clean = np.asarray(sol.observables.transgene)
    y = clean * np.exp(SIGMA * np.random.default_rng(1).standard_normal(early.shape))
    data = ck.TimeCourseData("transgene", jnp.asarray(early), jnp.asarray(y), ck.LogNormalError(SIGMA))
    prob = ck.CalibrationProblem(truth, None, [data], NAMES, priors="tags", n_grid=40, t_end=13.0)
    assert prob.ts.shape == problem.ts.shape
    with TraceCounter() as traces:
        res = ck.fit(prob, starts=np.asarray(fitted.z_starts), adam_steps=0, lbfgs_steps=60)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            ck.laplace(res)
            prof_beta = ck.profile_likelihood(res, "beta", n_points=5, steps=80, span=1.0)
            prof_cmax = ck.profile_likelihood(res, "cmax", n_points=5, steps=80, span=1.0)
    texts = [str(w.message) for w in caught if issubclass(w.category, ck.IdentifiabilityWarning)]
    print(*texts, prof_beta.summary(), prof_cmax.summary(), sep="\n")
    assert traces["_run_multistart_ensemble"] == 0 and traces["_run_multistart"] == 0
    assert traces["_grad_batch"] == 0
    for name in ("fb", "beta"):
        assert any(f"{name!r} is not informed" in t for t in texts), name
    assert not any("'cmax' is not informed" in t or "'tmax' is not informed" in t for t in texts)
    assert any(t.startswith("Non-identifiable direction") for t in texts)
    # the data profile of beta is flat (rise < 0.1 over a factor e either way); cmax's rises above 1.92 both sides
    assert not prof_beta.identifiable and float(np.max(prof_beta.delta)) < 0.1
    assert prof_cmax.identifiable and float(np.min(prof_cmax.delta[[0, -1]])) > _ident.CHI2_95_HALF
    assert traces["_profile_batch"] == 1  # one compile for both parameters


def test_multistart_no_retrace(problem, fitted):
    starts = ck.make_starts(problem, jax.random.key(11), 4, scale=0.2, include_default=False)
    with TraceCounter() as traces:
        res = ck.fit(problem, starts=starts, adam_steps=0, lbfgs_steps=60)
    assert traces["_run_multistart_ensemble"] == 0 and traces["_run_multistart"] == 0
    assert abs(float(res.loss) - float(fitted.loss)) < 1e-6 * abs(float(fitted.loss))


def test_fit_file_roundtrip(tmp_path, fitted, truth):
    p = tmp_path / "stein_fit.json"
    doc = ck.save_fit(p, fitted, data_files=[], script="tests/test_calibrate.py", notes="synthetic")
    assert doc["parameters"]["alpha"]["tag"] == "F" and doc["parameters"]["alpha"]["prior_tag"] == "R"
    vals = ck.load_fit(p)
    assert vals == pytest.approx(fitted.values(), rel=1e-15)
    m = ck.apply_fit(truth, p)
    assert float(m.beta) == pytest.approx(fitted.values()["beta"], rel=1e-15)
    prov = json.loads(p.read_text())["provenance"]
    assert prov["carkinetics_version"] == ck.__version__ and math.isfinite(prov["loss"]) and prov["date"]
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"format": "other"}))
    with pytest.raises(ValueError, match="is not a 'carkinetics-fit/1' file"):
        ck.load_fit(bad)
    with pytest.raises(ValueError, match="Unknown parameter"):
        ck.apply_fit(truth, {"nope": 1.0})


def test_problem_validation(truth):
    data = ck.TimeCourseData("transgene", jnp.array([1.0]), jnp.array([2.0]), ck.LogNormalError(0.1))
    with pytest.raises(ValueError, match="not an observable"):
        ck.CalibrationProblem(
            truth, None, [ck.TimeCourseData("x", jnp.array([1.0]), jnp.array([2.0]), ck.LogNormalError(0.1))], ["alpha"]
        )
    with pytest.raises(ValueError, match="Unknown parameter"):
        ck.CalibrationProblem(truth, None, [data], ["nope"])
    with pytest.raises(ValueError, match="`priors` names"):
        ck.CalibrationProblem(truth, None, [data], ["alpha"], priors={"beta": 1.0})
    with pytest.raises(ValueError, match="equal length"):
        ck.TimeCourseData("transgene", jnp.array([1.0, 2.0]), jnp.array([2.0]), ck.LogNormalError(0.1))
    # priors from tags: R is tighter than M
    prob = ck.CalibrationProblem(truth, None, [data], ["alpha", "t_toci"], priors="tags")
    w = np.asarray(prob.prior_weight)
    assert w[0] == pytest.approx(1 / ck.PRIOR_SD["R"] ** 2) and w[1] == pytest.approx(1 / ck.PRIOR_SD["A"] ** 2)
    assert ck.PRIOR_SD["M"] > ck.PRIOR_SD["R"]
