"""`carkinetics fit-population`: population (mixed-effects) fit of a NONMEM-style data set: FOCEi, SAEM or NUTS."""

from __future__ import annotations

import argparse
import json
import os

from ._common import EXIT_NUMERICAL, EXIT_OK, UserError
from ._plugins import Command, Context

ERRORS = ("additive", "proportional", "combined", "lognormal")


def _pairs(text: str, what: str) -> dict[str, float]:
    """`"ka=0.6,cl=0.3"` -> `{"ka": 0.6, "cl": 0.3}` (a bare name gets `nan`: use the default)."""
    out: dict[str, float] = {}
    for item in filter(None, (t.strip() for t in text.split(","))):
        name, _, value = item.partition("=")
        try:
            out[name.strip()] = float(value) if value else float("nan")
        except ValueError:
            raise UserError(f"{what}: {item!r} is not NAME=NUMBER.") from None
    if not out:
        raise UserError(f"{what}: give at least one NAME or NAME=NUMBER.")
    return out


def _error_model(text: str | None, dv_scale: float):
    import carkinetics as ck

    if text is None:
        return ck.AdditiveError(max(0.2 * dv_scale, 1e-6))
    kind, _, values = text.partition(":")
    if kind not in ERRORS:
        raise UserError(
            f"--error: the kind must be one of {list(ERRORS)}, got {kind!r} (e.g. additive:0.7, combined:0.1,0.1)."
        )
    try:
        nums = [float(v) for v in values.split(",")] if values else []
    except ValueError:
        raise UserError(f"--error: {values!r} are not numbers.") from None
    need = 2 if kind == "combined" else 1
    if nums and len(nums) != need:
        raise UserError(f"--error {kind} takes {need} initial value(s), got {len(nums)}.")
    try:
        if kind == "additive":
            return ck.AdditiveError(*(nums or [max(0.2 * dv_scale, 1e-6)]))
        if kind == "proportional":
            return ck.ProportionalError(*(nums or [0.2]))
        if kind == "combined":
            return ck.CombinedError(*(nums or [max(0.1 * dv_scale, 1e-6), 0.1]))
        return ck.LogAdditiveError(*(nums or [0.3]))
    except ValueError as err:
        raise UserError(f"--error: {err}") from None


def _effects(items: list[str]):
    import carkinetics as ck

    out = []
    for item in items:
        parts = item.split(":")
        if len(parts) != 4:
            raise UserError(
                f"--covariate-effect {item!r}: use PARAMETER:COLUMN:EXPONENT:REFERENCE, e.g. cl:WT:0.75:70."
            )
        try:
            out.append(ck.CovariateEffect(parts[0], parts[1].upper(), float(parts[2]), float(parts[3])))
        except ValueError:
            raise UserError(f"--covariate-effect {item!r}: EXPONENT and REFERENCE must be numbers.") from None
    return out


class FitPopulationCommand(Command):
    name = "fit-population"
    help = "population (mixed-effects) fit of a NONMEM-style data set: FOCEi, SAEM or NUTS"
    outputs = (
        "estimates.json",
        "summary.txt",
        "diagnostics.csv",
        "individual.csv",
        "gof.png",
        "individual_fits.png",
        "vpc.png",
    )
    checkpoint_unit = "iterations"
    description = (
        "Fit a nonlinear mixed-effects model to a NONMEM-style data set (ID, TIME, AMT, DV, EVID, MDV, CMT, "
        "BLQ/LLOQ, covariates): log-normal random effects on the parameters named by --random, a residual "
        "error model, BLQ records by the M3 likelihood. Writes estimates.json (theta on the natural scale, "
        "omega as variances, sigma, ofv, se, shrinkage, converged, n_subjects, n_observations), "
        "summary.txt, diagnostics.csv (PRED, IPRED, IWRES, WRES, CWRES per observation), individual.csv "
        "(EBEs and individual parameters) and goodness-of-fit, individual-fit and VPC plots. Exit code 4 "
        "when the fit did not converge (the outputs are still written, with converged = false). With "
        "--checkpoint DIR the state of the estimation (FOCEi: after every outer iteration; SAEM: every 10 "
        "iterations; NUTS: every finished chain) is kept in DIR and a rerun of the same command resumes from it; "
        "SIGINT/SIGTERM stop after the iteration in progress (exit 130/143)."
    )

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument(
            "--model",
            required=True,
            help="an installed model class, e.g. OneCompartmentOralPK (its parameter values start the fit; see --init)",
        )
        parser.add_argument("--data", metavar="FILE.csv", required=True, help="NONMEM-style data set")
        parser.add_argument(
            "--method", choices=("focei", "saem", "nuts"), default="focei", help="estimation method (default focei)"
        )
        parser.add_argument(
            "--random",
            metavar="P=VAR,...",
            help="parameters with random effects and their initial variances, e.g. ka=0.6,cl=0.3,v=0.1"
            " (default: every scalar parameter not tagged A, variance 0.1)",
        )
        parser.add_argument("--init", metavar="P=VALUE,...", help="initial typical values (default: the model's)")
        parser.add_argument(
            "--error",
            metavar="KIND[:VALUES]",
            help="residual error: additive[:sd], proportional[:cv], combined[:sd,cv], lognormal[:sd] "
            "(default additive, sd = 20 %% of the mean |DV|)",
        )
        parser.add_argument("--blocks", choices=("diagonal", "full"), default="diagonal", help="Omega structure")
        parser.add_argument("--time-unit", choices=("d", "h", "min", "w"), default="d", help="unit of TIME (default d)")
        parser.add_argument("--covariates", metavar="COL,...", default="", help="baseline covariate columns to read")
        parser.add_argument(
            "--covariate-effect",
            metavar="P:COL:EXP:REF",
            action="append",
            default=[],
            help="estimated power effect (COL/REF)^EXP on a typical value (repeatable)",
        )
        parser.add_argument(
            "--observable-cmt",
            metavar="CMT=NAME,...",
            default=None,
            help="observation CMT codes to observables, e.g. 2=concentration (default: the model's "
            "single observable, or CMT as its index)",
        )
        parser.add_argument("--seed", type=int, default=0, help="seed of SAEM / NUTS / VPC (jax.random.key(seed))")
        parser.add_argument("--no-covariance", action="store_true", help="skip the covariance step (no SEs)")
        parser.add_argument("--no-plots", action="store_true", help="write tables only")
        parser.add_argument("--samples", type=int, default=500, help="NUTS draws per chain (default 500)")
        parser.add_argument(
            "--checkpoint",
            metavar="DIR",
            default=None,
            help="keep the state of the estimation in DIR (FOCEi/SAEM iterations, NUTS chains); rerunning the same "
            "command resumes from it (a DIR written by a different fit is refused, naming what differs)",
        )

    def run(self, args: argparse.Namespace, ctx: Context) -> int:
        import jax
        import numpy as np

        import carkinetics as ck
        import carkinetics.io as cio

        model = ctx.plugins.model_class(args.model)()
        if args.init:
            try:
                model = ck.replace(model, _pairs(args.init, "--init"))
            except ValueError as err:
                raise UserError(f"--init: {err}") from None
        observables = None
        if args.observable_cmt:
            observables = {}
            for item in args.observable_cmt.split(","):
                k, _, v = item.partition("=")
                observables[k.strip()] = v.strip()
        covs = [c for c in args.covariates.split(",") if c.strip()]
        covs += [e.split(":")[1] for e in args.covariate_effect if e.count(":") == 3]
        try:
            data = ck.read_population_data(
                args.data,
                model,
                observables=observables,
                covariates=list(dict.fromkeys(c.upper() for c in covs)),
                time_unit=args.time_unit,
            )
        except (ValueError, OSError) as err:
            raise UserError(f"--data {args.data}: {err}") from None
        if args.random:
            random = _pairs(args.random, "--random")
            random = {k: (0.1 if np.isnan(v) else v) for k, v in random.items()}
        else:
            random = {n: 0.1 for n, p in ck.parameters(model).items() if np.ndim(p.value) == 0 and p.info.tag != "A"}
        dv = np.asarray(data.dv)[np.asarray(data.mask)]
        error = _error_model(args.error, float(np.mean(np.abs(dv))) if dv.size else 1.0)
        try:
            problem = ck.PopulationProblem(
                model, data, random, error=error, blocks=args.blocks, covariates=_effects(args.covariate_effect)
            )
        except ValueError as err:
            raise UserError(str(err)) from None
        out = ctx.out_dir()
        say = None if ctx.quiet else (lambda line: print(line, flush=True))
        if say:
            say(
                f"fit-population: {data.n_subjects} subjects, {data.n_observations} observations "
                f"({data.n_censored} censored), {len(problem.psi0)} population parameters, method {args.method}"
            )
        key = jax.random.key(args.seed)
        if args.method == "nuts":
            return self._nuts(problem, key, args, out, say)
        try:
            fit = ck.fit_population(
                problem,
                args.method,
                key=key,
                covariance=not args.no_covariance,
                progress=say or False,
                checkpoint=args.checkpoint,
            )
        except ValueError as err:
            _checkpoint_error(args, err)
            raise
        summary = fit.to_dict()
        cio.atomic_write_text(os.path.join(out, "estimates.json"), json.dumps(summary, indent=2, default=_json_default))
        cio.atomic_write_text(os.path.join(out, "summary.txt"), fit.summary() + "\n")
        table = ck.population_diagnostics(fit)
        ck.write_table(table, os.path.join(out, "diagnostics.csv"))
        individual = {"ID": np.asarray(fit.problem.data.ids)}
        individual.update({f"ETA_{n}": fit.eta[:, k] for k, n in enumerate(fit.random)})
        individual.update({n: v for n, v in fit.individual.items()})
        ck.write_table(individual, os.path.join(out, "individual.csv"))
        written = ["estimates.json", "summary.txt", "diagnostics.csv", "individual.csv"]
        if not args.no_plots:
            written += _plots(fit, out, key)
        print(fit.summary())
        for w in written:
            print(f"wrote {os.path.join(out, w)}")
        if not fit.converged:
            print(f"carkinetics fit-population: the fit did NOT converge: {fit.message}", flush=True)
            return EXIT_NUMERICAL
        return EXIT_OK

    def _nuts(self, problem, key, args, out, say) -> int:
        import carkinetics as ck
        import carkinetics.io as cio

        try:
            post = ck.sample_population_posterior(
                problem, key, num_samples=args.samples, progress=say or False, checkpoint=args.checkpoint
            )
        except ValueError as err:
            _checkpoint_error(args, err)
            raise
        cio.atomic_write_text(
            os.path.join(out, "estimates.json"), json.dumps(post.to_dict(), indent=2, default=_json_default)
        )
        cio.atomic_write_text(os.path.join(out, "summary.txt"), post.summary() + "\n")
        print(post.summary())
        print(f"wrote {os.path.join(out, 'estimates.json')}")
        if not post.converged:
            print(f"carkinetics fit-population: the sampler did NOT converge: {post.message}", flush=True)
            return EXIT_NUMERICAL
        return EXIT_OK


def _checkpoint_error(args: argparse.Namespace, err: ValueError) -> None:
    """A stale or corrupt checkpoint is a usage error (exit 2) naming the folder; other errors pass on."""
    if args.checkpoint is not None and str(err).startswith("The checkpoint"):
        raise UserError(f"--checkpoint {args.checkpoint}: {err}") from None


def _plots(fit, out: str, key) -> list[str]:
    from carkinetics.plot import plot_gof, plot_individual_fits, plot_population_vpc, save_figure

    names = []
    for name, fig in (
        ("gof.png", plot_gof(fit)),
        ("individual_fits.png", plot_individual_fits(fit)),
        ("vpc.png", plot_population_vpc(fit, key, n_replicates=100)),
    ):
        save_figure(fig, os.path.join(out, name))
        names.append(name)
    return names


def _json_default(x):
    import numpy as np

    if isinstance(x, np.ndarray):
        return x.tolist()
    if isinstance(x, np.generic):
        return x.item()
    raise TypeError(f"not JSON serialisable: {type(x).__name__}")
