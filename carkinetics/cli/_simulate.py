"""`carkinetics simulate`: one model under one regimen -> tidy CSV, PNG and the parameter table."""

from __future__ import annotations

import argparse
import os

from ._common import EXIT_OK, UserError, add_run_args
from ._inputs import read_data, resolve_run, run_simulation, write_sbml
from ._plugins import Command, Context


class SimulateCommand(Command):
    name = "simulate"
    help = "simulate one model under one regimen -> tidy CSV + PNG"
    description = (
        "Simulate a model (an installed model class with default parameters, or a preset with its "
        "standard regimen and save grid; without --model/--preset the default preset, i.e. the SLE human "
        "course under the Erlangen regimen) with parameter overrides, and write simulation.csv (tidy: "
        "time, kind, name, value, unit), simulation.png (one panel per output, units on the axes, "
        "optional data overlay) and parameters.csv (and model.xml with --sbml)."
    )
    outputs = ("simulation.csv", "simulation.png", "parameters.csv", "model.xml")

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        add_run_args(parser)
        parser.add_argument(
            "--outputs", default=None, help="comma-separated observables/states to plot (default: all observables)"
        )
        parser.add_argument(
            "--data",
            metavar="CSV",
            default=None,
            help="measurements to overlay: NONMEM-style (TIME, DV, CMT) or tidy (time, name, value)",
        )
        parser.add_argument("--sbml", action="store_true", help="also export the model and regimen as SBML (model.xml)")

    def run(self, args: argparse.Namespace, ctx: Context) -> int:
        import carkinetics.io as cio
        from carkinetics.plot import plot_timecourse, save_figure

        run = resolve_run(args, ctx.plugins)
        model, ts = run.model, run.ts
        data = read_data(args.data, model)
        names = None
        if args.outputs is not None:
            names = [n.strip() for n in args.outputs.split(",") if n.strip()]
            if not names:
                raise UserError(
                    f"--outputs {args.outputs!r} names no output; give comma-separated observables or "
                    f"states, e.g. {','.join(model.observable_names()[:2])}."
                )
            twice = sorted({n for n in names if names.count(n) > 1})
            if twice:
                raise UserError(f"--outputs {args.outputs!r} names {twice} more than once.")
            valid = set(model.observable_names()) | set(model.state_names())
            bad = [n for n in names if n not in valid]
            if bad:
                raise UserError(
                    f"--outputs: unknown name(s) {bad}; observables are "
                    f"{list(model.observable_names())}, states are {list(model.state_names())}."
                )
        out = ctx.out_dir()
        prog = ctx.progress(2)
        prog.step(f"{run.label}: integrating {ts[0]:g}..{ts[-1]:g} d")
        sol = run_simulation(model, run.regimen, ts)
        prog.advance()
        prog.step("writing CSV and PNG")
        csv_path = cio.write_tidy_csv(os.path.join(out, "simulation.csv"), sol)
        fig = plot_timecourse(sol, names, data=data, title=run.label)
        png = save_figure(fig, os.path.join(out, "simulation.png"))
        model.parameter_table().to_csv(os.path.join(out, "parameters.csv"))
        prog.advance()
        prog.close()
        if args.sbml:
            write_sbml(model, run.regimen, os.path.join(out, "model.xml"))
        print(f"{run.label}, {len(ts)} save times {ts[0]:g}..{ts[-1]:g} d, {int(sol.num_steps)} solver steps")
        print(f"wrote {csv_path}\nwrote {png}")
        print(f"output folder: {out}")
        return EXIT_OK
