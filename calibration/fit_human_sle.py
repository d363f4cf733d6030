"""Calibration of the SLE CAR-T model (v2) to every published human target: writes `calibration/fits/human_sle.json`,
the fit file the shipped presets apply (`load_preset("human")` is the calibrated default).

**Every row is accounted for.** `TARGETS` binds each row of the human target files to how it is checked:

| kind | meaning |
|---|---|
| `sle` | typical SLE patient (preset `human`, Erlangen regimen, MB-CART19.1 1e6/kg): a statistic in the stage-2 loss |
| `oncology` | oncology-like setting (`human_oncology`, tisa-cel 3.1e6/kg, Kymriah ALL Flu/Cy): stage-1 loss |
| `population` | a between-patient number (mean ± SD, proportion): checked on the virtual population |
| `input` | a number the model takes as a parameter or untreated state: checked directly |
| `not_evaluable` | the model cannot produce it (the reason is stated) |

A row can have several readings (e.g. "anti-dsDNA negative in 5/5 by 3 months": the typical patient below the
cutoff at day 91 in the loss, and the fraction of the virtual population in the population check). Rows without a
reported spread get an acceptance interval here, with the reason.

**Two stages** (sequential Bayesian updating with a Laplace approximation in between):

1. Oncology-like setting, fitted to the Stein 2019 multiphasic shape (`oncology_ck_targets.csv`: fold expansion,
   Tmax, contraction rate α, fraction to the slow phase F_B, persistence rate β) and to the oncology humoral rows
   of `human_sle_targets.csv` (Hill 2019: adults in durable CR, i.e. lasting B-cell aplasia): the cellular
   kinetics of the 4-1BB murine-scFv CD19 product (`STAGE1`). Each Stein typical value is compared with a
   log-normal error combining its RSE and a model discrepancy of the setting (`STEIN_DISCREPANCY`); the activation
   lag has a literature prior (`STAGE1_PRIOR_SD`). Written to `fits/human_oncology_ck.json`.
2. SLE setting, fitted to the SLE rows: the product parameters start at the stage-1 values with the stage-1
   Laplace posterior as their prior (sd on the unconstrained scale, at most the tag prior), the host parameters
   (`HOST`) have the tag priors. Written to `fits/human_sle.json`: every estimated parameter, tag F, with both
   target files and their SHA-256.

The SLE-specific differences the references state are carried by the settings, not by the product: similar
expansion to B-NHL (the SLE peak target is the B-NHL range), but fewer CD19⁺ targets, faster T-cell
reconstitution and hence earlier anti-CAR rejection and shorter persistence in SLE (Erlangen SLE vs B-NHL, Blood
2025 [R qualitative]; the `human_oncology` preset: leukaemic burden, lymphopenic host, slow T-cell recovery).

Both stages start from the hand-set class defaults (`load_preset(..., calibrated=False)`), never from an earlier
fit, so a rerun reproduces the file. The model's own solvers and tolerances apply (`SLECarTModel` is stiff: the fit
runs on the ensemble engine with `ck.EnsembleRodas5()`, as do the Laplace Hessians and profiles here, whose
problems are built with that solver); `max_steps` = 20,000 bounds the steps over the whole horizon.

Outputs: the two fit files, and in `--out-dir` (default `calibration/results/human_sle/`, not committed) the target
tables, Laplace tables, profiles, `summary.json` and figures. Run: `python calibration/fit_human_sle.py --dry-run`
(build both problems, one batched loss + gradient each; writes nothing), `--quick` (small budget) or without either
(the full fit); `--no-profiles` skips the profile likelihoods.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
import time
import warnings
from typing import Any, ClassVar

HERE = os.path.dirname(os.path.abspath(__file__))
FIT_FILE = os.path.join(HERE, "fits", "human_sle.json")
STAGE1_FILE = os.path.join(HERE, "fits", "human_oncology_ck.json")

#: Stage 1: the product's cellular kinetics (4-1BB, murine scFv), estimated in the oncology-like setting.
#: `car.k_stim` (antigen density of half-maximal stimulation, tag A) is not estimated: its profile is flat in both
#: stages (the summary targets cannot pin it), it is a property of the CAR that the mouse presets' murine product
#: inherits, and a free k_stim drifted to 1.7e4 cells/uL, where the CD28 product no longer raises the CRS grade and
#: the MRL/lpr B-cell depletion lasts 283 d instead of >= 1 year (fit of 2026-12-05 09:39, all ten parameters free).
STAGE1 = ("car.rho", "car.k_kill", "car.k_react", "car.f_blood_resting", "car.tau_lag")
#: Stage 2 adds the host parameters of SLE: anti-CAR response, disease resolution. The CRS drive is not estimated
#: here: the typical patient's grade-1 target leaves `myeloid.k_cd40` and `myeloid.k_damp` unidentified (flat profile
#: on both sides, Laplace posterior = prior, fit of 2026-12-05 16:48); the between-patient CRS grade distribution
#: sets `myeloid.k_damp` and its IIV instead (`population_report.py --tune`).
HOST = ("rejection.r_exp", "rejection.k_help", "disease.k_act")
ESTIMATE = STAGE1 + HOST
#: Oncology-like regimen: tisa-cel ALL label, Flu 30 mg/m2 x 4 + Cy 500 mg/m2 x 2 [R2], 3.1e6 CAR-T/kg (Stein 2019
#: median dose [R]).
ONC_FLU = dict(flu_mg_per_m2=30.0, flu_days=(-6.0, -5.0, -4.0, -3.0), cy_mg_per_m2=500.0, cy_days=(-6.0, -5.0))
ONC_CELLS_PER_KG = 3.1e6
T_END = {"sle": 250.0, "oncology": 365.0}
#: Stein 2019 Table 1 [R]: typical value and IIV (omega^2 on the log scale) of the multiphasic shape; the
#: between-patient 95 % range is typical x/÷ exp(1.96 omega).
STEIN_IIV = {
    "fold_expansion": (3900.0, 2.4),
    "tmax": (9.3, 0.38),
    "contraction_rate": (0.16, 0.91),
    "slow_fraction": (0.0079, 0.80),
    "persistence_rate": (0.0032, 0.86),
}


#: Model discrepancy (sd on the log scale) added to the RSE of each Stein 2019 typical value: the oncology-like
#: preset stands in for the ELIANA/ENSIGN patients with an assumed leukaemic burden and host [A], so a typical value
#: of that population is compared with the preset's typical patient with this extra uncertainty.
STEIN_DISCREPANCY = 0.3
#: Prior sds (unconstrained scale) that replace the tag prior in stage 1: the activation lag `car.tau_lag` (tag A,
#: 1.5 d) is bracketed by the time to first division of stimulated T cells (30-40 h, Gett AV, Hodgkin PD, Nat Immunol
#: 2000;1:239 [M]) and the blood lag phase of liso-cel, a 4-1BB FMC63 CD19 product (3.27 d, 95 % CI 2.71-3.97;
#: Ogasawara 2021 [R], `carkinetics.models.LagPhaseCK`): sd 0.5 keeps it within a few days (with the tag prior 1.5
#: the fit drifted to a 15-day activation lag, which neither source allows).
STAGE1_PRIOR_SD = {"car.tau_lag": 0.5}


def stein_range(key: str) -> tuple[float, float]:
    """Between-patient 95 % range of a Stein 2019 quantity (typical x/÷ exp(1.96 omega))."""
    typ, om2 = STEIN_IIV[key]
    f = math.exp(1.96 * math.sqrt(om2))
    return typ / f, typ * f


def __getattr__(name):
    """`DATA` / `DATA_ONCOLOGY`: the installed target files (`target_file("human" | "oncology_ck")`, whose source
    is `calibration/data/`), resolved on first use so that importing this script does not import carkinetics."""
    if name in ("DATA", "DATA_ONCOLOGY"):
        from carkinetics.models.sle import target_file

        return target_file("human" if name == "DATA" else "oncology_ck")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# ---- statistics not in the library (subclasses of the public ck.AbstractStatistic) -----------------------------


def _statistics():
    """The script's statistics, defined lazily (importing the script must not import carkinetics)."""
    import equinox as eqx
    import jax.numpy as jnp

    import carkinetics as ck
    from carkinetics.models.sle.metrics import stein_shape

    units = {
        "tmax": "d",
        "fold_expansion": "1",
        "contraction_rate": "1/d",
        "persistence_rate": "1/d",
        "slow_fraction": "1",
    }

    class SteinShape(ck.AbstractStatistic):
        """One number of the Stein 2019 shape of `observable` (`carkinetics.models.sle.metrics.stein_shape`)."""

        observable: str = eqx.field(static=True)
        key: str = eqx.field(static=True)
        dimension: ClassVar[str] = "same"

        def __call__(self, ts, values):
            return stein_shape(ts, values)[self.key]

        def unit(self, observable_unit):
            return units[self.key]

        def times(self):
            return (0.0, 90.0, 365.0)

    class RelativeChange(ck.AbstractStatistic):
        """`observable(t) / observable(ref_t) − 1` (dimensionless): a published relative change."""

        observable: str = eqx.field(static=True)
        t: float = eqx.field(static=True)
        ref_t: float = eqx.field(static=True)
        dimension: ClassVar[str] = "dimensionless"

        def __call__(self, ts, values):
            return ck.metrics.fold_change(ts, values, self.t, self.ref_t) - 1.0

        def times(self):
            return (self.t, self.ref_t)

    class HalfLifeOfRate(ck.AbstractStatistic):
        """`ln 2 / observable(t)` (days) for an observable that is a first-order rate (1/d)."""

        observable: str = eqx.field(static=True)
        t: float = eqx.field(static=True)
        dimension: ClassVar[str] = "time"

        def __call__(self, ts, values):
            return jnp.log(2.0) / ck.metrics.value_at(ts, values, self.t)

        def times(self):
            return (self.t,)

    return SteinShape, RelativeChange, HalfLifeOfRate


@dataclasses.dataclass(frozen=True)
class Target:
    """How one published row is checked (see the module docstring).

    `statistic(model)` builds the statistic (kinds `sle`, `oncology`); `accept` is the interval a calibrated value
    must fall in when the row reports no spread (or when the row is read as a bound for the typical patient);
    `error` (`"upper_bound"`; `"stein"`: log-normal with the row's RSE and `STEIN_DISCREPANCY`; or a NormalError
    sd) overrides the row's default error model in the loss.
    """

    target_id: str
    kind: str
    statistic: Any = None
    accept: tuple[float, float] | None = None
    error: Any = None
    note: str = ""


def targets() -> list[Target]:
    """Every row of `human_sle_targets.csv` and `oncology_ck_targets.csv`, with its reading(s)."""
    import carkinetics as ck
    from carkinetics.models.sle.metrics import B_RETURN_PER_UL, DORIS_SLEDAI

    SteinShape, RelativeChange, HalfLifeOfRate = _statistics()
    b = B_RETURN_PER_UL
    inf = math.inf
    return [
        # --- SLE, typical patient (stage 2) -----------------------------------------------------------------------
        Target(
            "mackensen2022_b_reappearance",
            "sle",
            ck.CrossingTime("b_blood", b, "up", t_start=1.0),
            note="first up-crossing of 5 B cells/uL after day 1",
        ),
        Target(
            "muller2024_b_aplasia",
            "sle",
            ck.TimeBelow("b_blood", b, t_start=0.0),
            note="time below 5 B cells/uL from day 0",
        ),
        Target(
            "mackensen2022_dsdna_seroconversion",
            "sle",
            ck.ValueAt("anti_dsdna_index", 91.0),
            accept=(-inf, 1.0),
            error="upper_bound",
            note="5/5 negative by ~3 months; typical patient: anti-dsDNA below its cutoff (index < 1) at day 91",
        ),
        Target("mackensen2022_sledai_baseline", "sle", ck.ValueAt("sledai", -5.0), note="SLEDAI-2K at day -5"),
        Target("mackensen2022_sledai_3mo", "sle", ck.ValueAt("sledai", 91.0), note="SLEDAI-2K at day 91"),
        Target(
            "mackensen2022_doris_3mo",
            "sle",
            ck.ValueAt("sledai", 91.0),
            accept=(-inf, DORIS_SLEDAI),
            error="upper_bound",
            note="DORIS remission in 5/5 at 3 months; typical patient: clinical SLEDAI-2K 0 (index < 1) at day 91 "
            "[A: PGA and prednisolone not modelled]",
        ),
        Target(
            "muller2024_crs_max_grade",
            "sle",
            ck.PeakHeight("crs_grade", t_start=0.0),
            note="peak of the continuous ASTCT-like CRS index (integer part = grade)",
        ),
        Target("erlangen_car_tmax", "sle", ck.PeakTime("car_blood", t_start=1.0), note="day of the blood CAR-T peak"),
        Target(
            "sle_car_peak_blood_vs_nhl",
            "sle",
            ck.PeakHeight("car_blood", t_start=1.0),
            note="blood CAR-T peak (SLE expansion ~ B-NHL)",
        ),
        Target(
            "kochenderfer2017_il15_tmax",
            "sle",
            ck.PeakTime("il15", t_start=-6.0),
            accept=(1.0, 3.0),
            note="day of the IL-15 peak after Flu/Cy; no spread reported: accepted within +/- 1 d (daily "
            "cytokine sampling) [A]; lymphoma Flu/Cy read in the SLE Flu/Cy setting",
        ),
        Target(
            "igg_half_life_human",
            "sle",
            HalfLifeOfRate("igg_k_el", -6.0),
            note="ln 2 / IgG elimination rate of the untreated patient",
        ),
        Target("b_blood_reference_range", "sle", ck.ValueAt("b_blood", -6.0), note="untreated blood B cells"),
        Target("t_blood_reference_range", "sle", ck.ValueAt("t_blood", -6.0), note="untreated blood T cells"),
        # --- oncology-like setting (stage 1) ---------------------------------------------------------------------
        # the loss compares the typical value with a log-normal error (its RSE and the STEIN_DISCREPANCY of the
        # setting); a calibrated product must lie within the published between-patient range (typical x/÷
        # exp(1.96 omega), Stein 2019 IIV)
        Target(
            "stein2019_foldx",
            "oncology",
            SteinShape("car_blood", "fold_expansion"),
            accept=stein_range("fold_expansion"),
            error="stein",
            note="Cmax / R0; accepted: between-patient range",
        ),
        Target(
            "stein2019_tmax",
            "oncology",
            SteinShape("car_blood", "tmax"),
            accept=stein_range("tmax"),
            error="stein",
            note="day of the peak; accepted: between-patient range",
        ),
        Target(
            "stein2019_alpha",
            "oncology",
            SteinShape("car_blood", "contraction_rate"),
            accept=stein_range("contraction_rate"),
            error="stein",
            note="log-linear slope 3-14 d after Tmax; accepted: between-patient range",
        ),
        Target(
            "stein2019_fb",
            "oncology",
            SteinShape("car_blood", "slow_fraction"),
            accept=stein_range("slow_fraction"),
            error="stein",
            note="persistence line back-extrapolated to Tmax over Cmax; accepted: between-patient range",
        ),
        Target(
            "stein2019_beta",
            "oncology",
            SteinShape("car_blood", "persistence_rate"),
            accept=stein_range("persistence_rate"),
            error="stein",
            note="log-linear slope over days 90-365; accepted: between-patient range",
        ),
        Target(
            "hill2019_total_igg_change",
            "oncology",
            RelativeChange("total_igg", 365.0, -6.0),
            accept=(-0.275, -0.075),
            error=0.05,
            note="oncology adults in durable CR (lasting B aplasia): total IgG change at 1 year; no spread "
            "reported: accepted within +/- 0.1 [A]",
        ),
        Target(
            "hill2019_measles_igg_change",
            "oncology",
            RelativeChange("vaccine_igg", 365.0, -6.0),
            accept=(-0.1, 0.1),
            error=0.05,
            note="measles IgG unchanged (+1.2 %, seroprotection lost in 1 of 39): accepted within +/- 0.1 [A]",
        ),
        # --- checks of the oncology-like shape not in the loss (algebraic duplicates of rows above) --------------
        Target("stein2019_doubling_time", "check", None, note="= ln2 Tmax / ln(foldx): checked via foldx and Tmax"),
        Target("stein2019_contraction_half_life", "check", None, note="= ln2 / alpha: checked via alpha"),
        Target("stein2019_persistence_half_life", "check", None, note="= ln2 / beta: checked via beta"),
        # --- between-patient numbers: the virtual population ------------------------------------------------------
        Target("mackensen2022_crs_grade1_pop", "population", note="mackensen2022_crs_grade1: 3/5 grade 1"),
        Target("muller2024_crs_grade1_pop", "population", note="muller2024_crs_grade1: 10/15 grade 1"),
        Target("muller2024_crs_grade2_pop", "population", note="muller2024_crs_grade2: 1/15 grade 2"),
        Target(
            "feng2025_crs_grade1_pop",
            "population",
            note="feng2025_crs_grade1: 86.7 % grade 1 with the CD19+BCMA co-infusion product",
        ),
        # --- model inputs ------------------------------------------------------------------------------------------
        Target("macallan2005_b_turnover_naive", "input", note="= bcell.d_naive (tag R)"),
        Target(
            "macallan2005_b_turnover_total",
            "input",
            note="turnover of the untreated blood B pool (naive, memory, autoreactive), weighted by pool size",
        ),
        # --- not evaluable -----------------------------------------------------------------------------------------
        Target(
            "cambridge2006_dsdna_rtx",
            "not_evaluable",
            note="SLE after rituximab: the model has no anti-CD20 antibody arm (its PK and the incomplete "
            "depletion of tissue B cells are not modelled)",
        ),
        Target(
            "stein2019_cmax",
            "not_evaluable",
            note="copies/ug gDNA: the model counts cells/uL (copies per cell and DNA per uL of blood are not "
            "modelled); the fold expansion is its unit-free counterpart",
        ),
        Target(
            "kochenderfer2017_tmax",
            "not_evaluable",
            note="lymphoma, CD28 product: not the oncology-like setting (B-ALL, 4-1BB); its range feeds the SLE "
            "peak target sle_car_peak_blood_vs_nhl",
        ),
        Target("kochenderfer2017_peak_remitters", "not_evaluable", note="as kochenderfer2017_tmax"),
        Target("kochenderfer2017_peak_nonremitters", "not_evaluable", note="as kochenderfer2017_tmax"),
        Target(
            "kimmel2021_axicel_d7", "not_evaluable", note="axi-cel (CD28) in lymphoma: not the oncology-like setting"
        ),
        Target("kimmel2021_axicel_d14", "not_evaluable", note="as kimmel2021_axicel_d7"),
        Target("kimmel2021_axicel_d28", "not_evaluable", note="as kimmel2021_axicel_d7"),
        Target("kimmel2021_axicel_d90", "not_evaluable", note="as kimmel2021_axicel_d7"),
        Target(
            "porter2011_marrow_half_life",
            "not_evaluable",
            note="marrow (not blood) CAR-T decay in one CLL patient: no marrow compartment in the model",
        ),
    ]


#: The population rows above read these rows of the target file (target id in the file).
POPULATION_ROWS = {
    "mackensen2022_crs_grade1_pop": "mackensen2022_crs_grade1",
    "muller2024_crs_grade1_pop": "muller2024_crs_grade1",
    "muller2024_crs_grade2_pop": "muller2024_crs_grade2",
    "feng2025_crs_grade1_pop": "feng2025_crs_grade1",
}


def row_ids() -> set[str]:
    """The target ids of both human target files."""
    from carkinetics.models.sle import load_sle_targets

    return {r.target_id for r in load_sle_targets(["human", "oncology_ck"])}


# ---- settings and problems ---------------------------------------------------------------------------------------


def setting(kind: str, *, calibrated: bool = False):
    """(model, regimen, grid) of a setting: `"sle"` or `"oncology"` (default: the uncalibrated presets = priors)."""
    import numpy as np

    from carkinetics.models.sle import erlangen_regimen, flu_cy_regimen, load_preset

    if kind == "sle":
        model = load_preset("human", calibrated=calibrated)
        regimen = erlangen_regimen(model)
        grid = np.concatenate([np.arange(-6.0, 30.0, 0.25), np.arange(30.0, T_END["sle"] + 1.0, 2.0)])
    elif kind == "oncology":
        model = load_preset("human_oncology", calibrated=calibrated)
        regimen = flu_cy_regimen(model, **ONC_FLU, cells_per_kg=ONC_CELLS_PER_KG)
        grid = np.concatenate([np.arange(-7.0, 30.0, 0.25), np.arange(30.0, T_END["oncology"] + 1.0, 1.0)])
    else:
        raise ValueError(f"unknown setting {kind!r}")
    return model, regimen, grid


def bound_targets(kind: str, model):
    """The rows of a setting bound to `model` as `ck.SummaryData` (value, error, acceptance interval)."""
    import carkinetics as ck
    from carkinetics.models.sle import load_sle_targets

    table = load_sle_targets(["human", "oncology_ck"])
    out = []
    for t in targets():
        if t.kind != kind:
            continue
        row = table[t.target_id]
        if t.error == "upper_bound":  # the typical patient below a bound (e.g. the anti-dsDNA cutoff)
            hi = t.accept[1]
            sd = 0.1 * abs(hi)
            err = ck.CensoredError(ck.NormalError(sd), lloq=hi)
            tg = ck.SummaryData(
                t.statistic,
                hi,
                err,
                t.target_id,
                t.statistic.unit(model.observable_units[t.statistic.observable]),
                (-math.inf, hi),
            )
        else:
            if t.error == "stein":
                err = ck.LogNormalError(math.hypot(row.spread / 100.0, STEIN_DISCREPANCY))
            else:
                err = None if t.error is None else ck.NormalError(float(t.error))
            if err is None and not math.isfinite(row.sigma()) and row.value <= 0:
                err = ck.NormalError(0.1)
            tg = ck.summary_target(row, t.statistic, model, error=err)
            if t.accept is not None:
                tg = ck.SummaryData(tg.statistic, tg.value, tg.error, tg.target_id, tg.unit, t.accept)
        out.append(tg)
    return out


def build_problem(kind: str = "sle", model=None, *, priors: Any = "tags", estimate=None):
    """The calibration problem of a setting (`"oncology"`: stage 1, `"sle"`: stage 2)."""
    import carkinetics as ck

    base, regimen, grid = setting(kind)
    model = base if model is None else model
    names = list(estimate if estimate is not None else (STAGE1 if kind == "oncology" else ESTIMATE))
    if kind == "oncology" and priors == "tags":
        tags = ck.parameters(model)
        priors = {n: STAGE1_PRIOR_SD.get(n, ck.PRIOR_SD[tags[n].info.tag]) for n in names}
    return ck.CalibrationProblem(
        model,
        regimen,
        bound_targets(kind, model),
        names,
        priors=priors,
        grid=grid,
        solver=ck.EnsembleRodas5(),
        max_steps=20_000,
    )


def target_table(problem, z):
    """Rows (target_id, prediction, published value, interval, hit, unit) and a Markdown rendering."""
    import numpy as np

    preds = [float(np.asarray(p)) for p in problem.predictions(z)]
    rows = []
    for tg, p in zip(problem.targets, preds):
        lo, hi = tg.interval if tg.interval is not None else (math.nan, math.nan)
        hit = tg.interval is None or (lo <= p <= hi)
        rows.append((tg.target_id, p, float(tg.value), (lo, hi), hit, tg.unit))
    lines = ["| target | model | published | accepted interval | unit | hit |", "|---|---|---|---|---|---|"]
    for tid, p, v, (lo, hi), hit, unit in rows:
        lines.append(f"| {tid} | {p:.4g} | {v:.4g} | [{lo:.4g}, {hi:.4g}] | {unit} | {'yes' if hit else 'NO'} |")
    return rows, "\n".join(lines)


def untreated_b_turnover(model) -> float:
    """Turnover (1/d) of the untreated blood B pool: pool-weighted loss rates of naive, memory and autoreactive B."""
    from carkinetics.models.sle import bcells

    b = model.bcell
    s = bcells.baseline(b, model.volumes()[0]).state
    n, m, a = float(s.naive), float(s.memory), float(s.auto)
    return (float(b.d_naive) * n + float(b.d_mem) * m + float(b.d_auto) * a) / (n + m + a)


# ---- running a stage -------------------------------------------------------------------------------------------------


def run_stage(problem, *, n_starts, adam, lbfgs, seed, profiles, profile_steps, label, out_dir, plot_fit):
    """Fit, Laplace, profiles; prints and writes the stage's report. Returns (fit, laplace, profiles, rows)."""
    import jax

    import carkinetics as ck

    starts = ck.make_starts(problem, jax.random.key(seed), n_starts, scale=0.3)
    t0 = time.time()
    res = ck.fit(problem, starts=starts, adam_steps=adam, lbfgs_steps=lbfgs, learning_rate=0.03)
    print(f"[{label}] fit: {time.time() - t0:.0f} s (shared, loaded machine)")
    print(res.convergence_report())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ck.IdentifiabilityWarning)
        t0 = time.time()
        lap = ck.laplace(res)
        print(f"[{label}] laplace: {time.time() - t0:.0f} s")
        profs = []
        for n in profiles:
            t0 = time.time()
            profs.append(ck.profile_likelihood(res, n, n_points=5, span=1.5, steps=profile_steps))
            print(f"[{label}] profile {n}: {time.time() - t0:.0f} s")
    print(res.parameter_table(lap.sd_z))
    print(lap.table())
    for w in caught:
        print("IdentifiabilityWarning:", w.message)
    for p in profs:
        print(p.summary())
    rows, md = target_table(problem, res.z)
    print(md)
    with open(os.path.join(out_dir, f"report_{label}.md"), "w") as fh:
        fh.write(
            f"# {label}\n\n"
            + res.convergence_report()
            + "\n\n"
            + res.parameter_table(lap.sd_z)
            + "\n\n"
            + lap.table()
            + "\n\n"
            + md
            + "\n\n"
            + "\n".join(p.summary() for p in profs)
            + "\n\n"
            + "\n".join(f"- {m}" for m in lap.warnings)
            + "\n"
        )
    if plot_fit:
        import carkinetics.plot as ckplot

        ckplot.plot_fit(res, path=os.path.join(out_dir, f"fit_vs_targets_{label}.png"), title=f"{label}: targets")
        if profs:
            ckplot.plot_profiles(profs, path=os.path.join(out_dir, f"profiles_{label}.png"))
    return res, lap, profs, rows


def plot_trajectories(problems_and_z, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from carkinetics.models.sle.metrics import B_RETURN_PER_UL

    fig, axes = plt.subplots(2, 4, figsize=(18, 7.5))
    for row, (label, problem, z) in zip(axes, problems_and_z):
        names = problem.model.observable_names()
        for ax, obs, log in zip(
            row,
            ("car_blood", "b_blood", "sledai" if label == "sle" else "total_igg", "crs_grade"),
            (True, True, False, False),
        ):
            i = names.index(obs)
            for zz, lab, st in ((problem.z0, "prior (hand-set)", "--"), (z, "fitted", "-")):
                s = problem.simulate(zz)
                y = np.asarray(s.obs_array[:, i])
                ax.plot(np.asarray(problem.ts), np.where(y > 0, y, np.nan) if log else y, st, label=lab)
            if log:
                ax.set_yscale("log")
            if obs == "b_blood":
                ax.axhline(B_RETURN_PER_UL, color="0.5", lw=1, ls=":")
            ax.set_title(f"{label}: {obs}", fontsize=9)
            ax.set_xlabel("days after CAR-T infusion")
            ax.set_ylabel(problem.model.observable_units[obs], fontsize=8)
            ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _convergence_note(label, res) -> str:
    """One line on a stage's convergence for the fit file's notes (a failed stage is never reported as converged)."""
    import numpy as np

    g = np.asarray(res.grad_norms)
    state = "converged" if res.success else "NOT CONVERGED (best start failed the gtol/ftol criteria of ck.fit)"
    return (
        f"{label} {state}: {int(np.sum(np.asarray(res.converged)))}/{g.size} starts converged, {res.n_agree} "
        f"within ftol of the best loss {float(res.loss):.6g}, best |grad| {float(g[res.best]):.3g}"
    )


def dry_run(seed: int = 0) -> int:
    import jax
    import jax.numpy as jnp
    import numpy as np

    import carkinetics as ck

    ok = True
    for kind in ("oncology", "sle"):
        problem = build_problem(kind)
        print(f"[{kind}] {len(problem.targets)} targets, estimate {list(problem.names)}, {problem.ts.size} grid times")
        starts = ck.make_starts(problem, jax.random.key(seed), 2, scale=0.3)
        lossgrad = jax.jit(jax.value_and_grad(lambda z, p=problem: jnp.sum(p.ensemble_losses(z))))
        t0 = time.perf_counter()
        loss, grad = jax.block_until_ready(lossgrad(starts))
        print(
            f"[{kind}] batched loss + gradient at 2 starts: {float(loss):.6g}, |grad| "
            f"{float(jnp.linalg.norm(grad)):.3g}; {time.perf_counter() - t0:.1f} s with compilation"
        )
        print(target_table(problem, problem.z0)[1])
        ok = ok and bool(np.isfinite(float(loss)))
    return 0 if ok else 1


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small budget (2 starts, short L-BFGS, 2 profiles)")
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="build both problems, one batched loss + gradient each, print the target tables",
    )
    parser.add_argument("--out-dir", default=os.path.join(HERE, "results", "human_sle"))
    parser.add_argument("--fit-file", default=FIT_FILE)
    parser.add_argument("--stage1-file", default=STAGE1_FILE)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-profiles", action="store_true")
    parser.add_argument("--lbfgs-steps", type=int, default=None)
    parser.add_argument("--adam-steps", type=int, default=None)
    parser.add_argument("--starts", type=int, default=None)
    args = parser.parse_args(argv)

    import jax

    jax.config.update("jax_enable_x64", True)
    import numpy as np

    import carkinetics as ck

    if args.dry_run:
        return dry_run(args.seed)
    os.makedirs(args.out_dir, exist_ok=True)
    n_starts, lbfgs, adam, psteps = (2, 20, 10, 20) if args.quick else (4, 120, 30, 40)
    n_starts = args.starts or n_starts
    lbfgs = lbfgs if args.lbfgs_steps is None else args.lbfgs_steps
    adam = adam if args.adam_steps is None else args.adam_steps
    script = "calibration/fit_human_sle.py " + " ".join(argv if argv is not None else sys.argv[1:])
    from carkinetics.models.sle import target_file

    # stage 1: the product's cellular kinetics in the oncology-like setting
    p1 = build_problem("oncology")
    prof1 = () if args.no_profiles else (STAGE1[:2] if args.quick else STAGE1)
    res1, lap1, profs1, rows1 = run_stage(
        p1,
        n_starts=n_starts,
        adam=adam,
        lbfgs=lbfgs,
        seed=args.seed,
        profiles=prof1,
        profile_steps=psteps,
        label="oncology",
        out_dir=args.out_dir,
        plot_fit=True,
    )
    sd1 = {n: float(s) for n, s in zip(p1.names, np.asarray(lap1.sd))}
    ck.save_fit(
        args.stage1_file,
        res1,
        data_files=[target_file("oncology_ck"), target_file("human")],
        sd=sd1,
        script=script,
        notes=(
            "Stage 1 of the human SLE calibration: the cellular kinetics of the 4-1BB murine-scFv CD19 "
            "product in the oncology-like setting (preset human_oncology, tisa-cel 3.1e6/kg after Flu 30 "
            "x 4 + Cy 500 x 2), fitted to Stein 2019 and Hill 2019. Its values and Laplace sds are the "
            "priors of stage 2 (human_sle.json); presets do not apply this file. "
            + _convergence_note("Stage 1", res1)
            + "."
        ),
    )

    # stage 2: SLE, product parameters with the stage-1 posterior as prior, host parameters with tag priors
    base, _, _ = setting("sle")
    model2 = base.replace(res1.values())
    tag_sd = {n: ck.PRIOR_SD[ck.parameters(base)[n].info.tag] for n in ESTIMATE}
    priors = {
        n: (min(float(lap1.sd_z[list(p1.names).index(n)]), tag_sd[n]) if n in STAGE1 else tag_sd[n]) for n in ESTIMATE
    }
    p2 = build_problem("sle", model2, priors=priors)
    prof2 = () if args.no_profiles else (HOST[:2] if args.quick else ESTIMATE)
    res2, lap2, profs2, rows2 = run_stage(
        p2,
        n_starts=n_starts,
        adam=adam,
        lbfgs=lbfgs,
        seed=args.seed + 1,
        profiles=prof2,
        profile_steps=psteps,
        label="sle",
        out_dir=args.out_dir,
        plot_fit=True,
    )
    sd2 = {n: float(s) for n, s in zip(p2.names, np.asarray(lap2.sd))}
    uninformed = [n for n in p2.names if any(f"{n!r} is not informed" in m for m in lap2.warnings)]
    flags = {p.name: p.identifiable for p in profs2}
    hits = sum(r[4] for r in rows1 + rows2)
    ck.save_fit(
        args.fit_file,
        res2,
        data_files=[target_file("human"), target_file("oncology_ck")],
        sd=sd2,
        script=script,
        notes=(
            "Human SLE calibration of SLECarTModel (v2), stage 2 of 2: typical SLE patient, Erlangen "
            "regimen, MB-CART19.1 1e6/kg. Prior centres of " + ", ".join(STAGE1) + " are the stage-1 "
            "values (fits/human_oncology_ck.json: Stein 2019 shape in the oncology-like setting) with the "
            "stage-1 Laplace sd as prior sd (unconstrained scale); the other parameters have the tag "
            "priors (ck.PRIOR_SD). Profile identifiability: "
            + (", ".join(f"{k}={'yes' if v else 'NO'}" for k, v in flags.items()) or "not run")
            + ". Laplace: not informed by the SLE data: "
            + (", ".join(uninformed) or "none")
            + f". Typical-patient targets hit within their accepted interval: {hits}/{len(rows1 + rows2)}"
            + ". "
            + _convergence_note("stage 1", res1)
            + "; "
            + _convergence_note("stage 2", res2)
            + "."
        ),
    )
    summary = {
        "targets": [
            {
                "target_id": r[0],
                "setting": s,
                "model": r[1],
                "published": r[2],
                "interval": list(r[3]),
                "hit": bool(r[4]),
                "unit": r[5],
            }
            for s, rr in (("oncology", rows1), ("sle", rows2))
            for r in rr
        ],
        "stage1": {
            "values": res1.values(),
            "sd": sd1,
            "loss": float(res1.loss),
            "converged": res1.success,
            "laplace_warnings": list(lap1.warnings),
            "profiles": [p.summary() for p in profs1],
        },
        "stage2": {
            "values": res2.values(),
            "sd": sd2,
            "loss": float(res2.loss),
            "converged": res2.success,
            "prior_sd_z": priors,
            "laplace_not_informed": uninformed,
            "laplace_warnings": list(lap2.warnings),
            "profiles": [p.summary() for p in profs2],
            "profile_not_identifiable": [p.name for p in profs2 if not p.identifiable],
        },
    }
    with open(os.path.join(args.out_dir, "summary.json"), "w") as fh:
        json.dump(summary, fh, indent=2)
    plot_trajectories(
        [("oncology", p1, res1.z), ("sle", p2, res2.z)], os.path.join(args.out_dir, "fit_trajectories.png")
    )
    print(f"wrote {args.stage1_file}, {args.fit_file} and the reports in {args.out_dir}")
    return 0 if all(r[4] for r in rows1 + rows2) and res1.success and res2.success else 1


if __name__ == "__main__":
    sys.exit(main())
