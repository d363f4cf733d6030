"""The `carkinetics` command line, and the plugin protocol through which installed packages extend it.

Built-in commands (one module each): `simulate` (`_simulate.py`), `sweep` (`_sweep.py`, with its TOML spec
language), `calibrate` (`_calibrate.py`, PEtab problems), `fit-population` (`_fit_population.py`, mixed-effects fits of
NONMEM-style data sets), `bench` (`_bench.py`). Shared argument groups, devices,
progress and output folders are in `_common.py`; turning arguments into a model, regimen and save grid is
`_inputs.py`; parser assembly, dispatch and exit codes are `_main.py`; discovery is `_plugins.py`.

Exit codes: 0 success; 1 internal error (a traceback); 2 a user mistake (one line on stderr naming the argument or
file, no traceback); 3 a feature or plugin not available in this installation; 4 the solver or a fit failed for the
inputs (a fit whose best start did not converge, or that ran to a bound, still writes its files); 5 a process of a
multi-process run failed; 130/143 stopped by SIGINT/SIGTERM. `carkinetics --version` prints the version. The input
files (regimen and sweep TOML, data tables) are described in docs/cli.md.

**Plugins.** The core imports no model: installed packages declare what they offer as entry points
(`[project.entry-points."<group>"]` in their `pyproject.toml`), discovered with `importlib.metadata`:

- group `carkinetics.models`: `Name = "package.module:ModelClass"`, a `carkinetics.AbstractKineticModel`
  subclass that `--model Name` builds with its default parameters.
- group `carkinetics.presets`: `key = "package.module:TABLE"`, a [`PresetTable`][]: named [`Preset`][]s (a model
  loader, the preset's standard regimen and save grid) for `--preset NAME`, named regimens for `--regimen NAME`,
  an optional reader of preset files, and `default`: the preset that `carkinetics simulate` and `carkinetics
  bench` run without arguments (its model under its standard regimen on its save grid). The first table in
  entry-point order that declares a default gives the default run.
- group `carkinetics.commands`: `name = "package.module:CommandClass"`, a [`Command`][] subclass (instantiated
  without arguments; its `name` equals the entry-point name). A command has `name`, `help` (one line),
  `description`, `default_out` (default of `--out`), `add_arguments(parser)` and `run(args, ctx) -> exit code`,
  where `ctx` is a [`Context`][] (`ctx.out_dir()`, `ctx.progress(steps)`, `ctx.quiet`, `ctx.plugins`), and
  `outputs`, the file names (or glob patterns) it writes into `--out`. The core adds `--out` and `--quiet` to every
  command and checks that `--out` can be written before `run`; `ctx.out_dir()` (called after the inputs are
  checked, before the computation) creates it and removes the `outputs` an earlier run left there, with a note, so
  that a reused folder never mixes two runs (other files are never touched). A command reports mistakes by raising
  [`UserError`][] (exit 2), [`Unavailable`][] (3) or [`NumericalFailure`][] (4; [`FitFailed`][] for a fit) with a
  one-line message, and tells
  the user about a choice made for them (a default, a value taken from the model) with `note(message)`; numeric
  arguments use the argparse types `whole_number(lo, hi)`, `finite_number` and `seed_arg` (one-line usage errors
  that name the range); `host_devices(args)` may ask for several CPU devices before JAX starts (see `--devices`).

A plugin that cannot be loaded disables only what it provides: its command, model or preset reports why (exit 3).
This package's own plugins (the reference models, and the SLE application's presets and `demo`/`translate`
commands in `carkinetics.models.sle.cli`) are declared in the project's `pyproject.toml`.
"""

from ._common import (
    EXIT_INTERNAL,
    EXIT_NUMERICAL,
    EXIT_OK,
    EXIT_UNAVAILABLE,
    EXIT_USAGE,
    MAX_MEMBERS,
    FitFailed,
    NumericalFailure,
    StepProgress,
    Unavailable,
    UserError,
    add_checkpoint_arg,
    add_devices_arg,
    add_distributed_args,
    add_engine_arg,
    finite_number,
    join_processes,
    note,
    seed_arg,
    whole_number,
)
from ._main import main
from ._plugins import Command, Context, Plugins, Preset, PresetTable

__all__ = [
    "EXIT_INTERNAL",
    "EXIT_NUMERICAL",
    "EXIT_OK",
    "EXIT_UNAVAILABLE",
    "EXIT_USAGE",
    "MAX_MEMBERS",
    "Command",
    "Context",
    "FitFailed",
    "NumericalFailure",
    "Plugins",
    "Preset",
    "PresetTable",
    "StepProgress",
    "Unavailable",
    "UserError",
    "add_checkpoint_arg",
    "add_devices_arg",
    "add_distributed_args",
    "add_engine_arg",
    "finite_number",
    "join_processes",
    "main",
    "note",
    "seed_arg",
    "whole_number",
]
