"""`carkinetics bench`: compile time and best-of-N solve time of one model and regimen on this machine."""

from __future__ import annotations

import argparse
import csv
import os
import time
from typing import TYPE_CHECKING

from ._common import (
    EXIT_OK,
    MAX_ENSEMBLE,
    MAX_REPEATS,
    add_devices_arg,
    add_engine_arg,
    add_run_args,
    device_count,
    whole_number,
)
from ._inputs import resolve_run
from ._plugins import Command, Context

if TYPE_CHECKING:
    from .._engine._simulate import Engine


def perturbed(space, base, factors):
    """`base * factors` clipped to the declared bounds of `space`'s parameters (a fraction at 0.8 times 1.3 would be
    an invalid member, not a benchmark of the solver)."""
    import numpy as np

    return np.clip(np.asarray(base) * factors, np.asarray(space.lower), np.asarray(space.upper))


def _bench_ensemble(args, run, space, base, engine: Engine, out: str) -> None:
    """`bench --ensemble N`: N members (every parameter times a log-normal factor, sigma 0.1, fixed seed, clipped to
    its declared bounds) with `ck.simulate_ensemble` and the model class's solver on `engine`; per-member time,
    compile time, mean steps; written to bench_ensemble.csv."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    import carkinetics as ck
    import carkinetics.io as ckio

    n = int(args.ensemble)
    solver = ck.default_solver(run.model, engine)
    fac = np.exp(0.1 * np.random.default_rng(0).standard_normal((n, base.shape[0])))
    batch = jax.vmap(lambda v: space.with_values(run.model, v))(jnp.asarray(perturbed(space, base[None, :], fac)))
    n_dev = device_count(args.devices or "all") if engine == "ensemble" else 1
    devices = n_dev if n_dev > 1 else None
    ts = jnp.asarray(run.ts)
    fn = jax.jit(lambda b: ck.simulate_ensemble(b, run.regimen, ts, solver=solver, devices=devices, throw=False))
    t0 = time.perf_counter()
    sol = jax.block_until_ready(fn(batch))
    first = time.perf_counter() - t0
    times = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(batch).y_array)
        times.append(time.perf_counter() - t0)
    best = min(times)
    compile_s = max(first - best, 0.0)
    n_failed = int(np.sum(~np.asarray(sol.ok)))
    path = os.path.join(out, "bench_ensemble.csv")
    with ckio.atomic_text_file(path, newline="") as fh:
        w = csv.writer(fh)
        w.writerow(
            [
                "model",
                "engine",
                "method",
                "members",
                "device",
                "devices",
                "dtype",
                "compile_s",
                "best_batch_s",
                "per_member_s",
                "mean_steps",
                "n_failed",
            ]
        )
        w.writerow(
            [
                type(run.model).__name__,
                engine,
                type(solver).__name__,
                n,
                jax.devices()[0].platform,
                n_dev,
                str(ts.dtype),
                f"{compile_s:.4f}",
                f"{best:.6f}",
                f"{best / n:.8f}",
                f"{float(np.mean(np.asarray(sol.num_steps))):.1f}",
                n_failed,
            ]
        )
    print(
        f"ensemble of {n} ({engine} engine, {type(solver).__name__}, {n_dev} {jax.devices()[0].platform} "
        f"device(s)): compile {compile_s:.2f} s, {1e6 * best / n:.1f} us per member (best of {args.repeats}), "
        f"failed {n_failed}"
    )
    print(f"wrote {path}")


class BenchCommand(Command):
    name = "bench"
    help = "time the solver core on this machine (compile time, best-of-N solve)"
    description = (
        "Compile and time ck.simulate for one model and regimen (default: the default preset, i.e. the "
        "SLE human course under the Erlangen regimen on its save grid): compile + first call, then the "
        "best and median of --repeats calls with perturbed parameter values (jax.block_until_ready). "
        "Writes bench.csv; --ensemble N also times ck.simulate_ensemble (bench_ensemble.csv)."
    )
    outputs = ("bench.csv", "bench_ensemble.csv")

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        add_run_args(parser)
        parser.add_argument(
            "--repeats", type=whole_number(1, MAX_REPEATS), default=5, help="timed calls after compilation (default 5)"
        )
        parser.add_argument(
            "--ensemble",
            type=whole_number(0, MAX_ENSEMBLE),
            default=0,
            metavar="N",
            help="also time ck.simulate_ensemble on N perturbed members (per-member time; bench_ensemble.csv)",
        )
        add_engine_arg(
            parser,
            default=None,
            default_help="vmap for the single simulation (ck.simulate's default), ensemble for --ensemble",
        )
        add_devices_arg(parser, default=None, what="the --ensemble members (default all)")

    def host_devices(self, args: argparse.Namespace) -> str | int | None:
        return (args.devices or "all") if args.ensemble > 0 else None  # the single simulation times one device

    def run(self, args: argparse.Namespace, ctx: Context) -> int:
        import jax
        import jax.numpy as jnp
        import numpy as np

        import carkinetics as ck
        import carkinetics.io as ckio

        run = resolve_run(args, ctx.plugins)
        engine = args.engine or "vmap"
        solver = ck.default_solver(run.model, engine)
        ts = jnp.asarray(run.ts)
        out = ctx.out_dir()
        names = [n for n, p in ck.parameters(run.model).items() if np.ndim(p.value) == 0]
        space = ck.ParameterSpace(run.model, names)
        base = space.values(run.model)
        # Python-float parameters become weakly typed arrays inside simulate, perturbed values strongly typed ones;
        # start from the array-valued model so that the timed calls reuse the first compilation.
        model = space.with_values(run.model, base)
        rows = []
        prog = ctx.progress([20.0] + [1.0] * args.repeats)  # ETA: compiling costs about 20 solves
        prog.step("compile + first call")
        t0 = time.perf_counter()
        sol = jax.block_until_ready(ck.simulate(model, run.regimen, ts, solver=solver, throw=False))
        compile_s = time.perf_counter() - t0
        prog.advance()
        rng = np.random.default_rng(0)
        for r in range(args.repeats):
            prog.step(f"repeat {r + 1}")
            # new values (1 % perturbation) each call: measures the compiled solve, not a cache
            factors = 1.0 + 0.01 * rng.standard_normal(base.shape[0])
            m = space.with_values(model, jnp.asarray(perturbed(space, base, factors)))
            t0 = time.perf_counter()
            s = jax.block_until_ready(ck.simulate(m, run.regimen, ts, solver=solver, throw=False))
            rows.append((time.perf_counter() - t0, int(s.num_steps), bool(s.ok)))
            prog.advance()
        prog.close()
        best = min(r[0] for r in rows)
        device = jax.devices()[0]
        path = os.path.join(out, "bench.csv")
        with ckio.atomic_text_file(path, newline="") as fh:
            w = csv.writer(fh)
            w.writerow(
                [
                    "model",
                    "engine",
                    "solver",
                    "device",
                    "dtype",
                    "n_save",
                    "compile_plus_first_s",
                    "best_s",
                    "median_s",
                    "num_steps",
                    "all_ok",
                ]
            )
            w.writerow(
                [
                    type(model).__name__,
                    engine,
                    type(solver).__name__,
                    device.platform,
                    str(ts.dtype),
                    ts.shape[0],
                    f"{compile_s:.4f}",
                    f"{best:.6f}",
                    f"{float(np.median([r[0] for r in rows])):.6f}",
                    int(sol.num_steps),
                    all(r[2] for r in rows),
                ]
            )
        print(
            f"{run.label} on {device.platform} ({device.device_kind}), {engine} engine, {type(solver).__name__}, "
            f"{ts.dtype}, {ts.shape[0]} save times: compile+first {compile_s:.2f} s, best of {args.repeats} "
            f"{1e3 * best:.2f} ms, {int(sol.num_steps)} steps"
        )
        if args.ensemble:
            _bench_ensemble(args, run, space, base, args.engine or "ensemble", out)
        print(
            "(wall-clock on this machine; min of repeats with jax.block_until_ready; see benchmarks/ for the "
            "reference workloads)"
        )
        print(f"wrote {path}\noutput folder: {out}")
        return EXIT_OK
