"""Parser assembly (built-in commands + plugin commands), dispatch and exit codes."""

from __future__ import annotations

import argparse
import contextlib
import signal
import sys
import textwrap
import threading
from collections.abc import Sequence

import carkinetics as ck

from ._bench import BenchCommand
from ._calibrate import CalibrateCommand
from ._common import (
    EPILOG,
    EXIT_NUMERICAL,
    EXIT_PROCESS_FAILED,
    EXIT_UNAVAILABLE,
    EXIT_USAGE,
    FitFailed,
    NumericalFailure,
    Unavailable,
    UserError,
    add_output_args,
    check_out_dir,
    setup_host_devices,
    setup_numerics,
)
from ._fit_population import FitPopulationCommand
from ._plugins import Command, Context, Plugins, UnavailableCommand
from ._simulate import SimulateCommand
from ._sweep import SweepCommand

BUILTIN_COMMANDS: tuple[type[Command], ...] = (
    SimulateCommand,
    SweepCommand,
    CalibrateCommand,
    FitPopulationCommand,
    BenchCommand,
)


class _ArgumentParser(argparse.ArgumentParser):
    """argparse with one-line usage errors: `carkinetics <command>: error: <message>` on stderr, exit code 2."""

    def error(self, message: str):
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


class _Terminated(KeyboardInterrupt):
    """SIGTERM outside a chunked run (where `ck.sweep` stops between chunks itself)."""


@contextlib.contextmanager
def _sigterm_stops():
    """Within the block SIGTERM raises `_Terminated` (as SIGINT raises KeyboardInterrupt), so that a command stopped
    by either signal leaves through the same clean path: one line, exit 143, no half-written file."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        raise _Terminated

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _stopped(cmd: Command, args: argparse.Namespace, signum: int) -> str:
    """The line for a command stopped by `signum` outside a chunked run."""
    how = (
        f"rerun the same command with --checkpoint {args.checkpoint} to resume from its finished {cmd.checkpoint_unit}"
        if getattr(args, "checkpoint", None)
        else "rerun the command to start again"
    )
    return (
        f"carkinetics {cmd.name}: stopped by {signal.Signals(signum).name} before it finished; every file "
        f"already in {args.out} is complete (files are written whole or not at all); {how}."
    )


#: Arguments that size what a command holds in memory at once, as (attribute, flag), in the order they are suggested.
_SIZE_ARGS = (
    ("chunk_size", "--chunk-size"),
    ("batch_size", "--batch-size"),
    ("ensemble", "--ensemble"),
    ("points", "--points"),
    ("starts", "--starts"),
    ("samples", "--samples"),
    ("n", "--n"),
    ("devices", "--devices"),
)


def _out_of_memory(err: BaseException) -> bool:
    import jax

    return isinstance(err, MemoryError) or (
        isinstance(err, jax.errors.JaxRuntimeError) and "RESOURCE_EXHAUSTED" in str(err)
    )


def _memory_line(cmd: Command, args: argparse.Namespace, err: BaseException) -> str:
    """The line for a command that ran out of memory: what failed and which of its arguments to lower."""
    what = str(err).strip().splitlines()[0][:200] if str(err).strip() else type(err).__name__
    flags = [flag for attr, flag in _SIZE_ARGS if hasattr(args, attr)]
    how = f"lower {', '.join(flags)} (what is held in memory at once)" if flags else "use smaller inputs"
    return f"carkinetics {cmd.name}: error: out of memory ({what}); {how}."


def commands() -> list[Command]:
    """The built-in commands followed by the plugin commands (sorted by name)."""
    builtin = [cls() for cls in BUILTIN_COMMANDS]
    return builtin + Plugins.commands(reserved=[c.name for c in builtin])


def build_parser(cmds: Sequence[Command]) -> argparse.ArgumentParser:
    fmt = argparse.RawDescriptionHelpFormatter
    description = textwrap.fill(
        "The carkinetics command line: `carkinetics <command> ...`. Times are days (day 0 = CAR-T infusion). Without "
        "--model/--preset, simulate and bench run the default preset of the installed plugins (the SLE human preset "
        "under its standard regimen). Run `carkinetics <command> --help` for the inputs of each command; "
        "docs/cli.md describes the input files (regimen and sweep TOML, data tables).",
        100,
    )
    parser = _ArgumentParser(prog="carkinetics", description=description, epilog=EPILOG, formatter_class=fmt)
    parser.add_argument("--version", action="version", version=f"carkinetics {ck.__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="command", parser_class=_ArgumentParser)
    for cmd in cmds:
        p = sub.add_parser(
            cmd.name, help=cmd.help, description=cmd.description or cmd.help, epilog=EPILOG, formatter_class=fmt
        )
        cmd.add_arguments(p)
        add_output_args(p, cmd.default_out or f"carkinetics_{cmd.name}")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `carkinetics` command; returns the exit code (see `carkinetics --help`).

    Usage mistakes print one line on stderr naming the argument and return 2; `--help` prints and returns 0.
    """
    cmds = commands()
    by_name = {c.name: c for c in cmds}
    parser = build_parser(cmds)
    try:
        args, unknown = parser.parse_known_args(argv)
        cmd = by_name[args.command]
        if unknown and not isinstance(cmd, UnavailableCommand):  # (which reports why it cannot run instead)
            parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    except SystemExit as done:  # --help, or a usage error already printed by the parser
        return int(done.code or 0)
    if argv is None:  # the `carkinetics` command itself; a caller's own process (main([...])) keeps its XLA_FLAGS
        setup_host_devices(cmd.host_devices(args))
    setup_numerics()
    ctx = Context(command=cmd.name, out=args.out, quiet=args.quiet, plugins=Plugins(), outputs=tuple(cmd.outputs))
    try:
        if not isinstance(cmd, UnavailableCommand):
            check_out_dir(args.out)  # before any computation: an unwritable --out is found now, not at the end
        with _sigterm_stops():
            return int(cmd.run(args, ctx))
    except UserError as err:
        print(f"carkinetics {cmd.name}: error: {err}", file=sys.stderr)
        return EXIT_USAGE
    except Unavailable as err:
        print(f"carkinetics {cmd.name}: not available: {err}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    except FitFailed as err:
        print(f"carkinetics {cmd.name}: the fit FAILED: {err}", file=sys.stderr)
        return EXIT_NUMERICAL
    except NumericalFailure as err:
        print(f"carkinetics {cmd.name}: solver failure: {err}", file=sys.stderr)
        return EXIT_NUMERICAL
    except ck.SimulationError as err:
        print(f"carkinetics {cmd.name}: solver failure: {err}", file=sys.stderr)
        return EXIT_NUMERICAL
    except ck.ProcessFailed as err:
        print(f"carkinetics {cmd.name}: {err}", file=sys.stderr)
        return EXIT_PROCESS_FAILED
    except (MemoryError, RuntimeError) as err:  # jax.errors.JaxRuntimeError is a RuntimeError
        if not _out_of_memory(err):
            raise
        print(_memory_line(cmd, args, err), file=sys.stderr)
        return EXIT_USAGE
    except ck.Interrupted as err:
        print(f"carkinetics {cmd.name}: {err}", file=sys.stderr)
        return err.exit_code
    except _Terminated:
        print(_stopped(cmd, args, signal.SIGTERM), file=sys.stderr)
        return 128 + signal.SIGTERM
    except KeyboardInterrupt:
        print(_stopped(cmd, args, signal.SIGINT), file=sys.stderr)
        return 128 + signal.SIGINT
