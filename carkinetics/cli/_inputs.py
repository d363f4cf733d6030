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

from ._common import NumericalFailure, Unavailable, UserError, check_keys, load_toml
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
    if preset_name is None and name is None:
        preset = plugins.default_preset()
        if preset is None:
            raise UserError(f"No installed plugin declares a default preset: give --model (one of "
                            f"{plugins.model_names()}) or --preset.")
    elif preset_name is not None:
        preset = plugins.preset(preset_name)
    else:
        cls = plugins.model_class(name)
        try:
            return cls(), None
        except TypeError as err:
            raise UserError(f"--model {name!r} cannot be built with default parameters ({err}).") from None
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
    doc = load_toml(path)
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


_DOSE_KEYS = {
    "bolus": ("time", "amount", "state", "ii", "addl"),
    "infusion": ("start", "state", "duration", "rate", "amount", "ii", "addl"),
    "fractional_kill": ("time", "fraction", "states", "ii", "addl"),
    "fludarabine": ("dose_mg_per_m2", "days", "bsa_m2", "weight_kg", "height_cm", "state", "infusion_minutes"),
    "cyclophosphamide": ("dose_mg_per_m2", "days", "bsa_m2", "weight_kg", "height_cm", "state", "infusion_minutes"),
    "car_t": ("cells_per_kg", "weight_kg", "cells", "day", "state"),
}


def _dose(kind: str, e: dict, where: str):
    import carkinetics as ck

    if kind == "bolus":
        return ck.Bolus(e.pop("time"), e.pop("amount"), e.pop("state"), **e)
    if kind == "infusion":
        return ck.Infusion(e.pop("start"), e.pop("state"), **e)
    if kind == "fractional_kill":
        return ck.FractionalKill(e.pop("time"), e.pop("fraction"), e.pop("states"), **e)
    if kind in ("fludarabine", "cyclophosphamide"):
        if "weight_kg" in e or "height_cm" in e:
            if "bsa_m2" in e:
                raise UserError(f"{where}: give either bsa_m2 or weight_kg and height_cm, not both.")
            e["bsa_m2"] = ck.bsa_mosteller(e.pop("weight_kg"), e.pop("height_cm"))
        return getattr(ck, kind)(**e)
    return ck.car_t_infusion(**e)


def regimen_from_toml(path: str, model: Any):
    """A regimen from TOML: `[[bolus]]`, `[[infusion]]`, `[[fractional_kill]]`, `[[fludarabine]]`,
    `[[cyclophosphamide]]`, `[[car_t]]` arrays of tables (keys as the carkinetics functions)."""
    import carkinetics as ck

    doc = load_toml(path)
    check_keys(doc, list(_DOSE_KEYS), path)
    doses = ck.Regimen()
    for kind, entries in doc.items():
        if not isinstance(entries, list):
            raise UserError(f"{path}: {kind} must be an array of tables ([[{kind}]]).")
        for i, entry in enumerate(entries):
            where = f"{path}: [[{kind}]] #{i + 1}"
            check_keys(entry, _DOSE_KEYS[kind], where)
            try:
                doses += _dose(kind, dict(entry), where)
            except KeyError as err:
                raise UserError(f"{where}: missing required key {err.args[0]!r}.") from None
            except (ValueError, TypeError) as err:
                raise UserError(f"{where}: {err}") from None
    unknown = sorted(doses.state_names() - set(model.state_names()))
    if unknown:
        raise UserError(f"{path}: unknown state(s) {unknown} for {type(model).__name__}; valid states are "
                        f"{list(model.state_names())}.")
    return doses


def resolve_regimen(plugins: Plugins, spec: str | None, events: str | None, model: Any, preset: Preset | None):
    """`--regimen` (TOML file, plugin regimen name or `none`) or `--events`; neither: the preset's regimen."""
    import carkinetics as ck

    if spec is not None and events is not None:
        raise UserError("Give either --regimen or --events, not both.")
    if events is not None:
        if not os.path.isfile(events):
            raise UserError(f"The event table {events!r} does not exist.")
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
        raise UserError(f"--regimen {spec!r} is neither a TOML file nor a regimen of the installed plugins "
                        f"({plugins.regimen_names()}) nor 'none'.")
    try:
        return make(model)
    except ValueError as err:
        raise UserError(f"--regimen {spec}: {err}") from None


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
    if points < 2:
        raise UserError(f"--points must be at least 2, got {points}.")
    return np.linspace(t_start, t_end, points)


def read_data(path: str | None, model: Any):
    """Data to overlay: NONMEM-style (TIME, DV, CMT) or tidy CSV (time, name, value)."""
    if path is None:
        return None
    import numpy as np

    import carkinetics.io as cio

    if not os.path.isfile(path):
        raise UserError(f"The data file {path!r} does not exist.")
    with open(path, newline="") as fh:
        header = [h.strip() for h in (next(csv.reader(fh), []) or [])]
    upper = [h.upper() for h in header]
    try:
        if "DV" in upper:
            return cio.read_nonmem_observations(path, model.observable_names())
        if {"time", "name", "value"} <= set(header):
            t, v, n = [], [], []
            with open(path, newline="") as fh:
                for k, row in enumerate(csv.DictReader(fh)):
                    try:
                        t.append(float(row["time"]))
                        v.append(float(row["value"]))
                    except ValueError:
                        raise UserError(f"{path} line {k + 2}: time/value must be numbers.") from None
                    n.append(row["name"])
            return cio.Observations(np.asarray(t), np.asarray(v), tuple(n), ("",) * len(n))
    except ValueError as err:
        raise UserError(f"{path}: {err}") from None
    raise UserError(f"{path}: expected NONMEM-style columns (TIME, DV, CMT) or tidy columns (time, name, value); "
                    f"found {header}.")


def result_message(sol) -> str:
    import carkinetics as ck

    for name in ("max_steps_reached", "singular", "breakdown", "dt_min_reached", "invalid_parameters",
                 "internal_error"):
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
