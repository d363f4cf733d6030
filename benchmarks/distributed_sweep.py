"""Distributed sweeps: members per second of `ck.sweep_model` on 1 and 2 processes (jax.distributed), and what the
distributed runtime costs.

Three configurations run the same sweep (same model, members, chunk size, engine) in fresh processes:

- `1 proc x 1 dev`: one process, one device (the baseline);
- `1 proc x 2 dev`: one process, two host devices (`XLA_FLAGS=--xla_force_host_platform_device_count=2`), members
  split with `shard_map` inside one process;
- `2 proc x 1 dev`: two processes on this machine (`ck.distributed_setup`, loopback coordinator, gloo collectives),
  each with one device: the multi-host path.

On a 2-core machine the last two use the same two cores, so their difference is the cost of the distributed runtime
(per-chunk barrier through the coordination service, the gather collective over TCP, process-0-only writes).

For each configuration the script reports compile time (first call on one chunk minus a second call), the best of
`--repeats` full sweeps (the sweep returns host NumPy arrays, so it is blocking), members per second, and the
per-chunk overhead of bringing a chunk's outputs back: for two processes the sweep's death-aware barrier and its
gather collective (timed on a real chunk's outputs, `--overhead-repeats` times), for one process the device-to-host
copy. Every configuration's metrics are checked against the first's (max relative difference).

With `--population` the members are a virtual population (`ck.virtual_population`, log-normal random effects with
the same spreads) swept as a `ck.Population`; `--model sle` sweeps the SLE application's virtual population
(`sle_virtual_population`, Erlangen regimen, 730 days, `population_metrics`). The time to draw the population is
reported as `sampling`.

    python benchmarks/distributed_sweep.py                      # reference workload, 4096 members, chunk 512
    python benchmarks/distributed_sweep.py --model pk2 --members 65536 --chunk-size 4096
    python benchmarks/distributed_sweep.py --model reference --population --members 4096 --chunk-size 512
    python benchmarks/distributed_sweep.py --model sle --members 128 --chunk-size 32
    python benchmarks/distributed_sweep.py --log benchmarks/results/distributed_sweep_cpu_DATE.log
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
import timeit

CONFIGS = {"1 proc x 1 dev": (1, 1), "1 proc x 2 dev": (1, 2), "2 proc x 1 dev": (2, 1)}


# log-normal spread (sd of the log) of the swept parameters of each model
SPREAD = {
    "reference": {"rho": 0.2, "kk": 0.3, "ppb": 0.3},
    "pk2": {"cl": 0.3, "v1": 0.2, "q": 0.3, "v2": 0.2},
}


def _workload(name: str, n: int, population: bool):
    """(model, regimen, save times, samples, metrics) of `n` members drawn with a fixed seed: NumPy log-normal
    draws, or with `population` a `ck.virtual_population` with the same spreads (the SLE model: its own virtual
    population, `sle_virtual_population`, under the Erlangen regimen, read out as `population_metrics`)."""
    import jax
    import numpy as np

    import carkinetics as ck

    rng = np.random.default_rng(0)
    m = ck.metrics
    if name == "sle":
        from carkinetics.models.sle import erlangen_regimen, load_preset, save_times
        from carkinetics.models.sle.population import population_metrics, sle_virtual_population

        model = load_preset("human")
        pop = sle_virtual_population(model, jax.random.key(0), n)
        return model, erlangen_regimen(model), save_times(730.0), pop, population_metrics
    model, regimen, ts, samples, metrics = _model_workload(name, n, rng, m)
    if population:
        samples = ck.virtual_population(model, jax.random.key(0), n, omega=SPREAD[name])
    return model, regimen, ts, samples, metrics


def _model_workload(name: str, n: int, rng, m):
    import jax.numpy as jnp

    import carkinetics as ck

    if name == "reference":
        from carkinetics.models.reference_workload import ReferenceWorkload

        model = ReferenceWorkload()
        ts = jnp.linspace(0.0, 365.0, 366)
        samples = {k: getattr(model, k) * rng.lognormal(0.0, sd, n) for k, sd in SPREAD[name].items()}

        def metrics(sol):
            o = sol.observables
            return {
                "car_cmax": m.cmax(sol.ts, o.car_t),
                "car_auc": m.auc(sol.ts, o.car_t),
                "b_below_10pct_days": m.time_below(sol.ts, o.b_cells / o.b_cells[0], 0.1),
            }

        return model, None, ts, samples, metrics
    from carkinetics.models import TwoCompartmentPK

    model = TwoCompartmentPK()
    ts = jnp.linspace(0.0, 2.0, 21)
    samples = {k: getattr(model, k) * rng.lognormal(0.0, sd, n) for k, sd in SPREAD[name].items()}

    def metrics(sol):
        c = sol.observables.concentration
        return {"cmax": m.cmax(sol.ts, c), "auc": m.auc(sol.ts, c), "last": c[-1]}

    return model, ck.Bolus(0.0, 100.0, "central"), ts, samples, metrics


def worker(args) -> dict:
    import carkinetics as ck

    setting = ck.distributed_setup(
        args.coordinator,
        args.num_processes,
        args.process_id,
        initialization_timeout=120,
        environ={} if args.coordinator is None else None,
    )
    import jax

    jax.config.update("jax_enable_x64", True)
    import numpy as np

    t0 = time.perf_counter()
    model, regimen, ts, samples, metrics = _workload(args.model, args.members, args.population)
    sample_s = time.perf_counter() - t0
    kw = dict(metrics=metrics, chunk_size=args.chunk_size, devices="all", progress=False)
    drawn = samples.samples if isinstance(samples, ck.Population) else samples
    one = {k: v[: args.chunk_size] for k, v in drawn.items()}
    t0 = time.perf_counter()
    ck.sweep_model(model, regimen, ts, one, **kw)
    first = time.perf_counter() - t0
    t0 = time.perf_counter()
    ck.sweep_model(model, regimen, ts, one, **kw)
    again = time.perf_counter() - t0
    res = {}

    def run():
        res["r"] = ck.sweep_model(model, regimen, ts, samples, **kw)

    best = min(timeit.repeat(run, number=1, repeat=args.repeats))
    r = res["r"]
    overhead = _overhead(model, regimen, ts, one, metrics, args.overhead_repeats)
    out = {
        "process_id": setting.process_id,
        "processes": r.n_processes,
        "devices": r.n_devices,
        "chunks": r.n_chunks,
        "sample_s": sample_s,
        "compile_s": first - again,
        "sweep_s": best,
        "members_per_s": args.members / best,
        "failed": r.n_failed,
        **overhead,
        "device_kind": jax.devices()[0].device_kind,
        "outputs": {k: np.asarray(v).tolist() for k, v in r.outputs.items()},
    }
    return out


def _overhead(model, regimen, ts, one, metrics, repeats: int) -> dict:
    """Per-chunk cost of bringing one chunk's outputs back, timed on a real chunk's device outputs: with several
    processes the sweep's own barrier and gather (`carkinetics._analysis._distributed`), else `np.asarray`."""
    import jax
    import numpy as np
    from jax.sharding import Mesh, NamedSharding, PartitionSpec

    import carkinetics as ck
    from carkinetics._analysis._distributed import ProcessGroup, gather
    from carkinetics._analysis._sweep import _AXIS, _replicated, _run_chunk

    mesh = Mesh(np.array(jax.devices()), (_AXIS,))
    fn = ck.model_function(model, regimen, ts, list(one), metrics)
    x = np.stack([np.asarray(v) for v in one.values()], axis=1)
    chunk = jax.make_array_from_callback(x.shape, NamedSharding(mesh, PartitionSpec(_AXIS)), lambda idx: x[idx])
    if jax.process_count() > 1:
        fn = _replicated(fn, mesh)
    dev_out = jax.block_until_ready(_run_chunk(fn, chunk, True, mesh))
    nbytes = sum(x.size * x.dtype.itemsize for x in jax.tree_util.tree_leaves(dev_out))
    if jax.process_count() == 1:
        fetch = min(
            timeit.repeat(lambda: [np.asarray(x) for x in jax.tree_util.tree_leaves(dev_out)], number=1, repeat=repeats)
        )
        return {"barrier_ms": 0.0, "gather_ms": 1e3 * fetch, "chunk_bytes": nbytes}
    group = ProcessGroup("benchmark")
    gather(dev_out, mesh)  # compile
    b, g = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        group.sync(None)
        t1 = time.perf_counter()
        gather(dev_out, mesh)
        t2 = time.perf_counter()
        b.append(t1 - t0)
        g.append(t2 - t1)
    return {"barrier_ms": 1e3 * float(np.median(b)), "gather_ms": 1e3 * float(np.median(g)), "chunk_bytes": nbytes}


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(name: str, args) -> dict:
    n_proc, n_dev = CONFIGS[name]
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("SLURM_", "JAX_COORDINATOR", "JAX_NUM_PROC", "JAX_PROCESS_ID"))
    }
    env["JAX_PLATFORMS"] = env.get("JAX_PLATFORMS", "cpu")
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={n_dev}"
    common = [
        sys.executable,
        os.path.abspath(__file__),
        "--worker",
        "--model",
        args.model,
        *(["--population"] if args.population else []),
        "--members",
        str(args.members),
        "--chunk-size",
        str(args.chunk_size),
        "--repeats",
        str(args.repeats),
        "--overhead-repeats",
        str(args.overhead_repeats),
    ]
    port = _free_port()
    procs = []
    with contextlib.ExitStack() as stack:
        # outputs go to files: a process blocked on a full pipe would hold the others at their exit barrier
        files = [
            (stack.enter_context(tempfile.TemporaryFile("w+")), stack.enter_context(tempfile.TemporaryFile("w+")))
            for _ in range(n_proc)
        ]
        for i, (out, err) in enumerate(files):
            extra = (
                []
                if n_proc == 1
                else ["--coordinator", f"127.0.0.1:{port}", "--num-processes", str(n_proc), "--process-id", str(i)]
            )
            procs.append(subprocess.Popen(common + extra, stdout=out, stderr=err, text=True, env=env))
        for p in procs:
            p.wait(timeout=3600)
        outs = []
        for out, err in files:
            out.seek(0)
            err.seek(0)
            outs.append((out.read(), err.read()))
    for p, (_, err) in zip(procs, outs):
        if p.returncode != 0:
            raise RuntimeError(f"{name}: a worker failed (exit {p.returncode}):\n{err[-3000:]}")
    rows = [json.loads(o.strip().splitlines()[-1]) for o, _ in outs]
    row = rows[0]
    row["config"] = name
    if len(rows) > 1:  # every process returns the same outputs
        assert all(r["outputs"] == row["outputs"] for r in rows[1:]), f"{name}: processes disagree"
    return row


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", choices=["reference", "pk2", "sle"], default="reference")
    ap.add_argument(
        "--population",
        action="store_true",
        help="draw the members with ck.virtual_population and sweep the Population (always for --model sle)",
    )
    ap.add_argument("--members", type=int, default=4096)
    ap.add_argument("--chunk-size", type=int, default=512)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--overhead-repeats", type=int, default=50)
    ap.add_argument("--configs", default=",".join(CONFIGS), help="comma-separated subset of: " + ", ".join(CONFIGS))
    ap.add_argument("--log", help="also write the report to this file")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--coordinator", help=argparse.SUPPRESS)
    ap.add_argument("--num-processes", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--process-id", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args)), flush=True)
        return

    import numpy as np

    lines = []

    def say(text: str = "") -> None:
        print(text, flush=True)
        lines.append(text)

    import jax

    say(
        f"distributed sweep benchmark, {time.strftime('%Y-%m-%d')}: model {args.model}"
        f"{' (virtual population)' if args.population or args.model == 'sle' else ''}, {args.members} members, "
        f"chunk {args.chunk_size}, float64, ensemble engine (model default), best of {args.repeats}"
    )
    say(
        f"jax {jax.__version__}, {platform.platform()}, {os.cpu_count()} CPU cores, load average "
        f"{os.getloadavg()[0]:.1f} at start; CPU collectives gloo (JAX's default); 2-process runs use a loopback "
        "coordinator"
    )
    rows = []
    for name in [c.strip() for c in args.configs.split(",") if c.strip()]:
        row = launch(name, args)
        rows.append(row)
        say(
            f"{name}: sampling {row['sample_s']:.2f} s, compile {row['compile_s']:.2f} s, "
            f"sweep {row['sweep_s']:.3f} s, "
            f"{row['members_per_s']:.1f} members/s ({row['device_kind']})"
        )
    ref = rows[0]["outputs"]
    say()
    say(
        "| configuration | processes x devices | compile (s) | sweep (s) | members/s | vs 1 proc x 1 dev | "
        "barrier / chunk (ms) | gather / chunk (ms) | chunk outputs (KiB) | max rel. diff vs first |"
    )
    say("|---|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        diff = max(
            float(
                np.max(
                    np.abs(np.asarray(row["outputs"][k]) - np.asarray(ref[k]))
                    / np.maximum(np.abs(np.asarray(ref[k])), 1e-300)
                )
            )
            for k in ref
        )
        say(
            f"| {row['config']} | {row['processes']} x {row['devices'] // row['processes']} | "
            f"{row['compile_s']:.2f} | {row['sweep_s']:.3f} | {row['members_per_s']:.1f} | "
            f"{row['members_per_s'] / rows[0]['members_per_s']:.2f}x | {row['barrier_ms']:.3f} | "
            f"{row['gather_ms']:.3f} | {row['chunk_bytes'] / 1024:.1f} | {diff:.1e} |"
        )
    if args.log:
        os.makedirs(os.path.dirname(os.path.abspath(args.log)), exist_ok=True)
        with open(args.log, "w", encoding="utf-8") as fh:
            fh.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
