"""What every command shares: exit codes and errors, argument groups, devices, progress, output folders, TOML."""

from __future__ import annotations

import argparse
import glob
import math
import os
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from typing import Any, Literal, TextIO, overload

#: Exit codes (also listed in `carkinetics --help`).
EXIT_OK = 0
EXIT_INTERNAL = 1  # a bug: printed with a traceback
EXIT_USAGE = 2  # a user mistake: bad arguments or input files (no traceback)
EXIT_UNAVAILABLE = 3  # the requested feature is not part of this installation
EXIT_NUMERICAL = 4  # the solver or a fit failed (e.g. max_steps reached, a fit that did not converge)
EXIT_PROCESS_FAILED = 5  # a process of a multi-process run stopped responding (resume from the checkpoint)

EPILOG = f"""exit codes: {EXIT_OK} success; {EXIT_USAGE} bad arguments or input files, or too little memory for them
(the message says which);
{EXIT_UNAVAILABLE} feature not available in this installation; {EXIT_NUMERICAL} the solver or the fit failed for these
inputs; {EXIT_PROCESS_FAILED} a process of a multi-process run failed (rerun with the same --checkpoint to resume);
130/143 stopped by SIGINT/SIGTERM after the chunk, start or iteration in progress (rerun with the same
--checkpoint to resume);
{EXIT_INTERNAL} internal error (please report it with the traceback)."""

ENGINES = ("ensemble", "vmap")

#: Most save times a command accepts (`--points`): a million save times of a 40-state model are 320 MB per member.
MAX_POINTS = 1_000_000
#: Most members of one sweep (`--n`, `[sweep] n`) and most simulations per compiled chunk (`--chunk-size`,
#: `--batch-size`): a table of a hundred million rows is already ~10 GB.
MAX_MEMBERS = 100_000_000
#: Most members of `bench --ensemble` (their whole trajectories are kept) and timed repeats of `bench`.
MAX_ENSEMBLE = 1_000_000
MAX_REPEATS = 10_000


class UserError(Exception):
    """A mistake in the command line or the input files: reported in one line, exit code 2."""


class Unavailable(Exception):
    """A feature that this installation does not provide: exit code 3."""


class NumericalFailure(Exception):
    """The solver did not succeed for the given inputs: exit code 4."""


class FitFailed(NumericalFailure):
    """A fit failed for the given inputs (it could not start, or its best start did not converge): exit code 4."""


def note(message: str) -> None:
    """One line on stderr that tells the user about a choice made for them (a default, a value taken from the
    model, files removed); printed also with `--quiet`, which silences only progress."""
    print(f"note: {message}", file=sys.stderr, flush=True)


def setup_numerics() -> None:
    """CLI entry point (not library code): float64 for reports, headless matplotlib."""
    import jax

    jax.config.update("jax_enable_x64", True)
    import matplotlib

    matplotlib.use("Agg")


# ----------------------------------------------------------------------------------------------------------------
# argument groups


def whole_number(lo: int, hi: int | None = None, what: str = "") -> Callable[[str], int]:
    """argparse type: a whole number in `[lo, hi]` (`1e4` is accepted as 10000; `8.7` and `many` are refused with a
    message that names the range)."""

    def parse(text: str) -> int:
        value = None
        try:
            value = int(text)
        except ValueError:
            try:
                f = float(text)
                if math.isfinite(f) and f.is_integer():
                    value = int(f)
            except ValueError:
                pass
        rng = f"at least {lo}" if hi is None else f"between {lo} and {hi}"
        if value is None:
            raise argparse.ArgumentTypeError(f"must be a whole number {rng}{what}, got {text!r}")
        if value < lo or (hi is not None and value > hi):
            raise argparse.ArgumentTypeError(f"must be {rng}{what}, got {value}")
        return value

    return parse


def finite_number(text: str) -> float:
    """argparse type: a finite number (`nan` and `inf` are refused)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
    return value


#: `--seed`: what `jax.random.key` accepts.
seed_arg = whole_number(0, 2**32 - 1)


def add_model_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model (default: the default preset of the installed plugins, e.g. the SLE human preset)")
    g.add_argument(
        "--model",
        default=None,
        help="an installed model class, e.g. TwoCompartmentPK or SLECarTModel (default parameters; see --preset)",
    )
    g.add_argument(
        "--preset",
        default=None,
        help="a named preset (model, standard regimen and save grid), e.g. human, mouse_nzbw, "
        "mouse_mrl_lpr, or a preset file",
    )
    g.add_argument(
        "--params",
        metavar="TOML",
        default=None,
        help='parameter overrides: a [parameters] table of dotted name = value, e.g. "car.rho" = 0.8',
    )


def add_regimen_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("dosing (days; day 0 = CAR-T infusion; default: the preset's standard regimen)")
    g.add_argument(
        "--regimen",
        metavar="TOML|NAME|none",
        default=None,
        help="a TOML file with [[bolus]], [[infusion]], [[fractional_kill]], [[fludarabine]], "
        "[[cyclophosphamide]], [[car_t]] tables, a regimen named by a plugin (e.g. erlangen, "
        "mouse), or none",
    )
    g.add_argument(
        "--events",
        metavar="CSV",
        default=None,
        help="a NONMEM-style event table (TIME, AMT, CMT, EVID, RATE, II, ADDL)",
    )


def add_time_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("save times (default: the preset's save grid, else 0 to 28 d at 281 points)")
    g.add_argument(
        "--t-start", type=finite_number, default=None, help="first save time, days (default 0, or the preset's)"
    )
    g.add_argument(
        "--t-end", type=finite_number, default=None, help="last save time, days (default 28, or the preset's)"
    )
    g.add_argument(
        "--points",
        type=whole_number(2, MAX_POINTS),
        default=None,
        help=f"number of evenly spaced save times, 2 to {MAX_POINTS:,} (default 281)",
    )


def add_run_args(p: argparse.ArgumentParser, *, times: bool = True) -> None:
    """The model, dosing and (with `times`) save-time groups: what `_inputs.resolve_run` reads."""
    add_model_args(p)
    add_regimen_args(p)
    if times:
        add_time_args(p)


def add_engine_arg(p: argparse.ArgumentParser, default: str | None = "ensemble", default_help: str = "") -> None:
    p.add_argument(
        "--engine",
        choices=ENGINES,
        default=default,
        help="ensemble: the batched solver (the model class's ensemble method); vmap: jax.vmap of the "
        "per-member diffrax solver (the model class's diffrax solver). They agree to the solver "
        f"tolerance (default: {default_help or default})",
    )


def devices_arg(text: str) -> str | int:
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


def add_devices_arg(p: argparse.ArgumentParser, default: str | None = "all", what: str = "the members") -> None:
    p.add_argument(
        "--devices",
        type=devices_arg,
        default=default,
        metavar="all|K",
        help=f"split {what} over K devices: 'all' (default) = every GPU, or on CPU one device per "
        "available core; 1 = one device (one CPU core). Results depend on it only by round-off",
    )


def add_distributed_args(p: argparse.ArgumentParser) -> None:
    """`--coordinator HOST:PORT --num-processes N --process-id I` for runs across processes and hosts (defaults from
    JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID or a Slurm step; see `ck.distributed_setup`)."""
    g = p.add_argument_group("across processes and hosts (jax.distributed)")
    g.add_argument(
        "--coordinator",
        metavar="HOST:PORT",
        default=None,
        help="address of process 0's coordination service (default: from the environment)",
    )
    g.add_argument("--num-processes", type=whole_number(1), default=None, metavar="N", help="number of processes")
    g.add_argument("--process-id", type=whole_number(0), default=None, metavar="I", help="this process's id, 0..N-1")


def join_processes(args: argparse.Namespace, devices: str | int | None) -> tuple[Any, int]:
    """Start the run of `add_distributed_args` (`ck.distributed_setup`, a `UserError` for a bad setting) and
    resolve `--devices`: `(the DistributedSetting, the devices a sweep splits each chunk over)`. Several processes
    use every device of every process; one process uses `device_count(devices)` (1 for `None`). Call it before any
    other JAX work; every process computes, and only process 0 (`setting.process_id == 0`) writes files."""
    import jax

    import carkinetics as ck

    try:
        setting = ck.distributed_setup(args.coordinator, args.num_processes, args.process_id)
    except ValueError as err:
        raise UserError(str(err)) from None
    if setting.num_processes > 1:
        return setting, len(jax.devices())
    return setting, 1 if devices is None else device_count(devices)


def add_checkpoint_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--checkpoint",
        metavar="DIR",
        default=None,
        help="write each finished chunk to DIR; rerunning the same command resumes from it (a DIR written "
        "by different inputs is refused)",
    )


def add_output_args(p: argparse.ArgumentParser, default_out: str) -> None:
    p.add_argument("--out", default=default_out, help=f"output folder (default: ./{default_out})")
    p.add_argument("--quiet", action="store_true", help="no progress line")


# ----------------------------------------------------------------------------------------------------------------
# devices


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def setup_host_devices(devices: str | int | None) -> None:
    """Before JAX starts: one CPU device per core asked for (`--devices`), so that members run on several cores.

    XLA gives a CPU one device unless `XLA_FLAGS` has `--xla_force_host_platform_device_count`; the ensemble solver
    is single-threaded per device, so sharding the members over K host devices uses K cores. Left alone when
    `XLA_FLAGS` already sets the count or JAX has started, and only called for the `carkinetics` command itself
    (`main()` without arguments), never for `main([...])` inside someone's Python process. On a GPU this only adds
    CPU devices, which are not used (`jax.devices()` lists the GPUs). More devices than cores are never created
    (64 host devices on 2 cores would only compete for them): `device_count` then reports what is available.
    """
    if devices is None:
        return
    k = available_cores() if devices == "all" else min(int(devices), available_cores())
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


def device_count(requested: str | int) -> int:
    """How many devices a `--devices all|K` request uses in this process (`UserError` if K are not available)."""
    import jax

    available = len(jax.devices())
    if requested == "all":
        return available
    if int(requested) > available:
        backend = jax.default_backend()
        why = (
            f"this machine has {available_cores()} CPU core(s), and one device per core is the most that helps; "
            "in a Python process the count is fixed when JAX starts: set "
            "XLA_FLAGS=--xla_force_host_platform_device_count=K before"
            if backend == "cpu"
            else "ask for at most that many"
        )
        raise UserError(f"--devices {requested}: only {available} {backend} device(s) are available ({why}).")
    return int(requested)


# ----------------------------------------------------------------------------------------------------------------
# progress, output folders, TOML


def _duration(seconds: float) -> str:
    seconds = max(0.0, float(seconds))
    if seconds < 60:
        return f"{seconds:.0f}s"
    return f"{int(seconds // 60)}m{int(seconds % 60):02d}s"


class StepProgress:
    """Progress through the steps of a command on stderr: a redrawn line on a terminal, one line per step otherwise.

    `steps` is a number of equal steps or one weight per step; once a step has finished, the line shows an ETA
    that assumes the remaining time is proportional to the remaining weight.
    """

    def __init__(self, steps: int | Sequence[float], label: str, *, enabled: bool = True, stream: TextIO | None = None):
        self.weights = [1.0] * max(int(steps), 1) if isinstance(steps, int) else [float(w) for w in steps]
        self.label = label
        self.enabled = enabled
        self.stream = sys.stderr if stream is None else stream
        self.done = 0
        self.t0 = time.perf_counter()
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())

    def line(self, what: str) -> str:
        elapsed = time.perf_counter() - self.t0
        total = len(self.weights)
        width = 24
        filled = int(width * self.done / total)
        text = f"{self.label} [{'#' * filled}{'-' * (width - filled)}] {self.done}/{total} {_duration(elapsed)}"
        done_w = sum(self.weights[: self.done])
        left_w = sum(self.weights[self.done :])
        if self.done and done_w > 0 and left_w > 0:
            text += f", ETA ~{_duration(elapsed * left_w / done_w)}"
        return f"{text}  {what}"

    def step(self, what: str) -> None:
        """Announce the step about to run (shows the line before the work starts)."""
        if not self.enabled:
            return
        msg = self.line(what)
        self.stream.write("\r" + msg[:120].ljust(120) if self.tty else msg + "\n")
        self.stream.flush()

    def advance(self) -> None:
        self.done += 1

    def close(self) -> None:
        if self.enabled:
            end = "\n" if self.tty else ""
            self.stream.write(
                f"{end}{self.label}: {self.done}/{len(self.weights)} done in {time.perf_counter() - self.t0:.1f}s\n"
            )
            self.stream.flush()


def check_out_dir(path: str) -> None:
    """Before any computation: `--out` is a folder that can be written, or can be created (its nearest existing
    parent is a writable folder). `UserError` (exit 2) otherwise."""
    out = os.path.abspath(path)
    probe = out
    while not os.path.exists(probe):
        parent = os.path.dirname(probe)
        if parent == probe:
            break
        probe = parent
    if not os.path.isdir(probe):
        what = "is a file, not a folder" if probe == out else f"cannot be created: {probe} is a file, not a folder"
        raise UserError(f"--out {path!r} {what}.")
    _check_writable(path, probe)


def _check_writable(path: str, folder: str) -> None:
    """Write and remove a small file in `folder` (permissions alone do not tell: read-only file systems, root)."""
    try:
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as err:
        where = "" if os.path.abspath(path) == folder else f" (in {folder})"
        raise UserError(f"--out {path!r}: cannot write files there{where}: {err.strerror or err}.") from None


def make_out_dir(path: str, outputs: Sequence[str] = ()) -> str:
    """Create the output folder, check that it can be written and remove the files an earlier run of the same
    command left there (`outputs`: file names or glob patterns); returns the absolute path."""
    out = os.path.abspath(path)
    check_out_dir(path)
    try:
        os.makedirs(out, exist_ok=True)
    except OSError as err:
        raise UserError(f"--out {path!r}: cannot create the folder ({err.strerror}).") from None
    _check_writable(path, out)
    stale = sorted(
        {
            f
            for pattern in outputs
            for f in glob.glob(os.path.join(glob.escape(out), pattern))
            if os.path.isfile(f) or os.path.islink(f)
        }
    )
    for f in stale:
        try:
            os.remove(f)
        except OSError as err:
            raise UserError(
                f"--out {path!r}: cannot remove {os.path.basename(f)} of an earlier run ({err.strerror})."
            ) from None
    if stale:
        names = [os.path.basename(f) for f in stale]
        shown = ", ".join(names[:8]) + (f" and {len(names) - 8} more" if len(names) > 8 else "")
        note(f"removed {len(names)} file(s) of an earlier run from {out} (this command writes them): {shown}")
    return out


def check_input_file(path: str, flag: str, what: str) -> None:
    """A usage error naming `flag` unless `path` is an existing file (a folder, or nothing there, is refused)."""
    if os.path.isdir(path):
        raise UserError(f"{flag} {path!r} is a folder; give the {what} file.")
    if not os.path.isfile(path):
        raise UserError(f"{flag} {path!r}: the {what} file does not exist.")


def load_toml(path: str, flag: str) -> dict:
    """The TOML file given by the argument `flag` (named in every message about the file itself)."""
    import tomllib

    check_input_file(path, flag, "TOML")
    try:
        with open(path, "rb") as fh:
            return tomllib.load(fh)
    except tomllib.TOMLDecodeError as err:
        raise UserError(f"{flag} {path} is not valid TOML: {err}.") from None
    except UnicodeDecodeError:
        raise UserError(f"{flag} {path} is not UTF-8 text (TOML files are UTF-8).") from None
    except OSError as err:
        raise UserError(f"{flag} {path}: cannot be read ({err.strerror}).") from None


def is_number(v: object) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


#: What `toml_value` checks: kind -> (test, description for the message).
TOML_KINDS: dict[str, tuple[Callable[[object], bool], str]] = {
    "number": (is_number, "a finite number"),
    "whole": (lambda v: is_number(v) and float(v).is_integer(), "a whole number"),  # type: ignore[arg-type]
    "bool": (lambda v: isinstance(v, bool), "true or false"),
    "string": (lambda v: isinstance(v, str) and v != "", "a non-empty string (in quotes)"),
    "table": (lambda v: isinstance(v, dict), "a table"),
    "numbers": (
        lambda v: isinstance(v, list) and len(v) > 0 and all(is_number(x) for x in v),
        "a non-empty array of finite numbers, e.g. [-5, -4, -3]",
    ),
    "strings": (
        lambda v: isinstance(v, list) and len(v) > 0 and all(isinstance(x, str) and x for x in v),
        'a non-empty array of strings, e.g. ["a", "b"]',
    ),
}


@overload
def toml_value(value: object, kind: Literal["whole"], where: str) -> int: ...
@overload
def toml_value(value: object, kind: Literal["number"], where: str) -> int | float: ...
@overload
def toml_value(value: object, kind: Literal["bool"], where: str) -> bool: ...
@overload
def toml_value(value: object, kind: Literal["string"], where: str) -> str: ...
@overload
def toml_value(value: object, kind: Literal["table"], where: str) -> dict[str, Any]: ...
@overload
def toml_value(value: object, kind: Literal["numbers"], where: str) -> list[int | float]: ...
@overload
def toml_value(value: object, kind: Literal["strings"], where: str) -> list[str]: ...
@overload
def toml_value(value: object, kind: str, where: str) -> object: ...
def toml_value(value: object, kind: str, where: str) -> Any:
    """`value` of a TOML key checked against `kind` (see `TOML_KINDS`; `whole` gives an int), or `UserError` naming
    `where` (file, table and key), what was expected and what was found."""
    test, what = TOML_KINDS[kind]
    if not test(value):
        raise UserError(f"{where} must be {what}, got {toml_repr(value)}.")
    return int(value) if kind == "whole" else value  # type: ignore[arg-type]


def toml_repr(value: object) -> str:
    """A value as it would appear in TOML (strings in double quotes, booleans lower case)."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, str):
        return '"' + value.replace('"', '\\"') + '"'
    if isinstance(value, list):
        return "[" + ", ".join(toml_repr(v) for v in value) + "]"
    if isinstance(value, dict):
        return "a table {" + ", ".join(f"{k} = {toml_repr(v)}" for k, v in value.items()) + "}"
    return repr(value)


def check_keys(table: dict, allowed: Sequence[str], where: str) -> None:
    unknown = sorted(set(table) - set(allowed))
    if unknown:
        raise UserError(f"{where}: unknown key(s) {unknown}; allowed keys are {sorted(allowed)}.")


def check_positive(name: str, value: int) -> int:
    """`value` >= 1 (for values that do not come through a `whole_number` argument type)."""
    if value < 1:
        raise UserError(f"{name} must be at least 1, got {value}.")
    return value
