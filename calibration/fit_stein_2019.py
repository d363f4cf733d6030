"""Recover the Stein 2019 Table 1 values from synthetic data generated with them (parameter-recovery check).

Data: the `Stein2019CK` model with Table 1 typical values [R] sampled on an ELIANA-like schedule (days 1-365),
`--replicates` observations per day with log-normal residual error `--sigma` (Stein's own residual is 0.56 on
the log scale; the default 0.1 keeps the check sharp), numpy seed `--seed`. The fit estimates foldx, Tmax, Cmax,
alpha, F_B and beta from starts perturbed by `--start-scale` on the log/logit scale, with flat priors (pure maximum
likelihood: a prior centred on the truth would make recovery trivial), then reports relative errors, Laplace
standard errors and profile likelihoods.

The model class's solvers and tolerances apply (`Stein2019CK`: non-stiff; the fit on the ensemble engine with
`ck.EnsembleTsit5()`, single simulations with diffrax Tsit5; rtol 1e-6, atol 1e-8).

Run: `python calibration/fit_stein_2019.py --dry-run` (build the problem, one loss + gradient and two L-BFGS steps;
writes nothing), `--quick` (small budget) or without either.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings

HERE = os.path.dirname(os.path.abspath(__file__))
NAMES = ("foldx", "tmax", "cmax", "alpha", "fb", "beta")
DAYS = (1.0, 2.0, 4.0, 7.0, 9.0, 11.0, 14.0, 21.0, 28.0, 42.0, 60.0, 90.0, 120.0, 180.0, 270.0, 365.0)


def synthetic_data(sigma: float, replicates: int, seed: int):
    """(days, observations) from the Table 1 model with log-normal noise (numpy default_rng(seed))."""
    import jax.numpy as jnp
    import numpy as np

    import carkinetics as ck
    from carkinetics.models import Stein2019CK

    days = np.repeat(np.asarray(DAYS), replicates)
    clean = np.asarray(
        ck.simulate(
            Stein2019CK(), None, jnp.asarray(np.asarray(DAYS)), t0=0.0, rtol=1e-10, atol=1e-10
        ).observables.transgene
    )
    rng = np.random.default_rng(seed)
    obs = np.repeat(clean, replicates) * np.exp(sigma * rng.standard_normal(days.shape))
    return days, obs


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small budget (2 starts, 40 L-BFGS steps)")
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="build the problem, one batched loss + gradient and two L-BFGS steps from two starts; writes nothing",
    )
    parser.add_argument("--sigma", type=float, default=0.1, help="log-scale residual sd of the synthetic data")
    parser.add_argument("--replicates", type=int, default=3, help="observations per sampling day")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--start-scale", type=float, default=0.4)
    parser.add_argument("--out-dir", default=os.path.join(HERE, "results", "stein_2019"))
    args = parser.parse_args(argv)
    if args.sigma <= 0 or args.replicates < 1:
        parser.error("--sigma must be positive and --replicates at least 1")

    import jax

    jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp
    import numpy as np

    import carkinetics as ck
    import carkinetics.plot as ckplot
    from carkinetics.models import Stein2019CK

    truth = Stein2019CK()
    days, obs = synthetic_data(args.sigma, args.replicates, args.seed)
    data = ck.TimeCourseData(
        "transgene",
        jnp.asarray(days),
        jnp.asarray(obs),
        ck.LogNormalError(args.sigma),
        label=f"synthetic (sigma {args.sigma:g}, seed {args.seed})",
    )
    problem = ck.CalibrationProblem(truth, None, [data], list(NAMES), priors=None, n_grid=120, t0=0.0)
    if args.dry_run:
        starts = ck.make_starts(
            problem, jax.random.key(args.seed + 1), 2, scale=args.start_scale, include_default=False
        )
        loss, grad = jax.value_and_grad(lambda z: jnp.sum(problem.ensemble_losses(z)))(starts)
        print(
            f"problem: {days.size} observations, estimate {list(problem.names)}, {problem.ts.size} grid times; "
            f"batched loss at 2 starts {float(loss):.6g}, |grad| {float(jnp.linalg.norm(grad)):.3g}"
        )
        t0 = time.time()
        res = ck.fit(problem, starts=starts, adam_steps=0, lbfgs_steps=2)
        print(
            f"ck.fit, 2 starts x 2 L-BFGS steps (engine {res.engine}): {time.time() - t0:.1f} s, best loss "
            f"{float(res.loss):.6g}; values {res.values()}"
        )
        return 0 if np.isfinite(float(res.loss)) else 1
    os.makedirs(args.out_dir, exist_ok=True)
    n_starts, adam, lbfgs = (2, 0, 40) if args.quick else (8, 100, 80)
    starts = ck.make_starts(
        problem, jax.random.key(args.seed + 1), n_starts, scale=args.start_scale, include_default=False
    )
    t0 = time.time()
    res = ck.fit(problem, starts=starts, adam_steps=adam, lbfgs_steps=lbfgs, learning_rate=0.05)
    print(f"fit: {time.time() - t0:.0f} s (shared, loaded machine)")
    print(res.convergence_report())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ck.IdentifiabilityWarning)
        lap = ck.laplace(res)
        profiles = [
            ck.profile_likelihood(res, n, n_points=5 if args.quick else 9, span=0.5, steps=60 if args.quick else 150)
            for n in NAMES
        ]
    for w in caught:
        print("IdentifiabilityWarning:", w.message)
    true = np.array([float(getattr(truth, n)) for n in NAMES])
    est = np.array([res.values()[n] for n in NAMES])
    lines = [
        "| parameter | Table 1 [R] | recovered [F] | rel. error | Laplace sd | |error|/sd | profile |",
        "|---|---|---|---|---|---|---|",
    ]
    for k, n in enumerate(NAMES):
        ident = "identifiable" if profiles[k].identifiable else "NOT"
        lines.append(
            f"| {n} | {true[k]:.5g} | {est[k]:.5g} | {est[k] / true[k] - 1:+.2%} | {lap.sd[k]:.3g} | "
            f"{abs(est[k] - true[k]) / lap.sd[k]:.2f} | {ident} |"
        )
    table = "\n".join(lines)
    print(table)
    with open(os.path.join(args.out_dir, "report.md"), "w") as fh:
        fh.write(
            "# Stein 2019 parameter recovery\n\n"
            + res.convergence_report()
            + "\n\n"
            + table
            + "\n\n"
            + "\n".join(p.summary() for p in profiles)
            + "\n"
        )
    ckplot.plot_fit(res, path=os.path.join(args.out_dir, "fit_vs_data.png"), title="Stein 2019: synthetic data vs fit")
    ckplot.plot_obs_vs_pred(res, path=os.path.join(args.out_dir, "obs_vs_pred.png"))
    ckplot.plot_residuals(res, path=os.path.join(args.out_dir, "residuals.png"))
    ckplot.plot_profiles(profiles, path=os.path.join(args.out_dir, "profiles.png"))
    print(f"figures and report in {args.out_dir}")
    ok = np.all(np.abs(est - true) <= 3 * lap.sd)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
