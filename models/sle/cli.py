"""The SLE application's plugins for the `carkinetics` command line (declared as entry points in `pyproject.toml`).

- `PRESETS` (group `carkinetics.presets`): the species presets `human`, `mouse_nzbw`, `mouse_mrl_lpr` with their
  standard regimens (Erlangen Flu/Cy + CAR-T for the patient, irradiation + CAR-T for the mice) and the SLE save
  grid, the named regimens `erlangen` and `mouse`, preset files, and the default run (`human`).
- `TranslateCommand` (`carkinetics translate`) and `DemoCommand` (`carkinetics demo`), group `carkinetics.commands`.
"""

from __future__ import annotations

import argparse
import functools
import math
import os
import sys

from carkinetics.models.sle.metrics import save_times
from carkinetics.models.sle.presets import load_preset, preset_names
from carkinetics.models.sle.regimens import erlangen_regimen, mouse_regimen

from carkinetics.cli import (
    EXIT_INTERNAL,
    EXIT_OK,
    Command,
    Context,
    Preset,
    PresetTable,
    UserError,
    add_engine_arg,
)

_DESCRIPTIONS = {
    "human": "SLE patient (70 kg, 170 cm), the calibrated default (fits/human_sle.json), under the Erlangen regimen: "
             "Flu/Cy + 1e6 CAR-T cells/kg",
    "mouse_nzbw": "NZB/W F1 lupus mouse: total-body irradiation + 1e6 CAR-T cells",
    "mouse_mrl_lpr": "MRL/lpr lupus mouse: total-body irradiation + 1e6 CAR-T cells",
}


def _preset(name: str) -> Preset:
    """A preset name or file, with the regimen of its species (names starting with "mouse" are mice, as for the
    arms of the translation map)."""
    mouse = os.path.basename(name).startswith("mouse")
    return Preset(name=name, load=functools.partial(load_preset, name),
                  regimen=mouse_regimen if mouse else erlangen_regimen, save_times=save_times,
                  description=_DESCRIPTIONS.get(name, "preset file"))


PRESETS = PresetTable(
    presets=tuple(_preset(n) for n in preset_names()),
    default="human",
    regimens={"erlangen": erlangen_regimen, "mouse": mouse_regimen},
    from_file=_preset,
)


# ------------------------------------------------------------------------------------------------------------------
# carkinetics translate


class TranslateCommand(Command):
    name = "translate"
    help = "mouse -> human translation map (which mechanisms explain the gap)"
    description = ("Swap mechanism groups (the presets' gap ids, gap_groups) between the mouse and human presets, "
                   "solve every coalition with the SLE metric set on the SLE save grid (ArmExperiment) and "
                   "attribute the difference of each metric to mechanisms (exact Shapley values); then the "
                   "scenario knobs. Writes translation_heatmap.png, translation_waterfalls.png, "
                   "translation_map.csv/.md, translation_narrative.md and translation_scenarios.csv/.md.")

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--mouse", default="mouse_nzbw",
                            help="first (mouse) preset or preset file (default mouse_nzbw)")
        parser.add_argument("--human", default="human", help="second preset or preset file (default human)")
        parser.add_argument("--gaps", default=None,
                            help="comma-separated gap ids used as mechanism groups, e.g. G1,G3,G4,G6 (default: all; "
                                 "other differing parameters form 'ungrouped'; cost grows as 2^groups simulations)")
        parser.add_argument("--samples", type=int, default=0,
                            help="parameter samples for uncertainty intervals (default 0: point estimate)")
        parser.add_argument("--seed", type=int, default=0,
                            help="seed of the parameter samples, as jax.random.key(seed) (default 0)")
        parser.add_argument("--t-end", type=float, default=730.0,
                            help="horizon of the metrics, days, at least 120 (default 730)")
        parser.add_argument("--batch-size", type=int, default=256,
                            help="simulations per compiled chunk (default 256; tens on a CPU, more on a GPU)")
        add_engine_arg(parser)
        parser.add_argument("--no-scenarios", action="store_true", help="skip the scenario-knob table")

    def run(self, args: argparse.Namespace, ctx: Context) -> int:
        import jax
        from carkinetics.models.sle.translation import (
            SCENARIOS,
            gap_groups,
            load_arm,
            sle_scenarios,
            write_scenario_tables,
            write_translation_report,
        )

        import carkinetics as ck

        for flag, name in (("--mouse", args.mouse), ("--human", args.human)):
            if not name.endswith(".toml") and name not in preset_names():
                raise UserError(f"{flag}: unknown preset {name!r}; built-in presets are {list(preset_names())} "
                                "(or give a .toml path).")
        if args.samples < 0:
            raise UserError(f"--samples must be non-negative, got {args.samples}.")
        if not (math.isfinite(args.t_end) and args.t_end >= 120.0):
            raise UserError(f"--t-end must be at least 120 days (the metrics read day 90), got {args.t_end}.")
        if args.batch_size < 1:
            raise UserError(f"--batch-size must be at least 1, got {args.batch_size}.")
        gaps = None if args.gaps is None else [g.strip() for g in args.gaps.split(",") if g.strip()]
        try:  # the groups of the map, as sle_translation_map forms them (checks --gaps before any solve)
            arm_a, _, gaps_a = load_arm(args.mouse)
            arm_b, _, gaps_b = load_arm(args.human)
            groups = gap_groups(gaps_a, gaps_b, only=gaps)
        except ValueError as err:
            raise UserError(f"--gaps/--mouse/--human: {err}") from None
        grouped = {p for g in groups for p in g.parameters}
        n_groups = len(groups) + bool(set(ck.differing_parameters(arm_a, arm_b)) - grouped)
        bs = args.batch_size

        def padded(n: int) -> int:  # chunks are padded to the batch size
            return -(-n // bs) * bs

        n_map = padded(2**n_groups) + (padded(2**n_groups * args.samples) if args.samples else 0)
        n_scen = 2 * len(SCENARIOS)
        # ETA weights in simulations; one compilation costs about as much as ~2,000 SLE simulations on a CPU core
        # (the scenarios reuse the map's compiled chunk except for the per-target-dose arms).
        weights = [n_map + 2000] + ([padded(n_scen) + 2000] if not args.no_scenarios else [])
        out = ctx.out_dir()
        key = jax.random.key(args.seed)
        solver = type(ck.default_solver(arm_a.model, args.engine)).__name__
        prog = ctx.progress(weights)
        prog.step(f"translation map {args.mouse} -> {args.human}: {n_groups} mechanism groups, 2^{n_groups} "
                  f"coalitions x {1 + args.samples} = {2**n_groups * (1 + args.samples)} simulations "
                  f"({args.engine} engine, {solver})")
        try:
            paths = write_translation_report(out, a=args.mouse, b=args.human, key=key, n_samples=args.samples,
                                             gaps=gaps, t_end=args.t_end, batch_size=bs, scenarios=False,
                                             engine=args.engine)
            prog.advance()
            if not args.no_scenarios:
                prog.step(f"scenario knobs: {len(SCENARIOS)} scenarios x 2 arms = {n_scen} simulations")
                rows = sle_scenarios(args.mouse, args.human, t_end=args.t_end, batch_size=bs, engine=args.engine)
                paths.update(write_scenario_tables(out, rows))
                prog.advance()
        except ValueError as err:
            raise UserError(str(err)) from None
        prog.close()
        print(f"engine: {args.engine} ({solver}); {n_groups} mechanism groups, {args.samples} parameter samples, "
              f"horizon {args.t_end:g} d")
        for path in paths.values():
            print(f"wrote {path}")
        print(f"output folder: {out}")
        return EXIT_OK


# ------------------------------------------------------------------------------------------------------------------
# carkinetics demo


class DemoCommand(Command):
    name = "demo"
    help = "the main job on built-in defaults: figures + self-contained HTML report"
    description = ("Simulate the human SLE course under the Erlangen regimen and its mouse counterpart, run a small "
                   "Sobol sensitivity sweep and the mouse-to-human translation map, and write figures (PNG), tidy "
                   "tables (CSV) and report.html into the output folder.")
    default_out = "carkinetics_output"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--quick", action="store_true",
                            help="shorter horizon, fewer samples (a few minutes on a CPU)")
        add_engine_arg(parser)

    def run(self, args: argparse.Namespace, ctx: Context) -> int:
        from carkinetics.models.sle.demo import run_demo

        out = ctx.out_dir()
        path, skipped, failed = run_demo(out, quick=args.quick, engine=args.engine,
                                         progress=None if ctx.quiet else ctx.progress)
        for msg in skipped:
            print(f"note: {msg}")
        for msg in failed:
            print(f"error: {msg}", file=sys.stderr)
        print(f"report: {path}")
        print(f"output folder: {out}")
        return EXIT_INTERNAL if failed else EXIT_OK
