"""Time-course and VPC figures: files are written, axes carry units, bands are the stated quantiles."""

import matplotlib

matplotlib.use("Agg")

import jax.numpy as jnp
import numpy as np
import pytest

import carkinetics as ck
import carkinetics.io as cio
from carkinetics.models import OneCompartmentPK, TwoCompartmentPK
from carkinetics.plot import plot_timecourse, plot_vpc, save_figure


def _png_ok(path):
    with open(path, "rb") as fh:
        head = fh.read(8)
    assert head == b"\x89PNG\r\n\x1a\n"


def test_timecourse_panels_units_and_overlay(tmp_path):
    ts = jnp.linspace(0.0, 3.0, 61)
    s1 = ck.simulate(TwoCompartmentPK(), ck.Bolus(0.0, 100.0, "central"), ts)
    s2 = ck.simulate(TwoCompartmentPK(cl=96.0), ck.Bolus(0.0, 100.0, "central"), ts)
    data = cio.Observations(np.array([0.5, 1.0, 2.0]), np.array([1.0, 0.4, 0.1]), ("concentration",) * 3)
    fig = plot_timecourse(
        [s1, s2],
        ["concentration", "central", "peripheral"],
        labels=["CL 192", "CL 96"],
        data=data,
        title="two-compartment PK",
    )
    axes = [a for a in fig.axes if a.get_visible()]
    assert [a.get_ylabel() for a in axes] == ["concentration [mg/L]", "central [mg]", "peripheral [mg]"]
    # two simulated lines + the data markers on the first panel; the 100-fold decay is shown on a log axis
    first = axes[0]
    assert len(first.lines) == 4  # 2 solutions, data, the day-0 marker line
    np.testing.assert_allclose(first.lines[2].get_ydata(), [1.0, 0.4, 0.1], rtol=0)
    assert first.get_yscale() == "log" and axes[2].get_yscale() == "linear"
    path = save_figure(fig, str(tmp_path / "tc.png"))
    _png_ok(path)


def test_timecourse_rejects_unknown_names():
    sol = ck.simulate(OneCompartmentPK(), None, jnp.linspace(0.0, 1.0, 3))
    with pytest.raises(ValueError, match="Unknown output 'nope' of OneCompartmentPK"):
        plot_timecourse(sol, ["nope"])
    with pytest.raises(ValueError, match="`labels` has 2 entries for 1 solutions"):
        plot_timecourse(sol, labels=["a", "b"])


def test_vpc_bands_are_quantiles_and_plot(tmp_path):
    rng = np.random.default_rng(0)
    ts = np.linspace(0.0, 10.0, 21)
    k = rng.lognormal(np.log(0.3), 0.3, 400)
    samples = np.exp(-np.outer(k, ts))
    ok = np.ones(400, bool)
    ok[:9] = False  # 391 members left: an odd count, so the median is one member (exact under exp)
    samples[:9] = np.nan  # failed members are masked out
    bands = ck.percentile_bands(samples, (5.0, 50.0, 95.0), ok=ok)
    # the median of exp(-k t) over k is exp(-median(k) t) (monotone transform), checked at t = 10
    assert bands[1, -1] == pytest.approx(np.exp(-np.median(k[9:]) * 10.0), rel=1e-12)
    assert np.all(bands[0] <= bands[1]) and np.all(bands[1] <= bands[2])
    fig = plot_vpc(ts, samples, name="fraction", unit="1", mask=ok, data=(ts[::5], np.exp(-0.3 * ts[::5])))
    ax = fig.axes[0]
    assert ax.get_ylabel() == "fraction [1]" and "n = 391" in ax.get_title()
    np.testing.assert_allclose(ax.lines[0].get_ydata(), bands[1], rtol=1e-12)
    _png_ok(save_figure(fig, str(tmp_path / "vpc.png")))
    with pytest.raises(ValueError, match=r"must have shape \(N, 21\)"):
        plot_vpc(ts, samples[:, :5])


def test_log_axis_shows_at_most_the_requested_decades():
    ts = jnp.linspace(0.0, 40.0, 81)
    sol = ck.simulate(OneCompartmentPK(), ck.Bolus(0.0, 100.0, "central"), ts)  # decays over ~100 decades
    fig = plot_timecourse(sol, ["concentration"], logy=True, decades=4.0)
    lo, hi = fig.axes[0].get_ylim()
    cmax = float(sol.observables.concentration[0])
    assert lo == pytest.approx(cmax * 1e-4 / 1.5, rel=1e-9) and hi == pytest.approx(cmax * 1.5, rel=1e-9)
    fig2 = plot_timecourse(sol, ["concentration"], logy=True, ylim_floor=1e-3)
    assert fig2.axes[0].get_ylim()[0] == pytest.approx(1e-3, rel=1e-12)
