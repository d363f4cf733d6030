"""`carkinetics demo`: the main job on built-in defaults, as a sequence of report steps.

Every SLE step uses the application's one save grid (`save_times`), one metric set (`sle_metrics`) and the arms of
the translation map (`load_arm`, `arm_regimen`: one regimen structure, so the human and mouse courses share one
compiled solve); the full run's map has the gap groups, horizon and experiment (`ArmExperiment`) of `carkinetics
translate`, the quick run's map four of those groups (`QUICK_GAPS`). The quick run leaves out the steps marked
`full_only` (the Sobol sweep) with a note. A step whose requirements are not installed (e.g. Antimony for the SBML
export) is left out with a note; a step that fails is reported in the HTML report and does not stop the others.
Uses only the public `carkinetics` API, `carkinetics.io`, `carkinetics.plot`, `carkinetics.report` and the
application's own modules.
"""

from __future__ import annotations

import csv
import dataclasses
import importlib
import os
import time
import traceback
from collections.abc import Callable, Sequence
from typing import Any, Literal

import carkinetics as ck
import carkinetics.io as cio
from carkinetics.models.sle.metrics import SLE_METRICS, save_times, sle_metrics
from carkinetics.models.sle.presets import load_preset
from carkinetics.models.sle.regimens import erlangen_regimen

#: Every file the demo writes into its output folder (`carkinetics demo` removes those of an earlier run first).
DEMO_FILES = (
    "lymphodepletion_pk.png",
    "lymphodepletion_fludarabine.csv",
    "lymphodepletion_cyclophosphamide.csv",
    "human_erlangen.csv",
    "human_erlangen.png",
    "mouse_nzbw.csv",
    "human_vs_mouse.png",
    "human_targets.csv",
    "population_bands.png",
    "population_percentiles.csv",
    "sensitivity_sobol.png",
    "sensitivity_sobol.csv",
    "translation_map.csv",
    "translation_heatmap.png",
    "translation_waterfalls.png",
    "sle_human_erlangen.xml",
    "sle_human_erlangen.antimony",
    "parameters_human.csv",
    "report.html",
)

#: Gap ids of the quick run's translation map (the mechanisms behind most of the mouse-to-human gaps of the full map;
#: the others form 'ungrouped'): 2^5 coalitions instead of 2^(every gap id + 1). The full run uses every gap id, as
#: `carkinetics translate` does.
QUICK_GAPS = ("G1", "G3", "G7", "G9")

#: Horizon (days) of every SLE step: the quick run stops at the shortest grid the metrics allow; the full run uses
#: the horizon of `carkinetics translate`.
T_END = {"quick": 120.0, "full": 730.0}


@dataclasses.dataclass
class DemoContext:
    """What a step gets: the output folder, the run settings, the report, and results of earlier steps."""

    out: str
    quick: bool
    report: Any
    engine: Literal["ensemble", "vmap"] = "ensemble"
    progress: bool = True
    files: list[str] = dataclasses.field(default_factory=list)
    results: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def t_end(self) -> float:
        return T_END["quick" if self.quick else "full"]

    def path(self, name: str) -> str:
        if name not in DEMO_FILES:
            raise ValueError(f"{name!r} is not in DEMO_FILES (the files the demo declares it writes).")
        p = os.path.join(self.out, name)
        self.files.append(p)
        return p


@dataclasses.dataclass(frozen=True)
class DemoStep:
    """One section of the demo: `requires` lists (module, attribute) pairs that must exist for it to run; `extra`
    names the optional dependency group of carkinetics (`pip install "carkinetics[extra]"`) that provides them."""

    title: str
    requires: tuple[tuple[str, str], ...]
    run: Callable[[DemoContext], None]
    depends_on: tuple[str, ...] = ()  # titles of earlier steps whose results it uses
    extra: str | None = None
    full_only: str | None = None  # why the quick run leaves the step out (None: it runs in both)


def _feature(module: str, name: str, extra: str | None = None) -> tuple[bool, str]:
    """Whether `module` provides `name` (and, if not, why and how to install it)."""
    how = (
        ""
        if extra is None
        else (
            f'; install it with the [{extra}] extra: pip install "carkinetics[{extra}]" '
            f'(from a checkout: pip install -e ".[{extra}]")'
        )
    )
    try:
        mod = importlib.import_module(module)
    except ImportError as err:
        return False, f"{module} cannot be imported ({err}){how}"
    if not hasattr(mod, name):
        return False, f"{module}.{name} is not in this installation{how}"
    return True, ""


def _step_lymphodepletion(ctx: DemoContext) -> None:
    import matplotlib.pyplot as plt
    import numpy as np

    from carkinetics.models import OneCompartmentPK, TwoCompartmentPK
    from carkinetics.plot import save_figure

    bsa = ck.bsa_mosteller(70.0, 170.0)
    ts = np.linspace(-6.0, 1.0, 281 if ctx.quick else 701)
    flu = ck.simulate(TwoCompartmentPK(), ck.fludarabine(25.0, (-5, -4, -3), bsa_m2=bsa, state="central"), ts)
    cy = ck.simulate(OneCompartmentPK(), ck.cyclophosphamide(1000.0, (-3,), bsa_m2=bsa, state="central"), ts)
    fig, ax = plt.subplots(figsize=(7, 3.8))
    ax.plot(ts, flu.observables.concentration, label="fludarabine 25 mg/m² d−5..−3 (2-cmt, Langenhorst 2019)")
    ax.plot(ts, cy.observables.concentration, label="cyclophosphamide 1000 mg/m² d−3 (1-cmt, Ahmed 2020)")
    ax.set_xlabel("day (relative to CAR-T infusion)")
    ax.set_ylabel("plasma concentration (mg/L)")
    ax.set_yscale("log")
    ax.set_ylim(1e-3, None)
    ax.set_title(f"Erlangen lymphodepletion, BSA {bsa:.2f} m² (70 kg, 170 cm)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    png = save_figure(fig, ctx.path("lymphodepletion_pk.png"))
    cio.write_tidy_csv(ctx.path("lymphodepletion_fludarabine.csv"), flu)
    cio.write_tidy_csv(ctx.path("lymphodepletion_cyclophosphamide.csv"), cy)
    auc = float(np.trapezoid(np.asarray(flu.observables.concentration), ts))
    ctx.report.text(
        "Plasma concentrations of the lymphodepleting chemotherapy, from the linear reference PK models with "
        f"published population parameters. Fludarabine AUC over days −6..1: {auc:.3g} mg·d/L."
    )
    ctx.report.figure(png, "Fludarabine and cyclophosphamide plasma concentrations (log scale).")


#: Observables shown in the course figures.
PANELS = ("car_blood", "b_blood", "anti_dsdna", "il6", "sledai", "lymphocytes")
#: Their titles in the figures.
PANEL_TITLES = {
    "car_blood": "CAR-T cells in blood",
    "b_blood": "B cells in blood",
    "anti_dsdna": "anti-dsDNA antibodies",
    "il6": "IL-6 in plasma",
    "sledai": "disease activity (SLEDAI-2K-like)",
    "lymphocytes": "lymphocytes in blood",
}


def _course(preset: str, t_end: float) -> tuple[Any, ck.Solution]:
    """A preset's course under its protocol, as an arm of the translation map: the regimens of all arms share one
    structure (doses of the other species are zero), so the human and mouse courses share one compiled solve."""
    from carkinetics.models.sle.translation import arm_regimen, load_arm

    arm, _, _ = load_arm(preset)
    return arm.model, ck.simulate(arm.model, arm_regimen(arm), save_times(t_end))


def _step_human(ctx: DemoContext) -> None:
    from carkinetics.plot import plot_timecourse, save_figure

    model, sol = _course("human", ctx.t_end)
    ts = sol.ts
    ctx.results["human"] = (model, sol)
    cio.write_tidy_csv(ctx.path("human_erlangen.csv"), sol)
    fig = plot_timecourse(
        sol,
        list(PANELS),
        ncols=3,
        panel_titles=PANEL_TITLES,
        title="Human SLE, Erlangen regimen (Flu/Cy + 1e6 CAR-T/kg)",
    )
    _overlay_published_targets(ctx, fig, sol)
    ctx.report.text(
        f"The composed SLE CAR-T model with the human preset, under the Erlangen regimen, on the SLE save grid "
        f"(days {float(ts[0]):g} to {float(ts[-1]):g}; {int(sol.num_steps)} solver steps)."
    )
    ctx.report.figure(
        save_figure(fig, ctx.path("human_erlangen.png")),
        "Human SLE course (blood counts per µL); black diamonds: published targets with their spread (author, "
        "year, confidence tag), grey band: healthy reference range.",
    )
    m = {k: float(v) for k, v in sle_metrics(sol, censoring=True).items()}
    ctx.report.key_finding(
        f"Human SLE under the Erlangen regimen (model, days 0 to {ctx.t_end:g}): blood CAR-T cells peak at "
        f"{10 ** m['CAR Cmax']:.3g} cells/µL on day {m['CAR Tmax']:.0f}; B-cell aplasia (below 5 % of baseline) "
        f"lasts {'≥ ' if m['B aplasia censored'] else ''}{m['B aplasia']:.0f} days"
        f"{' (still ongoing at the horizon: censored)' if m['B aplasia censored'] else ''}; anti-dsDNA is at "
        f"{m['anti-dsDNA d90']:.0f} % of baseline on day 90; "
        f"peak CRS index {m['CRS grade']:.2g} (0-4)."
    )


def _step_mouse(ctx: DemoContext) -> None:
    from carkinetics.plot import plot_timecourse, save_figure

    model, sol = _course("mouse_nzbw", ctx.t_end)
    ctx.results["mouse"] = (model, sol)
    cio.write_tidy_csv(ctx.path("mouse_nzbw.csv"), sol)
    sols, labels = [sol], ["mouse (NZB/W)"]
    if "human" in ctx.results:
        sols.insert(0, ctx.results["human"][1])
        labels.insert(0, "human")
    fig = plot_timecourse(
        sols, list(PANELS), labels=labels, ncols=3, panel_titles=PANEL_TITLES, title="Human vs mouse (NZB/W) course"
    )
    ctx.report.text("The same model with the NZB/W mouse preset, irradiation conditioning and 1e6 CAR-T cells.")
    ctx.report.figure(save_figure(fig, ctx.path("human_vs_mouse.png")), "Human and mouse courses side by side.")


#: Saltelli base samples of the sensitivity step (full run only: the few a quick run could afford give intervals
#: wider than the indices).
SOBOL_BASE_SAMPLES = 32

#: Parameters of the sensitivity step (ranges: half to double the preset value) and the SLE metrics it reads.
SOBOL_PARAMETERS = ("car.rho", "car.alpha", "car.k_kill", "bcell.d_pb")
#: Their labels in the figure (the dotted names stay in the tables).
SOBOL_LABELS = {
    "car.rho": "CAR-T proliferation\n(car.rho)",
    "car.alpha": "CAR-T contraction\n(car.alpha)",
    "car.k_kill": "CAR-T killing\n(car.k_kill)",
    "bcell.d_pb": "plasmablast death\n(bcell.d_pb)",
}
SOBOL_METRICS = ("CAR Cmax", "B aplasia", "anti-dsDNA d90")


def sobol_metrics(sol: ck.Solution) -> dict[str, Any]:
    """The `SOBOL_METRICS` of the SLE metric set (`sle_metrics`)."""
    values = sle_metrics(sol)
    return {name: values[name] for name in SOBOL_METRICS}


def _step_sensitivity(ctx: DemoContext) -> None:
    import jax
    import matplotlib.pyplot as plt

    from carkinetics.plot import plot_sobol, save_figure

    model = load_preset("human")
    names = list(SOBOL_PARAMETERS)
    bounds = [[0.5 * float(model.get(n)), 2.0 * float(model.get(n))] for n in names]
    problem = {"names": names, "bounds": bounds}
    fn = ck.model_function(
        model, erlangen_regimen(model), save_times(ctx.t_end), names, sobol_metrics, engine=ctx.engine
    )
    n = SOBOL_BASE_SAMPLES
    indices, x, res = ck.sobol_analysis(fn, problem, n, key=jax.random.key(0), has_ok=True, progress=ctx.progress)
    fig, axes = plt.subplots(1, len(SOBOL_METRICS), figsize=(4.4 * len(SOBOL_METRICS), 3.4), squeeze=False)
    rows = []
    for ax, m in zip(axes[0], SOBOL_METRICS):
        plot_sobol(indices[m], ax=ax, title=f"{m} [{SLE_METRICS[m][0]}]", labels=SOBOL_LABELS)
        for i, p in enumerate(names):
            rows.append(
                [
                    m,
                    p,
                    float(indices[m].S1[i]),
                    float(indices[m].S1_conf[i]),
                    float(indices[m].ST[i]),
                    float(indices[m].ST_conf[i]),
                ]
            )
    fig.suptitle(f"Sobol indices: {n} base samples, {x.shape[0]} simulations", fontsize=10)
    fig.tight_layout()
    png = save_figure(fig, ctx.path("sensitivity_sobol.png"))
    wide = sum(1 for r in rows if not r[5] < r[4])  # intervals at least as wide as the index they bound
    with cio.atomic_text_file(ctx.path("sensitivity_sobol.csv"), newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["metric", "parameter", "S1", "S1_conf", "ST", "ST_conf"])
        w.writerows(rows)
    ctx.report.text(
        f"Sobol indices of three SLE metrics ({'; '.join(f'{m}: {SLE_METRICS[m][1]}' for m in SOBOL_METRICS)}) of "
        f"the human Erlangen course over {ctx.t_end:g} days, for {len(names)} parameters each varied uniformly from "
        f"half to double its preset value (Saltelli design, {n} base samples, {x.shape[0]} simulations on the "
        f"{res.engine} engine, {int(res.n_failed)} failed)."
        + (
            f" {wide} of {len(rows)} total-index intervals are as wide as the index itself: read those indices as "
            "'not resolved at this sample size'."
            if wide
            else ""
        )
    )
    ctx.report.figure(png, "First-order (S1) and total (ST) Sobol indices with bootstrap 95% intervals.")
    top = []
    for m in SOBOL_METRICS:
        st = [float(v) for v in indices[m].ST]
        i = max(range(len(names)), key=lambda j: st[j] if st[j] == st[j] else -1.0)
        top.append(f"{m}: {names[i]} (ST {st[i]:.2f} ± {float(indices[m].ST_conf[i]):.2f})")
    ctx.report.key_finding(
        "Most influential parameter (total Sobol index, half to double the preset values) per metric: "
        + "; ".join(top)
        + "."
    )
    ctx.report.table(["metric", "parameter", "S1", "±", "ST", "±"], rows)


def _step_translation(ctx: DemoContext) -> None:
    import jax

    from carkinetics.models.sle.translation import sle_translation_map
    from carkinetics.plot import (
        attribution_waterfalls,
        save_figure,
        translation_heatmap,
    )

    gaps = QUICK_GAPS if ctx.quick else None  # None: every gap id the presets tag, as `carkinetics translate`
    tm = sle_translation_map(
        "mouse_nzbw", "human", gaps=gaps, t_end=ctx.t_end, key=jax.random.key(0), engine=ctx.engine
    )
    tm.to_csv(ctx.path("translation_map.csv"))
    heat = save_figure(translation_heatmap(tm), ctx.path("translation_heatmap.png"))
    water = save_figure(attribution_waterfalls(tm, ncols=4), ctx.path("translation_waterfalls.png"))
    which = (
        f"The gap mechanisms {', '.join(QUICK_GAPS)} of `carkinetics translate` ({len(tm.group_names)} groups "
        "with 'ungrouped', which holds the other differing parameters; a smoke run: the full demo and "
        "`carkinetics translate` use every gap id)"
        if ctx.quick
        else f"Every gap mechanism the presets tag ({len(tm.group_names)} groups, the groups of "
        "`carkinetics translate`)"
    )
    ctx.report.text(
        f"Which mechanisms explain the difference between the NZB/W mouse and the human course (days 0 to "
        f"{ctx.t_end:g})? {which} are swapped between the two presets and each metric's gap is attributed exactly "
        f"(Shapley values over all {2 ** len(tm.group_names)} group subsets, solved on the {ctx.engine} engine)."
    )
    ctx.report.figure(
        heat,
        "Share of each metric's mouse-to-human gap by mechanism group; (>=): censored at the horizon, *: rests on "
        "unverified (A/M-tagged) parameters.",
    )
    _translation_uncertainty_note(ctx, tm)
    ctx.report.figure(
        water, "Attribution waterfalls: from the mouse value, one step per mechanism, to the human value."
    )
    _narrative(ctx.report, tm.narrative())
    k = max(
        range(len(tm.metric_names)),
        key=lambda j: (
            abs(float(tm.value_b[j]) - float(tm.value_a[j]))
            / max(abs(float(tm.value_a[j])), abs(float(tm.value_b[j])), 1e-300)
        ),
    )
    g = max(range(len(tm.group_names)), key=lambda j: abs(float(tm.shapley[j, k])))
    total, phi = float(tm.total[k]), float(tm.shapley[g, k])
    share = (
        f" ({100 * phi / total:.0f} % of the gap)"
        if total and abs(phi) <= abs(total)
        else f" ({phi:+.3g}, more than the whole gap of {total:+.3g}: other mechanisms pull the other way)"
    )
    ctx.report.key_finding(
        f"Largest relative mouse-to-human gap: {tm.metric_names[k]}, {tm.value_text(k, 'a')} in the NZB/W mouse vs "
        f"{tm.value_text(k, 'b')} in the human ({tm.metric_units[k]}); the mechanism with the largest attribution "
        f"is {tm.group_names[g]}{share}."
    )
    _translation_values_table(ctx, tm)


def _overlay_published_targets(ctx: DemoContext, fig: Any, sol: ck.Solution) -> None:
    """The published SLE targets on the human course figure (points with their spread, labelled with author, year
    and tag), readable axis units, the overlays as a table and as `human_targets.csv`."""
    from carkinetics.models.sle.demo_figures import course_target_overlays, overlay_targets, panel_axes, readable_axes

    overlays = course_target_overlays(sol, t_end=ctx.t_end)
    axes = panel_axes(fig, PANELS)
    readable_axes(axes)
    overlay_targets(axes, overlays)
    ctx.results["target overlays"] = overlays
    head = ["panel", "target", "day", "day range", "value", "published spread", "label"]
    rows = [
        [
            PANEL_TITLES.get(o.panel, o.panel),
            " + ".join(o.target_ids),
            "all" if o.kind == "band" else f"{o.t:g}",
            "" if o.kind == "band" or o.t_lo == o.t_hi else f"{o.t_lo:g}-{o.t_hi:g}",
            f"{o.y:.4g}",
            "" if o.y_lo == o.y_hi else f"{o.y_lo:.4g}-{o.y_hi:.4g}",
            o.label,
        ]
        for o in overlays
    ]
    with cio.atomic_text_file(ctx.path("human_targets.csv"), newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["panel", "target_ids", "kind", "t", "t_lo", "t_hi", "value", "lo", "hi", "label"])
        w.writerows([[o.panel, " ".join(o.target_ids), o.kind, o.t, o.t_lo, o.t_hi, o.y, o.y_lo, o.y_hi, o.label]
                     for o in overlays])  # fmt: skip
    ctx.report.text(
        "Published targets on the course (calibration/data/human_sle_targets.csv, converted to the panel units; "
        "tags: R read in the source, R2 secondary, D derived, M recalled): the model is not fitted to these points "
        "here, they show where it stands."
    )
    ctx.report.table(head, rows)


#: Virtual patients of the population step (quick and full run): enough for 5-95 % bands that read as a spread,
#: few enough for one small compiled batch.
POPULATION_SIZE = {"quick": 24, "full": 48}


def _step_population(ctx: DemoContext) -> None:
    import jax

    from carkinetics.models.sle.demo_figures import (
        BAND_PANELS,
        PERCENTILES,
        plot_population_bands,
        population_bands,
    )
    from carkinetics.models.sle.population import SLE_IIV
    from carkinetics.models.sle.translation import arm_regimen, load_arm
    from carkinetics.plot import save_figure

    arm, _, _ = load_arm("human")
    n = POPULATION_SIZE["quick" if ctx.quick else "full"]
    ts = save_times(ctx.t_end)
    pb, _ = population_bands(arm.model, arm_regimen(arm), ts, jax.random.key(0), n, engine=ctx.engine)
    typical = ctx.results["human"][1]
    overlays = [o for o in ctx.results.get("target overlays", []) if o.panel in BAND_PANELS]
    fig = plot_population_bands(pb, overlays, PANEL_TITLES, typical)
    png = save_figure(fig, ctx.path("population_bands.png"))
    with cio.atomic_text_file(ctx.path("population_percentiles.csv"), newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["observable", "day", *(f"p{q:g}" for q in PERCENTILES)])
        for name in BAND_PANELS:
            for j, t in enumerate(pb.ts):
                w.writerow([name, f"{float(t):g}", *(f"{float(v):.6g}" for v in pb.bands[name][:, j])])
    ctx.report.text(
        f"{n} virtual patients around the human preset, with the inter-individual variability of SLE_IIV "
        f"(models/sle/population.py: random effects on {', '.join(r.parameter for r in SLE_IIV)}, each with its "
        "source and tag; an output that none of them reaches has a narrow band), under the Erlangen regimen, "
        f"days {float(ts[0]):g} to {float(ts[-1]):g}"
        + (f"; {pb.n_failed} failed solves are left out" if pb.n_failed else "")
        + ". Bands: 5-95 % and 25-75 % of the patients at each day; the published targets as on the course figure."
    )
    ctx.report.figure(png, "Percentile bands of B cells, CAR-T cells, IL-6 and anti-dsDNA in the virtual population.")


def _translation_uncertainty_note(ctx: DemoContext, tm: Any) -> None:
    """Say whether the map's shares carry intervals (they do only with parameter samples)."""
    if tm.n_samples:
        ctx.report.text(
            f"Intervals: {tm.n_samples} parameter samples give each Shapley value a {round(100 * tm.level)} % sample "
            "interval (error bars in the waterfalls; '?' in the heatmap marks a share whose sign is not robust)."
        )
    else:
        ctx.report.text(
            "Intervals: this map is a point estimate (no parameter samples), so its shares carry no uncertainty "
            "intervals; `carkinetics translate --samples N` samples the parameters from their priors and adds a "
            "sample interval to every Shapley value."
        )


def _translation_values_table(ctx: DemoContext, tm: Any) -> None:
    """The metric values of the two models and their gap, '>=' marking values censored at the horizon."""
    a, b = tm.labels
    rows = [
        [name, unit, tm.value_text(k, "a"), tm.value_text(k, "b"), tm.gap_text(k)]
        for k, (name, unit) in enumerate(zip(tm.metric_names, tm.metric_units))
    ]
    ctx.report.text(
        f"Metric values of both models over days 0 to {ctx.t_end:g}; '>=' marks a duration still running at the "
        "horizon (censored: a lower bound), and a gap with a censored side is itself a bound."
    )
    ctx.report.table(["metric", "unit", a, b, "gap"], rows)


def _narrative(report: Any, text: str) -> None:
    """A narrative's lines into the report: `- ` lines as a bulleted list, the others as paragraphs (wrapped, never
    a horizontally scrolling block)."""
    items: list[str] = []
    for line in [*text.splitlines(), ""]:
        if line.startswith("- "):
            items.append(line[2:])
            continue
        if items:
            report.bullets(items)
            items = []
        if line.strip():
            report.text(line)


def _step_sbml(ctx: DemoContext) -> None:
    model = load_preset("human")
    path = ctx.path("sle_human_erlangen.xml")
    cio.write_sbml(model, path, erlangen_regimen(model))
    antimony = cio.to_antimony(model, erlangen_regimen(model))
    cio.atomic_write_text(ctx.path("sle_human_erlangen.antimony"), antimony)
    ctx.report.text(
        f"The human preset with the Erlangen regimen as SBML ({os.path.basename(path)}) and Antimony, for "
        "libroadrunner, COPASI or AMICI users: states as rate rules, observables as assignment rules, every "
        "parameter named (dots become underscores), doses as events. Time unit: day; the SBML clock starts at the "
        "first dose (day -5), stored in the parameter t_start (carkinetics day = SBML time + t_start). In "
        "libroadrunner use the Adams mode (integrator.stiff = False) for this model."
    )


def _step_parameters(ctx: DemoContext) -> None:
    model = ctx.results["human"][0]
    model.parameter_table().to_csv(ctx.path("parameters_human.csv"))
    ctx.report.parameter_table(model, "Human preset: every parameter with unit, bounds, confidence tag and source.")


def _step_trial(ctx: DemoContext) -> None:
    import tempfile

    import jax

    import carkinetics.trials as ct
    from carkinetics.models.sle.trial_report import add_trial_sections
    from carkinetics.models.sle.trials import run_model_trial, simulate_dose_outcomes

    doses = [1e5, 1e6, 3e6, 1e7]  # CAR-T cells/kg: the ladder of docs/trials.md
    pool = simulate_dose_outcomes("human", doses, n_patients=25, key=jax.random.key(0), engine=ctx.engine)
    trial = run_model_trial(pool, ct.BOIN(target=0.3), n_trials=2000, key=jax.random.key(1))
    ctx.report.text(
        "A small virtual BOIN trial (target DLT rate 0.3) on the human preset under Erlangen Flu/Cy: 25 virtual "
        "patients simulated at each of four doses, resampled into 2,000 trials. For operating characteristics use "
        "100-250 patients per dose with `carkinetics trial`, whose report adds the four review analyses."
    )
    with tempfile.TemporaryDirectory() as fig_dir:  # the figures are embedded in the report
        add_trial_sections(
            ctx.report,
            pool=pool,
            trial=trial,
            fig_dir=fig_dir,
            settings={"preset": "human", "conditioning": "Erlangen Flu/Cy", "seed": "jax.random.key(0)"},
            analyses_note="The review analyses (eligibility, conditioning, comparator arm, monitoring) are in the "
            "report of `carkinetics trial`.",
            level=3,
        )


HUMAN = "Human SLE course under the Erlangen regimen"
POPULATION = "Virtual population: percentile bands"

DEMO_STEPS: tuple[DemoStep, ...] = (
    DemoStep("Lymphodepletion pharmacokinetics", (), _step_lymphodepletion),
    DemoStep(HUMAN, (), _step_human),
    DemoStep(POPULATION, (), _step_population, depends_on=(HUMAN,)),
    DemoStep("Mouse counterpart", (), _step_mouse),
    DemoStep(
        "Sensitivity sweep (Sobol indices)",
        (),
        _step_sensitivity,
        full_only="a Sobol sweep needs its own compiled batch and more samples than a smoke run affords; run "
        "`carkinetics demo` without --quick for it",
    ),
    DemoStep("Translation map: mouse to human", (), _step_translation),
    DemoStep("Export to SBML", (("antimony", "loadAntimonyString"),), _step_sbml, extra="sbml"),
    DemoStep("Parameters of the human preset", (), _step_parameters, depends_on=(HUMAN,)),
    DemoStep(
        "Virtual dose-escalation trial",
        (),
        _step_trial,
        full_only="a trial reads month-6 remission, past the quick run's 120-day horizon, and needs its own "
        "compiled batch; run `carkinetics demo` without --quick or `carkinetics trial` for it",
    ),
)


def run_demo(
    out: str,
    *,
    quick: bool = False,
    engine: Literal["ensemble", "vmap"] = "ensemble",
    steps: Sequence[DemoStep] = DEMO_STEPS,
    progress: Callable[[int, str], Any] | None = None,
) -> tuple[str, list[str], list[str]]:
    """Run the demo steps and write `report.html` into `out`.

    **Arguments:**

    - `out`: the output folder (it must exist).
    - `quick`: a smoke run: the short horizon, four mechanism groups, no step marked `full_only`.
    - `engine`: `"ensemble"` or `"vmap"`, for the batched steps (sensitivity sweep, translation map).
    - `steps`: the steps to run, in order.
    - `progress`: `progress(n_steps, label)` returns an object with `step(what)`, `advance()` and `close()` (e.g.
      the command line's `ctx.progress`); `None` for a silent run.

    **Returns:** `(report path, skipped notes, failed notes)`.
    """
    import jax

    from carkinetics.report import Report

    rep = Report(
        "carkinetics demo: CAR T-cell therapy in SLE",
        subtitle=f"carkinetics {ck.__version__}, {'quick' if quick else 'full'} run on "
        f"{jax.devices()[0].platform}, float64, {engine} engine",
    )
    ctx = DemoContext(out=out, quick=quick, report=rep, engine=engine, progress=progress is not None)
    skipped, failed, done = [], [], []
    prog = None if progress is None else progress(len(steps), "demo")
    for step in steps:
        if prog is not None:
            prog.step(step.title)
        rep.heading(step.title)
        missing = [why for ok, why in (_feature(m, a, step.extra) for m, a in step.requires) if not ok]
        missing += [f"it needs the step '{d}', which did not run" for d in step.depends_on if d not in done]
        if quick and step.full_only and not missing:
            msg = f"Step '{step.title}' is left out of the quick run: {step.full_only}."
            rep.note(msg, kind="skipped")
            skipped.append(msg)
        elif missing:
            msg = f"Step '{step.title}' is left out of this demo: {missing[0]}."
            rep.note(msg, kind="skipped")
            skipped.append(msg)
        else:
            t0 = time.perf_counter()
            try:
                step.run(ctx)
                done.append(step.title)
                rep.note(f"Step took {time.perf_counter() - t0:.1f} s.", kind="info")
            except Exception as err:
                msg = f"Step '{step.title}' failed: {type(err).__name__}: {err}"
                rep.note(msg, kind="warning")
                failed.append(msg)
                if os.environ.get("CARKINETICS_DEBUG"):
                    traceback.print_exc()
        if prog is not None:
            prog.advance()
    if prog is not None:
        prog.close()
    rep.heading("Files")
    rep.table(["file"], [[os.path.basename(f)] for f in ctx.files if os.path.exists(f)])
    path = rep.write(os.path.join(out, "report.html"))
    return path, skipped, failed
