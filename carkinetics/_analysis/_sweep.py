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
from .._core._solution import Solution
from .._engine._batch import AbstractExperiment, Experiment, batch_models, run_experiment
from .._core._parameters import floats_to_arrays, parameters
from .._engine._simulate import ENGINES, Engine, engine_of, resolve_solver
from .._ensemble import resolve_devices
from ._checkpoint import FORMAT_VERSION, Checkpoint, fingerprint
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
    engine_name: str = eqx.field(static=True)
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
    - `n_members`, `chunk_size`, `n_chunks`, `n_devices`: the layout that was used.
    - `n_resumed_chunks`: chunks loaded from the checkpoint instead of being computed.
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


def _leading_size(leaves: Sequence[np.ndarray]) -> int:
    sizes = {leaf.shape[0] if leaf.ndim else None for leaf in leaves}
    if None in sizes:
        raise ValueError("Every leaf of `inputs` must have a leading member axis; found a scalar leaf.")
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


def _to_host(x: jax.Array) -> np.ndarray:
    if jax.process_count() > 1 and not x.is_fully_addressable:
        from jax.experimental import multihost_utils

        return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(x)


def _check_positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"`{name}` must be a positive int, got {value!r}.")
    return int(value)


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
    """Evaluate `fn` on every member of a batch, in chunks of bounded size, on one or several devices.

    **Arguments:**

    - `fn`: maps ONE member's input pytree to a pytree of outputs (vectorised with `jax.vmap`), or is an
      [`carkinetics.AbstractBatchFunction`][] that maps a whole chunk; with `has_ok=True` it returns
      `(outputs, ok)`, `ok` a boolean per member (e.g. `Solution.ok`). An `eqx.Module` whose array fields change
      between calls does not recompile.
    - `inputs`: a pytree whose leaves are arrays with the same leading size N (the members).
    - `chunk_size`: members per compiled call (rounded up to a multiple of the device count). Memory on the device
      is bounded by about two chunks.
    - `devices`: `None` (default device), `"all"`, an int (the first n devices) or a sequence of devices. Members of
      each chunk are split across them with `shard_map`.
    - `checkpoint`: a directory. Each finished chunk is written there atomically next to a `manifest.json` keyed on
      `fn` (its arrays, settings and code), `inputs` and the layout; rerunning the same sweep loads the finished
      chunks and computes only the missing ones. A directory written by a different sweep raises `ValueError`
      naming what differs.
    - `progress`: print progress (done/total, rate, ETA, failures) on stderr.
    - `has_ok`: whether `fn` returns `(outputs, ok)`.
    - `on_chunk`: called as `on_chunk(chunk_index, n_chunks)` after each computed (not resumed) chunk is stored.

    **Returns:** a [`carkinetics.SweepResult`][]; outputs are NumPy arrays on the host, failed members masked with
    NaN and counted in `n_failed`.

    **Raises:** `ValueError` for malformed inputs, a bad `chunk_size`/`devices`, or a checkpoint directory that
    belongs to another sweep.

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
    devs = resolve_devices(devices)
    n_dev = 1 if devs is None else len(devs)
    chunk_size = int(math.ceil(min(chunk_size, n) / n_dev) * n_dev)
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
    out_shape = eqx.filter_eval_shape(_run_chunk, fn, first, has_ok, mesh)
    out_leaves_shape, out_treedef = jax.tree_util.tree_flatten(out_shape[0])
    results = [np.empty((n,) + s.shape[1:], dtype=s.dtype) for s in out_leaves_shape]
    ok_all = np.empty((n,), dtype=bool)

    ckpt = None
    if checkpoint is not None:
        manifest = {
            "format": FORMAT_VERSION,
            "function_sha256": fingerprint(fn, has_ok),
            "inputs_sha256": fingerprint(str(treedef), leaves),
            "n_members": n,
            "chunk_size": chunk_size,
            "n_chunks": n_chunks,
            "outputs": str(out_treedef),
            "output_shapes": [[list(s.shape[1:]), s.dtype.str] for s in out_leaves_shape],
        }
        ckpt = Checkpoint(checkpoint, manifest)

    bar = Progress("sweep", n, enabled=progress)

    def store(i: int, out_leaves: Sequence[np.ndarray], ok: np.ndarray, resumed: bool = False) -> None:
        lo, hi = i * chunk_size, min((i + 1) * chunk_size, n)
        for dst, src in zip(results, out_leaves):
            dst[lo:hi] = src[: hi - lo]
        ok_all[lo:hi] = ok[: hi - lo]
        bar.update(hi - lo, int(np.sum(~ok[: hi - lo])), resumed=resumed)

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
                store(i, *loaded, resumed=True)
                continue
            chunk = first if i == 0 else chunk_inputs(i)
            dev_out = _run_chunk(fn, chunk, has_ok, mesh)
            if pending is not None:
                finish(*pending)
            pending = (i, dev_out)
        if pending is not None:
            finish(*pending)
    finally:
        bar.close()

    outputs = jax.tree_util.tree_unflatten(out_treedef, results)
    engine = fn.engine if isinstance(fn, AbstractBatchFunction) else "vmap"
    return SweepResult(outputs, ok_all, int(np.sum(~ok_all)), n, chunk_size, n_chunks, n_dev, n_resumed, engine)


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
    samples: Mapping[str, Any] | None = None,
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
    - `samples`: `{dotted parameter name: array (N,) or (N, ...)}` in the parameter's unit, e.g. from
      [`carkinetics.virtual_population`][]. Values are checked against the declared bounds before the sweep.
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
    experiment = Experiment(regimen if regimens is None else None, ts, metrics, solver=solver, rtol=rtol, atol=atol,
                            max_steps=max_steps, t0=t0, keep_trajectories=keep_trajectories)
    resolved = resolve_solver(model, solver, engine)
    fn = ParameterBatch(experiment if regimens is None else _PerMemberRegimen(experiment), model, tuple(samples),
                        engine_of(resolved), per_member_regimen=regimens is not None)
    return sweep(fn, inputs, chunk_size=chunk_size, devices=devices, checkpoint=checkpoint, progress=progress,
                 has_ok=True)


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
        raise ValueError(f"All `samples` must have the same number of members; {other!r} has {sizes[other]}, not "
                         f"{sizes[first]}.")
    for name, arr in samples.items():
        info = allp[name].info
        bad = ~np.isfinite(arr) | (arr < info.lower) | (arr > info.upper)
        if np.any(bad):
            i = int(np.flatnonzero(bad.reshape(arr.shape[0], -1).any(axis=1))[0])
            raise ValueError(f"`samples[{name!r}]` member {i} = {arr[i]!r} {info.unit} is non-finite or outside the "
                             f"declared bounds [{info.lower}, {info.upper}].")
    return next(iter(sizes.values()))
