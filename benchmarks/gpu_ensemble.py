"""GPU ensemble benchmark: `ck.simulate_ensemble` vs vmapped diffrax for N = 1e3 ... 1e6 on one accelerator.

One self-contained command (run from the repository root, with carkinetics importable, e.g. after
`pip install --no-deps --no-build-isolation .`):

    python benchmarks/gpu_ensemble.py --quick      # < 4 minutes on one H100: N up to 1e5, SLE at N = 1e4
    python benchmarks/gpu_ensemble.py              # N up to 1e6 (reference workload), SLE up to 1e5
    python benchmarks/gpu_ensemble.py --quick --n 100 --n-sle 10 --repeats 1     # CPU smoke run

Workloads (see `_workloads.py`): the 9-state timing model (`ReferenceWorkload`, days 0..365, 366 daily saves, rtol
1e-6, atol 1e-8) and the current SLE model (`load_preset("human")`, `erlangen_regimen`, `save_times(365)` from the
first dose, the model class's tolerances). Member 0 has the nominal parameters, the others log-normal perturbations
(seed 0). Tools: `ens_tsit5` / `ens_rodas5` (`ck.simulate_ensemble` with `ck.EnsembleTsit5()` /
`ck.EnsembleRodas5()`), `vmap_tsit5` (`ck.simulate_ensemble` with `diffrax.Tsit5()`: `jax.vmap` of the per-member
diffrax engine) and, on the reference workload, `vmap_diffrax` (the peer in its plainest form:
`jax.jit(jax.vmap(diffrax.diffeqsolve))` on the written-out right-hand side). For each (workload, tool, N) it
compiles first (reported separately), blocks on results, takes the minimum of the repeats and prints seconds per
solve, member 0's step count, failures (`throw=False`), device peak memory and member 0's max relative error against
a tight CPU reference (scipy LSODA rtol 1e-10 on the reference workload; on the SLE model libroadrunner CVODE Adams
rtol 1e-10 / atol 1e-12 if installed, else `ck.simulate` Kvaerno5 rtol 1e-9). float64 throughout. A time budget
(`--budget-s`) skips the remaining configurations rather than overrunning. The last lines are a Markdown table.
"""

from __future__ import annotations

import argparse
import time

import _workloads as W


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="N up to 1e5 and a 210 s budget")
    p.add_argument("--n", default=None, help="override: comma-separated N for the reference workload")
    p.add_argument("--n-sle", default=None, help="override: comma-separated N for the SLE model ('' to skip)")
    p.add_argument("--vmap-max-n", type=int, default=None)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--budget-s", type=float, default=None)
    p.add_argument(
        "--sle-reference",
        default=None,
        metavar="NPY",
        help="load the SLE model's tight reference (saved with --save-sle-reference) instead of computing it",
    )
    p.add_argument("--save-sle-reference", default=None, metavar="NPY", help="save the computed SLE reference")
    args = p.parse_args()
    start = time.perf_counter()
    budget = args.budget_s or (210.0 if args.quick else 1500.0)
    n_ref = [int(float(x)) for x in (args.n or ("1e3,1e4,1e5" if args.quick else "1e3,1e4,1e5,1e6")).split(",")]
    n_sle = [
        int(float(x))
        for x in (args.n_sle if args.n_sle is not None else ("1e4" if args.quick else "1e3,1e4,1e5")).split(",")
        if x
    ]
    vmap_max = args.vmap_max_n or (10_000 if args.quick else 100_000)

    import jax

    jax.config.update("jax_enable_x64", True)
    import diffrax
    import jax.numpy as jnp
    import numpy as np

    import carkinetics as ck

    dev = jax.devices()[0]
    cpu = jax.devices("cpu")[0]
    print(W.machine(), flush=True)
    rows = []

    def peak_mem():
        try:
            return dev.memory_stats()["peak_bytes_in_use"] / 2**30
        except Exception:  # CPU backends report no memory stats
            return float("nan")

    def plain_diffrax(w):
        """jit(vmap(diffeqsolve)) on the reference workload's written-out right-hand side."""
        from carkinetics.models.reference_workload import SHARED_ORDER

        ts = jnp.asarray(w.ts)
        term = diffrax.ODETerm(lambda t, y, p: W.reference_rhs(t, y, p, jnp))
        y0 = jnp.asarray(w.model.initial_state_flat())

        @jax.jit
        def fn(models):
            p = jnp.stack([getattr(models, k) for k in SHARED_ORDER], axis=1)
            sol = jax.vmap(
                lambda q: diffrax.diffeqsolve(
                    term,
                    diffrax.Tsit5(),
                    ts[0],
                    ts[-1],
                    None,
                    y0,
                    args=q,
                    saveat=diffrax.SaveAt(ts=ts),
                    stepsize_controller=diffrax.PIDController(rtol=w.rtol, atol=w.atol),
                    max_steps=100_000,
                    throw=False,
                )
            )(p)
            return sol.ys, sol.stats["num_steps"], sol.result == diffrax.RESULTS.successful

        return fn

    def bench(w, ref, ns):
        ts = jnp.asarray(w.ts)
        floor = W.error_floor(ref)
        tools = ["ens_tsit5", "ens_rodas5", "vmap_tsit5"] + (["vmap_diffrax"] if w.name == "reference" else [])
        for n in ns:
            models = W.perturbed_batch(w, n)
            for tool in tools:
                if time.perf_counter() - start > budget:
                    print(f"(budget of {budget:.0f} s reached: skipping {w.name} {tool} N={n})", flush=True)
                    continue
                if tool.startswith("vmap_") and n > vmap_max:
                    continue
                if tool == "vmap_diffrax":
                    fn = plain_diffrax(w)
                else:
                    solver = {
                        "ens_tsit5": ck.EnsembleTsit5(),
                        "ens_rodas5": ck.EnsembleRodas5(),
                        "vmap_tsit5": diffrax.Tsit5(),
                    }[tool]

                    @jax.jit
                    def fn(m, solver=solver):
                        s = ck.simulate_ensemble(
                            m, w.regimen, ts, t0=w.t0, solver=solver, rtol=w.rtol, atol=w.atol, throw=False
                        )
                        return s.y_array, s.num_steps, s.ok

                try:
                    compile_s, bt, (y, steps, ok) = W.first_and_best(fn, models, repeats=args.repeats)
                except Exception as e:  # e.g. out of memory at the largest N: report and go on
                    print(f"{w.name} {tool} N={n}: failed ({type(e).__name__}: {str(e)[:200]})", flush=True)
                    continue
                err = W.max_rel_err(y[0], ref, floor)
                row = dict(
                    workload=w.name,
                    tool=tool,
                    n=n,
                    compile_s=compile_s,
                    batch_s=bt,
                    per_solve_us=1e6 * bt / n,
                    steps=int(steps[0]),
                    failed=int(np.sum(~np.asarray(ok))),
                    err=err,
                    peak_gib=peak_mem(),
                )
                rows.append(row)
                print(
                    f"{w.name:9s} {tool:12s} N={n:>8d} compile {compile_s:6.1f} s  batch {bt:8.3f} s  "
                    f"{row['per_solve_us']:9.2f} us/solve  steps {row['steps']:5d}  failed {row['failed']}  "
                    f"err {err:.1e}  peak {row['peak_gib']:.1f} GiB",
                    flush=True,
                )

    # ---- reference workload -----------------------------------------------------------------------------------
    from scipy.integrate import solve_ivp

    from carkinetics.models.reference_workload import SHARED_ORDER

    w = W.reference_workload()
    p0 = np.array([float(w.model.get(k)) for k in SHARED_ORDER])
    ref = solve_ivp(
        lambda t, y: W.reference_rhs(t, y, p0, np),
        (0.0, 365.0),
        np.asarray(w.model.initial_state_flat()),
        method="LSODA",
        t_eval=w.ts,
        rtol=1e-10,
        atol=1e-12,
    ).y.T
    print(f"reference workload: tight LSODA reference done ({time.perf_counter() - start:.1f} s)", flush=True)
    bench(w, ref, n_ref)

    # ---- SLE model --------------------------------------------------------------------------------------------
    if n_sle and time.perf_counter() - start < budget:
        w = W.sle_workload()
        shape = (w.ts.size, len(w.model.state_names()))
        if args.sle_reference:
            ref_sle = np.load(args.sle_reference)
            if ref_sle.shape != shape:
                raise SystemExit(
                    f"{args.sle_reference}: shape {ref_sle.shape}, expected {shape} (the current SLE "
                    "model on save_times(365) from the first dose): recompute it."
                )
            print(f"SLE model: tight reference loaded from {args.sle_reference}", flush=True)
        else:
            try:
                import roadrunner

                import carkinetics.io as cio

                rr = roadrunner.RoadRunner(cio.to_sbml(w.model, w.regimen, t0=w.t0))
                rr.integrator.stiff = False  # Adams: 7e-9 from Kvaerno5 rtol 1e-11 on the SLE model v2, BDF 1.2e-6
                rr.integrator.relative_tolerance, rr.integrator.absolute_tolerance = 1e-10, 1e-12
                rr.integrator.maximum_num_steps = 1_000_000
                rr.timeCourseSelections = ["time", *w.model.state_names()]
                rel = [float(x) for x in w.ts - w.t0]
                ref_sle = np.asarray(rr.simulate(times=rel if rel[0] == 0.0 else [0.0, *rel]))[-w.ts.size :, 1:]
                how = "libroadrunner CVODE Adams rtol 1e-10 atol 1e-12"
            except Exception as e:  # libroadrunner missing on the accelerator host: diffrax on the CPU
                print(f"(CVODE reference unavailable: {type(e).__name__}: {str(e)[:120]})", flush=True)
                with jax.default_device(cpu):
                    r = ck.simulate(
                        w.model,
                        w.regimen,
                        jnp.asarray(w.ts),
                        t0=w.t0,
                        solver=diffrax.Kvaerno5(),
                        rtol=1e-9,
                        atol=1e-11,
                        max_steps=500_000,
                    )
                    ref_sle = np.asarray(r.y_array)
                how = "diffrax Kvaerno5 rtol 1e-9 atol 1e-11"
            print(f"SLE model: tight reference ({how}) done ({time.perf_counter() - start:.1f} s)", flush=True)
            if args.save_sle_reference:
                np.save(args.save_sle_reference, ref_sle)
        bench(w, ref_sle, n_sle)

    print(f"\ntotal wall time {time.perf_counter() - start:.0f} s\n")
    print(
        f"| workload | tool | N | compile (s) | batch (s) | µs/solve | steps | failed | max rel err | peak GiB |  "
        f"({dev.device_kind}, float64)"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['workload']} | {r['tool']} | {r['n']:,} | {r['compile_s']:.1f} | {r['batch_s']:.3f} | "
            f"{r['per_solve_us']:.2f} | {r['steps']} | {r['failed']} | {r['err']:.1e} | {r['peak_gib']:.1f} |"
        )


if __name__ == "__main__":
    main()
