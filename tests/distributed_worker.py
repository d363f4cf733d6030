"""One process of the multi-process tests (`tests/test_distributed.py`): a seeded Sobol analysis of the
two-compartment PK reference model, run with `ck.distributed_setup` and printed as one JSON line.

    python tests/distributed_worker.py --coordinator 127.0.0.1:PORT --num-processes 2 --process-id I \
        [--checkpoint DIR] [--n 256] [--chunk-size 64]

Without `--coordinator` it runs as a single process (the reference). Only loopback addresses are used by the tests.
"""

import argparse
import json
import sys

import carkinetics as ck


def main(argv=None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--coordinator")
    p.add_argument("--num-processes", type=int)
    p.add_argument("--process-id", type=int)
    p.add_argument("--checkpoint")
    p.add_argument("--n", type=int, default=256)
    p.add_argument("--chunk-size", type=int, default=64)
    p.add_argument("--heartbeat-timeout", type=float, default=5.0)
    args = p.parse_args(argv)
    setting = ck.distributed_setup(args.coordinator, args.num_processes, args.process_id,
                                   heartbeat_timeout=args.heartbeat_timeout, initialization_timeout=60)

    import jax

    jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp

    from carkinetics.models import TwoCompartmentPK

    ts = jnp.linspace(0.0, 2.0, 21)
    f = ck.model_function(TwoCompartmentPK(), ck.Bolus(0.0, 100.0, "central"), ts, ["cl", "v1", "q", "v2"],
                          lambda sol: {"auc": ck.metrics.auc(sol.ts, sol.observables.concentration),
                                       "cmin": sol.observables.concentration[-1]})
    prob = {"names": ["cl", "v1", "q", "v2"], "bounds": [[100.0, 300.0], [20.0, 60.0], [100.0, 300.0], [10.0, 40.0]]}
    try:
        idx, x, res = ck.sobol_analysis(f, prob, args.n, key=jax.random.key(7), chunk_size=args.chunk_size,
                                        devices="all", checkpoint=args.checkpoint, progress=False)
    except ck.ProcessFailed as err:
        print(f"ProcessFailed: {err}", file=sys.stderr, flush=True)
        return 3
    out = {"process_id": setting.process_id, "n_processes": res.n_processes, "n_devices": res.n_devices,
           "n_resumed_chunks": res.n_resumed_chunks, "n_chunks": res.n_chunks, "n_failed": res.n_failed,
           **{f"{k}_{name}": getattr(idx[k], name).tolist() for k in idx for name in ("S1", "ST", "S1_conf")}}
    print(json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
