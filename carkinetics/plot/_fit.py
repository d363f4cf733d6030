"""Calibration figures: fit vs data, observed vs predicted, residuals, profile likelihoods."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ._timecourse import write_figure


def _plt():
    import matplotlib.pyplot as plt

    return plt


def _collect(fit: Any):
    """Time courses, summary predictions and the fitted trajectory of a FitResult (NumPy)."""
    from .._inference._data import SummaryData, TimeCourseData

    problem = fit.problem
    sol = problem.simulate(fit.z)
    preds = [np.asarray(p) for p in problem.predictions(fit.z)]
    names = problem.model.observable_names()
    tcs, sums = [], []
    for tg, pred, i in zip(problem.targets, preds, problem.obs_index):
        if isinstance(tg, TimeCourseData):
            tcs.append((tg, pred, names[i], np.asarray(sol.obs_array[:, i])))
        elif isinstance(tg, SummaryData):
            sums.append((tg, float(pred)))
    return np.asarray(problem.ts), tcs, sums


def plot_fit(fit: Any, *, path: str | None = None, log_scale: bool = True, title: str = ""):
    """Fitted trajectories with the time-course data, and each summary target (value, spread) vs prediction.

    **Arguments:** `fit` (a [`carkinetics.FitResult`][]); `path` (save the figure there if given); `log_scale`
    (log y-axis for time courses); `title`.

    **Returns:** the matplotlib `Figure`.
    """
    plt = _plt()
    ts, tcs, sums = _collect(fit)
    n_panels = len({name for _, _, name, _ in tcs}) + (1 if sums else 0)
    fig, axes = plt.subplots(1, max(n_panels, 1), figsize=(5.0 * max(n_panels, 1), 4.0), squeeze=False)
    axes = axes[0]
    units = fit.problem.model.observable_units
    by_obs: dict[str, list] = {}
    for item in tcs:
        by_obs.setdefault(item[2], []).append(item)
    for ax, (name, items) in zip(axes, by_obs.items()):
        traj = items[0][3]
        pos = traj > 0 if log_scale else np.ones_like(traj, bool)
        ax.plot(ts[pos], traj[pos], "-", color="C0", label="fit")
        for k, (tg, _pred, _, _) in enumerate(items):
            ax.plot(np.asarray(tg.times), np.asarray(tg.values), "o", color=f"C{k + 1}", label=tg.label or "data")
        if log_scale:
            ax.set_yscale("log")
        ax.set_xlabel("days after CAR-T infusion")
        ax.set_ylabel(f"{name} ({units.get(name, '')})")
        ax.legend(fontsize=8)
    if sums:
        ax = axes[-1]
        y = np.arange(len(sums))
        for k, (tg, pred) in enumerate(sums):
            scale = abs(tg.value) if float(tg.value) != 0 else 1.0
            v = float(tg.value) / scale
            if tg.interval is not None:
                lo, hi = tg.interval
                lo = lo / scale if math.isfinite(lo) else v
                hi = hi / scale if math.isfinite(hi) else v * 1.5
                ax.plot([lo, hi], [k, k], "-", color="0.6", lw=4)
            ax.plot(v, k, "s", color="k", label="published" if k == 0 else None)
            ax.plot(pred / scale, k, "o", color="C3", label="model" if k == 0 else None)
        ax.set_yticks(y, [tg.target_id for tg, _ in sums], fontsize=7)
        ax.set_xlabel("value / published value (bar: reported spread)")
        ax.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    if path:
        write_figure(fig, path, dpi=120)
    return fig


def plot_obs_vs_pred(fit: Any, *, path: str | None = None, log_scale: bool = True):
    """Observed vs predicted for every time-course point (identity line); returns the `Figure`."""
    plt = _plt()
    _, tcs, _ = _collect(fit)
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    allv = []
    for k, (tg, pred, name, _) in enumerate(tcs):
        obs = np.asarray(tg.values)
        ax.plot(pred, obs, "o", color=f"C{k}", label=name)
        allv.extend([*pred, *obs])
    allv = np.asarray([v for v in allv if np.isfinite(v) and (v > 0 or not log_scale)])
    if allv.size:
        lo, hi = allv.min(), allv.max()
        ax.plot([lo, hi], [lo, hi], "k--", lw=1)
    if log_scale:
        ax.set_xscale("log")
        ax.set_yscale("log")
    ax.set_xlabel("predicted")
    ax.set_ylabel("observed")
    ax.legend(fontsize=8)
    fig.tight_layout()
    if path:
        write_figure(fig, path, dpi=120)
    return fig


def plot_residuals(fit: Any, *, path: str | None = None):
    """Standardised residuals of the time-course data against time (±2 band); returns the `Figure`."""
    plt = _plt()
    _, tcs, _ = _collect(fit)
    fig, ax = plt.subplots(figsize=(6.0, 3.5))
    for k, (tg, pred, name, _) in enumerate(tcs):
        r = np.asarray(tg.error.residuals(pred, tg.values))
        ax.plot(np.asarray(tg.times), r, "o", color=f"C{k}", label=name)
    ax.axhline(0.0, color="k", lw=1)
    for s in (-2.0, 2.0):
        ax.axhline(s, color="0.5", ls="--", lw=1)
    ax.set_xlabel("days after CAR-T infusion")
    ax.set_ylabel("standardised residual")
    ax.legend(fontsize=8)
    fig.tight_layout()
    if path:
        write_figure(fig, path, dpi=120)
    return fig


def plot_profiles(profiles: Any, *, path: str | None = None):
    """Profile likelihoods (objective rise vs parameter value, threshold line); returns the `Figure`."""
    plt = _plt()
    profiles = list(profiles)
    n = max(len(profiles), 1)
    fig, axes = plt.subplots(1, n, figsize=(3.6 * n, 3.2), squeeze=False)
    for ax, pr in zip(axes[0], profiles):
        ax.plot(np.asarray(pr.values), np.asarray(pr.delta), "o-")
        ax.axhline(pr.threshold, color="C3", ls="--", lw=1)
        ax.set_xscale("log" if np.all(np.asarray(pr.values) > 0) else "linear")
        ax.set_xlabel(pr.name)
        ax.set_ylabel(f"Δ {pr.which} objective")
        ax.set_title("identifiable" if pr.identifiable else "NOT identifiable", fontsize=9)
    fig.tight_layout()
    if path:
        write_figure(fig, path, dpi=120)
    return fig
