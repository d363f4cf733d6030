"""`carkinetics sweep`: sample parameter ranges from a TOML spec, simulate every member, write per-member metrics.

The spec language (a TOML file):

```toml
[sweep]
n = 64                  # members (default: --n)
seed = 0                # jax.random.key(seed) draws the samples
log = true              # log-uniform for positive ranges (default), else uniform
metrics = ["concentration_auc"]   # columns to keep (default: all scalar metrics)

[ranges]
cl = [50.0, 200.0]      # dotted parameter name = [lower, upper], inside the declared bounds
```
"""

from __future__ import annotations

import argparse
import csv
import io
import os
from typing import TYPE_CHECKING, cast

from ._common import (
    EXIT_OK,
    MAX_MEMBERS,
    UserError,
    add_checkpoint_arg,
    add_devices_arg,
    add_distributed_args,
    add_engine_arg,
    add_run_args,
    check_keys,
    is_number,
    join_processes,
    load_toml,
    toml_repr,
    toml_value,
    whole_number,
)
from ._inputs import resolve_run
from ._plugins import Command, Context

if TYPE_CHECKING:
    from .._engine._simulate import Engine


def sweep_spec(path: str, model, n_default: int) -> tuple[dict, list[str] | None]:
    """The samples `{name: (n,) values}` and the wanted metric names of a sweep spec (see the module docstring);
    every key is checked for its type (`UserError` naming the file, table and key)."""
    import jax
    import numpy as np

    import carkinetics as ck

    doc = load_toml(path, "--ranges")
    check_keys(doc, ["sweep", "ranges"], path)
    meta = toml_value(doc.get("sweep", {}), "table", f"{path}: sweep (the [sweep] table)")
    check_keys(meta, ["n", "seed", "log", "metrics"], f"{path} [sweep]")
    ranges = doc.get("ranges")
    if not isinstance(ranges, dict) or not ranges:
        raise UserError(f"{path}: a [ranges] table of parameter = [lower, upper] is required.")
    n = toml_value(meta.get("n", n_default), "whole", f"{path} [sweep] n")
    if n < 2:
        raise UserError(f"{path}: [sweep] n must be at least 2, got {n}.")
    if n > MAX_MEMBERS:
        raise UserError(
            f"{path}: [sweep] n must be at most {MAX_MEMBERS:,}, got {n:,}; split the sweep into several "
            "runs with different seeds."
        )
    seed = toml_value(meta.get("seed", 0), "whole", f"{path} [sweep] seed")
    if not 0 <= seed < 2**32:
        raise UserError(f"{path}: [sweep] seed must be between 0 and {2**32 - 1}, got {seed}.")
    use_log = toml_value(meta.get("log", True), "bool", f"{path} [sweep] log")
    wanted = meta.get("metrics")
    if wanted is not None:
        wanted = list(toml_value(wanted, "strings", f"{path} [sweep] metrics"))
        twice = sorted({m for m in wanted if wanted.count(m) > 1})
        if twice:
            raise UserError(f"{path}: [sweep] metrics names {twice} more than once (each is one column of sweep.csv).")
        available = metric_names(model)
        bad = [m for m in wanted if available is not None and m not in available]
        if bad:
            raise UserError(f"{path}: [sweep] metrics names unknown metric(s) {bad}; available: {available}.")
    allp = ck.parameters(model)
    u = np.asarray(jax.random.uniform(jax.random.key(seed), (n, len(ranges))))
    samples = {}
    for j, (name, bounds) in enumerate(ranges.items()):
        if name not in allp:
            raise UserError(f"{path}: unknown parameter {name!r}; known parameters are {sorted(allp)}.")
        if not (
            isinstance(bounds, list)
            and len(bounds) == 2
            and all(is_number(b) for b in bounds)
            and bounds[0] < bounds[1]
        ):
            raise UserError(
                f"{path}: range of {name!r} must be [lower, upper] with lower < upper, got {toml_repr(bounds)}."
            )
        lo, hi = float(bounds[0]), float(bounds[1])
        info = allp[name].info
        if lo < info.lower or hi > info.upper:
            raise UserError(
                f"{path}: range [{lo}, {hi}] of {name!r} leaves its declared bounds "
                f"[{info.lower}, {info.upper}] {info.unit}."
            )
        col = u[:, j]
        samples[name] = (
            np.exp(np.log(lo) + col * (np.log(hi) - np.log(lo))) if use_log and lo > 0 else lo + col * (hi - lo)
        )
    return samples, wanted


def metric_names(model) -> list[str] | None:
    """The per-member metrics `carkinetics sweep` reports for `model` (the keys of `ck.observable_metrics`), found
    without a solve; `None` if they cannot be found that way (then they are checked after the sweep)."""
    import types

    import numpy as np

    import carkinetics as ck

    stand_in = types.SimpleNamespace(
        model_class=type(model), ts=np.linspace(0.0, 1.0, 3), obs_array=np.ones((3, len(model.observable_names())))
    )
    try:
        return sorted(ck.observable_metrics(stand_in))  # type: ignore[arg-type]
    except Exception:  # (only a shortcut: the names are checked again after the sweep)
        return None


def sweep_figure(samples: dict, metrics: dict, path: str, max_metrics: int = 4) -> str:
    """Scatter of each metric against each swept parameter (log axes for wide positive ranges)."""
    import matplotlib.pyplot as plt
    import numpy as np

    from carkinetics.plot import save_figure

    mnames = list(metrics)[:max_metrics]
    pnames = list(samples)
    fig, axes = plt.subplots(len(mnames), len(pnames), figsize=(3.2 * len(pnames), 2.6 * len(mnames)), squeeze=False)
    for i, m in enumerate(mnames):
        for j, p in enumerate(pnames):
            ax = axes[i][j]
            x, y = np.asarray(samples[p]), np.asarray(metrics[m])
            ax.plot(x, y, ".", ms=4, alpha=0.7)
            if np.all(x > 0) and x.max() / x.min() > 20:
                ax.set_xscale("log")
            if i == len(mnames) - 1:
                ax.set_xlabel(p, fontsize=8)
            if j == 0:
                ax.set_ylabel(m, fontsize=8)
            ax.tick_params(labelsize=7)
    fig.suptitle("sweep: metric vs parameter")
    fig.tight_layout()
    return save_figure(fig, path)


class SweepCommand(Command):
    name = "sweep"
    help = "sample parameter ranges, simulate each member, write metrics"
    description = (
        "Sample the parameter ranges of a TOML file ([ranges] name = [lower, upper], log-uniform by "
        "default; [sweep] n, seed, log, metrics), simulate every member in chunks on the chosen engine "
        "and write sweep.csv (one row per member: parameters and summary metrics such as "
        "<observable>_cmax, _auc) and sweep.png."
    )
    outputs = ("sweep.csv", "sweep.png")

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        add_run_args(parser)
        parser.add_argument("--ranges", metavar="TOML", required=True, help="parameter ranges (see above)")
        parser.add_argument(
            "--n",
            type=whole_number(2, MAX_MEMBERS),
            default=64,
            help="members when the TOML gives no [sweep] n (default 64)",
        )
        parser.add_argument(
            "--chunk-size",
            type=whole_number(1, MAX_MEMBERS),
            default=None,
            help="members per compiled batch, split over the devices (default 256 per device)",
        )
        add_engine_arg(parser)
        add_devices_arg(parser, what="each chunk")
        add_checkpoint_arg(parser)
        add_distributed_args(parser)

    def host_devices(self, args: argparse.Namespace) -> str | int | None:
        return args.devices

    def run(self, args: argparse.Namespace, ctx: Context) -> int:
        import jax
        import numpy as np

        import carkinetics as ck
        import carkinetics.io as ckio

        setting, devices = join_processes(args, args.devices)
        writer = setting.process_id == 0  # every process computes; only process 0 writes files
        run = resolve_run(args, ctx.plugins)
        samples, wanted = sweep_spec(args.ranges, run.model, args.n)
        out = ctx.out_dir() if writer else args.out
        chunk = 256 * devices if args.chunk_size is None else args.chunk_size
        n_members = len(next(iter(samples.values())))
        try:
            res = ck.sweep_model(
                run.model,
                run.regimen,
                run.ts,
                samples,
                engine=args.engine,
                chunk_size=chunk,
                progress=not ctx.quiet and writer,
                devices=devices if devices > 1 else None,
                checkpoint=args.checkpoint,
            )
        except ValueError as err:
            raise UserError(str(err)) from None
        metrics = {k: np.asarray(v) for k, v in res.outputs.items() if np.asarray(v).ndim == 1}
        if wanted:
            bad = [m for m in wanted if m not in metrics]
            if bad:
                raise UserError(f"{args.ranges}: unknown metric(s) {bad}; available: {sorted(metrics)}.")
            metrics = {k: metrics[k] for k in wanted}
        if not writer:
            return EXIT_OK
        path = os.path.join(out, "sweep.csv")
        names = list(samples)
        text = io.StringIO()
        w = csv.writer(text, lineterminator="\n")
        w.writerow(["member", *names, *metrics])
        for i in range(n_members):
            w.writerow(
                [i, *[repr(float(samples[p][i])) for p in names], *[repr(float(metrics[m][i])) for m in metrics]]
            )
        ckio.atomic_write_text(path, text.getvalue())  # a reader never sees a partial table
        png = sweep_figure(samples, metrics, os.path.join(out, "sweep.png"))
        solver = type(ck.default_solver(run.model, cast("Engine", res.engine))).__name__
        print(
            f"{n_members} members on {res.n_devices} {jax.default_backend()} device(s) in "
            f"{setting.num_processes} process(es); "
            f"{res.n_failed} failed (masked as nan)"
        )
        print(f"engine: {res.engine} ({solver}); model: {run.label}")
        print(f"wrote {path}\nwrote {png}\noutput folder: {out}")
        return EXIT_OK
