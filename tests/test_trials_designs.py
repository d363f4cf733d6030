"""Dose-escalation designs (3+3, BOIN, CRM) and simulated operating characteristics: truth tests.

Closed forms (BOIN boundaries, the 3+3 escalation probability), references computed here by another code path
(scipy quadrature and Beta tails, a NumPy port of the BOIN R package's `get.oc`/`select.mtd`), hand examples, input
validation and a compile-once check. Monte Carlo comparisons use fixed seeds and tolerances in standard errors.
"""

import functools
import logging
import math
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import integrate, stats

from carkinetics import trials
from carkinetics.trials import (
    BOIN,
    CRM,
    Action,
    ThreePlusThree,
    boin_boundaries,
    initial_state,
    isotonic_regression,
    operating_characteristics,
    simulate_trials,
)

SCENARIO = [0.05, 0.12, 0.3, 0.45, 0.6]
N_OC = 4000  # trials per operating-characteristics estimate (shared config: compiled once in this module)


def _state(n_patients, n_dlt, current, last=(3, 0), eliminated=None):
    n_doses = len(n_patients)
    return trials.TrialState(
        n_patients=jnp.asarray(n_patients),
        n_dlt=jnp.asarray(n_dlt),
        current=jnp.asarray(current),
        eliminated=jnp.zeros(n_doses, dtype=bool) if eliminated is None else jnp.asarray(eliminated),
        last_cohort_patients=jnp.asarray(last[0]),
        last_cohort_dlt=jnp.asarray(last[1]),
    )


# ---------------------------------------------------------------------------------------------------------------
# BOIN: boundaries, elimination, isotonic regression, MTD selection


@pytest.mark.parametrize("target", [0.15, 0.2, 0.25, 0.3, 0.33, 0.4])
def test_boin_boundaries_closed_form(target):
    phi1, phi2 = 0.6 * target, 1.4 * target
    lam_e = math.log((1 - phi1) / (1 - target)) / math.log(target * (1 - phi1) / (phi1 * (1 - target)))
    lam_d = math.log((1 - target) / (1 - phi2)) / math.log(phi2 * (1 - target) / (target * (1 - phi2)))
    got = boin_boundaries(target)
    assert got == pytest.approx((lam_e, lam_d), abs=1e-14)
    assert phi1 < got[0] < target < got[1] < phi2
    design = BOIN(target)
    assert (design.lambda_e, design.lambda_d) == pytest.approx((lam_e, lam_d), abs=1e-14)
    # custom phi1/phi2 go through the same formula
    assert boin_boundaries(target, 0.5 * target, 1.5 * target)[0] == pytest.approx(
        math.log((1 - 0.5 * target) / (1 - target))
        / math.log(target * (1 - 0.5 * target) / (0.5 * target * (1 - target))),
        abs=1e-14,
    )


def test_boin_boundaries_published_target_030():
    lam_e, lam_d = boin_boundaries(0.3)
    # Liu & Yuan (2015) / BOIN package: lambda_e = 0.236, lambda_d = 0.358 for a target of 0.3
    assert abs(lam_e - 0.236) < 1e-3
    assert abs(lam_d - 0.358) < 1e-3


def test_boin_boundary_table_target_030():
    table = BOIN(0.3).boundary_table(30)
    at = np.arange(3, 31, 3) - 1  # 3, 6, ..., 30 patients
    # escalate if y <= floor(lambda_e n); de-escalate if y > lambda_d n (exact integers)
    np.testing.assert_array_equal(table.escalate_at_most[at], [0, 1, 2, 2, 3, 4, 4, 5, 6, 7])
    np.testing.assert_array_equal(table.deescalate_at_least[at], [2, 3, 4, 5, 6, 7, 8, 9, 10, 11])
    # elimination: smallest y with P(p > 0.3 | y, n) > 0.95 under Beta(1, 1), from scipy
    expected = []
    for n in range(3, 31, 3):
        ys = [y for y in range(n + 1) if stats.beta.sf(0.3, y + 1, n - y + 1) > 0.95]
        expected.append(ys[0])
    np.testing.assert_array_equal(table.eliminate_at_least[at], expected)
    assert list(table.eliminate_at_least[at]) == [3, 4, 5, 7, 8, 9, 10, 11, 12, 14]
    assert list(table.eliminate_at_least[:2]) == [-1, -1]  # never with fewer than 3 patients


def test_boin_elimination_matches_beta_posterior_tail():
    design = BOIN(0.25)
    n_grid, y_grid = np.meshgrid(np.arange(0, 41), np.arange(0, 41), indexing="ij")
    ok = y_grid <= n_grid
    n, y = n_grid[ok], y_grid[ok]
    got = np.asarray(design.overdose_probability(jnp.asarray(n), jnp.asarray(y)))
    ref = stats.beta.sf(0.25, y + 1, n - y + 1)
    np.testing.assert_allclose(got, ref, rtol=0, atol=1e-12)
    # the decision eliminates exactly when n >= 3 and the tail exceeds cutoff_eli
    for nn, yy in [(3, 2), (3, 3), (6, 3), (6, 4), (9, 5), (9, 6), (2, 2)]:
        state = _state([3, nn, 0, 0], [0, yy, 0, 0], current=1)
        decision = design.decide(state)
        expect = nn >= 3 and stats.beta.sf(0.25, yy + 1, nn - yy + 1) > 0.95
        assert bool(decision.eliminated[1]) == expect
        assert bool(decision.eliminated[3]) == expect  # and every higher dose
        assert not bool(decision.eliminated[0])


def _r_pava(x, w):
    """Port of the pool-adjacent-violators loop in the BOIN R package's `select.mtd`."""
    x = np.array(x, dtype=float)
    w = np.asarray(w, dtype=float)
    levels = np.arange(len(x))
    while True:
        violators = np.diff(x) < 0
        if not violators.any():
            return x
        i = int(np.argmax(violators))
        block = (levels == levels[i]) | (levels == levels[i + 1])
        x[block] = np.sum(x[block] * w[block]) / np.sum(w[block])
        levels[block] = levels[i]


def test_isotonic_regression_hand_examples():
    np.testing.assert_allclose(isotonic_regression([0.1, 0.4, 0.2, 0.5]), [0.1, 0.3, 0.3, 0.5], atol=1e-15)
    np.testing.assert_allclose(isotonic_regression([3.0, 2.0, 1.0]), [2.0, 2.0, 2.0], atol=1e-15)
    np.testing.assert_allclose(isotonic_regression([0.1, 0.2, 0.3]), [0.1, 0.2, 0.3], atol=1e-15)
    # weighted: (0.5 * 1 + 0.1 * 3) / 4 = 0.2
    np.testing.assert_allclose(isotonic_regression([0.5, 0.1], [1.0, 3.0]), [0.2, 0.2], atol=1e-15)
    # two pools: [4, 2] -> 3 and [5, 1, 3] -> 3 merge into one pool of 3
    np.testing.assert_allclose(isotonic_regression([4.0, 2.0, 5.0, 1.0, 3.0]), [3.0] * 5, atol=1e-15)
    # masked entries are skipped (NaN out) and do not pool with their neighbours
    got = np.asarray(isotonic_regression([0.1, 0.9, 0.4, 0.2], mask=[True, False, True, True]))
    np.testing.assert_allclose(got[[0, 2, 3]], [0.1, 0.3, 0.3], atol=1e-15)
    assert np.isnan(got[1])


def test_isotonic_regression_matches_r_pava_loop():
    rng = np.random.default_rng(7)
    for _ in range(200):
        k = int(rng.integers(1, 8))
        x = rng.uniform(size=k)
        w = rng.uniform(0.1, 5.0, size=k)
        np.testing.assert_allclose(isotonic_regression(x, w), _r_pava(x, w), rtol=0, atol=1e-12)


@functools.cache
def _tail(target, n, y):
    """P(p > target | y DLTs of n) under Beta(1, 1), from scipy."""
    return float(stats.beta.sf(target, y + 1, n - y + 1))


def _r_select_mtd(target, n, y, cutoff_eli=0.95):
    """Port of the BOIN R package's `select.mtd` (no extrasafe): dose index or -1."""
    n = np.asarray(n)
    y = np.asarray(y)
    eliminated = np.zeros(len(n), dtype=bool)
    for i in range(len(n)):
        if n[i] >= 3 and _tail(target, int(n[i]), int(y[i])) > cutoff_eli:
            eliminated[i:] = True
            break
    if eliminated[0] or n[~eliminated].sum() == 0:
        return -1
    admissible = (n != 0) & ~eliminated
    index = np.flatnonzero(admissible)
    ya, na = y[admissible], n[admissible]
    phat = (ya + 0.05) / (na + 0.1)
    var = (ya + 0.05) * (na - ya + 0.05) / ((na + 0.1) ** 2 * (na + 0.1 + 1))
    phat = _r_pava(phat, 1 / var) + np.arange(1, len(phat) + 1) * 1e-10
    return int(index[np.argsort(np.abs(phat - target), kind="stable")[0]])


@pytest.mark.parametrize(
    ("target", "n", "y", "expected"),
    [
        (0.3, [3, 6, 9, 3, 0], [0, 1, 3, 2, 0], 2),  # 3/9 closest to 0.3
        (0.3, [3, 3, 0], [1, 0, 0], 1),  # pooled below the target: the higher dose of the pool
        (0.5, [3, 3], [3, 2], 0),  # pooled above the target: the lower dose of the pool
        (0.3, [3, 3, 3, 0], [0, 0, 3, 0], 1),  # dose 2 eliminated (3/3); among 0/3, 0/3 the higher
        (0.3, [3, 0, 0], [3, 0, 0], -1),  # lowest dose eliminated: no MTD
        (0.3, [0, 0, 0], [0, 0, 0], -1),  # nobody treated
    ],
)
def test_boin_select_mtd_hand_examples(target, n, y, expected):
    assert _r_select_mtd(target, n, y) == expected
    assert int(BOIN(target).select_mtd(jnp.asarray(n), jnp.asarray(y))) == expected


def test_boin_select_mtd_matches_r_port_on_random_data():
    rng = np.random.default_rng(11)
    design = BOIN(0.3)
    select = design.select_mtd  # jitted
    for _ in range(300):
        n = rng.choice([0, 3, 6, 9, 12], size=5)
        y = rng.binomial(n, rng.uniform(0.0, 0.7, size=5))
        assert int(select(jnp.asarray(n), jnp.asarray(y))) == _r_select_mtd(0.3, n, y), (n, y)


def test_boin_decisions_hand_examples():
    design = BOIN(0.3)
    # 0/3 escalates, 1/3 stays (1/3 = 0.33 in (0.236, 0.358]), 2/3 de-escalates, 3/3 eliminates and de-escalates
    assert design.decide(_state([3, 3, 0], [0, 0, 0], 1)).action == Action.escalate
    assert design.decide(_state([3, 3, 0], [0, 1, 0], 1)).action == Action.stay
    d = design.decide(_state([3, 3, 0], [0, 2, 0], 1))
    assert d.action == Action.deescalate and int(d.next_dose) == 0
    d = design.decide(_state([3, 3, 0], [0, 3, 0], 1))
    assert d.action == Action.deescalate and d.eliminated.tolist() == [False, True, True]
    # escalation into an eliminated dose is "stay"; elimination of the lowest dose stops the trial
    d = design.decide(_state([6, 3, 0], [0, 0, 0], 0, eliminated=[False, True, True]))
    assert d.action == Action.stay and int(d.next_dose) == 0
    d = design.decide(_state([3, 0, 0], [3, 0, 0], 0))
    assert d.action == Action.stop and bool(d.eliminated[0])
    # n_earlystop: 12 patients at a dose whose decision is "stay" stops the trial (and selects an MTD)
    early = BOIN(0.3, n_earlystop=12)
    assert early.decide(_state([3, 12, 0], [0, 4, 0], 1)).action == Action.stop
    assert early.decide(_state([3, 9, 0], [0, 3, 0], 1)).action == Action.stay


# ---------------------------------------------------------------------------------------------------------------
# BOIN operating characteristics: reproducible, and equal (within Monte Carlo error) to a NumPy port of get.oc


@functools.cache
def _get_boundary(target, npts, cutoff_eli):
    """Port of the BOIN R package's `get.boundary` (full table): escalate / de-escalate / eliminate per n."""
    lam_e, lam_d = boin_boundaries(target)
    b_e = [math.floor(lam_e * k) for k in range(npts + 1)]
    b_d = [
        round(lam_d * k) + 1 if abs(round(lam_d * k) - lam_d * k) < 1e-12 else math.ceil(lam_d * k)
        for k in range(npts + 1)
    ]
    b_elim = [None] * (npts + 1)
    for k in range(3, npts + 1):
        hits = [m for m in range(1, k + 1) if _tail(target, k, m) > cutoff_eli]
        b_elim[k] = hits[0] if hits else None
        if b_elim[k] is not None:
            b_d[k] = min(b_d[k], b_elim[k])
    return b_e, b_d, b_elim


def _numpy_boin_trial(rng, p_true, target, n_cohorts, cohort_size, cutoff_eli=0.95):
    """One trial by the logic of the BOIN R package's `get.oc` (single agent, no titration, no n.earlystop)."""
    ndose = len(p_true)
    npts = n_cohorts * cohort_size
    b_e, b_d, b_elim = _get_boundary(target, npts, cutoff_eli)
    y = np.zeros(ndose, dtype=int)
    n = np.zeros(ndose, dtype=int)
    d = 0
    eliminated = np.zeros(ndose, dtype=bool)
    for _ in range(n_cohorts):
        tox = rng.random(cohort_size) < p_true[d]
        y[d] += tox.sum()
        n[d] += cohort_size
        if n.sum() >= npts:
            break
        if b_elim[n[d]] is not None and y[d] >= b_elim[n[d]]:
            eliminated[d:] = True
            if d == 0:
                return n, y, -1
        if y[d] <= b_e[n[d]] and d != ndose - 1:
            if not eliminated[d + 1]:
                d += 1
        elif y[d] >= b_d[n[d]] and d != 0:
            d -= 1
    return n, y, _r_select_mtd(target, n, y, cutoff_eli)


@pytest.fixture(scope="module")
def boin_oc():
    return operating_characteristics(
        BOIN(0.3), true_dlt=SCENARIO, n_trials=N_OC, cohort_size=3, n_cohorts=10, key=jax.random.key(2024)
    )


def test_boin_operating_characteristics_are_reproducible(boin_oc):
    again = operating_characteristics(
        BOIN(0.3), true_dlt=SCENARIO, n_trials=N_OC, cohort_size=3, n_cohorts=10, key=jax.random.key(2024)
    )
    for a, b in zip(jax.tree.leaves(boin_oc), jax.tree.leaves(again), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))  # same key: bit-identical
    other = operating_characteristics(
        BOIN(0.3), true_dlt=SCENARIO, n_trials=N_OC, cohort_size=3, n_cohorts=10, key=jax.random.key(2025)
    )
    assert not np.array_equal(np.asarray(other.mean_patients), np.asarray(boin_oc.mean_patients))
    # bookkeeping identities (exact)
    assert float(jnp.sum(boin_oc.selection_probability)) == pytest.approx(1.0, abs=1e-12)
    assert float(jnp.sum(boin_oc.mean_patients)) == pytest.approx(float(boin_oc.mean_total_patients), abs=1e-9)
    assert boin_oc.n_trials == N_OC and boin_oc.design == "BOIN"
    np.testing.assert_allclose(boin_oc.true_dlt, SCENARIO, atol=0)


def test_boin_operating_characteristics_match_numpy_port_of_get_oc(boin_oc):
    rng = np.random.default_rng(12345)  # an independent stream (NumPy, not JAX)
    ns, sel = [], []
    for _ in range(N_OC):
        n, _, s = _numpy_boin_trial(rng, SCENARIO, 0.3, 10, 3)
        ns.append(n)
        sel.append(s)
    ns = np.array(ns, dtype=float)
    sel = np.array(sel)
    ref_sel = np.array([np.mean(sel == d) for d in range(5)] + [np.mean(sel == -1)])
    got_sel = np.asarray(boin_oc.selection_probability)
    # two independent estimates of one probability: SE of the difference sqrt(2 P (1 - P) / N)
    pooled = 0.5 * (ref_sel + got_sel)
    se = np.sqrt(2 * pooled * (1 - pooled) / N_OC) + 1e-3 / N_OC
    assert np.all(np.abs(got_sel - ref_sel) <= 4.5 * se), (got_sel, ref_sel, se)
    se_n = np.sqrt(2 * ns.var(axis=0) / N_OC) + 1e-9
    got_n = np.asarray(boin_oc.mean_patients)
    assert np.all(np.abs(got_n - ns.mean(axis=0)) <= 4.5 * se_n), (got_n, ns.mean(axis=0), se_n)
    # and the dose with DLT rate = target is the most often selected (about 0.55)
    assert int(np.argmax(got_sel)) == 2 and 0.45 < got_sel[2] < 0.65


def test_operating_characteristics_vmap_over_scenarios(boin_oc):
    # scenarios may be traced (the user's vmap): same numbers as one call per scenario, range checked at run time
    def selection(p):
        return operating_characteristics(
            BOIN(0.3), true_dlt=p, n_trials=N_OC, cohort_size=3, n_cohorts=10, key=jax.random.key(2024)
        ).selection_probability

    scenarios = jnp.asarray([SCENARIO, [0.3, 0.4, 0.5, 0.6, 0.7]])
    batched = jax.vmap(selection)(scenarios)
    np.testing.assert_array_equal(np.asarray(batched[0]), np.asarray(boin_oc.selection_probability))
    assert float(batched[1, -1]) > 0.1  # lowest dose at the target: some trials stop with no MTD
    with pytest.raises(Exception, match="`true_dlt`"):
        jax.block_until_ready(jax.vmap(selection)(scenarios.at[1, 4].set(1.5)))


def test_resampled_outcomes_deterministic_pool():
    # every pool patient tolerates doses 0 and 1 and has a DLT from dose 2 on: the trial path is fixed
    # (pool and trial sizes as in the next test, which then reuses this compilation)
    outcomes = np.zeros((5, 20_000), dtype=bool)
    outcomes[2:] = True
    oc = operating_characteristics(
        BOIN(0.3), outcomes=outcomes, n_trials=N_OC, cohort_size=3, n_cohorts=10, key=jax.random.key(3)
    )
    # 0/3 -> 0/3 -> 3/3 (doses 2-4 eliminated) -> back to dose 1 for the remaining 7 cohorts
    np.testing.assert_allclose(oc.mean_patients, [3.0, 24.0, 3.0, 0.0, 0.0], atol=0)
    np.testing.assert_allclose(oc.mean_dlts, [0.0, 0.0, 3.0, 0.0, 0.0], atol=0)
    np.testing.assert_allclose(oc.selection_probability, [0.0, 1.0, 0.0, 0.0, 0.0, 0.0], atol=0)
    np.testing.assert_allclose(oc.true_dlt, [0.0, 0.0, 1.0, 1.0, 1.0], atol=0)


def test_resampled_outcomes_match_bernoulli_with_pool_rates():
    # a large pool of patients with latent tolerances: resampling it is Bernoulli(pool rate) per dose
    rng = np.random.default_rng(5)
    tolerance = rng.uniform(size=20_000)
    outcomes = np.asarray(SCENARIO)[:, None] > tolerance[None, :]
    rates = outcomes.mean(axis=1)
    by_pool = operating_characteristics(
        BOIN(0.3), outcomes=outcomes, n_trials=N_OC, cohort_size=3, n_cohorts=10, key=jax.random.key(8)
    )
    by_rate = operating_characteristics(
        BOIN(0.3), true_dlt=rates, n_trials=N_OC, cohort_size=3, n_cohorts=10, key=jax.random.key(9)
    )
    np.testing.assert_allclose(by_pool.true_dlt, rates, atol=1e-15)
    a, b = np.asarray(by_pool.selection_probability), np.asarray(by_rate.selection_probability)
    se = np.sqrt(2 * 0.5 * (a + b) * (1 - 0.5 * (a + b)) / N_OC) + 1e-3 / N_OC
    assert np.all(np.abs(a - b) <= 4.5 * se), (a, b)


# ---------------------------------------------------------------------------------------------------------------
# 3+3


@pytest.mark.parametrize("p", [0.1, 0.25, 0.4])
def test_three_plus_three_escalation_probability(p):
    # from dose 0 (DLT probability p) the design escalates after 0/3, or after 1/3 followed by 0/3:
    # (1 - p)^3 + 3 p (1 - p)^2 (1 - p)^3 = (1 - p)^3 [1 + 3 p (1 - p)^2]  (Storer 1989).
    # With 3 cohorts, dose 1 is treated iff the design escalated from dose 0.
    n = 100_000
    sims = simulate_trials(
        ThreePlusThree(), true_dlt=[p, 0.5], n_trials=n, cohort_size=3, n_cohorts=3, key=jax.random.key(int(100 * p))
    )
    estimate = float(np.mean(np.asarray(sims.n_patients[:, 1]) > 0))
    exact = (1 - p) ** 3 * (1 + 3 * p * (1 - p) ** 2)
    se = math.sqrt(exact * (1 - exact) / n)
    assert abs(estimate - exact) < 4.5 * se, (estimate, exact, se)


def test_three_plus_three_rules():
    design = ThreePlusThree()
    cases = [
        # (n, y, current, expected action, expected next dose)
        (([3, 0, 0], [0, 0, 0]), 0, Action.escalate, 1),  # 0/3
        (([3, 0, 0], [1, 0, 0]), 0, Action.stay, 0),  # 1/3: expand
        (([6, 0, 0], [1, 0, 0]), 0, Action.escalate, 1),  # 1/6
        (([6, 3, 0], [1, 2, 0]), 1, Action.stop, 1),  # 2/3 and the dose below has 6: stop, MTD = dose 0
        (([3, 3, 0], [0, 2, 0]), 1, Action.deescalate, 0),  # 2/3, 3 below: de-escalate to expand dose 0
        (([3, 0, 0], [2, 0, 0]), 0, Action.stop, 0),  # 2/3 at the lowest dose: stop, no MTD
        (([3, 3, 3], [0, 0, 0]), 2, Action.stay, 2),  # 0/3 at the top: expand to 6
        (([3, 3, 6], [0, 0, 1]), 2, Action.stop, 2),  # 1/6 at the top: stop, MTD = top
        (([3, 6, 0], [0, 2, 0]), 1, Action.deescalate, 0),  # 2/6: de-escalate
    ]
    for (n, y), current, action, next_dose in cases:
        d = design.decide(_state(n, y, current))
        assert d.action == action, (n, y, current)
        assert int(d.next_dose) == next_dose, (n, y, current)
    # expanding a dose below an eliminated one, then 1/6 there: stop (escalation target eliminated)
    d = design.decide(_state([6, 3, 0], [1, 2, 0], 0, eliminated=[False, True, True]))
    assert d.action == Action.stop
    # MTD: highest dose with >= 6 patients and <= 1 DLT
    assert int(design.select_mtd(jnp.asarray([6, 6, 3]), jnp.asarray([0, 1, 2]))) == 1
    assert int(design.select_mtd(jnp.asarray([6, 6, 0]), jnp.asarray([1, 2, 0]))) == 0
    assert int(design.select_mtd(jnp.asarray([3, 0, 0]), jnp.asarray([2, 0, 0]))) == -1


def test_three_plus_three_runs_to_its_natural_end():
    # with 2 n_doses cohorts every trial ends by the rule: <= 6 patients per dose, an MTD or none
    sims = simulate_trials(
        ThreePlusThree(), true_dlt=SCENARIO, n_trials=2000, cohort_size=3, n_cohorts=10, key=jax.random.key(4)
    )
    assert int(jnp.max(sims.n_patients)) <= 6
    assert bool(jnp.all(sims.n_patients % 3 == 0))
    # a selected MTD has >= 6 patients with <= 1 DLT, and every higher treated dose had >= 2 DLTs
    n, y, sel = np.asarray(sims.n_patients), np.asarray(sims.n_dlt), np.asarray(sims.selected)
    for i in np.flatnonzero(sel >= 0)[:500]:
        assert n[i, sel[i]] >= 6 and y[i, sel[i]] <= 1
        higher = np.arange(5) > sel[i]
        assert np.all(y[i, higher & (n[i] > 0)] >= 2)


# ---------------------------------------------------------------------------------------------------------------
# CRM


def _quad_posterior(skeleton, n, y, target, variance=1.34):
    skeleton, n, y = (np.asarray(a, dtype=float) for a in (skeleton, n, y))

    log_s = np.log(skeleton)

    def log_density(b):
        log_p = math.exp(b) * log_s  # log p_d(b), finite
        log_1mp = np.log(-np.expm1(log_p))
        return float(np.sum(y * log_p + (n - y) * log_1mp)) - b * b / (2 * variance)

    grid = np.linspace(-30.0, 30.0, 6001)
    values = np.array([log_density(b) for b in grid])
    mode, peak = float(grid[np.argmax(values)]), float(np.max(values))

    def unnormalised(b):
        return math.exp(log_density(b) - peak)  # scaled to 1 at the mode

    def quad(f, lo=-30.0, hi=30.0):
        points = [x for x in (mode - 1.0, mode, mode + 1.0) if lo < x < hi]
        return integrate.quad(f, lo, hi, epsabs=1e-13, epsrel=1e-10, limit=500, points=points)[0]

    z = quad(unnormalised)
    beta_mean = quad(lambda b: b * unnormalised(b)) / z
    dlt_mean = [quad(lambda b, s=s: s ** math.exp(b) * unnormalised(b)) / z for s in skeleton]
    overdose = []
    for s in skeleton:
        t = math.log(math.log(target) / math.log(s))
        overdose.append(quad(unnormalised, -30.0, t) / z)
    return beta_mean, np.array(dlt_mean), np.array(overdose)


@pytest.mark.parametrize(
    ("n", "y"),
    [
        ([0, 0, 0, 0, 0], [0, 0, 0, 0, 0]),  # the prior
        ([3, 3, 0, 0, 0], [0, 1, 0, 0, 0]),
        ([3, 6, 9, 3, 0], [0, 1, 3, 2, 0]),
        ([3, 0, 0, 0, 0], [3, 0, 0, 0, 0]),  # all DLTs
        ([3, 3, 3, 3, 12], [0, 0, 0, 0, 0]),  # no DLT
        ([6, 12, 24, 12, 6], [0, 2, 7, 6, 5]),  # 60 patients: a narrow posterior
    ],
)
def test_crm_posterior_matches_scipy_quadrature(n, y):
    skeleton = [0.05, 0.12, 0.25, 0.40, 0.55]
    design = CRM(0.25, skeleton)
    post = design.posterior(jnp.asarray(n), jnp.asarray(y))
    beta_mean, dlt_mean, overdose = _quad_posterior(skeleton, n, y, 0.25)
    assert abs(float(post.beta_mean) - beta_mean) < 1e-6
    np.testing.assert_allclose(post.dlt_mean, dlt_mean, rtol=0, atol=1e-6)
    np.testing.assert_allclose(post.dlt_plug_in, np.asarray(skeleton) ** math.exp(beta_mean), rtol=0, atol=1e-6)
    np.testing.assert_allclose(post.overdose_probability, overdose, rtol=0, atol=1e-6)


def test_crm_decisions_no_skipping_and_coherence():
    design = CRM(0.3, [0.05, 0.12, 0.25, 0.40, 0.55])
    # no DLT among 3 at the lowest dose: the model would skip ahead, the rule allows one level
    d = design.decide(_state([3, 0, 0, 0, 0], [0, 0, 0, 0, 0], 0, last=(3, 0)))
    assert int(design.select_mtd(jnp.asarray([3, 0, 0, 0, 0]), jnp.asarray([0, 0, 0, 0, 0]))) >= 2
    assert d.action == Action.escalate and int(d.next_dose) == 1
    # coherence: after a cohort with DLT rate >= target, never escalate (even if the model says so)
    n, y = [3, 3, 3, 0, 0], [0, 0, 1, 0, 0]
    assert int(design.select_mtd(jnp.asarray(n), jnp.asarray(y))) == 3
    d = design.decide(_state(n, y, 2, last=(3, 1)))
    assert d.action == Action.stay and int(d.next_dose) == 2
    d = design.decide(_state(n, y, 2, last=(3, 0)))
    assert d.action == Action.escalate
    # overdose control: 3/3 at the lowest dose makes P(p_0 > target) large: stop with no MTD
    safe = CRM(0.3, [0.05, 0.12, 0.25, 0.40, 0.55], overdose_cutoff=0.9)
    d = safe.decide(_state([3, 0, 0, 0, 0], [3, 0, 0, 0, 0], 0, last=(3, 3)))
    assert d.action == Action.stop and bool(jnp.all(d.eliminated))
    assert int(safe.select_mtd(jnp.asarray([3, 0, 0, 0, 0]), jnp.asarray([3, 0, 0, 0, 0]))) == -1


def test_crm_selects_the_right_dose_in_a_clear_cut_scenario():
    design = CRM(0.3, [0.05, 0.12, 0.25, 0.40, 0.55])
    oc = operating_characteristics(
        design,
        true_dlt=[0.02, 0.05, 0.3, 0.65, 0.85],
        n_trials=1000,
        cohort_size=3,
        n_cohorts=10,
        key=jax.random.key(21),
    )
    assert float(oc.selection_probability[2]) > 0.8
    assert float(oc.mean_patients[2]) > float(jnp.max(oc.mean_patients.at[2].set(0.0)))
    assert float(oc.early_stop_probability) == 0.0  # no overdose control: the full sample size
    assert float(oc.mean_total_patients) == 30.0


# ---------------------------------------------------------------------------------------------------------------
# validation, compile once, docstring examples


@pytest.mark.parametrize(
    ("make", "name"),
    [
        (lambda: BOIN(1.2), "target"),
        (lambda: BOIN(0.0), "target"),
        (lambda: BOIN(0.3, phi1=0.35), "phi1"),
        (lambda: BOIN(0.3, phi2=0.25), "phi2"),
        (lambda: BOIN(0.3, cutoff_eli=1.5), "cutoff_eli"),
        (lambda: BOIN(0.3, n_earlystop=0), "n_earlystop"),
        (lambda: BOIN(0.3, offset=0.6), "offset"),
        (lambda: boin_boundaries(-0.1), "target"),
        (lambda: CRM(0.3, [0.1, 0.1, 0.3]), "skeleton"),
        (lambda: CRM(0.3, [0.0, 0.1, 0.3]), "skeleton"),
        (lambda: CRM(0.3, [0.3]), "skeleton"),
        (lambda: CRM(0.3, [0.1, 0.2], prior_variance=-1.0), "prior_variance"),
        (lambda: CRM(0.3, [0.1, 0.2], overdose_cutoff=1.0), "overdose_cutoff"),
        (lambda: CRM(1.0, [0.1, 0.2]), "target"),
        (lambda: initial_state(1), "n_doses"),
    ],
)
def test_bad_design_input_raises(make, name):
    with pytest.raises(ValueError, match=re.escape(f"`{name}`")):
        make()


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"true_dlt": [0.1]}, "true_dlt"),
        ({"true_dlt": [0.1, 1.2]}, "true_dlt"),
        ({"true_dlt": [[0.1, 0.2]]}, "true_dlt"),
        ({"true_dlt": [0.1, 0.2], "n_trials": 0}, "n_trials"),
        ({"true_dlt": [0.1, 0.2], "cohort_size": 2.5}, "cohort_size"),
        ({"true_dlt": [0.1, 0.2], "n_cohorts": -1}, "n_cohorts"),
        ({"true_dlt": [0.1, 0.2], "key": 0}, "key"),
        ({"true_dlt": [0.1, 0.2], "start_dose": 2}, "start_dose"),
        ({"true_dlt": [0.1, 0.2], "outcomes": np.zeros((2, 5), dtype=bool)}, "true_dlt"),
        ({}, "outcomes"),
        ({"outcomes": np.zeros(5, dtype=bool)}, "outcomes"),
        ({"outcomes": np.full((2, 5), 0.5)}, "outcomes"),
    ],
)
def test_bad_trial_input_raises(kwargs, name):
    args = {"n_trials": 10, "cohort_size": 3, "n_cohorts": 4, "key": jax.random.key(0)} | kwargs
    with pytest.raises(ValueError, match=re.escape(f"`{name}`")):
        operating_characteristics(BOIN(0.3), **args)


def test_design_specific_trial_checks():
    with pytest.raises(ValueError, match="`cohort_size` must be 3"):
        simulate_trials(
            ThreePlusThree(), true_dlt=[0.1, 0.2], n_trials=10, cohort_size=2, n_cohorts=4, key=jax.random.key(0)
        )
    with pytest.raises(ValueError, match="`skeleton` has 3 doses"):
        simulate_trials(
            CRM(0.3, [0.1, 0.2, 0.3]),
            true_dlt=[0.1, 0.2],
            n_trials=10,
            cohort_size=1,
            n_cohorts=4,
            key=jax.random.key(0),
        )
    with pytest.raises(ValueError, match="`design`"):
        simulate_trials("BOIN", true_dlt=[0.1, 0.2], n_trials=10, cohort_size=1, n_cohorts=4, key=jax.random.key(0))


def test_operating_characteristics_compile_once(caplog):
    # a trial size used nowhere else in this module, so the first call must trace
    kwargs = {"n_trials": 50, "cohort_size": 3, "n_cohorts": 4, "key": jax.random.key(0)}
    with caplog.at_level(logging.WARNING), jax.log_compiles():
        first = operating_characteristics(BOIN(0.3), true_dlt=[0.1, 0.2, 0.3], **kwargs)
        second = operating_characteristics(
            BOIN(0.3), true_dlt=np.array([0.05, 0.25, 0.5]), **(kwargs | {"key": jax.random.key(1)})
        )
    messages = [r.getMessage() for r in caplog.records]
    traces = [m for m in messages if "Finished tracing" in m and "_operating_characteristics_jit" in m]
    assert len(traces) == 1, messages  # new values of the same shape reuse the compiled simulation
    assert not np.array_equal(np.asarray(first.mean_patients), np.asarray(second.mean_patients))


def _examples(obj):
    return re.findall(r"```python\n(.*?)```", obj.__doc__ or "", flags=re.DOTALL)


def test_docstring_examples_run():
    import inspect
    import textwrap

    objects = [getattr(trials, name) for name in dir(trials) if not name.startswith("_")]
    objects += [BOIN.boundary_table]
    blocks = [
        textwrap.dedent(code) for obj in objects if inspect.isclass(obj) or callable(obj) for code in _examples(obj)
    ]
    assert len(blocks) >= 8
    for code in blocks:
        exec(compile(code, "<docstring example>", "exec"), {"__name__": "__docstring__"})
