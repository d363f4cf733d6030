"""`carkinetics calibrate`: fit model parameters to a PEtab-style problem (one simulation condition)."""

from __future__ import annotations

import argparse
import csv
import math
import os

from ._common import (
    EXIT_OK,
    UserError,
    add_engine_arg,
    add_run_args,
    check_positive,
)
from ._inputs import resolve_run, run_simulation
from ._plugins import Command, Context


def petab_targets(problem, model, condition_id: str):
    """`ck.TimeCourseData` targets of one PEtab condition (one per observable).

    `lin` observables get a normal error with the numeric `noiseFormula` as sd (data unit); `log`/`log10` ones a
    log-normal error with the `noiseFormula` as sd of the natural / decadic log (converted to natural log).
    """
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


class CalibrateCommand(Command):
    name = "calibrate"
    help = "fit model parameters to a PEtab-style problem"
    description = ("Read a PEtab-style problem (measurements.tsv, parameters.tsv, conditions.tsv, observables.tsv; "
                   "one simulation condition) and fit the parameters marked estimate = 1 by maximum likelihood "
                   "(multistart Adam + L-BFGS on the chosen engine); writes fitted_parameters.csv (values tagged F), "
                   "convergence.md and fit diagnostics (fit.png: data vs fitted trajectories; fit_obs_vs_pred.png, "
                   "fit_residuals.png).")

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        add_run_args(parser, times=False)
        parser.add_argument("--petab", metavar="DIR", required=True, help="folder with the four PEtab TSV tables")
        parser.add_argument("--starts", type=int, default=4, help="multistart count (default 4)")
        parser.add_argument("--seed", type=int, default=0,
                            help="seed of the multistart points, as jax.random.key(seed) (default 0)")
        add_engine_arg(parser)

    def run(self, args: argparse.Namespace, ctx: Context) -> int:
        import jax
        import numpy as np

        import carkinetics as ck
        import carkinetics.io as cio
        from carkinetics.plot import (
            plot_obs_vs_pred,
            plot_residuals,
            plot_timecourse,
            save_figure,
        )

        run = resolve_run(args, ctx.plugins, times=False)
        try:
            problem = cio.read_petab(args.petab, model=run.model)
        except ValueError as err:
            raise UserError(str(err)) from None
        check_positive("--starts", args.starts)
        used = sorted({m.condition_id for m in problem.measurements})
        if len(used) != 1:
            raise UserError(f"{args.petab}: carkinetics calibrate fits one simulation condition at a time; the "
                            f"measurements use {used}. Split the problem per condition.")
        cond = used[0]
        model = problem.apply(run.model, cond)
        ids = {cio.parameter_id(n): n for n in ck.parameters(model)}
        estimate = [ids[p.parameter_id] for p in problem.parameters if p.estimate and p.parameter_id in ids]
        if not estimate:
            raise UserError(f"{args.petab}: no parameter of {type(model).__name__} has estimate = 1 in "
                            "parameters.tsv.")
        targets = petab_targets(problem, model, cond)
        out = ctx.out_dir()
        prog = ctx.progress(3)
        prog.step(f"building the problem ({len(estimate)} parameters, {len(problem.measurements)} measurements)")
        try:
            cp = ck.CalibrationProblem(model, run.regimen, targets, estimate, priors=None)
        except ValueError as err:
            raise UserError(str(err)) from None
        prog.advance()
        prog.step(f"multistart fit ({args.starts} starts, compiled once)")
        res = ck.fit(cp, key=jax.random.key(args.seed), n_starts=args.starts, engine=args.engine)
        prog.advance()
        prog.step("writing results")
        fitted = res.values()
        path = os.path.join(out, "fitted_parameters.csv")
        allp = ck.parameters(model)
        bounds = {p.parameter_id: (p.lower, p.upper) for p in problem.parameters}
        with open(path, "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["parameter", "start_value", "fitted_value", "unit", "tag", "lower_petab", "upper_petab",
                        "within_petab_bounds"])
            for n in estimate:
                lo, hi = bounds[cio.parameter_id(n)]
                v = fitted[n]
                w.writerow([n, repr(float(np.asarray(allp[n].value))), repr(v), allp[n].info.unit, "F", lo, hi,
                            bool(lo <= v <= hi)])
        with open(os.path.join(out, "convergence.md"), "w") as fh:
            fh.write(f"engine: {res.engine}\n\n" + res.convergence_report() + "\n\n" + res.parameter_table() + "\n")
        sol = run_simulation(res.model, run.regimen, np.asarray(cp.ts))
        data = {}
        for o in problem.observables:
            try:
                t, v = problem.measurement_arrays(cond, o.observable_id)
            except ValueError:
                continue
            data[o.formula] = (t, v)
        title = f"fit to {os.path.basename(os.path.abspath(args.petab))} (fitted values are tag F)"
        png = save_figure(plot_timecourse(sol, list(data), data=data, title=title), os.path.join(out, "fit.png"))
        extra = [save_figure(plot_obs_vs_pred(res), os.path.join(out, "fit_obs_vs_pred.png")),
                 save_figure(plot_residuals(res), os.path.join(out, "fit_residuals.png"))]
        prog.advance()
        prog.close()
        print(res.convergence_report().splitlines()[0])
        print(f"engine: {res.engine}")
        for n in estimate:
            print(f"  {n} = {fitted[n]:.6g} {allp[n].info.unit} [F]")
        for p in [path, png, *extra]:
            print(f"wrote {p}")
        print(f"output folder: {out}")
        return EXIT_OK
