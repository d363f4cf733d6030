"""PEtab-style calibration problems: the four TSV tables (measurements, parameters, conditions, observables).

The tables follow PEtab v1 (https://petab.readthedocs.io) column names, so a problem written here can be read by
PEtab tools (pyPESTO, AMICI, COPASI via the SBML export) and vice versa, within this subset:

- `measurements.tsv`: `observableId, simulationConditionId, time, measurement` (+ optional `noiseParameters`,
  `replicateId`, `datasetId`). Times are days.
- `parameters.tsv`: `parameterId, parameterName, parameterScale (lin|log|log10), lowerBound, upperBound,
  nominalValue, estimate (0|1)`. Bounds and nominal values are in natural units (as in PEtab).
- `conditions.tsv`: `conditionId, conditionName`, then one column per overridden parameter (numeric values).
- `observables.tsv`: `observableId, observableName, observableFormula, observableTransformation (lin|log|log10),
  noiseFormula, noiseDistribution (normal|laplace)`. carkinetics accepts a formula that is one observable or state
  name of the model; `noiseFormula` is a number or a parameter id.

Parameter ids are the model's dotted names with dots replaced by underscores (`car.rho` -> `car_rho`).
A `problem.yaml` names the files and `model.xml`, the SBML export of the model (with the regimen as events).
"""

from __future__ import annotations

import csv
import dataclasses
import math
import os
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np

import carkinetics as ck

from .._core._files import atomic_text_file, atomic_write_text

_SCALES = ("lin", "log", "log10")
_TRANSFORMS = ("lin", "log", "log10")
_NOISE = ("normal", "laplace")


class PetabMeasurement(NamedTuple):
    observable_id: str
    condition_id: str
    time: float
    measurement: float
    noise_parameters: str = ""
    replicate_id: str = ""
    dataset_id: str = ""


class PetabParameter(NamedTuple):
    parameter_id: str
    parameter_name: str
    scale: str
    lower: float
    upper: float
    nominal: float
    estimate: bool


class PetabCondition(NamedTuple):
    condition_id: str
    name: str
    values: Mapping[str, float]


class PetabObservable(NamedTuple):
    observable_id: str
    name: str
    formula: str
    transformation: str
    noise_formula: str
    noise_distribution: str


def parameter_id(dotted_name: str) -> str:
    """PEtab id of a carkinetics parameter: dots become underscores (`car.rho` -> `car_rho`)."""
    return dotted_name.replace(".", "_")


@dataclasses.dataclass(frozen=True)
class PetabProblem:
    """A calibration problem as four PEtab tables (tuples of rows; see the module docstring for columns).

    **Example:**

    ```python
    import carkinetics.io as cio
    from carkinetics.models import OneCompartmentPK
    model = OneCompartmentPK()
    problem = cio.PetabProblem(
        measurements=(cio.PetabMeasurement("conc", "c0", 0.5, 0.9), cio.PetabMeasurement("conc", "c0", 1.0, 0.5)),
        parameters=cio.petab_parameters_from_model(model, estimate=["cl"]),
        conditions=(cio.PetabCondition("c0", "100 mg bolus", {}),),
        observables=(cio.PetabObservable("conc", "plasma concentration", "concentration", "log", "0.1", "normal"),),
    )
    problem.validate(model)
    times, values = problem.measurement_arrays("c0", "conc")
    ```
    """

    measurements: tuple[PetabMeasurement, ...]
    parameters: tuple[PetabParameter, ...]
    conditions: tuple[PetabCondition, ...]
    observables: tuple[PetabObservable, ...]

    def __post_init__(self):
        for field in ("measurements", "parameters", "conditions", "observables"):
            object.__setattr__(self, field, tuple(getattr(self, field)))

    def validate(self, model: ck.AbstractKineticModel | None = None) -> PetabProblem:
        """Check ids, references, bounds, scales and numbers (and names against `model` if given).

        **Raises:** `ValueError` with a sentence naming the table, row and column of the first problem.
        """
        _validate(self, model)
        return self

    def measurement_arrays(self, condition_id: str, observable_id: str) -> tuple[np.ndarray, np.ndarray]:
        """Times (days) and measured values for one condition and observable, sorted by time."""
        rows = [m for m in self.measurements if m.condition_id == condition_id and m.observable_id == observable_id]
        if not rows:
            raise ValueError(
                f"No measurements for condition {condition_id!r} and observable {observable_id!r}; present pairs "
                f"are {sorted({(m.condition_id, m.observable_id) for m in self.measurements})}."
            )
        rows.sort(key=lambda m: m.time)
        return np.array([m.time for m in rows]), np.array([m.measurement for m in rows])

    def apply(self, model: ck.AbstractKineticModel, condition_id: str | None = None) -> Any:
        """`model` with the nominal values of the parameter table and the overrides of `condition_id` set."""
        ids = {parameter_id(n): n for n in ck.parameters(model)}
        updates = {}
        for p in self.parameters:
            if p.parameter_id in ids:
                updates[ids[p.parameter_id]] = p.nominal
        if condition_id is not None:
            cond = {c.condition_id: c for c in self.conditions}.get(condition_id)
            if cond is None:
                raise ValueError(
                    f"Unknown condition {condition_id!r}; known: {[c.condition_id for c in self.conditions]}."
                )
            for k, v in cond.values.items():
                if k not in ids:
                    raise ValueError(
                        f"Condition {condition_id!r} overrides {k!r}, which is not a parameter of "
                        f"{type(model).__name__}."
                    )
                updates[ids[k]] = v
        return model.replace(updates)


def petab_parameters_from_model(
    model: ck.AbstractKineticModel, estimate: Sequence[str] = (), *, fold: float = 100.0
) -> tuple[PetabParameter, ...]:
    """Parameter-table rows for every scalar parameter of `model` (units and descriptions from the metadata).

    Estimated parameters (`estimate`, dotted names) get `log10` scale and bounds `nominal / fold` to
    `nominal * fold`, clipped to the declared bounds; the others are fixed at their current value.

    **Raises:** `ValueError` for an unknown name or an estimated parameter whose value is not positive.
    """
    allp = ck.parameters(model)
    estimate = list(estimate)
    for n in estimate:
        if n not in allp:
            raise ValueError(f"Unknown parameter {n!r} in `estimate`; known parameters are {sorted(allp)}.")
    if not (isinstance(fold, (int, float)) and fold > 1):
        raise ValueError(f"`fold` must be a number greater than 1, got {fold!r}.")
    rows = []
    for n, p in allp.items():
        v = np.asarray(p.value, dtype=float)
        if v.ndim != 0:
            continue
        v = float(v)
        name = f"{p.info.description} [{p.info.unit}]"
        if n in estimate:
            if v <= 0:
                raise ValueError(f"Parameter {n!r} = {v} must be positive to be estimated on log10 scale.")
            lo = max(v / fold, p.info.lower)
            hi = min(v * fold, p.info.upper)
            rows.append(PetabParameter(parameter_id(n), name, "log10", lo, hi, v, True))
        else:
            lo = p.info.lower if math.isfinite(p.info.lower) else -math.inf
            rows.append(PetabParameter(parameter_id(n), name, "lin", lo, p.info.upper, v, False))
    return tuple(rows)


# --------------------------------------------------------------------------------------------------------------
# validation


def _validate(problem: PetabProblem, model) -> None:
    def err(table, i, msg):
        return ValueError(f"{table} table, row {i + 1}: {msg}")

    obs_ids = [o.observable_id for o in problem.observables]
    cond_ids = [c.condition_id for c in problem.conditions]
    par_ids = [p.parameter_id for p in problem.parameters]
    for table, ids in (("observables", obs_ids), ("conditions", cond_ids), ("parameters", par_ids)):
        dup = sorted({x for x in ids if ids.count(x) > 1})
        if dup:
            raise ValueError(f"The {table} table has duplicate ids {dup}.")
        for i, x in enumerate(ids):
            if not x or not (x[0].isalpha() or x[0] == "_") or not x.replace("_", "a").isalnum():
                raise err(table, i, f"id {x!r} must start with a letter and hold only letters, digits and underscores.")
    if not problem.measurements:
        raise ValueError("The measurements table is empty; a calibration problem needs at least one measurement.")
    for i, m in enumerate(problem.measurements):
        if m.observable_id not in obs_ids:
            raise err("measurements", i, f"observableId {m.observable_id!r} is not in the observables table {obs_ids}.")
        if m.condition_id not in cond_ids:
            raise err(
                "measurements",
                i,
                f"simulationConditionId {m.condition_id!r} is not in the conditions table {cond_ids}.",
            )
        for col, v in (("time", m.time), ("measurement", m.measurement)):
            if not math.isfinite(v):
                raise err("measurements", i, f"{col} = {v!r} is not finite.")
    transforms = {o.observable_id: o.transformation for o in problem.observables}
    for i, m in enumerate(problem.measurements):
        if transforms[m.observable_id] in ("log", "log10") and m.measurement <= 0:
            raise err(
                "measurements",
                i,
                f"measurement = {m.measurement} must be positive for the "
                f"{transforms[m.observable_id]}-transformed observable {m.observable_id!r}.",
            )
    for i, p in enumerate(problem.parameters):
        if p.scale not in _SCALES:
            raise err("parameters", i, f"parameterScale {p.scale!r} of {p.parameter_id!r} is not one of {_SCALES}.")
        if not p.lower <= p.nominal <= p.upper:
            raise err(
                "parameters", i, f"nominalValue {p.nominal} of {p.parameter_id!r} is outside [{p.lower}, {p.upper}]."
            )
        if p.estimate:
            if not (math.isfinite(p.lower) and math.isfinite(p.upper) and p.lower < p.upper):
                raise err(
                    "parameters",
                    i,
                    f"estimated parameter {p.parameter_id!r} needs finite bounds with "
                    f"lowerBound < upperBound, got [{p.lower}, {p.upper}].",
                )
            if p.scale in ("log", "log10") and p.lower <= 0:
                raise err(
                    "parameters",
                    i,
                    f"{p.scale}-scaled parameter {p.parameter_id!r} needs lowerBound > 0, got {p.lower}.",
                )
    for i, o in enumerate(problem.observables):
        if o.transformation not in _TRANSFORMS:
            raise err("observables", i, f"observableTransformation {o.transformation!r} is not one of {_TRANSFORMS}.")
        if o.noise_distribution not in _NOISE:
            raise err("observables", i, f"noiseDistribution {o.noise_distribution!r} is not one of {_NOISE}.")
        try:
            if float(o.noise_formula) <= 0:
                raise err("observables", i, f"noiseFormula {o.noise_formula!r} must be positive.")
        except ValueError as e:
            if "must be positive" in str(e):
                raise
            if o.noise_formula not in par_ids and not o.noise_formula.startswith("noiseParameter"):
                raise err(
                    "observables",
                    i,
                    f"noiseFormula {o.noise_formula!r} is neither a number nor a parameter id of the parameters table.",
                ) from None
    for i, c in enumerate(problem.conditions):
        for k, v in c.values.items():
            if not math.isfinite(v):
                raise err("conditions", i, f"column {k!r} = {v!r} is not finite.")
    if model is not None:
        pids = {parameter_id(n) for n, p in ck.parameters(model).items()}
        names = set(model.observable_names()) | set(model.state_names())
        for i, p in enumerate(problem.parameters):
            if p.parameter_id not in pids and not p.parameter_id.startswith(("noise", "sigma")):
                raise err(
                    "parameters",
                    i,
                    f"parameterId {p.parameter_id!r} is not a parameter of "
                    f"{type(model).__name__} (ids: {sorted(pids)}).",
                )
        for i, o in enumerate(problem.observables):
            if o.formula not in names:
                raise err(
                    "observables",
                    i,
                    f"observableFormula {o.formula!r} must be one observable or state name "
                    f"of {type(model).__name__}: {sorted(names)}.",
                )
        for i, c in enumerate(problem.conditions):
            for k in c.values:
                if k not in pids:
                    raise err("conditions", i, f"column {k!r} is not a parameter id of {type(model).__name__}.")


# --------------------------------------------------------------------------------------------------------------
# files


def _num(x: float) -> str:
    if isinstance(x, bool):
        return "1" if x else "0"
    if math.isinf(x):
        return "inf" if x > 0 else "-inf"
    return repr(float(x))


def _write_tsv(path: str, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    with atomic_text_file(path, newline="") as fh:
        w = csv.writer(fh, delimiter="\t", lineterminator="\n")
        w.writerow(header)
        for r in rows:
            w.writerow([_num(v) if isinstance(v, (float, bool, int)) else v for v in r])


def _petab_form(problem: PetabProblem, model: ck.AbstractKineticModel) -> PetabProblem:
    """`problem` in the form PEtab requires: parameters set by conditions leave the parameter table, and every
    condition gives each of them a value (the nominal value where the condition had none)."""
    overridden = sorted({k for c in problem.conditions for k in c.values})
    if not overridden:
        return problem
    rows = {p.parameter_id: p for p in problem.parameters}
    values = {parameter_id(n): p.value for n, p in ck.parameters(model).items()}
    for k in overridden:
        if k in rows and rows[k].estimate:
            setters = [c.condition_id for c in problem.conditions if k in c.values]
            raise ValueError(
                f"Parameter {k!r} is estimated in the parameters table and set by condition(s) {setters}; PEtab "
                "cannot estimate a parameter that the condition table sets. Fix it (estimate = 0) or remove the "
                "condition values."
            )
    default = {k: float(rows[k].nominal) if k in rows else float(np.asarray(values[k])) for k in overridden}
    conditions = tuple(
        c._replace(values={k: float(c.values.get(k, default[k])) for k in overridden}) for c in problem.conditions
    )
    parameters = tuple(p for p in problem.parameters if p.parameter_id not in default)
    return PetabProblem(problem.measurements, parameters, conditions, problem.observables)


def write_petab(
    problem: PetabProblem,
    folder: str | os.PathLike,
    *,
    model: ck.AbstractKineticModel,
    regimen: ck.Regimen | ck.AbstractDose | None = None,
) -> str:
    """Write `problem` as a PEtab v1 problem into `folder` (created if needed); returns the `problem.yaml` path.

    **Arguments:**

    - `problem`: the tables; validated against `model` first.
    - `model`: the model, written as `model.xml` (SBML, see [`carkinetics.io.to_sbml`][]); PEtab problems always
      name their model, so it is required.
    - `regimen`: optional [`carkinetics.Regimen`][] (or one dose), written into `model.xml` as SBML events. It
      applies to every condition. PEtab simulates from time 0 and reads measurement times as model times, so the
      SBML clock is carkinetics day 0 and the regimen must not dose before day 0.

    PEtab rules out two things [`PetabProblem`][] allows, and the writer bridges both: a parameter that a condition
    sets may not appear in the parameter table, and a condition-table column needs a value in every row (PEtab has
    no "keep the model's value" cell). Such a parameter leaves the parameter table and conditions that do not set
    it get its nominal value; [`read_petab`][] then returns an equivalent problem ([`PetabProblem.apply`][] gives
    the same model for every condition).

    **Raises:** `ValueError` for a problem that does not validate against `model`, an estimated parameter that a
    condition sets, a dose before day 0, or a model the SBML export cannot write; `ImportError` without the
    `antimony` package.
    """
    if not isinstance(model, ck.AbstractKineticModel):
        raise ValueError(f"`model` must be a carkinetics AbstractKineticModel, got {type(model).__name__}.")
    if isinstance(regimen, ck.AbstractDose):
        regimen = ck.Regimen([regimen])
    first = None if regimen is None else regimen.first_time()
    if first is not None and float(first) < 0.0:
        raise ValueError(
            f"The regimen doses on day {float(first):g}, before day 0; PEtab simulates from time 0 and reads "
            "measurement times as model times, so write_petab puts day 0 at time 0. Shift the regimen and the "
            "measurement times by the same number of days."
        )
    problem.validate(model)
    problem = _petab_form(problem, model)
    from ._sbml import to_sbml

    sbml = to_sbml(model, regimen, t0=0.0)
    folder = os.fspath(folder)
    os.makedirs(folder, exist_ok=True)
    atomic_write_text(os.path.join(folder, "model.xml"), sbml)
    _write_tsv(
        os.path.join(folder, "measurements.tsv"),
        ["observableId", "simulationConditionId", "time", "measurement", "noiseParameters", "replicateId", "datasetId"],
        [list(m) for m in problem.measurements],
    )
    _write_tsv(
        os.path.join(folder, "parameters.tsv"),
        ["parameterId", "parameterName", "parameterScale", "lowerBound", "upperBound", "nominalValue", "estimate"],
        [
            [
                p.parameter_id,
                p.parameter_name,
                p.scale,
                float(p.lower),
                float(p.upper),
                float(p.nominal),
                bool(p.estimate),
            ]
            for p in problem.parameters
        ],
    )
    cols = sorted({k for c in problem.conditions for k in c.values})
    _write_tsv(
        os.path.join(folder, "conditions.tsv"),
        ["conditionId", "conditionName", *cols],
        [[c.condition_id, c.name, *[float(c.values[k]) for k in cols]] for c in problem.conditions],
    )
    _write_tsv(
        os.path.join(folder, "observables.tsv"),
        [
            "observableId",
            "observableName",
            "observableFormula",
            "observableTransformation",
            "noiseFormula",
            "noiseDistribution",
        ],
        [list(o) for o in problem.observables],
    )
    yaml_path = os.path.join(folder, "problem.yaml")
    atomic_write_text(
        yaml_path,
        "format_version: 1\n"
        "parameter_file: parameters.tsv\n"
        "problems:\n"
        "    - condition_files: [conditions.tsv]\n"
        "      measurement_files: [measurements.tsv]\n"
        "      observable_files: [observables.tsv]\n"
        "      sbml_files: [model.xml]\n",
    )
    return yaml_path


def _read_tsv(path: str, required: Sequence[str]) -> tuple[list[str], list[tuple[int, dict[str, str]]]]:
    if not os.path.exists(path):
        raise ValueError(f"The PEtab table {path!r} does not exist.")
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh, delimiter="\t")
        header = [h.strip() for h in (reader.fieldnames or [])]
        dup = sorted({h for h in header if header.count(h) > 1})
        if dup:  # csv.DictReader would keep the last of them silently
            raise ValueError(
                f"{os.path.basename(path)} has duplicate column(s) {dup} in its header; each column must appear once."
            )
        missing = [c for c in required if c not in header]
        if missing:
            raise ValueError(f"{os.path.basename(path)} lacks required column(s) {missing}; found {header}.")
        rows = [
            (i + 2, {k.strip(): (v or "").strip() for k, v in r.items() if k is not None}) for i, r in enumerate(reader)
        ]
    return header, rows


def _f(raw: str, where: str) -> float:
    try:
        return float(raw)
    except ValueError:
        raise ValueError(f"{where}: {raw!r} is not a number.") from None


def read_petab(folder: str | os.PathLike, *, model: ck.AbstractKineticModel | None = None) -> PetabProblem:
    """Read the four TSV tables from `folder` (or the folder of a `problem.yaml` path) and validate them.

    **Raises:** `ValueError` naming the file, line and column of a missing column, malformed number or broken
    reference (and of names unknown to `model`, if given).
    """
    folder = os.fspath(folder)
    if os.path.isfile(folder):
        folder = os.path.dirname(folder) or "."
    if not os.path.isdir(folder):
        raise ValueError(f"The PEtab folder {folder!r} does not exist.")
    j = os.path.join
    _, mrows = _read_tsv(
        j(folder, "measurements.tsv"), ["observableId", "simulationConditionId", "time", "measurement"]
    )
    measurements = tuple(
        PetabMeasurement(
            r["observableId"],
            r["simulationConditionId"],
            _f(r["time"], f"measurements.tsv line {n}, column time"),
            _f(r["measurement"], f"measurements.tsv line {n}, column measurement"),
            r.get("noiseParameters", ""),
            r.get("replicateId", ""),
            r.get("datasetId", ""),
        )
        for n, r in mrows
    )
    _, prows = _read_tsv(
        j(folder, "parameters.tsv"),
        ["parameterId", "parameterScale", "lowerBound", "upperBound", "nominalValue", "estimate"],
    )
    parameters = []
    for n, r in prows:
        est = r["estimate"]
        if est not in ("0", "1"):
            raise ValueError(f"parameters.tsv line {n}, column estimate: {est!r} must be 0 or 1.")
        parameters.append(
            PetabParameter(
                r["parameterId"],
                r.get("parameterName", ""),
                r["parameterScale"],
                _f(r["lowerBound"], f"parameters.tsv line {n}, column lowerBound"),
                _f(r["upperBound"], f"parameters.tsv line {n}, column upperBound"),
                _f(r["nominalValue"], f"parameters.tsv line {n}, column nominalValue"),
                est == "1",
            )
        )
    cheader, crows = _read_tsv(j(folder, "conditions.tsv"), ["conditionId"])
    value_cols = [c for c in cheader if c not in ("conditionId", "conditionName")]
    conditions = tuple(
        PetabCondition(
            r["conditionId"],
            r.get("conditionName", ""),
            {k: _f(r[k], f"conditions.tsv line {n}, column {k}") for k in value_cols if r.get(k, "") != ""},
        )
        for n, r in crows
    )
    _, orows = _read_tsv(j(folder, "observables.tsv"), ["observableId", "observableFormula", "noiseFormula"])
    observables = tuple(
        PetabObservable(
            r["observableId"],
            r.get("observableName", ""),
            r["observableFormula"],
            r.get("observableTransformation", "") or "lin",
            r["noiseFormula"],
            r.get("noiseDistribution", "") or "normal",
        )
        for n, r in orows
    )
    return PetabProblem(measurements, tuple(parameters), conditions, observables).validate(model)
