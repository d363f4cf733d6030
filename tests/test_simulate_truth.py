"""Truth tests of `simulate`: analytic solutions, superposition, matrix exponential."""

import diffrax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg
from helpers import rel_err

import carkinetics as ck
from carkinetics.models import OneCompartmentPK, TwoCompartmentPK

TIGHT = dict(rtol=1e-10, atol=1e-12)


def test_one_compartment_bolus_matches_analytic():
    m = OneCompartmentPK(cl=130.0, v=46.5)
    ts = jnp.linspace(0.0, 2.0, 49)
    sol = ck.simulate(m, ck.Bolus(0.0, 1800.0, "central"), ts, **TIGHT)
    expected = 1800.0 / 46.5 * np.exp(-130.0 / 46.5 * np.asarray(ts))
    assert rel_err(sol.observables.concentration, expected) <= 1e-6
    assert bool(sol.ok)


def test_one_compartment_infusion_matches_analytic():
    cl, v, amt, dur, start = 130.0, 46.5, 1800.0, 1.0 / 24, 0.25
    k = cl / v
    rate = amt / dur
    m = OneCompartmentPK(cl=cl, v=v)
    ts = jnp.linspace(0.0, 1.5, 301)  # includes points during and after the infusion
    sol = ck.simulate(m, ck.Infusion(start, "central", amount=amt, duration=dur), ts, **TIGHT)
    t = np.asarray(ts)
    during = rate / k * (1 - np.exp(-k * (t - start)))
    end_amt = rate / k * (1 - np.exp(-k * dur))
    after = end_amt * np.exp(-k * (t - start - dur))
    expected = np.where(t < start, 0.0, np.where(t < start + dur, during, after))
    assert rel_err(sol.ys.central, expected, floor=1e-9) <= 1e-6
    # amount balance: infused amount = eliminated + remaining, integrated with the trapezoid rule on a fine grid
    assert float(sol.ys.central[0]) == 0.0


def test_repeated_boluses_match_superposition():
    m = OneCompartmentPK(cl=60.0, v=40.0)
    k = 60.0 / 40.0
    ts = jnp.linspace(-0.5, 6.0, 131)
    reg = ck.Regimen([ck.Bolus(0.0, 100.0, "central", ii=1.0, addl=4)])
    sol = ck.simulate(m, reg, ts, **TIGHT)
    t = np.asarray(ts)
    expected = sum(np.where(t >= d, 100.0 * np.exp(-k * (t - d)), 0.0) for d in range(5))
    assert rel_err(sol.ys.central, expected, floor=1e-9) <= 1e-6
    # the value saved exactly at a dose time is the post-dose value (right-continuous)
    i = int(np.flatnonzero(np.isclose(t, 2.0))[0])
    assert float(sol.ys.central[i]) == pytest.approx(expected[i], rel=1e-6)
    assert expected[i] > 100.0


def test_repeated_infusions_match_superposition():
    m = OneCompartmentPK(cl=60.0, v=40.0)
    k = 60.0 / 40.0
    ts = jnp.linspace(0.0, 4.0, 161)
    rate, dur = 200.0, 0.2
    reg = ck.Infusion(0.0, "central", rate=rate, duration=dur, ii=1.0, addl=2)
    sol = ck.simulate(m, reg, ts, **TIGHT)
    t = np.asarray(ts)

    def one(t0):
        s = t - t0
        return np.where(
            s < 0,
            0.0,
            np.where(
                s < dur, rate / k * (1 - np.exp(-k * s)), rate / k * (1 - np.exp(-k * dur)) * np.exp(-k * (s - dur))
            ),
        )

    expected = one(0.0) + one(1.0) + one(2.0)
    assert rel_err(sol.ys.central, expected, floor=1e-9) <= 1e-6


@pytest.mark.parametrize("solver", [diffrax.Tsit5(), diffrax.Kvaerno5()], ids=["tsit5", "kvaerno5"])
def test_two_compartment_matches_expm(solver):
    m = TwoCompartmentPK()
    cl, v1, q, v2 = (float(m.get(n)) for n in ("cl", "v1", "q", "v2"))
    A = np.array([[-(cl + q) / v1, q / v2], [q / v1, -q / v2]])
    ts = jnp.linspace(0.0, 3.0, 61)
    sol = ck.simulate(m, ck.Bolus(0.0, 45.0, "central"), ts, solver=solver, **TIGHT)
    expected = np.stack([scipy.linalg.expm(A * t) @ np.array([45.0, 0.0]) for t in np.asarray(ts)])
    got = np.stack([sol.ys.central, sol.ys.peripheral], axis=1)
    assert rel_err(got, expected, floor=1e-9) <= 1e-6


def test_fractional_kill_is_a_multiplicative_jump():
    m = OneCompartmentPK(cl=60.0, v=40.0)
    k = 1.5
    ts = jnp.linspace(0.0, 2.0, 41)
    reg = ck.Regimen([ck.Bolus(0.0, 100.0, "central"), ck.FractionalKill(1.0, 0.75, ["central"])])
    sol = ck.simulate(m, reg, ts, **TIGHT)
    t = np.asarray(ts)
    expected = 100.0 * np.exp(-k * t) * np.where(t >= 1.0, 0.25, 1.0)
    assert rel_err(sol.ys.central, expected, floor=1e-9) <= 1e-6


def test_events_after_horizon_are_ignored_and_before_ts_start_the_clock():
    m = OneCompartmentPK(cl=60.0, v=40.0)
    ts = jnp.array([1.0, 2.0])
    reg = ck.Regimen([ck.Bolus(-1.0, 100.0, "central"), ck.Bolus(2.5, 1e6, "central")])
    sol = ck.simulate(m, reg, ts, **TIGHT)
    expected = 100.0 * np.exp(-1.5 * (np.asarray(ts) + 1.0))
    assert rel_err(sol.ys.central, expected) <= 1e-6
