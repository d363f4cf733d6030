"""Population-fit figures: goodness of fit, individual fits, (prediction-corrected) VPC, parameters vs covariates.

All take a [`carkinetics.PopulationFit`][]; times are shown in the unit of the data set (e.g. hours for the
theophylline data).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ._vpc import VPCStatistics


def _plt():
    import matplotlib.pyplot as plt

    return plt


_UNITS = {"d": (1.0, "day"), "h": (24.0, "hour"), "min": (1440.0, "minute"), "w": (1 / 7.0, "week")}


def _time_unit(fit: Any) -> tuple[float, str]:
    """Factor from days to the data's time unit, and its name."""
    return _UNITS.get(fit.problem.data.time_unit, (1.0, fit.problem.data.time_unit))


def plot_gof(fit: Any, table: dict[str, np.ndarray] | None = None):
    """Goodness-of-fit panels: DV vs PRED and vs IPRED (identity line), CWRES vs time and vs PRED, |IWRES| vs IPRED,
    and a normal QQ plot of CWRES. Censored observations are drawn as open markers at their limit.

    **Returns:** the `Figure`. **Example:** `plot_gof(ck.fit_population(problem))`.
    """
    import carkinetics as ck

    plt = _plt()
    t = ck.population_diagnostics(fit) if table is None else table
    cens = np.asarray(t["CENS"], bool)
    _, unit = _time_unit(fit)
    fig, axes = plt.subplots(2, 3, figsize=(11.0, 6.6))
    for ax, x, label in ((axes[0, 0], t["PRED"], "PRED"), (axes[0, 1], t["IPRED"], "IPRED")):
        ax.plot(x[~cens], t["DV"][~cens], "o", ms=3, alpha=0.7)
        if cens.any():
            ax.plot(x[cens], t["DV"][cens], "o", ms=4, mfc="none", color="C3", label="censored (at LLOQ)")
            ax.legend(fontsize=7)
        hi = float(np.nanmax(np.concatenate([x, t["DV"]]))) if len(x) else 1.0
        ax.plot([0, hi], [0, hi], "k-", lw=0.8)
        ax.set_xlabel(label)
        ax.set_ylabel("DV")
    for ax, x, label in ((axes[0, 2], t["TIME"], f"time ({unit})"), (axes[1, 0], t["PRED"], "PRED")):
        ax.plot(x, t["CWRES"], "o", ms=3, alpha=0.7)
        ax.axhline(0, color="k", lw=0.8)
        for y in (-2, 2):
            ax.axhline(y, color="grey", lw=0.6, ls="--")
        ax.set_xlabel(label)
        ax.set_ylabel("CWRES")
    axes[1, 1].plot(t["IPRED"], np.abs(t["IWRES"]), "o", ms=3, alpha=0.7)
    axes[1, 1].set_xlabel("IPRED")
    axes[1, 1].set_ylabel("|IWRES|")
    cw = np.sort(t["CWRES"][np.isfinite(t["CWRES"])])
    if cw.size:
        from scipy.stats import norm

        q = norm.ppf((np.arange(cw.size) + 0.5) / cw.size)
        axes[1, 2].plot(q, cw, "o", ms=3, alpha=0.7)
        axes[1, 2].plot([q[0], q[-1]], [q[0], q[-1]], "k-", lw=0.8)
    axes[1, 2].set_xlabel("normal quantile")
    axes[1, 2].set_ylabel("CWRES quantile")
    for ax in axes.flat:
        ax.grid(alpha=0.3)
    fig.suptitle(f"{fit.method.upper()} goodness of fit: {fit.n_subjects} subjects, OFV {fit.ofv:.2f}", fontsize=10)
    fig.tight_layout()
    return fig


def plot_individual_fits(
    fit: Any, ids: Sequence[str] | None = None, *, max_subjects: int = 12, points: int = 200, logy: bool = False
):
    """Each subject's data with its individual (EBE) and population (typical) predicted curves.

    **Arguments:** `ids` (default: the first `max_subjects` subjects), `points` per curve, `logy`.

    **Returns:** the `Figure`.
    """
    import jax.numpy as jnp

    import carkinetics as ck

    plt = _plt()
    problem = fit.problem
    data = problem.data
    chosen = list(data.ids[:max_subjects]) if ids is None else [str(i) for i in ids]
    unknown = [i for i in chosen if i not in data.ids]
    if unknown:
        raise ValueError(f"Unknown subject IDs {unknown}.")
    idx = np.asarray([data.ids.index(i) for i in chosen])
    params = problem.unpack(jnp.asarray(fit.psi))
    t_all = np.asarray(data.time)[np.asarray(data.mask)]
    grid = np.linspace(min(0.0, float(t_all.min())), float(t_all.max()), points)
    eta = jnp.asarray(fit.eta)
    sub = problem.with_data(data.take(idx))
    curves = []
    for e in (eta[idx], jnp.zeros_like(eta[idx])):
        phi = sub.phi(params, e)
        sol = ck.simulate_ensemble(
            sub.models(phi),
            sub.data.regimen,
            jnp.asarray(grid),
            solver=problem.solver,
            rtol=problem.rtol,
            atol=problem.atol,
            throw=False,
        )
        curves.append(np.asarray(sol.obs_array))
    scale, unit = _time_unit(fit)
    names = problem.model.observable_names()
    ncol = min(4, len(idx))
    nrow = int(np.ceil(len(idx) / ncol))
    fig, axes = plt.subplots(nrow, ncol, figsize=(2.9 * ncol, 2.3 * nrow), squeeze=False, sharex=True)
    for k, i in enumerate(idx):
        ax = axes.flat[k]
        m = np.asarray(data.mask[i])
        obs = np.asarray(data.obs_index[i])[m]
        for o in sorted(set(obs.tolist())):
            sel = obs == o
            cens = np.asarray(data.censored[i])[m][sel]
            tt = np.asarray(data.time[i])[m][sel] * scale
            yy = np.asarray(data.dv[i])[m][sel]
            ax.plot(tt[~cens], yy[~cens], "o", ms=3, color="k")
            if cens.any():
                ax.plot(tt[cens], yy[cens], "v", ms=4, mfc="none", color="C3")
            ax.plot(grid * scale, curves[0][k, :, o], color="C0", lw=1.2, label="individual" if k == 0 else None)
            ax.plot(
                grid * scale, curves[1][k, :, o], color="C1", lw=1.0, ls="--", label="population" if k == 0 else None
            )
        ax.set_title(f"ID {data.ids[i]}", fontsize=8)
        if logy:
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(idx) :]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7)
    fig.supxlabel(f"time ({unit})", fontsize=9)
    fig.supylabel(
        ", ".join(names[o] for o in sorted(set(np.asarray(data.obs_index)[np.asarray(data.mask)].tolist()))), fontsize=9
    )
    fig.tight_layout()
    return fig


def population_vpc(
    fit: Any,
    key: Any,
    *,
    n_replicates: int = 200,
    bins: Any = None,
    percentiles: Sequence[float] = (5.0, 50.0, 95.0),
    ci: tuple[float, float] = (5.0, 95.0),
    prediction_corrected: bool = False,
    observable: int | None = None,
) -> VPCStatistics:
    """Percentile VPC statistics of a population fit: `n_replicates` data sets simulated on the observed design at
    the estimates (random effects from Omega, residual errors from the error model), percentiles per time bin.

    With `prediction_corrected`, observed and simulated values are multiplied by `median(PRED in bin) / PRED`
    (Bergstrand et al. 2011, AAPS J 13:143), which removes the spread that comes from different doses and
    covariates. Censored observations are left out of the observed percentiles. Times are in the data's unit.

    **Returns:** a [`carkinetics.plot.VPCStatistics`][] for [`carkinetics.plot.plot_vpc_percentiles`][].
    """
    import jax
    import jax.numpy as jnp

    import carkinetics as ck

    problem = fit.problem
    data = problem.data
    params = problem.unpack(jnp.asarray(fit.psi))
    mask = np.asarray(data.mask & ~data.censored)
    if observable is not None:
        mask = mask & (np.asarray(data.obs_index) == observable)
    scale, _ = _time_unit(fit)
    t = np.asarray(data.time)[mask] * scale
    y = np.asarray(data.dv)[mask]
    if bins is None:  # boundaries in the largest gaps between sampling times (nominal times stay together)
        uniq = np.unique(t)
        nb = int(min(8, uniq.size))
        gaps = np.diff(uniq)
        cut = np.sort(np.argsort(gaps)[::-1][: nb - 1])
        bins = np.concatenate([[uniq[0]], 0.5 * (uniq[cut] + uniq[cut + 1]), [uniq[-1]]])
    bins = np.asarray(bins, float)
    which = np.clip(np.searchsorted(bins, t, side="right") - 1, 0, len(bins) - 2)
    nb = len(bins) - 1
    sims = np.stack(
        [np.asarray(problem.simulate(jax.random.fold_in(key, r), params)[0].dv)[mask] for r in range(n_replicates)]
    )
    if prediction_corrected:
        table = ck.population_diagnostics(fit)
        pred_full = np.full(np.asarray(data.dv).shape, np.nan)
        rows, cols = np.nonzero(np.asarray(data.mask))
        pred_full[rows, cols] = table["PRED"]
        pred = pred_full[mask]
        med = np.array([np.median(pred[which == b]) if np.any(which == b) else np.nan for b in range(nb)])
        factor = med[which] / np.where(pred > 0, pred, np.nan)
        y = y * factor
        sims = sims * factor[None, :]
    p = np.asarray(percentiles, float)
    obs = np.full((p.size, nb), np.nan)
    sim_med = np.full((p.size, nb), np.nan)
    lo = np.full((p.size, nb), np.nan)
    hi = np.full((p.size, nb), np.nan)
    centre = np.full(nb, np.nan)
    n_obs = np.zeros(nb, int)
    for b in range(nb):
        sel = which == b
        n_obs[b] = int(sel.sum())
        if not sel.any():
            continue
        centre[b] = float(np.mean(t[sel]))
        obs[:, b] = np.nanpercentile(y[sel], p)
        rep = np.nanpercentile(sims[:, sel], p, axis=1)  # (P, R)
        sim_med[:, b] = np.median(rep, axis=1)
        lo[:, b], hi[:, b] = np.percentile(rep, ci[0], axis=1), np.percentile(rep, ci[1], axis=1)
    return VPCStatistics(
        bin_times=centre, observed=obs, simulated=sim_med, simulated_lo=lo, simulated_hi=hi, percentiles=p, n_obs=n_obs
    )


def plot_population_vpc(
    fit: Any,
    key: Any,
    *,
    n_replicates: int = 200,
    prediction_corrected: bool = False,
    logy: bool = False,
    **kwargs: Any,
):
    """A percentile VPC of a population fit ([`carkinetics.plot.population_vpc`][] drawn by
    [`carkinetics.plot.plot_vpc_percentiles`][]), with the (prediction-corrected) data.

    **Returns:** the `Figure`.
    """
    from ._vpc import plot_vpc_percentiles

    stats = population_vpc(fit, key, n_replicates=n_replicates, prediction_corrected=prediction_corrected, **kwargs)
    data = fit.problem.data
    mask = np.asarray(data.mask & ~data.censored)
    scale, unit = _time_unit(fit)
    y = np.asarray(data.dv)[mask]
    if prediction_corrected:
        y = None
    names = fit.problem.model.observable_names()
    obs = sorted(set(np.asarray(data.obs_index)[mask].tolist()))
    fig = plot_vpc_percentiles(
        stats,
        data=None if y is None else (np.asarray(data.time)[mask] * scale, y),
        name=("prediction-corrected " if prediction_corrected else "") + names[obs[0]],
        unit=fit.problem.model.observable_units.get(names[obs[0]], ""),
        logy=logy,
    )
    ax = fig.axes[0]
    ax.set_xlabel(f"time ({unit})")
    return fig


def plot_parameter_covariates(fit: Any, covariates: Sequence[str] | None = None):
    """Random effects (EBEs) against each baseline covariate of the data, one panel per pair: trends suggest a
    covariate effect the model lacks.

    **Returns:** the `Figure`.
    """
    plt = _plt()
    data = fit.problem.data
    covs = list(data.covariates) if covariates is None else [c.upper() for c in covariates]
    if not covs:
        raise ValueError("The data have no covariates (read them with ck.read_population_data(..., covariates=[...])).")
    missing = [c for c in covs if c not in data.covariates]
    if missing:
        raise ValueError(f"Covariates {missing} are not in the data ({sorted(data.covariates)}).")
    q = len(fit.random)
    fig, axes = plt.subplots(q, len(covs), figsize=(2.8 * len(covs), 2.3 * q), squeeze=False)
    for i, n in enumerate(fit.random):
        for j, c in enumerate(covs):
            ax = axes[i, j]
            ax.plot(np.asarray(data.covariates[c]), np.asarray(fit.eta)[:, i], "o", ms=3)
            ax.axhline(0, color="k", lw=0.7)
            ax.set_xlabel(c)
            ax.set_ylabel(f"ETA {n}")
            ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig
