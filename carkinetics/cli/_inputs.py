"""From the shared arguments to a run: model (class, preset, overrides), regimen, save times, data to overlay.

A run without `--model`/`--preset` is the default preset's (declared by a presets plugin); a preset brings its
standard regimen and save grid unless `--regimen`/`--events` or a time option replace them.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import math
import os
from typing import Any

from ._common import (
    MAX_POINTS,
    NumericalFailure,
    Unavailable,
    UserError,
    check_input_file,
    check_keys,
    load_toml,
    note,
    toml_repr,
    toml_value,
)
from ._plugins import Plugins, Preset

#: Save times of a run that names no preset grid: 0 to 28 days at 281 points.
DEFAULT_GRID = (0.0, 28.0, 281)


@dataclasses.dataclass(frozen=True)
class Run:
    """A model, its regimen and save times, with the preset they came from (if any)."""

    model: Any
    regimen: Any
    ts: Any
    preset: Preset | None

    @property
    def label(self) -> str:
        name = type(self.model).__name__
        return name if self.preset is None else f"{name} (preset {self.preset.name})"


def resolve_run(args: argparse.Namespace, plugins: Plugins, *, times: bool = True) -> Run:
    """The run of the model, regimen and time arguments (see the module docstring)."""
    model, preset = resolve_model(plugins, args.model, args.preset)
    model = apply_parameters(model, args.params)
    regimen = resolve_regimen(plugins, args.regimen, args.events, model, preset)
    ts = resolve_times(args, preset) if times else None
    return Run(model, regimen, ts, preset)


def resolve_model(plugins: Plugins, name: str | None, preset_name: str | None) -> tuple[Any, Preset | None]:
    """`--model` (an installed class, default parameters) and/or `--preset`; neither: the default preset."""
    if preset_name is not None:
        preset = plugins.preset(preset_name)
    elif name is not None:
        cls = plugins.model_class(name)
        try:
            return cls(), None
        except TypeError as err:
            raise UserError(f"--model {name!r} cannot be built with default parameters ({err}).") from None
    else:
        preset = plugins.default_preset()
        if preset is None:
            raise UserError(
                f"No installed plugin declares a default preset: give --model (one of "
                f"{plugins.model_names()}) or --preset."
            )
    try:
        model = preset.load()
    except (ValueError, FileNotFoundError, KeyError) as err:
        raise UserError(f"--preset {preset.name!r}: {err}") from None
    if name not in (None, type(model).__name__):
        raise UserError(f"--preset {preset.name!r} gives a {type(model).__name__}, not the --model {name!r}.")
    return model, preset


def apply_parameters(model: Any, path: str | None) -> Any:
    """Parameter overrides from a TOML file: a `[parameters]` table of dotted name = value."""
    if path is None:
        return model
    doc = load_toml(path, "--params")
    check_keys(doc, ["parameters"], path)
    params = doc.get("parameters", {})
    if not isinstance(params, dict):
        raise UserError(f"{path}: [parameters] must be a table of name = value.")
    flat = {}

    def walk(prefix, table):
        for k, v in table.items():
            if isinstance(v, dict):
                walk(prefix + k + ".", v)
            else:
                flat[prefix + k] = v

    walk("", params)
    for k, v in flat.items():
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise UserError(f"{path}: parameter {k!r} must be a number, got {v!r}.")
    try:
        return model.replace({k: float(v) for k, v in flat.items()})
    except ValueError as err:
        raise UserError(f"{path}: {err}") from None


#: The tables of a regimen TOML file (`--regimen FILE.toml`): table -> {key: (kind, required)}, kinds as in
#: `_common.TOML_KINDS`. Keys are those of the carkinetics functions the tables stand for (`ck.Bolus`,
#: `ck.Infusion`, `ck.FractionalKill`, `ck.fludarabine`, `ck.cyclophosphamide`, `ck.car_t_infusion`); omitted
#: optional keys take those functions' defaults. Documented with an example per table in docs/cli.md.
REGIMEN_TABLES: dict[str, dict[str, tuple[str, bool]]] = {
    "bolus": {
        "time": ("number", True),
        "amount": ("number", True),
        "state": ("string", True),
        "ii": ("number", False),
        "addl": ("whole", False),
    },
    "infusion": {
        "start": ("number", True),
        "state": ("string", True),
        "duration": ("number", True),
        "rate": ("number", False),
        "amount": ("number", False),
        "ii": ("number", False),
        "addl": ("whole", False),
    },
    "fractional_kill": {
        "time": ("number", True),
        "fraction": ("number", True),
        "states": ("strings", True),
        "ii": ("number", False),
        "addl": ("whole", False),
    },
    "fludarabine": {
        "dose_mg_per_m2": ("number", False),
        "days": ("numbers", False),
        "bsa_m2": ("number", False),
        "weight_kg": ("number", False),
        "height_cm": ("number", False),
        "state": ("string", False),
        "infusion_minutes": ("number", False),
    },
    "car_t": {
        "cells_per_kg": ("number", False),
        "weight_kg": ("number", False),
        "cells": ("number", False),
        "day": ("number", False),
        "state": ("string", False),
    },
}
REGIMEN_TABLES["cyclophosphamide"] = dict(REGIMEN_TABLES["fludarabine"])

#: Last components of the dotted parameter names a model's body size is read from (e.g. `body.weight_kg`).
BODY_SIZE = {"weight_kg": "kg", "height_cm": "cm"}


def model_body_size(model: Any) -> dict[str, tuple[str, float]]:
    """`{"weight_kg": (parameter name, value), "height_cm": (...)}` for the scalar parameters of `model` whose dotted
    name ends in `weight_kg` / `height_cm` (one each; a model without them, or with several, gives none)."""
    import numpy as np

    import carkinetics as ck

    found: dict[str, list[tuple[str, float]]] = {k: [] for k in BODY_SIZE}
    for name, p in ck.parameters(model).items():
        last = name.rsplit(".", 1)[-1]
        if last in found and np.ndim(p.value) == 0:
            found[last].append((name, float(p.value)))
    return {k: v[0] for k, v in found.items() if len(v) == 1}


def _default(fn: Any, key: str) -> Any:
    import inspect

    return inspect.signature(fn).parameters[key].default


def _chemo_dose(kind: str, e: dict, where: str, model: Any):
    """`ck.fludarabine`/`ck.cyclophosphamide` of a table: BSA from `bsa_m2`, else from `weight_kg` and `height_cm`
    (a missing one from the model), else from the model's body size (with a note); defaults are noted."""
    import carkinetics as ck

    fn = getattr(ck, kind)
    body = model_body_size(model)
    if "bsa_m2" in e:
        if "weight_kg" in e or "height_cm" in e:
            raise UserError(f"{where}: give either bsa_m2 or weight_kg and height_cm, not both.")
    else:
        size, taken = {}, []
        for key in BODY_SIZE:
            if key in e:
                size[key] = e.pop(key)
            elif key in body:
                size[key] = body[key][1]
                taken.append(f"{body[key][0]} = {body[key][1]:g} {BODY_SIZE[key]}")
            else:
                given = "" if not size else f" ({', '.join(size)} given)"
                raise UserError(
                    f"{where}: give bsa_m2 (m²), or weight_kg and height_cm{given}: "
                    f"{type(model).__name__} declares no body size to take the {key} from."
                )
        try:
            e["bsa_m2"] = ck.bsa_mosteller(size["weight_kg"], size["height_cm"])
        except ValueError as err:
            raise UserError(f"{where}: {err}") from None
        if taken:
            note(
                f"{where}: no bsa_m2 given: using {e['bsa_m2']:.3g} m² (Mosteller) from the model's "
                f"{' and '.join(taken)}."
            )
    defaults = []
    if "dose_mg_per_m2" not in e:
        defaults.append(f"dose_mg_per_m2 = {_default(fn, 'dose_mg_per_m2'):g}")
    if "days" not in e:
        defaults.append(f"days = {[float(d) for d in _default(fn, 'days')]}")
    if defaults:
        note(f"{where}: using the default {' and '.join(defaults)} of carkinetics.{kind}.")
    return fn(**e)


def _car_t_dose(e: dict, where: str, model: Any):
    """`ck.car_t_infusion` of a table: `cells`, or `cells_per_kg` times `weight_kg` (else the model's weight)."""
    import carkinetics as ck

    if "cells" not in e:
        if "cells_per_kg" not in e:
            raise UserError(f"{where}: give cells (a flat number of CAR-T cells) or cells_per_kg.")
        if "weight_kg" not in e:
            body = model_body_size(model)
            if "weight_kg" not in body:
                raise UserError(
                    f"{where}: cells_per_kg needs weight_kg (kg): {type(model).__name__} declares no "
                    "body weight to take it from (or give cells)."
                )
            name, w = body["weight_kg"]
            e["weight_kg"] = w
            note(
                f"{where}: no weight_kg given: using the model's {name} = {w:g} kg "
                f"({float(e['cells_per_kg']) * w:.3g} cells)."
            )
    return ck.car_t_infusion(**e)


def _dose(kind: str, e: dict, where: str, model: Any):
    import carkinetics as ck

    if kind == "bolus":
        return ck.Bolus(e.pop("time"), e.pop("amount"), e.pop("state"), **e)
    if kind == "infusion":
        return ck.Infusion(e.pop("start"), e.pop("state"), **e)
    if kind == "fractional_kill":
        return ck.FractionalKill(e.pop("time"), e.pop("fraction"), e.pop("states"), **e)
    if kind in ("fludarabine", "cyclophosphamide"):
        return _chemo_dose(kind, e, where, model)
    return _car_t_dose(e, where, model)


def regimen_from_toml(path: str, model: Any):
    """A regimen from TOML: arrays of tables `[[bolus]]`, `[[infusion]]`, `[[fractional_kill]]`, `[[fludarabine]]`,
    `[[cyclophosphamide]]`, `[[car_t]]` (`REGIMEN_TABLES`: keys as the carkinetics functions, every value checked
    for its type; docs/cli.md has an example per table). Body size missing from a chemotherapy or CAR-T table is
    taken from the model (with a note), and so are the defaults that set a dose."""
    import carkinetics as ck

    doc = load_toml(path, "--regimen")
    check_keys(doc, list(REGIMEN_TABLES), path)
    doses = ck.Regimen()
    for kind, entries in doc.items():
        if not (isinstance(entries, list) and all(isinstance(x, dict) for x in entries)):
            raise UserError(
                f"{path}: {kind} must be an array of tables, each written [[{kind}]] followed by its "
                f"keys (see docs/cli.md), got {kind} = {toml_repr(entries)}."
            )
        schema = REGIMEN_TABLES[kind]
        for i, entry in enumerate(entries):
            where = f"{path}: [[{kind}]] #{i + 1}"
            check_keys(entry, list(schema), where)
            missing = [k for k, (_, required) in schema.items() if required and k not in entry]
            if missing:
                raise UserError(f"{where}: missing required key(s) {missing}.")
            e = {k: toml_value(v, schema[k][0], f"{where}: {k}") for k, v in entry.items()}
            try:
                doses += _dose(kind, e, where, model)
            except (ValueError, TypeError) as err:
                raise UserError(f"{where}: {err}") from None
    check_regimen_states(doses, model, path)
    return doses


def check_regimen_states(regimen: Any, model: Any, where: str) -> None:
    """`UserError` if `regimen` doses a state that `model` does not have."""
    if regimen is None or not hasattr(regimen, "state_names"):
        return
    unknown = sorted(set(regimen.state_names()) - set(model.state_names()))
    if unknown:
        raise UserError(
            f"{where}: unknown state(s) {unknown} for {type(model).__name__}; valid states are "
            f"{list(model.state_names())}."
        )


def resolve_regimen(plugins: Plugins, spec: str | None, events: str | None, model: Any, preset: Preset | None):
    """`--regimen` (TOML file, plugin regimen name or `none`) or `--events`; neither: the preset's regimen."""
    import carkinetics as ck

    if spec is not None and events is not None:
        raise UserError("Give either --regimen or --events, not both.")
    if events is not None:
        check_input_file(events, "--events", "event table (CSV)")
        try:
            return ck.read_nonmem_events(events, model.state_names())
        except ValueError as err:
            raise UserError(f"{events}: {err}") from None
    if spec is None:
        return None if preset is None or preset.regimen is None else preset.regimen(model)
    if spec == "none":
        return None
    if spec.endswith(".toml") or os.path.isfile(spec):
        return regimen_from_toml(spec, model)
    make = plugins.named_regimen(spec)
    if make is None:
        raise UserError(
            f"--regimen {spec!r} is neither a TOML file nor a regimen of the installed plugins "
            f"({plugins.regimen_names()}) nor 'none'."
        )
    try:
        regimen = make(model)
    except ValueError as err:
        raise UserError(f"--regimen {spec}: does not apply to {type(model).__name__}: {err}") from None
    check_regimen_states(regimen, model, f"--regimen {spec}")
    return regimen


def resolve_times(args: argparse.Namespace, preset: Preset | None):
    """The preset's save grid when no time option is given, else evenly spaced times (defaults from the preset's
    grid or `DEFAULT_GRID`)."""
    import numpy as np

    grid = None if preset is None or preset.save_times is None else np.asarray(preset.save_times())
    if grid is not None and args.t_start is None and args.t_end is None and args.points is None:
        return grid
    t_start, t_end, points = DEFAULT_GRID if grid is None else (float(grid[0]), float(grid[-1]), DEFAULT_GRID[2])
    t_start = t_start if args.t_start is None else args.t_start
    t_end = t_end if args.t_end is None else args.t_end
    points = points if args.points is None else args.points
    if not (math.isfinite(t_start) and math.isfinite(t_end) and t_end > t_start):
        raise UserError(f"--t-end ({t_end}) must be later than --t-start ({t_start}).")
    if not 2 <= points <= MAX_POINTS:
        raise UserError(f"--points must be between 2 and {MAX_POINTS}, got {points}.")
    return np.linspace(t_start, t_end, points)


def read_data(path: str | None, model: Any):
    """Data to overlay: NONMEM-style (TIME, DV, CMT) or tidy CSV (time, name, value); every name must be an observable
    or a state of `model` (rows of other names would be dropped from the figure without a word)."""
    if path is None:
        return None
    import numpy as np

    import carkinetics.io as cio

    check_input_file(path, "--data", "data (CSV)")
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            header = [h.strip() for h in (next(csv.reader(fh), []) or [])]
    except UnicodeDecodeError:
        raise UserError(f"--data {path} is not UTF-8 text.") from None
    upper = [h.upper() for h in header]
    try:
        if "DV" in upper:
            return cio.read_nonmem_observations(path, model.observable_names())
        if {"time", "name", "value"} <= set(header):
            t, v, n = [], [], []
            known = set(model.observable_names()) | set(model.state_names())
            with open(path, newline="", encoding="utf-8-sig") as fh:
                for k, row in enumerate(csv.DictReader(fh)):
                    where = f"{path} line {k + 2}"
                    try:
                        t.append(float(row["time"]))
                        v.append(float(row["value"]))
                    except (TypeError, ValueError):
                        raise UserError(
                            f"{where}: time and value must be numbers, got {row['time']!r} and {row['value']!r}."
                        ) from None
                    if not (math.isfinite(t[-1]) and math.isfinite(v[-1])):
                        raise UserError(f"{where}: time and value must be finite, got {t[-1]} and {v[-1]}.")
                    name = (row["name"] or "").strip()
                    if name not in known:
                        raise UserError(
                            f"{where}: name {name!r} is neither an observable nor a state of "
                            f"{type(model).__name__}; observables are {list(model.observable_names())}, "
                            f"states are {list(model.state_names())}."
                        )
                    n.append(name)
            if not n:
                raise UserError(f"{path}: no data rows below the header.")
            return cio.Observations(np.asarray(t), np.asarray(v), tuple(n), ("",) * len(n))
    except ValueError as err:
        raise UserError(f"{path}: {err}") from None
    raise UserError(
        f"{path}: expected NONMEM-style columns (TIME, DV, CMT) or tidy columns (time, name, value); found {header}."
    )


def result_message(sol) -> str:
    import carkinetics as ck

    for name in (
        "max_steps_reached",
        "singular",
        "breakdown",
        "dt_min_reached",
        "invalid_parameters",
        "internal_error",
    ):
        item = getattr(ck.RESULTS, name, None)
        if item is not None and bool(sol.result == item):
            return name.replace("_", " ")
    return "unsuccessful result"


def run_simulation(model: Any, regimen: Any, ts: Any, **kw):
    """`ck.simulate` with the model class's solver defaults; a failed solve is a `NumericalFailure` (exit 4)."""
    import carkinetics as ck

    sol = ck.simulate(model, regimen, ts, throw=False, **kw)
    if not bool(sol.ok):
        raise NumericalFailure(
            f"The solver did not succeed for {type(model).__name__} with these inputs ({result_message(sol)}). "
            "Check the parameter values and doses; very fast or stiff dynamics may need more solver steps."
        )
    return sol


def write_sbml(model: Any, regimen: Any, path: str) -> str:
    import carkinetics.io as cio

    try:
        cio.write_sbml(model, path, regimen)
    except ImportError as err:
        raise Unavailable(str(err)) from None
    return path
