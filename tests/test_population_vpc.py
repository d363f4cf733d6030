"""Percentile VPC statistics (hand values) and figure (smoke test paired with a value check)."""

import jax
import matplotlib
import numpy as np
import pytest

matplotlib.use("Agg")

from carkinetics.plot import plot_vpc_percentiles, vpc_statistics


def test_vpc_statistics_hand_values():
    ts = np.array([0.0, 10.0])
    sims = np.tile(np.array([[0.0, 10.0]]), (5, 1))  # identical members: simulated value = t
    t_obs = np.array([1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 10.0])
    y_obs = np.array([5.0, 1.0, 3.0, 2.0, 4.0, 10.0, 30.0, 20.0, 40.0])
    st = vpc_statistics(ts, sims, t_obs, y_obs, bins=[0.0, 5.5, 10.0], percentiles=(50.0,), n_replicates=20)
    np.testing.assert_array_equal(st.n_obs, [5, 4])
    np.testing.assert_allclose(st.bin_times, [3.0, 7.75], rtol=1e-12)
    np.testing.assert_allclose(st.observed, [[3.0, 25.0]], rtol=1e-12)
    # Every replicate sees the same values (t at each observation time): median 3 and 7.5, zero-width interval.
    np.testing.assert_allclose(st.simulated, [[3.0, 7.5]], rtol=1e-12)
    np.testing.assert_allclose(st.simulated_lo, st.simulated, rtol=1e-12)
    np.testing.assert_allclose(st.simulated_hi, st.simulated, rtol=1e-12)


def test_vpc_replicate_interval_and_mask():
    rng = np.random.default_rng(0)
    ts = np.linspace(0.0, 4.0, 5)
    level = rng.normal(size=400)
    sims = np.tile(level[:, None], (1, 5))  # flat trajectories at N(0, 1) levels
    ok = np.ones(400, bool)
    sims[:10] = 1e6
    ok[:10] = False  # failed members must not enter the VPC
    t_obs = np.repeat([0.5, 2.5], 50)
    st = vpc_statistics(ts, sims, t_obs, np.zeros(100), bins=[0, 1, 3], ok=ok, n_replicates=300, key=jax.random.key(1))
    # The median of 50 N(0,1) draws has SD 1.2533 / sqrt(50) = 0.177; its 5-95 % range is about +-0.29.
    width = st.simulated_hi[1] - st.simulated_lo[1]
    np.testing.assert_allclose(width, 2 * 1.645 * 0.177, rtol=0.2)
    assert np.all(np.abs(st.simulated[1]) < 0.15) and np.all(st.simulated_hi < 10)


def test_plot_vpc_percentiles_lines():
    import matplotlib.pyplot as plt

    ts = np.linspace(0.0, 10.0, 11)
    sims = np.outer(np.linspace(0.5, 1.5, 50), ts)
    t_obs = np.repeat([2.0, 8.0], 10)
    y_obs = t_obs * np.tile(np.linspace(0.6, 1.4, 10), 2)
    st = vpc_statistics(ts, sims, t_obs, y_obs, bins=[0, 5, 10])
    fig = plot_vpc_percentiles(st, data=(t_obs, y_obs), name="x", unit="1")
    lines = fig.axes[0].lines
    assert len(lines) == 2 * 3 + 1  # simulated median + observed per percentile, plus the data
    np.testing.assert_allclose(lines[3].get_ydata(), st.observed[1], rtol=1e-12)  # observed P50
    np.testing.assert_allclose(st.observed[1], [2.0, 8.0], rtol=1e-12)
    plt.close(fig)
    with pytest.raises(ValueError, match="bins"):
        vpc_statistics(ts, sims, t_obs, y_obs, bins=[5, 0])
