"""Figures of global sensitivity results: Sobol tornado bars, Sobol indices over time, Morris screening.

Every function returns a `matplotlib.figure.Figure` and never calls `show()`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np


def _plt():
    import matplotlib.pyplot as plt

    return plt


def _axes(ax: Any, figsize: tuple[float, float]):
    plt = _plt()
    if ax is None:
        fig, ax = plt.subplots(figsize=figsize)
        return fig, ax
    return ax.figure, ax


def _scalar_result(result: Any, what: str) -> None:
    for field in what.split():
        arr = np.asarray(getattr(result, field))
        if arr.ndim != 1:
            raise ValueError(
                f"`result.{field}` has shape {arr.shape}; this plot needs a scalar output (shape (d,)). For a "
                "time-course output use plot_sobol_timecourse, or index the result first."
            )


def plot_sobol(
    result: Any,
    *,
    ax: Any = None,
    title: str | None = None,
    sort: bool = True,
    labels: Mapping[str, str] | None = None,
):
    """Tornado chart of Sobol indices: first-order (S1) and total (ST) bars per factor with confidence bars.

    **Arguments:**

    - `result`: a [`carkinetics.SobolResult`][] of a scalar output.
    - `ax`: draw into an existing axis; `title`: axis title; `sort`: order factors by ST (largest on top).
    - `labels`: readable tick labels per factor name (factors not in it keep their name).

    **Returns:** the `Figure`. Bars are drawn as `S1` then `ST`, in the (sorted) factor order.

    **Example:**

    ```python
    import jax, carkinetics as ck
    from carkinetics.plot import plot_sobol
    prob = {"names": ["a", "b"], "bounds": [[0, 1], [0, 1]]}
    x = ck.saltelli_sample(prob, 256, key=jax.random.key(0))
    fig = plot_sobol(ck.sobol_indices(prob, x[:, 0] + 0.3 * x[:, 1], key=jax.random.key(1)))
    ```
    """
    _scalar_result(result, "S1 ST S1_conf ST_conf")
    names = list(result.names)
    s1, st = np.asarray(result.S1, float), np.asarray(result.ST, float)
    c1, ct = np.asarray(result.S1_conf, float), np.asarray(result.ST_conf, float)
    order = np.argsort(st)[::-1] if sort else np.arange(len(names))
    fig, ax = _axes(ax, (6.0, 0.45 * len(names) + 1.4))
    y = np.arange(len(names))[::-1]  # first factor on top
    h = 0.38
    ax.barh(y + h / 2, s1[order], height=h, xerr=c1[order], color="C0", label="first order S1", capsize=2)
    ax.barh(y - h / 2, st[order], height=h, xerr=ct[order], color="C3", alpha=0.8, label="total ST", capsize=2)
    labels = dict(labels or {})
    ax.set_yticks(y, [labels.get(names[i], names[i]) for i in order])
    ax.axvline(0.0, color="black", lw=0.8)
    ax.set_xlabel(f"Sobol index ({round(100 * result.confidence)} % bootstrap interval)")
    ax.set_title(title or f"Sobol indices (n = {result.n_base} base samples)", fontsize=10)
    ax.grid(axis="x", alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    return fig


def plot_sobol_timecourse(
    result: Any,
    ts: Any,
    *,
    total: bool = True,
    ax: Any = None,
    title: str | None = None,
    names: Sequence[str] | None = None,
):
    """Sobol indices of a time-course output against time (days), one line per factor with a confidence band.

    `result` is a [`carkinetics.SobolResult`][] with indices of shape `(d, T)`; `total` picks ST (default) or S1;
    `names` restricts the factors drawn.

    **Returns:** the `Figure`.
    """
    ts = np.asarray(ts, float)
    idx = np.asarray(result.ST if total else result.S1, float)
    conf = np.asarray(result.ST_conf if total else result.S1_conf, float)
    if idx.ndim != 2 or idx.shape[1] != ts.shape[0]:
        raise ValueError(f"The indices must have shape (d, {ts.shape[0]}) to match `ts`, got {idx.shape}.")
    chosen = list(result.names) if names is None else list(names)
    unknown = sorted(set(chosen) - set(result.names))
    if unknown:
        raise ValueError(f"Unknown factor(s) {unknown}; the result has {list(result.names)}.")
    fig, ax = _axes(ax, (6.5, 3.6))
    for k, name in enumerate(chosen):
        i = list(result.names).index(name)
        ax.plot(ts, idx[i], color=f"C{k % 10}", lw=1.6, label=name)
        ax.fill_between(ts, idx[i] - conf[i], idx[i] + conf[i], color=f"C{k % 10}", alpha=0.2, lw=0)
    ax.set_xlabel("day (relative to CAR-T infusion)")
    ax.set_ylabel("total Sobol index ST" if total else "first-order Sobol index S1")
    ax.set_title(title or "Sobol indices over time", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_morris(result: Any, *, title: str | None = None):
    """Morris screening: a tornado of mu* (with bootstrap bars) and the (mu*, sigma) plane.

    `result` is a [`carkinetics.MorrisResult`][] of a scalar output. Points far from the origin matter;
    a high sigma / mu* ratio flags non-linearity or interactions.

    **Returns:** the `Figure` with two axes (bars left, plane right).
    """
    _scalar_result(result, "mu_star sigma mu_star_conf")
    plt = _plt()
    names = list(result.names)
    mus, sig, conf = (np.asarray(getattr(result, f), float) for f in ("mu_star", "sigma", "mu_star_conf"))
    order = np.argsort(mus)[::-1]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(9.0, 0.4 * len(names) + 1.8))
    y = np.arange(len(names))[::-1]
    a1.barh(y, mus[order], xerr=conf[order], color="C2", capsize=2)
    a1.set_yticks(y, [names[i] for i in order])
    a1.set_xlabel("mu* (mean |elementary effect|)")
    a1.grid(axis="x", alpha=0.3)
    a2.scatter(mus, sig, color="C2")
    for i, name in enumerate(names):
        a2.annotate(name, (mus[i], sig[i]), fontsize=7, xytext=(3, 3), textcoords="offset points")
    lim = max(float(np.max(mus)), float(np.max(sig)), 1e-12) * 1.1
    a2.plot([0, lim], [0, lim], color="grey", lw=0.8, ls="--", label="sigma = mu*")
    a2.set_xlabel("mu*")
    a2.set_ylabel("sigma")
    a2.legend(fontsize=8)
    a2.grid(alpha=0.3)
    fig.suptitle(title or f"Morris screening (r = {result.n_trajectories} trajectories)", fontsize=10)
    fig.tight_layout()
    return fig
