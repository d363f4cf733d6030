"""Time courses with data overlays and units, and visual predictive check (VPC) bands.

Every function returns a `matplotlib.figure.Figure` and never calls `show()`; save it with `fig.savefig(path)`
(or [`carkinetics.plot.save_figure`][], which also closes it). The x axis is days relative to CAR-T infusion.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from .._analysis._population import percentile_bands

TIME_LABEL = "day (relative to CAR-T infusion)"


def _plt():
    import matplotlib.pyplot as plt

    return plt


def _lookup(solution, name: str) -> tuple[np.ndarray, str]:
    cls = solution.model_class
    if name in cls.observable_names():
        return (
            np.asarray(solution.obs_array[..., cls.observable_names().index(name)]),
            cls.observable_units.get(name, ""),
        )
    if name in cls.state_names():
        return np.asarray(solution.y_array[..., cls.state_names().index(name)]), cls.state_units.get(name, "")
    raise ValueError(
        f"Unknown output {name!r} of {cls.__name__}; observables are {list(cls.observable_names())} and states are "
        f"{list(cls.state_names())}."
    )


def _data_for(data: Any, name: str) -> tuple[np.ndarray, np.ndarray] | None:
    if data is None:
        return None
    if hasattr(data, "select") and hasattr(data, "observable"):  # carkinetics.io.Observations
        if name not in data.observable:
            return None
        return data.select(name)
    if isinstance(data, Mapping):
        if name not in data:
            return None
        t, v = data[name]
        return np.asarray(t, float), np.asarray(v, float)
    raise ValueError(
        f"`data` must be a mapping name -> (times, values) or carkinetics.io.Observations, got {type(data).__name__}."
    )


def _auto_log(values: np.ndarray) -> bool:
    v = np.asarray(values, float)
    v = v[np.isfinite(v) & (v > 0)]
    # robust to a state that starts at (almost) zero: compare the maximum with the 10th percentile
    return v.size > 1 and float(v.max()) / max(float(np.quantile(v, 0.1)), 1e-300) > 1e3


def plot_timecourse(
    solutions: Any,
    names: Sequence[str] | None = None,
    *,
    labels: Sequence[str] | None = None,
    data: Any = None,
    logy: bool | None = None,
    ylim_floor: float | None = None,
    decades: float = 6.0,
    title: str | None = None,
    ncols: int = 2,
    panel_size: tuple[float, float] = (4.6, 3.0),
    panel_titles: Mapping[str, str] | None = None,
):
    """One panel per output (observable or state), with units on the y axis and optional data overlays.

    **Arguments:**

    - `solutions`: a [`carkinetics.Solution`][] or a sequence of them (e.g. human and mouse, or two regimens),
      all of the same model class (or sharing the plotted names).
    - `names`: observables/states to plot; default all observables of the first solution.
    - `labels`: legend label per solution.
    - `data`: measured values to overlay as markers: a mapping `name -> (times, values)` or
      [`carkinetics.io.Observations`][].
    - `logy`: log y axis (default: automatic, when a panel spans more than three decades).
    - `ylim_floor`: lower y limit on log axes (e.g. a detection limit); default: `decades` below the maximum.
    - `title`, `ncols`, `panel_size`: figure layout.
    - `panel_titles`: a readable title per output name (e.g. `{"b_blood": "B cells in blood"}`); the y axis keeps
      the name and unit. Default: the names.

    **Returns:** a `matplotlib.figure.Figure`.

    **Raises:** `ValueError` for an unknown output name or malformed `data`.

    **Example:**

    ```python
    import jax.numpy as jnp
    import carkinetics as ck
    from carkinetics.models import OneCompartmentPK
    from carkinetics.plot import plot_timecourse
    sol = ck.simulate(OneCompartmentPK(), ck.Bolus(0.0, 100.0, "central"), jnp.linspace(0, 2, 50))
    fig = plot_timecourse(sol, data={"concentration": ([0.5, 1.0], [0.5, 0.15])})
    ```
    """
    plt = _plt()
    sols = list(solutions) if isinstance(solutions, (list, tuple)) else [solutions]
    if not sols:
        raise ValueError("`solutions` must hold at least one Solution.")
    if labels is not None and len(labels) != len(sols):
        raise ValueError(f"`labels` has {len(labels)} entries for {len(sols)} solutions.")
    names = list(sols[0].model_class.observable_names() if names is None else names)
    if not names:
        raise ValueError("`names` must name at least one observable or state.")
    if not (isinstance(ncols, int) and ncols >= 1):
        raise ValueError(f"`ncols` must be a positive int, got {ncols!r}.")
    ncols = min(ncols, len(names))
    nrows = -(-len(names) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(panel_size[0] * ncols, panel_size[1] * nrows), squeeze=False)
    for k, name in enumerate(names):
        ax = axes[k // ncols][k % ncols]
        unit = ""
        all_vals = []
        for i, sol in enumerate(sols):
            vals, unit = _lookup(sol, name)
            all_vals.append(vals)
            ax.plot(np.asarray(sol.ts), vals, lw=1.6, label=None if labels is None else labels[i])
        obs = _data_for(data, name)
        if obs is not None:
            ax.plot(obs[0], obs[1], "o", color="black", ms=4, mfc="white", label="data")
            all_vals.append(obs[1])
        use_log = _auto_log(np.concatenate([np.ravel(v) for v in all_vals])) if logy is None else logy
        if use_log:
            ax.set_yscale("log")
            vals = np.concatenate([np.ravel(v) for v in all_vals])
            vals = vals[np.isfinite(vals) & (vals > 0)]
            if ylim_floor is not None:
                ax.set_ylim(bottom=ylim_floor)
            elif vals.size:  # show at most `decades` below the maximum (values near 0 would flatten the plot)
                ax.set_ylim(
                    bottom=max(float(vals.min()), float(vals.max()) * 10.0 ** (-decades)) / 1.5,
                    top=float(vals.max()) * 1.5,
                )
        ax.set_title((panel_titles or {}).get(name, name), fontsize=10)
        ax.set_ylabel(f"{name} [{unit}]" if unit else name, fontsize=9)
        ax.set_xlabel(TIME_LABEL, fontsize=9)
        ax.axvline(0.0, color="0.7", lw=0.8, ls=":")
        ax.grid(alpha=0.3)
        if (labels is not None or obs is not None) and k == 0:
            ax.legend(fontsize=8)
    for k in range(len(names), nrows * ncols):
        axes[k // ncols][k % ncols].set_visible(False)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_vpc(
    ts: Any,
    samples: Any,
    *,
    name: str = "",
    unit: str = "",
    quantiles: tuple[float, float, float] = (0.05, 0.5, 0.95),
    inner: tuple[float, float] | None = (0.25, 0.75),
    mask: Any = None,
    data: tuple[Any, Any] | None = None,
    logy: bool | None = None,
    ax: Any = None,
    color: str = "C0",
    label: str | None = None,
):
    """Visual predictive check: the median and prediction bands of simulated trajectories, with data overlaid.

    **Arguments:**

    - `ts`: save times (days), shape `(T,)`.
    - `samples`: simulated values of one output, shape `(N, T)` (e.g. a column of a batched `Solution.obs_array`).
    - `name`, `unit`: y-axis label.
    - `quantiles`: (lower, median, upper) of the wide band; `inner`: a narrower band drawn darker (or `None`).
    - `mask`: boolean `(N,)`, members to keep (e.g. `Solution.ok` of a sweep).
    - `data`: `(times, values)` drawn as markers.
    - `logy`: log y axis (default automatic); `ax`: draw into an existing axis.

    **Returns:** the `Figure`.

    **Example:**

    ```python
    import numpy as np
    from carkinetics.plot import plot_vpc
    ts = np.linspace(0, 10, 30)
    rng = np.random.default_rng(0)
    samples = np.exp(-np.outer(rng.lognormal(np.log(0.3), 0.3, 200), ts))
    fig = plot_vpc(ts, samples, name="fraction remaining", unit="1")
    ```
    """
    plt = _plt()
    ts = np.asarray(ts, float)
    x = np.asarray(samples, float)
    if x.ndim != 2 or x.shape[1] != ts.shape[0]:
        raise ValueError(f"`samples` must have shape (N, {ts.shape[0]}) to match `ts`, got {x.shape}.")
    lo, med, hi = percentile_bands(x, [100.0 * q for q in quantiles], ok=mask)
    if ax is None:
        fig, ax = plt.subplots(figsize=(6, 3.6))
    else:
        fig = ax.figure
    ax.fill_between(
        ts, lo, hi, color=color, alpha=0.2, lw=0, label=f"{int(100 * quantiles[0])}-{int(100 * quantiles[2])}% band"
    )
    if inner is not None:
        ilo, ihi = percentile_bands(x, [100.0 * q for q in inner], ok=mask)
        ax.fill_between(
            ts, ilo, ihi, color=color, alpha=0.35, lw=0, label=f"{int(100 * inner[0])}-{int(100 * inner[1])}% band"
        )
    ax.plot(ts, med, color=color, lw=1.8, label=label or "median")
    if data is not None:
        ax.plot(
            np.asarray(data[0], float), np.asarray(data[1], float), "o", color="black", mfc="white", ms=4, label="data"
        )
    use_log = _auto_log(np.concatenate([lo, hi])) if logy is None else logy
    if use_log:
        ax.set_yscale("log")
    ax.set_xlabel(TIME_LABEL)
    ax.set_ylabel(f"{name} [{unit}]" if unit else name)
    n = int(np.sum(np.asarray(mask, bool))) if mask is not None else x.shape[0]
    ax.set_title(f"VPC: {name} (n = {n} simulated)" if name else f"VPC (n = {n} simulated)", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def write_figure(fig: Any, path: str, *, dpi: int = 110) -> None:
    """Render `fig` as PNG (or the format of `path`'s suffix) and write it atomically (a reader never sees a partial
    image; an interrupted run leaves the previous file or none)."""
    import io
    import os

    from .._core._files import atomic_write_bytes

    fmt = os.path.splitext(os.fspath(path))[1].lstrip(".").lower() or "png"
    buf = io.BytesIO()
    fig.savefig(buf, format=fmt, dpi=dpi)
    atomic_write_bytes(path, buf.getvalue())


def save_figure(fig: Any, path: str, *, dpi: int = 110) -> str:
    """Save `fig` as PNG (or the format of `path`'s suffix) atomically, close it, and return `path`."""
    write_figure(fig, path, dpi=dpi)
    _plt().close(fig)
    return path
