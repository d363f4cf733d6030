"""GSA figures: the drawn bars/lines carry the index values (smoke tests paired with value checks)."""

import jax
import matplotlib
import numpy as np
import pytest

matplotlib.use("Agg")

import carkinetics as ck
from carkinetics.plot import plot_morris, plot_sobol, plot_sobol_timecourse

PROB = {"names": ["a", "b", "c"], "bounds": [[0.0, 1.0]] * 3}


def test_plot_sobol_bars_match_indices():
    import matplotlib.pyplot as plt

    x = ck.saltelli_sample(PROB, 256, key=jax.random.key(0))
    res = ck.sobol_indices(PROB, x[:, 0] + 3.0 * x[:, 1], key=jax.random.key(1))
    fig = plot_sobol(res)
    ax = fig.axes[0]
    bars = ax.patches
    assert len(bars) == 6
    order = np.argsort(res.ST)[::-1]  # sorted by ST: b, a, c
    assert [t.get_text() for t in ax.get_yticklabels()] == [PROB["names"][i] for i in order]
    np.testing.assert_allclose([b.get_width() for b in bars[:3]], res.S1[order], rtol=1e-12)
    np.testing.assert_allclose([b.get_width() for b in bars[3:]], res.ST[order], rtol=1e-12)
    plt.close(fig)
    # readable labels replace the names they map, in the same order; unmapped factors keep their names
    fig = plot_sobol(res, labels={"b": "factor b (1/d)"})
    expected = [{"b": "factor b (1/d)"}.get(PROB["names"][i], PROB["names"][i]) for i in order]
    assert [t.get_text() for t in fig.axes[0].get_yticklabels()] == expected
    plt.close(fig)
    # Time-course indices: one line per factor with the ST values; a (d, T) result is refused by plot_sobol.
    x = ck.saltelli_sample(PROB, 512, key=jax.random.key(0))  # (512 x 5, 4) outputs: shapes shared with test_gsa
    y = np.stack([x[:, 0], x[:, 0] + x[:, 1], x[:, 1], x[:, 2]], axis=1)
    tc = ck.sobol_indices(PROB, y, key=jax.random.key(1))
    fig = plot_sobol_timecourse(tc, [0.0, 1.0, 2.0, 3.0])
    np.testing.assert_allclose(fig.axes[0].lines[1].get_ydata(), tc.ST[1], rtol=1e-12)
    plt.close(fig)
    with pytest.raises(ValueError, match="scalar output"):
        plot_sobol(tc)


def test_plot_morris_values():
    import matplotlib.pyplot as plt

    x = ck.morris_sample(PROB, 40, key=jax.random.key(0))
    res = ck.morris_indices(PROB, x, 2.0 * x[:, 0] + x[:, 1] ** 2, key=jax.random.key(1), n_bootstrap=200)
    fig = plot_morris(res)
    a1, a2 = fig.axes
    np.testing.assert_allclose(sorted(b.get_width() for b in a1.patches), sorted(res.mu_star), rtol=1e-12)
    np.testing.assert_allclose(a2.collections[0].get_offsets()[:, 0], res.mu_star, rtol=1e-12)
    assert res.mu_star[0] == pytest.approx(2.0, abs=1e-12)
    plt.close(fig)
