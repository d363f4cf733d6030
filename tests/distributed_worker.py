"""One process of the multi-process tests (`tests/test_distributed.py`) and benchmark: a seeded Sobol analysis of
the two-compartment PK reference model, printed as one JSON line.

    python tests/distributed_worker.py --coordinator 127.0.0.1:PORT --num-processes 2 --process-id I \
        [--checkpoint DIR] [--n 256] [--chunk-size 64]

Without `--coordinator` it runs as a single process (the reference). Exit codes: 0 done, 3 another process failed
(`ck.ProcessFailed`), 128 + signal when stopped by a signal (`ck.Interrupted`).
"""

import argparse
import json
import sys

import carkinetics as ck

NAMES = ["cl", "v1", "q", "v2"]
BOUNDS = [[100.0, 300.0], [20.0, 60.0], [100.0, 300.0], [10.0, 40.0]]  # L/d, L, L/d, L


def analysis(*, n: int = 256, chunk_size: int = 64, seed: int = 7, checkpoint: str | None = None) -> dict:
    """Sobol indices of the AUC (mg d/L) and last concentration (mg/L) over days 0-2 after a 100 mg bolus."""
    import jax
    import jax.numpy as jnp

    from carkinetics.models import TwoCompartmentPK

    ts = jnp.linspace(0.0, 2.0, 21)
    f = ck.model_function(
        TwoCompartmentPK(),
        ck.Bolus(0.0, 100.0, "central"),
        ts,
        NAMES,
        lambda sol: {
            "auc": ck.metrics.auc(sol.ts, sol.observables.concentration),
            "last": sol.observables.concentration[-1],
        },
    )
    idx, _, res = ck.sobol_analysis(
        f,
        {"names": NAMES, "bounds": BOUNDS},
        n,
        key=jax.random.key(seed),
        chunk_size=chunk_size,
        devices="all",
        checkpoint=checkpoint,
        progress=False,
    )
    out = {
        "n_processes": res.n_processes,
        "n_devices": res.n_devices,
        "n_chunks": res.n_chunks,
        "n_resumed_chunks": res.n_resumed_chunks,
        "n_failed": res.n_failed,
    }
    for k in idx:
        for field in ("S1", "ST", "S1_conf", "ST_conf"):
            out[f"{k}_{field}"] = getattr(idx[k], field).tolist()
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--coordinator")
    p.add_argument("--num-processes", type=int)
    p.add_argument("--process-id", type=int)
    p.add_argument("--checkpoint")
    p.add_argument("--n", type=int, default=256)
    p.add_argument("--chunk-size", type=int, default=64)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--heartbeat-timeout", type=float, default=5.0)
    args = p.parse_args(argv)
    setting = ck.distributed_setup(
        args.coordinator,
        args.num_processes,
        args.process_id,
        heartbeat_timeout=args.heartbeat_timeout,
        initialization_timeout=60,
        environ={} if args.coordinator is None else None,
    )
    import jax

    jax.config.update("jax_enable_x64", True)
    try:
        out = analysis(n=args.n, chunk_size=args.chunk_size, seed=args.seed, checkpoint=args.checkpoint)
    except ck.ProcessFailed as err:
        print(f"ProcessFailed: {err}", file=sys.stderr, flush=True)
        return 3
    except ck.Interrupted as err:
        print(f"Interrupted: {err}", file=sys.stderr, flush=True)
        return err.exit_code
    print(json.dumps({"process_id": setting.process_id, **out}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
