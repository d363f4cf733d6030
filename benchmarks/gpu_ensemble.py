"""GPU ensemble benchmark: `ck.simulate_ensemble` vs `vmap(ck.simulate)` for N = 1e3 ... 1e6 on one accelerator.

One self-contained command (run from the repository root, with carkinetics importable, e.g. after
`pip install --no-deps --no-build-isolation .`):

    python benchmarks/gpu_ensemble.py --quick      # < 4 minutes on one H100: N up to 1e5, SLE at N = 1e4
    python benchmarks/gpu_ensemble.py              # N up to 1e6 (reference workload), SLE up to 1e5

Workloads: the 9-state timing model (`ReferenceWorkload`, days 0..365, 366 daily saves, rtol 1e-6, atol 1e-8) and,
if present, the full SLE model (`load_preset("human")`, `erlangen_regimen`, days -5..365 with half-day-offset
daily saves, rtol 1e-6, atol 1e-6). Member 0 has the nominal parameters, the others log-normal perturbations
(seed 0). For each (workload, tool, N) it compiles first (reported separately), blocks on results, takes the
minimum of the repeats and prints seconds per solve, member 0's step count, failures, device peak memory and
member 0's max relative error against a tight CPU reference (scipy LSODA rtol 1e-10 on the reference workload;
`ck.simulate` Kvaerno5 rtol 1e-9 on the SLE model). float64 throughout. A time budget (`--budget-s`) skips
the remaining configurations rather than overrunning. The last lines are a Markdown table.
"""

from __future__ import annotations

import argparse
import time


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="N up to 1e5 and a 210 s budget")
    p.add_argument("--n", default=None, help="override: comma-separated N for the reference workload")
    p.add_argument("--n-sle", default=None, help="override: comma-separated N for the SLE model")
    p.add_argument("--vmap-max-n", type=int, default=None)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--budget-s", type=float, default=None)
    p.add_argument("--sle-reference", default=None, metavar="NPY",
                   help="load the SLE model's tight reference (the Kvaerno5 rtol 1e-9 solution this script computes, "
                        "saved with --save-sle-reference) instead of computing it (~100 s of CPU)")
    p.add_argument("--save-sle-reference", default=None, metavar="NPY", help="save the computed SLE reference")
    args = p.parse_args()
    start = time.perf_counter()
    budget = args.budget_s or (210.0 if args.quick else 1500.0)
    n_ref = [int(float(x)) for x in (args.n or ("1e3,1e4,1e5" if args.quick else "1e3,1e4,1e5,1e6")).split(",")]
    n_sle = [int(float(x)) for x in (args.n_sle or ("1e4" if args.quick else "1e3,1e4,1e5")).split(",") if x]
    vmap_max = args.vmap_max_n or (10_000 if args.quick else 100_000)

    import jax

    jax.config.update("jax_enable_x64", True)
    import diffrax
    import jax.numpy as jnp
    import numpy as np

    import carkinetics as ck

    dev = jax.devices()[0]
    cpu = jax.devices("cpu")[0]
    print(f"jax {jax.__version__}, dtype float64, device {dev.device_kind} ({dev.platform}), "
          f"carkinetics {ck.__version__}", flush=True)
    rows = []

    def peak_mem():
        try:
            return dev.memory_stats()["peak_bytes_in_use"] / 2**30
        except Exception:  # CPU backends report no memory stats
            return float("nan")

    def bench(workload, base, regimen, ts, rtol, atol, ref, ns, sigma, varied):
        floor = 1e-6 * np.max(np.abs(ref), axis=0) + 1e-30
        for n in ns:
            rng = np.random.default_rng(0)
            fac = np.exp(rng.normal(0.0, sigma, (n, len(varied))))
            fac[0] = 1.0
            vals = {v: jnp.asarray(float(base.get(v)) * fac[:, i]) for i, v in enumerate(varied)}
            models = jax.vmap(lambda d: base.replace(d))(vals)
            for tool in ("ens_tsit5", "ens_rodas5", "vmap_tsit5"):
                if time.perf_counter() - start > budget:
                    print(f"(budget of {budget:.0f} s reached: skipping {workload} {tool} N={n})", flush=True)
                    continue
                if tool == "vmap_tsit5":
                    if n > vmap_max:
                        continue
                    fn = jax.jit(jax.vmap(lambda m: ck.simulate(m, regimen, ts, rtol=rtol, atol=atol, throw=False)))
                else:
                    method = ck.EnsembleTsit5() if tool == "ens_tsit5" else ck.EnsembleRodas5()

                    def fn(m, method=method):
                        return ck.simulate_ensemble(m, regimen, ts, method=method, rtol=rtol, atol=atol)
                try:
                    t = time.perf_counter()
                    sol = jax.block_until_ready(fn(models))
                    first = time.perf_counter() - t
                    times = []
                    for _ in range(args.repeats):
                        t = time.perf_counter()
                        jax.block_until_ready(fn(models).y_array)
                        times.append(time.perf_counter() - t)
                except Exception as e:  # e.g. out of memory at the largest N: report and go on
                    print(f"{workload} {tool} N={n}: failed ({type(e).__name__}: {str(e)[:200]})", flush=True)
                    continue
                bt = min(times)
                y = np.asarray(sol.y_array[0])
                err = float(np.max(np.abs(y - ref) / (np.abs(ref) + floor)))
                row = dict(workload=workload, tool=tool, n=n, compile_s=max(first - bt, 0.0), batch_s=bt,
                           per_solve_us=1e6 * bt / n, steps=int(sol.num_steps[0]),
                           failed=int(np.sum(~np.asarray(sol.ok))), err=err, peak_gib=peak_mem())
                rows.append(row)
                print(f"{workload:9s} {tool:11s} N={n:>8d} compile {row['compile_s']:6.1f} s  batch {bt:8.3f} s  "
                      f"{row['per_solve_us']:9.2f} us/solve  steps {row['steps']:5d}  failed {row['failed']}  "
                      f"err {err:.1e}  peak {row['peak_gib']:.1f} GiB", flush=True)

    # ---- reference workload -----------------------------------------------------------------------------------
    from scipy.integrate import solve_ivp

    from carkinetics.models.reference_workload import SHARED_ORDER, ReferenceWorkload

    base = ReferenceWorkload()
    ts_np = np.linspace(0.0, 365.0, 366)
    with jax.default_device(cpu):
        f_cpu = jax.jit(lambda y: base.vector_field_flat(0.0, y, None))
        ref = solve_ivp(lambda t, y: np.asarray(f_cpu(y)), (0.0, 365.0), np.asarray(base.initial_state_flat()),
                        method="LSODA", t_eval=ts_np, rtol=1e-10, atol=1e-12).y.T
    print(f"reference workload: tight LSODA reference done ({time.perf_counter() - start:.1f} s)", flush=True)
    bench("reference", base, None, jnp.asarray(ts_np), 1e-6, 1e-8, ref, n_ref, 0.3, list(SHARED_ORDER))

    # ---- full SLE model ---------------------------------------------------------------------------------------
    try:
        from carkinetics.models.sle import erlangen_regimen, load_preset
    except ImportError:
        load_preset = None
        print("SLE model not available in this checkout: skipped.")
    if load_preset is not None and n_sle and time.perf_counter() - start < budget:
        sle = load_preset("human")
        reg = erlangen_regimen(sle)
        ts_sle = -5.0 + 0.5 + np.arange(370.0)
        if args.sle_reference:
            ref_sle = np.load(args.sle_reference)
            if ref_sle.shape != (ts_sle.size, len(sle.state_names())):
                raise SystemExit(f"{args.sle_reference}: shape {ref_sle.shape}, expected "
                                 f"{(ts_sle.size, len(sle.state_names()))} (days -5..365, half-day offset).")
            print(f"SLE model: tight Kvaerno5 reference loaded from {args.sle_reference}", flush=True)
        else:
            with jax.default_device(cpu):
                r = ck.simulate(sle, reg, jnp.asarray(ts_sle), solver=diffrax.Kvaerno5(), rtol=1e-9, atol=1e-11,
                                max_steps=500_000)
                ref_sle = np.asarray(r.y_array)
            print(f"SLE model: tight Kvaerno5 reference done ({time.perf_counter() - start:.1f} s)", flush=True)
            if args.save_sle_reference:
                np.save(args.save_sle_reference, ref_sle)
        varied = ["car.rho", "car.k_kill", "car.k_exh", "humoral.k_igg", "myeloid.k_il6"]
        bench("sle", sle, reg, jnp.asarray(ts_sle), 1e-6, 1e-6, ref_sle, n_sle, 0.2, varied)

    print(f"\ntotal wall time {time.perf_counter() - start:.0f} s\n")
    print(f"| workload | tool | N | compile (s) | batch (s) | µs/solve | steps | failed | max rel err | peak GiB |  "
          f"({dev.device_kind}, float64)")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['workload']} | {r['tool']} | {r['n']:,} | {r['compile_s']:.1f} | {r['batch_s']:.3f} | "
              f"{r['per_solve_us']:.2f} | {r['steps']} | {r['failed']} | {r['err']:.1e} | {r['peak_gib']:.1f} |")


if __name__ == "__main__":
    main()
