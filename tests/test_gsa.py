"""Global sensitivity: Ishigami Sobol indices vs the analytic values and vs SALib on the same samples; Morris vs
SALib and vs a linear model's exact effects; time-course outputs; failure dropping; model GSA; no retrace."""

import logging

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import carkinetics as ck
from carkinetics.models import OneCompartmentPK

A_ISH, B_ISH = 7.0, 0.1
PROBLEM = {"num_vars": 3, "names": ["x1", "x2", "x3"], "bounds": [[-np.pi, np.pi]] * 3}


def ishigami(x):
    return jnp.sin(x[0]) + A_ISH * jnp.sin(x[1]) ** 2 + B_ISH * x[2] ** 4 * jnp.sin(x[0])


def ishigami_np(x):
    return np.sin(x[:, 0]) + A_ISH * np.sin(x[:, 1]) ** 2 + B_ISH * x[:, 2] ** 4 * np.sin(x[:, 0])


def ishigami_analytic():
    a, b, pi = A_ISH, B_ISH, np.pi
    v1 = 0.5 * (1 + b * pi**4 / 5) ** 2
    v2 = a**2 / 8
    v13 = b**2 * pi**8 * (1 / 18 - 1 / 50)  # = 8 b^2 pi^8 / 225
    var = v1 + v2 + v13
    return np.array([v1, v2, 0.0]) / var, np.array([v1 + v13, v2, v13]) / var


def test_analytic_reference_values():
    # Guard the hand-written analytic formulas against the literature values (Saltelli 2008, Table 4.2 area).
    s1, st = ishigami_analytic()
    np.testing.assert_allclose(s1, [0.3139, 0.4424, 0.0], atol=1e-4)
    np.testing.assert_allclose(st, [0.5576, 0.4424, 0.2437], atol=1e-4)


def test_ishigami_sobol_matches_analytic_within_ci():
    idx, _, res = ck.sobol_analysis(
        ishigami,
        PROBLEM,
        8192,
        key=jax.random.key(0),
        confidence=0.99,
        n_bootstrap=200,
        chunk_size=8192,
        progress=False,
    )
    s1, st = ishigami_analytic()
    assert res.n_members == 8192 * 5 and res.n_failed == 0 and idx.n_base == 8192 and idx.n_dropped == 0
    # Within the 99 % bootstrap interval, and the interval itself is informative (narrower than 0.06).
    assert np.all(np.abs(idx.S1 - s1) <= idx.S1_conf), (idx.S1, s1, idx.S1_conf)
    assert np.all(np.abs(idx.ST - st) <= idx.ST_conf), (idx.ST, st, idx.ST_conf)
    assert np.all(idx.S1_conf < 0.06) and np.all(idx.ST_conf < 0.06)


def test_sobol_matches_salib_on_same_samples():
    from SALib.analyze import sobol as salib_sobol
    from SALib.sample import sobol as salib_sample

    x = salib_sample.sample(PROBLEM, 512, calc_second_order=False, seed=3)
    y = ishigami_np(x)
    ref = salib_sobol.analyze(PROBLEM, y, calc_second_order=False, num_resamples=100, seed=4)
    ours = ck.sobol_indices(PROBLEM, y, key=jax.random.key(4))
    np.testing.assert_allclose(ours.S1, ref["S1"], rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(ours.ST, ref["ST"], rtol=1e-10, atol=1e-12)
    # Bootstrap half-widths use different random resamples: agree to within 30 %.
    np.testing.assert_allclose(ours.S1_conf, ref["S1_conf"], rtol=0.3)
    np.testing.assert_allclose(ours.ST_conf, ref["ST_conf"], rtol=0.3)
    # And our own sampler has SALib's layout: SALib analyses our design identically.
    xo = ck.saltelli_sample(PROBLEM, 256, key=jax.random.key(5))
    yo = ishigami_np(xo)
    ref2 = salib_sobol.analyze(PROBLEM, yo, calc_second_order=False, num_resamples=10, seed=1)
    ours2 = ck.sobol_indices(PROBLEM, yo, key=jax.random.key(1))
    np.testing.assert_allclose(ours2.S1, ref2["S1"], rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(ours2.ST, ref2["ST"], rtol=1e-10, atol=1e-12)


def test_sobol_design_qmc_ishigami():
    # Scrambled Sobol' base samples (SciPy): the Saltelli layout, and indices within the 99 % bootstrap interval
    # of the analytic values.
    x = ck.saltelli_sample(PROBLEM, 4096, key=jax.random.key(11), method="sobol")
    assert x.shape == (4096 * 5, 3) and np.all(np.abs(x) <= np.pi)
    blocks = x.reshape(4096, 5, 3)
    np.testing.assert_array_equal(blocks[:, 1, 1:], blocks[:, 0, 1:])  # AB_1 = A except column 1 ...
    np.testing.assert_array_equal(blocks[:, 1, 0], blocks[:, 4, 0])  # ... which comes from B
    res = ck.sobol_indices(PROBLEM, ishigami_np(x), key=jax.random.key(12), confidence=0.99)
    s1, st = ishigami_analytic()
    assert np.all(np.abs(res.S1 - s1) <= res.S1_conf), (res.S1, s1, res.S1_conf)
    assert np.all(np.abs(res.ST - st) <= res.ST_conf), (res.ST, st, res.ST_conf)


def test_sobol_time_course_and_dropped_failures():
    x = ck.saltelli_sample(PROBLEM, 512, key=jax.random.key(7))
    t = np.linspace(0.0, 1.0, 4)
    y = ishigami_np(x)[:, None] * t[None, :] + x[:, 1:2] * (1 - t[None, :])  # (rows, 4)
    res = ck.sobol_indices(PROBLEM, y, key=jax.random.key(8))
    assert res.S1.shape == (3, 4) and res.ST_conf.shape == (3, 4)
    for j in range(1, 4):  # each column equals the scalar analysis of that column
        col = ck.sobol_indices(PROBLEM, y[:, j], key=jax.random.key(8))
        np.testing.assert_allclose(res.S1[:, j], col.S1, rtol=1e-10, atol=1e-12)
    # At t = 0 the output is x2 alone: the total indices of x1 and x3 are exactly 0 (AB_j = A in the output);
    # that of x2 is 1 up to Monte Carlo error (n = 512: a few per cent).
    np.testing.assert_allclose(res.ST[[0, 2], 0], [0.0, 0.0], atol=1e-12)
    assert res.ST[1, 0] == pytest.approx(1.0, abs=0.05)
    # Failed runs drop their whole base sample; the result equals analysing the kept base samples only.
    ok = np.ones(x.shape[0], bool)
    ok[[0, 5 * 10 + 2, 5 * 100 + 4]] = False  # base samples 0, 10 and 100
    dropped = ck.sobol_indices(PROBLEM, y[:, 3], key=jax.random.key(8), ok=ok)
    keep = np.ones(512, bool)
    keep[[0, 10, 100]] = False
    from SALib.analyze import sobol as salib_sobol

    manual = salib_sobol.analyze(
        PROBLEM, y[:, 3].reshape(512, 5)[keep].reshape(-1), calc_second_order=False, num_resamples=10, seed=1
    )
    assert dropped.n_dropped == 3 and dropped.n_base == 509
    np.testing.assert_allclose(dropped.S1, manual["S1"], rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(dropped.ST, manual["ST"], rtol=1e-10, atol=1e-12)


def test_morris_matches_salib_and_linear_truth():
    from SALib.analyze import morris as salib_morris
    from SALib.sample import morris as salib_sample

    x = salib_sample.sample(PROBLEM, 40, num_levels=4, seed=2)
    y = ishigami_np(x)
    ref = salib_morris.analyze(PROBLEM, x, y, num_levels=4, num_resamples=200, seed=3)
    ours = ck.morris_indices(PROBLEM, x, y, key=jax.random.key(3), n_bootstrap=200)
    np.testing.assert_allclose(ours.mu, ref["mu"], rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(ours.mu_star, ref["mu_star"], rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(ours.sigma, ref["sigma"], rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(ours.mu_star_conf, ref["mu_star_conf"], rtol=0.35, atol=1e-12)  # x2: |EE| constant
    # Our design is a valid Morris design that SALib analyses identically; linear model: EE = slope x width.
    prob = {"names": ["a", "b", "c"], "bounds": [[0.0, 2.0], [-1.0, 1.0], [5.0, 6.0]]}
    stats, _, _ = ck.morris_analysis(
        lambda v: 3.0 * v[0] - 2.0 * v[1] + 0.0 * v[2], prob, 12, key=jax.random.key(0), progress=False
    )
    np.testing.assert_allclose(stats.mu, [6.0, -4.0, 0.0], atol=1e-12)
    np.testing.assert_allclose(stats.mu_star, [6.0, 4.0, 0.0], atol=1e-12)
    np.testing.assert_allclose(stats.sigma, [0.0, 0.0, 0.0], atol=1e-12)
    xs = ck.morris_sample(prob, 12, key=jax.random.key(0), levels=6)
    sref = salib_morris.analyze(
        ck.gsa_problem(prob).to_salib(), xs, xs[:, 0] ** 2 + xs[:, 1] * xs[:, 2], num_levels=6, num_resamples=10, seed=1
    )
    sours = ck.morris_indices(prob, xs, xs[:, 0] ** 2 + xs[:, 1] * xs[:, 2], key=jax.random.key(1))
    np.testing.assert_allclose(sours.mu_star, sref["mu_star"], rtol=1e-10)
    # Time-course outputs: statistics per output column, equal to the scalar analyses.
    yt = np.stack([xs[:, 0] ** 2, xs[:, 1] * xs[:, 2]], axis=1)
    tc = ck.morris_indices(prob, xs, yt, key=jax.random.key(1))
    assert tc.mu_star.shape == (3, 2) and tc.sigma.shape == (3, 2)
    col = ck.morris_indices(prob, xs, yt[:, 0], key=jax.random.key(1))
    np.testing.assert_allclose(tc.mu_star[:, 0], col.mu_star, rtol=1e-12)
    np.testing.assert_allclose(tc.mu_star[0, 1], 0.0, atol=1e-12)  # x1 does not enter the second output


def test_model_sobol_one_compartment():
    # C(t) = D/V exp(-CL/V t): c0 = D/V depends on V only; c1 = C(1 d) is checked against the analytic formula.
    ts = jnp.linspace(0.0, 1.0, 11)
    f = ck.model_function(
        OneCompartmentPK(),
        ck.Bolus(0.0, 100.0, "central"),
        ts,
        ["cl", "v"],
        lambda sol: {
            "auc": ck.metrics.auc(sol.ts, sol.observables.concentration),
            "c0": sol.observables.concentration[0],
            "c1": sol.observables.concentration[-1],
        },
    )
    assert isinstance(f, ck.ParameterBatch) and f.engine == "ensemble"  # a batch function on the default engine
    prob = {"names": ["cl", "v"], "bounds": [[50.0, 200.0], [30.0, 60.0]]}
    # `has_ok` is inferred for a model function (it returns (outputs, ok))
    idx, x, res = ck.sobol_analysis(
        f, prob, 1024, key=jax.random.key(0), chunk_size=1024, confidence=0.99, progress=False
    )
    assert res.n_failed == 0 and res.n_members == 4096 and res.engine == "ensemble"
    # c0 = D/V depends on V only: exact zero total index for CL (Jansen: A and AB_cl give identical c0), and
    # S1 = ST = 1 for V within the 99 % bootstrap interval.
    np.testing.assert_allclose(idx["c0"].ST[0], 0.0, atol=1e-12)
    assert abs(idx["c0"].S1[1] - 1.0) <= idx["c0"].S1_conf[1] and abs(idx["c0"].ST[1] - 1.0) <= idx["c0"].ST_conf[1]
    # Same design, analytic outputs: the indices agree to the solver tolerance (rtol 1e-6).
    exact = ck.sobol_indices(prob, 100.0 / x[:, 1] * np.exp(-x[:, 0] / x[:, 1]), key=jax.random.key(9))
    np.testing.assert_allclose(idx["c1"].S1, exact.S1, atol=1e-5)
    np.testing.assert_allclose(idx["c1"].ST, exact.ST, atol=1e-5)
    assert idx["auc"].ST.shape == (2,) and np.all(np.isfinite(idx["auc"].S1))


def test_validation_errors():
    with pytest.raises(ValueError, match="missing the key 'bounds'"):
        ck.gsa_problem({"names": ["a"]})
    with pytest.raises(ValueError, match="lower < upper"):
        ck.gsa_problem({"names": ["a"], "bounds": [[1.0, 0.0]]})
    with pytest.raises(ValueError, match=r"n \(d \+ 2\)"):
        ck.sobol_indices(PROBLEM, np.ones(7), key=jax.random.key(0))
    with pytest.raises(ValueError, match="Morris trajectory design"):
        ck.morris_indices(PROBLEM, np.zeros((8, 3)), np.zeros(8), key=jax.random.key(0))
    with pytest.raises(ValueError, match="levels"):
        ck.morris_sample(PROBLEM, 4, key=jax.random.key(0), levels=3)


def test_no_recompile_on_new_values(caplog):
    # Shapes shared with the tests above, so that in a full run the warm-up calls compile nothing new.
    x = ck.saltelli_sample(PROBLEM, 256, key=jax.random.key(5))
    xm = ck.morris_sample(PROBLEM, 40, key=jax.random.key(0))
    ck.sobol_indices(PROBLEM, ishigami_np(x), key=jax.random.key(1))
    ck.morris_indices(PROBLEM, xm, ishigami_np(xm), key=jax.random.key(1), n_bootstrap=200)
    with jax.log_compiles(), caplog.at_level(logging.WARNING):
        caplog.clear()
        jax.jit(lambda v: v + 1.0)(jnp.ones(7))  # canary: proves compilations are captured here
        ck.sobol_indices(PROBLEM, 2.0 * ishigami_np(x) + 1.0, key=jax.random.key(2))
        ck.morris_indices(PROBLEM, xm, np.cos(ishigami_np(xm)), key=jax.random.key(2), n_bootstrap=200)
    compiles = [r.getMessage() for r in caplog.records if "Compiling" in r.getMessage()]
    assert any("<lambda>" in c for c in compiles), compiles
    assert [c for c in compiles if "_core" in c] == []
