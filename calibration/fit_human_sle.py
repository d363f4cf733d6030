"""Human SLE fit of the composed `SLECarTModel` to the published SLE CAR-T targets (Erlangen regimen, 1e6/kg).

Targets (rows of the installed target file `target_file("human")`, whose source is
`calibration/data/human_sle_targets.csv`, each compared with a differentiable statistic):

| target | statistic of the simulation |
|---|---|
| mackensen2022_b_reappearance (110 ± 32 d) [R] | first up-crossing of blood B cells through 5 cells/µL after day 1 |
| muller2024_b_aplasia (112 ± 47 d) [R2] | time blood B cells spend below 5 cells/µL from day 0 |
| mackensen2022_sledai_3mo (median 0, range 0-2) [R] | SLEDAI-2K at day 91 |
| mackensen2022_sledai_baseline (median 16, range 8-16) [R] | SLEDAI-2K at day −5 (start of lymphodepletion) |
| muller2024_crs_max_grade (mode 1, range 0-2) [D] | peak CRS index |
| erlangen_car_tmax (9 d, range 7-14) [M] | time of the blood CAR-T peak after day 1 |
| sle_car_peak_blood_vs_nhl (38/µL, range 15-98) [D] | blood CAR-T peak after day 1 (SLE expansion ≈ B-NHL) |

The B-cell threshold 5 cells/µL is the depletion definition of Albert 2008 (rituximab in SLE, kinetics.md §4)
applied here as a modelling choice [A]. Estimated parameters (all others fixed at the human preset):
`car.rho, car.t_rej, bcell.k_mat, disease.k_act, myeloid.g_il6, car.k_kill`, with priors from their tags.
`car.t_rej` (rejection onset) is declared on [−10,000, ∞) d, which makes its log transform meaningless; it is
estimated on the working interval (0, 1000) d (logit scale). `car.k_rej` stays at the preset (1.3/d): below
rho − alpha the CAR-T/B-cell system settles into a persistent equilibrium (an earlier fit that estimated k_rej
hit every summary target with a CAR-T plateau of ~500/µL and an 80-day CRS index).

The model's own solvers and tolerances apply (`SLECarTModel`: stiff, so the fit runs on the ensemble engine with
`ck.EnsembleRodas5()`; single simulations, Laplace and profiles with the class's diffrax solver; rtol = atol =
1e-6); `max_steps` = 20,000 bounds the steps over the whole horizon.

Outputs: `calibration/fits/human_sle.json` (fitted values tagged F, provenance), figures and tables in
`--out-dir`. Run: `python calibration/fit_human_sle.py --dry-run` (build the problem, one loss + gradient, two
L-BFGS steps; writes nothing), `--quick` (small budget) or without either (the full fit).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
import warnings

HERE = os.path.dirname(os.path.abspath(__file__))
FIT_FILE = os.path.join(HERE, "fits", "human_sle.json")
B_THRESHOLD = 5.0  # cells/uL: depletion definition (Albert 2008) used as the detection threshold [A]
ESTIMATE = ("car.rho", "car.t_rej", "bcell.k_mat", "disease.k_act", "myeloid.g_il6", "car.k_kill")
WORKING_BOUNDS = {"car.t_rej": (0.0, 1000.0)}  # declared [-1e4, inf): estimate on a logit scale over (0, 1000) d
T_END = 250.0



def __getattr__(name):
    """`DATA`: the path of the installed target file (`target_file("human")`; its source is
    `calibration/data/`), resolved on first use so that importing this script does not import carkinetics."""
    if name == "DATA":
        from carkinetics.models.sle import target_file

        return target_file("human")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

def target_spec():
    """(target_id, statistic) pairs binding the published rows to model statistics."""
    import carkinetics as ck

    return [
        ("mackensen2022_b_reappearance", ck.CrossingTime("b_blood", B_THRESHOLD, "up", t_start=1.0)),
        ("muller2024_b_aplasia", ck.TimeBelow("b_blood", B_THRESHOLD, t_start=0.0)),
        ("mackensen2022_sledai_3mo", ck.ValueAt("sledai", 91.0)),
        ("mackensen2022_sledai_baseline", ck.ValueAt("sledai", -5.0)),
        ("muller2024_crs_max_grade", ck.PeakHeight("crs_grade")),
        ("erlangen_car_tmax", ck.PeakTime("car_blood", t_start=1.0)),
        ("sle_car_peak_blood_vs_nhl", ck.PeakHeight("car_blood", t_start=1.0)),
    ]


def build_problem(model=None):
    """The human SLE calibration problem (model defaults = the human preset)."""
    import numpy as np

    import carkinetics as ck
    from carkinetics.models.sle import erlangen_regimen, load_preset, load_sle_targets

    model = load_preset("human") if model is None else model
    table = load_sle_targets("human")
    targets = [ck.summary_target(table[tid], stat, model) for tid, stat in target_spec()]
    grid = np.concatenate([np.arange(-6.0, 30.0, 0.5), np.arange(30.0, T_END + 1.0, 2.0)])
    return ck.CalibrationProblem(model, erlangen_regimen(model), targets, list(ESTIMATE), grid=grid,
                                 max_steps=20_000, bounds=WORKING_BOUNDS)


def target_table(problem, z):
    """Rows (target_id, prediction, published value, interval, hit) and a Markdown rendering."""
    import numpy as np

    preds = [float(np.asarray(p)) for p in problem.predictions(z)]
    rows = []
    for tg, p in zip(problem.targets, preds):
        lo, hi = tg.interval if tg.interval is not None else (math.nan, math.nan)
        hit = tg.interval is None or (lo <= p <= hi)
        rows.append((tg.target_id, p, float(tg.value), (lo, hi), hit, tg.unit))
    lines = ["| target | model | published | reported spread | unit | hit |", "|---|---|---|---|---|---|"]
    for tid, p, v, (lo, hi), hit, unit in rows:
        lines.append(f"| {tid} | {p:.4g} | {v:.4g} | [{lo:.4g}, {hi:.4g}] | {unit} | {'yes' if hit else 'NO'} |")
    return rows, "\n".join(lines)


def plot_trajectories(problem, z, path):
    import matplotlib.pyplot as plt
    import numpy as np

    sol = problem.simulate(z)
    sol0 = problem.simulate(problem.z0)
    ts = np.asarray(problem.ts)
    names = problem.model.observable_names()
    fig, axes = plt.subplots(1, 4, figsize=(18, 3.8))
    for ax, obs, log in zip(axes, ("car_blood", "b_blood", "sledai", "crs_grade"), (True, True, False, False)):
        i = names.index(obs)
        for s, lab, st in ((sol0, "preset (before fit)", "--"), (sol, "fitted", "-")):
            y = np.asarray(s.obs_array[:, i])
            ax.plot(ts, np.where(y > 0, y, np.nan) if log else y, st, label=lab)
        if log:
            ax.set_yscale("log")
        if obs == "b_blood":
            ax.axhline(B_THRESHOLD, color="0.5", lw=1, ls=":")
            for tid, col in (("mackensen2022_b_reappearance", "C3"),):
                tg = next(t for t in problem.targets if t.target_id == tid)
                ax.axvspan(*tg.interval, color=col, alpha=0.15, label="B reappearance 110 ± 32 d")
        if obs == "sledai":
            ax.errorbar([91.0], [0.0], yerr=[[0.0], [2.0]], fmt="ks", label="Mackensen 3 mo (median, range)")
        ax.set_xlabel("days after CAR-T infusion")
        ax.set_ylabel(f"{obs} ({problem.model.observable_units[obs]})")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def dry_run(problem, seed: int = 0) -> int:
    """Check that the problem builds and runs: one batched loss + gradient at two starts, two L-BFGS steps."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    import carkinetics as ck

    print(f"problem: {len(problem.targets)} targets, estimate {list(problem.names)}, {problem.ts.size} grid times "
          f"from day {float(problem.ts[0]):g} to {float(problem.ts[-1]):g}, solver {problem.solver} (None: the model "
          f"class's), ensemble method {type(problem.ensemble_solver()).__name__}")
    starts = ck.make_starts(problem, jax.random.key(seed), 2, scale=0.3)
    lossgrad = jax.jit(jax.value_and_grad(lambda z: jnp.sum(problem.ensemble_losses(z))))
    t0 = time.perf_counter()
    loss, grad = jax.block_until_ready(lossgrad(starts))
    t1 = time.perf_counter()
    jax.block_until_ready(lossgrad(starts))
    t2 = time.perf_counter()
    print(f"batched loss + gradient at 2 starts: loss {float(loss):.6g}, |grad| {float(jnp.linalg.norm(grad)):.3g}; "
          f"first call (compile + run) {t1 - t0:.1f} s, second {t2 - t1:.2f} s")
    t0 = time.perf_counter()
    res = ck.fit(problem, starts=starts, adam_steps=0, lbfgs_steps=2)
    print(f"ck.fit, 2 starts x 2 L-BFGS steps (engine {res.engine}): {time.perf_counter() - t0:.1f} s, best loss "
          f"{float(res.loss):.6g}")
    _, md = target_table(problem, res.z)
    print(md)
    return 0 if np.isfinite(float(res.loss)) else 1


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small budget (2 starts, short L-BFGS, 3 profiles)")
    parser.add_argument("--dry-run", action="store_true",
                        help="build the problem, time one batched loss + gradient and two L-BFGS steps from two "
                             "starts, print the target table; writes nothing")
    parser.add_argument("--out-dir", default=os.path.join(HERE, "results", "human_sle"))
    parser.add_argument("--fit-file", default=FIT_FILE)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-profiles", action="store_true")
    parser.add_argument("--start-from", default=None,
                        help="fit file whose values are the first start (warm start); the others are perturbed")
    parser.add_argument("--lbfgs-steps", type=int, default=None, help="override the L-BFGS budget")
    parser.add_argument("--adam-steps", type=int, default=None, help="override the Adam budget")
    args = parser.parse_args(argv)

    import jax

    jax.config.update("jax_enable_x64", True)
    import numpy as np

    import carkinetics as ck
    import carkinetics.plot as ckplot

    problem = build_problem()
    if args.dry_run:
        return dry_run(problem, args.seed)
    os.makedirs(args.out_dir, exist_ok=True)
    os.makedirs(os.path.dirname(os.path.abspath(args.fit_file)), exist_ok=True)
    n_starts, lbfgs, adam = (2, 25, 0) if args.quick else (6, 60, 40)
    if args.lbfgs_steps is not None:
        lbfgs = args.lbfgs_steps
    if args.adam_steps is not None:
        adam = args.adam_steps
    starts = ck.make_starts(problem, jax.random.key(args.seed), n_starts, scale=0.3)
    if args.start_from:
        z_warm = problem.to_vector(ck.load_fit(args.start_from))
        starts = starts.at[0].set(z_warm).at[1:].add(z_warm - problem.z0)
    t0 = time.time()
    res = ck.fit(problem, starts=starts, adam_steps=adam, lbfgs_steps=lbfgs, learning_rate=0.03)
    print(f"fit: {time.time() - t0:.0f} s (shared, loaded machine)")
    print(res.convergence_report())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ck.IdentifiabilityWarning)
        lap = ck.laplace(res)
        profiles = []
        if not args.no_profiles:
            names = ESTIMATE[:3] if args.quick else ESTIMATE
            for n in names:
                profiles.append(ck.profile_likelihood(res, n, n_points=5 if args.quick else 7, span=1.0,
                                                      steps=40 if args.quick else 120))
    print(res.parameter_table(lap.sd_z))
    print(lap.table())
    for w in caught:
        print("IdentifiabilityWarning:", w.message)
    for p in profiles:
        print(p.summary())
    rows, md = target_table(problem, res.z)
    print(md)
    sd = {n: float(s) for n, s in zip(problem.names, np.asarray(lap.sd))}
    flags = {p.name: p.identifiable for p in profiles}
    from carkinetics.models.sle import target_file

    ck.save_fit(args.fit_file, res, data_files=[target_file("human")], sd=sd,
                script="calibration/fit_human_sle.py " + " ".join(argv if argv is not None else sys.argv[1:]),
                notes=("Human SLE fit (Erlangen regimen, 1e6 CAR-T/kg). Profile identifiability: "
                       + (", ".join(f"{k}={'yes' if v else 'NO'}" for k, v in flags.items()) or "not run")
                       + f". Targets hit within spread: {sum(r[4] for r in rows)}/{len(rows)}."))
    with open(os.path.join(args.out_dir, "report.md"), "w") as fh:
        fh.write("# Human SLE fit\n\n" + res.convergence_report() + "\n\n" + res.parameter_table(lap.sd_z) + "\n\n"
                 + lap.table() + "\n\n" + md + "\n\n" + "\n".join(p.summary() for p in profiles) + "\n\n"
                 + "\n".join(f"- {m}" for m in lap.warnings) + "\n")
    uninformed = [n for n in problem.names if any(f"{n!r} is not informed" in m for m in lap.warnings)]
    summary = {"targets": [{"target_id": r[0], "model": r[1], "published": r[2], "interval": list(r[3]),
                            "hit": bool(r[4]), "unit": r[5]} for r in rows],
               "laplace_not_informed": uninformed,
               "profiled": [p.name for p in profiles],
               "profile_not_identifiable": [p.name for p in profiles if not p.identifiable],
               "loss": float(res.loss), "n_converged": int(np.sum(np.asarray(res.converged)))}
    with open(os.path.join(args.out_dir, "summary.json"), "w") as fh:
        json.dump(summary, fh, indent=2)
    plot_trajectories(problem, res.z, os.path.join(args.out_dir, "fit_trajectories.png"))
    ckplot.plot_fit(res, path=os.path.join(args.out_dir, "fit_vs_targets.png"), title="Human SLE: targets vs model")
    if profiles:
        ckplot.plot_profiles(profiles, path=os.path.join(args.out_dir, "profiles.png"))
    print(f"wrote {args.fit_file} and figures in {args.out_dir}")
    return 0 if all(r[4] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
