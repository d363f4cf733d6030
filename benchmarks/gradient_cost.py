"""Gradient cost of a population loss: reverse mode vs forward mode vs finite differences, relative to one loss.

Workload: the 9-state timing model (`ReferenceWorkload`; or `--model sle`), N virtual patients whose parameters
are population values (P = 3 log-scale parameters, the differentiated inputs) times fixed log-normal random
effects (seed 0). Loss: mean squared log-error of three observables at all daily saves against the nominal
population's trajectories. Tolerances: rtol 1e-6, atol 1e-8 (sle: 1e-6, 1e-6).

The ensemble runs with `simulate_ensemble`'s default slots (`--slots default`: 120 on CPU, so a member queue
for N > 120; reverse mode then differentiates a re-solve without the queue, see `simulate_ensemble`); `--slots all`
uses one slot per member for every pass, `--slots K` K slots.

Per N the script reports, each compiled first (compile time printed separately), blocked on, min of repeats:

- `loss`: one forward population solve + loss (`ck.simulate_ensemble`, EnsembleTsit5 or `--method rodas5`);
- `reverse`: `jax.grad` through the checkpointed solver loop (the default adjoint), and its ratio to `loss`;
- `forward`: `jax.jacfwd` with `adjoint=diffrax.ForwardMode()` (P tangents);
- `fd`: central finite differences (2 P losses, step 1e-5 in log space);
- `vmap_reverse`: `jax.grad` of the same loss with `jax.vmap(ck.simulate)` (diffrax Tsit5, reverse mode);

and the relative difference of each gradient from the reverse-mode one. Memory: the compiled executable's
temporary buffer size (XLA memory analysis) of the reverse-mode gradient.

Example: `python benchmarks/gradient_cost.py --n 100,1000 --repeats 3`
"""

from __future__ import annotations

import argparse
import time


def _slots(arg, n):
    return None if arg == "default" else n if arg == "all" else int(arg)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n", default="100,1000")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--model", choices=["reference", "sle"], default="reference")
    p.add_argument("--method", choices=["tsit5", "rodas5"], default="tsit5")
    p.add_argument("--skip-vmap", action="store_true")
    p.add_argument("--slots", default="default", help="simulate_ensemble slots: 'default' (None: 120 on CPU, N on "
                   "accelerators), 'all' (= N: no member queue) or an int")
    p.add_argument("--checkpoints", default="", help="comma-separated checkpoint counts for extra reverse-mode rows "
                   "(diffrax.RecursiveCheckpointAdjoint(checkpoints=K): more checkpoints, fewer recomputations)")
    args = p.parse_args()

    import jax

    jax.config.update("jax_enable_x64", True)
    import diffrax
    import jax.numpy as jnp
    import numpy as np

    import carkinetics as ck

    print(f"jax {jax.__version__}, dtype float64, device {jax.devices()[0].device_kind} ({jax.default_backend()})")
    if args.model == "reference":
        from carkinetics.models.reference_workload import ReferenceWorkload

        base, regimen = ReferenceWorkload(), None
        ts = jnp.linspace(0.0, 365.0, 366)
        pop = ["rho", "kk", "kab"]
        rtol, atol = 1e-6, 1e-8
    else:
        from carkinetics.models.sle import erlangen_regimen, load_preset

        base = load_preset("human")
        regimen = erlangen_regimen(base)
        ts = jnp.asarray(-5.0 + 0.5 + np.arange(370.0))
        pop = ["car.rho", "car.k_kill", "humoral.k_igg"]
        rtol, atol = 1e-6, 1e-6
    method = ck.EnsembleTsit5() if args.method == "tsit5" else ck.EnsembleRodas5()
    theta0 = jnp.log(jnp.array([float(base.get(n)) for n in pop]))
    print(f"population parameters (log scale): {pop}; method {type(method).__name__}; rtol {rtol}, atol {atol}")

    for n in [int(float(x)) for x in args.n.split(",")]:
        eta = jnp.asarray(np.random.default_rng(0).normal(0.0, 0.2, (n, len(pop))))

        def models_of(theta):
            vals = jnp.exp(theta[None, :] + eta)
            return jax.vmap(lambda v: base.replace({k: v[i] for i, k in enumerate(pop)}))(vals)

        truth = ck.simulate_ensemble(models_of(theta0), regimen, ts, method=method, rtol=1e-9, atol=1e-11)
        # Log observables above a floor: 1e-6 for the reference workload; for the SLE model 1e-6 x each observable's
        # maximum (CAR T cells in the body reach 2e10: an absolute floor of 1e-6 sat far below the solver's absolute
        # tolerance, so the loss followed sub-atol round-off and finite differences were meaningless).
        floor = 1e-6
        if args.model == "sle":
            floor = 1e-6 * jnp.max(jnp.abs(truth.obs_array[..., :3]), axis=(0, 1), keepdims=True)

        def observe(sol):
            return jnp.log(jnp.abs(sol.obs_array[..., :3]) + floor)

        data = observe(truth)
        theta = theta0 + 0.05  # evaluate away from the optimum (non-zero gradient)

        def loss(th, adjoint=None):
            sol = ck.simulate_ensemble(models_of(th), regimen, ts, method=method, rtol=rtol, atol=atol,
                                       adjoint=adjoint, slots=_slots(args.slots, n))
            return jnp.mean((observe(sol) - data) ** 2)

        def vmap_loss(th):
            sol = jax.vmap(lambda m: ck.simulate(m, regimen, ts, rtol=rtol, atol=atol, throw=False))(models_of(th))
            return jnp.mean((observe(sol) - data) ** 2)

        h = 1e-5
        eye = jnp.eye(len(pop))
        fns = {
            "loss": jax.jit(loss),
            "reverse": jax.jit(jax.grad(loss)),
            "forward": jax.jit(jax.jacfwd(lambda th: loss(th, diffrax.ForwardMode()))),
            "fd": jax.jit(lambda th: jax.vmap(lambda e: (loss(th + h * e) - loss(th - h * e)) / (2 * h))(eye)),
        }
        for k in [int(x) for x in args.checkpoints.split(",") if x]:
            fns[f"reverse_ck{k}"] = jax.jit(jax.grad(
                lambda th, k=k: loss(th, diffrax.RecursiveCheckpointAdjoint(checkpoints=k))))
        if not args.skip_vmap:
            fns["vmap_reverse"] = jax.jit(jax.grad(vmap_loss))
        res = {}
        for name, fn in fns.items():
            t = time.perf_counter()
            out = jax.block_until_ready(fn(theta))
            first = time.perf_counter() - t
            times = []
            for _ in range(args.repeats):
                t = time.perf_counter()
                jax.block_until_ready(fn(theta))
                times.append(time.perf_counter() - t)
            res[name] = (out, min(times), max(first - min(times), 0.0))
        g_rev = np.asarray(res["reverse"][0])
        try:
            mem = fns["reverse"].lower(theta).compile().memory_analysis()
            mem_s = f"{mem.temp_size_in_bytes / 2**20:.0f} MiB temporaries"
        except Exception as e:  # memory analysis is backend-dependent
            mem_s = f"n/a ({type(e).__name__})"
        t_loss = res["loss"][1]
        print(f"\nN = {n}: loss {float(res['loss'][0]):.6g}; reverse-mode gradient {g_rev}; memory {mem_s}")
        print(f"{'what':14s} {'compile (s)':>12s} {'time (s)':>10s} {'x loss':>8s} {'rel. diff vs reverse':>22s}")
        for name, (out, t, c) in res.items():
            d = "" if name == "loss" else f"{np.max(np.abs(np.asarray(out) - g_rev)) / np.max(np.abs(g_rev)):.1e}"
            print(f"{name:14s} {c:12.2f} {t:10.4f} {t / t_loss:8.2f} {d:>22s}")


if __name__ == "__main__":
    main()
