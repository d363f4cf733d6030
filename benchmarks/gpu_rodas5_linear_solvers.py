"""EnsembleRodas5 on an accelerator: which batched LU to use for the 29-state SLE model (compile time and speed).

Times `ck.simulate_ensemble` with `EnsembleRodas5(linear_solver=...)` for "vectorized" (elimination unrolled over
the states, batch-vectorised), "loop" (the same elimination in a `fori_loop`: compile time independent of the size)
and "lapack" (`jax.lax.linalg.lu`: cuSOLVER/cuBLAS batched getrf on GPU) on the SLE model (Erlangen regimen,
log-normal perturbations as in gpu_ensemble.py), N = 1e4; compile reported separately, `block_until_ready`, min of
repeats, float64; the max difference between the three solutions shows they are the same method. Optionally
(`--ref-n`) one EnsembleTsit5 run of the reference workload at a large N.

    python benchmarks/gpu_rodas5_linear_solvers.py --n 10000 --ref-n 1000000
"""

from __future__ import annotations

import argparse
import time


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=10_000)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--ref-n", type=int, default=0)
    args = p.parse_args()
    import jax

    jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp
    import numpy as np

    import carkinetics as ck
    from carkinetics.models import erlangen_regimen, load_preset

    print(f"jax {jax.__version__}, float64, device {jax.devices()[0].device_kind}", flush=True)
    base = load_preset("human")
    regimen = erlangen_regimen(base)
    ts = jnp.asarray(-5.0 + 0.5 + np.arange(370.0))
    varied = ["car.rho", "car.k_kill", "car.k_exh", "humoral.k_igg", "myeloid.k_il6"]
    rng = np.random.default_rng(0)
    fac = np.exp(rng.normal(0.0, 0.2, (args.n, len(varied))))
    fac[0] = 1.0
    models = jax.vmap(lambda d: base.replace(d))({v: jnp.asarray(float(base.get(v)) * fac[:, i])
                                                  for i, v in enumerate(varied)})
    sols = {}
    for kind in ("lapack", "loop", "vectorized"):
        fn = jax.jit(lambda m, kind=kind: ck.simulate_ensemble(
            m, regimen, ts, method=ck.EnsembleRodas5(linear_solver=kind), rtol=1e-6, atol=1e-6))
        t = time.perf_counter()
        sol = jax.block_until_ready(fn(models))
        first = time.perf_counter() - t
        best = 1e9
        for _ in range(args.repeats):
            t = time.perf_counter()
            jax.block_until_ready(fn(models).y_array)
            best = min(best, time.perf_counter() - t)
        sols[kind] = np.asarray(sol.y_array)
        print(f"sle rodas5 linear_solver={kind:10s} N={args.n}: compile {first - best:6.1f} s, batch {best:7.3f} s, "
              f"{1e6 * best / args.n:8.2f} us/solve, steps(member 0) {int(sol.num_steps[0])}, "
              f"failed {int(np.sum(~np.asarray(sol.ok)))}", flush=True)
    scale = np.max(np.abs(sols["lapack"]), axis=(0, 1)) + 1e-30
    for kind in ("loop", "vectorized"):
        print(f"max |{kind} - lapack| / state max: {float(np.max(np.abs(sols[kind] - sols['lapack']) / scale)):.2e}")
    if args.ref_n:
        from carkinetics.models.reference_workload import SHARED_ORDER, ReferenceWorkload

        ref = ReferenceWorkload()
        fac = np.exp(np.random.default_rng(0).normal(0.0, 0.3, (args.ref_n, len(SHARED_ORDER))))
        fac[0] = 1.0
        models = jax.vmap(lambda d: ref.replace(d))({v: jnp.asarray(float(ref.get(v)) * fac[:, i])
                                                     for i, v in enumerate(SHARED_ORDER)})
        fn = jax.jit(lambda m: ck.simulate_ensemble(m, None, jnp.linspace(0.0, 365.0, 366)).obs_array[:, -1])
        t = time.perf_counter()
        jax.block_until_ready(fn(models))
        first = time.perf_counter() - t
        t = time.perf_counter()
        jax.block_until_ready(fn(models))
        bt = time.perf_counter() - t
        print(f"reference ens_tsit5 N={args.ref_n}: compile {first - bt:.1f} s, batch {bt:.3f} s, "
              f"{1e6 * bt / args.ref_n:.2f} us/solve", flush=True)


if __name__ == "__main__":
    main()
