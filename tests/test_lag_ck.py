"""LagPhaseCK (liso-cel popCK structure): ODE vs closed form, parameter recovery, gradients, durations not days."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import rel_err

import carkinetics as ck
from carkinetics import models

LagPhaseCK, lag_ck_closed_form = models.LagPhaseCK, models.lag_ck_closed_form

NAMES = ("t_lag", "k_growth", "t_peak", "alpha", "beta", "f_fast", "c0")
TIGHT = {"rtol": 1e-12, "atol": 1e-14}
# days after the infusion: lag (< 3.27), growth (3.27-9.29), fast decline, slow decline; none on a switch time
TAU = jnp.array(
    [
        0.25,
        1.0,
        2.0,
        3.0,
        3.5,
        4.0,
        5.0,
        6.5,
        8.0,
        9.0,
        9.5,
        11.0,
        14.0,
        21.0,
        28.0,
        42.0,
        60.0,
        90.0,
        180.0,
        365.0,
        540.0,
        730.0,
    ]
)


def infusion(day=0.0, amount=1.0):
    return ck.Bolus(day, amount, "effector")


PRE = jnp.array([-5.0, -0.5])  # two days before the infusion: every simulation below saves at 2 + 22 times
TS = jnp.concatenate([PRE, TAU])


@pytest.mark.parametrize(
    "values",
    [
        {},  # the published typical values
        {"t_lag": 1.5, "k_growth": 1.4, "t_peak": 6.0, "alpha": 0.3, "beta": 0.01, "f_fast": 0.9, "c0": 20.0},
        {"t_lag": 5.0, "t_peak": 4.0},  # no growth phase: the decline starts from c0 at t_peak
    ],
)
def test_ode_matches_closed_form_in_every_phase(values):
    model = LagPhaseCK().replace(**values)
    sol = ck.simulate(model, infusion(), TS, **TIGHT)
    err = rel_err(sol.observables.transgene[2:], lag_ck_closed_form(model, TAU))
    assert err <= 1e-8, err
    assert float(jnp.max(jnp.abs(sol.observables.transgene[:2]))) == 0.0  # nothing before the infusion
    # the clock state is the time since the infusion (stopped before it)
    np.testing.assert_allclose(sol.ys.clock, jnp.maximum(TS, 0.0), rtol=1e-12, atol=1e-12)


def test_published_values_and_derived_quantities():
    m = LagPhaseCK()
    # Ogasawara 2021 abstract: lag 3.27 d, doubling time 0.755 d, Tmax 9.29 d, half-lives 5.00 d and 352 d
    assert float(m.t_lag) == 3.27 and float(m.t_peak) == 9.29
    assert float(m.doubling_time) == pytest.approx(0.755, rel=1e-12)
    assert float(m.half_life_fast) == pytest.approx(5.00, rel=1e-12)
    assert float(m.half_life_slow) == pytest.approx(352.0, rel=1e-12)
    # fold expansion exp(ln2 * 6.02 / 0.755) = 251.3; peak c0 * fold at t_peak
    assert float(m.fold_expansion) == pytest.approx(2.0 ** (6.02 / 0.755), rel=1e-12)
    assert float(lag_ck_closed_form(m, 9.29)) == pytest.approx(float(m.c_peak), rel=1e-12)
    assert float(lag_ck_closed_form(m, 2.0)) == pytest.approx(100.0, rel=1e-12)
    assert float(lag_ck_closed_form(m, -1.0)) == 0.0
    tags = {p.name: p.info.tag for p in m.parameter_table()}
    assert tags == {"t_lag": "R", "k_growth": "D", "t_peak": "R", "alpha": "D", "beta": "D", "f_fast": "A", "c0": "A"}
    assert LagPhaseCK.breakpoint_parameters == ("t_lag", "t_peak")
    assert LagPhaseCK.breakpoint_origin == "effector"


def test_closed_form_accepts_a_mapping_and_rejects_bad_input():
    m = LagPhaseCK()
    d = {n: float(getattr(m, n)) for n in NAMES}
    np.testing.assert_allclose(lag_ck_closed_form(d, TAU), lag_ck_closed_form(m, TAU), rtol=1e-14)
    with pytest.raises(ValueError, match="lacks the LagPhaseCK parameters"):
        lag_ck_closed_form({"t_lag": 3.0}, TAU)
    with pytest.raises(ValueError, match="must be a LagPhaseCK or a mapping"):
        lag_ck_closed_form([3.27], TAU)


def test_level_is_proportional_to_the_infusion_and_zero_without_one():
    model = LagPhaseCK()
    one = ck.simulate(model, infusion(), TS, **TIGHT).observables.transgene
    two = ck.simulate(model, infusion(amount=2.0), TS, **TIGHT).observables.transgene
    assert rel_err(two[2:], 2.0 * one[2:]) <= 1e-10
    # an infusion after the horizon: no cells, the clock never starts and the switches lie beyond the horizon
    later = ck.simulate(model, infusion(day=1000.0), TS, **TIGHT)
    assert float(jnp.max(jnp.abs(later.observables.transgene))) == 0.0
    assert float(jnp.max(jnp.abs(later.ys.clock))) == 0.0


@pytest.mark.parametrize("day", [-4.0, 7.5, 123.25])
def test_shifting_the_infusion_shifts_the_whole_curve(day):
    # t_lag and t_peak are durations after the infusion (breakpoint_origin), not calendar days
    model = LagPhaseCK()
    base = ck.simulate(model, infusion(0.0), TS, **TIGHT).observables.transgene
    shifted = ck.simulate(model, infusion(day), TS + day, **TIGHT).observables.transgene
    assert float(jnp.max(jnp.abs(shifted[:2]))) == 0.0
    assert rel_err(shifted[2:], base[2:]) <= 1e-10
    assert rel_err(shifted[2:], lag_ck_closed_form(model, TAU)) <= 1e-8


def test_shift_holds_on_the_ensemble_engine():
    # members with different durations and infusion days, batched: each switches at its own infusion + durations
    values = {"t_lag": jnp.array([2.0, 3.27, 4.5]), "t_peak": jnp.array([7.0, 9.29, 12.0])}
    models = ck.batch_models(LagPhaseCK(), values)
    days = np.array([0.0, 5.0, 12.5])
    regimen = ck.Regimen([ck.Bolus(jnp.asarray(days), jnp.ones(3), "effector")])
    ts = jnp.linspace(-2.0, 60.0, 125)
    sol = ck.simulate_ensemble(models, regimen, ts, rtol=1e-10, atol=1e-12)
    level = np.asarray(sol.observables.transgene)
    for i in range(3):
        member = LagPhaseCK().replace(t_lag=float(values["t_lag"][i]), t_peak=float(values["t_peak"][i]))
        after = np.asarray(ts) >= days[i]
        assert rel_err(level[i][after], lag_ck_closed_form(member, ts - days[i])[after]) <= 1e-6
        assert np.all(level[i][~after] == 0.0)


def _log_levels(values, day, ts):
    """Sum of log transgene levels at the days `ts` after an infusion on `day` (a smooth scalar observable)."""
    model = LagPhaseCK().replace(**values)
    return jnp.sum(jnp.log(ck.simulate(model, infusion(day), ts, **TIGHT).observables.transgene))


@pytest.mark.parametrize("day", [0.0, 7.5])
def test_gradients_match_central_differences(day):
    # one save time in the lag phase, two in growth, one in the fast and two in the slow decline
    ts = jnp.array([2.0, 5.0, 9.0, 14.0, 100.0, 500.0]) + day
    p = {n: jnp.asarray(float(getattr(LagPhaseCK(), n))) for n in NAMES}
    d = jnp.asarray(day)
    grad_p, grad_day = jax.grad(_log_levels, argnums=(0, 1))(p, d, ts)
    for n in NAMES:
        h = 1e-5 * float(p[n])
        fd = (_log_levels({**p, n: p[n] + h}, d, ts) - _log_levels({**p, n: p[n] - h}, d, ts)) / (2 * h)
        assert abs(float(grad_p[n]) - float(fd)) <= 1e-5 * max(1.0, abs(float(fd))), (n, float(grad_p[n]), float(fd))
    # with respect to the infusion day (the origin of the durations), save times fixed
    fd = (_log_levels(p, d + 1e-4, ts) - _log_levels(p, d - 1e-4, ts)) / 2e-4
    assert abs(float(grad_day) - float(fd)) <= 1e-5 * max(1.0, abs(float(fd))), (float(grad_day), float(fd))


@pytest.mark.slow
def test_parameter_recovery_from_synthetic_data():
    # three subjects' sampling days (typical TRANSCEND-like density, jittered), one shared parameter set
    truth = LagPhaseCK()
    days = np.sort(
        np.concatenate(
            [
                [1.0, 2.0, 4.0, 6.0, 8.0, 10.0, 14.0, 21.0, 28.0, 56.0, 90.0, 180.0, 365.0, 730.0],
                [1.5, 3.0, 5.0, 7.0, 9.0, 12.0, 17.0, 24.0, 35.0, 70.0, 120.0, 270.0, 450.0],
                [0.5, 2.5, 3.5, 5.5, 9.5, 11.0, 15.0, 28.0, 42.0, 100.0, 200.0, 300.0, 540.0],
            ]
        )
    )
    sigma = 0.15  # log-scale residual sd
    noise = sigma * jax.random.normal(jax.random.key(2024), days.shape)
    data = ck.TimeCourseData(
        "transgene", jnp.asarray(days), lag_ck_closed_form(truth, days) * jnp.exp(noise), ck.LogNormalError(sigma)
    )
    # start 13-90 % away from the truth; flat priors (maximum likelihood) so the truth is not a prior centre
    start = truth.replace(t_lag=2.6, k_growth=0.75, t_peak=10.5, alpha=0.11, beta=0.0028, f_fast=0.985, c0=150.0)
    problem = ck.CalibrationProblem(
        start, infusion(), [data], list(NAMES), priors=None, n_grid=2, rtol=1e-8, atol=1e-10
    )
    res = ck.fit(problem, key=jax.random.key(0), n_starts=4, start_scale=0.3)
    assert res.n_agree >= 3 and bool(res.converged[res.best])
    lap = ck.laplace(res, warn=False)
    assert lap.warnings == ()
    z_true = np.asarray(problem.to_vector({n: float(getattr(truth, n)) for n in NAMES}))
    z_fit = np.asarray(res.z)
    fitted = res.values()
    for i, n in enumerate(NAMES):
        # within 2 Laplace standard errors (unconstrained scale) ...
        assert abs(z_fit[i] - z_true[i]) <= 2.0 * float(lap.sd_z[i]), (n, fitted[n], float(lap.sd_z[i]))
        # ... and within 25 % of the truth (for f_fast ~ 1: of the slow fraction 1 - f_fast)
        true, got = float(getattr(truth, n)), fitted[n]
        if n == "f_fast":
            true, got = 1.0 - true, 1.0 - got
        assert abs(got / true - 1.0) <= 0.25, (n, fitted[n])


def test_breakpoint_origin_must_name_a_state():
    class BadOrigin(LagPhaseCK):
        breakpoint_origin = "cells"

    with pytest.raises(ValueError, match="breakpoint_origin` = 'cells' is not a state of the model"):
        ck.simulate(BadOrigin(), infusion(), TAU)
