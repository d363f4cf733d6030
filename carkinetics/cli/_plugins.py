"""The plugin protocol of the command line: models, presets and commands found through entry points.

The core command line imports no model. Installed packages declare what they offer in three entry-point groups
(see the `carkinetics.cli` docstring for the protocol); `Plugins` discovers them lazily, so that a broken plugin
only disables what it provides (exit code 3 when it is asked for) and never the rest of the command line.
"""

from __future__ import annotations

import abc
import argparse
import dataclasses
import importlib.metadata
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar

from ._common import StepProgress, Unavailable, UserError, make_out_dir

GROUP_MODELS = "carkinetics.models"
GROUP_PRESETS = "carkinetics.presets"
GROUP_COMMANDS = "carkinetics.commands"


@dataclasses.dataclass(frozen=True)
class Preset:
    """A named model configuration offered to `--preset`: the model, its standard regimen and its save grid.

    **Fields:**

    - `name`: what `--preset` accepts (e.g. `"human"`).
    - `load`: `load() -> model`, the parametrised model.
    - `regimen`: `regimen(model) -> carkinetics.Regimen`, the preset's standard regimen (`None`: no doses).
    - `save_times`: `save_times() -> array` of days, the preset's standard save grid (`None`: the command's
      default grid).
    - `description`: one line for `--help` and listings.
    """

    name: str
    load: Callable[[], Any]
    regimen: Callable[[Any], Any] | None = None
    save_times: Callable[[], Any] | None = None
    description: str = ""


@dataclasses.dataclass(frozen=True)
class PresetTable:
    """What a `carkinetics.presets` entry point names: presets, named regimens and the default run.

    **Fields:**

    - `presets`: the [`Preset`][]s.
    - `default`: the name of the preset that `carkinetics simulate` and `carkinetics bench` run without arguments
      (its model, its standard regimen, its save grid), or `None`.
    - `regimens`: `{name: regimen(model) -> Regimen}` for `--regimen NAME` (e.g. `"erlangen"`).
    - `from_file`: `from_file(path) -> Preset` for `--preset PATH` (a preset file the plugin can read), or `None`.
    """

    presets: Sequence[Preset]
    default: str | None = None
    regimens: Mapping[str, Callable[[Any], Any]] = dataclasses.field(default_factory=dict)
    from_file: Callable[[str], Preset] | None = None

    def __post_init__(self):
        names = [p.name for p in self.presets]
        if len(set(names)) != len(names):
            raise ValueError(f"`presets` has duplicate names: {names}.")
        if self.default is not None and self.default not in names:
            raise ValueError(f"`default` {self.default!r} is not one of the presets {names}.")


class Command(abc.ABC):
    """A subcommand: `carkinetics <name> ...`.

    Class attributes: `name` (the subcommand; for a plugin, equal to its entry-point name), `help` (one line for
    `carkinetics --help`), `description` (the command's `--help` text), `default_out` (default of `--out`;
    `None`: `carkinetics_<name>`) and `outputs` (the file names or glob patterns the command writes into `--out`:
    `ctx.out_dir()` removes those an earlier run left there, so that a reused folder never mixes two runs; other
    files are never touched), `checkpoint_unit` (what a `--checkpoint` of the command keeps: "chunks", "starts",
    "iterations"; named in the line printed when a signal stops it). The core adds `--out` and `--quiet` to every
    command and checks before `run` that `--out` can be written.
    """

    name: ClassVar[str]
    help: ClassVar[str]
    description: ClassVar[str] = ""
    default_out: ClassVar[str | None] = None
    outputs: ClassVar[tuple[str, ...]] = ()
    checkpoint_unit: ClassVar[str] = "chunks"

    @abc.abstractmethod
    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        """Add the command's own arguments to its subparser."""

    @abc.abstractmethod
    def run(self, args: argparse.Namespace, ctx: Context) -> int:
        """Run the command; return its exit code. Raise `UserError` (exit 2), `Unavailable` (3) or
        `NumericalFailure` (4) with a one-line message."""

    def host_devices(self, args: argparse.Namespace) -> str | int | None:
        """The CPU devices the command wants when it runs as the `carkinetics` process (`"all"`, a count, or `None`
        for one). Used before JAX starts; see `--devices`."""
        del args  # most commands run on one device
        return None


class UnavailableCommand(Command):
    """Stands in for a command plugin that cannot be loaded: running it reports why (exit code 3)."""

    help = "(not available in this installation)"

    def __init__(self, name: str, reason: str):
        # per-instance values of the `Command` class variables: one stand-in instance per unloadable plugin
        self.name = name  # pyright: ignore[reportAttributeAccessIssue]
        self.reason = reason
        self.description = f"Not available: {reason}"  # pyright: ignore[reportAttributeAccessIssue]

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        del parser  # its arguments are unknown; the core passes any it is given

    def run(self, args: argparse.Namespace, ctx: Context) -> int:
        raise Unavailable(f"the command {self.name!r} cannot be loaded: {self.reason}")


def _entry_points(group: str) -> list[importlib.metadata.EntryPoint]:
    """The entry points of `group`, first one per name (an installation listed twice counts once)."""
    seen: dict[str, importlib.metadata.EntryPoint] = {}
    for ep in importlib.metadata.entry_points(group=group):
        seen.setdefault(ep.name, ep)
    return [seen[n] for n in sorted(seen)]


def _load(ep: importlib.metadata.EntryPoint) -> Any:
    try:
        return ep.load()
    except Exception as err:
        raise Unavailable(
            f"the plugin {ep.name} = {ep.value!r} ({ep.group}) cannot be loaded: {type(err).__name__}: {err}"
        ) from None


class Plugins:
    """The models, presets and commands installed packages declare (loaded on first use)."""

    def __init__(self):
        self._models = {ep.name: ep for ep in _entry_points(GROUP_MODELS)}
        self._preset_eps = _entry_points(GROUP_PRESETS)
        self._tables: list[PresetTable] | None = None

    # -- models

    def model_names(self) -> list[str]:
        """Names `--model` accepts (no plugin is imported)."""
        return sorted(self._models)

    def model_class(self, name: str) -> type:
        """The model class registered as `name` (`UserError` for an unknown name, `Unavailable` if it cannot load)."""
        if name not in self._models:
            raise UserError(f"--model {name!r} is not an installed model; choose one of {self.model_names()}.")
        return _load(self._models[name])

    # -- presets

    def preset_tables(self) -> list[PresetTable]:
        if self._tables is None:
            tables = []
            for ep in self._preset_eps:
                table = _load(ep)
                if not isinstance(table, PresetTable):
                    raise Unavailable(
                        f"the plugin {ep.name} = {ep.value!r} ({ep.group}) is not a "
                        f"carkinetics.cli.PresetTable but a {type(table).__name__}."
                    )
                tables.append(table)
            self._tables = tables
        return self._tables

    def presets(self) -> dict[str, Preset]:
        """Every named preset, by name (the first plugin in entry-point order wins a name clash)."""
        out: dict[str, Preset] = {}
        for table in self.preset_tables():
            for p in table.presets:
                out.setdefault(p.name, p)
        return out

    def preset(self, name: str) -> Preset:
        """A named preset or a preset file (`--preset`)."""
        presets = self.presets()
        if name in presets:
            return presets[name]
        readers = [t.from_file for t in self.preset_tables() if t.from_file is not None]
        if readers and (name.endswith(".toml") or os.sep in name or "/" in name):
            if not os.path.isfile(name):
                raise UserError(f"--preset {name!r}: the file does not exist.")
            errors = []
            for read in readers:
                try:
                    return read(name)
                except ValueError as err:
                    errors.append(str(err))
            raise UserError(f"--preset {name!r}: {errors[0]}")
        raise UserError(
            f"--preset {name!r} is not an installed preset; choose one of {sorted(presets)}"
            + (" or give a preset file." if readers else ".")
        )

    def default_preset(self) -> Preset | None:
        """The preset of the default run: the `default` of the first preset table that declares one."""
        for table in self.preset_tables():
            if table.default is not None:
                return {p.name: p for p in table.presets}[table.default]
        return None

    def regimen_names(self) -> list[str]:
        return sorted({n for t in self.preset_tables() for n in t.regimens})

    def named_regimen(self, name: str) -> Callable[[Any], Any] | None:
        for table in self.preset_tables():
            if name in table.regimens:
                return table.regimens[name]
        return None

    # -- commands

    @staticmethod
    def commands(reserved: Sequence[str] = ()) -> list[Command]:
        """The plugin commands, sorted by name; a command that cannot be loaded stands in as `UnavailableCommand`."""
        out = []
        for ep in _entry_points(GROUP_COMMANDS):
            if ep.name in reserved:
                print(
                    f"carkinetics: warning: the plugin command {ep.name} = {ep.value!r} is ignored (a built-in "
                    "command has that name)",
                    file=sys.stderr,
                )
                continue
            try:
                obj = _load(ep)
                cmd = obj() if isinstance(obj, type) else obj
                if not isinstance(cmd, Command):
                    raise Unavailable(f"{ep.value!r} is not a carkinetics.cli.Command")
                if cmd.name != ep.name:
                    raise Unavailable(f"{ep.value!r} is named {cmd.name!r}, not {ep.name!r}")
            except Unavailable as err:
                cmd = UnavailableCommand(ep.name, str(err))
            out.append(cmd)
        return out


@dataclasses.dataclass
class Context:
    """What a running command gets besides its arguments: the output folder, progress and the plugins."""

    command: str
    out: str
    quiet: bool
    plugins: Plugins
    outputs: Sequence[str] = ()

    def out_dir(self) -> str:
        """Create the output folder (`--out`), remove the files of `outputs` (the command's `Command.outputs`) that an
        earlier run left there (with a note on stderr), and return its absolute path (`UserError` if it cannot be
        created or written). Call it after the inputs are checked and before the computation."""
        return make_out_dir(self.out, self.outputs)

    def progress(self, steps: int | Sequence[float], label: str | None = None) -> StepProgress:
        """A step progress line on stderr (silent with `--quiet`): `steps` equal steps, or one weight per step
        (the ETA assumes time proportional to the weights)."""
        return StepProgress(steps, label or self.command, enabled=not self.quiet)
