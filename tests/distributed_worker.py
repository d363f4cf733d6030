"""One process of the multi-process tests (`tests/test_distributed.py`) and benchmark, printed as one JSON line:
a seeded Sobol analysis of the two-compartment PK reference model (`--analysis sobol`, default), a seeded virtual
population of that model swept with `ck.sweep_model` (`population`), or a seeded SLE trial pool
(`trial_pool`: `simulate_dose_outcomes` of the SLE application).

    python tests/distributed_worker.py --coordinator 127.0.0.1:PORT --num-processes 2 --process-id I \
        [--analysis sobol|population|trial_pool] [--checkpoint DIR] [--n 256] [--chunk-size 64]

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
    out = _layout(res)
    for k in idx:
        for field in ("S1", "ST", "S1_conf", "ST_conf"):
            out[f"{k}_{field}"] = getattr(idx[k], field).tolist()
    return out


def population(*, n: int = 256, chunk_size: int = 64, seed: int = 7, checkpoint: str | None = None) -> dict:
    """A virtual population (correlated log-normal IIV, allometric clearance) of the two-compartment PK model and
    its AUC (mg d/L), Cmax (mg/L) and last concentration over days 0-2 after a 100 mg bolus, per member."""
    import jax
    import jax.numpy as jnp

    from carkinetics.models import TwoCompartmentPK

    k_cov, k_pop = jax.random.split(jax.random.key(seed))
    model = TwoCompartmentPK()
    pop = ck.virtual_population(
        model,
        k_pop,
        n,
        omega={"cl": 0.3, "v1": 0.2, "q": 0.3, "v2": 0.2},
        correlation=[[1.0, 0.5, 0.0, 0.0], [0.5, 1.0, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0], [0.0, 0.0, 0.0, 1.0]],
        covariates=ck.sample_covariates(k_cov, n),
        effects=[ck.CovariateEffect("cl", "weight_kg", 0.75, 70.0)],
    )

    def metrics(sol):
        c = sol.observables.concentration
        return {"auc": ck.metrics.auc(sol.ts, c), "cmax": ck.metrics.cmax(sol.ts, c), "last": c[-1]}

    res = ck.sweep_model(
        model,
        ck.Bolus(0.0, 100.0, "central"),
        jnp.linspace(0.0, 2.0, 21),
        pop,
        metrics=metrics,
        chunk_size=chunk_size,
        devices="all",
        checkpoint=checkpoint,
        progress=False,
    )
    return {**_layout(res), **{f"pop_{k}": v.tolist() for k, v in res.outputs.items()}}


def trial_pool(*, n: int = 4, chunk_size: int = 4, seed: int = 7, checkpoint: str | None = None) -> dict:
    """The SLE trial pool of `n` virtual patients at two CAR-T doses (1e5 and 1e6 cells/kg, Erlangen Flu/Cy, 200
    days): every course's endpoints."""
    import jax

    from carkinetics.models.sle.trials import simulate_dose_outcomes

    pool = simulate_dose_outcomes(
        "human",
        [1e5, 1e6],
        n_patients=n,
        key=jax.random.key(seed),
        chunk_size=chunk_size,
        devices="all",
        checkpoint=checkpoint,
    )
    out = {"n_failed": pool.n_failed}
    out.update({f"pool_{k}": v.tolist() for k, v in pool.endpoints.items()})
    return out


def _layout(res) -> dict:
    return {
        "n_processes": res.n_processes,
        "n_devices": res.n_devices,
        "n_chunks": res.n_chunks,
        "n_resumed_chunks": res.n_resumed_chunks,
        "n_failed": res.n_failed,
    }


ANALYSES = {"sobol": analysis, "population": population, "trial_pool": trial_pool}


def main(argv=None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--coordinator")
    p.add_argument("--num-processes", type=int)
    p.add_argument("--process-id", type=int)
    p.add_argument("--analysis", choices=sorted(ANALYSES), default="sobol")
    p.add_argument("--checkpoint")
    p.add_argument("--n", type=int)
    p.add_argument("--chunk-size", type=int)
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
        sizes = {k: v for k, v in (("n", args.n), ("chunk_size", args.chunk_size)) if v is not None}
        out = ANALYSES[args.analysis](seed=args.seed, checkpoint=args.checkpoint, **sizes)
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
