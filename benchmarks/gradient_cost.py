"""Gradient cost of a population loss: reverse mode vs forward mode vs finite differences, relative to one loss.

Workload (`--model`, see `_workloads.py`): the 9-state timing model (`ReferenceWorkload`) or the current SLE model
(`load_preset("human")`, `erlangen_regimen`, `save_times(365)` from the first dose), N virtual patients whose
parameters are population values (P = 3 log-scale parameters, the differentiated inputs) times fixed log-normal
random effects (sd 0.2, seed 0). Loss: mean squared log-error of the first three observables at all saves against
the nominal population's trajectories (computed at rtol 1e-9), evaluated at log-parameters + 0.05. Tolerances: the
workload's (reference rtol 1e-6, atol 1e-8; SLE: the model class's defaults).

The ensemble method (`--method tsit5|rodas5`: `ck.EnsembleTsit5` / `ck.EnsembleRodas5`) runs with its default slots
(`--slots default`: 120 on CPU, so a member queue for N > 120; reverse mode then differentiates a re-solve without
the queue), `--slots all` one slot per member, `--slots K` K slots (the method's `slots` field).

Per N the script reports, each compiled first (compile time printed separately), blocked on, min of repeats:

- `loss`: one forward population solve + loss (`ck.simulate_ensemble` with the ensemble method);
- `reverse`: `jax.grad` through the checkpointed solver loop (the default adjoint), and its ratio to `loss`;
- `forward`: `jax.jacfwd` with `adjoint=diffrax.ForwardMode()` (P tangents);
- `fd`: central finite differences (2 P losses, step 1e-5 in log space);
- `vmap_reverse`: `jax.grad` of the same loss with `ck.simulate_ensemble(..., solver=diffrax.Tsit5())` (`jax.vmap`
  of the per-member diffrax engine, reverse mode);
- `vmap_diffrax_reverse` (reference workload): the same with the peer in its plainest form,
  `jax.vmap(diffrax.diffeqsolve)` on the right-hand side written out;

and the relative difference of each gradient from the reverse-mode one. Memory: the compiled executable's
temporary buffer size (XLA memory analysis) of the reverse-mode gradient.

Examples:

    python benchmarks/gradient_cost.py --quick                        # smoke run (N = 20, one repeat)
    python benchmarks/gradient_cost.py --n 100,1000 --repeats 3
    python benchmarks/gradient_cost.py --model sle --method rodas5 --n 100,1000 --skip-vmap
"""

from __future__ import annotations

import argparse
import dataclasses

import _workloads as W


def _slots(arg, n):
    return None if arg == "default" else n if arg == "all" else int(arg)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n", default="100,1000")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--quick", action="store_true", help="smoke run: N = 20, one repeat")
    p.add_argument("--model", choices=["reference", "sle"], default="reference")
    p.add_argument("--method", choices=["tsit5", "rodas5"], default="tsit5")
    p.add_argument("--skip-vmap", action="store_true")
    p.add_argument(
        "--slots",
        default="default",
        help="the ensemble method's slots: 'default' (None: 120 on CPU, N "
        "on accelerators), 'all' (= N: no member queue) or an int",
    )
    p.add_argument(
        "--checkpoints",
        default="",
        help="comma-separated checkpoint counts for extra reverse-mode rows "
        "(diffrax.RecursiveCheckpointAdjoint(checkpoints=K): more checkpoints, fewer recomputations)",
    )
    args = p.parse_args()
    if args.quick:
        args.n, args.repeats = "20", 1

    import jax

    jax.config.update("jax_enable_x64", True)
    import diffrax
    import jax.numpy as jnp
    import numpy as np

    import carkinetics as ck

    print(W.machine())
    w = W.workload(args.model)
    base, regimen, ts = w.model, w.regimen, jnp.asarray(w.ts)
    if args.model == "reference":
        pop = ("rho", "kk", "kab")
    else:
        pop = W.pick_parameters(base, W.SLE_POPULATION, 3)
    method0 = ck.EnsembleTsit5() if args.method == "tsit5" else ck.EnsembleRodas5()
    theta0 = jnp.log(jnp.array([float(base.get(n)) for n in pop]))
    print(
        f"workload {w.name}; population parameters (log scale): {list(pop)}; method {type(method0).__name__}; "
        f"rtol {w.rtol}, atol {w.atol}"
    )

    for n in [int(float(x)) for x in args.n.split(",")]:
        method = dataclasses.replace(method0, slots=_slots(args.slots, n))
        eta = jnp.asarray(np.random.default_rng(0).normal(0.0, 0.2, (n, len(pop))))

        def models_of(theta, eta=eta):
            vals = jnp.exp(theta[None, :] + eta)
            return ck.batch_models(base, {k: vals[:, i] for i, k in enumerate(pop)})

        truth = ck.simulate_ensemble(
            models_of(theta0), regimen, ts, t0=w.t0, solver=method, rtol=1e-9, atol=1e-11, max_steps=1_000_000
        )
        # Log observables above a floor: 1e-6 for the reference workload; for the SLE model 1e-6 x each observable's
        # maximum (cell counts in the body reach ~1e10: an absolute floor of 1e-6 would sit far below the solver's
        # absolute tolerance, so the loss would follow sub-atol round-off and finite differences be meaningless).
        floor = 1e-6
        if args.model == "sle":
            floor = 1e-6 * jnp.max(jnp.abs(truth.obs_array[..., :3]), axis=(0, 1), keepdims=True)

        def observe(y_obs, floor=floor):
            return jnp.log(jnp.abs(y_obs[..., :3]) + floor)

        data = observe(truth.obs_array)
        theta = theta0 + 0.05  # evaluate away from the optimum (non-zero gradient)

        def loss(th, adjoint=None, models_of=models_of, method=method, data=data, observe=observe):
            sol = ck.simulate_ensemble(
                models_of(th),
                regimen,
                ts,
                t0=w.t0,
                solver=method,
                rtol=w.rtol,
                atol=w.atol,
                adjoint=adjoint,
                throw=False,
            )
            return jnp.mean((observe(sol.obs_array) - data) ** 2)

        def vmap_loss(th, models_of=models_of, data=data, observe=observe):
            sol = ck.simulate_ensemble(
                models_of(th), regimen, ts, t0=w.t0, solver=diffrax.Tsit5(), rtol=w.rtol, atol=w.atol, throw=False
            )
            return jnp.mean((observe(sol.obs_array) - data) ** 2)

        h = 1e-5
        eye = jnp.eye(len(pop))
        fns = {
            "loss": jax.jit(loss),
            "reverse": jax.jit(jax.grad(loss)),
            "forward": jax.jit(jax.jacfwd(lambda th, loss=loss: loss(th, diffrax.ForwardMode()))),
            "fd": jax.jit(
                lambda th, loss=loss, h=h, eye=eye: jax.vmap(lambda e: (loss(th + h * e) - loss(th - h * e)) / (2 * h))(
                    eye
                )
            ),
        }
        for k in [int(x) for x in args.checkpoints.split(",") if x]:
            fns[f"reverse_ck{k}"] = jax.jit(
                jax.grad(lambda th, k=k, loss=loss: loss(th, diffrax.RecursiveCheckpointAdjoint(checkpoints=k)))
            )
        if not args.skip_vmap:
            fns["vmap_reverse"] = jax.jit(jax.grad(vmap_loss))
            if args.model == "reference":
                fns["vmap_diffrax_reverse"] = jax.jit(jax.grad(_plain_diffrax_loss(w, pop, eta, data, observe)))
        res = {}
        for name, fn in fns.items():
            c, t, out = W.first_and_best(fn, theta, repeats=args.repeats)
            res[name] = (out, t, c)
        g_rev = np.asarray(res["reverse"][0])
        try:
            mem = fns["reverse"].lower(theta).compile().memory_analysis()
            mem_s = f"{mem.temp_size_in_bytes / 2**20:.0f} MiB temporaries"
        except Exception as e:  # memory analysis is backend-dependent
            mem_s = f"n/a ({type(e).__name__})"
        t_loss = res["loss"][1]
        print(
            f"\nN = {n} (slots {method.slots or 'default'}): loss {float(res['loss'][0]):.6g}; reverse-mode "
            f"gradient {g_rev}; memory {mem_s}"
        )
        print(f"{'what':22s} {'compile (s)':>12s} {'time (s)':>10s} {'x loss':>8s} {'rel. diff vs reverse':>22s}")
        for name, (out, t, c) in res.items():
            d = "" if name == "loss" else f"{np.max(np.abs(np.asarray(out) - g_rev)) / np.max(np.abs(g_rev)):.1e}"
            print(f"{name:22s} {c:12.2f} {t:10.4f} {t / t_loss:8.2f} {d:>22s}", flush=True)


def _plain_diffrax_loss(w, pop, eta, data, observe):
    """The reference workload's population loss with `jax.vmap(diffrax.diffeqsolve)` on the written-out right-hand
    side (Tsit5, PIDController at the workload's tolerances, reverse mode through the default adjoint)."""
    import diffrax
    import jax
    import jax.numpy as jnp

    from carkinetics.models.reference_workload import SHARED_ORDER

    base = w.model
    ts = jnp.asarray(w.ts)
    y0 = jnp.asarray(base.initial_state_flat())
    p0 = jnp.array([float(base.get(k)) for k in SHARED_ORDER])
    idx = jnp.array([SHARED_ORDER.index(k) for k in pop])
    term = diffrax.ODETerm(lambda t, y, p: W.reference_rhs(t, y, p, jnp))

    def one(p):
        sol = diffrax.diffeqsolve(
            term,
            diffrax.Tsit5(),
            ts[0],
            ts[-1],
            None,
            y0,
            args=p,
            saveat=diffrax.SaveAt(ts=ts),
            max_steps=100_000,
            throw=False,
            stepsize_controller=diffrax.PIDController(rtol=w.rtol, atol=w.atol),
        )
        y = sol.ys  # observables of ReferenceWorkload: car_t = ce + cm, b_cells = b, autoantibody = ab
        return jnp.stack([y[:, 0] + y[:, 1], y[:, 2], y[:, 5]], axis=-1)

    def loss(th):
        p = jnp.broadcast_to(p0, (eta.shape[0], p0.size)).at[:, idx].set(jnp.exp(th[None, :] + eta))
        return jnp.mean((observe(jax.vmap(one)(p)) - data) ** 2)

    return loss


if __name__ == "__main__":
    main()
