"""The HTML report of the model-linked SLE trials (`carkinetics trial --out DIR` writes `DIR/report.html`).

The report puts the key findings first, then the design and the simulated patient pool, the operating
characteristics of the design on that pool (selected-dose distribution, patients and DLTs per dose), the pool's
outcomes per dose, and, when they were run, the four review analyses of `trials.py` (eligibility, conditioning, a
randomised comparator arm, monitoring), each with its figure and a table with units. Every number comes from the
analysis functions of `trials.py`; this module only runs them (`review_analyses`) and lays out their results.

**Example:**

```python
import os, tempfile
import jax
import carkinetics.trials as ct
from carkinetics.models.sle import trials as st
from carkinetics.models.sle.trial_report import write_trial_report
pool = st.simulate_dose_outcomes("human", [1e5, 1e6, 3e6, 1e7], n_patients=8, key=jax.random.key(0))
trial = st.run_model_trial(pool, ct.BOIN(target=0.3), n_trials=500, key=jax.random.key(1))
out = tempfile.mkdtemp()
write_trial_report(os.path.join(out, "report.html"), pool=pool, trial=trial, fig_dir=out)
```
"""

from __future__ import annotations

import os
import shlex
from collections.abc import Mapping, Sequence
from typing import Any

import equinox as eqx
import jax.random as jr
import numpy as np
from jaxtyping import Array

import carkinetics as ck
from carkinetics.models.sle import trial_plots
from carkinetics.models.sle.metrics import REMISSION_SLEDAI
from carkinetics.models.sle.model import SLECarTModel
from carkinetics.models.sle.trials import (
    APLASIA_DAY,
    COVARIATES,
    DEFAULT_CONDITIONING,
    LYMPHOPENIA_PER_UL,
    MONTH_6,
    TRIAL_ENDPOINTS,
    ConditioningResult,
    DoseOutcomes,
    EligibilityResult,
    ModelTrial,
    MonitoringResult,
    PowerResult,
    comparator_power,
    conditioning_analysis,
    eligibility_analysis,
    monitoring_analysis,
)

#: Power a randomised trial is usually sized for (the conventional 80 % of phase II/III sample-size planning [A]).
TARGET_POWER = 0.8
#: Fraction of events a sampling schedule should see within the allowed delay to count as adequate [A].
TARGET_DETECTION = 0.9
#: Patients per arm of the comparator-arm power curve.
POWER_SAMPLE_SIZES = (5, 10, 15, 20, 30, 40)
#: Sampling intervals (days) of the monitoring analysis: weekly to quarterly visits.
MONITORING_INTERVALS = (7.0, 14.0, 28.0, 56.0, 91.0)

#: The DLT definition the model supports, and what it cannot read out (shown in every trial report).
DLT_NOTE = (
    "DLT = CRS grade >= 3: the peak of the model's continuous ASTCT-like CRS index after infusion (Lee et al. 2019). "
    "This is the only DLT the model supports: it has no neurotoxicity state (no ICANS proxy) and no myeloid or "
    "platelet lineage, so prolonged neutropenia or thrombocytopenia after conditioning cannot be read out. Grade >= 3 "
    f"lymphopenia (< {LYMPHOPENIA_PER_UL:g} lymphocytes/uL at day {APLASIA_DAY:g}, CTCAE v5.0) is reported as a "
    f"safety endpoint, not a DLT. Month-6 remission is SLEDAI-2K-like activity < {REMISSION_SLEDAI:g} at day "
    f"{MONTH_6:g} (activity only: the model has no physician global assessment or steroid dose)."
)


class ReviewAnalyses(eqx.Module):
    """The four review analyses of a model-linked trial (from `review_analyses`), all at one CAR-T dose.

    **Fields:** `eligibility` (`EligibilityResult`, on the trial's pool), `conditioning` (`ConditioningResult`),
    `power` (`PowerResult`), `monitoring` (`MonitoringResult`), `dose_index` (the dose of the pool the conditioning,
    comparator and monitoring analyses use).
    """

    eligibility: EligibilityResult
    conditioning: ConditioningResult
    power: PowerResult
    monitoring: MonitoringResult
    dose_index: int = eqx.field(static=True)


def modal_dose_index(trial: ModelTrial) -> int:
    """The dose the design selects as the MTD most often (index into `trial.doses`).

    **Example:**

    ```python
    import jax
    import carkinetics.trials as ct
    from carkinetics.models.sle import trials as st
    from carkinetics.models.sle.trial_report import modal_dose_index
    pool = st.simulate_dose_outcomes("human", [1e5, 1e6, 3e6, 1e7], n_patients=8, key=jax.random.key(0))
    trial = st.run_model_trial(pool, ct.BOIN(target=0.3), n_trials=500, key=jax.random.key(1))
    pool.doses[modal_dose_index(trial)]        # cells/kg
    ```
    """
    return int(np.argmax(np.asarray(trial.oc.selection_probability)[:-1]))


def review_analyses(
    model: SLECarTModel | str,
    pool: DoseOutcomes,
    population: ck.Population,
    *,
    key: Array,
    dose_index: int,
    product: str | None = None,
    flu_mg_per_m2: float = 25.0,
    cy_mg_per_m2: float = 1000.0,
    t_end: float = 200.0,
    monitoring_t_end: float = 365.0,
    n_power_trials: int = 2000,
    engine: str | None = None,
) -> ReviewAnalyses:
    """Run the four review analyses of `trials.py` for a trial's pool and population.

    Eligibility splits the pool into thirds of each baseline covariate (no new solve); conditioning simulates the
    population under `DEFAULT_CONDITIONING` and the trial's own Flu/Cy (`flu_mg_per_m2` on days -5, -4, -3,
    `cy_mg_per_m2` on day -3) at the dose `pool.doses[dose_index]`; the comparator arm resamples the pool at that
    dose against standard of care for `POWER_SAMPLE_SIZES` patients per arm; monitoring simulates the population at
    that dose and conditioning over `monitoring_t_end` days and samples it every `MONITORING_INTERVALS` days.

    **Arguments:** `model` (an `SLECarTModel` or preset name) and `product`, `population` (the `trial_population`
    the pool was simulated from) and `t_end`, as for `simulate_dose_outcomes`; `key`; `n_power_trials` (simulated
    trials per sample size of the comparator arm); `engine` as for `ck.run_experiment`.

    **Returns:** a `ReviewAnalyses`.

    **Example:**

    ```python
    import jax
    from carkinetics.models.sle import trials as st
    from carkinetics.models.sle.trial_report import review_analyses
    pop = st.trial_population("human", jax.random.key(0), 4)
    pool = st.simulate_dose_outcomes("human", [1e5, 1e6, 3e6, 1e7], population=pop)
    res = review_analyses("human", pool, pop, key=jax.random.key(1), dose_index=1)
    res.power.power                            # power per number of patients per arm
    ```
    """
    n_doses = pool.doses.shape[0]
    if isinstance(dose_index, bool) or not isinstance(dose_index, (int, np.integer)) or not 0 <= dose_index < n_doses:
        raise ValueError(f"review_analyses: `dose_index` must index the pool's {n_doses} doses; got {dose_index!r}.")
    dose = float(pool.doses[dose_index])
    regimens = dict(DEFAULT_CONDITIONING)
    own = (float(flu_mg_per_m2), float(cy_mg_per_m2))
    if own not in regimens.values():
        regimens[f"trial: Flu {own[0]:g}x3 + Cy {own[1]:g}"] = own
    k_power, _ = jr.split(key)
    return ReviewAnalyses(
        eligibility=eligibility_analysis(pool, n_groups=min(3, pool.n_patients)),
        conditioning=conditioning_analysis(
            model, dose=dose, regimens=regimens, product=product, population=population, t_end=t_end, engine=engine
        ),
        power=comparator_power(
            pool, dose_index=dose_index, sample_sizes=POWER_SAMPLE_SIZES, n_trials=n_power_trials, key=k_power
        ),
        monitoring=monitoring_analysis(
            model,
            dose=dose,
            intervals=MONITORING_INTERVALS,
            flu_mg_per_m2=own[0],
            cy_mg_per_m2=own[1],
            product=product,
            population=population,
            t_end=monitoring_t_end,
            engine=engine,
        ),
        dose_index=int(dose_index),
    )


# ------------------------------------------------------------------------------------------------------------------
# Report sections


def _dose(d: float) -> str:
    return f"{d:.2g}".replace("e+0", "e").replace("e+", "e")


def _unit(endpoint: str) -> str:
    unit = TRIAL_ENDPOINTS[endpoint][0]
    return "" if unit == "1" else f" ({unit.replace('uL', 'µL')})"


def _rise(values: np.ndarray, doses: np.ndarray) -> str:
    lo, hi = float(values[0]), float(values[-1])
    steps = np.diff(values)
    trend = "rises" if np.all(steps >= 0) and hi > lo else "stays" if hi == lo else "changes"
    if trend == "stays":
        return f"stays at {lo:.3f} from {_dose(doses[0])} to {_dose(doses[-1])} cells/kg"
    return f"{trend} from {lo:.3f} at {_dose(doses[0])} to {hi:.3f} at {_dose(doses[-1])} cells/kg"


def add_trial_sections(
    report: Any,
    *,
    pool: DoseOutcomes,
    trial: ModelTrial,
    fig_dir: str,
    analyses: ReviewAnalyses | None = None,
    settings: Mapping[str, Any] | None = None,
    analyses_note: str | None = None,
    level: int = 2,
) -> dict[str, str]:
    """Append the sections of a model-linked trial to a `carkinetics.report.Report` (key findings included) and
    write their figures into `fig_dir`.

    **Arguments:** `pool` and `trial` (from `simulate_dose_outcomes`, `run_model_trial`); `analyses` (from
    `review_analyses`, or `None`: the report says they were not run, with `analyses_note` as the reason); `settings`:
    `{label: value}` shown as the run's settings (preset, product, conditioning, seed, ...); `level`: heading level
    of the sections (2 for a report of its own, 3 inside a section of another report; the analyses' sections are
    one level below, at most 3).

    **Returns:** `{figure name: path}` of the figures written.

    **Example:**

    ```python
    import os, tempfile
    import jax
    import carkinetics.trials as ct
    from carkinetics.models.sle import trials as st
    from carkinetics.models.sle.trial_report import add_trial_sections
    from carkinetics.report import Report
    pool = st.simulate_dose_outcomes("human", [1e5, 1e6, 3e6, 1e7], n_patients=8, key=jax.random.key(0))
    trial = st.run_model_trial(pool, ct.BOIN(target=0.3), n_trials=500, key=jax.random.key(1))
    rep = Report("My analysis")
    rep.heading("A virtual trial")
    out = tempfile.mkdtemp()
    add_trial_sections(rep, pool=pool, trial=trial, fig_dir=out, level=3)
    rep.write(os.path.join(out, "analysis.html"))
    ```
    """
    oc = trial.oc
    doses = np.asarray(trial.doses, dtype=float)
    sel = np.asarray(oc.selection_probability)
    n_trials = int(oc.n_trials)
    best = modal_dose_index(trial)
    rates = pool.rates()
    figs: dict[str, str] = {}

    report.key_finding(
        f"Virtual trial: {oc.design} selects {_dose(doses[best])} cells/kg as the MTD most often "
        f"({100 * sel[best]:.0f} % of {n_trials:,} virtual trials); no MTD in {100 * sel[-1]:.1f} %; mean sample size "
        f"{float(oc.mean_total_patients):.1f} patients."
    )
    report.key_finding(
        f"The pool's DLT rate (CRS grade >= 3, {pool.n_patients} virtual patients per dose) "
        f"{_rise(rates['DLT'], doses)}."
    )
    report.key_finding(
        f"Month-6 remission at the selected dose (averaged over the trials that select one): "
        f"{trial.remission_at_selected:.2f}."
    )

    report.heading("Design and virtual patients", level)
    rows = [[k, str(v)] for k, v in (settings or {}).items()]
    rows += [
        ["design", oc.design],
        ["dose ladder (cells/kg)", ", ".join(_dose(d) for d in doses)],
        ["virtual patients per dose", pool.n_patients],
        ["patients dropped (a course failed to solve)", pool.n_failed],
        ["virtual trials", n_trials],
    ]
    report.table(["setting", "value"], rows)
    report.text(
        "Every virtual patient (between-patient variability of baseline SLEDAI, B-cell, plasmablast and anti-dsDNA "
        "burden, eGFR, CAR-T expansion and myeloid responsiveness; TRIAL_IIV of carkinetics.models.sle.trials lists "
        "each spread with its source) is simulated once at every dose, the same patients at every dose, in one "
        "batched solve. Each virtual trial enrols patients by drawing pool members with replacement: an enrolled "
        "patient's DLT is that member's simulated DLT at the dose they receive."
    )
    report.note(DLT_NOTE)

    report.heading("Operating characteristics", level)
    se = np.sqrt(sel * (1.0 - sel) / n_trials)
    rows = [
        [
            _dose(doses[d]),
            float(rates["DLT"][d]),
            float(sel[d]),
            float(se[d]),
            float(oc.mean_patients[d]),
            float(oc.mean_dlts[d]),
        ]
        for d in range(doses.size)
    ]
    rows.append(["no MTD", "", float(sel[-1]), float(se[-1]), "", ""])
    report.table(
        ["dose (cells/kg)", "pool DLT rate", "P(selected as MTD)", "Monte Carlo SE", "mean patients", "mean DLTs"],
        rows,
        caption=f"{oc.design} on the resampled pool, {n_trials:,} trials.",
    )
    report.text(
        f"Probability of stopping before the last cohort: {float(oc.early_stop_probability):.3f}; mean sample size "
        f"{float(oc.mean_total_patients):.2f} patients."
    )
    figs["selected_dose"] = trial_plots.plot_selected_dose(trial, os.path.join(fig_dir, "selected_dose.png"))
    report.figure(figs["selected_dose"], "Selected-dose distribution (bars) and the pool's DLT rate per dose (line).")

    report.heading("Outcomes per dose", level)
    table = pool.table()
    keys = list(table[0])
    headers = [
        "dose (cells/kg)" if k == "dose_cells_per_kg" else f"{k}{_unit(k[7:])}" if k.startswith("median ") else k
        for k in keys
    ]
    report.table(
        headers,
        [[_dose(r[k]) if k == "dose_cells_per_kg" else r[k] for k in keys] for r in table],
        caption="Fractions of the pool with each outcome, and median endpoints, at each dose.",
    )
    figs["dose_response"] = trial_plots.plot_dose_response(pool, os.path.join(fig_dir, "dose_response.png"))
    report.figure(figs["dose_response"], "Outcome rates of the pool against dose.")

    report.heading("Review analyses", level)
    if analyses is None:
        report.note(analyses_note or "The review analyses were not run.", kind="skipped")
        return figs
    figs.update(_analysis_sections(report, pool, analyses, fig_dir, min(level + 1, 3)))
    return figs


def _analysis_sections(
    report: Any, pool: DoseOutcomes, res: ReviewAnalyses, fig_dir: str, level: int
) -> dict[str, str]:
    figs: dict[str, str] = {}
    d = res.dose_index
    dose = _dose(float(pool.doses[d]))
    report.text(
        f"The conditioning, comparator and monitoring analyses use {dose} cells/kg, the dose the design selects most "
        "often."
    )

    # 1. eligibility
    elig = res.eligibility
    report.heading("Eligibility by severity and burden", level)
    report.text(
        "The pool split into equal-count groups of each baseline covariate (no new simulation): month-6 remission "
        "and DLT per group show which patients eligibility criteria on severity or burden would let in or keep out. "
        "Refractoriness (prior B-cell-depleting therapy) is not a model input; it enters only through these "
        "baseline values."
    )
    rows = []
    for c, cov in enumerate(elig.covariates):
        for g in range(elig.n.shape[1]):
            e = elig.edges[c]
            rows.append(
                [
                    COVARIATES.get(cov, cov),
                    f"{e[g]:.3g} to {e[g + 1]:.3g}",
                    int(elig.n[c, g]),
                    float(elig.remission[c, g, d]),
                    float(elig.dlt[c, g, d]),
                ]
            )
    report.table(["covariate (unit)", "group", "patients", f"P(remission m6) at {dose}", f"P(DLT) at {dose}"], rows)
    figs["eligibility"] = trial_plots.plot_eligibility(elig, os.path.join(fig_dir, "eligibility.png"))
    report.figure(figs["eligibility"], "Month-6 remission (top) and DLT (bottom) per covariate group and dose.")
    if "bcell.b_blood0" in elig.covariates:
        b = elig.covariates.index("bcell.b_blood0")
        report.key_finding(
            f"Eligibility: at {dose} cells/kg the DLT rate is {elig.dlt[b, 0, d]:.2f} in the lowest and "
            f"{elig.dlt[b, -1, d]:.2f} in the highest group of blood B-cell counts (CRS rises with antigen burden)."
        )

    # 2. conditioning
    cond = res.conditioning
    report.heading("Conditioning: Flu/Cy intensity", level)
    report.text(
        "Every patient of the population under each conditioning regimen (fludarabine mg/m² on days -5, -4, -3; "
        "cyclophosphamide mg/m² on day -3; Erlangen: Mackensen et al. 2022), in one solve. Conditioning acts through "
        "the model's mechanisms: lymphocyte kill frees the T-cell niche and raises IL-7/IL-15, which drives CAR-T "
        "expansion; fludarabine exposure rises as eGFR falls (renal clearance)."
    )
    cmax, auc = cond.median("CAR Cmax"), cond.median("fludarabine AUC")
    lymph, dlt, rem = cond.median("lymphopenia days"), cond.dlt_rate(), cond.remission_rate()
    rows = [
        [
            name,
            float(cond.flu_mg_per_m2[i]),
            float(cond.cy_mg_per_m2[i]),
            float(cmax[i]),
            float(dlt[i]),
            float(lymph[i]),
            float(rem[i]),
            float(auc[i]),
        ]
        for i, name in enumerate(cond.names)
    ]
    report.table(
        [
            "regimen",
            "fludarabine (mg/m²/day x 3)",
            "cyclophosphamide (mg/m²)",
            f"median CAR Cmax{_unit('CAR Cmax')}",
            "P(DLT)",
            f"median lymphopenia days{_unit('lymphopenia days')}",
            "P(remission m6)",
            f"median fludarabine AUC{_unit('fludarabine AUC')}",
        ],
        rows,
        caption=f"Conditioning before {dose} CAR-T cells/kg, {cond.endpoints['CAR Cmax'].shape[1]} patients.",
    )
    figs["conditioning"] = trial_plots.plot_conditioning(cond, os.path.join(fig_dir, "conditioning.png"))
    report.figure(figs["conditioning"], "CAR-T peak, CRS DLT rate, grade >= 3 lymphopenia and remission per regimen.")
    pairs = list(zip(cond.flu_mg_per_m2.tolist(), cond.cy_mg_per_m2.tolist()))
    if (0.0, 0.0) in pairs and (25.0, 1000.0) in pairs:
        i0, i1 = pairs.index((0.0, 0.0)), pairs.index((25.0, 1000.0))
        report.key_finding(
            f"Conditioning: median CAR-T peak {cmax[i0]:.2f} log10 cells/µL without conditioning vs {cmax[i1]:.2f} "
            f"under Erlangen Flu/Cy; month-6 remission {rem[i0]:.2f} vs {rem[i1]:.2f}; median days of grade >= 3 "
            f"lymphopenia {lymph[i0]:.0f} vs {lymph[i1]:.0f}."
        )

    # 3. comparator arm
    pw = res.power
    report.heading("Randomised comparator arm: power for month-6 remission", level)
    report.text(
        f"A 1:1 randomised trial of CAR-T at {dose} cells/kg against standard of care, analysed with Fisher's exact "
        f"two-sided test at alpha {pw.alpha:g}; {pw.n_trials:,} simulated trials per sample size. CAR-T patients are "
        "pool members with their simulated month-6 remission; standard-of-care patients follow a disease-activity "
        "trajectory from their own baseline SLEDAI (StandardOfCare: median plateau 0.7 of baseline [A], anchored on "
        "the SRI-4 response of the BLISS-52 standard-of-care arm, Navarra et al. 2011 [M])."
    )
    report.table(
        ["patients per arm", "power"],
        [[int(n), float(p)] for n, p in zip(pw.sample_sizes, pw.power)],
        caption=f"Remission at month 6: CAR-T {pw.p_car:.2f}, standard of care {pw.p_soc:.2f}.",
    )
    figs["power"] = trial_plots.plot_power(pw, os.path.join(fig_dir, "power.png"))
    report.figure(figs["power"], "Power against patients per arm (dashed: 80 %).")
    enough = [int(n) for n, p in zip(pw.sample_sizes, pw.power) if p >= TARGET_POWER]
    reach = (
        f"{enough[0]} patients per arm, the fewest of {pw.sample_sizes.tolist()} that reach "
        f"{100 * TARGET_POWER:.0f} % power, give {pw.power[pw.sample_sizes.tolist().index(enough[0])]:.2f}"
        if enough
        else f"none of {pw.sample_sizes.tolist()} patients per arm reaches {100 * TARGET_POWER:.0f} % power"
    )
    report.key_finding(
        f"Comparator arm: {reach} (month-6 remission CAR-T {pw.p_car:.2f} vs standard of care {pw.p_soc:.2f}, "
        "Fisher exact)."
    )

    # 4. monitoring
    mon = res.monitoring
    report.heading("Monitoring schedule", level)
    report.text(
        "Each patient's day of B-cell return (blood B cells back through 5 % of baseline), loss of detectable CAR-T "
        "(< 1 cell/µL), anti-dsDNA re-positivity and clinical relapse (SLEDAI back through 4) come from their "
        "simulated course; with visits every k days an event on day t is seen at the next visit, "
        "ceil(t / k) k - t days later. Events that do not happen within the horizon count in the fraction of "
        "patients with the event, not in the delays."
    )
    rows = []
    for e, name in enumerate(mon.events):
        if mon.event_fraction[e] == 0.0:
            rows.append([name, 0.0, "any", "no event within the horizon", "", ""])
            continue
        for k, ival in enumerate(mon.intervals):
            rows.append(
                [
                    name,
                    float(mon.event_fraction[e]),
                    float(ival),
                    float(mon.mean_delay[e, k]),
                    float(mon.p90_delay[e, k]),
                    float(mon.p_within[e, k]),
                ]
            )
    report.table(
        [
            "event",
            "fraction of patients with it",
            "sampling interval (d)",
            "mean delay (d)",
            "90th percentile delay (d)",
            f"P(seen within {mon.max_delay:g} d)",
        ],
        rows,
        caption=f"Monitoring after {dose} CAR-T cells/kg, {mon.event_times.shape[1]} patients.",
    )
    figs["monitoring"] = trial_plots.plot_monitoring(mon, os.path.join(fig_dir, "monitoring.png"))
    report.figure(figs["monitoring"], "Detection delay and the fraction seen in time against the sampling interval.")
    parts = []
    for e, name in enumerate(mon.events):
        if mon.event_fraction[e] == 0.0:
            parts.append(f"{name}: no patient within the horizon")
            continue
        ok = [float(i) for i, p in zip(mon.intervals, mon.p_within[e]) if p >= TARGET_DETECTION]
        parts.append(f"{name}: every {ok[-1]:g} days" if ok else f"{name}: none of the intervals")
    report.key_finding(
        f"Monitoring: the longest sampling interval that sees an event within {mon.max_delay:g} days in at least "
        f"{100 * TARGET_DETECTION:.0f} % of the patients with it is: " + "; ".join(parts) + "."
    )
    return figs


def write_trial_report(
    path: str,
    *,
    pool: DoseOutcomes,
    trial: ModelTrial,
    fig_dir: str,
    analyses: ReviewAnalyses | None = None,
    settings: Mapping[str, Any] | None = None,
    analyses_note: str | None = None,
    command: Sequence[str] | None = None,
) -> dict[str, str]:
    """Write the self-contained HTML report of a model-linked trial to `path` (figures written into `fig_dir`
    and embedded); `command`, when given, is shown as the command line that reproduces the run.

    **Returns:** `{"report": the report's absolute path, figure name: figure path, ...}`. Arguments as for
    `add_trial_sections`.

    **Example:** see the module docstring.
    """
    import jax

    from carkinetics.report import Report

    report = Report(
        f"carkinetics trial: {trial.oc.design} dose escalation on virtual SLE patients",
        subtitle=f"carkinetics {ck.__version__}, {jax.devices()[0].platform}, float64",
    )
    figs = add_trial_sections(
        report,
        pool=pool,
        trial=trial,
        fig_dir=fig_dir,
        analyses=analyses,
        settings=settings,
        analyses_note=analyses_note,
    )
    if command is not None:
        report.heading("Reproduce")
        report.code(shlex.join(command))
    return {"report": report.write(path), **figs}
