"""EnsembleRodas5 on an accelerator: which batched linear solver to use (compile time and speed).

Times `ck.simulate_ensemble` with `EnsembleRodas5(linear_solver=...)` for each of `--kinds`: "lapack"
(`jax.lax.linalg.lu` on the full matrix: cuSOLVER/cuBLAS batched getrf on GPU), "vectorized" (elimination unrolled over
the states, batch-vectorised), "loop" (the same elimination in a `fori_loop`), "block" (only the diagonal blocks of the
Jacobian's block-triangular form are factorised: vectorised below 12 states on accelerators, LAPACK from there) and
"block_lapack" (LAPACK for every block). Workloads: the 29-state SLE model (Erlangen regimen, days -5..365 with
half-day-offset daily saves, rtol = atol = 1e-6, log-normal perturbations of five parameters, seed 0) at each N of
`--n`, and optionally (`--ref-n`) the 9-state reference workload (rtol 1e-6, atol 1e-8) with EnsembleRodas5 for the
kinds of `--ref-kinds` and EnsembleTsit5. Compile is reported separately, results are blocked on, the time is the
minimum of `--repeats`, float64 throughout. The max difference between the kinds' solutions (relative to each state's
maximum) shows they compute the same method. A time budget (`--budget-s`) skips the remaining configurations rather than
overrunning a lease.

    python benchmarks/gpu_rodas5_linear_solvers.py --n 10000,100000 --kinds lapack,block --ref-n 100000 --budget-s 420
"""

from __future__ import annotations

import argparse
import time


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n", default="10000", help="comma-separated ensemble sizes for the SLE model")
    p.add_argument("--kinds", default="lapack,loop,vectorized,block", help="comma-separated `linear_solver` values")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--ref-n", type=int, default=0, help="also time the reference workload at this N (0: skip)")
    p.add_argument("--ref-kinds", default="vectorized,block", help="`linear_solver` values for the reference workload")
    p.add_argument("--budget-s", type=float, default=1e9, help="skip what would start after this many seconds")
    args = p.parse_args()
    import jax

    jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp
    import numpy as np

    import carkinetics as ck
    from carkinetics.models.sle import erlangen_regimen, load_preset

    start = time.perf_counter()
    kinds = args.kinds.split(",")
    print(f"jax {jax.__version__}, float64, device {jax.devices()[0].device_kind} ({jax.default_backend()})",
          flush=True)

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
        print(f"{label} N={n}: compile {first - best:6.1f} s, batch {best:7.3f} s, {1e6 * best / n:8.2f} us/solve, "
              f"steps(member 0) {int(sol.num_steps[0])}, max steps {int(np.max(np.asarray(sol.num_steps)))}, "
              f"failed {int(np.sum(~np.asarray(sol.ok)))}", flush=True)
        return np.asarray(sol.y_array)

    def compare(sols, label):
        have = {k: v for k, v in sols.items() if v is not None}
        if len(have) < 2:
            return
        first = next(iter(have))
        scale = np.max(np.abs(have[first]), axis=(0, 1)) + 1e-30
        for k, v in have.items():
            if k != first:
                print(f"{label}: max |{k} - {first}| / state max: {float(np.max(np.abs(v - have[first]) / scale)):.2e}",
                      flush=True)

    base = load_preset("human")
    regimen = erlangen_regimen(base)
    ts = jnp.asarray(-5.0 + 0.5 + np.arange(370.0))
    varied = ["car.rho", "car.k_kill", "car.k_exh", "humoral.k_igg", "myeloid.k_il6"]
    for n in (int(x) for x in args.n.split(",")):
        rng = np.random.default_rng(0)
        fac = np.exp(rng.normal(0.0, 0.2, (n, len(varied))))
        fac[0] = 1.0
        models = jax.vmap(lambda d: base.replace(d))({v: jnp.asarray(float(base.get(v)) * fac[:, i])
                                                      for i, v in enumerate(varied)})
        sols = {}
        for kind in kinds:
            fn = jax.jit(lambda m, kind=kind: ck.simulate_ensemble(
                m, regimen, ts, solver=ck.EnsembleRodas5(linear_solver=kind), rtol=1e-6, atol=1e-6))
            sols[kind] = timed(f"sle rodas5 linear_solver={kind:12s}", fn, models, n)
        compare(sols, f"sle N={n}")
    if args.ref_n:
        from carkinetics.models.reference_workload import SHARED_ORDER, ReferenceWorkload

        ref = ReferenceWorkload()
        fac = np.exp(np.random.default_rng(0).normal(0.0, 0.3, (args.ref_n, len(SHARED_ORDER))))
        fac[0] = 1.0
        models = jax.vmap(lambda d: ref.replace(d))({v: jnp.asarray(float(ref.get(v)) * fac[:, i])
                                                     for i, v in enumerate(SHARED_ORDER)})
        ts_ref = jnp.linspace(0.0, 365.0, 366)
        fn = jax.jit(lambda m: ck.simulate_ensemble(m, None, ts_ref, rtol=1e-6, atol=1e-8))
        timed("reference ens_tsit5                        ", fn, models, args.ref_n)
        sols = {}
        for kind in args.ref_kinds.split(","):
            fn = jax.jit(lambda m, kind=kind: ck.simulate_ensemble(
                m, None, ts_ref, solver=ck.EnsembleRodas5(linear_solver=kind), rtol=1e-6, atol=1e-8))
            sols[kind] = timed(f"reference rodas5 linear_solver={kind:12s}", fn, models, args.ref_n)
        compare(sols, f"reference N={args.ref_n}")
    print(f"total {time.perf_counter() - start:.0f} s", flush=True)


if __name__ == "__main__":
    main()
