"""Model-linked virtual trials of CAR-T in SLE: virtual patients simulated on the SLE model at every dose level, the
dose-escalation designs of `carkinetics.trials` run on their outcomes, and four analyses of the open design
questions of CAR-T in lupus (eligibility, conditioning, a randomised comparator arm, monitoring).

**Simulate once per dose, resample per trial.** A virtual population (`trial_population`: between-patient
variability of baseline disease activity, B-cell, plasmablast and anti-dsDNA burden, renal function, CAR-T
expansion and myeloid responsiveness) is simulated at *every* dose of the ladder in one batched ensemble solve
(`simulate_dose_outcomes`; the same patients at every dose, so the dose-toxicity relation of each patient is the
model's). Each course gives the patient's outcomes at that dose. A virtual trial then enrols patients by drawing
pool members with replacement (`carkinetics.trials.ResampledOutcomes`): an enrolled patient's outcome is the
simulated outcome of the drawn patient at the dose they receive. The between-patient heterogeneity is the
population's; no outcome is a coin flip with a set probability.

**Endpoints of one course** (thresholds below, each with its source):

- **DLT** = CRS grade >= 3 (the peak of the model's continuous ASTCT-like CRS index after infusion). This is the
  only DLT the model supports. ICANS has no mechanism in the model (no neurotoxicity state), and prolonged cytopenia
  in the usual sense (neutropenia, thrombocytopenia beyond day 28) cannot be read out: the model has lymphocytes
  (T, NK, B, CAR-T) but no myeloid or platelet lineage. Grade >= 3 lymphopenia (< 500 cells/µL) at day 28 is
  reported as a safety endpoint, not counted as a DLT (lymphodepletion is the aim of the conditioning).
- **Remission at month 6** (DORIS/LLDAS-like): SLEDAI-2K-like activity below 4 at day 180 (`REMISSION_SLEDAI` of
  `metrics.py`). The model has no physician global assessment or steroid dose, so this is the activity part only.
- **B-cell aplasia** at day 28: blood B cells below 5 % of baseline.
- **Anti-dsDNA seroconversion** at month 6: positive at baseline (index >= 1) and negative (< 1) at day 180.

Prior B-cell-depleting therapy is not a model input; severity and refractoriness enter through the baseline
covariates above.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping, Sequence
from typing import Any

import equinox as eqx
import jax.numpy as jnp
import jax.random as jr
import numpy as np
from jaxtyping import Array, Float

import carkinetics as ck
import carkinetics.trials as ct
from carkinetics.models.sle.metrics import (
    B_APLASIA_FRACTION,
    CAR_DETECTION_PER_UL,
    REMISSION_SLEDAI,
    save_times,
)
from carkinetics.models.sle.model import SLECarTModel
from carkinetics.models.sle.translation import SLEArm, SLEProtocol, arm_regimen

#: Day of the month-6 read-out (days after infusion; 6 x 30 d).
MONTH_6 = 180.0
#: Day of the B-cell aplasia read-out (end of the usual DLT window of CAR-T trials, 28 days).
APLASIA_DAY = 28.0
#: CRS grade counted as a DLT: ASTCT grade >= 3 (Lee DW et al., Biol Blood Marrow Transplant 2019;25:625 [R]).
DLT_CRS_GRADE = 3.0
#: Blood lymphocytes/µL below which lymphopenia is grade >= 3 (CTCAE v5.0, 2017: < 500/mm³ [R]).
LYMPHOPENIA_PER_UL = 500.0

#: Between-patient variability of the trial population: parameter -> (omega, source and tag). `omega` is the
#: standard deviation of log(value) (`ck.virtual_population`); typical values are the model's.
TRIAL_IIV: dict[str, tuple[float, str]] = {
    "disease.sledai0": (
        0.25,
        "SLEDAI-2K at inclusion 8-16 around a median of 16 in Mackensen A et al., Nat Med "
        "2022;28:2124 [R]; log-SD 0.25 spans roughly 10-24 (5th-95th percentile) [A]",
    ),
    "bcell.b_blood0": (
        0.6,
        "blood B-cell counts vary several-fold between SLE patients (lymphopenia in active "
        "disease) [M]; log-SD 0.6 ~ 2.7-fold 5th-95th span each side [A]",
    ),
    "bcell.pb_blood0": (
        0.7,
        "expanded, variable blood plasmablasts in active SLE (Jacobi AM et al., Arthritis "
        "Rheum 2003;48:1332 [M]); spread [A]",
    ),
    "humoral.anti_dsdna0": (0.8, "anti-dsDNA titres span more than a decade between patients [M]; spread [A]"),
    "body.egfr_ml_min": (
        0.3,
        "renal function varies with lupus nephritis; log-SD 0.3 puts ~10 % of patients below 60 mL/min [A]",
    ),
    "car.rho": (
        0.15,
        "between-patient variability of CAR-T expansion (Cmax spread of about a decade, Stein AM et "
        "al., CPT Pharmacometrics Syst Pharmacol 2019;8:285 [M]); value [A]",
    ),
    "myeloid.k_damp": (0.5, "between-patient variability of myeloid (IL-6) responsiveness [A]"),
}

#: The baseline covariates of the eligibility analysis: parameter -> label (unit).
COVARIATES: dict[str, str] = {
    "disease.sledai0": "baseline SLEDAI-2K",
    "bcell.b_blood0": "blood B cells (cells/µL)",
    "bcell.pb_blood0": "blood plasmablasts (cells/µL)",
    "body.egfr_ml_min": "eGFR (mL/min)",
}

#: Per-course endpoints of `TrialExperiment`: name -> (unit, definition).
TRIAL_ENDPOINTS: dict[str, tuple[str, str]] = {
    "CRS grade": ("0-4", "peak of the continuous CRS index after infusion"),
    "IL-6 peak": ("pg/mL", "peak plasma IL-6 after infusion"),
    "CAR Cmax": ("log10 cells/uL", "log10 of the peak blood CAR-T count"),
    "B cells d28": ("fraction of baseline", "blood B cells at day 28"),
    "SLEDAI 0": ("1", "SLEDAI-2K-like activity before treatment"),
    "SLEDAI m6": ("1", "SLEDAI-2K-like activity at day 180"),
    "anti-dsDNA index 0": ("1", "anti-dsDNA over its positivity cutoff at baseline"),
    "anti-dsDNA index m6": ("1", "anti-dsDNA over its positivity cutoff at day 180"),
    "lymphocytes d28": ("cells/uL", "blood lymphocytes (T, NK, B, CAR-T) at day 28"),
    "lymphopenia days": ("d", "days with blood lymphocytes below 500/uL (from the first save)"),
    "fludarabine AUC": ("mg*h/L", "fludarabine plasma AUC of the conditioning"),
    "B-cell return": ("d", "first day blood B cells climb back through 5 % of baseline after their nadir"),
    "CAR-T loss": ("d", "first day blood CAR-T fall below 1 cell/uL after their peak"),
    "anti-dsDNA re-positivity": ("d", "first day anti-dsDNA climbs back through its cutoff after its nadir"),
    "clinical relapse": ("d", "first day SLEDAI climbs back through 4 after its nadir"),
}

#: Conditioning regimens of `conditioning_analysis`: name -> (fludarabine mg/m² on days -5, -4, -3,
#: cyclophosphamide mg/m² on day -3). Erlangen: Mackensen 2022 [R]; the others are variations of its intensity.
DEFAULT_CONDITIONING: dict[str, tuple[float, float]] = {
    "none": (0.0, 0.0),
    "Cy 1000": (0.0, 1000.0),
    "Flu 25x3": (25.0, 0.0),
    "Flu 25x3 + Cy 500": (25.0, 500.0),
    "Flu 25x3 + Cy 1000 (Erlangen)": (25.0, 1000.0),
    "Flu 30x3 + Cy 1000": (30.0, 1000.0),
}

#: Markers of the monitoring analysis: event -> the quantity sampled to detect it.
MONITORING_EVENTS: dict[str, str] = {
    "B-cell return": "B cells",
    "CAR-T loss": "CAR-T",
    "anti-dsDNA re-positivity": "anti-dsDNA",
    "clinical relapse": "SLEDAI",
}


# ------------------------------------------------------------------------------------------------------------------
# Entry checks


def _check_positive_int(owner: str, name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or int(value) < 1:
        raise ValueError(f"{owner}: `{name}` must be a positive integer; got {value!r}.")
    return int(value)


def _check_dose_ladder(owner: str, doses: object) -> np.ndarray:
    try:
        arr = np.asarray(doses, dtype=float)
    except (TypeError, ValueError):
        raise ValueError(f"{owner}: `doses` must be a 1-D list of CAR-T doses in cells/kg; got {doses!r}.") from None
    if arr.ndim != 1 or arr.shape[0] < 2:
        raise ValueError(
            f"{owner}: `doses` must be a 1-D ladder of at least two doses (cells/kg); got shape {arr.shape}."
        )
    if not np.all(np.isfinite(arr)) or np.any(arr <= 0.0):
        raise ValueError(f"{owner}: every dose must be a finite positive number of cells/kg; got {arr.tolist()}.")
    if np.any(np.diff(arr) <= 0.0):
        raise ValueError(f"{owner}: the dose ladder must increase strictly (lowest dose first); got {arr.tolist()}.")
    return arr


def _check_positive_real(owner: str, name: str, value: object) -> float:
    if (
        isinstance(value, bool)
        or not isinstance(value, numbers.Real)
        or not math.isfinite(float(value))
        or float(value) <= 0.0
    ):
        raise ValueError(f"{owner}: `{name}` must be a finite positive number; got {value!r}.")
    return float(value)


def _check_t_end(owner: str, t_end: object) -> float:
    t = _check_positive_real(owner, "t_end", t_end)
    if t < MONTH_6 + 1.0:
        raise ValueError(
            f"{owner}: `t_end` must be at least {MONTH_6 + 1.0:g} days (the month-6 read-out is day "
            f"{MONTH_6:g}); got {t_end!r}."
        )
    return t


def _check_conditioning(owner: str, flu_mg_per_m2: object, cy_mg_per_m2: object) -> tuple[float, float]:
    try:
        flu, cy = float(flu_mg_per_m2), float(cy_mg_per_m2)  # pyright: ignore[reportArgumentType]
    except (TypeError, ValueError):
        flu = cy = float("nan")
    if not (math.isfinite(flu) and flu >= 0 and math.isfinite(cy) and cy >= 0):
        raise ValueError(
            f"{owner}: `flu_mg_per_m2` and `cy_mg_per_m2` must be finite and non-negative; got "
            f"{flu_mg_per_m2!r} and {cy_mg_per_m2!r}."
        )
    return flu, cy


def _model(owner: str, model: object, product: str | None) -> SLECarTModel:
    from carkinetics.models.sle.presets import load_preset
    from carkinetics.models.sle.products import with_product

    if isinstance(model, str):
        model = load_preset(model)
    if not isinstance(model, SLECarTModel):
        raise ValueError(
            f"{owner}: `model` must be an SLECarTModel or a preset name such as 'human'; got {type(model).__name__}."
        )
    return model if product is None else with_product(model, product)


def _population(owner: str, model: SLECarTModel, population: object, n_patients: object, key: Any) -> ck.Population:
    if population is None:
        if n_patients is None or key is None:
            raise ValueError(
                f"{owner}: give a `population` (from `trial_population`) or both `n_patients` and `key` to draw one."
            )
        return trial_population(model, key, _check_positive_int(owner, "n_patients", n_patients))
    if not isinstance(population, ck.Population):
        raise ValueError(
            f"{owner}: `population` must be a carkinetics Population (from `trial_population`); got "
            f"{type(population).__name__}."
        )
    known = ck.parameters(model)
    unknown = sorted(set(population.samples) - set(known))
    if unknown:
        raise ValueError(f"{owner}: the population varies parameters the SLE model does not have: {unknown}.")
    return population


def _n_members(population: ck.Population) -> int:
    return int(next(iter(population.samples.values())).shape[0]) if population.samples else 0


# ------------------------------------------------------------------------------------------------------------------
# The virtual population and the experiment


def trial_population(
    model: SLECarTModel | str, key: Array, n: int, *, omega: Mapping[str, float] | None = None
) -> ck.Population:
    """Virtual trial patients: the model's typical values with log-normal between-patient variability.

    **Arguments:**

    - `model`: an `SLECarTModel` or a preset name (`"human"`); its values are the typical patient.
    - `key`: a JAX PRNG key; `n`: number of patients.
    - `omega`: `{dotted parameter: SD of log(value)}`; default `TRIAL_IIV` (baseline SLEDAI, B-cell, plasmablast
      and anti-dsDNA burden, eGFR, CAR-T expansion rate, myeloid responsiveness; sources there).

    **Returns:** a `carkinetics.Population` whose `samples` are in the parameters' units.

    **Example:**

    ```python
    import jax
    from carkinetics.models.sle.trials import trial_population
    pop = trial_population("human", jax.random.key(0), 100)
    pop.samples["bcell.b_blood0"].shape      # (100,) blood B cells/µL
    ```
    """
    model = _model("trial_population", model, None)
    omega = {k: v[0] for k, v in TRIAL_IIV.items()} if omega is None else dict(omega)
    return ck.virtual_population(model, key, _check_positive_int("trial_population", "n", n), omega=omega)


class TrialExperiment(ck.AbstractExperiment):
    """The experiment of the model-linked trials: each member is an `SLEArm` (a patient's model and the treatment
    protocol: Flu/Cy in mg/m², CAR-T cells/kg); the regimen is built from the protocol (`arm_regimen`) and the
    course is read out as `TRIAL_ENDPOINTS` on the SLE save grid.

    A module (not a closure), so every analysis with the same number of members and horizon reuses one compiled
    solve.

    **Example:**

    ```python
    import carkinetics as ck
    from carkinetics.models.sle import load_preset
    from carkinetics.models.sle.translation import SLEArm, SLEProtocol
    from carkinetics.models.sle.trials import TrialExperiment
    members = ck.batch_models(SLEArm(load_preset("human"), SLEProtocol()),
                              {"protocol.car_cells_per_kg": [1e5, 1e6]})
    out, ok = ck.run_experiment(TrialExperiment(200.0), members)
    out["CRS grade"]                        # peak CRS index of each member
    ```
    """

    ts: Any
    solver: Any = None
    rtol: float | None = eqx.field(static=True, default=None)
    atol: float | None = eqx.field(static=True, default=None)
    max_steps: int = eqx.field(static=True, default=100_000)
    t0: float | None = eqx.field(static=True, default=None)

    def __init__(
        self, t_end: float = 200.0, *, solver: Any = None, rtol: float | None = None, atol: float | None = None
    ):
        self.ts = save_times(_check_t_end("TrialExperiment", t_end))
        self.solver, self.rtol, self.atol, self.max_steps, self.t0 = solver, rtol, atol, 100_000, None

    def model(self, arm: SLEArm) -> Any:
        return arm.model

    def regimen(self, arm: SLEArm) -> ck.Regimen:
        return arm_regimen(arm)

    def outputs(self, arm: SLEArm, solution: ck.Solution) -> dict[str, Any]:
        del arm  # the read-out depends on the solution only
        m = ck.metrics
        o, ts = solution.observables, solution.ts
        after = ts >= 0.0
        b = o.b_blood / o.b_blood[0]

        def after_extreme(values, pick):  # time of the minimum/maximum after infusion (start of a return)
            return ts[pick(jnp.where(after, values, jnp.inf if pick is jnp.argmin else -jnp.inf))]

        return {
            "CRS grade": m.cmax(ts, o.crs_grade, t_start=0.0),
            "IL-6 peak": m.cmax(ts, o.il6, t_start=0.0),
            "CAR Cmax": jnp.log10(jnp.maximum(m.cmax(ts, o.car_blood), 1e-12)),
            "B cells d28": m.value_at(ts, b, APLASIA_DAY),
            "SLEDAI 0": o.sledai[0],
            "SLEDAI m6": m.value_at(ts, o.sledai, MONTH_6),
            "anti-dsDNA index 0": o.anti_dsdna_index[0],
            "anti-dsDNA index m6": m.value_at(ts, o.anti_dsdna_index, MONTH_6),
            "lymphocytes d28": m.value_at(ts, o.lymphocytes, APLASIA_DAY),
            "lymphopenia days": m.time_below(ts, o.lymphocytes, LYMPHOPENIA_PER_UL, t_start=ts[0], t_end=ts[-1]),
            "fludarabine AUC": o.flu_auc[-1],
            "B-cell return": m.first_crossing(ts, b, B_APLASIA_FRACTION, "up", t_start=after_extreme(b, jnp.argmin)),
            "CAR-T loss": m.first_crossing(
                ts, o.car_blood, CAR_DETECTION_PER_UL, "down", t_start=after_extreme(o.car_blood, jnp.argmax)
            ),
            "anti-dsDNA re-positivity": m.first_crossing(
                ts, o.anti_dsdna_index, 1.0, "up", t_start=after_extreme(o.anti_dsdna_index, jnp.argmin)
            ),
            "clinical relapse": m.first_crossing(
                ts, o.sledai, REMISSION_SLEDAI, "up", t_start=after_extreme(o.sledai, jnp.argmin)
            ),
        }


def _solve(
    owner: str,
    model: SLECarTModel,
    population: ck.Population,
    protocols: Mapping[str, np.ndarray],
    n_arms: int,
    t_end: float,
    engine: Any,
    devices: Any,
    rtol: float | None = None,
    atol: float | None = None,
    chunk_size: int | None = None,
    checkpoint: Any = None,
    progress: bool = False,
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Every patient under each of `n_arms` protocols: outputs of shape `(n_arms, P)`. The courses are swept
    (`ck.sweep` of a `ck.ParameterBatch`: one ensemble call per chunk, all courses in one chunk by default), so
    `devices`, `checkpoint` and a multi-process run (`ck.distributed_setup`) act as for any sweep."""
    n = _n_members(population)
    if n < 1:
        raise ValueError(f"{owner}: the population has no varied parameter; draw one with `trial_population`.")
    values = {f"model.{k}": np.tile(np.asarray(v, dtype=float), n_arms) for k, v in population.samples.items()}
    values.update({f"protocol.{k}": np.repeat(np.asarray(v, dtype=float), n) for k, v in protocols.items()})
    experiment = TrialExperiment(t_end, rtol=rtol, atol=atol)
    courses = ck.ParameterBatch(experiment, SLEArm(model, SLEProtocol()), tuple(values), engine or "ensemble")
    res = ck.sweep(
        courses,
        values,
        chunk_size=n * n_arms if chunk_size is None else chunk_size,
        devices=devices,
        checkpoint=checkpoint,
        progress=progress,
        has_ok=True,
    )
    out = {k: np.asarray(v).reshape(n_arms, n) for k, v in res.outputs.items()}
    return out, np.asarray(res.ok).reshape(n_arms, n)


# ------------------------------------------------------------------------------------------------------------------
# Outcomes per dose


class DoseOutcomes(eqx.Module):
    """Every virtual patient's simulated course at every dose of a ladder (from `simulate_dose_outcomes`).

    **Fields** (`D` doses, `P` patients; the same patients at every dose):

    - `doses`: CAR-T doses (cells/kg), lowest first, shape `(D,)`.
    - `product`: the product's name.
    - `covariates`: `{parameter: (P,)}` the patients' varied parameters (their units).
    - `endpoints`: `{name: (D, P)}` the `TRIAL_ENDPOINTS` of each course.
    - `n_failed`: patients dropped because a course failed to solve at some dose.

    Outcomes (`(D, P)` booleans, definitions in the module docstring): `dlt`, `remission`, `b_aplasia`,
    `seroconversion`, `lymphopenia`; their per-dose rates come from `rates()`.
    """

    doses: np.ndarray
    product: str = eqx.field(static=True)
    covariates: dict[str, np.ndarray]
    endpoints: dict[str, np.ndarray]
    n_failed: int = eqx.field(static=True)

    @property
    def n_patients(self) -> int:
        return int(self.endpoints["CRS grade"].shape[1])

    @property
    def dlt(self) -> np.ndarray:
        return self.endpoints["CRS grade"] >= DLT_CRS_GRADE

    @property
    def remission(self) -> np.ndarray:
        return self.endpoints["SLEDAI m6"] < REMISSION_SLEDAI

    @property
    def b_aplasia(self) -> np.ndarray:
        return self.endpoints["B cells d28"] < B_APLASIA_FRACTION

    @property
    def seroconversion(self) -> np.ndarray:
        return (self.endpoints["anti-dsDNA index 0"] >= 1.0) & (self.endpoints["anti-dsDNA index m6"] < 1.0)

    @property
    def lymphopenia(self) -> np.ndarray:
        return self.endpoints["lymphocytes d28"] < LYMPHOPENIA_PER_UL

    def rates(self) -> dict[str, np.ndarray]:
        """Per-dose fractions of the pool: `{"DLT", "remission m6", "B aplasia d28", "seroconversion m6",
        "lymphopenia d28"}`, each `(D,)`; seroconversion among the patients positive at baseline."""
        positive = self.endpoints["anti-dsDNA index 0"] >= 1.0
        n_pos = np.maximum(positive.sum(axis=1), 1)
        return {
            "DLT": self.dlt.mean(axis=1),
            "remission m6": self.remission.mean(axis=1),
            "B aplasia d28": self.b_aplasia.mean(axis=1),
            "seroconversion m6": self.seroconversion.sum(axis=1) / n_pos,
            "lymphopenia d28": self.lymphopenia.mean(axis=1),
        }

    def table(self) -> list[dict[str, float]]:
        """One row per dose: the dose, the pool size, the outcome rates and the median endpoints."""
        rates = self.rates()
        rows = []
        for d, dose in enumerate(self.doses):
            row = {"dose_cells_per_kg": float(dose), "patients": self.n_patients}
            row.update({f"P({k})": float(v[d]) for k, v in rates.items()})
            row.update(
                {
                    f"median {k}": float(np.nanmedian(self.endpoints[k][d]))
                    for k in ("CRS grade", "IL-6 peak", "CAR Cmax", "SLEDAI m6")
                }
            )
            rows.append(row)
        return rows

    def outcome_source(self) -> ct.ResampledOutcomes:
        """The DLT outcomes as a `carkinetics.trials.ResampledOutcomes` pool (enrolment resamples patients)."""
        return ct.ResampledOutcomes(self.dlt)


def simulate_dose_outcomes(
    model: SLECarTModel | str,
    doses: Sequence[float],
    *,
    product: str | None = None,
    population: ck.Population | None = None,
    n_patients: int | None = None,
    key: Array | None = None,
    flu_mg_per_m2: float = 25.0,
    cy_mg_per_m2: float = 1000.0,
    t_end: float = 200.0,
    engine: str | None = None,
    devices: Any = None,
    rtol: float | None = None,
    atol: float | None = None,
    chunk_size: int | None = None,
    checkpoint: Any = None,
    progress: bool = False,
) -> DoseOutcomes:
    """Simulate every virtual patient once at every dose of a ladder, in batched ensemble solves (one by default).

    Each patient receives Flu/Cy conditioning (fludarabine `flu_mg_per_m2` on days -5, -4, -3, cyclophosphamide
    `cy_mg_per_m2` on day -3, by their body surface area) and the CAR-T dose on day 0.

    **Arguments:**

    - `model`: an `SLECarTModel` or a preset name (`"human"`); `product`: a product name of `PRODUCTS`
      (`sle.with_product`), default the model's own.
    - `doses`: CAR-T doses in cells/kg, strictly increasing, at least two.
    - `population`: virtual patients (`trial_population`), or `n_patients` and `key` to draw them.
    - `flu_mg_per_m2`, `cy_mg_per_m2`: the conditioning (default Erlangen: 25 mg/m² x 3, 1,000 mg/m²).
    - `t_end`: horizon (days, at least 181); `engine`: as for `ck.run_experiment`; `rtol`, `atol`: solver
      tolerances (default: the model class's, 1e-6).
    - `devices`, `chunk_size`, `checkpoint`, `progress`: as for `ck.sweep`, which runs the courses (default: every
      course in one chunk, no checkpoint). After `ck.distributed_setup`, `devices="all"` splits each chunk over
      the devices of every process, every process returns the same pool, and process 0 alone writes the
      checkpoint (a rerun with any process count resumes from it).

    **Returns:** a `DoseOutcomes`. Patients whose course fails at any dose are dropped (`n_failed`).

    **Raises:** `ValueError` naming the argument for a bad ladder, population, horizon or count.

    **Example:**

    ```python
    import jax
    from carkinetics.models.sle.trials import simulate_dose_outcomes
    pool = simulate_dose_outcomes("human", [1e5, 1e6, 3e6, 1e7], n_patients=8, key=jax.random.key(0))
    pool.rates()["DLT"]                       # DLT fraction of the pool at each dose
    ```
    """
    owner = "simulate_dose_outcomes"
    ladder = _check_dose_ladder(owner, doses)
    t_end = _check_t_end(owner, t_end)
    flu, cy = _check_conditioning(owner, flu_mg_per_m2, cy_mg_per_m2)
    sle_model = _model(owner, model, product)
    population = _population(owner, sle_model, population, n_patients, key)
    n_doses = ladder.shape[0]
    protocols = {
        "car_cells_per_kg": ladder,
        "flu_mg_per_m2": np.full(n_doses, flu),
        "cy_mg_per_m2": np.full(n_doses, cy),
    }
    out, ok = _solve(
        owner,
        sle_model,
        population,
        protocols,
        n_doses,
        t_end,
        engine,
        devices,
        rtol,
        atol,
        chunk_size=chunk_size,
        checkpoint=checkpoint,
        progress=progress,
    )
    keep = ok.all(axis=0)
    if not keep.any():
        raise RuntimeError(f"{owner}: every patient's course failed to solve; check the population's parameters.")
    return DoseOutcomes(
        doses=ladder,
        product=product if product is not None else "the model's product",
        covariates={k: np.asarray(v)[keep] for k, v in population.samples.items()},
        endpoints={k: v[:, keep] for k, v in out.items()},
        n_failed=int((~keep).sum()),
    )


# ------------------------------------------------------------------------------------------------------------------
# Dose escalation on the simulated outcomes


class ModelTrial(eqx.Module):
    """A design's operating characteristics on a simulated patient pool (from `run_model_trial`).

    **Fields:** `oc` (the `carkinetics.trials.OperatingCharacteristics`; its `true_dlt` is the pool's DLT fraction
    per dose), `doses` (cells/kg), `rates` (the pool's outcome rates per dose, `DoseOutcomes.rates`), and
    `remission_at_selected` (probability of month-6 remission at the selected dose, averaged over the trials that
    selected one: `sum_d P(select d) remission_d / P(select any)`).
    """

    oc: ct.OperatingCharacteristics
    doses: np.ndarray
    rates: dict[str, np.ndarray]
    remission_at_selected: float


def run_model_trial(
    outcomes: DoseOutcomes,
    design: ct.AbstractDesign,
    *,
    n_trials: int,
    key: Array,
    cohort_size: int = 3,
    n_cohorts: int = 10,
    start_dose: int = 0,
) -> ModelTrial:
    """Run a dose-escalation design on a simulated patient pool: patients are resampled per trial.

    Each enrolled patient is a pool member drawn with replacement, with the simulated DLT of that member at the dose
    they receive (`carkinetics.trials.ResampledOutcomes`); the trials run in one compiled call
    (`carkinetics.trials.operating_characteristics`).

    **Arguments:** `outcomes` from `simulate_dose_outcomes`; `design` (`BOIN(target=0.3)`, `CRM(...)`,
    `ThreePlusThree()`); `n_trials`, `cohort_size`, `n_cohorts` (positive integers); `key`; `start_dose` (index).

    **Returns:** a `ModelTrial`.

    **Example:**

    ```python
    import jax
    import carkinetics.trials as ct
    from carkinetics.models.sle.trials import run_model_trial, simulate_dose_outcomes
    pool = simulate_dose_outcomes("human", [1e5, 1e6, 3e6, 1e7], n_patients=8, key=jax.random.key(0))
    trial = run_model_trial(pool, ct.BOIN(target=0.3), n_trials=1000, key=jax.random.key(1))
    print(trial.oc.summary())
    ```
    """
    if not isinstance(outcomes, DoseOutcomes):
        raise ValueError(
            f"run_model_trial: `outcomes` must be the DoseOutcomes of `simulate_dose_outcomes`; got "
            f"{type(outcomes).__name__}."
        )
    oc = ct.operating_characteristics(
        design,
        outcomes=outcomes.outcome_source(),
        n_trials=n_trials,
        cohort_size=cohort_size,
        n_cohorts=n_cohorts,
        key=key,
        start_dose=start_dose,
    )
    rates = outcomes.rates()
    sel = np.asarray(oc.selection_probability)[:-1]
    any_sel = float(sel.sum())
    rem = float(np.dot(sel, rates["remission m6"]) / any_sel) if any_sel > 0 else float("nan")
    return ModelTrial(oc=oc, doses=outcomes.doses, rates=rates, remission_at_selected=rem)


# ------------------------------------------------------------------------------------------------------------------
# Review analysis 1: eligibility by severity and burden


class EligibilityResult(eqx.Module):
    """Benefit and DLT risk across baseline covariate groups (from `eligibility_analysis`).

    **Fields:** `covariates` (parameter names), `edges` `(C, G + 1)` group boundaries in the covariate's unit
    (equal-count groups of the pool), `n` `(C, G)` patients per group, `remission` and `dlt` `(C, G, D)`
    fractions per group and dose, `doses` (cells/kg).
    """

    covariates: tuple[str, ...] = eqx.field(static=True)
    edges: np.ndarray
    n: np.ndarray
    remission: np.ndarray
    dlt: np.ndarray
    doses: np.ndarray


def eligibility_analysis(
    outcomes: DoseOutcomes, *, covariates: Sequence[str] | None = None, n_groups: int = 3
) -> EligibilityResult:
    """How month-6 remission and DLT risk shift with baseline severity and burden (no new simulation).

    The pool's patients are split into `n_groups` equal-count groups of each covariate (baseline SLEDAI, B-cell
    and plasmablast burden, eGFR by default); each group's remission and DLT fractions at every dose show which
    patients a trial's eligibility criteria would let in or keep out.

    **Example:**

    ```python
    import jax
    from carkinetics.models.sle.trials import eligibility_analysis, simulate_dose_outcomes
    pool = simulate_dose_outcomes("human", [1e5, 1e6, 3e6, 1e7], n_patients=8, key=jax.random.key(0))
    res = eligibility_analysis(pool, n_groups=2)
    res.dlt.shape                              # (4 covariates, 2 groups, 4 doses)
    ```
    """
    owner = "eligibility_analysis"
    if not isinstance(outcomes, DoseOutcomes):
        raise ValueError(f"{owner}: `outcomes` must be a DoseOutcomes; got {type(outcomes).__name__}.")
    n_groups = _check_positive_int(owner, "n_groups", n_groups)
    covariates = tuple(c for c in COVARIATES if c in outcomes.covariates) if covariates is None else tuple(covariates)
    missing = [c for c in covariates if c not in outcomes.covariates]
    if missing or not covariates:
        raise ValueError(
            f"{owner}: `covariates` must be varied parameters of the pool "
            f"{sorted(outcomes.covariates)}; got {list(covariates)}."
        )
    if n_groups > outcomes.n_patients:
        raise ValueError(f"{owner}: `n_groups` ({n_groups}) exceeds the pool's {outcomes.n_patients} patients.")
    rem, dlt = outcomes.remission, outcomes.dlt
    edges, counts, g_rem, g_dlt = [], [], [], []
    for c in covariates:
        x = outcomes.covariates[c]
        e = np.quantile(x, np.linspace(0.0, 1.0, n_groups + 1))
        group = np.clip(np.searchsorted(e, x, side="right") - 1, 0, n_groups - 1)
        onehot = group[None, :] == np.arange(n_groups)[:, None]  # (G, P)
        cnt = onehot.sum(axis=1)
        safe = np.maximum(cnt, 1)[:, None]
        edges.append(e)
        counts.append(cnt)
        g_rem.append((onehot[:, None, :] & rem[None]).sum(axis=2) / safe)
        g_dlt.append((onehot[:, None, :] & dlt[None]).sum(axis=2) / safe)
    return EligibilityResult(
        covariates=covariates,
        edges=np.array(edges),
        n=np.array(counts),
        remission=np.array(g_rem),
        dlt=np.array(g_dlt),
        doses=outcomes.doses,
    )


# ------------------------------------------------------------------------------------------------------------------
# Review analysis 2: conditioning


class ConditioningResult(eqx.Module):
    """Conditioning regimens compared on one population (from `conditioning_analysis`).

    **Fields:** `names` (regimens), `flu_mg_per_m2`, `cy_mg_per_m2` `(R,)`, `dose` (CAR-T cells/kg), `endpoints`
    `{name: (R, P)}` (`TRIAL_ENDPOINTS`), `egfr` `(P,)` the patients' eGFR (mL/min, fludarabine exposure).

    Summaries per regimen: `median("CAR Cmax")`, `dlt_rate()`, `remission_rate()`, `lymphopenia_rate()`.
    """

    names: tuple[str, ...] = eqx.field(static=True)
    flu_mg_per_m2: np.ndarray
    cy_mg_per_m2: np.ndarray
    dose: float
    endpoints: dict[str, np.ndarray]
    egfr: np.ndarray

    def median(self, endpoint: str) -> np.ndarray:
        return np.nanmedian(self.endpoints[endpoint], axis=1)

    def dlt_rate(self) -> np.ndarray:
        return np.mean(self.endpoints["CRS grade"] >= DLT_CRS_GRADE, axis=1)

    def remission_rate(self) -> np.ndarray:
        return np.mean(self.endpoints["SLEDAI m6"] < REMISSION_SLEDAI, axis=1)

    def lymphopenia_rate(self) -> np.ndarray:
        return np.mean(self.endpoints["lymphocytes d28"] < LYMPHOPENIA_PER_UL, axis=1)


def conditioning_analysis(
    model: SLECarTModel | str,
    *,
    dose: float = 1e6,
    regimens: Mapping[str, tuple[float, float]] | None = None,
    product: str | None = None,
    population: ck.Population | None = None,
    n_patients: int | None = None,
    key: Array | None = None,
    t_end: float = 200.0,
    engine: str | None = None,
    devices: Any = None,
) -> ConditioningResult:
    """Flu/Cy intensity against CAR-T expansion, CRS, lymphopenia and remission, on one population.

    Every patient is simulated under every regimen (`{name: (fludarabine mg/m² on days -5, -4, -3,
    cyclophosphamide mg/m² on day -3)}`, default `DEFAULT_CONDITIONING`) at the CAR-T `dose` (cells/kg), in one
    batched solve. Fludarabine exposure depends on each patient's eGFR (renal clearance), so renal function
    shifts lymphodepletion and, through the IL-7/IL-15 surge, expansion.

    **Example:**

    ```python
    import jax
    from carkinetics.models.sle.trials import conditioning_analysis
    res = conditioning_analysis("human", n_patients=6, key=jax.random.key(0),
                                regimens={"none": (0.0, 0.0), "Erlangen": (25.0, 1000.0)})
    res.median("CAR Cmax")                     # log10 CAR-T/µL per regimen
    ```
    """
    owner = "conditioning_analysis"
    dose = _check_positive_real(owner, "dose", dose)
    regimens = dict(DEFAULT_CONDITIONING if regimens is None else regimens)
    if not regimens:
        raise ValueError(f"{owner}: `regimens` must name at least one (flu, cy) regimen.")
    flu = np.array([float(v[0]) for v in regimens.values()])
    cy = np.array([float(v[1]) for v in regimens.values()])
    if not (np.all(np.isfinite(flu)) and np.all(flu >= 0) and np.all(np.isfinite(cy)) and np.all(cy >= 0)):
        raise ValueError(
            f"{owner}: every regimen must be (fludarabine mg/m², cyclophosphamide mg/m²), finite and "
            f"non-negative; got {regimens!r}."
        )
    t_end = _check_t_end(owner, t_end)
    sle_model = _model(owner, model, product)
    population = _population(owner, sle_model, population, n_patients, key)
    n_reg = len(regimens)
    protocols = {"car_cells_per_kg": np.full(n_reg, dose), "flu_mg_per_m2": flu, "cy_mg_per_m2": cy}
    out, ok = _solve(owner, sle_model, population, protocols, n_reg, t_end, engine, devices)
    keep = ok.all(axis=0)
    egfr = population.samples.get(
        "body.egfr_ml_min", np.full(_n_members(population), float(sle_model.body.egfr_ml_min))
    )
    return ConditioningResult(
        names=tuple(regimens),
        flu_mg_per_m2=flu,
        cy_mg_per_m2=cy,
        dose=dose,
        endpoints={k: v[:, keep] for k, v in out.items()},
        egfr=np.asarray(egfr)[keep],
    )


# ------------------------------------------------------------------------------------------------------------------
# Review analysis 3: randomised comparator arm


class StandardOfCare(eqx.Module):
    """Standard of care as a disease-activity trajectory: relative activity `a(t) = a_inf + (1 - a_inf) e^{-k t}`,
    each patient's plateau `a_inf = plateau · exp(omega · z)`, `z ~ N(0, 1)`, SLEDAI `= SLEDAI_0 · a(t)`.

    **Fields:**

    - `plateau`: median relative activity reached under standard of care (0.7 [A]: a 4-point SLEDAI reduction from
      16, the SRI-4 criterion, is reached by about half of the patients, as in the standard-of-care arms of
      BLISS-52, 44 % at week 52; Navarra SV et al., Lancet 2011;377:721 [M]).
    - `omega`: between-patient SD of log(plateau) (0.4 [A]).
    - `rate`: rate of approach to the plateau (1/45 per day [A]: most of the change within 3 months).

    **Example:**

    ```python
    import numpy as np, jax
    from carkinetics.models.sle.trials import StandardOfCare
    soc = StandardOfCare()
    soc.sledai(jax.random.key(0), np.full(1000, 16.0), 180.0).mean()   # mean SLEDAI at month 6
    ```
    """

    plateau: float = 0.7
    omega: float = 0.4
    rate: float = 1.0 / 45.0

    def __check_init__(self):
        if not (self.plateau > 0.0 and math.isfinite(self.plateau)):
            raise ValueError(f"StandardOfCare: `plateau` must be a positive relative activity; got {self.plateau!r}.")
        if not (self.omega >= 0.0 and math.isfinite(self.omega)):
            raise ValueError(f"StandardOfCare: `omega` must be finite and non-negative; got {self.omega!r}.")
        if not (self.rate > 0.0 and math.isfinite(self.rate)):
            raise ValueError(f"StandardOfCare: `rate` must be a finite positive rate (1/d); got {self.rate!r}.")

    def sledai(self, key: Array, sledai0: Float[np.ndarray, " P"], t: float) -> np.ndarray:
        """SLEDAI at day `t` of patients with baseline `sledai0` under standard of care (one draw per patient)."""
        base = np.asarray(sledai0, dtype=float)
        z = np.asarray(jr.normal(key, base.shape, dtype=jnp.result_type(float)), dtype=float)
        a_inf = self.plateau * np.exp(self.omega * z)
        return base * (a_inf + (1.0 - a_inf) * math.exp(-self.rate * float(t)))


class PowerResult(eqx.Module):
    """Power of a randomised CAR-T vs standard-of-care trial for month-6 remission (from `comparator_power`).

    **Fields:** `sample_sizes` `(K,)` patients per arm, `power` `(K,)`, `p_car`, `p_soc` (remission fractions of
    the two pools), `alpha`, `n_trials`, `dose` (cells/kg of the CAR-T arm).
    """

    sample_sizes: np.ndarray
    power: np.ndarray
    p_car: float
    p_soc: float
    alpha: float
    n_trials: int = eqx.field(static=True)
    dose: float


def fisher_exact_reject(n: int, alpha: float) -> np.ndarray:
    """`(n + 1, n + 1)` table: whether Fisher's exact two-sided test rejects at level `alpha` with `x1` of `n`
    and `x2` of `n` responders (p-value: the probability of tables no more likely than the observed one, as in
    `scipy.stats.fisher_exact`)."""
    from scipy.special import gammaln

    x1, x2 = np.meshgrid(np.arange(n + 1), np.arange(n + 1), indexing="ij")
    total = x1 + x2
    k = np.arange(n + 1)

    def log_pmf(kk, tt):  # hypergeometric: kk responders of tt in arm 1 (n of 2n)
        return (
            gammaln(n + 1)
            - gammaln(kk + 1)
            - gammaln(n - kk + 1)
            + gammaln(n + 1)
            - gammaln(tt - kk + 1)
            - gammaln(n - tt + kk + 1)
            - gammaln(2 * n + 1)
            + gammaln(tt + 1)
            + gammaln(2 * n - tt + 1)
        )

    kk = k[None, None, :]
    tt = total[..., None]
    valid = (kk <= tt) & (tt - kk <= n)
    lp = np.where(valid, log_pmf(kk, tt), -np.inf)
    observed = log_pmf(x1, total)
    pval = np.sum(np.where(lp <= observed[..., None] + 1e-7, np.exp(lp), 0.0), axis=-1)
    return pval <= alpha


def comparator_power(
    outcomes: DoseOutcomes,
    *,
    dose_index: int = -1,
    soc: StandardOfCare | None = None,
    sample_sizes: Sequence[int] = (5, 10, 15, 20, 30),
    n_trials: int = 2000,
    alpha: float = 0.05,
    key: Array,
) -> PowerResult:
    """Power of a 1:1 randomised trial of CAR-T (at one dose of the pool) against standard of care.

    Both arms resample the same virtual population: a CAR-T patient is a pool member drawn with replacement with
    their simulated month-6 remission at the dose; a standard-of-care patient is a pool member with a
    standard-of-care activity trajectory (`StandardOfCare`, one plateau per member, drawn with `key`) from their
    own baseline SLEDAI. Each of `n_trials` trials per sample size is analysed with Fisher's exact two-sided test
    at level `alpha`; power is the fraction of trials that reject.

    **Example:**

    ```python
    import jax
    from carkinetics.models.sle.trials import comparator_power, simulate_dose_outcomes
    pool = simulate_dose_outcomes("human", [1e5, 1e6, 3e6, 1e7], n_patients=8, key=jax.random.key(0))
    res = comparator_power(pool, dose_index=1, sample_sizes=(4, 8), n_trials=500, key=jax.random.key(2))
    res.power                                  # one power per sample size (patients per arm)
    ```
    """
    owner = "comparator_power"
    if not isinstance(outcomes, DoseOutcomes):
        raise ValueError(f"{owner}: `outcomes` must be a DoseOutcomes; got {type(outcomes).__name__}.")
    n_doses = outcomes.doses.shape[0]
    if (
        isinstance(dose_index, bool)
        or not isinstance(dose_index, numbers.Integral)
        or not (-n_doses <= dose_index < n_doses)
    ):
        raise ValueError(f"{owner}: `dose_index` must index the pool's {n_doses} doses; got {dose_index!r}.")
    if isinstance(alpha, bool) or not isinstance(alpha, numbers.Real) or not 0.0 < float(alpha) < 1.0:
        raise ValueError(f"{owner}: `alpha` must be a probability strictly between 0 and 1; got {alpha!r}.")
    sizes = np.asarray([_check_positive_int(owner, "sample_sizes", s) for s in sample_sizes], dtype=int)
    if sizes.size == 0:
        raise ValueError(f"{owner}: `sample_sizes` must list at least one number of patients per arm.")
    n_trials = _check_positive_int(owner, "n_trials", n_trials)
    soc = StandardOfCare() if soc is None else soc
    sledai0 = outcomes.endpoints["SLEDAI 0"][0]  # each pool patient's own baseline
    k_soc, k_trials = jr.split(key)
    car = outcomes.remission[dose_index].astype(np.int32)
    soc_rem = (soc.sledai(k_soc, sledai0, MONTH_6) < REMISSION_SLEDAI).astype(np.int32)
    power = []
    for i, n in enumerate(sizes):  # one small draw per sample size (shapes differ), outside any JIT
        ka, kb = jr.split(jr.fold_in(k_trials, i))
        x1 = np.asarray(jnp.asarray(car)[jr.randint(ka, (n_trials, int(n)), 0, car.shape[0])].sum(axis=1))
        x2 = np.asarray(jnp.asarray(soc_rem)[jr.randint(kb, (n_trials, int(n)), 0, soc_rem.shape[0])].sum(axis=1))
        power.append(fisher_exact_reject(int(n), float(alpha))[x1, x2].mean())
    return PowerResult(
        sample_sizes=sizes,
        power=np.asarray(power),
        p_car=float(car.mean()),
        p_soc=float(soc_rem.mean()),
        alpha=float(alpha),
        n_trials=n_trials,
        dose=float(outcomes.doses[dose_index]),
    )


# ------------------------------------------------------------------------------------------------------------------
# Review analysis 4: monitoring schedule


class MonitoringResult(eqx.Module):
    """Delay from an event to its detection by scheduled sampling (from `monitoring_analysis`).

    **Fields:** `events` (`MONITORING_EVENTS` names), `intervals` `(K,)` sampling intervals (days), `event_times`
    `(E, P)` (days after infusion; NaN when the event does not happen within the horizon), `mean_delay`,
    `p90_delay` `(E, K)` (days, over the patients with the event), `p_within` `(E, K)` fraction of events detected
    within `max_delay` days, `event_fraction` `(E,)` fraction of patients with the event, `max_delay`, `dose`.
    """

    events: tuple[str, ...] = eqx.field(static=True)
    intervals: np.ndarray
    event_times: np.ndarray
    mean_delay: np.ndarray
    p90_delay: np.ndarray
    p_within: np.ndarray
    event_fraction: np.ndarray
    max_delay: float
    dose: float


def detection_delay(event_times: Float[np.ndarray, " P"], interval: float) -> np.ndarray:
    """Days from each event to the first scheduled visit at or after it, with visits every `interval` days from
    day 0 (`ceil(t / interval) * interval - t`; NaN stays NaN).

    **Example:** `detection_delay(np.array([10.0, 28.0]), 14.0)` is `[4.0, 0.0]`.
    """
    t = np.asarray(event_times, dtype=float)
    return np.ceil(t / interval) * interval - t


def monitoring_analysis(
    model: SLECarTModel | str,
    *,
    dose: float = 1e6,
    intervals: Sequence[float] = (7.0, 14.0, 28.0, 56.0, 91.0),
    max_delay: float = 30.0,
    flu_mg_per_m2: float = 25.0,
    cy_mg_per_m2: float = 1000.0,
    product: str | None = None,
    population: ck.Population | None = None,
    n_patients: int | None = None,
    key: Array | None = None,
    t_end: float = 365.0,
    engine: str | None = None,
    devices: Any = None,
) -> MonitoringResult:
    """How often to sample B cells, CAR-T, anti-dsDNA and disease activity to detect B-cell return, loss of CAR-T,
    anti-dsDNA re-positivity and clinical relapse within a given delay.

    The population is simulated once (Flu/Cy conditioning as in `simulate_dose_outcomes`, default Erlangen, and
    `dose` cells/kg); each patient's event times come
    from their course (`TRIAL_ENDPOINTS`). With visits every `interval` days from day 0, an event at day `t` is
    seen at the first visit at or after it (the marker stays past its threshold until then), so its delay is
    `detection_delay(t, interval)`.

    **Example:**

    ```python
    import jax
    from carkinetics.models.sle.trials import monitoring_analysis
    res = monitoring_analysis("human", n_patients=6, key=jax.random.key(0), t_end=365.0)
    res.mean_delay[0]                          # mean delay (days) to see B-cell return, per interval
    ```
    """
    owner = "monitoring_analysis"
    dose = _check_positive_real(owner, "dose", dose)
    max_delay = _check_positive_real(owner, "max_delay", max_delay)
    ivals = np.asarray([_check_positive_real(owner, "intervals", float(i)) for i in intervals])
    if ivals.size == 0:
        raise ValueError(f"{owner}: `intervals` must list at least one sampling interval (days).")
    flu, cy = _check_conditioning(owner, flu_mg_per_m2, cy_mg_per_m2)
    t_end = _check_t_end(owner, t_end)
    sle_model = _model(owner, model, product)
    population = _population(owner, sle_model, population, n_patients, key)
    protocols = {
        "car_cells_per_kg": np.array([dose]),
        "flu_mg_per_m2": np.array([flu]),
        "cy_mg_per_m2": np.array([cy]),
    }
    out, ok = _solve(owner, sle_model, population, protocols, 1, t_end, engine, devices)
    events = tuple(MONITORING_EVENTS)
    times = np.stack([out[e][0][ok[0]] for e in events])  # (E, P)
    delays = np.stack([detection_delay(times, float(i)) for i in ivals], axis=-1)  # (E, P, K)
    has = np.isfinite(times)
    n_has = has.sum(axis=1)

    def over_events(f, fill=np.nan):
        return np.array(
            [[f(delays[e, has[e], k]) if n_has[e] else fill for k in range(ivals.size)] for e in range(len(events))]
        )

    return MonitoringResult(
        events=events,
        intervals=ivals,
        event_times=times,
        mean_delay=over_events(np.mean),
        p90_delay=over_events(lambda d: np.quantile(d, 0.9)),
        p_within=over_events(lambda d: np.mean(d <= max_delay)),
        event_fraction=has.mean(axis=1),
        max_delay=max_delay,
        dose=dose,
    )
