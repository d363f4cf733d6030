"""Parser assembly (built-in commands + plugin commands), dispatch and exit codes."""

from __future__ import annotations

import argparse
import sys

import carkinetics as ck
import textwrap
from collections.abc import Sequence

from ._bench import BenchCommand
from ._calibrate import CalibrateCommand
from ._fit_population import FitPopulationCommand
from ._common import (
    EPILOG,
    EXIT_NUMERICAL,
    EXIT_PROCESS_FAILED,
    EXIT_UNAVAILABLE,
    EXIT_USAGE,
    NumericalFailure,
    Unavailable,
    UserError,
    add_output_args,
    setup_host_devices,
    setup_numerics,
)
from ._plugins import Command, Context, Plugins, UnavailableCommand
from ._simulate import SimulateCommand
from ._sweep import SweepCommand

BUILTIN_COMMANDS: tuple[type[Command], ...] = (SimulateCommand, SweepCommand, CalibrateCommand, FitPopulationCommand,
                                               BenchCommand)


class _ArgumentParser(argparse.ArgumentParser):
    """argparse with one-line usage errors: `carkinetics <command>: error: <message>` on stderr, exit code 2."""

    def error(self, message: str):
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def commands() -> list[Command]:
    """The built-in commands followed by the plugin commands (sorted by name)."""
    builtin = [cls() for cls in BUILTIN_COMMANDS]
    return builtin + Plugins.commands(reserved=[c.name for c in builtin])


def build_parser(cmds: Sequence[Command]) -> argparse.ArgumentParser:
    fmt = argparse.RawDescriptionHelpFormatter
    description = textwrap.fill("The carkinetics command line: `carkinetics <command> ...`. Times are days (day 0 = CAR-T "
                   "infusion). Without --model/--preset, simulate and bench run the default preset of the installed "
                   "plugins (the SLE human preset under its standard regimen). Run `carkinetics <command> --help` "
                   "for the inputs of each command.", 100)
    parser = _ArgumentParser(prog="carkinetics", description=description, epilog=EPILOG, formatter_class=fmt)
    sub = parser.add_subparsers(dest="command", required=True, metavar="command", parser_class=_ArgumentParser)
    for cmd in cmds:
        p = sub.add_parser(cmd.name, help=cmd.help, description=cmd.description or cmd.help, epilog=EPILOG,
                           formatter_class=fmt)
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
    ctx = Context(command=cmd.name, out=args.out, quiet=args.quiet, plugins=Plugins())
    try:
        return int(cmd.run(args, ctx))
    except UserError as err:
        print(f"carkinetics {cmd.name}: error: {err}", file=sys.stderr)
        return EXIT_USAGE
    except Unavailable as err:
        print(f"carkinetics {cmd.name}: not available: {err}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    except NumericalFailure as err:
        print(f"carkinetics {cmd.name}: solver failure: {err}", file=sys.stderr)
        return EXIT_NUMERICAL
    except ck.SimulationError as err:
        print(f"carkinetics {cmd.name}: solver failure: {err}", file=sys.stderr)
        return EXIT_NUMERICAL
    except ck.ProcessFailed as err:
        print(f"carkinetics {cmd.name}: {err}", file=sys.stderr)
        return EXIT_PROCESS_FAILED
    except ck.Interrupted as err:
        print(f"carkinetics {cmd.name}: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print(f"carkinetics {cmd.name}: interrupted", file=sys.stderr)
        return 130
