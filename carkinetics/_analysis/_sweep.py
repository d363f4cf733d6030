"""`sweep`: evaluate a function over a large batch of inputs in bounded memory, on one or many devices; and
`sweep_model`, its model-level form.

The batch is cut into chunks of `chunk_size` members (the last one padded). One compiled chunk function runs per
chunk: `jax.vmap` of a per-member function, or a batch function ([`carkinetics.AbstractBatchFunction`][], e.g. a
batched ODE solve) called on the whole chunk. A Python loop outside JIT walks the chunks, so device memory holds one
or two chunks whatever the batch size, and only the per-member outputs (normally summary metrics) come back to the
host. With several devices each chunk is split across a 1-D `Mesh` with `shard_map`, so every device works on its
own members. Finished chunks can be written to a checkpoint directory, so an interrupted sweep resumes where it
stopped.
"""

from __future__ import annotations

import abc
import json
import math
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from .. import metrics as _m
from .._core._dosing import Regimen
from .._core._model import AbstractKineticModel
from .._core._parameters import floats_to_arrays, parameters
from .._core._solution import Solution
from .._engine._batch import AbstractExperiment, Experiment, batch_models, run_experiment
from .._engine._simulate import ENGINES, Engine, engine_of, resolve_solver
from .._ensemble import resolve_devices
from ._checkpoint import FORMAT_VERSION, Checkpoint, fingerprint
from ._distributed import ProcessFailed, ProcessGroup, gather, versions
from ._interrupt import Interrupted, stop_on_signals
from ._population import Population
from ._progress import Progress

_AXIS = "members"


class AbstractBatchFunction(eqx.Module):
    """A function of a whole chunk of members (every input leaf with a leading member axis) rather than of one
    member; [`carkinetics.sweep`][] calls it on chunks instead of `jax.vmap`-ing it. It returns the chunk's outputs,
    or `(outputs, ok)` with `ok` a boolean `(n,)` array."""

    @abc.abstractmethod
    def __call__(self, chunk: Any) -> Any:
        """Outputs of every member of `chunk`."""

    @property
    def engine(self) -> str:
        """The engine the function integrates with (`"ensemble"` or `"vmap"`), or `"custom"`."""
        return "custom"


class ParameterBatch(AbstractBatchFunction):
    """An experiment on members built from parameter values: the batch function of model sweeps and of Sobol/Morris
    analyses of a model.

    A chunk is `{dotted name: (n, ...) values}` or an `(n, d)` array whose columns are the parameters `names`; with
    `regimens`, a tuple `(values, regimen chunk)` whose regimen leaves carry the member axis. Members are
    `batch_models(template, values)` and are solved with one engine call ([`carkinetics.run_experiment`][]).
    Returns `(outputs, ok)`.
    """

    experiment: AbstractExperiment
    # Python-float parameters of the template become arrays, so that new template values reuse the compiled chunk.
    template: Any = eqx.field(converter=floats_to_arrays)
    names: tuple[str, ...] = eqx.field(static=True)
    engine_name: Engine = eqx.field(static=True)
    per_member_regimen: bool = eqx.field(static=True, default=False)

    @property
    def engine(self) -> str:
        return self.engine_name

    def __call__(self, chunk: Any) -> tuple[Any, jax.Array]:
        regimens = None
        if self.per_member_regimen:
            chunk, regimens = chunk
        if isinstance(chunk, Mapping):
            values = dict(chunk)
        else:
            x = jnp.asarray(chunk)
            values = {n: x[:, i] for i, n in enumerate(self.names)}
        n = jax.tree_util.tree_leaves(chunk)[0].shape[0] if values else jax.tree_util.tree_leaves(regimens)[0].shape[0]
        members = batch_models(self.template, values, n, check_bounds=False)
        if regimens is not None:
            members = (members, regimens)
        return run_experiment(self.experiment, members, engine=self.engine_name)


class SweepResult(eqx.Module):
    """What [`carkinetics.sweep`][] returns.

    **Fields:**

    - `outputs`: the member function's output pytree, each leaf a NumPy array with a leading axis of length
      `n_members`. Floating-point outputs of failed members are NaN (masked), so they can never be mistaken for
      values; use `ok` to select members.
    - `ok`: boolean array `(n_members,)`, `False` for failed members.
    - `n_failed`: number of failed members.
    - `n_members`, `chunk_size`, `n_chunks`, `n_devices`: the layout that was used (`n_devices` counts the devices
      of every process).
    - `n_resumed_chunks`: chunks loaded from the checkpoint instead of being computed.
    - `n_processes`: the processes that computed it (see [`carkinetics.distributed_setup`][]).
    - `engine`: what integrated the members: `"ensemble"` (the batched solver), `"vmap"` (`jax.vmap` of a
      per-member function or of the per-member diffrax engine) or `"custom"` (another batch function).
    """

    outputs: Any
    ok: np.ndarray
    n_failed: int = eqx.field(static=True)
    n_members: int = eqx.field(static=True)
    chunk_size: int = eqx.field(static=True)
    n_chunks: int = eqx.field(static=True)
    n_devices: int = eqx.field(static=True)
    n_resumed_chunks: int = eqx.field(static=True)
    engine: str = eqx.field(static=True)
    n_processes: int = eqx.field(static=True, default=1)


def _leading_size(leaves: Sequence[np.ndarray]) -> int:
    if any(leaf.ndim == 0 for leaf in leaves):
        raise ValueError("Every leaf of `inputs` must have a leading member axis; found a scalar leaf.")
    sizes = {leaf.shape[0] for leaf in leaves}
    if len(sizes) != 1:
        raise ValueError(f"Every leaf of `inputs` must have the same leading (member) size; got sizes {sorted(sizes)}.")
    return sizes.pop()


def _mask_failed(out: Any, ok: jax.Array) -> Any:
    def mask(x):
        if jnp.issubdtype(x.dtype, jnp.inexact):
            return jnp.where(ok.reshape(ok.shape + (1,) * (x.ndim - 1)), x, jnp.nan)
        return x

    return jax.tree_util.tree_map(mask, out)


@eqx.filter_jit
def _run_chunk(fn: Callable, chunk: Any, has_ok: bool, mesh: Mesh | None) -> tuple[Any, jax.Array]:
    fn_dyn, fn_static = eqx.partition(fn, eqx.is_array)

    def body(fn_dyn, chunk):
        f = eqx.combine(fn_dyn, fn_static)
        res = f(chunk) if isinstance(f, AbstractBatchFunction) else jax.vmap(f)(chunk)
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
    mapped = jax.shard_map(body, mesh=mesh, in_specs=(PartitionSpec(), spec), out_specs=spec, check_vma=False)
    return mapped(fn_dyn, chunk)


def _host(dev_out: tuple[Any, jax.Array]) -> tuple[list[np.ndarray], np.ndarray]:
    out, ok = dev_out
    return [np.asarray(x) for x in jax.tree_util.tree_leaves(out)], np.asarray(ok)


def _check_positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"`{name}` must be a positive int, got {value!r}.")
    return int(value)


def _sweep_devices(devices: Any) -> list | None:
    """The devices of a sweep. In a multi-process run `None` means every device of every process (a process left
    out would idle), and every process must own at least one of the devices."""
    if jax.process_count() == 1:
        return resolve_devices(devices)
    devs = resolve_devices("all" if devices is None else devices)
    assert devs is not None
    owners = {d.process_index for d in devs}
    missing = [i for i in range(jax.process_count()) if i not in owners]
    if missing:
        raise ValueError(
            f"`devices` must include devices of every process in a multi-process run; process(es) "
            f"{missing} own none of the {len(devs)} devices given (use devices='all')."
        )
    return devs


def _replicated(tree: Any, mesh: Mesh) -> Any:
    """The array leaves of `tree` as global arrays replicated over `mesh` (every process holds the same values,
    checked at start-up), so they can enter a computation that spans processes."""
    rep = NamedSharding(mesh, PartitionSpec())

    def put(x):
        if not eqx.is_array(x):
            return x
        host = np.asarray(x)
        return jax.make_array_from_callback(host.shape, rep, lambda idx: host[idx])

    return jax.tree_util.tree_map(put, tree)


class _Layout(eqx.Module):
    """Where member `j` of chunk `i` lives in the outputs, and how resumed chunks travel as bytes."""

    n: int
    chunk_size: int
    shapes: tuple[tuple[tuple[int, ...], Any], ...]  # per output leaf: trailing shape, dtype

    def bounds(self, i: int) -> tuple[int, int]:
        return i * self.chunk_size, min((i + 1) * self.chunk_size, self.n)

    def nbytes(self, i: int) -> int:
        lo, hi = self.bounds(i)
        return (hi - lo) * (1 + sum(int(np.prod(s, dtype=np.int64)) * np.dtype(d).itemsize for s, d in self.shapes))

    def pack(self, i: int, results: Sequence[np.ndarray], ok: np.ndarray) -> np.ndarray:
        lo, hi = self.bounds(i)
        parts = [np.ascontiguousarray(r[lo:hi]).view(np.uint8).ravel() for r in results]
        return np.concatenate(parts + [ok[lo:hi].astype(np.uint8)])

    def unpack(self, i: int, data: np.ndarray, results: Sequence[np.ndarray], ok: np.ndarray) -> None:
        lo, hi = self.bounds(i)
        pos = 0
        for r in results:
            size = (hi - lo) * int(np.prod(r.shape[1:], dtype=np.int64)) * r.dtype.itemsize
            r[lo:hi] = data[pos : pos + size].view(r.dtype).reshape((hi - lo,) + r.shape[1:])
            pos += size
        ok[lo:hi] = data[pos : pos + hi - lo].astype(bool)


_BROADCAST_BYTES = 1 << 24  # resumed chunks travel from process 0 in broadcasts of about 16 MiB


def _resume(
    checkpoint: Any,
    manifest: dict,
    layout: _Layout,
    n_chunks: int,
    group: ProcessGroup | None,
    store: Callable,
    results: Sequence[np.ndarray],
    ok: np.ndarray,
) -> tuple[Checkpoint | None, np.ndarray]:
    """Open the checkpoint and load its finished chunks into `results`/`ok` (through `store`).

    One process reads and writes the checkpoint: the only one, or process 0 of several, which shares the outcome
    (an error every process raises, or which chunks are finished) and broadcasts the finished chunks' outputs.
    Returns the checkpoint (`None` on the other processes) and the finished chunks as a boolean mask.
    """
    writer = group is None or group.pid == 0
    ckpt, resumed, status = None, np.zeros(n_chunks, dtype=bool), {}
    if writer:
        try:
            ckpt = Checkpoint(checkpoint, manifest)
            for i in range(n_chunks):
                loaded = ckpt.load(i, len(results))
                if loaded is not None:
                    lo, hi = layout.bounds(i)
                    if any(len(x) < hi - lo for x in (*loaded[0], loaded[1])):
                        raise ValueError(
                            f"The checkpoint chunk {ckpt.file(i)!r} holds fewer members than chunk {i} "
                            f"has ({hi - lo}); delete that file and run again to recompute it."
                        )
                    store(i, *loaded, resumed=True)
                    resumed[i] = True
            status = {"done": np.packbits(resumed).tobytes().hex()}
        except ValueError as err:
            if group is None:
                raise
            status = {"error": str(err)}
    if group is None:
        return ckpt, resumed
    status = json.loads(group.share("checkpoint", json.dumps(status)))
    if "error" in status:
        raise ValueError(status["error"])
    if not writer:
        resumed = np.unpackbits(np.frombuffer(bytes.fromhex(status["done"]), np.uint8))[:n_chunks] > 0
    # The finished chunks travel from process 0 in broadcasts of about _BROADCAST_BYTES.
    done = [int(i) for i in np.flatnonzero(resumed)]
    while done:
        batch, size = [], 0
        while done and (not batch or size < _BROADCAST_BYTES):
            batch.append(done.pop(0))
            size += layout.nbytes(batch[-1])
        data = np.concatenate([layout.pack(j, results, ok) for j in batch]) if writer else np.zeros(size, np.uint8)
        data = group.broadcast(data)
        pos = 0
        for j in batch:
            if not writer:
                layout.unpack(j, data[pos : pos + layout.nbytes(j)], results, ok)
            pos += layout.nbytes(j)
    return ckpt, resumed


def sweep(
    fn: Callable,
    inputs: Any,
    *,
    chunk_size: int = 1024,
    devices: Any = None,
    checkpoint: str | os.PathLike | None = None,
    progress: bool = True,
    has_ok: bool = False,
    on_chunk: Callable[[int, int], Any] | None = None,
) -> SweepResult:
    """Evaluate `fn` on every member of a batch, in chunks of bounded size, on one or several devices and processes.

    **Arguments:**

    - `fn`: maps ONE member's input pytree to a pytree of outputs (vectorised with `jax.vmap`), or is an
      [`carkinetics.AbstractBatchFunction`][] that maps a whole chunk; with `has_ok=True` it returns
      `(outputs, ok)`, `ok` a boolean per member (e.g. `Solution.ok`). An `eqx.Module` whose array fields change
      between calls does not recompile.
    - `inputs`: a pytree whose leaves are arrays with the same leading size N (the members).
    - `chunk_size`: members per chunk (each compiled call pads a chunk to a multiple of the device count). Memory on
      the device is bounded by about two chunks. The chunks, and so a checkpoint, do not depend on the devices.
    - `devices`: `None` (default device), `"all"`, an int (the first n devices) or a sequence of devices. Members of
      each chunk are split across them with `shard_map`. After [`carkinetics.distributed_setup`][] (several
      processes), `"all"` and `None` mean every device of every process.
    - `checkpoint`: a directory. Each finished chunk is written there atomically next to a `manifest.json` keyed on
      `fn` (its arrays, settings and code), `inputs` and the layout; rerunning the same sweep loads the finished
      chunks and computes only the missing ones. A directory written by a different sweep raises `ValueError`
      naming what differs. With several processes only process 0 reads and writes it (it need not be shared), and
      a checkpoint written with one process count resumes with another.
    - `progress`: print progress (done/total, rate, ETA, failures) on stderr (process 0 only).
    - `has_ok`: whether `fn` returns `(outputs, ok)`.
    - `on_chunk`: called as `on_chunk(chunk_index, n_chunks)` after each computed (not resumed) chunk is stored, on
      every process (a callback that writes files should do so on process 0 only, `jax.process_index() == 0`).

    **Multi-process runs.** Every process calls `sweep` with the same arguments (the inputs are in every process's
    memory; each process builds only its devices' shards). Each chunk is computed on the global device mesh and
    gathered once; every process returns the same result. At start-up the processes compare package versions and
    fingerprints of `fn`, `inputs` and the layout, and all raise `ValueError` naming the process that differs. A
    process that dies, fails or exits early is reported by the others with its id ([`carkinetics.ProcessFailed`][],
    within the `heartbeat_timeout` of [`carkinetics.distributed_setup`][]); a signal to any process stops all of
    them after the current chunk ([`carkinetics.Interrupted`][]).

    **Returns:** a [`carkinetics.SweepResult`][]; outputs are NumPy arrays on the host, failed members masked with
    NaN and counted in `n_failed`.

    **Raises:** `ValueError` for malformed inputs, a bad `chunk_size`/`devices`, a checkpoint directory that
    belongs to another sweep, or processes that disagree; [`carkinetics.Interrupted`][] (a `KeyboardInterrupt`)
    when SIGINT or SIGTERM stopped the sweep cleanly after the chunk in progress (finished chunks are in the
    checkpoint: rerun to resume); [`carkinetics.ProcessFailed`][] when another process died or failed.

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
    chunk_size = _check_positive_int("chunk_size", chunk_size)
    leaves, treedef = jax.tree_util.tree_flatten(inputs)
    if not leaves:
        raise ValueError("`inputs` must contain at least one array leaf with a leading member axis.")
    leaves = [np.asarray(leaf) for leaf in leaves]
    n = _leading_size(leaves)
    if n == 0:
        raise ValueError("`inputs` has zero members.")
    devs = _sweep_devices(devices)
    n_dev = 1 if devs is None else len(devs)
    n_proc = jax.process_count()
    chunk_size = min(chunk_size, n)
    call_size = math.ceil(chunk_size / n_dev) * n_dev  # members per compiled call: an equal share per device
    n_chunks = math.ceil(n / chunk_size)
    mesh = None if devs is None else Mesh(np.array(devs), (_AXIS,))
    sharding = None if mesh is None else NamedSharding(mesh, PartitionSpec(_AXIS))
    group = ProcessGroup("sweep") if n_proc > 1 else None

    def chunk_inputs(i: int):
        lo, hi = i * chunk_size, min((i + 1) * chunk_size, n)
        parts = []
        for leaf in leaves:
            part = leaf[lo:hi]
            if hi - lo < call_size:  # pad with copies of the last member: valid inputs, results dropped
                part = np.concatenate([part, np.repeat(part[-1:], call_size - (hi - lo), axis=0)])
            if sharding is None:
                parts.append(jnp.asarray(part))
            else:
                parts.append(jax.make_array_from_callback(part.shape, sharding, lambda idx, p=part: p[idx]))
        return jax.tree_util.tree_unflatten(treedef, parts)

    fn_sha = in_sha = ""
    if checkpoint is not None or group is not None:
        fn_sha, in_sha = fingerprint(fn, has_ok), fingerprint(str(treedef), leaves)
    if group is not None:
        assert mesh is not None
        fn = _replicated(fn, mesh)
    first = chunk_inputs(0)
    out_shape = eqx.filter_eval_shape(_run_chunk, fn, first, has_ok, mesh)
    out_leaves_shape, out_treedef = jax.tree_util.tree_flatten(out_shape[0])
    results = [np.empty((n,) + s.shape[1:], dtype=s.dtype) for s in out_leaves_shape]
    ok_all = np.empty((n,), dtype=bool)
    layout = _Layout(n, chunk_size, tuple((tuple(s.shape[1:]), s.dtype) for s in out_leaves_shape))

    if group is not None:
        assert devs is not None
        group.agree(
            {
                "versions": versions(),
                "function": fn_sha,
                "inputs": in_sha,
                "layout": {
                    "n_members": n,
                    "chunk_size": chunk_size,
                    "has_ok": has_ok,
                    "devices": [d.id for d in devs],
                    "checkpoint": checkpoint is not None,
                },
            }
        )
        group.total = n_chunks
        group.checkpoint = None if checkpoint is None else os.fspath(checkpoint)

    bar = Progress("sweep", n, enabled=progress and jax.process_index() == 0)

    def store(i: int, out_leaves: Sequence[np.ndarray], ok: np.ndarray, resumed: bool = False) -> None:
        lo, hi = layout.bounds(i)
        for dst, src in zip(results, out_leaves):
            dst[lo:hi] = src[: hi - lo]
        ok_all[lo:hi] = ok[: hi - lo]
        bar.update(hi - lo, int(np.sum(~ok[: hi - lo])), resumed=resumed)

    ckpt, resumed = None, np.zeros(n_chunks, dtype=bool)
    if checkpoint is not None:
        manifest = {
            "format": FORMAT_VERSION,
            "function_sha256": fn_sha,
            "inputs_sha256": in_sha,
            "n_members": n,
            "chunk_size": chunk_size,
            "n_chunks": n_chunks,
            "outputs": str(out_treedef),
            "output_shapes": [[list(s.shape[1:]), s.dtype.str] for s in out_leaves_shape],
        }
        ckpt, resumed = _resume(checkpoint, manifest, layout, n_chunks, group, store, results, ok_all)
    n_resumed = int(resumed.sum())

    def finish(i: int, out_leaves: Sequence[np.ndarray], ok: np.ndarray) -> None:
        lo, hi = layout.bounds(i)
        if ckpt is not None:
            ckpt.save(i, [x[: hi - lo] for x in out_leaves], ok[: hi - lo])
        store(i, out_leaves, ok)
        if on_chunk is not None:
            on_chunk(i, n_chunks)

    todo = [i for i in range(n_chunks) if not resumed[i]]
    done = n_resumed
    if group is not None:
        group.done = done

    def run(i: int) -> Any:
        return _run_chunk(fn, first if i == 0 else chunk_inputs(i), has_ok, mesh)

    try:
        with stop_on_signals("sweep") as stop:
            signum = None
            if group is None:
                pending = None  # (index, device outputs): one chunk in flight while the previous one is copied back
                for i in todo:
                    dev_out = run(i)
                    if pending is not None:
                        finish(pending[0], *_host(pending[1]))
                        done += 1
                    pending = (i, dev_out)
                    if stop.signum is not None:
                        break
                if pending is not None:
                    finish(pending[0], *_host(pending[1]))
                    done += 1
                signum = stop.signum
            else:
                # No collective is ever queued behind a computation: each chunk is computed, the processes meet at
                # a death-aware barrier, and only then gather (a dead peer is reported, never waited for).
                assert mesh is not None
                dev_out = run(todo[0]) if todo else None
                for k, i in enumerate(todo):
                    jax.block_until_ready(dev_out)
                    signum = group.sync(stop.signum)
                    gathered = group.collective(lambda out=dev_out: gather(out, mesh))
                    if k + 1 < len(todo) and signum is None:
                        dev_out = run(todo[k + 1])  # computes while this chunk is written
                    finish(i, gathered[:-1], gathered[-1])
                    done += 1
                    group.done = done
                    if signum is not None:
                        break
            if signum is not None and done < n_chunks:
                raise Interrupted(signum, done, n_chunks, None if checkpoint is None else os.fspath(checkpoint))
    except (Interrupted, ProcessFailed):
        raise
    except BaseException as err:
        if group is not None:
            group.note_failure(err)  # the others name this process and its error instead of waiting for it
        raise
    finally:
        bar.close()

    outputs = jax.tree_util.tree_unflatten(out_treedef, results)
    engine = fn.engine if isinstance(fn, AbstractBatchFunction) else "vmap"
    return SweepResult(outputs, ok_all, int(np.sum(~ok_all)), n, chunk_size, n_chunks, n_dev, n_resumed, engine, n_proc)


def observable_metrics(sol: Solution) -> dict[str, jax.Array]:
    """Default metrics of [`carkinetics.sweep_model`][]: Cmax, Tmax, AUC and last value of every observable.

    Keys are `"<observable>_cmax"` (observable unit), `"_tmax"` (days, quadratic interpolation), `"_auc"`
    (unit x days, trapezoid over `ts`) and `"_last"` (value at `ts[-1]`).
    """
    out = {}
    for k, name in enumerate(sol.model_class.observable_names()):
        v = sol.obs_array[:, k]
        out[f"{name}_cmax"] = _m.cmax(sol.ts, v)
        out[f"{name}_tmax"] = _m.tmax(sol.ts, v)
        out[f"{name}_auc"] = _m.auc(sol.ts, v)
        out[f"{name}_last"] = v[-1]
    return out


class _PerMemberRegimen(AbstractExperiment):
    """`experiment` on members `(model, regimen)`: each member's own regimen replaces the experiment's."""

    inner: Experiment
    ts: Any
    solver: Any
    rtol: float | None = eqx.field(static=True)
    atol: float | None = eqx.field(static=True)
    max_steps: int = eqx.field(static=True)
    t0: float | None = eqx.field(static=True)

    def __init__(self, inner: Experiment):
        self.inner = inner
        self.ts, self.solver, self.rtol, self.atol = inner.ts, inner.solver, inner.rtol, inner.atol
        self.max_steps, self.t0 = inner.max_steps, inner.t0

    def model(self, member):
        return member[0]

    def regimen(self, member):
        return member[1]

    def outputs(self, member, solution):
        return self.inner.outputs(member[0], solution)


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
    return jax.tree_util.tree_map(lambda *xs: np.stack([np.asarray(x, dtype=float) for x in xs]), *regimens)


def sweep_model(
    model: AbstractKineticModel,
    regimen: Regimen | None,
    ts: Any,
    samples: Mapping[str, Any] | Population | None = None,
    *,
    regimens: Sequence[Regimen] | None = None,
    metrics: Callable[[Solution], Mapping[str, Any]] | None = observable_metrics,
    keep_trajectories: bool = False,
    engine: Engine | None = None,
    solver: Any = None,
    rtol: float | None = None,
    atol: float | None = None,
    max_steps: int = 100_000,
    t0: float | None = None,
    chunk_size: int = 1024,
    devices: Any = None,
    checkpoint: str | os.PathLike | None = None,
    progress: bool = True,
) -> SweepResult:
    """Simulate `model` for every member of a batch of parameter sets and/or regimens and reduce to metrics.

    Each chunk of members is built with [`carkinetics.batch_models`][] and integrated with one engine call
    ([`carkinetics.run_experiment`][]), then reduced by `metrics`; failed members are masked (their float outputs
    become NaN; `n_failed` counts them). Built on [`carkinetics.sweep`][] (chunking, devices, checkpoints, progress).

    **Arguments:**

    - `model`, `ts`: the template model and the save times (days).
    - `regimen`: the regimen shared by all members (or `None`), used unless `regimens` is given.
    - `samples`: `{dotted parameter name: array (N,) or (N, ...)}` in the parameter's unit, or a virtual population
      ([`carkinetics.Population`][] from [`carkinetics.virtual_population`][] or
      [`carkinetics.sample_posterior`][]: its `samples` are swept). Values are checked against the declared bounds
      before the sweep.
    - `regimens`: optional sequence of N regimens of identical structure (one per member).
    - `metrics`: `metrics(sol) -> dict` of per-member outputs (use [`carkinetics.metrics`][] functions); default
      [`carkinetics.observable_metrics`][]; `None` for none.
    - `keep_trajectories`: also return `"states"` `(N, T, S)` and `"observables"` `(N, T, O)` (memory!).
    - `engine`: `"ensemble"` (default: the batched solver) or `"vmap"` (`jax.vmap` of the per-member diffrax
      engine, for cross-checks and benchmarks). The two agree to the solver tolerance, not bit for bit.
    - `solver`, `rtol`, `atol`, `max_steps`, `t0`: as for [`carkinetics.simulate_ensemble`][] (`solver` decides the
      engine; `None`: the model class's default on `engine`).
    - `chunk_size`, `devices`, `checkpoint`, `progress`: see [`carkinetics.sweep`][].

    **Returns:** a [`carkinetics.SweepResult`][] whose `outputs` is the dict of metrics.

    **Example:**

    ```python
    import numpy as np, jax.numpy as jnp
    import carkinetics as ck
    from carkinetics.models import OneCompartmentPK
    res = ck.sweep_model(OneCompartmentPK(), ck.Bolus(0.0, 100.0, "central"), jnp.linspace(0, 1, 25),
                         {"cl": np.linspace(50.0, 200.0, 8)}, chunk_size=4, progress=False)
    res.outputs["concentration_auc"]   # 100/cl (1 - exp(-cl/v)) mg d/L over days 0-1 (trapezoid rule)
    res.engine                         # "ensemble"
    ```
    """
    if not isinstance(model, AbstractKineticModel):
        raise ValueError(f"`model` must be a carkinetics AbstractKineticModel, got {type(model).__name__}.")
    if engine is not None and engine not in ENGINES:
        raise ValueError(f"`engine` must be one of {list(ENGINES)}, got {engine!r}.")
    if isinstance(samples, Population):
        samples = samples.samples
    samples = {k: np.asarray(v, dtype=float) for k, v in dict(samples or {}).items()}
    n = None
    if samples:
        n = _n_members(model, samples)
    inputs: Any = samples
    if regimens is not None:
        stacked = _stack_regimens(regimens)
        if n is not None and len(regimens) != n:
            raise ValueError(f"`regimens` has {len(regimens)} members but `samples` has {n}.")
        n = len(regimens)
        inputs = (samples, stacked)
    if n is None:
        raise ValueError("Give `samples` and/or `regimens`: there is nothing to sweep over.")
    experiment = Experiment(
        regimen if regimens is None else None,
        ts,
        metrics,
        solver=solver,
        rtol=rtol,
        atol=atol,
        max_steps=max_steps,
        t0=t0,
        keep_trajectories=keep_trajectories,
    )
    resolved = resolve_solver(model, solver, engine)
    fn = ParameterBatch(
        experiment if regimens is None else _PerMemberRegimen(experiment),
        model,
        tuple(samples),
        engine_of(resolved),
        per_member_regimen=regimens is not None,
    )
    return sweep(
        fn, inputs, chunk_size=chunk_size, devices=devices, checkpoint=checkpoint, progress=progress, has_ok=True
    )


def _n_members(model: Any, samples: Mapping[str, np.ndarray]) -> int:
    """Check sampled values (names, bounds, equal member counts) and return the member count."""
    allp = parameters(model)
    sizes = {}
    for name, arr in samples.items():
        if name not in allp:
            raise ValueError(f"Unknown parameter {name!r} in `samples`; known parameters are {sorted(allp)}.")
        if arr.ndim < 1:
            raise ValueError(f"`samples[{name!r}]` must have a leading member axis, got a scalar.")
        sizes[name] = arr.shape[0]
    if len(set(sizes.values())) > 1:
        first = next(iter(sizes))
        other = next(k for k in sizes if sizes[k] != sizes[first])
        raise ValueError(
            f"All `samples` must have the same number of members; {other!r} has {sizes[other]}, not {sizes[first]}."
        )
    for name, arr in samples.items():
        info = allp[name].info
        bad = ~np.isfinite(arr) | (arr < info.lower) | (arr > info.upper)
        if np.any(bad):
            i = int(np.flatnonzero(bad.reshape(arr.shape[0], -1).any(axis=1))[0])
            raise ValueError(
                f"`samples[{name!r}]` member {i} = {arr[i]!r} {info.unit} is non-finite or outside the "
                f"declared bounds [{info.lower}, {info.upper}]."
            )
    return next(iter(sizes.values()))
