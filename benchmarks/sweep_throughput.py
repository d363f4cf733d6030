"""Sweep throughput: members per second of `ck.sweep_model` against chunk size, device count and engine.

The workload is the 9-state timing model of issue 8 (`carkinetics.models.reference_workload.ReferenceWorkload`,
365 days, daily saves) with three log-normally varied parameters, reduced on the device to five summary metrics
(CAR-T Cmax and Tmax, B-cell time below 10 % of baseline, autoantibody fold change at day 90, AUC of CAR-T).
For every (device count, chunk size) the script

1. compiles: it runs one chunk twice and reports the first run minus the second as compile time;
2. times the full sweep `--repeats` times with `jax.block_until_ready` and reports the minimum;

and prints dtype, devices, the failure count and the metrics' error against tight-tolerance single
simulations of 8 members. `--engine` picks how each chunk is integrated (`ck.sweep_model(engine=...)`):
`ensemble` (the batched solver, the library default: EnsembleTsit5 for this non-stiff model) or `vmap` (`jax.vmap`
of the per-member diffrax engine: Tsit5). On CPU, `--host-devices K` forces K XLA host devices (set before JAX
starts) to exercise the sharded path; on a 2-core machine this measures overhead, not speed-up. On a GPU host run it
as is: `--devices` defaults to 1 and all visible devices.

Examples:

    python benchmarks/sweep_throughput.py --quick            # smoke run: 64 members, chunk 32, one repeat
    python benchmarks/sweep_throughput.py --members 1024 --chunk-sizes 256,1024 --host-devices 2 --devices 1,2
    python benchmarks/sweep_throughput.py --members 65536 --chunk-sizes 16384,65536 --engine ensemble
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import timeit


def _parse_ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--members", type=int, default=1024, help="members per sweep (default 1024)")
    ap.add_argument("--chunk-sizes", type=_parse_ints, default=[128, 512], help="comma-separated chunk sizes")
    ap.add_argument("--devices", type=_parse_ints, default=None, help="device counts (default: 1 and all)")
    ap.add_argument("--host-devices", type=int, default=0, help="force this many CPU devices (XLA flag)")
    ap.add_argument(
        "--engine",
        choices=["ensemble", "vmap"],
        default="ensemble",
        help="ck.sweep_model engine: the batched solver (default) or jax.vmap of per-member diffrax",
    )
    ap.add_argument("--quick", action="store_true", help="smoke run: 64 members, chunk 32, one repeat, 1 device")
    ap.add_argument("--dtype", choices=["float64", "float32"], default="float64")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--t-end", type=float, default=365.0, help="horizon in days (default 365)")
    args = ap.parse_args(argv)
    if args.quick:
        args.members, args.chunk_sizes, args.repeats, args.devices = 64, [32], 1, [1]

    if args.host_devices:
        flag = f"--xla_force_host_platform_device_count={args.host_devices}"
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + flag).strip()
        if "jax" in sys.modules:
            print("warning: jax was imported before main(); --host-devices may have no effect", file=sys.stderr)
    import jax

    jax.config.update("jax_enable_x64", args.dtype == "float64")
    import jax.numpy as jnp
    import numpy as np

    import carkinetics as ck
    from carkinetics.models.reference_workload import ReferenceWorkload

    devices = jax.devices()
    counts = args.devices or sorted({1, len(devices)})
    print(
        f"jax {jax.__version__}, carkinetics {ck.__version__}, backend {jax.default_backend()}, devices "
        f"{len(devices)} x {devices[0].device_kind}, dtype {args.dtype}, engine {args.engine}, members "
        f"{args.members}, {time.strftime('%Y-%m-%d')}"
    )
    if jax.default_backend() == "cpu":
        print(f"CPU cores visible: {os.cpu_count()} (timings on a shared machine are noisy)")

    model = ReferenceWorkload()
    ts = jnp.linspace(0.0, args.t_end, int(args.t_end) + 1)
    rng = np.random.default_rng(0)
    n = args.members

    def draw(k):
        return {
            "rho": float(model.get("rho")) * rng.lognormal(0.0, 0.2, k),
            "kk": float(model.get("kk")) * rng.lognormal(0.0, 0.3, k),
            "ppb": float(model.get("ppb")) * rng.lognormal(0.0, 0.3, k),
        }

    samples = draw(n)
    m = ck.metrics

    def metrics(sol):
        o = sol.observables
        b = o.b_cells / o.b_cells[0]
        return {
            "car_cmax": m.cmax(sol.ts, o.car_t),
            "car_tmax": m.tmax(sol.ts, o.car_t),
            "car_auc": m.auc(sol.ts, o.car_t),
            "b_below_10pct_days": m.time_below(sol.ts, b, 0.1),
            "ab_fold_d90": m.fold_change(sol.ts, o.autoantibody, 90.0, 0.0),
        }

    rows = []
    for d in counts:
        if d > len(devices):
            print(f"skipping {d} devices: only {len(devices)} available")
            continue
        for c in args.chunk_sizes:
            kw = dict(metrics=metrics, chunk_size=c, devices=None if d == 1 else d, progress=False, engine=args.engine)
            one = {k: v[:c] for k, v in samples.items()}
            t0 = time.perf_counter()
            jax.block_until_ready(ck.sweep_model(model, None, ts, one, **kw).outputs)
            first = time.perf_counter() - t0
            t0 = time.perf_counter()
            jax.block_until_ready(ck.sweep_model(model, None, ts, one, **kw).outputs)
            again = time.perf_counter() - t0
            res = {}

            def run(res=res, kw=kw):
                res["r"] = ck.sweep_model(model, None, ts, samples, **kw)
                jax.block_until_ready(res["r"].outputs)

            best = min(timeit.repeat(run, number=1, repeat=args.repeats))
            r = res["r"]
            row = {
                "devices": d,
                "chunk_size": r.chunk_size,
                "compile_s": max(first - again, 0.0),
                "sweep_s": best,
                "members_per_s": n / best,
                "failed": r.n_failed,
                "engine": r.engine,
            }
            rows.append(row)
            print(
                f"devices {d:2d}  chunk {r.chunk_size:6d}  compile {row['compile_s']:7.2f} s  "
                f"sweep {best:8.3f} s  {row['members_per_s']:10.1f} members/s  failed {r.n_failed}"
            )
    # Accuracy: the last sweep's metrics of 8 members against tight-tolerance single simulations.
    if rows:
        errs = {}
        for i in range(min(8, n)):
            mi = model.replace({k: float(v[i]) for k, v in samples.items()})
            ref = metrics(ck.simulate(mi, None, ts, rtol=1e-10, atol=1e-12, max_steps=200_000))
            for k, v in ref.items():
                e = abs(float(r.outputs[k][i]) - float(v)) / max(abs(float(v)), 1e-12)
                errs[k] = max(errs.get(k, 0.0), e)
        print(
            "max relative error of the metrics vs rtol=1e-10 reference (8 members): "
            + ", ".join(f"{k} {v:.1e}" for k, v in errs.items())
        )
    print(
        "\n| engine | devices | members | chunk | compile (s) | sweep (s) | members/s | failed |\n"
        "|---|---|---|---|---|---|---|---|"
    )
    for row in rows:
        print(
            f"| {row['engine']} | {row['devices']} | {n} | {row['chunk_size']} | {row['compile_s']:.2f} | "
            f"{row['sweep_s']:.3f} | {row['members_per_s']:.1f} | {row['failed']} |"
        )
    return rows


if __name__ == "__main__":
    main()
