"""Summary metrics against hand-computed values, gradients against finite differences, vmap batching."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import central_fd

import carkinetics as ck
from carkinetics import metrics as M

TS = jnp.array([0.0, 1.0, 2.0, 4.0])
V = jnp.array([0.0, 2.0, 4.0, 0.0])  # a triangle peaking at t = 2


def test_namespace_exported():
    assert ck.metrics.cmax is M.cmax


def test_cmax_nadir_hand_values():
    assert float(M.cmax(TS, V)) == pytest.approx(4.0, abs=1e-12)
    assert float(M.nadir(TS, jnp.array([3.0, 1.0, 2.0, 5.0]))) == pytest.approx(1.0, abs=1e-12)
    # Window [0.5, 1.5] on the line 2t: max 3, min 1 from the interpolated edges.
    assert float(M.cmax(TS, V, t_start=0.5, t_end=1.5)) == pytest.approx(3.0, abs=1e-12)
    assert float(M.nadir(TS, V, t_start=0.5, t_end=1.5)) == pytest.approx(1.0, abs=1e-12)


def test_tmax_sampled_and_quadratic():
    assert float(M.tmax(TS, V, interpolate=False)) == pytest.approx(2.0, abs=1e-12)
    # Non-uniform grid, exact parabola with vertex at 1.3: quadratic interpolation recovers it exactly.
    ts = jnp.array([0.0, 0.5, 1.0, 2.5, 3.0])
    v = 7.0 - 2.0 * (ts - 1.3) ** 2
    assert float(M.tmax(ts, v)) == pytest.approx(1.3, abs=1e-12)
    # Hand-worked case: points (0,0), (1,3), (3,1): parabola y = -4/3 t^2 + 13/3 t, vertex at 13/8.
    assert float(M.tmax(jnp.array([0.0, 1.0, 3.0]), jnp.array([0.0, 3.0, 1.0]))) == pytest.approx(13 / 8, abs=1e-12)
    # Maximum at the last point: the sampled time.
    assert float(M.tmax(TS, jnp.array([0.0, 1.0, 2.0, 3.0]))) == pytest.approx(4.0, abs=1e-12)


def test_auc_trapezoid_and_window():
    # Triangle: base 4, height 4 -> 8.
    assert float(M.auc(TS, V)) == pytest.approx(8.0, abs=1e-12)
    # Window [0.5, 3]: integral of the triangle from 0.5 to 3 = 8 - 0.25 - (1 * 2 / 2) = 6.75.
    assert float(M.auc(TS, V, t_start=0.5, t_end=3.0)) == pytest.approx(6.75, abs=1e-12)
    # Exponential decay on a fine grid: trapezoid error O(h^2), analytic 1 - exp(-5).
    ts = jnp.linspace(0.0, 5.0, 2001)
    assert float(M.auc(ts, jnp.exp(-ts))) == pytest.approx(1 - np.exp(-5.0), rel=1e-6)


def test_value_at_and_fold_change():
    assert float(M.value_at(TS, V, 3.0)) == pytest.approx(2.0, abs=1e-12)
    np.testing.assert_allclose(M.value_at(TS, V, jnp.array([0.5, 10.0])), [1.0, 0.0], atol=1e-12)  # held at end
    ts = jnp.array([0.0, 30.0, 90.0, 180.0])
    ab = jnp.array([200.0, 150.0, 50.0, 40.0])
    assert float(M.fold_change(ts, ab, 90.0, 0.0)) == pytest.approx(0.25, abs=1e-12)
    assert float(M.fold_change(ts, ab, 60.0, 0.0)) == pytest.approx(100.0 / 200.0, abs=1e-12)


def test_time_below():
    # A valley 5, 0, 0, 5 on [0,1,2,4]; below 1 from t = 0.8 to t = 2.4 -> 1.6 days.
    v = jnp.array([5.0, 0.0, 0.0, 5.0])
    assert float(M.time_below(TS, v, 1.0)) == pytest.approx(1.6, abs=1e-12)
    # Never below, always below.
    assert float(M.time_below(TS, v, -1.0)) == pytest.approx(0.0, abs=1e-12)
    assert float(M.time_below(TS, v, 6.0)) == pytest.approx(4.0, abs=1e-12)
    # Window [1.5, 3]: below from 1.5 to 2.4 -> 0.9.
    assert float(M.time_below(TS, v, 1.0, t_start=1.5, t_end=3.0)) == pytest.approx(0.9, abs=1e-12)


def test_first_crossing():
    v = jnp.array([5.0, 0.0, 0.0, 5.0])
    assert float(M.first_crossing(TS, v, 1.0, "down")) == pytest.approx(0.8, abs=1e-12)
    assert float(M.first_crossing(TS, v, 1.0, "up")) == pytest.approx(2.4, abs=1e-12)
    assert float(M.first_crossing(TS, v, 1.0, "any")) == pytest.approx(0.8, abs=1e-12)
    assert np.isnan(float(M.first_crossing(TS, v, 10.0, "down")))
    assert float(M.first_crossing(TS, v, 10.0, "down", fill_value=-1.0)) == pytest.approx(-1.0, abs=0)
    # Only crossings after t_start = 1: the down-crossing at 0.8 is skipped.
    assert float(M.first_crossing(TS, v, 1.0, "any", t_start=1.0)) == pytest.approx(2.4, abs=1e-12)
    with pytest.raises(ValueError, match="direction"):
        M.first_crossing(TS, v, 1.0, "sideways")


def test_half_life():
    ts = jnp.linspace(0.0, 20.0, 21)
    v = 100.0 * 0.5 ** (ts / 6.0)
    assert float(M.half_life(ts, v, 0.0, 20.0)) == pytest.approx(6.0, rel=1e-10)
    # Biphasic: fast phase t1/2 = 1 d until day 5, then 10 d; the window picks the terminal phase.
    v2 = jnp.where(ts < 5.0, 0.5**ts, 0.5**5 * 0.5 ** ((ts - 5.0) / 10.0))
    assert float(M.half_life(ts, v2, 5.0, 20.0)) == pytest.approx(10.0, rel=1e-10)
    assert float(M.half_life(ts, v2, 0.0, 5.0)) == pytest.approx(1.0, rel=1e-10)
    assert np.isnan(float(M.half_life(ts, v, 3.5, 3.9)))  # no grid point in the window


def test_shape_validation():
    with pytest.raises(ValueError, match="same shape"):
        M.cmax(TS, V[:3])
    with pytest.raises(ValueError, match="1-D"):
        M.auc(jnp.ones((2, 3)), jnp.ones((2, 3)))


def test_vmap_batch():
    batch = jnp.stack([V, 2.0 * V, V + 1.0])
    np.testing.assert_allclose(jax.vmap(M.auc, in_axes=(None, 0))(TS, batch), [8.0, 16.0, 12.0], atol=1e-12)
    # Crossings of 2.0 at t = 1, 3 / 0.5, 3.5 / 0.5, 3.5.
    np.testing.assert_allclose(jax.vmap(lambda v: M.time_below(TS, v, 2.0))(batch), [2.0, 1.0, 1.0], atol=1e-12)


@pytest.mark.parametrize("which", ["tmax", "time_below", "first_crossing", "auc_window", "half_life", "fold"])
def test_gradients_match_finite_differences(which):
    ts = jnp.linspace(0.0, 10.0, 41)

    def curve(p):  # a smooth hump whose peak time and width move with p
        return 5.0 * jnp.exp(-((ts - p) ** 2) / 4.0) + 0.1

    fns = {
        "tmax": lambda p: M.tmax(ts, curve(p)),
        "time_below": lambda p: M.time_below(ts, -curve(p), -2.0),
        "first_crossing": lambda p: M.first_crossing(ts, curve(p), 2.0, "up"),
        "auc_window": lambda p: M.auc(ts, curve(3.0), t_start=p, t_end=p + 2.0),
        "half_life": lambda p: M.half_life(ts, jnp.exp(-ts / p), 1.0, 9.0),
        "fold": lambda p: M.fold_change(ts, curve(4.0), p, 1.0),
    }
    f = fns[which]
    p0 = 4.13
    g = float(jax.grad(f)(p0))
    fd = central_fd(lambda x: float(f(x)), p0, 1e-6)
    assert g == pytest.approx(fd, rel=1e-5, abs=1e-8)
    assert abs(g) > 1e-3  # the metric does depend on p
