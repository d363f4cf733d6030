"""`sweep`: evaluate a function over a large batch of inputs in bounded memory, on one or many devices.

The batch is cut into chunks of `chunk_size` members (the last one padded). One compiled chunk function
(`vmap` of the member function, or a pluggable evaluator) runs per chunk; a Python loop outside JIT walks the
chunks, so device memory holds one or two chunks at a time whatever the batch size, and only the per-member
outputs (normally summary metrics) come back to the host. With several devices each chunk is split across a
1-D `Mesh` with `jax.shard_map`, so every device integrates its own members independently (no cross-device
synchronisation inside adaptive-step loops). Finished chunks can be written to a checkpoint directory, so an
interrupted sweep resumes where it stopped.

Multi-host use (several machines, each with accelerators): call `jax.distributed.initialize()` in every process
first (see the JAX "multi-process" guide), give every process the same `inputs`, and call `sweep` with
`devices="all"`; `jax.devices()` is then the global device list, each process feeds its addressable shards with
`jax.make_array_from_callback`, and the outputs are gathered to every process. Checkpoint from one process only
(pass `checkpoint=None` on the others). The multi-host path is written to JAX's documented API but has only been
tested here with several devices in one process.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from ._dosing import Regimen
from ._model import AbstractKineticModel
from ._parameters import floats_to_arrays, parameters, replace
from ._simulate import Solution, simulate

_AXIS = "members"
_MANIFEST = "manifest.json"
_FORMAT_VERSION = 1


def vmap_evaluator(fn: Callable, chunk: Any) -> Any:
    """The default chunk evaluator: `jax.vmap(fn)(chunk)`.

    An evaluator maps `(fn, chunk)`, where `chunk` is a pytree whose leaves have a leading member axis, to the
    batched outputs of `fn`. It is called inside the compiled chunk function (and inside `shard_map` on each
    device's share). Pass another one to [`carkinetics.sweep`][] to plug in a batched ensemble solver.
    """
    return jax.vmap(fn)(chunk)


class SweepResult(NamedTuple):
    """What [`carkinetics.sweep`][] returns.

    **Fields:**

    - `outputs`: the member function's output pytree, each leaf a NumPy array with a leading axis of length
      `n_members`. Floating-point outputs of failed members are set to `nan` (masked), so they can never be
      mistaken for values; use `ok` to select members.
    - `ok`: boolean array `(n_members,)`, `False` for failed members.
    - `n_failed`: number of failed members (also printed by the progress display).
    - `n_members`, `chunk_size`, `n_chunks`, `n_devices`: the layout that was used.
    - `n_resumed_chunks`: chunks loaded from the checkpoint instead of being computed.
    - `engine`: what integrated the members: `"ensemble"` ([`carkinetics.EnsembleEvaluator`][], the batched
      solver), `"vmap"` ([`carkinetics.vmap_evaluator`][]) or `"custom"` (another evaluator).
    """

    outputs: Any
    ok: np.ndarray
    n_failed: int
    n_members: int
    chunk_size: int
    n_chunks: int
    n_devices: int
    n_resumed_chunks: int
    engine: str = "vmap"


# ----------------------------------------------------------------------------------------------------------------
# helpers


def _resolve_devices(devices: Any) -> list | None:
    if devices is None:
        return None
    if isinstance(devices, str):
        if devices != "all":
            raise ValueError(f"`devices` must be None, 'all', an int or a sequence of jax devices, got {devices!r}.")
        return list(jax.devices())
    if isinstance(devices, (int, np.integer)) and not isinstance(devices, bool):
        avail = jax.devices()
        if not 1 <= devices <= len(avail):
            raise ValueError(f"`devices` = {devices} must be between 1 and the {len(avail)} available devices.")
        return list(avail[: int(devices)])
    devices = list(devices)
    if not devices:
        raise ValueError("`devices` must not be an empty sequence.")
    return devices


def _leading_size(leaves: Sequence[np.ndarray]) -> int:
    sizes = {leaf.shape[0] if leaf.ndim else None for leaf in leaves}
    if None in sizes:
        raise ValueError("Every leaf of `inputs` must have a leading member axis; found a scalar leaf.")
    if len(sizes) != 1:
        raise ValueError(f"Every leaf of `inputs` must have the same leading (member) size; got sizes {sorted(sizes)}.")
    return sizes.pop()


def _hash_inputs(treedef: Any, leaves: Sequence[np.ndarray], chunk_size: int) -> str:
    h = hashlib.sha256()
    h.update(str(treedef).encode())
    h.update(str(chunk_size).encode())
    for leaf in leaves:
        h.update(f"{leaf.dtype.str}{leaf.shape}".encode())
        h.update(np.ascontiguousarray(leaf).tobytes())
    return h.hexdigest()


def _mask_failed(out: Any, ok: jax.Array) -> Any:
    def mask(x):
        if jnp.issubdtype(x.dtype, jnp.inexact):
            return jnp.where(ok.reshape(ok.shape + (1,) * (x.ndim - 1)), x, jnp.nan)
        return x

    return jax.tree_util.tree_map(mask, out)


@eqx.filter_jit
def _run_chunk(fn: Callable, chunk: Any, evaluator: Callable, has_ok: bool, mesh: Mesh | None) -> tuple[Any, jax.Array]:
    fn_dyn, fn_static = eqx.partition(fn, eqx.is_array)

    def body(fn_dyn, chunk):
        f = eqx.combine(fn_dyn, fn_static)
        res = evaluator(f, chunk)
        n = jax.tree_util.tree_leaves(chunk)[0].shape[0]
        if has_ok:
            out, ok = res
            ok = jnp.broadcast_to(jnp.asarray(ok, dtype=bool), (n,))
        else:
            out, ok = res, jnp.ones((n,), dtype=bool)
        return _mask_failed(out, ok), ok

    if mesh is None:
        return body(fn_dyn, chunk)
    spec = PartitionSpec(_AXIS)
    if hasattr(jax, "shard_map"):
        mapped = jax.shard_map(body, mesh=mesh, in_specs=(PartitionSpec(), spec), out_specs=spec, check_vma=False)
    else:  # JAX < 0.6: the experimental spelling
        from jax.experimental.shard_map import shard_map

        mapped = shard_map(body, mesh=mesh, in_specs=(PartitionSpec(), spec), out_specs=spec, check_rep=False)
    return mapped(fn_dyn, chunk)


class _Progress:
    """A minimal progress line on stderr (tqdm is used instead when it is installed)."""

    def __init__(self, enabled: bool, n_chunks: int, n_members: int, chunk_size: int):
        self.enabled = enabled
        self.n_chunks, self.n_members, self.chunk_size = n_chunks, n_members, chunk_size
        self.done = 0
        self.failed = 0
        self.t0 = time.perf_counter()
        self.bar = None
        if enabled:
            try:
                import tqdm  # optional

                self.bar = tqdm.tqdm(total=n_members, unit="member", desc="sweep", file=sys.stderr)
            except ImportError:
                self.bar = None

    def update(self, n: int, failed: int) -> None:
        self.done += 1
        self.failed += failed
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.update(n)
            self.bar.set_postfix(failed=self.failed)
            return
        members = min(self.done * self.chunk_size, self.n_members)
        rate = members / max(time.perf_counter() - self.t0, 1e-9)
        sys.stderr.write(
            f"\rsweep: chunk {self.done}/{self.n_chunks}, {members}/{self.n_members} members, "
            f"{rate:.3g} members/s, failed {self.failed}"
        )
        sys.stderr.flush()

    def close(self) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.close()
        else:
            sys.stderr.write("\n")
        sys.stderr.write(f"sweep: {self.n_members} members, {self.failed} failed\n")


class _Checkpoint:
    def __init__(self, path: str | os.PathLike, manifest: dict):
        self.path = os.fspath(path)
        os.makedirs(self.path, exist_ok=True)
        mpath = os.path.join(self.path, _MANIFEST)
        if os.path.exists(mpath):
            with open(mpath) as fh:
                old = json.load(fh)
            if old != manifest:
                diff = sorted(k for k in set(old) | set(manifest) if old.get(k) != manifest.get(k))
                raise ValueError(
                    f"The checkpoint directory {self.path!r} belongs to a different sweep (differs in {diff}); "
                    "use a new directory or delete this one to start afresh."
                )
        else:
            self._atomic_write(mpath, lambda fh: fh.write(json.dumps(manifest, indent=1).encode()))

    @staticmethod
    def _atomic_write(path: str, write: Callable) -> None:
        tmp = path + ".tmp"
        with open(tmp, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)  # a chunk file is either complete or absent

    def file(self, i: int) -> str:
        return os.path.join(self.path, f"chunk_{i:06d}.npz")

    def load(self, i: int, n_leaves: int) -> tuple[list[np.ndarray], np.ndarray] | None:
        if not os.path.exists(self.file(i)):
            return None
        with np.load(self.file(i)) as z:
            return [z[f"leaf_{k}"] for k in range(n_leaves)], z["ok"]

    def save(self, i: int, leaves: Sequence[np.ndarray], ok: np.ndarray) -> None:
        arrays = {f"leaf_{k}": leaf for k, leaf in enumerate(leaves)}
        self._atomic_write(self.file(i), lambda fh: np.savez(fh, ok=ok, **arrays))


def _to_host(x: jax.Array) -> np.ndarray:
    if jax.process_count() > 1 and not x.is_fully_addressable:
        from jax.experimental import multihost_utils

        return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(x)


# ----------------------------------------------------------------------------------------------------------------
# public API


def sweep(
    fn: Callable,
    inputs: Any,
    *,
    chunk_size: int = 1024,
    devices: Any = None,
    checkpoint: str | os.PathLike | None = None,
    progress: bool = True,
    has_ok: bool = False,
    evaluator: Callable = vmap_evaluator,
    on_chunk: Callable[[int, int], Any] | None = None,
) -> SweepResult:
    """Evaluate `fn` on every member of a batch, in chunks of bounded size, on one or several devices.

    **Arguments:**

    - `fn`: maps ONE member's input pytree to a pytree of outputs (e.g. a dict of summary metrics), or to
      `(outputs, ok)` with `has_ok=True`, where `ok` is a boolean scalar (e.g. `Solution.ok`). It is traced
      once per sweep layout; an `eqx.Module` (or `jax.tree_util.Partial`) whose array fields change between calls
      does not recompile.
    - `inputs`: a pytree whose leaves are arrays with the same leading size N (the members).
    - `chunk_size`: members per compiled call (rounded up to a multiple of the device count). Memory on the
      device is bounded by about two chunks.
    - `devices`: `None` (default device, no sharding), `"all"` (every device in `jax.devices()`), an int (the
      first n devices) or a sequence of devices. Members of each chunk are split across them with `shard_map`.
    - `checkpoint`: a directory. Each finished chunk is written there (atomically, `chunk_<6-digit index>.npz`) next to a
      `manifest.json` holding a hash of `inputs` and the layout; rerunning the same sweep loads the finished
      chunks and computes only the missing ones. A directory of a different sweep raises `ValueError`.
    - `progress`: print a progress line on stderr (tqdm when installed) and the final failure count.
    - `has_ok`: whether `fn` returns `(outputs, ok)`.
    - `evaluator`: `evaluator(fn, chunk) -> batched outputs`; default [`carkinetics.vmap_evaluator`][].
    - `on_chunk`: called as `on_chunk(chunk_index, n_chunks)` after each computed (not resumed) chunk is stored.

    **Returns:** a [`carkinetics.SweepResult`][]; outputs are NumPy arrays on the host, failed members masked
    with `nan` and counted in `n_failed`.

    **Raises:** `ValueError` for malformed inputs, a bad `chunk_size`/`devices`, or a checkpoint directory
    that belongs to another sweep.

    **Example:**

    ```python
    import jax.numpy as jnp
    import carkinetics as ck
    res = ck.sweep(lambda x: {"square": x**2}, jnp.arange(10.0), chunk_size=4, progress=False)
    res.outputs["square"][3]    # 9.0
    ```
    """
    if not callable(fn):
        raise ValueError(f"`fn` must be callable (one member's inputs -> outputs), got {type(fn).__name__}.")
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, (int, np.integer)) or chunk_size < 1:
        raise ValueError(f"`chunk_size` must be a positive int, got {chunk_size!r}.")
    leaves, treedef = jax.tree_util.tree_flatten(inputs)
    if not leaves:
        raise ValueError("`inputs` must contain at least one array leaf with a leading member axis.")
    leaves = [np.asarray(leaf) for leaf in leaves]
    n = _leading_size(leaves)
    if n == 0:
        raise ValueError("`inputs` has zero members.")
    devs = _resolve_devices(devices)
    n_dev = 1 if devs is None else len(devs)
    chunk_size = int(math.ceil(min(int(chunk_size), n) / n_dev) * n_dev)
    n_chunks = int(math.ceil(n / chunk_size))
    mesh = None if devs is None else Mesh(np.array(devs), (_AXIS,))
    sharding = None if mesh is None else NamedSharding(mesh, PartitionSpec(_AXIS))

    def chunk_inputs(i: int):
        lo, hi = i * chunk_size, min((i + 1) * chunk_size, n)
        parts = []
        for leaf in leaves:
            part = leaf[lo:hi]
            if hi - lo < chunk_size:  # pad with copies of the last member: valid inputs, results dropped
                part = np.concatenate([part, np.repeat(part[-1:], chunk_size - (hi - lo), axis=0)])
            if sharding is None:
                parts.append(jnp.asarray(part))
            else:
                parts.append(jax.make_array_from_callback(part.shape, sharding, lambda idx, p=part: p[idx]))
        return jax.tree_util.tree_unflatten(treedef, parts)

    first = chunk_inputs(0)
    out_shape = eqx.filter_eval_shape(_run_chunk, fn, first, evaluator, has_ok, mesh)
    out_leaves_shape, out_treedef = jax.tree_util.tree_flatten(out_shape[0])
    results = [np.empty((n,) + s.shape[1:], dtype=s.dtype) for s in out_leaves_shape]
    ok_all = np.empty((n,), dtype=bool)

    ckpt = None
    if checkpoint is not None:
        manifest = {
            "format": _FORMAT_VERSION,
            "inputs_sha256": _hash_inputs(treedef, leaves, chunk_size),
            "n_members": n,
            "chunk_size": chunk_size,
            "n_chunks": n_chunks,
            "outputs": str(out_treedef),
            "output_shapes": [[list(s.shape[1:]), s.dtype.str] for s in out_leaves_shape],
        }
        ckpt = _Checkpoint(checkpoint, manifest)

    bar = _Progress(progress, n_chunks, n, chunk_size)

    def store(i: int, out_leaves: Sequence[np.ndarray], ok: np.ndarray) -> None:
        lo, hi = i * chunk_size, min((i + 1) * chunk_size, n)
        for dst, src in zip(results, out_leaves):
            dst[lo:hi] = src[: hi - lo]
        ok_all[lo:hi] = ok[: hi - lo]
        bar.update(hi - lo, int(np.sum(~ok[: hi - lo])))

    n_resumed = 0
    pending = None  # (index, device outputs): one chunk in flight while the previous one is copied back

    def finish(i: int, dev_out: Any) -> None:
        out, ok = dev_out
        out_leaves = [_to_host(x) for x in jax.tree_util.tree_leaves(out)]
        ok = _to_host(ok)
        if ckpt is not None:
            ckpt.save(i, out_leaves, ok)
        store(i, out_leaves, ok)
        if on_chunk is not None:
            on_chunk(i, n_chunks)

    try:
        for i in range(n_chunks):
            loaded = None if ckpt is None else ckpt.load(i, len(results))
            if loaded is not None:
                n_resumed += 1
                store(i, *loaded)
                continue
            chunk = first if i == 0 else chunk_inputs(i)
            dev_out = _run_chunk(fn, chunk, evaluator, has_ok, mesh)
            if pending is not None:
                finish(*pending)
            pending = (i, dev_out)
        if pending is not None:
            finish(*pending)
    finally:
        bar.close()

    outputs = jax.tree_util.tree_unflatten(out_treedef, results)
    engine = ("ensemble" if isinstance(evaluator, EnsembleEvaluator) else
              "vmap" if evaluator is vmap_evaluator else "custom")
    return SweepResult(outputs, ok_all, int(np.sum(~ok_all)), n, chunk_size, n_chunks, n_dev, n_resumed, engine)


# ----------------------------------------------------------------------------------------------------------------
# model-level convenience


def observable_metrics(sol: Solution) -> dict[str, jax.Array]:
    """Default metrics of [`carkinetics.sweep_model`][]: Cmax, Tmax, AUC and last value of every observable.

    Keys are `"<observable>_cmax"` (observable unit), `"_tmax"` (days, quadratic interpolation), `"_auc"`
    (unit x days, trapezoid over `ts`) and `"_last"` (value at `ts[-1]`).
    """
    from . import _metrics as m

    out = {}
    for k, name in enumerate(sol.model_class.observable_names()):
        v = sol.obs_array[:, k]
        out[f"{name}_cmax"] = m.cmax(sol.ts, v)
        out[f"{name}_tmax"] = m.tmax(sol.ts, v)
        out[f"{name}_auc"] = m.auc(sol.ts, v)
        out[f"{name}_last"] = v[-1]
    return out


def sle_metrics(sol: Solution) -> dict[str, jax.Array]:
    """Clinical summary metrics of an SLE CAR-T simulation (`carkinetics.models.SLECarTModel`), for sweeps.

    Baselines are the values at `ts[0]`, so `ts` must start before lymphodepletion (e.g. day -6); "after
    infusion" means `t >= 0`. Keys and units:

    - `b_aplasia_days` (d): time after infusion with blood B cells below 5 % of baseline (total, piecewise linear);
    - `b_nadir_pct` (% of baseline): lowest blood B-cell count after infusion;
    - `anti_dsdna_d90_pct` (% of baseline): anti-dsDNA at day 90 (its fall is 100 minus this);
    - `il6_peak` (pg/mL): peak plasma IL-6 after infusion; `crs_grade_max` (0-4): peak of the CRS index;
    - `car_cmax` (cells/µL) and `car_tmax` (d): blood CAR-T peak and its time (quadratic interpolation).

    The definitions match the translation map's SLE metrics (5 % aplasia threshold, day-90 anti-dsDNA).

    **Example:**

    ```python
    import numpy as np, jax.numpy as jnp, carkinetics as ck
    from carkinetics.models import SLECarTModel, erlangen_regimen, load_preset
    model = load_preset("human")
    res = ck.sweep_model(model, erlangen_regimen(model), jnp.linspace(-6.0, 120.0, 253),
                         {"car.rho": model.car.rho * np.array([0.8, 1.0, 1.25])}, metrics=ck.sle_metrics,
                         solver=SLECarTModel.default_solver(), progress=False)
    ```
    """
    from . import _metrics as m

    o, ts = sol.observables, sol.ts
    t_end = ts[-1]
    b = o.b_blood / o.b_blood[0]
    return {
        "b_aplasia_days": m.time_below(ts, b, 0.05, t_start=0.0, t_end=t_end),
        "b_nadir_pct": 100.0 * m.nadir(ts, b, t_start=0.0),
        "anti_dsdna_d90_pct": 100.0 * m.fold_change(ts, o.anti_dsdna, 90.0, ts[0]),
        "il6_peak": m.cmax(ts, o.il6, t_start=0.0),
        "crs_grade_max": m.cmax(ts, o.crs_grade, t_start=0.0),
        "car_cmax": m.cmax(ts, o.car_blood),
        "car_tmax": m.tmax(ts, o.car_blood),
    }


class _ModelMember(eqx.Module):
    """One sweep member: set parameters, simulate with `throw=False`, reduce to metrics."""

    model: AbstractKineticModel
    regimen: Regimen | None
    ts: jax.Array
    metrics: Callable = eqx.field(static=True)
    keep_trajectories: bool = eqx.field(static=True)
    simulate_kwargs: dict

    def __call__(self, member: Mapping[str, Any]):
        model = replace(self.model, member["params"]) if member["params"] else self.model
        regimen = member["regimen"] if "regimen" in member else self.regimen
        sol = simulate(model, regimen, self.ts, throw=False, **self.simulate_kwargs)
        out = dict(self.metrics(sol)) if self.metrics is not None else {}
        if self.keep_trajectories:
            out["states"] = sol.y_array
            out["observables"] = sol.obs_array
        return out, sol.ok

    def batched(self, chunk: Mapping[str, Any], evaluator: EnsembleEvaluator):
        """A whole chunk at once with `simulate_ensemble` (see `EnsembleEvaluator`)."""
        from ._ensemble import simulate_ensemble

        n = jax.tree_util.tree_leaves(chunk)[0].shape[0]
        params = chunk["params"]
        models = jax.vmap(lambda i, p: replace(self.model, p) if p else self.model)(jnp.arange(n), params)
        regimen = chunk["regimen"] if "regimen" in chunk else self.regimen
        kwargs = ensemble_kwargs(self.model, regimen if "regimen" not in chunk else
                                 jax.tree_util.tree_map(lambda x: x[0], regimen), self.ts, self.simulate_kwargs)
        method = kwargs.pop("method")
        sol = simulate_ensemble(models, regimen, self.ts, method=method if evaluator.method is None else
                                evaluator.method, saves_per_step=evaluator.saves_per_step, slots=evaluator.slots,
                                throw=False, **kwargs)
        out = dict(jax.vmap(self.metrics)(sol)) if self.metrics is not None else {}
        if self.keep_trajectories:
            out["states"] = sol.y_array
            out["observables"] = sol.obs_array
        return out, sol.ok


#: `simulate` keyword arguments the ensemble engine can honour (see `ensemble_unsupported`).
_ENSEMBLE_KWARGS = frozenset({"t0", "solver", "rtol", "atol", "max_steps", "adjoint"})


def ensemble_method_for(solver: Any) -> Any:
    """The batched counterpart of a diffrax solver, or `None` if it has none.

    `None` (the engines' default) and `diffrax.Tsit5` map to [`carkinetics.EnsembleTsit5`][] (the same explicit
    5(4) Tsitouras pair); every implicit diffrax solver (`Kvaerno3/4/5`, `ImplicitEuler`, i.e.
    `diffrax.AbstractImplicitSolver`) maps to [`carkinetics.EnsembleRodas5`][] (stiff, L-stable Rosenbrock).
    Other solvers (`Dopri5`, `Dopri8`, `Euler`, ...) have no counterpart: the callers then use `vmap(simulate)`.
    """
    import diffrax

    from ._ensemble import EnsembleRodas5, EnsembleTsit5

    if solver is None or type(solver) is diffrax.Tsit5:
        return EnsembleTsit5()
    if isinstance(solver, diffrax.AbstractImplicitSolver):
        return EnsembleRodas5()
    return None


def ensemble_unsupported(simulate_kwargs: Mapping[str, Any]) -> str | None:
    """Why `simulate_kwargs` cannot run on the ensemble engine (a sentence), or `None` if they can."""
    import diffrax

    extra = sorted(set(simulate_kwargs) - _ENSEMBLE_KWARGS)
    if extra:
        return f"the ensemble engine does not take {extra} (it accepts {sorted(_ENSEMBLE_KWARGS)})"
    solver = simulate_kwargs.get("solver")
    if ensemble_method_for(solver) is None:
        return f"the solver {type(solver).__name__} has no ensemble counterpart (Tsit5 and implicit solvers have)"
    adjoint = simulate_kwargs.get("adjoint")
    if adjoint is not None and not isinstance(adjoint, (diffrax.RecursiveCheckpointAdjoint, diffrax.ForwardMode)):
        return (f"the adjoint {type(adjoint).__name__} is not supported by the ensemble engine "
                "(RecursiveCheckpointAdjoint and ForwardMode are)")
    return None


def ensemble_kwargs(model: AbstractKineticModel, regimen: Any, ts: Any, simulate_kwargs: Mapping[str, Any]) -> dict:
    """`simulate` keyword arguments translated for `simulate_ensemble` (call `ensemble_unsupported` first).

    `solver` becomes `method` (see `ensemble_method_for`); `max_steps` keeps `simulate`'s meaning (steps per
    segment): the ensemble engine counts steps over a member's whole horizon, so it gets `max_steps` times the
    number of segments of the schedule (`model` and `regimen` are one, unbatched member)."""
    from ._segments import build_segments, check_model_and_regimen

    kw = dict(simulate_kwargs)
    kw["method"] = ensemble_method_for(kw.pop("solver", None))
    if "max_steps" in kw:
        reg = check_model_and_regimen(model, regimen)
        t0 = kw.get("t0")
        seg = eqx.filter_eval_shape(build_segments, model, reg, jnp.asarray(ts, dtype=float),
                                    None if t0 is None else jnp.asarray(t0, dtype=float))
        kw["max_steps"] = int(kw["max_steps"]) * int(seg.ends.shape[0])
    return kw


class EnsembleEvaluator(eqx.Module):
    """Chunk evaluator of [`carkinetics.sweep_model`][] that integrates each chunk with
    [`carkinetics.simulate_ensemble`][] (the batched solver) instead of `vmap(simulate)`. It is `sweep_model`'s
    default engine.

    **Arguments:**

    - `method`: an ensemble method; default `None`: the counterpart of `sweep_model`'s `solver` argument
      (`Tsit5` or none given -> [`carkinetics.EnsembleTsit5`][], implicit solvers such as `Kvaerno5` ->
      [`carkinetics.EnsembleRodas5`][]).
    - `saves_per_step`, `slots`: passed to `simulate_ensemble` (defaults 1 and `None`, as there). Results do not
      depend on `slots`.

    `sweep_model`'s `**simulate_kwargs` are passed on (`t0`, `rtol`, `atol`, `max_steps` (per segment, as in
    `simulate`), `adjoint`; `solver` selects the method); `dt0` and other arguments are not supported.

    **Example:**

    ```python
    import numpy as np, jax.numpy as jnp, carkinetics as ck
    from carkinetics.models import OneCompartmentPK
    res = ck.sweep_model(OneCompartmentPK(), ck.Bolus(0.0, 100.0, "central"), jnp.linspace(0, 1, 25),
                         {"cl": np.linspace(50.0, 200.0, 8)}, evaluator=ck.EnsembleEvaluator(slots=4),
                         progress=False)
    res.engine    # "ensemble"
    ```
    """

    method: Any = None
    saves_per_step: int = eqx.field(static=True, default=1)
    slots: int | None = eqx.field(static=True, default=None)

    def __call__(self, fn: Callable, chunk: Any) -> Any:
        if not isinstance(fn, _ModelMember):
            raise ValueError("EnsembleEvaluator works with sweep_model only (its member function simulates a model); "
                             f"got a member function of type {type(fn).__name__}.")
        return fn.batched(chunk, self)


def _stack_regimens(regimens: Sequence[Regimen]) -> Regimen:
    regimens = list(regimens)
    if not regimens or not all(isinstance(r, Regimen) for r in regimens):
        raise ValueError("`regimens` must be a non-empty sequence of carkinetics Regimen objects.")
    struct = jax.tree_util.tree_structure(regimens[0])
    for i, r in enumerate(regimens):
        if jax.tree_util.tree_structure(r) != struct:
            raise ValueError(
                f"`regimens[{i}]` has a different structure (dose types, target states or repeat counts) from "
                "`regimens[0]`; batched regimens must differ only in their numbers (times, amounts, rates)."
            )
    return jax.tree_util.tree_map(lambda *xs: np.stack([np.asarray(x) for x in xs]), *regimens)


def sweep_model(
    model: AbstractKineticModel,
    regimen: Regimen | None,
    ts: Any,
    samples: Mapping[str, Any] | None = None,
    *,
    regimens: Sequence[Regimen] | None = None,
    metrics: Callable[[Solution], Mapping[str, Any]] | None = observable_metrics,
    keep_trajectories: bool = False,
    chunk_size: int = 1024,
    devices: Any = None,
    checkpoint: str | os.PathLike | None = None,
    progress: bool = True,
    evaluator: Callable | None = None,
    **simulate_kwargs: Any,
) -> SweepResult:
    """Simulate `model` for every member of a batch of parameter sets and/or regimens and reduce to metrics.

    Each member is integrated as `simulate(model.replace(sample), regimen_i, ts, throw=False, **simulate_kwargs)`
    would (by default with the batched ensemble engine, see `evaluator`), reduced by
    `metrics`; the solver status masks failed members (their float outputs become `nan`; `n_failed` counts
    them). Built on [`carkinetics.sweep`][] (chunking, devices, checkpoints, progress).

    **Arguments:**

    - `model`, `ts`, `**simulate_kwargs`: as for [`carkinetics.simulate`][] (`throw` is always `False`).
    - `regimen`: the regimen shared by all members (or `None`), used unless `regimens` is given.
    - `samples`: `{dotted parameter name: array (N,) or (N, ...)}` in the parameter's unit, e.g. from
      [`carkinetics.virtual_population`][]. Values are checked against the declared bounds before the sweep.
    - `regimens`: optional sequence of N regimens of identical structure (one per member).
    - `metrics`: `metrics(sol) -> dict` of per-member outputs, traced under `vmap` (use
      [`carkinetics.metrics`][] functions); default [`carkinetics.observable_metrics`][]. `None` for none.
    - `keep_trajectories`: also return `"states"` `(N, T, S)` and `"observables"` `(N, T, O)` (memory!).
    - `chunk_size`, `devices`, `checkpoint`, `progress`: see [`carkinetics.sweep`][].
    - `evaluator`: the engine. Default `None`: [`carkinetics.EnsembleEvaluator`][] (the batched ensemble
      solver [`carkinetics.simulate_ensemble`][], several times faster per member than `vmap(simulate)`), with the
      method matching `solver`: `diffrax.Tsit5` (or no `solver`) -> [`carkinetics.EnsembleTsit5`][], implicit
      solvers (`Kvaerno3/4/5`, `ImplicitEuler`) -> [`carkinetics.EnsembleRodas5`][]. **Fallback:** when the
      ensemble engine cannot honour the settings - a solver with no ensemble counterpart (`Dopri5`, `Dopri8`,
      `Euler`, ...), `dt0`, or an adjoint other than `RecursiveCheckpointAdjoint`/`ForwardMode` - the default
      uses [`carkinetics.vmap_evaluator`][] instead (`SweepResult.engine` says which ran). Pass
      `evaluator=ck.vmap_evaluator` to force `vmap(simulate)`, or an explicit `EnsembleEvaluator(...)` (which
      raises `ValueError` for such settings instead of falling back). The two engines agree to the solver
      tolerance, not bit for bit (different step sequences; Rodas5 is a different method from Kvaerno5).
      `max_steps` means steps per segment with both engines (the ensemble gets `max_steps` times the number of
      segments for a member's whole horizon).

    **Returns:** a [`carkinetics.SweepResult`][] whose `outputs` is the dict of metrics (`engine` names the engine).

    **Example:**

    ```python
    import numpy as np, jax.numpy as jnp
    import carkinetics as ck
    from carkinetics.models import OneCompartmentPK
    res = ck.sweep_model(OneCompartmentPK(), ck.Bolus(0.0, 100.0, "central"), jnp.linspace(0, 1, 25),
                         {"cl": np.linspace(50.0, 200.0, 8)}, chunk_size=4, progress=False)
    res.outputs["concentration_auc"]   # 100/cl (1 - exp(-cl/v)) mg d/L over days 0-1 (trapezoid rule)
    ```
    """
    if not isinstance(model, AbstractKineticModel):
        raise ValueError(f"`model` must be a carkinetics AbstractKineticModel, got {type(model).__name__}.")
    if "throw" in simulate_kwargs:
        raise ValueError("`throw` cannot be set in sweep_model: members always run with throw=False and are masked.")
    samples = dict(samples or {})
    allp = parameters(model)
    n = None
    params = {}
    for name, values in samples.items():
        if name not in allp:
            raise ValueError(f"Unknown parameter {name!r} in `samples`; known parameters are {sorted(allp)}.")
        arr = np.asarray(values, dtype=float)
        if arr.ndim < 1:
            raise ValueError(f"`samples[{name!r}]` must have a leading member axis, got a scalar.")
        info = allp[name].info
        bad = ~np.isfinite(arr) | (arr < info.lower) | (arr > info.upper)
        if np.any(bad):
            i = int(np.flatnonzero(bad.reshape(arr.shape[0], -1).any(axis=1))[0])
            raise ValueError(
                f"`samples[{name!r}]` member {i} = {arr[i]!r} {info.unit} is non-finite or outside the declared "
                f"bounds [{info.lower}, {info.upper}]."
            )
        if n is not None and arr.shape[0] != n:
            raise ValueError(
                f"All `samples` must have the same number of members; {name!r} has {arr.shape[0]}, not {n}."
            )
        n = arr.shape[0]
        params[name] = arr
    member: dict[str, Any] = {"params": params}
    if regimens is not None:
        stacked = _stack_regimens(regimens)
        if n is not None and len(regimens) != n:
            raise ValueError(f"`regimens` has {len(regimens)} members but `samples` has {n}.")
        member["regimen"] = stacked
        n = len(regimens)
    if n is None:
        raise ValueError("Give `samples` and/or `regimens`: there is nothing to sweep over.")
    why = ensemble_unsupported(simulate_kwargs)
    if evaluator is None:
        evaluator = vmap_evaluator if why is not None else EnsembleEvaluator()
    elif isinstance(evaluator, EnsembleEvaluator):
        if why is not None:
            raise ValueError(f"`evaluator` is an EnsembleEvaluator but {why}; use evaluator=ck.vmap_evaluator "
                             "(or leave `evaluator` unset to fall back automatically).")
        if evaluator.method is not None and simulate_kwargs.get("solver") is not None:
            raise ValueError(f"Both `solver` ({type(simulate_kwargs['solver']).__name__}) and the EnsembleEvaluator's "
                             f"`method` ({type(evaluator.method).__name__}) are given; give only one.")
    elif not callable(evaluator):
        raise ValueError(f"`evaluator` must be None, ck.vmap_evaluator, a ck.EnsembleEvaluator or a callable, got "
                         f"{type(evaluator).__name__}.")
    fn = _ModelMember(floats_to_arrays(model), regimen, jnp.asarray(ts, dtype=float), metrics, keep_trajectories,
                      simulate_kwargs)
    return sweep(fn, member, chunk_size=chunk_size, devices=devices, checkpoint=checkpoint, progress=progress,
                 has_ok=True, evaluator=evaluator)
