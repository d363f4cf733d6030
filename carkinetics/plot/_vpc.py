"""Percentile visual predictive check: observed percentiles per time bin against the simulated percentiles and
their uncertainty over replicate trials of the observed size (Bergstrand et al. 2011, AAPS J 13:143,
doi:10.1208/s12248-011-9255-z, "percentile VPC").

[`carkinetics.plot.plot_vpc`][] draws prediction bands of simulated trajectories with data points; this module adds
the replicate-trial version, which tells whether the observed 5th/50th/95th percentiles are compatible with the
model given how few patients were observed.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import equinox as eqx
import jax
import numpy as np


class VPCStatistics(eqx.Module):
    """Binned statistics of a percentile VPC (all arrays `(P, B)` for P percentiles and B bins).

    **Fields:** `bin_times` `(B,)` (mean observation time in each bin, days); `observed` (percentiles of the data
    per bin, `nan` for an empty bin); `simulated` (median over replicate trials of the replicate percentile);
    `simulated_lo`, `simulated_hi` (the `ci` interval of the replicate percentiles); `percentiles`; `n_obs` `(B,)`.
    """

    bin_times: np.ndarray
    observed: np.ndarray
    simulated: np.ndarray
    simulated_lo: np.ndarray
    simulated_hi: np.ndarray
    percentiles: np.ndarray
    n_obs: np.ndarray


def vpc_statistics(
    ts: Any,
    samples: Any,
    data_times: Any,
    data_values: Any,
    bins: Any,
    *,
    percentiles: Sequence[float] = (5.0, 50.0, 95.0),
    n_replicates: int = 200,
    ci: tuple[float, float] = (5.0, 95.0),
    ok: Any = None,
    key: Any = None,
) -> VPCStatistics:
    """Compute a percentile VPC.

    **Arguments:**

    - `ts` `(T,)`, `samples` `(N, T)`: simulated trajectories (e.g. the `"observables"` of
      [`carkinetics.sweep_model`][] over a virtual population), `ok` `(N,)` masks failed members.
    - `data_times`, `data_values`: observations (pooled over patients), days and the unit of `samples`.
    - `bins`: bin edges (days), increasing; an observation at time t falls in bin i if `edges[i] <= t <
      edges[i+1]` (the last bin includes its right edge).
    - `percentiles`: the percentiles compared; `n_replicates`: replicate trials; `ci`: the percentile interval
      of the replicate percentiles; `key`: a `jax.random` key for the replicate draws (default `jax.random.key(0)`;
      a fixed key gives a reproducible VPC).

    Each replicate draws, for every observation, a random simulated member evaluated (linear interpolation) at
    that observation's time, then takes the percentiles per bin, exactly as the data percentiles are taken.

    **Returns:** a [`carkinetics.plot.VPCStatistics`][].
    """
    ts = np.asarray(ts, float)
    x = np.asarray(samples, float)
    if x.ndim != 2 or x.shape[1] != ts.shape[0]:
        raise ValueError(f"`samples` must have shape (N, {ts.shape[0]}) to match `ts`, got {x.shape}.")
    if ok is not None:
        ok = np.asarray(ok, bool)
        if ok.shape != (x.shape[0],):
            raise ValueError(f"`ok` must have shape ({x.shape[0]},), got {ok.shape}.")
        x = x[ok]
    if x.shape[0] == 0:
        raise ValueError("No successful simulated members for the VPC.")
    dt = np.asarray(data_times, float)
    dv = np.asarray(data_values, float)
    if dt.ndim != 1 or dt.shape != dv.shape or dt.size == 0:
        raise ValueError(
            f"`data_times` and `data_values` must be 1-D of equal non-zero length, got {dt.shape} and {dv.shape}."
        )
    edges = np.asarray(bins, float)
    if edges.ndim != 1 or edges.size < 2 or np.any(np.diff(edges) <= 0):
        raise ValueError(f"`bins` must be at least two increasing bin edges (days), got {edges.tolist()}.")
    q = np.asarray(percentiles, float)
    if isinstance(n_replicates, bool) or not isinstance(n_replicates, int) or n_replicates < 2:
        raise ValueError(f"`n_replicates` must be an int >= 2, got {n_replicates!r}.")
    which = np.clip(np.searchsorted(edges, dt, side="right") - 1, 0, edges.size - 2)
    inside = (dt >= edges[0]) & (dt <= edges[-1])
    which = np.where(inside, which, -1)
    nb = edges.size - 1
    # Simulated values at every observation time for every member: (N, n_obs).
    sim_at = np.stack([np.interp(dt, ts, row) for row in x])
    key = jax.random.key(0) if key is None else key
    draws = np.asarray(jax.random.randint(key, (n_replicates, dt.size), 0, x.shape[0]))
    rep = sim_at[draws, np.arange(dt.size)[None, :]]  # (R, n_obs)
    obs_q = np.full((q.size, nb), np.nan)
    sim_q = np.full((n_replicates, q.size, nb), np.nan)
    times = np.full(nb, np.nan)
    n_obs = np.zeros(nb, int)
    for b in range(nb):  # a handful of bins: host-side loop
        sel = which == b
        n_obs[b] = int(sel.sum())
        if n_obs[b] == 0:
            continue
        times[b] = dt[sel].mean()
        obs_q[:, b] = np.percentile(dv[sel], q)
        sim_q[:, :, b] = np.percentile(rep[:, sel], q, axis=1).T
    lo, med, hi = np.percentile(sim_q, [ci[0], 50.0, ci[1]], axis=0)
    return VPCStatistics(times, obs_q, med, lo, hi, q, n_obs)


def plot_vpc_percentiles(
    stats: VPCStatistics,
    *,
    data: tuple[Any, Any] | None = None,
    name: str = "",
    unit: str = "",
    logy: bool = False,
    ax: Any = None,
):
    """Draw a percentile VPC from [`carkinetics.plot.vpc_statistics`][]: shaded intervals of the simulated
    percentiles, their medians (dashed), the observed percentiles (solid with markers), and optionally the data.

    **Returns:** the `Figure`. Lines are drawn in the order: for each percentile, simulated median then observed.

    **Example:**

    ```python
    import numpy as np
    from carkinetics.plot import plot_vpc_percentiles, vpc_statistics
    ts = np.linspace(0, 10, 41)
    rng = np.random.default_rng(0)
    sims = np.exp(-np.outer(rng.lognormal(np.log(0.3), 0.3, 500), ts))
    t_obs = np.repeat([1.0, 3.0, 6.0, 9.0], 12)
    y_obs = np.exp(-rng.lognormal(np.log(0.3), 0.3, t_obs.size) * t_obs)
    stats = vpc_statistics(ts, sims, t_obs, y_obs, bins=[0, 2, 4, 7, 10])
    fig = plot_vpc_percentiles(stats, data=(t_obs, y_obs), name="fraction", unit="1")
    ```
    """
    import matplotlib.pyplot as plt

    if ax is None:
        fig, ax = plt.subplots(figsize=(6.0, 3.6))
    else:
        fig = ax.figure
    good = np.isfinite(stats.bin_times)
    t = stats.bin_times[good]
    for k, p in enumerate(stats.percentiles):
        color = "C0" if p == 50 else "C1"
        ax.fill_between(
            t,
            stats.simulated_lo[k, good],
            stats.simulated_hi[k, good],
            color=color,
            alpha=0.25,
            lw=0,
            label=f"simulated P{p:g} interval" if k in (0, len(stats.percentiles) // 2) else None,
        )
        ax.plot(t, stats.simulated[k, good], color=color, ls="--", lw=1.2)
        ax.plot(
            t,
            stats.observed[k, good],
            color="black",
            marker="o",
            ms=3,
            lw=1.4,
            label="observed percentiles" if k == 0 else None,
        )
    if data is not None:
        ax.plot(
            np.asarray(data[0], float), np.asarray(data[1], float), ".", color="grey", ms=3, alpha=0.6, label="data"
        )
    if logy:
        ax.set_yscale("log")
    ax.set_xlabel("day (relative to CAR-T infusion)")
    ax.set_ylabel(f"{name} ({unit})" if unit else name)
    ax.set_title(f"Percentile VPC ({', '.join(f'P{p:g}' for p in stats.percentiles)})", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig
