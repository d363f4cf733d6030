"""Figures of `carkinetics demo` that set the model against the published SLE targets.

- `course_target_overlays`: the published targets of `calibration/data/human_sle_targets.csv` that a panel of the
  human course shows (a value at a day, or a level reached at a day), converted to the panel's unit, with their
  published spread; `overlay_targets` draws them on the course figure (points with error bars, labelled with author
  and year and the target's confidence tag; a reference range as a band).
- `population_bands`: a small virtual population (the random effects of `SLE_IIV`) under the Erlangen regimen, the
  5-95 % and 25-75 % percentile bands of B cells, CAR-T cells, IL-6 and anti-dsDNA over time, with the same targets.

Uses only the public `carkinetics` API and the application's own modules.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import Any, Literal, NamedTuple

import numpy as np

import carkinetics as ck
from carkinetics.models.sle.metrics import B_RETURN_PER_UL
from carkinetics.models.sle.targets import load_sle_targets

#: Panels of the population band figure (observables of the SLE model).
BAND_PANELS = ("b_blood", "car_blood", "il6", "anti_dsdna")

#: Readable y-axis units of the course panels (the model's unit strings, shortened for an axis).
AXIS_UNITS = {
    "car_blood": "cells/µL",
    "b_blood": "cells/µL",
    "lymphocytes": "cells/µL",
    "anti_dsdna": "U/mL",
    "il6": "pg/mL",
    "sledai": "SLEDAI-2K-like score",
}


class TargetOverlay(NamedTuple):
    """One published target drawn on a course panel, in the panel's unit.

    `kind` is `"point"` (a value `y` at day `t`, with the published spread as `[y_lo, y_hi]` and, for a time that is
    itself a published spread, `[t_lo, t_hi]`) or `"band"` (a reference range `[y_lo, y_hi]` at all times, `t` NaN).
    `label` names the source (first author and year) and the target's confidence tag.
    """

    panel: str
    target_ids: tuple[str, ...]
    kind: str
    t: float
    t_lo: float
    t_hi: float
    y: float
    y_lo: float
    y_hi: float
    label: str


def author_year(row: Any) -> str:
    """First author and year of a target: the first 'Name X et al., ... year' of its `source`, else the author and
    year of an id such as `mackensen2022_...`, else the first 'Name year' of the source, else the id."""
    m = re.search(r"([A-Z][A-Za-z-]+) [A-Z]{1,3} et al\.,[^;]*?((?:19|20)\d\d)", row.source)
    if m:
        return f"{m.group(1)} {m.group(2)}"
    m = re.match(r"([a-z]+)((?:19|20)\d\d)_", row.target_id)
    if m:
        return f"{m.group(1).capitalize()} {m.group(2)}"
    m = re.search(r"([A-Z][A-Za-z-]+) ((?:19|20)\d\d)\b", row.source)
    return f"{m.group(1)} {m.group(2)}" if m else row.target_id


def _interval(row: Any) -> tuple[float, float]:
    iv = row.interval()
    return (row.value, row.value) if iv is None else (float(iv[0]), float(iv[1]))


def course_target_overlays(
    sol: ck.Solution, targets: ck.TargetTable | None = None, t_end: float | None = None
) -> list[TargetOverlay]:
    """The published human SLE targets that a course panel can show, in the units of `sol`'s model.

    - `sledai` at a day (Mackensen 2022: median and range at baseline and month 3): on the SLEDAI panel.
    - `car_peak_blood` at `car_tmax`: the CAR-T peak (median, range) at the peak day (median, range).
    - `b_cell_reappearance_time`: the day (mean ± sd) B cells rise above `B_RETURN_PER_UL` cells/µL again, drawn at
      that level (the depletion threshold the reappearance targets use).
    - `anti_dsdna_fraction_of_baseline` at a day: mean ± sd of the fraction times the model's own baseline (day 0)
      in U/mL; only within the horizon `t_end` (default: the last save time).
    - `b_blood` reference range: a band (healthy adults, not SLE).

    **Arguments:** `sol` (a solution of the SLE model on a grid that includes day 0); `targets` (default
    `load_sle_targets("human")`); `t_end` (days).

    **Returns:** a list of [`TargetOverlay`][] records.
    """
    rows = load_sle_targets("human") if targets is None else targets
    ts = np.asarray(sol.ts)
    t_end = float(ts[-1]) if t_end is None else float(t_end)
    units = sol.model_class.observable_units
    out: list[TargetOverlay] = []
    for r in rows.select(quantity="sledai"):
        if not math.isnan(r.time) and r.time <= t_end:
            lo, hi = _interval(r)
            out.append(
                TargetOverlay(
                    "sledai", (r.target_id,), "point", r.time, r.time, r.time, r.value, lo, hi,
                    f"{author_year(r)} ({r.measure}, {r.spread_kind}) [{r.tag}]",
                )
            )  # fmt: skip
    peaks, tmaxs = rows.select(quantity="car_peak_blood"), rows.select(quantity="car_tmax")
    if peaks and tmaxs:
        p, tm = next(iter(peaks)), next(iter(tmaxs))
        lo, hi = (ck.convert_unit(v, p.unit, units["car_blood"]) for v in _interval(p))
        t_lo, t_hi = (ck.convert_unit(v, tm.unit, "d") for v in _interval(tm))
        out.append(
            TargetOverlay(
                "car_blood", (p.target_id, tm.target_id), "point", tm.value_in("d"), float(t_lo), float(t_hi),
                p.value_in(units["car_blood"]), float(lo), float(hi),
                f"CAR-T peak {author_year(p)} [{p.tag}], its day {author_year(tm)} [{tm.tag}]",
            )
        )  # fmt: skip
    for r in rows.select(quantity="b_cell_reappearance_time"):
        t_lo, t_hi = (float(ck.convert_unit(v, r.unit, "d")) for v in _interval(r))
        if t_lo <= t_end:
            level = float(ck.convert_unit(B_RETURN_PER_UL, "cells/uL", units["b_blood"]))
            out.append(
                TargetOverlay(
                    "b_blood", (r.target_id,), "point", r.value_in("d"), t_lo, t_hi, level, level, level,
                    f"B-cell reappearance {author_year(r)} ({r.measure} ± {r.spread_kind}; at "
                    f"{B_RETURN_PER_UL:g} cells/µL) [{r.tag}]",
                )
            )  # fmt: skip
    base = float(np.interp(0.0, ts, np.asarray(sol.observables.anti_dsdna)))
    for r in rows.select(quantity="anti_dsdna_fraction_of_baseline"):
        if not math.isnan(r.time) and r.time <= t_end:
            lo, hi = _interval(r)
            out.append(
                TargetOverlay(
                    "anti_dsdna", (r.target_id,), "point", r.time, r.time, r.time, r.value * base, lo * base,
                    hi * base, f"{author_year(r)} (B-cell depletion; fraction of baseline × model baseline) [{r.tag}]",
                )
            )  # fmt: skip
    for r in rows.select(quantity="b_blood", measure="reference_range"):
        lo, hi = (float(ck.convert_unit(v, r.unit, units["b_blood"])) for v in _interval(r))
        out.append(
            TargetOverlay(
                "b_blood", (r.target_id,), "band", math.nan, math.nan, math.nan, r.value_in(units["b_blood"]), lo, hi,
                f"healthy reference range, {author_year(r)} [{r.tag}]",
            )
        )  # fmt: skip
    return out


def overlay_targets(axes: dict[str, Any], overlays: Sequence[TargetOverlay]) -> int:
    """Draw `overlays` on the axes of their panels (`{panel: Axes}`; panels not given are skipped): points with
    their published spread as error bars in black, reference ranges as grey bands; each panel with a target gets a
    legend. Returns the number of overlays drawn."""
    drawn = 0
    for o in overlays:
        ax = axes.get(o.panel)
        if ax is None:
            continue
        if o.kind == "band":
            ax.axhspan(o.y_lo, o.y_hi, color="0.5", alpha=0.15, lw=0, label=o.label)
        else:
            ax.errorbar(
                [o.t],
                [o.y],
                yerr=[[o.y - o.y_lo], [o.y_hi - o.y]],
                xerr=[[o.t - o.t_lo], [o.t_hi - o.t]],
                fmt="D",
                color="black",
                mfc="white",
                ms=5,
                capsize=3,
                lw=1.0,
                zorder=5,
                label=o.label,
            )
        drawn += 1
    for ax in {id(a): a for a in axes.values()}.values():
        handles, labels = ax.get_legend_handles_labels()
        if handles:
            unique = dict(zip(labels, handles))  # one entry per source (e.g. two time points of one study)
            ax.legend(list(unique.values()), list(unique), fontsize=7, loc="best")
    return drawn


def panel_axes(fig: Any, panels: Sequence[str]) -> dict[str, Any]:
    """`{panel: Axes}` of a figure made by `carkinetics.plot.plot_timecourse` with these panels, in order."""
    visible = [ax for ax in fig.axes if ax.get_visible()]
    return dict(zip(panels, visible))


def readable_axes(axes: dict[str, Any]) -> None:
    """Shorten the y labels of the course panels to a readable unit (`AXIS_UNITS`); the titles name the panels."""
    for name, ax in axes.items():
        if name in AXIS_UNITS:
            ax.set_ylabel(AXIS_UNITS[name], fontsize=9)


class PopulationBands(NamedTuple):
    """Percentiles of a virtual population's trajectories: `ts` `(T,)`, `bands[name]` `(5, T)` at
    `PERCENTILES`, `n` members, `n_failed` failed solves."""

    ts: np.ndarray
    bands: dict[str, np.ndarray]
    n: int
    n_failed: int


def band_trajectories(sol: ck.Solution) -> dict[str, Any]:
    """The `BAND_PANELS` observables of one solution over its save times (the per-member outputs of the sweep)."""
    return {name: getattr(sol.observables, name) for name in BAND_PANELS}


#: Percentiles of the band figure: 5-95 % (outer band), 25-75 % (inner band) and the median.
PERCENTILES = (5.0, 25.0, 50.0, 75.0, 95.0)


def population_bands(
    model: Any, regimen: Any, ts: Any, key: Any, n: int, engine: Literal["ensemble", "vmap"] = "ensemble"
) -> tuple[PopulationBands, dict[str, np.ndarray]]:
    """`n` virtual patients (`sle_virtual_population` around `model`) under `regimen`, the percentiles of the
    `BAND_PANELS` observables at the save times `ts`; also returns the trajectories `{name: (n, T)}`."""
    from carkinetics.models.sle.population import sle_virtual_population

    pop = sle_virtual_population(model, key, n)

    def trajectories(sol: ck.Solution) -> dict[str, Any]:
        return {name: getattr(sol.observables, name) for name in BAND_PANELS}

    res = ck.sweep_model(
        model,
        regimen,
        ts,
        pop.samples,
        metrics=trajectories,
        engine=engine,
        chunk_size=n,
        progress=False,  # pyright: ignore[reportArgumentType]
    )
    traj = {k: np.asarray(v) for k, v in res.outputs.items()}
    ok = np.asarray(res.ok, bool)
    bands = {k: np.percentile(v[ok], PERCENTILES, axis=0) for k, v in traj.items()}
    return PopulationBands(np.asarray(ts), bands, n, int(np.sum(~ok))), traj


def plot_population_bands(
    pb: PopulationBands, overlays: Sequence[TargetOverlay], titles: dict[str, str], typical: Any = None
) -> Any:
    """The band figure: per panel the 5-95 % band (light), the 25-75 % band (dark), the median, the typical patient
    (`typical`, a solution, dashed) and the published targets; a legend explains colours and markers."""
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    fig, axs = plt.subplots(2, 2, figsize=(10.5, 6.6), squeeze=False)
    axes: dict[str, Any] = dict(zip(BAND_PANELS, axs.ravel()))
    for name, ax in axes.items():
        q = pb.bands[name]
        ax.fill_between(pb.ts, q[0], q[4], color="C0", alpha=0.18, lw=0)
        ax.fill_between(pb.ts, q[1], q[3], color="C0", alpha=0.38, lw=0)
        ax.plot(pb.ts, q[2], color="C0", lw=1.6)
        if typical is not None:
            ax.plot(np.asarray(typical.ts), np.asarray(getattr(typical.observables, name)), "k--", lw=1.0)
        positive = q[4][np.isfinite(q[4]) & (q[4] > 0)]
        if positive.size and positive.max() / max(np.nanmin(np.where(q[0] > 0, q[0], np.inf)), 1e-300) > 1e2:
            ax.set_yscale("log")
            ax.set_ylim(bottom=max(float(np.nanmin(q[0][q[0] > 0])), positive.max() * 1e-5) / 1.5)
        ax.set_title(titles.get(name, name), fontsize=10)
        ax.set_ylabel(AXIS_UNITS.get(name, ""), fontsize=9)
        ax.set_xlabel("day (relative to CAR-T infusion)", fontsize=9)
        ax.axvline(0.0, color="0.7", lw=0.8, ls=":")
        ax.grid(alpha=0.3)
    overlay_targets(axes, overlays)
    handles = [
        Patch(color="C0", alpha=0.18, label="5-95 % of virtual patients"),
        Patch(color="C0", alpha=0.45, label="25-75 %"),
        Line2D([], [], color="C0", lw=1.6, label="median"),
        Line2D([], [], color="black", ls="--", lw=1.0, label="typical patient (preset)"),
        Line2D([], [], color="black", marker="D", mfc="white", ls="", label="published target ± spread"),
    ]
    fig.legend(handles=handles, loc="lower center", ncols=5, fontsize=8)
    fig.suptitle(
        f"Virtual SLE population under the Erlangen regimen: {pb.n} patients"
        + (f" ({pb.n_failed} failed solves left out)" if pb.n_failed else ""),
        fontsize=11,
    )
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    return fig
