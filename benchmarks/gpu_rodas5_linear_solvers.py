"""EnsembleRodas5 on an accelerator: which batched linear solver to use (compile time and speed).

Times `ck.simulate_ensemble` with `EnsembleRodas5(linear_solver=...)` for each of `--kinds`: "lapack"
(`jax.lax.linalg.lu` on the full matrix: cuSOLVER/cuBLAS batched getrf on GPU), "vectorized" (elimination unrolled over
the states, batch-vectorised), "loop" (the same elimination in a `fori_loop`), "block" (only the diagonal blocks of the
Jacobian's block-triangular form are factorised: vectorised below 12 states on accelerators, LAPACK from there) and
"block_lapack" (LAPACK for every block). Workloads (see `_workloads.py`): the current SLE model (`load_preset("human")`,
`erlangen_regimen`, `save_times(365)` from the first dose, the model class's tolerances, log-normal perturbations of
five rate parameters, seed 0) at each N of `--n`, and optionally (`--ref-n`) the 9-state reference workload (rtol
1e-6, atol 1e-8) with EnsembleRodas5 for the kinds of `--ref-kinds` and EnsembleTsit5. Compile is reported
separately, results are blocked on, the time is the minimum of `--repeats`, float64 throughout; failures are counted
(`throw=False`). The max difference between the kinds' solutions (relative to each state's maximum) shows they
compute the same method. A time budget (`--budget-s`) skips the remaining configurations rather than overrunning a
lease.

    python benchmarks/gpu_rodas5_linear_solvers.py --n 10000,100000 --kinds lapack,block --ref-n 100000 --budget-s 420
    python benchmarks/gpu_rodas5_linear_solvers.py --quick      # CPU smoke run: N = 8, lapack and block, ref N = 16
"""

from __future__ import annotations

import argparse
import time

import _workloads as W


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n", default="10000", help="comma-separated ensemble sizes for the SLE model")
    p.add_argument("--kinds", default="lapack,loop,vectorized,block", help="comma-separated `linear_solver` values")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--ref-n", type=int, default=0, help="also time the reference workload at this N (0: skip)")
    p.add_argument("--ref-kinds", default="vectorized,block", help="`linear_solver` values for the reference workload")
    p.add_argument("--budget-s", type=float, default=1e9, help="skip what would start after this many seconds")
    p.add_argument("--quick", action="store_true", help="smoke run: SLE N = 8 (lapack, block), reference N = 16")
    args = p.parse_args()
    if args.quick:
        args.n, args.kinds, args.repeats, args.ref_n, args.ref_kinds = "8", "lapack,block", 1, 16, "block"
    import jax

    jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp
    import numpy as np

    import carkinetics as ck

    start = time.perf_counter()
    kinds = args.kinds.split(",")
    print(W.machine(), flush=True)

    def timed(label, fn, models, n):
        if time.perf_counter() - start > args.budget_s:
            print(f"{label}: skipped (budget of {args.budget_s:.0f} s reached)", flush=True)
            return None
        t = time.perf_counter()
        sol = jax.block_until_ready(fn(models))
        first = time.perf_counter() - t
        best = 1e9
        for _ in range(args.repeats):
            t = time.perf_counter()
            jax.block_until_ready(fn(models).y_array)
            best = min(best, time.perf_counter() - t)
        print(
            f"{label} N={n}: compile {first - best:6.1f} s, batch {best:7.3f} s, {1e6 * best / n:8.2f} us/solve, "
            f"steps(member 0) {int(sol.num_steps[0])}, max steps {int(np.max(np.asarray(sol.num_steps)))}, "
            f"failed {int(np.sum(~np.asarray(sol.ok)))}",
            flush=True,
        )
        return np.asarray(sol.y_array)

    def compare(sols, label):
        have = {k: v for k, v in sols.items() if v is not None}
        if len(have) < 2:
            return
        first = next(iter(have))
        scale = np.max(np.abs(have[first]), axis=(0, 1)) + 1e-30
        for k, v in have.items():
            if k != first:
                print(
                    f"{label}: max |{k} - {first}| / state max: {float(np.max(np.abs(v - have[first]) / scale)):.2e}",
                    flush=True,
                )

    def solve(w, solver):
        ts = jnp.asarray(w.ts)
        return jax.jit(
            lambda m: ck.simulate_ensemble(
                m, w.regimen, ts, t0=w.t0, solver=solver, rtol=w.rtol, atol=w.atol, throw=False
            )
        )

    w = W.sle_workload()
    for n in (int(x) for x in args.n.split(",") if x):
        models = W.perturbed_batch(w, n)
        sols = {}
        for kind in kinds:
            fn = solve(w, ck.EnsembleRodas5(linear_solver=kind))
            sols[kind] = timed(f"sle rodas5 linear_solver={kind:12s}", fn, models, n)
        compare(sols, f"sle N={n}")
    if args.ref_n:
        w = W.reference_workload()
        models = W.perturbed_batch(w, args.ref_n)
        timed("reference ens_tsit5                        ", solve(w, ck.EnsembleTsit5()), models, args.ref_n)
        sols = {}
        for kind in args.ref_kinds.split(","):
            fn = solve(w, ck.EnsembleRodas5(linear_solver=kind))
            sols[kind] = timed(f"reference rodas5 linear_solver={kind:12s}", fn, models, args.ref_n)
        compare(sols, f"reference N={args.ref_n}")
    print(f"total {time.perf_counter() - start:.0f} s", flush=True)


if __name__ == "__main__":
    main()
