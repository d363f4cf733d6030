"""Figures of the model-linked SLE trials (`trials.py`): one function per result, each writing a PNG and returning
its path. Matplotlib is imported inside the functions (the `plot` extra).
"""

from __future__ import annotations

import numpy as np

from carkinetics.models.sle.trials import (
    COVARIATES,
    ConditioningResult,
    DoseOutcomes,
    EligibilityResult,
    ModelTrial,
    MonitoringResult,
    PowerResult,
)


def _dose_labels(doses) -> list[str]:
    return [f"{d:.0e}".replace("e+0", "e").replace("e+", "e") for d in np.asarray(doses, dtype=float)]


def _save(fig, path: str) -> str:
    from carkinetics.plot import save_figure

    fig.tight_layout()
    return save_figure(fig, path)


def plot_selected_dose(trial: ModelTrial, path: str) -> str:
    """Bar chart of the selected-dose distribution (each dose and "none") with the pool's DLT rate per dose.

    **Example:**

    ```python
    import jax, carkinetics.trials as ct
    from carkinetics.models.sle.trials import run_model_trial, simulate_dose_outcomes
    from carkinetics.models.sle.trial_plots import plot_selected_dose
    pool = simulate_dose_outcomes("human", [1e5, 1e6, 3e6, 1e7], n_patients=8, key=jax.random.key(0))
    trial = run_model_trial(pool, ct.BOIN(target=0.3), n_trials=500, key=jax.random.key(1))
    plot_selected_dose(trial, "selected_dose.png")
    ```
    """
    import matplotlib.pyplot as plt

    sel = np.asarray(trial.oc.selection_probability)
    labels = [*_dose_labels(trial.doses), "none"]
    fig, ax = plt.subplots(figsize=(6.5, 3.8))
    ax.bar(np.arange(sel.size), sel, color=["C0"] * (sel.size - 1) + ["C7"], label="P(selected as MTD)")
    ax.plot(np.arange(sel.size - 1), np.asarray(trial.oc.true_dlt), "o-", color="C3", label="pool DLT rate")
    ax.set_xticks(np.arange(sel.size), labels)
    ax.set_xlabel("CAR-T dose (cells/kg)")
    ax.set_ylabel("probability")
    ax.set_ylim(0.0, 1.0)
    ax.set_title(f"{trial.oc.design}: selected dose over {trial.oc.n_trials} virtual trials")
    ax.legend(fontsize=8)
    return _save(fig, path)


def plot_dose_response(outcomes: DoseOutcomes, path: str) -> str:
    """DLT, remission, B-cell aplasia, seroconversion and lymphopenia rates of the pool against dose (log axis)."""
    import matplotlib.pyplot as plt

    rates = outcomes.rates()
    fig, ax = plt.subplots(figsize=(6.5, 3.8))
    for i, (name, r) in enumerate(rates.items()):
        ax.plot(outcomes.doses, r, "o-", color=f"C{i}", label=name)
    ax.set_xscale("log")
    ax.set_xlabel("CAR-T dose (cells/kg)")
    ax.set_ylabel("fraction of virtual patients")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title(f"{outcomes.product}: {outcomes.n_patients} virtual patients per dose")
    ax.legend(fontsize=8)
    return _save(fig, path)


def plot_eligibility(result: EligibilityResult, path: str) -> str:
    """Month-6 remission (top) and DLT (bottom) per covariate group and dose, one column per covariate."""
    import matplotlib.pyplot as plt

    n_cov = len(result.covariates)
    fig, axes = plt.subplots(2, n_cov, figsize=(3.2 * n_cov, 5.5), squeeze=False, sharey="row")
    groups = np.arange(result.n.shape[1])
    for c, cov in enumerate(result.covariates):
        e = result.edges[c]
        ticks = [f"{e[g]:.3g}-{e[g + 1]:.3g}" for g in groups]
        for d, lab in enumerate(_dose_labels(result.doses)):
            axes[0, c].plot(groups, result.remission[c, :, d], "o-", color=f"C{d}", label=lab)
            axes[1, c].plot(groups, result.dlt[c, :, d], "o-", color=f"C{d}", label=lab)
        for row in range(2):
            axes[row, c].set_xticks(groups, ticks, fontsize=7)
        axes[1, c].set_xlabel(COVARIATES.get(cov, cov), fontsize=8)
    axes[0, 0].set_ylabel("P(remission, month 6)")
    axes[1, 0].set_ylabel("P(DLT: CRS grade >= 3)")
    for row in range(2):
        axes[row, 0].set_ylim(-0.02, 1.02)
    axes[0, 0].legend(title="cells/kg", fontsize=7)
    return _save(fig, path)


def plot_conditioning(result: ConditioningResult, path: str) -> str:
    """Per regimen: CAR-T peak, CRS DLT rate, days of grade >= 3 lymphopenia and month-6 remission."""
    import matplotlib.pyplot as plt

    x = np.arange(len(result.names))
    fig, axes = plt.subplots(1, 4, figsize=(15, 4.2))
    axes[0].boxplot([v[np.isfinite(v)] for v in result.endpoints["CAR Cmax"]], positions=x)
    axes[0].set_ylabel("CAR-T peak (log10 cells/µL)")
    axes[1].bar(x, result.dlt_rate(), color="C3")
    axes[1].set_ylabel("P(CRS grade >= 3)")
    axes[2].boxplot([v[np.isfinite(v)] for v in result.endpoints["lymphopenia days"]], positions=x)
    axes[2].set_ylabel("days with lymphocytes < 500/µL")
    axes[3].bar(x, result.remission_rate(), color="C2")
    axes[3].set_ylabel("P(remission, month 6)")
    for ax in axes:
        ax.set_xticks(x, result.names, rotation=35, ha="right", fontsize=7)
    fig.suptitle(f"Conditioning before {result.dose:.0e} CAR-T cells/kg")
    return _save(fig, path)


def plot_power(result: PowerResult, path: str) -> str:
    """Power of the randomised CAR-T vs standard-of-care comparison against patients per arm."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.8))
    ax.plot(result.sample_sizes, result.power, "o-")
    ax.axhline(0.8, color="C7", ls="--", lw=0.8)
    ax.set_xlabel("patients per arm")
    ax.set_ylabel(f"power (Fisher exact, alpha {result.alpha:g})")
    ax.set_ylim(0.0, 1.02)
    ax.set_title(f"month-6 remission: CAR-T {result.p_car:.2f} vs standard of care {result.p_soc:.2f}")
    return _save(fig, path)


def plot_monitoring(result: MonitoringResult, path: str) -> str:
    """Mean detection delay (left) and fraction detected within `max_delay` (right) against the sampling interval."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for e, name in enumerate(result.events):
        if not np.isfinite(result.mean_delay[e]).any():
            continue
        label = f"{name} ({100 * result.event_fraction[e]:.0f} % of patients)"
        axes[0].plot(result.intervals, result.mean_delay[e], "o-", color=f"C{e}", label=label)
        axes[1].plot(result.intervals, result.p_within[e], "o-", color=f"C{e}", label=label)
    axes[0].set_ylabel("mean detection delay (days)")
    axes[1].set_ylabel(f"P(detected within {result.max_delay:g} days)")
    for ax in axes:
        ax.set_xlabel("sampling interval (days)")
    axes[0].legend(fontsize=8)
    return _save(fig, path)
