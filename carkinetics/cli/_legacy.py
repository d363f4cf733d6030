"""The `carkinetics` command line.

  carkinetics demo                      the main job on built-in defaults: figures + HTML report
  carkinetics simulate  --model ...     one simulation from TOML/CSV inputs -> tidy CSV + PNG
  carkinetics sweep     --model ...     a parameter sweep (ranges from TOML) -> metrics CSV + PNG
  carkinetics calibrate --petab DIR     fit parameters to a PEtab-style problem
  carkinetics translate                 the mouse -> human translation map
  carkinetics bench                     time the solver core on this machine

Times are days (day 0 = CAR-T infusion). Run `carkinetics <command> --help` for the inputs of each command.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import importlib
import math
import os
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from typing import Any

#: Exit codes (also listed in `carkinetics --help`).
EXIT_OK = 0
EXIT_INTERNAL = 1  # a bug: printed with a traceback
EXIT_USAGE = 2  # a user mistake: bad arguments or input files (no traceback)
EXIT_UNAVAILABLE = 3  # the requested feature is not part of this installation
EXIT_NUMERICAL = 4  # the solver failed (e.g. max_steps reached) for the given inputs

_EPILOG = f"""exit codes: {EXIT_OK} success; {EXIT_USAGE} bad arguments or input files (the message says which);
{EXIT_UNAVAILABLE} feature not available in this installation; {EXIT_NUMERICAL} the solver failed for these inputs;
{EXIT_INTERNAL} internal error (please report it with the traceback)."""


class UserError(Exception):
    """A mistake in the command line or the input files: reported in one line, exit code 2."""


class Unavailable(Exception):
    """A feature that this installation does not provide: exit code 3."""


class NumericalFailure(Exception):
    """The solver did not succeed for the given inputs: exit code 4."""


# --------------------------------------------------------------------------------------------------------------
# small helpers


def _setup_numerics() -> None:
    """CLI entry point (not library code): float64 for reports, headless matplotlib."""
    import jax

    jax.config.update("jax_enable_x64", True)
    import matplotlib

    matplotlib.use("Agg")


def _devices_arg(text: str) -> str | int:
    """argparse type of `--devices`: 'all' or a positive integer."""
    if text == "all":
        return "all"
    try:
        k = int(text)
    except ValueError:
        k = 0
    if k < 1:
        raise argparse.ArgumentTypeError(f"must be 'all' or a positive integer, got {text!r}")
    return k


def _available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _setup_host_devices(devices: str | int | None) -> None:
    """Before JAX starts: one CPU device per core asked for (`--devices`), so that members run on several cores.

    XLA gives a CPU one device unless `XLA_FLAGS` has `--xla_force_host_platform_device_count`; the ensemble solver
    is single-threaded per device, so sharding the members over K host devices uses K cores. Left alone when
    `XLA_FLAGS` already sets the count or JAX has started, and only called for the `carkinetics` command itself
    (`main()` without arguments), never for `main([...])` inside someone's Python process. On a GPU this only adds
    CPU devices, which are not used (`jax.devices()` lists the GPUs).
    """
    if devices is None:
        return
    k = _available_cores() if devices == "all" else int(devices)
    flags = os.environ.get("XLA_FLAGS", "")
    if k <= 1 or "xla_force_host_platform_device_count" in flags:
        return
    try:
        from jax._src import xla_bridge

        started = xla_bridge.backends_are_initialized()
    except (ImportError, AttributeError):  # private API moved: do not risk a flag that no longer applies
        started = True
    if not started:
        os.environ["XLA_FLAGS"] = (flags + f" --xla_force_host_platform_device_count={k}").strip()


def _device_count(requested: str | int) -> int:
    """How many devices a `--devices all|K` request uses in this process (`UserError` if K are not available)."""
    import jax

    from carkinetics._analysis._sweep import _resolve_devices  # the library's own reading of `devices`

    try:
        return len(_resolve_devices(requested))
    except ValueError:
        raise UserError(f"--devices {requested}: only {len(jax.devices())} {jax.default_backend()} device(s) are "
                        "available (on CPU the count is fixed when JAX starts: run the command in a fresh process, or "
                        "set XLA_FLAGS=--xla_force_host_platform_device_count=K).") from None


def _feature(module: str, *names: str) -> tuple[bool, str]:
    """Whether `module` provides every attribute in `names` (and, if not, which is missing)."""
    try:
        mod = importlib.import_module(module)
    except ImportError as err:
        return False, f"{module} cannot be imported ({err})"
    missing = [n for n in names if not hasattr(mod, n)]
    if missing:
        return False, f"{module}.{missing[0]} is not in this installation"
    return True, ""


class Progress:
    """A progress bar on stderr: a redrawn bar on a terminal, one line per step otherwise (logs, CI)."""

    def __init__(self, total: int, label: str, *, enabled: bool = True, stream=None):
        self.total = max(int(total), 1)
        self.label = label
        self.enabled = enabled
        self.stream = stream or sys.stderr
        self.done = 0
        self.t0 = time.perf_counter()
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())

    def step(self, what: str) -> None:
        """Announce the item about to run (shows the bar before the work starts)."""
        if not self.enabled:
            return
        elapsed = time.perf_counter() - self.t0
        width = 24
        filled = int(width * self.done / self.total)
        bar = "#" * filled + "-" * (width - filled)
        msg = f"{self.label} [{bar}] {self.done}/{self.total} {elapsed:5.1f}s  {what}"
        if self.tty:
            self.stream.write("\r" + msg[:120].ljust(120))
        else:
            self.stream.write(msg + "\n")
        self.stream.flush()

    def advance(self) -> None:
        self.done += 1

    def close(self) -> None:
        if self.enabled:
            elapsed = time.perf_counter() - self.t0
            end = "\n" if self.tty else ""
            self.stream.write(f"{end}{self.label}: {self.done}/{self.total} done in {elapsed:.1f}s\n")
            self.stream.flush()


def _load_toml(path: str) -> dict:
    import tomllib

    if not os.path.isfile(path):
        raise UserError(f"The TOML file {path!r} does not exist.")
    try:
        with open(path, "rb") as fh:
            return tomllib.load(fh)
    except tomllib.TOMLDecodeError as err:
        raise UserError(f"{path} is not valid TOML: {err}.") from None


def _check_keys(table: dict, allowed: Sequence[str], where: str) -> None:
    unknown = sorted(set(table) - set(allowed))
    if unknown:
        raise UserError(f"{where}: unknown key(s) {unknown}; allowed keys are {sorted(allowed)}.")


def _model_classes() -> dict[str, type]:
    import carkinetics as ck
    import carkinetics.models as models

    out = {}
    for name in dir(models):
        obj = getattr(models, name)
        if isinstance(obj, type) and issubclass(obj, ck.AbstractKineticModel) and not name.startswith("_"):
            out[name] = obj
    return out


def _resolve_model(name: str, preset: str | None):
    """A model from a class name in `carkinetics.models`, optionally a named preset (SLE model)."""
    import carkinetics.models as models

    classes = _model_classes()
    if preset is not None:
        ok, why = _feature("carkinetics.models", "load_preset")
        if not ok:
            raise Unavailable(f"--preset needs carkinetics.models.load_preset: {why}.")
        try:
            model = models.load_preset(preset)
        except (ValueError, FileNotFoundError, KeyError) as err:
            raise UserError(f"--preset {preset!r}: {err}") from None
        if name not in (None, type(model).__name__):
            raise UserError(f"--preset {preset!r} gives a {type(model).__name__}, not the --model {name!r}.")
        return model
    if name is None:
        name = _DEFAULT_MODEL
    if name not in classes:
        raise UserError(f"--model {name!r} is not a model of carkinetics.models; choose one of {sorted(classes)}.")
    try:
        return classes[name]()
    except TypeError as err:
        raise UserError(f"--model {name!r} cannot be built with default parameters ({err}).") from None


def _apply_parameters(model, path: str | None):
    """Parameter overrides from a TOML file: a `[parameters]` table of dotted name = value."""
    if path is None:
        return model
    doc = _load_toml(path)
    _check_keys(doc, ["parameters"], path)
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


def _regimen_from_toml(path: str, model):
    """A regimen from TOML: `[[bolus]]`, `[[infusion]]`, `[[fractional_kill]]`, `[[fludarabine]]`,
    `[[cyclophosphamide]]`, `[[car_t]]` arrays of tables (keys as the carkinetics functions)."""
    import carkinetics as ck

    doc = _load_toml(path)
    _check_keys(doc, list(_DOSE_KEYS), path)
    doses = ck.Regimen()
    for kind, entries in doc.items():
        if not isinstance(entries, list):
            raise UserError(f"{path}: {kind} must be an array of tables ([[{kind}]]).")
        for i, e in enumerate(entries):
            where = f"{path}: [[{kind}]] #{i + 1}"
            _check_keys(e, _DOSE_KEYS[kind], where)
            e = dict(e)
            try:
                if kind == "bolus":
                    doses += ck.Bolus(e.pop("time"), e.pop("amount"), e.pop("state"), **e)
                elif kind == "infusion":
                    doses += ck.Infusion(e.pop("start"), e.pop("state"), **e)
                elif kind == "fractional_kill":
                    doses += ck.FractionalKill(e.pop("time"), e.pop("fraction"), e.pop("states"), **e)
                elif kind in ("fludarabine", "cyclophosphamide"):
                    if "weight_kg" in e or "height_cm" in e:
                        if "bsa_m2" in e:
                            raise UserError(f"{where}: give either bsa_m2 or weight_kg and height_cm, not both.")
                        e["bsa_m2"] = ck.bsa_mosteller(e.pop("weight_kg"), e.pop("height_cm"))
                    doses += getattr(ck, kind)(**e)
                else:
                    doses += ck.car_t_infusion(**e)
            except KeyError as err:
                raise UserError(f"{where}: missing required key {err.args[0]!r}.") from None
            except (ValueError, TypeError) as err:
                raise UserError(f"{where}: {err}") from None
    unknown = sorted(doses.state_names() - set(model.state_names()))
    if unknown:
        raise UserError(f"{path}: unknown state(s) {unknown} for {type(model).__name__}; valid states are "
                        f"{list(model.state_names())}.")
    return doses


def _resolve_regimen(spec: str | None, events: str | None, model):
    import carkinetics as ck
    import carkinetics.models as models

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
        return None
    if spec in ("erlangen", "mouse"):
        fn = "erlangen_regimen" if spec == "erlangen" else "mouse_regimen"
        ok, why = _feature("carkinetics.models", fn)
        if not ok:
            raise Unavailable(f"--regimen {spec} needs carkinetics.models.{fn}: {why}.")
        try:
            return getattr(models, fn)(model)
        except ValueError as err:
            raise UserError(f"--regimen {spec}: {err}") from None
    return _regimen_from_toml(spec, model)


def _read_data(path: str | None, model):
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


def write_tidy_csv(path: str, solution, *, extra: dict[str, str] | None = None) -> str:
    """Write a `Solution` as tidy (long) CSV: `time, kind, name, value, unit` (+ `extra` constant columns)."""
    import numpy as np

    cls = solution.model_class
    extra = extra or {}
    ts = np.asarray(solution.ts)
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["time", "kind", "name", "value", "unit", *extra])
        for kind, names, arr, units in (
            ("state", cls.state_names(), np.asarray(solution.y_array), cls.state_units),
            ("observable", cls.observable_names(), np.asarray(solution.obs_array), cls.observable_units),
        ):
            for j, n in enumerate(names):
                for i in range(ts.shape[0]):
                    w.writerow([repr(float(ts[i])), kind, n, repr(float(arr[i, j])), units.get(n, ""), *extra.values()])
    return path


def _out_dir(path: str) -> str:
    out = os.path.abspath(path)
    try:
        os.makedirs(out, exist_ok=True)
    except OSError as err:
        raise UserError(f"--out {path!r}: cannot create the folder ({err.strerror}).") from None
    return out


def _times(args) -> Any:
    import numpy as np

    if not (math.isfinite(args.t_start) and math.isfinite(args.t_end) and args.t_end > args.t_start):
        raise UserError(f"--t-end ({args.t_end}) must be later than --t-start ({args.t_start}).")
    if args.points < 2:
        raise UserError(f"--points must be at least 2, got {args.points}.")
    return np.linspace(args.t_start, args.t_end, args.points)


def _simulate_kwargs(model) -> dict:
    """The model's recommended solver settings when it declares them (the SLE model does)."""
    import carkinetics.models as models

    if type(model).__name__ == "SLECarTModel" and hasattr(models, "sle_car_t"):
        rtol, atol = models.sle_car_t.DEFAULT_TOLERANCES
        return dict(solver=type(model).default_solver(), rtol=rtol, atol=atol, max_steps=50_000)
    return {}


def _result_message(sol) -> str:
    import carkinetics as ck

    for name in ("max_steps_reached", "singular", "breakdown", "dt_min_reached", "internal_error"):
        item = getattr(ck.RESULTS, name, None)
        if item is not None and bool(sol.result == item):
            return name.replace("_", " ")
    return "unsuccessful result"


def _run_simulation(model, regimen, ts, **kw):
    import carkinetics as ck

    opts = _simulate_kwargs(model)
    opts.update(kw)
    sol = ck.simulate(model, regimen, ts, throw=False, **opts)
    if not bool(sol.ok):
        raise NumericalFailure(
            f"The solver did not succeed for {type(model).__name__} with these inputs ({_result_message(sol)}). "
            "Check the parameter values and doses; very fast or stiff dynamics may need more solver steps."
        )
    return sol


# --------------------------------------------------------------------------------------------------------------
# simulate


def _cmd_simulate(args) -> int:
    from carkinetics.plot import plot_timecourse, save_figure

    model = _apply_parameters(_resolve_model(args.model, args.preset), args.params)
    regimen = _resolve_regimen(args.regimen, args.events, model)
    ts = _times(args)
    data = _read_data(args.data, model)
    names = None
    if args.outputs:
        names = [n.strip() for n in args.outputs.split(",") if n.strip()]
        valid = set(model.observable_names()) | set(model.state_names())
        bad = [n for n in names if n not in valid]
        if bad:
            raise UserError(f"--outputs: unknown name(s) {bad}; observables are {list(model.observable_names())}, "
                            f"states are {list(model.state_names())}.")
    out = _out_dir(args.out)
    prog = Progress(2, "simulate", enabled=not args.quiet)
    prog.step(f"{type(model).__name__}: integrating {ts[0]:g}..{ts[-1]:g} d")
    sol = _run_simulation(model, regimen, ts)
    prog.advance()
    prog.step("writing CSV and PNG")
    csv_path = write_tidy_csv(os.path.join(out, "simulation.csv"), sol)
    fig = plot_timecourse(sol, names, data=data, title=f"{type(model).__name__}")
    png = save_figure(fig, os.path.join(out, "simulation.png"))
    model.parameter_table().to_csv(os.path.join(out, "parameters.csv"))
    prog.advance()
    prog.close()
    if args.sbml:
        import carkinetics.io as cio

        try:
            cio.write_sbml(model, os.path.join(out, "model.xml"), regimen)
        except ImportError as err:
            raise Unavailable(str(err)) from None
    print(f"wrote {csv_path}\nwrote {png}")
    print(f"output folder: {out}")
    return EXIT_OK


# --------------------------------------------------------------------------------------------------------------
# sweep


def _sweep_spec(path: str, model, n_default: int):
    """Ranges from TOML: `[sweep] n = 64, seed = 0` and `[ranges] "car.rho" = [lo, hi]` (log-uniform when
    both bounds are positive and `log = true`, the default)."""
    import numpy as np

    import carkinetics as ck

    doc = _load_toml(path)
    _check_keys(doc, ["sweep", "ranges"], path)
    meta = doc.get("sweep", {})
    _check_keys(meta, ["n", "seed", "log", "metrics"], f"{path} [sweep]")
    ranges = doc.get("ranges")
    if not isinstance(ranges, dict) or not ranges:
        raise UserError(f"{path}: a [ranges] table of parameter = [lower, upper] is required.")
    n = int(meta.get("n", n_default))
    if n < 2:
        raise UserError(f"{path}: [sweep] n must be at least 2, got {n}.")
    rng = np.random.default_rng(int(meta.get("seed", 0)))
    use_log = bool(meta.get("log", True))
    allp = ck.parameters(model)
    samples = {}
    for name, bounds in ranges.items():
        if name not in allp:
            raise UserError(f"{path}: unknown parameter {name!r}; known parameters are {sorted(allp)}.")
        if not (isinstance(bounds, list) and len(bounds) == 2 and all(isinstance(b, (int, float)) for b in bounds)
                and bounds[0] < bounds[1]):
            raise UserError(f"{path}: range of {name!r} must be [lower, upper] with lower < upper, got {bounds!r}.")
        lo, hi = float(bounds[0]), float(bounds[1])
        info = allp[name].info
        if lo < info.lower or hi > info.upper:
            raise UserError(f"{path}: range [{lo}, {hi}] of {name!r} leaves its declared bounds "
                            f"[{info.lower}, {info.upper}] {info.unit}.")
        u = rng.random(n)
        samples[name] = np.exp(np.log(lo) + u * (np.log(hi) - np.log(lo))) if use_log and lo > 0 else lo + u * (hi - lo)
    return samples, meta.get("metrics")


def _cmd_sweep(args) -> int:
    import numpy as np

    import carkinetics as ck

    ok, why = _feature("carkinetics", "sweep_model")
    if not ok:
        raise Unavailable(f"carkinetics sweep needs ck.sweep_model: {why}.")
    model = _apply_parameters(_resolve_model(args.model, args.preset), args.params)
    regimen = _resolve_regimen(args.regimen, args.events, model)
    ts = _times(args)
    samples, wanted = _sweep_spec(args.ranges, model, args.n)
    out = _out_dir(args.out)
    import jax

    devices = _device_count(args.devices)
    n_members = len(next(iter(samples.values())))
    try:
        chunk = 256 * devices if args.chunk_size is None else args.chunk_size
        res = ck.sweep_model(model, regimen, ts, samples, chunk_size=chunk, progress=not args.quiet,
                             devices=devices if devices > 1 else None, **_simulate_kwargs(model))
    except ValueError as err:
        raise UserError(str(err)) from None
    metrics = {k: np.asarray(v) for k, v in res.outputs.items() if np.asarray(v).ndim == 1}
    if wanted:
        bad = [m for m in wanted if m not in metrics]
        if bad:
            raise UserError(f"{args.ranges}: unknown metric(s) {bad}; available: {sorted(metrics)}.")
        metrics = {k: metrics[k] for k in wanted}
    path = os.path.join(out, "sweep.csv")
    names = list(samples)
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["member", *names, *metrics])
        for i in range(n_members):
            w.writerow([i, *[repr(float(samples[p][i])) for p in names], *[repr(float(metrics[m][i])) for m in metrics]])
    png = _sweep_figure(samples, metrics, os.path.join(out, "sweep.png"))
    print(f"{n_members} members on {res.n_devices} {jax.default_backend()} device(s); "
          f"{res.n_failed} failed (masked as nan)")
    print(f"wrote {path}\nwrote {png}\noutput folder: {out}")
    return EXIT_OK


def _sweep_figure(samples: dict, metrics: dict, path: str, max_metrics: int = 4) -> str:
    """Scatter of each metric against each swept parameter (log axes for positive ranges)."""
    import matplotlib.pyplot as plt
    import numpy as np

    from carkinetics.plot import save_figure

    mnames = list(metrics)[:max_metrics]
    pnames = list(samples)
    fig, axes = plt.subplots(len(mnames), len(pnames), figsize=(3.2 * len(pnames), 2.6 * len(mnames)),
                             squeeze=False)
    for i, m in enumerate(mnames):
        for j, p in enumerate(pnames):
            ax = axes[i][j]
            x, y = np.asarray(samples[p]), np.asarray(metrics[m])
            ax.plot(x, y, ".", ms=4, alpha=0.7)
            if np.all(x > 0) and x.max() / x.min() > 20:
                ax.set_xscale("log")
            if i == len(mnames) - 1:
                ax.set_xlabel(p, fontsize=8)
            if j == 0:
                ax.set_ylabel(m, fontsize=8)
            ax.tick_params(labelsize=7)
    fig.suptitle("sweep: metric vs parameter")
    fig.tight_layout()
    return save_figure(fig, path)


# --------------------------------------------------------------------------------------------------------------
# calibrate, translate (wired to the features when they are present)


def _cmd_calibrate(args) -> int:
    import carkinetics.io as cio

    ok, why = _feature("carkinetics", "fit", "CalibrationProblem", "TimeCourseData")
    if not ok:
        raise Unavailable(f"carkinetics calibrate needs ck.fit and ck.CalibrationProblem: {why}.")
    model = _apply_parameters(_resolve_model(args.model, args.preset), args.params)
    regimen = _resolve_regimen(args.regimen, args.events, model)
    try:
        problem = cio.read_petab(args.petab, model=model)
    except ValueError as err:
        raise UserError(str(err)) from None
    if args.starts < 1:
        raise UserError(f"--starts must be at least 1, got {args.starts}.")
    return _calibrate_petab(args, model, regimen, problem)


def petab_targets(problem, model, condition_id: str):
    """`ck.TimeCourseData` targets of one PEtab condition (one per observable).

    `lin` observables get a normal error with the numeric `noiseFormula` as sd (data unit); `log`/`log10` ones a
    log-normal error with the `noiseFormula` as sd of the natural / decadic log (converted to natural log).
    """
    import math

    import jax.numpy as jnp

    import carkinetics as ck

    targets = []
    for o in problem.observables:
        rows = [m for m in problem.measurements if m.observable_id == o.observable_id and m.condition_id == condition_id]
        if not rows:
            continue
        if o.formula not in model.observable_names():
            raise UserError(f"observables.tsv: {o.observable_id!r} maps to {o.formula!r}, a state; calibration "
                            f"fits observables ({list(model.observable_names())}).")
        try:
            sigma = float(o.noise_formula)
        except ValueError:
            raise UserError(f"observables.tsv: noiseFormula {o.noise_formula!r} of {o.observable_id!r} must be a "
                            "number for carkinetics calibrate (estimated noise parameters are not supported).") from None
        if o.noise_distribution != "normal":
            raise UserError(f"observables.tsv: noiseDistribution {o.noise_distribution!r} of {o.observable_id!r} "
                            "is not supported by carkinetics calibrate (use normal).")
        error = ck.NormalError(sigma) if o.transformation == "lin" else ck.LogNormalError(
            sigma * (math.log(10.0) if o.transformation == "log10" else 1.0))
        rows.sort(key=lambda m: m.time)
        targets.append(ck.TimeCourseData(o.formula, jnp.asarray([m.time for m in rows]),
                                         jnp.asarray([m.measurement for m in rows]), error,
                                         tuple(f"{o.observable_id}@{m.time:g}" for m in rows), o.name or o.formula))
    return targets


def _calibrate_petab(args, model, regimen, problem) -> int:
    import jax
    import numpy as np

    import carkinetics as ck
    import carkinetics.io as cio
    from carkinetics.plot import plot_timecourse, save_figure

    used = sorted({m.condition_id for m in problem.measurements})
    if len(used) != 1:
        raise UserError(f"{args.petab}: carkinetics calibrate fits one simulation condition at a time; the "
                        f"measurements use {used}. Split the problem per condition.")
    cond = used[0]
    model = problem.apply(model, cond)
    ids = {cio.parameter_id(n): n for n in ck.parameters(model)}
    estimate = [ids[p.parameter_id] for p in problem.parameters if p.estimate and p.parameter_id in ids]
    if not estimate:
        raise UserError(f"{args.petab}: no parameter of {type(model).__name__} has estimate = 1 in parameters.tsv.")
    targets = petab_targets(problem, model, cond)
    out = _out_dir(args.out)
    prog = Progress(3, "calibrate", enabled=not args.quiet)
    prog.step(f"building the problem ({len(estimate)} parameters, {len(problem.measurements)} measurements)")
    try:
        cp = ck.CalibrationProblem(model, regimen, targets, estimate, priors=None, **{
            k: v for k, v in _simulate_kwargs(model).items() if k in ("solver", "rtol", "atol", "max_steps")})
    except ValueError as err:
        raise UserError(str(err)) from None
    prog.advance()
    prog.step(f"multistart fit ({args.starts} starts, compiled once)")
    res = ck.fit(cp, key=jax.random.key(args.seed), n_starts=args.starts)
    prog.advance()
    prog.step("writing results")
    fitted = res.values()
    path = os.path.join(out, "fitted_parameters.csv")
    allp = ck.parameters(model)
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["parameter", "start_value", "fitted_value", "unit", "tag", "lower_petab", "upper_petab",
                    "within_petab_bounds"])
        bounds = {p.parameter_id: (p.lower, p.upper) for p in problem.parameters}
        for n in estimate:
            lo, hi = bounds[cio.parameter_id(n)]
            v = fitted[n]
            w.writerow([n, repr(float(np.asarray(allp[n].value))), repr(v), allp[n].info.unit, "F", lo, hi,
                        bool(lo <= v <= hi)])
    with open(os.path.join(out, "convergence.md"), "w") as fh:
        fh.write(res.convergence_report() + "\n\n" + res.parameter_table() + "\n")
    sol = _run_simulation(res.model, regimen, np.asarray(cp.ts))
    data = {}
    for o in problem.observables:
        try:
            t, v = problem.measurement_arrays(cond, o.observable_id)
        except ValueError:
            continue
        data[o.formula] = (t, v)
    fig = plot_timecourse(sol, list(data), data=data, title=f"fit to {os.path.basename(os.path.abspath(args.petab))} "
                                                           f"(fitted values are tag F)")
    png = save_figure(fig, os.path.join(out, "fit.png"))
    extra = []
    if _feature("carkinetics.plot", "plot_obs_vs_pred", "plot_residuals")[0]:
        from carkinetics.plot import plot_obs_vs_pred, plot_residuals

        extra.append(save_figure(plot_obs_vs_pred(res), os.path.join(out, "fit_obs_vs_pred.png")))
        extra.append(save_figure(plot_residuals(res), os.path.join(out, "fit_residuals.png")))
    prog.advance()
    prog.close()
    print(res.convergence_report().splitlines()[0])
    for n in estimate:
        print(f"  {n} = {fitted[n]:.6g} {allp[n].info.unit} [F]")
    for p in [path, png, *extra]:
        print(f"wrote {p}")
    print(f"output folder: {out}")
    return EXIT_OK


def _cmd_translate(args) -> int:
    import carkinetics as ck

    ok, why = _feature("carkinetics", "write_translation_report")
    if not ok:
        raise Unavailable(f"carkinetics translate needs ck.write_translation_report: {why}.")
    ok, why = _feature("carkinetics.models", "preset_names")
    if ok:
        import carkinetics.models as models

        for name in (args.mouse, args.human):
            if not name.endswith(".toml") and name not in models.preset_names():
                raise UserError(f"Unknown preset {name!r}; built-in presets are {list(models.preset_names())} "
                                "(or give a .toml path).")
    if args.samples < 0:
        raise UserError(f"--samples must be non-negative, got {args.samples}.")
    if not args.t_end > 0:
        raise UserError(f"--t-end must be positive, got {args.t_end}.")
    gaps = None if args.gaps is None else [g.strip() for g in args.gaps.split(",") if g.strip()]
    out = _out_dir(args.out)
    n_groups = "all gap" if gaps is None else str(len(gaps))
    prog = Progress(1, "translate", enabled=not args.quiet)
    prog.step(f"{args.mouse} -> {args.human}: {n_groups} mechanism groups, {args.samples} parameter samples")
    try:
        paths = ck.write_translation_report(out, a=args.mouse, b=args.human, seed=args.seed, n_samples=args.samples,
                                            gaps=gaps, t_end=args.t_end, scenarios=not args.no_scenarios)
    except ValueError as err:
        raise UserError(str(err)) from None
    prog.advance()
    prog.close()
    for kind, path in paths.items():
        print(f"wrote {path}")
    print(f"output folder: {out}")
    return EXIT_OK


# --------------------------------------------------------------------------------------------------------------
# bench


def _perturbed(space, base, factors):
    """`base * factors` clipped to the declared bounds of `space`'s parameters (a fraction at 0.8 times 1.3 would be
    an invalid member, not a benchmark of the solver)."""
    import numpy as np

    return np.clip(np.asarray(base) * factors, np.asarray(space.lower), np.asarray(space.upper))


def _bench_ensemble(args, model, space, base, regimen, ts, kw, out) -> None:
    """`bench --ensemble N`: N members (every parameter times a log-normal factor, sigma 0.1, seed 0, clipped to its
    declared bounds) with `ck.simulate_ensemble` (Rodas5 when the model's solver is implicit, else Tsit5); per-member
    time, compile time, mean steps; written to bench_ensemble.csv."""
    import diffrax
    import jax
    import jax.numpy as jnp
    import numpy as np

    import carkinetics as ck

    n = int(args.ensemble)
    if n < 1:
        raise UserError(f"--ensemble must be a positive number of members, got {n}.")
    implicit = isinstance(kw.get("solver"), diffrax.AbstractImplicitSolver)
    method = ck.EnsembleRodas5() if implicit else ck.EnsembleTsit5()
    fac = np.exp(0.1 * np.random.default_rng(0).standard_normal((n, base.shape[0])))
    batch = jax.vmap(lambda v: space.with_values(model, v))(jnp.asarray(_perturbed(space, base[None, :], fac)))
    ekw = {k: v for k, v in kw.items() if k in ("rtol", "atol", "t0")}
    n_dev = _device_count(args.devices)
    run = jax.jit(lambda b: ck.simulate_ensemble(b, regimen, ts, method=method, devices=n_dev if n_dev > 1 else None,
                                                 **ekw))
    t0 = time.perf_counter()
    sol = jax.block_until_ready(run(batch))
    first = time.perf_counter() - t0
    times = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(run(batch).y_array)
        times.append(time.perf_counter() - t0)
    best = min(times)
    compile_s = max(first - best, 0.0)
    n_failed = int(np.sum(~np.asarray(sol.ok)))
    path = os.path.join(out, "bench_ensemble.csv")
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["model", "method", "members", "device", "devices", "dtype", "compile_s", "best_batch_s",
                    "per_member_s", "mean_steps", "n_failed"])
        w.writerow([type(model).__name__, type(method).__name__, n, jax.devices()[0].platform, n_dev, str(ts.dtype),
                    f"{compile_s:.4f}", f"{best:.6f}", f"{best / n:.8f}",
                    f"{float(np.mean(np.asarray(sol.num_steps))):.1f}", n_failed])
    print(f"ensemble of {n} ({type(method).__name__}, {n_dev} {jax.devices()[0].platform} device(s)): "
          f"compile {compile_s:.2f} s, "
          f"{1e6 * best / n:.1f} us per member (best of {args.repeats}), failed {n_failed}")
    print(f"wrote {path}")


def _cmd_bench(args) -> int:
    import diffrax
    import jax
    import jax.numpy as jnp
    import numpy as np

    import carkinetics as ck

    model = _apply_parameters(_resolve_model(args.model, args.preset), args.params)
    regimen = _resolve_regimen(args.regimen, args.events, model)
    ts = jnp.asarray(_times(args))
    if args.repeats < 1:
        raise UserError(f"--repeats must be at least 1, got {args.repeats}.")
    kw = _simulate_kwargs(model)
    out = _out_dir(args.out)
    names = [n for n, p in ck.parameters(model).items() if np.ndim(p.value) == 0]
    space = ck.ParameterSpace(model, names)
    base = space.values(model)
    # Python-float parameters become weakly typed arrays inside simulate, perturbed values strongly typed ones;
    # start from the array-valued model so that the timed calls reuse the first compilation.
    model = space.with_values(model, base)
    rows = []
    prog = Progress(args.repeats + 1, "bench", enabled=not args.quiet)
    prog.step("compile + first call")
    t0 = time.perf_counter()
    sol = jax.block_until_ready(ck.simulate(model, regimen, ts, throw=False, **kw))
    compile_s = time.perf_counter() - t0
    prog.advance()
    rng = np.random.default_rng(0)
    for r in range(args.repeats):
        prog.step(f"repeat {r + 1}")
        # new values (1 % perturbation) each call: measures the compiled solve, not a cache
        factors = 1.0 + 0.01 * rng.standard_normal(base.shape[0])
        m = space.with_values(model, jnp.asarray(_perturbed(space, base, factors)))
        t0 = time.perf_counter()
        s = jax.block_until_ready(ck.simulate(m, regimen, ts, throw=False, **kw))
        rows.append((time.perf_counter() - t0, int(s.num_steps), bool(s.ok)))
        prog.advance()
    prog.close()
    best = min(r[0] for r in rows)
    device = jax.devices()[0]
    solver = type(kw.get("solver", diffrax.Tsit5())).__name__
    path = os.path.join(out, "bench.csv")
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["model", "solver", "device", "dtype", "n_save", "compile_plus_first_s", "best_s", "median_s",
                    "num_steps", "all_ok"])
        w.writerow([type(model).__name__, solver, device.platform, str(ts.dtype), ts.shape[0], f"{compile_s:.4f}",
                    f"{best:.6f}", f"{float(np.median([r[0] for r in rows])):.6f}", int(sol.num_steps),
                    all(r[2] for r in rows)])
    print(f"{type(model).__name__} on {device.platform} ({device.device_kind}), {solver}, {ts.dtype}: "
          f"compile+first {compile_s:.2f} s, best of {args.repeats} {1e3 * best:.2f} ms, {int(sol.num_steps)} steps")
    if args.ensemble:
        _bench_ensemble(args, model, space, base, regimen, ts, kw, out)
    print("(wall-clock on this machine; min of repeats with jax.block_until_ready; see benchmarks/ for the "
          "reference workloads)")
    print(f"wrote {path}\noutput folder: {out}")
    return EXIT_OK


# --------------------------------------------------------------------------------------------------------------
# demo


@dataclasses.dataclass
class DemoContext:
    out: str
    quick: bool
    report: Any
    progress: bool = True
    files: list[str] = dataclasses.field(default_factory=list)
    results: dict[str, Any] = dataclasses.field(default_factory=dict)

    def path(self, name: str) -> str:
        p = os.path.join(self.out, name)
        self.files.append(p)
        return p


@dataclasses.dataclass(frozen=True)
class DemoStep:
    """One section of the demo: `requires` lists (module, attribute) pairs that must exist for it to run."""

    title: str
    requires: tuple[tuple[str, str], ...]
    run: Callable[[DemoContext], None]
    depends_on: tuple[str, ...] = ()  # titles of earlier steps whose results it uses


def _step_lymphodepletion(ctx: DemoContext) -> None:
    import numpy as np

    import carkinetics as ck
    from carkinetics.models import OneCompartmentPK, TwoCompartmentPK
    from carkinetics.plot import save_figure

    import matplotlib.pyplot as plt

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
    write_tidy_csv(ctx.path("lymphodepletion_fludarabine.csv"), flu)
    write_tidy_csv(ctx.path("lymphodepletion_cyclophosphamide.csv"), cy)
    auc = float(np.trapezoid(np.asarray(flu.observables.concentration), ts))
    ctx.report.text(
        "Plasma concentrations of the lymphodepleting chemotherapy, from the linear reference PK models with "
        f"published population parameters. Fludarabine AUC over days −6..1: {auc:.3g} mg·d/L."
    )
    ctx.report.figure(png, "Fludarabine and cyclophosphamide plasma concentrations (log scale).")


def _sle_ts(quick: bool):
    import numpy as np

    if quick:
        return np.concatenate([np.arange(-6.0, 28.0, 0.5), np.arange(28.0, 91.0, 3.0)])
    return np.concatenate([np.arange(-6.0, 30.0, 0.25), np.arange(30.0, 366.0, 1.0)])


_SLE_PANELS = ("car_blood", "b_blood", "anti_dsdna", "il6", "sledai", "lymphocytes")


def _step_human(ctx: DemoContext) -> None:
    from carkinetics.models import erlangen_regimen, load_preset
    from carkinetics.plot import plot_timecourse, save_figure

    model = load_preset("human")
    ts = _sle_ts(ctx.quick)
    sol = _run_simulation(model, erlangen_regimen(model), ts)
    ctx.results["human"] = (model, sol)
    write_tidy_csv(ctx.path("human_erlangen.csv"), sol)
    names = [n for n in _SLE_PANELS if n in model.observable_names()]
    fig = plot_timecourse(sol, names, ncols=3, title="Human SLE, Erlangen regimen (Flu/Cy + 1e6 CAR-T/kg)")
    ctx.report.text(
        f"The composed SLE CAR-T model with the human preset, under the Erlangen regimen, days {ts[0]:g} to "
        f"{ts[-1]:g} ({int(sol.num_steps)} solver steps)."
    )
    ctx.report.figure(save_figure(fig, ctx.path("human_erlangen.png")), "Human SLE course (blood counts per µL).")


def _step_mouse(ctx: DemoContext) -> None:
    from carkinetics.models import load_preset, mouse_regimen
    from carkinetics.plot import plot_timecourse, save_figure

    model = load_preset("mouse_nzbw")
    ts = _sle_ts(ctx.quick)
    sol = _run_simulation(model, mouse_regimen(model), ts)
    ctx.results["mouse"] = (model, sol)
    write_tidy_csv(ctx.path("mouse_nzbw.csv"), sol)
    names = [n for n in _SLE_PANELS if n in model.observable_names()]
    sols, labels = [sol], ["mouse (NZB/W)"]
    if "human" in ctx.results:
        sols.insert(0, ctx.results["human"][1])
        labels.insert(0, "human")
    fig = plot_timecourse(sols, names, labels=labels, ncols=3, title="Human vs mouse (NZB/W) course")
    ctx.report.text("The same model with the NZB/W mouse preset, irradiation conditioning and 1e6 CAR-T cells.")
    ctx.report.figure(save_figure(fig, ctx.path("human_vs_mouse.png")), "Human and mouse courses side by side.")


#: Parameters and metrics of the demo's sensitivity step (ranges: half to double the preset value).
_SOBOL_PARAMETERS = ("car.rho", "car.alpha", "car.k_kill", "bcell.d_pb")


class _DemoMetrics:
    """Metrics of the sensitivity step (a plain callable traced under vmap by ck.model_function)."""

    def __init__(self, t_end: float, b_threshold: float):
        self.t_end = t_end
        self.b_threshold = b_threshold  # cells/uL: 5 % of the untreated blood B-cell count

    def __call__(self, sol):
        import jax.numpy as jnp

        import carkinetics as ck

        obs = sol.observables
        return {
            "CAR-T peak [log10 cells/uL]": jnp.log10(ck.metrics.cmax(sol.ts, obs.car_blood, t_start=0.0)),
            "B aplasia [d below 5% of baseline]": ck.metrics.time_below(sol.ts, obs.b_blood, self.b_threshold,
                                                                        t_start=0.0),
            f"anti-dsDNA day {self.t_end:g} [rel.]": ck.metrics.value_at(sol.ts, obs.anti_dsdna, self.t_end),
        }


def _step_sensitivity(ctx: DemoContext) -> None:
    import jax
    import matplotlib.pyplot as plt
    import numpy as np

    import carkinetics as ck
    from carkinetics.models import erlangen_regimen, load_preset
    from carkinetics.plot import plot_sobol, save_figure

    model = load_preset("human")
    t_end = 90.0 if ctx.quick else 180.0
    ts = np.arange(-6.0, t_end + 0.25, 0.5)
    names = list(_SOBOL_PARAMETERS)
    bounds = [[0.5 * float(model.get(n)), 2.0 * float(model.get(n))] for n in names]
    problem = {"names": names, "bounds": bounds}
    metrics = _DemoMetrics(t_end, 0.05 * float(model.get("bcell.b_blood0")))
    fn = ck.model_function(model, erlangen_regimen(model), ts, names, metrics, **_simulate_kwargs(model))
    n = 8 if ctx.quick else 32
    indices, x, res = ck.sobol_analysis(fn, problem, n, key=jax.random.key(0), has_ok=True, progress=ctx.progress)
    metric_names = list(indices)
    fig, axes = plt.subplots(1, len(metric_names), figsize=(4.4 * len(metric_names), 3.4), squeeze=False)
    rows = []
    for ax, m in zip(axes[0], metric_names):
        plot_sobol(indices[m], ax=ax, title=m)
        for i, p in enumerate(names):
            rows.append([m, p, float(indices[m].S1[i]), float(indices[m].S1_conf[i]), float(indices[m].ST[i]),
                         float(indices[m].ST_conf[i])])
    fig.tight_layout()
    png = save_figure(fig, ctx.path("sensitivity_sobol.png"))
    with open(ctx.path("sensitivity_sobol.csv"), "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["metric", "parameter", "S1", "S1_conf", "ST", "ST_conf"])
        w.writerows(rows)
    ctx.report.text(
        f"Sobol indices of three outcomes of the human Erlangen course for {len(names)} parameters, each varied "
        f"uniformly from half to double its preset value (Saltelli design, {n} base samples, "
        f"{x.shape[0]} simulations, {int(res.n_failed)} failed). "
        + ("This is a small illustrative sweep: with so few samples the confidence intervals are wide."
           if ctx.quick else "")
    )
    ctx.report.figure(png, "First-order (S1) and total (ST) Sobol indices with bootstrap 95% intervals.")
    ctx.report.table(["metric", "parameter", "S1", "±", "ST", "±"], rows)


def _step_translation(ctx: DemoContext) -> None:
    import carkinetics as ck
    from carkinetics.plot import attribution_waterfalls, save_figure, translation_heatmap

    gaps = ["G1", "G3", "G4", "G6"] if ctx.quick else ["G1", "G2", "G3", "G4", "G5", "G6"]
    t_end = 120.0 if ctx.quick else 365.0
    tm = ck.sle_translation_map("mouse_nzbw", "human", gaps=gaps, t_end=t_end)
    tm.to_csv(ctx.path("translation_map.csv"))
    heat = save_figure(translation_heatmap(tm), ctx.path("translation_heatmap.png"))
    water = save_figure(attribution_waterfalls(tm, ncols=4), ctx.path("translation_waterfalls.png"))
    ctx.report.text(
        f"Which mechanisms explain the difference between the NZB/W mouse and the human course (days 0 to "
        f"{t_end:g})? Mechanism groups {', '.join(gaps)} (gap ids of the presets) are swapped between the two "
        f"presets and each metric's gap is attributed exactly (Shapley values over all {2 ** len(tm.group_names)} "
        "group subsets); parameters that differ but belong to none of these groups form 'ungrouped'."
    )
    ctx.report.figure(heat, "Share of each metric's mouse-to-human gap by mechanism group.")
    ctx.report.figure(water, "Attribution waterfalls: from the mouse value, one step per mechanism, to the human value.")
    ctx.report.code(tm.narrative())


def _step_sbml(ctx: DemoContext) -> None:
    import carkinetics.io as cio
    from carkinetics.models import erlangen_regimen, load_preset

    model = load_preset("human")
    path = ctx.path("sle_human_erlangen.xml")
    cio.write_sbml(model, path, erlangen_regimen(model))
    with open(ctx.path("sle_human_erlangen.antimony"), "w") as fh:
        fh.write(cio.to_antimony(model, erlangen_regimen(model)))
    ctx.report.text(
        f"The human preset with the Erlangen regimen as SBML ({os.path.basename(path)}) and Antimony, for "
        "libroadrunner, COPASI or AMICI users: states as rate rules, observables as assignment rules, every "
        "parameter named (dots become underscores), doses as events. Time unit: day; the SBML clock starts at the "
        "first dose (day -5), stored in the parameter t_start (carkinetics day = SBML time + t_start). In "
        "libroadrunner use the Adams mode (integrator.stiff = False) for this model."
    )


def _step_parameters(ctx: DemoContext) -> None:
    if "human" not in ctx.results:
        return
    model = ctx.results["human"][0]
    model.parameter_table().to_csv(ctx.path("parameters_human.csv"))
    ctx.report.parameter_table(model, "Human preset: every parameter with unit, bounds, confidence tag and source.")


DEMO_STEPS: tuple[DemoStep, ...] = (
    DemoStep("Lymphodepletion pharmacokinetics", (("carkinetics.models", "TwoCompartmentPK"),), _step_lymphodepletion),
    DemoStep("Human SLE course under the Erlangen regimen",
             (("carkinetics.models", "load_preset"), ("carkinetics.models", "erlangen_regimen")), _step_human),
    DemoStep("Mouse counterpart",
             (("carkinetics.models", "load_preset"), ("carkinetics.models", "mouse_regimen")), _step_mouse),
    DemoStep("Sensitivity sweep (Sobol indices)",
             (("carkinetics", "sobol_analysis"), ("carkinetics", "model_function"), ("carkinetics.plot", "plot_sobol"),
              ("carkinetics.models", "load_preset"), ("carkinetics.models", "erlangen_regimen")), _step_sensitivity),
    DemoStep("Translation map: mouse to human",
             (("carkinetics", "sle_translation_map"), ("carkinetics.plot", "translation_heatmap"),
              ("carkinetics.plot", "attribution_waterfalls")), _step_translation),
    DemoStep("Export to SBML", (("carkinetics.models", "load_preset"), ("antimony", "loadAntimonyString")), _step_sbml),
    DemoStep("Parameters of the human preset", (("carkinetics.models", "load_preset"),), _step_parameters,
             depends_on=("Human SLE course under the Erlangen regimen",)),
)


def run_demo(out: str, *, quick: bool = False, steps: Sequence[DemoStep] = DEMO_STEPS, progress: bool = True) -> tuple[str, list[str], list[str]]:
    """Run the demo steps, write `report.html` into `out`; returns (report path, skipped notes, failed notes)."""
    import carkinetics as ck
    from carkinetics.report import Report

    import jax

    rep = Report("carkinetics demo: CAR T-cell therapy in SLE",
                 subtitle=f"carkinetics {ck.__version__}, {'quick' if quick else 'full'} run on "
                          f"{jax.devices()[0].platform}, float64")
    ctx = DemoContext(out=out, quick=quick, report=rep, progress=progress)
    skipped, failed, done = [], [], []
    prog = Progress(len(steps), "demo", enabled=progress)
    for step in steps:
        prog.step(step.title)
        rep.heading(step.title)
        missing = [why for ok, why in (_feature(m, a) for m, a in step.requires) if not ok]
        missing += [f"it needs the step '{d}', which did not run" for d in step.depends_on if d not in done]
        if missing:
            msg = f"Step '{step.title}' is left out of this demo: {missing[0]}."
            rep.note(msg, kind="skipped")
            skipped.append(msg)
        else:
            t0 = time.perf_counter()
            try:
                step.run(ctx)
                done.append(step.title)
                rep.note(f"Step took {time.perf_counter() - t0:.1f} s.", kind="info")
            except Exception as err:  # a landed feature failing must not hide the rest of the report
                msg = f"Step '{step.title}' failed: {type(err).__name__}: {err}"
                rep.note(msg, kind="warning")
                failed.append(msg)
                if os.environ.get("CARKINETICS_DEBUG"):
                    traceback.print_exc()
        prog.advance()
    prog.close()
    rep.heading("Files")
    rep.table(["file"], [[os.path.basename(f)] for f in ctx.files if os.path.exists(f)])
    path = rep.write(os.path.join(out, "report.html"))
    return path, skipped, failed


def _cmd_demo(args) -> int:
    out = _out_dir(args.out)
    path, skipped, failed = run_demo(out, quick=args.quick, progress=not args.quiet)
    for msg in skipped:
        print(f"note: {msg}")
    for msg in failed:
        print(f"error: {msg}", file=sys.stderr)
    print(f"report: {path}")
    print(f"output folder: {out}")
    return EXIT_INTERNAL if failed else EXIT_OK


# --------------------------------------------------------------------------------------------------------------
# argument parsing


_DEFAULT_MODEL = "TwoCompartmentPK"


def _add_model_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model")
    g.add_argument("--model", default=None,
                   help="model class in carkinetics.models, e.g. TwoCompartmentPK or SLECarTModel "
                        f"(default: {_DEFAULT_MODEL}, or the preset's model)")
    g.add_argument("--preset", default=None,
                   help="named parameter preset of the SLE model (human, mouse_nzbw, mouse_mrl_lpr) or a preset "
                        "TOML file")
    g.add_argument("--params", metavar="TOML", default=None,
                   help='parameter overrides: a [parameters] table of dotted name = value, e.g. "car.rho" = 0.8')


def _add_regimen_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("dosing (days; day 0 = CAR-T infusion)")
    g.add_argument("--regimen", metavar="TOML|erlangen|mouse", default=None,
                   help="a TOML file with [[bolus]], [[infusion]], [[fractional_kill]], [[fludarabine]], "
                        "[[cyclophosphamide]], [[car_t]] tables, or the built-in 'erlangen' / 'mouse' protocols")
    g.add_argument("--events", metavar="CSV", default=None,
                   help="a NONMEM-style event table (TIME, AMT, CMT, EVID, RATE, II, ADDL)")


def _add_time_args(p: argparse.ArgumentParser, t_start=0.0, t_end=28.0, points=281) -> None:
    g = p.add_argument_group("save times")
    g.add_argument("--t-start", type=float, default=t_start, help=f"first save time, days (default {t_start})")
    g.add_argument("--t-end", type=float, default=t_end, help=f"last save time, days (default {t_end})")
    g.add_argument("--points", type=int, default=points, help=f"number of save times (default {points})")


def build_parser() -> argparse.ArgumentParser:
    fmt = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(prog="carkinetics", description=__doc__, epilog=_EPILOG, formatter_class=fmt)
    sub = parser.add_subparsers(dest="command", required=True, metavar="command")

    p = sub.add_parser("demo", help="the main job on built-in defaults: figures + self-contained HTML report",
                       description="Simulate the human SLE course under the Erlangen regimen and its mouse "
                                   "counterpart, run a small sensitivity sweep and the translation map, and write "
                                   "figures (PNG), tidy tables (CSV) and report.html into the output folder.",
                       epilog=_EPILOG, formatter_class=fmt)
    p.add_argument("--out", default="carkinetics_output", help="output folder (default: ./carkinetics_output)")
    p.add_argument("--quick", action="store_true", help="shorter horizon, coarser grids, fewer samples (~1 min)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_demo)

    p = sub.add_parser("simulate", help="simulate one model under one regimen -> tidy CSV + PNG",
                       description="Simulate a model (built-in defaults or a preset, with parameter overrides) "
                                   "under a regimen and write simulation.csv (tidy: time, kind, name, value, unit), "
                                   "simulation.png (one panel per output, units on the axes, optional data "
                                   "overlay) and parameters.csv.",
                       epilog=_EPILOG, formatter_class=fmt)
    _add_model_args(p)
    _add_regimen_args(p)
    _add_time_args(p)
    p.add_argument("--outputs", default=None, help="comma-separated observables/states to plot (default: all observables)")
    p.add_argument("--data", metavar="CSV", default=None,
                   help="measurements to overlay: NONMEM-style (TIME, DV, CMT) or tidy (time, name, value)")
    p.add_argument("--sbml", action="store_true", help="also export the model and regimen as SBML (model.xml)")
    p.add_argument("--out", default="carkinetics_simulate", help="output folder (default: ./carkinetics_simulate)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_simulate)

    p = sub.add_parser("sweep", help="sample parameter ranges, simulate each member, write metrics",
                       description="Sample the parameter ranges of a TOML file ([ranges] name = [lower, upper], "
                                   "log-uniform by default; [sweep] n, seed, log, metrics), simulate every member "
                                   "in vectorised chunks and write sweep.csv (one row per member: parameters and "
                                   "summary metrics such as <observable>_cmax, _auc) and sweep.png.",
                       epilog=_EPILOG, formatter_class=fmt)
    _add_model_args(p)
    _add_regimen_args(p)
    _add_time_args(p)
    p.add_argument("--ranges", metavar="TOML", required=True, help="parameter ranges (see above)")
    p.add_argument("--n", type=int, default=64, help="members when the TOML gives no [sweep] n (default 64)")
    p.add_argument("--chunk-size", type=int, default=None,
                   help="members per compiled batch, split over the devices (default 256 per device)")
    p.add_argument("--devices", type=_devices_arg, default="all", metavar="all|K",
                   help="split each chunk over K devices: 'all' (default) = every GPU, or on CPU one device per "
                        "available core; 1 = one device (one CPU core). Results do not depend on it")
    p.add_argument("--out", default="carkinetics_sweep", help="output folder (default: ./carkinetics_sweep)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_sweep)

    p = sub.add_parser("calibrate", help="fit model parameters to a PEtab-style problem",
                       description="Read a PEtab-style problem (measurements.tsv, parameters.tsv, conditions.tsv, "
                                   "observables.tsv; one simulation condition) and fit the parameters marked "
                                   "estimate = 1 by maximum likelihood (multistart Adam + L-BFGS); writes "
                                   "fitted_parameters.csv (values tagged F), convergence.md and fit diagnostics "
                                   "(fit.png: data vs fitted trajectories; fit_obs_vs_pred.png, fit_residuals.png).",
                       epilog=_EPILOG, formatter_class=fmt)
    _add_model_args(p)
    _add_regimen_args(p)
    p.add_argument("--petab", metavar="DIR", required=True, help="folder with the four PEtab TSV tables")
    p.add_argument("--starts", type=int, default=4, help="multistart count (default 4)")
    p.add_argument("--seed", type=int, default=0, help="seed of the multistart points (default 0)")
    p.add_argument("--out", default="carkinetics_calibrate", help="output folder (default: ./carkinetics_calibrate)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_calibrate)

    p = sub.add_parser("translate", help="mouse -> human translation map (which mechanisms explain the gap)",
                       description="Swap mechanism groups (the presets' gap ids) between the mouse and human "
                                   "presets and attribute the difference of each outcome metric to mechanisms "
                                   "(exact Shapley values); writes translation_heatmap.png, "
                                   "translation_waterfalls.png, translation_map.csv/.md, a narrative and the "
                                   "scenario-knob table.",
                       epilog=_EPILOG, formatter_class=fmt)
    p.add_argument("--mouse", default="mouse_nzbw", help="first (mouse) preset or TOML path (default mouse_nzbw)")
    p.add_argument("--human", default="human", help="second preset or TOML path (default human)")
    p.add_argument("--gaps", default=None,
                   help="comma-separated gap ids used as mechanism groups, e.g. G1,G3,G4,G6 (default: all; cost "
                        "grows as 2^groups simulations)")
    p.add_argument("--samples", type=int, default=0,
                   help="parameter samples for uncertainty intervals (default 0: point estimate)")
    p.add_argument("--seed", type=int, default=0, help="seed of the parameter samples (default 0)")
    p.add_argument("--t-end", type=float, default=365.0, help="horizon of the metrics, days (default 365)")
    p.add_argument("--no-scenarios", action="store_true", help="skip the scenario-knob table")
    p.add_argument("--out", default="carkinetics_translate", help="output folder (default: ./carkinetics_translate)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_translate)

    p = sub.add_parser("bench", help="time the solver core on this machine (compile time, best-of-N solve)",
                       description="Compile and time ck.simulate for one model and regimen: compile + first call, "
                                   "then the best and median of --repeats calls with perturbed parameter values "
                                   "(jax.block_until_ready). Writes bench.csv.",
                       epilog=_EPILOG, formatter_class=fmt)
    _add_model_args(p)
    _add_regimen_args(p)
    _add_time_args(p)
    p.add_argument("--repeats", type=int, default=5, help="timed calls after compilation (default 5)")
    p.add_argument("--ensemble", type=int, default=0, metavar="N",
                   help="also time ck.simulate_ensemble on N perturbed members (per-member time; bench_ensemble.csv)")
    p.add_argument("--devices", type=_devices_arg, default="all", metavar="all|K",
                   help="devices the --ensemble members are split over: 'all' (default) = every GPU, or on CPU one "
                        "device per available core; 1 = one device (one CPU core)")
    p.add_argument("--out", default="carkinetics_bench", help="output folder (default: ./carkinetics_bench)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_bench)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `carkinetics` command; returns the exit code (see `carkinetics --help`)."""
    parser = build_parser()
    args = parser.parse_args(argv)  # exits with code 2 and a usage message on bad arguments
    if argv is None:  # the `carkinetics` command itself; a caller's own process (main([...])) keeps its XLA_FLAGS
        wants_devices = args.command != "bench" or args.ensemble > 0  # plain `bench` times one device
        _setup_host_devices(getattr(args, "devices", None) if wants_devices else None)
    _setup_numerics()
    try:
        return int(args.func(args))
    except UserError as err:
        print(f"carkinetics {args.command}: error: {err}", file=sys.stderr)
        return EXIT_USAGE
    except Unavailable as err:
        print(f"carkinetics {args.command}: not available: {err}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    except NumericalFailure as err:
        print(f"carkinetics {args.command}: solver failure: {err}", file=sys.stderr)
        return EXIT_NUMERICAL
    except KeyboardInterrupt:
        print(f"carkinetics {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
