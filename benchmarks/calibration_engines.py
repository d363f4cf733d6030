"""Multistart calibration cost per start: `ck.fit(engine="ensemble")` (default) vs `engine="vmap"`.

Workload: the Stein 2019 CAR-T kinetics model (`Stein2019CK`), 6 estimated parameters (foldx, tmax, cmax, alpha, fb,
beta; log/logit scale), synthetic transgene data at 27 days (Table 1 values, log-normal noise sd 0.02, numpy seed 0;
the problem of tests/test_calibrate.py), grid of 40 points, the model class's solvers and tolerances
(`solver=None`: EnsembleTsit5 on the ensemble engine, diffrax Tsit5 on the vmap engine; rtol 1e-6, atol 1e-8;
`max_steps` 20,000 over the whole horizon). Starts: `make_starts(scale=0.3)` from `jax.random.key(7)` (timed runs
use new starts of the same shape).

For each number of starts S the script reports, compile (first call) separately from the run (min of repeats,
results blocked on), in float64:

- `lossgrad`: loss and gradient of all S starts: `jax.value_and_grad(sum(problem.ensemble_losses(Z)))` (one batched
  ensemble solve, reverse mode) vs `jax.vmap(jax.value_and_grad(problem.loss))` (vmap of diffrax);
- `fit`: one short fit, `ck.fit(problem, starts, adam_steps=20, lbfgs_steps=20, engine=...)`, and its best loss.

Examples:

    python benchmarks/calibration_engines.py --quick          # smoke run: 4 starts, 2 + 2 iterations, one repeat
    python benchmarks/calibration_engines.py --starts 4,16,64 --repeats 2
"""

from __future__ import annotations

import argparse
import json
import time

import _workloads as W


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--starts", default="4,16,64")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--adam-steps", type=int, default=20)
    p.add_argument("--lbfgs-steps", type=int, default=20)
    p.add_argument("--skip-fit", action="store_true")
    p.add_argument("--json", default=None, help="write the rows to this JSON file")
    p.add_argument("--quick", action="store_true", help="smoke run: 4 starts, 2 Adam + 2 L-BFGS, one repeat")
    args = p.parse_args()
    if args.quick:
        args.starts, args.repeats, args.adam_steps, args.lbfgs_steps = "4", 1, 2, 2

    import jax

    jax.config.update("jax_enable_x64", True)
    import equinox as eqx
    import jax.numpy as jnp
    import numpy as np

    import carkinetics as ck
    from carkinetics.models import Stein2019CK

    dev = jax.devices()[0]
    print(W.machine())
    names = ["foldx", "tmax", "cmax", "alpha", "fb", "beta"]
    days = np.array(
        [1.0, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 14, 17, 21, 28, 35, 42, 56, 70, 90, 120, 150, 180, 240, 300, 365]
    )
    truth = Stein2019CK()
    clean = np.asarray(
        ck.simulate(truth, None, jnp.asarray(days), t0=0.0, rtol=1e-10, atol=1e-10).observables.transgene
    )
    y = clean * np.exp(0.02 * np.random.default_rng(0).standard_normal(days.shape))
    data = ck.TimeCourseData("transgene", jnp.asarray(days), jnp.asarray(y), ck.LogNormalError(0.02))
    problem = ck.CalibrationProblem(truth, None, [data], names, priors=None, n_grid=40)

    lg_ens = eqx.filter_jit(lambda pr, z: jax.value_and_grad(lambda q: jnp.sum(pr.ensemble_losses(q)))(z))
    lg_vmap = eqx.filter_jit(lambda pr, z: jax.vmap(jax.value_and_grad(pr.loss))(z))

    def timed(fn, *a):
        t0 = time.perf_counter()
        out = jax.block_until_ready(fn(*a))
        return time.perf_counter() - t0, out

    rows = []
    for s in [int(x) for x in args.starts.split(",")]:
        z1 = ck.make_starts(problem, jax.random.key(7), s, scale=0.3, include_default=False)
        z2 = ck.make_starts(problem, jax.random.key(8), s, scale=0.3, include_default=False)
        row = {"starts": s}
        for eng, fn in (("ensemble", lg_ens), ("vmap", lg_vmap)):
            first, _ = timed(fn, problem, z1)
            run = min(timed(fn, problem, z2)[0] for _ in range(args.repeats))
            row[f"lossgrad_{eng}_first_s"] = first
            row[f"lossgrad_{eng}_run_s"] = run
        g_e = np.asarray(lg_ens(problem, z2)[1])
        g_v = np.asarray(lg_vmap(problem, z2)[1])
        row["lossgrad_max_rel_diff"] = float(np.max(np.abs(g_e - g_v)) / np.max(np.abs(g_v)))
        if not args.skip_fit:
            for eng in ("ensemble", "vmap"):
                kw = dict(adam_steps=args.adam_steps, lbfgs_steps=args.lbfgs_steps, engine=eng)
                first, _ = timed(lambda z, kw=kw: ck.fit(problem, starts=z, **kw).z_final, z1)
                best = None
                for _ in range(args.repeats):
                    t0 = time.perf_counter()
                    res = ck.fit(problem, starts=z2, **kw)
                    jax.block_until_ready(res.z_final)
                    dt = time.perf_counter() - t0
                    best = dt if best is None else min(best, dt)
                row[f"fit_{eng}_first_s"] = first
                row[f"fit_{eng}_run_s"] = best
                row[f"fit_{eng}_best_loss"] = float(res.loss)
                row[f"fit_{eng}_n_agree"] = res.n_agree
        rows.append(row)
        print(json.dumps(row))

    print(
        "\n| starts | loss+grad ensemble (ms/start) | loss+grad vmap (ms/start) | speed-up | compile ens / vmap (s) "
        "| fit ensemble (ms/start) | fit vmap (ms/start) | speed-up | fit compile+run ens / vmap (s) "
        "| best loss ens / vmap |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        s = r["starts"]
        le, lv = 1e3 * r["lossgrad_ensemble_run_s"] / s, 1e3 * r["lossgrad_vmap_run_s"] / s
        line = (
            f"| {s} | {le:.3g} | {lv:.3g} | {lv / le:.2g}x | {r['lossgrad_ensemble_first_s']:.1f} / "
            f"{r['lossgrad_vmap_first_s']:.1f} |"
        )
        if "fit_ensemble_run_s" in r:
            fe, fv = 1e3 * r["fit_ensemble_run_s"] / s, 1e3 * r["fit_vmap_run_s"] / s
            line += (
                f" {fe:.3g} | {fv:.3g} | {fv / fe:.2g}x | {r['fit_ensemble_first_s']:.1f} / "
                f"{r['fit_vmap_first_s']:.1f} | {r['fit_ensemble_best_loss']:.6g} / "
                f"{r['fit_vmap_best_loss']:.6g} |"
            )
        else:
            line += " - | - | - | - | - |"
        print(line)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(
                {"device": dev.device_kind, "backend": jax.default_backend(), "dtype": "float64", "rows": rows},
                fh,
                indent=1,
            )


if __name__ == "__main__":
    main()
