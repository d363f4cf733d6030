"""`carkinetics calibrate`: fit model parameters to a PEtab-style problem (one simulation condition)."""

from __future__ import annotations

import argparse
import csv
import io
import math
import os

from ._common import (
    EXIT_OK,
    FitFailed,
    UserError,
    add_engine_arg,
    add_run_args,
    note,
    seed_arg,
    whole_number,
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
        rows = [
            m for m in problem.measurements if m.observable_id == o.observable_id and m.condition_id == condition_id
        ]
        if not rows:
            continue
        if o.formula not in model.observable_names():
            raise UserError(
                f"observables.tsv: {o.observable_id!r} maps to {o.formula!r}, a state; calibration "
                f"fits observables ({list(model.observable_names())})."
            )
        try:
            sigma = float(o.noise_formula)
        except ValueError:
            raise UserError(
                f"observables.tsv: noiseFormula {o.noise_formula!r} of {o.observable_id!r} must be a "
                "number for carkinetics calibrate (estimated noise parameters are not supported)."
            ) from None
        if o.noise_distribution != "normal":
            raise UserError(
                f"observables.tsv: noiseDistribution {o.noise_distribution!r} of {o.observable_id!r} "
                "is not supported by carkinetics calibrate (use normal)."
            )
        error = (
            ck.NormalError(sigma)
            if o.transformation == "lin"
            else ck.LogNormalError(sigma * (math.log(10.0) if o.transformation == "log10" else 1.0))
        )
        rows.sort(key=lambda m: m.time)
        targets.append(
            ck.TimeCourseData(
                o.formula,
                jnp.asarray([m.time for m in rows]),
                jnp.asarray([m.measurement for m in rows]),
                error,
                tuple(f"{o.observable_id}@{m.time:g}" for m in rows),
                o.name or o.formula,
            )
        )
    return targets


def _on_bound(value: float, lower: float, upper: float, rtol: float = 1e-6) -> str | None:
    """`"lower"`/`"upper"` when a fitted value sits on that bound (relative distance below `rtol` of the range)."""
    span = upper - lower
    if value - lower <= rtol * span:
        return "lower"
    if upper - value <= rtol * span:
        return "upper"
    return None


def petab_bounds(problem, model, estimate: list[str]) -> dict[str, tuple[float, float]]:
    """The PEtab `lowerBound`/`upperBound` of the estimated parameters, as the working bounds of the fit (they must lie
    inside the model's declared bounds, with the nominal value strictly between them: the fit starts there)."""
    import carkinetics as ck
    import carkinetics.io as cio

    allp = ck.parameters(model)
    rows = {p.parameter_id: p for p in problem.parameters}
    bounds = {}
    for name in estimate:
        p = rows[cio.parameter_id(name)]
        info = allp[name].info
        if not (info.lower <= p.lower < p.upper <= info.upper):
            raise UserError(
                f"parameters.tsv: bounds [{p.lower:g}, {p.upper:g}] of {p.parameter_id!r} leave the "
                f"declared bounds of {name} [{info.lower:g}, {info.upper:g}] {info.unit}."
            )
        value = float(allp[name].value)
        if not p.lower < value < p.upper:
            raise UserError(
                f"parameters.tsv: the start value {value:g} {info.unit} of {p.parameter_id!r} (its "
                f"nominalValue, or a condition's value) must lie strictly inside its bounds "
                f"[{p.lower:g}, {p.upper:g}]: the fit starts there."
            )
        bounds[name] = (float(p.lower), float(p.upper))
    return bounds


class CalibrateCommand(Command):
    name = "calibrate"
    help = "fit model parameters to a PEtab-style problem"
    description = (
        "Read a PEtab-style problem (measurements.tsv, parameters.tsv, conditions.tsv, observables.tsv; "
        "one simulation condition) and fit the parameters marked estimate = 1 by maximum likelihood "
        "(multistart Adam + L-BFGS on the chosen engine); writes fitted_parameters.csv (values tagged F), "
        "convergence.md and fit diagnostics (fit.png: data vs fitted trajectories; fit_obs_vs_pred.png, "
        "fit_residuals.png). The lowerBound/upperBound of parameters.tsv bound the fit. A fit whose best "
        "start did not converge (or ran to a bound) still writes its files, says that it failed and exits "
        "with code 4. With --checkpoint DIR every finished start is kept in DIR; a rerun of the same command "
        "resumes from them (SIGINT/SIGTERM stop after the start in progress, exit 130/143)."
    )
    outputs = ("fitted_parameters.csv", "convergence.md", "fit.png", "fit_obs_vs_pred.png", "fit_residuals.png")
    checkpoint_unit = "starts"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        add_run_args(parser, times=False)
        parser.add_argument("--petab", metavar="DIR", required=True, help="folder with the four PEtab TSV tables")
        parser.add_argument("--starts", type=whole_number(1, 10_000), default=4, help="multistart count (default 4)")
        parser.add_argument(
            "--seed",
            type=seed_arg,
            default=0,
            help="seed of the multistart points, as jax.random.key(seed) (default 0)",
        )
        add_engine_arg(parser)
        parser.add_argument(
            "--checkpoint",
            metavar="DIR",
            default=None,
            help="write each finished start (or chunk of starts, see --chunk-size) to DIR; rerunning the same "
            "command resumes from them (a DIR written by a different fit is refused, naming what differs)",
        )
        parser.add_argument(
            "--chunk-size",
            type=whole_number(1, 10_000),
            default=None,
            help="starts optimised together in one compiled program (default: all, or 1 with --checkpoint)",
        )

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
            raise UserError(f"--petab {args.petab}: {err}") from None
        used = sorted({m.condition_id for m in problem.measurements})
        if len(used) != 1:
            raise UserError(
                f"{args.petab}: carkinetics calibrate fits one simulation condition at a time; the "
                f"measurements use {used}. Split the problem per condition."
            )
        cond = used[0]
        try:
            model = problem.apply(run.model, cond)
        except ValueError as err:  # a nominal or condition value outside the model's declared bounds
            raise UserError(
                f"--petab {args.petab} (parameters.tsv nominalValue / conditions.tsv {cond!r}): {err}"
            ) from None
        ids = {cio.parameter_id(n): n for n in ck.parameters(model)}
        estimate = [ids[p.parameter_id] for p in problem.parameters if p.estimate and p.parameter_id in ids]
        if not estimate:
            raise UserError(f"{args.petab}: no parameter of {type(model).__name__} has estimate = 1 in parameters.tsv.")
        bounds = petab_bounds(problem, model, estimate)
        targets = petab_targets(problem, model, cond)
        out = ctx.out_dir()
        # ETA weights: the multistart fit (compilation and iterations) costs about 20 times the rest
        prog = ctx.progress([1.0, 20.0, 2.0])
        prog.step(f"building the problem ({len(estimate)} parameters, {len(problem.measurements)} measurements)")
        try:
            cp = ck.CalibrationProblem(model, run.regimen, targets, estimate, priors=None, bounds=bounds)
        except ValueError as err:
            raise UserError(f"--petab {args.petab}: {err}") from None
        prog.advance()
        prog.step(f"multistart fit ({args.starts} starts, compiled once)")
        try:
            res = ck.fit(
                cp,
                key=jax.random.key(args.seed),
                n_starts=args.starts,
                engine=args.engine,
                checkpoint=args.checkpoint,
                chunk_starts=args.chunk_size,
            )
        except ValueError as err:
            if args.checkpoint is not None and str(err).startswith("The checkpoint"):  # stale or corrupt
                raise UserError(f"--checkpoint {args.checkpoint}: {err}") from None
            # every start gives the failure penalty: the data cannot be fitted
            raise FitFailed(f"it could not start: {err}") from None
        prog.advance()
        prog.step("writing results")
        fitted = res.values()
        path = os.path.join(out, "fitted_parameters.csv")
        allp = ck.parameters(model)
        table = io.StringIO()
        w = csv.writer(table, lineterminator="\n")
        w.writerow(
            [
                "parameter",
                "start_value",
                "fitted_value",
                "unit",
                "tag",
                "lower_petab",
                "upper_petab",
                "within_petab_bounds",
                "at_petab_bound",
                "fit_succeeded",
            ]
        )
        on_bound = {}
        for n in estimate:
            lo, hi = bounds[n]
            v = fitted[n]
            side = _on_bound(v, lo, hi)
            if side:
                on_bound[n] = side
            w.writerow(
                [
                    n,
                    repr(float(np.asarray(allp[n].value))),
                    repr(v),
                    allp[n].info.unit,
                    "F",
                    lo,
                    hi,
                    bool(lo <= v <= hi),
                    side or "",
                    res.success,
                ]
            )
        cio.atomic_write_text(path, table.getvalue())
        cio.atomic_write_text(
            os.path.join(out, "convergence.md"),
            f"engine: {res.engine}\n\n" + res.convergence_report() + "\n\n" + res.parameter_table() + "\n",
        )
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
        extra = [
            save_figure(plot_obs_vs_pred(res), os.path.join(out, "fit_obs_vs_pred.png")),
            save_figure(plot_residuals(res), os.path.join(out, "fit_residuals.png")),
        ]
        prog.advance()
        prog.close()
        print(res.convergence_report().splitlines()[0])
        print(f"engine: {res.engine}")
        for n in estimate:
            print(f"  {n} = {fitted[n]:.6g} {allp[n].info.unit} [F]")
        for p in [path, png, *extra]:
            print(f"wrote {p}")
        print(f"output folder: {out}")
        for n, side in on_bound.items():
            lo, hi = bounds[n]
            note(
                f"{n} = {fitted[n]:.6g} {allp[n].info.unit} lies on its {side} bound "
                f"({side}Bound {lo if side == 'lower' else hi:g} in parameters.tsv): the data pull it further; it is "
                "an estimate only if that bound is a real limit."
            )
        if not res.success:
            at = res.at_bounds()
            why = (
                f"{', '.join(at)} ran to the edge of its range (a PEtab bound or the declared bound)"
                if at
                else "its best start did not converge"
            )
            raise FitFailed(f"{why}; the values above are not estimates (see {os.path.join(out, 'convergence.md')}).")
        return EXIT_OK
