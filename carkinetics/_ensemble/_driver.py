"""`simulate_ensemble`: integrate a batch of models of one class, each with its own steps and dose events.

Design (issue 8). `W` "slots" advance together in one while loop, in batch-last layout (`(S, W)` states): every
iteration takes one step of the chosen method in every live slot, each with its own time `t_i`, step size `dt_i`,
segment index and position in the save-time list. A slot whose member has finished takes the next member from a
queue (in batches of `W / 8`, as a refill costs about one step), so the loop does not run at the pace of the
slowest member of the batch and, on CPU, the working set stays in cache (`W = 120` there). A member's horizon is split at
its own dose events, infusion starts/ends and model breakpoints exactly as in [`carkinetics.simulate`][]; a
step never crosses the end of the member's current segment, and on reaching it the member applies its next
jump (`y <- mult * y + add`), switches its infusion input and restarts its step size. Save times are written
from the method's dense output, at most `saves_per_step` per step (a step is shortened so that no more fall
inside it), so the loop body has no inner loop and the same body serves forward mode (`lax` while loop)
and reverse mode (checkpointed while loop, `equinox.internal.while_loop`).
"""

from __future__ import annotations

import functools
from typing import Any

import diffrax
import equinox as eqx
import equinox.internal as eqxi
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, PartitionSpec

from .._custom_types import RealScalarLike, TimesLike
from .._dosing import AbstractDose, Regimen
from .._model import AbstractKineticModel
from .._parameters import floats_to_arrays, traced_parameters_invalid, validate_parameters
from .._segments import build_segments, check_model_and_regimen, tolerance_arrays, validate_ts
from .._simulate import RESULTS, Solution
from .base import AbstractEnsembleMethod
from .tsit5 import EnsembleTsit5

_OK, _MAX_STEPS, _DT_MIN, _INVALID = 0, 1, 2, 3
_AXIS = "members"
#: Default number of slots on CPU: members integrated at once (the rest wait in a queue). Small batches keep the
#: working set in cache and let the queue keep every slot busy. Measured on the reference workload (EnsembleTsit5,
#: one core, min of 8 interleaved runs): ~210 ns per member-step for 96-240 slots except at multiples of 128
#: (128: 250-260 ns, 256: 370-450 ns, 1024: 540 ns; see `_CPU_LANE_ALIAS`); 120 was the fastest or within 3 % of it
#: on the reference and SLE models with both methods.
_CPU_SLOTS = 120
#: On CPU a slot count (lane count) that is a multiple of this many members makes every `(S, W)` float64 row a
#: multiple of 1 KiB, and the step's many same-shaped arrays then compete for the same cache sets: the reference
#: workload ran 1.3-1.9x slower per member-step at 128, 256, 384 and 1024 lanes than at 120, 248, 376 and 1016.
#: `_integrate` therefore moves such lane counts by `_CPU_LANE_PAD` (fewer slots with a queue, padding members
#: without one).
_CPU_LANE_ALIAS = 128
_CPU_LANE_PAD = 8


def _batch_size(model: Any) -> int:
    leaves = [x for x in jax.tree_util.tree_leaves(model) if eqx.is_array(x)]
    if not leaves:
        raise ValueError("`model` has no array leaves; give every parameter a leading batch axis of size N "
                         "(e.g. build the models with `jax.vmap`).")
    bad = [x.shape for x in leaves if x.ndim == 0]
    if bad:
        raise ValueError("Every array leaf of `model` must carry a leading batch axis of size N, but some are "
                         "scalars; build the batch with `jax.vmap(make_model)(values)` or "
                         "`jax.tree.map(lambda x: jnp.broadcast_to(x, (N,) + x.shape), model)`.")
    n = leaves[0].shape[0]
    shapes = sorted({x.shape[0] for x in leaves})
    if len(shapes) != 1:
        raise ValueError(f"The array leaves of `model` have different leading (batch) sizes {shapes}; they must "
                         "all equal the ensemble size N.")
    return int(n)


def _batch_regimen(regimen: Regimen, n: int) -> Regimen:
    def bcast(x):
        x = jnp.asarray(x)
        if x.ndim == 0:
            return jnp.broadcast_to(x, (n,))
        if x.shape[0] != n:
            raise ValueError(f"A batched `regimen` must have leading batch size N = {n} (the model's), got a leaf "
                             f"of shape {x.shape}.")
        return x

    return jax.tree_util.tree_map(bcast, regimen)


def simulate_ensemble(
    model: AbstractKineticModel,
    regimen: Regimen | AbstractDose | None,
    ts: TimesLike,
    *,
    method: AbstractEnsembleMethod | None = None,
    t0: float | None = None,
    rtol: RealScalarLike = 1e-6,
    atol: RealScalarLike = 1e-8,
    max_steps: int = 100_000,
    saves_per_step: int | None = None,
    slots: int | None = None,
    adjoint: diffrax.AbstractAdjoint | None = None,
    devices: Any = None,
    throw: bool = False,
) -> Solution:
    """Integrate a batch of `N` models of one class under per-member (or shared) regimens, all at once.

    The batched counterpart of [`carkinetics.simulate`][] with the same semantics (segments split at every dose
    event, infusion start/end and model breakpoint; jumps applied at event times; right-continuous saves) but a
    solver written for batches: states are stored batch-last, every member has its own adaptive step size and its
    own event schedule, and save times are filled from each method's dense output. It is much faster than
    `jax.vmap(ck.simulate)` because no member waits on a per-member `while` loop of its own (see
    `benchmarks/README.md` for measured speed-ups).

    **Arguments:**

    - `model`: a carkinetics model whose array leaves all carry a leading batch axis of size `N`, e.g.
      `jax.vmap(lambda cl: OneCompartmentPK(cl=cl))(cls)` or
      `jax.tree.map(lambda x: jnp.broadcast_to(x, (N,) + x.shape), model)`.
    - `regimen`: a [`carkinetics.Regimen`][], a dose or `None`; either unbatched (shared by all members) or
      with every leaf batched along a leading axis of size `N` (e.g. `jax.vmap(lambda a: ck.Regimen(...))(amounts)`).
    - `ts`: save times in days, 1-D, sorted, finite, shared by all members.
    - `method`: [`carkinetics.EnsembleTsit5`][] (default, non-stiff) or [`carkinetics.EnsembleRodas5`][] (stiff).
    - `t0`: start time (days); default per member: the earlier of `ts[0]` and its first event.
    - `rtol`, `atol`: tolerances of the per-member step-size controller (RMS norm of
      `error / (atol + rtol * max(|y0|, |y1|))`, as diffrax's `PIDController`): positive numbers or floating-point
      scalar arrays, which may be traced (e.g. `jax.jit(lambda m, rtol: ck.simulate_ensemble(m, ..., rtol=rtol))`
      for a work-precision sweep); they enter the compiled solve as values, so new tolerances do not recompile it.
    - `max_steps`: maximum number of steps (accepted + rejected) per member over the whole horizon.
    - `saves_per_step`: at most this many save times are written per step (a step is shortened so that no more
      fall inside it); a static tuning knob: each save slot costs about a sixth of a Tsit5 step, more slots allow
      longer steps when save times are dense. Default (`None`): the method's `default_saves_per_step` (1 for
      EnsembleTsit5, 8 for EnsembleRodas5, whose steps are long and costly).
    - `slots`: how many members are integrated at once (static). The others wait in a queue and take over the slot
      of a finished member, so a batch does not run at the pace of its slowest member and the working set stays
      in cache. Default: 120 on CPU, `N` (all members) on accelerators. Results do not depend on it. On CPU a lane
      count that is a multiple of 128 (e.g. `slots=256`, or `N = 1024` members without a queue) runs 8 lanes
      fewer (queue) or 8 padded members more (no queue): such widths measured 1.3-1.9x slower per step (cache-set
      conflicts between the step's rows of 1 KiB multiples). Derivatives
      do not use the queue: with `slots < N`, `jax.grad` differentiates solves with one slot per member, whose
      transposed loop has one iteration per step of the batch instead of ~N/slots times more (at N = 1000 on CPU a
      population gradient cost 12x the loss with a queue), run in chunks one after the other: on CPU chunks whose
      step touches about 1 MiB (~115 members of the 29-state SLE model with Rodas5, up to ~1,450 of a 9-state model
      with Tsit5), elsewhere up to 4096 members. Up to 4096 members the forward pass keeps every chunk's VJP; above
      that the backward pass solves each chunk again. Forward mode solves primal and tangents in the same chunks.
      (`benchmarks/gradient_cost.py`: population gradients cost 3.4-4.4x the loss on CPU.)
    - `adjoint`: `None` or `diffrax.RecursiveCheckpointAdjoint(checkpoints=...)` (default; reverse mode via a
      checkpointed while loop), or `diffrax.ForwardMode()` (forward mode: `jax.jvp`/`jax.jacfwd`). Derivatives are
      those of the computed solution (discretise-then-differentiate), except that the initial step size of each
      segment and the controller's step-size factor are held fixed, as diffrax's `PIDController` does (a step size
      still depends on the length of a shortened step before it); they agree with finite differences and with
      `ck.simulate`'s derivatives to the solver tolerance, also for a parameter that moves a breakpoint (tested).
    - `devices`: `None` (default: one device), `"all"`, an int (the first n devices) or a sequence of jax devices:
      the members are split evenly across them with `shard_map` (padded with copies of the last member), each device
      running its own queue (reverse-mode gradients of a sharded solve are computed on one device). On CPU, make
      several host devices with `XLA_FLAGS=--xla_force_host_platform_device_count=K`
      (set before importing jax) to use K cores.
    - `throw`: raise if any member fails. Default `False`: failures are reported per member in
      `Solution.result` (mask with `Solution.ok`); a failed member's unsaved outputs are NaN. Members whose traced
      parameters are non-finite or outside their declared bounds are not integrated (`RESULTS.invalid_parameters`);
      concrete out-of-bounds values raise `ValueError` at once.

    **Returns:** a [`carkinetics.Solution`][] whose fields have a leading batch axis of size `N` (as
    `jax.vmap(ck.simulate)` would give): `ts (N, T)`, `y_array (N, T, S)`, `obs_array (N, T, O)`, `result (N,)`,
    step counts `(N,)`.

    **Raises:** `ValueError` naming the argument for malformed input.

    **Example:**

    ```python
    import jax, jax.numpy as jnp
    import carkinetics as ck
    from carkinetics.models import OneCompartmentPK

    models = jax.vmap(lambda cl: OneCompartmentPK(cl=cl, v=46.5))(jnp.linspace(50.0, 200.0, 1000))
    regimen = ck.Bolus(0.0, 1800.0, "central")              # shared by all members
    sol = ck.simulate_ensemble(models, regimen, jnp.linspace(0.0, 2.0, 49))
    sol.observables.concentration.shape                    # (1000, 49), mg/L
    ```
    """
    regimen = check_model_and_regimen(model, regimen)
    if method is None:
        method = EnsembleTsit5()
    if not isinstance(method, AbstractEnsembleMethod):
        raise ValueError("`method` must be an ensemble method such as ck.EnsembleTsit5() or ck.EnsembleRodas5(), "
                         f"got {method!r}.")
    if isinstance(max_steps, bool) or not isinstance(max_steps, int) or max_steps < 1:
        raise ValueError(f"`max_steps` must be a positive int, got {max_steps!r}.")
    if saves_per_step is None:
        saves_per_step = method.default_saves_per_step
    if isinstance(saves_per_step, bool) or not isinstance(saves_per_step, int) or saves_per_step < 1:
        raise ValueError(f"`saves_per_step` must be a positive int or None, got {saves_per_step!r}.")
    if adjoint is None:
        adjoint = diffrax.RecursiveCheckpointAdjoint()
    if isinstance(adjoint, diffrax.ForwardMode):
        kind, checkpoints = "lax", None
    elif isinstance(adjoint, diffrax.RecursiveCheckpointAdjoint):
        kind, checkpoints = "checkpointed", adjoint.checkpoints
    else:
        raise ValueError("`adjoint` must be None, diffrax.RecursiveCheckpointAdjoint() or diffrax.ForwardMode(), "
                         f"got {adjoint!r}.")
    ts = validate_ts(ts)
    if t0 is not None and not isinstance(t0, jax.core.Tracer) and not isinstance(ts, jax.core.Tracer):
        if float(t0) > float(ts[0]):
            raise ValueError(f"`t0` = {t0} is later than the first save time ts[0] = {float(ts[0])}; save times "
                             "before the start of the simulation are invalid.")
    # Concrete values are checked here (ValueError); traced ones per member inside the solve (status
    # `invalid_parameters`, which `throw=True` turns into an error).
    model = validate_parameters(floats_to_arrays(model), check_traced=False)
    n = _batch_size(model)
    regimen = _batch_regimen(regimen, n)
    t0_arr = None if t0 is None else jnp.asarray(t0, dtype=ts.dtype)
    if slots is None:
        slots = n if jax.default_backend() != "cpu" else _CPU_SLOTS
    if isinstance(slots, bool) or not isinstance(slots, int) or slots < 1:
        raise ValueError(f"`slots` must be a positive int or None, got {slots!r}.")
    from .._sweep import _resolve_devices  # (the sweep module imports this one)

    devs = _resolve_devices(devices)
    mesh = None if devs is None or len(devs) == 1 else Mesh(np.array(devs), (_AXIS,))
    # Tolerances are traced, not static: changing them reuses the compiled solve (a work-precision sweep or a
    # tolerance schedule would otherwise recompile, ~10 s each for the SLE model with Rodas5).
    rtol_arr, atol_arr = tolerance_arrays(rtol, atol, ts.dtype)
    return _simulate_ensemble(model, regimen, ts, t0_arr, method, rtol_arr, atol_arr, max_steps,
                              saves_per_step, slots, kind, checkpoints, throw, mesh)


def _member_schedule(model, regimen, ts, t0):
    """One member's segments (the same schedule `ck.simulate` integrates): t0, ends (K,), jumps (K, S), rates, y0."""
    seg = build_segments(model, regimen, ts, t0)
    return seg.t0, seg.ends, seg.mult, seg.add, seg.rates, seg.y0


def _rms(x):
    # A safe square root: the derivative of sqrt at 0 is infinite and would turn masked gradients into NaN.
    ms = jnp.mean(x * x, axis=0)
    pos = ms > 0
    return jnp.where(pos, jnp.sqrt(jnp.where(pos, ms, 1.0)), 0.0)


def _solver(method, rtol, atol, max_steps, saves_per_step, slots, kind, checkpoints):
    """`core(model, regimen, ts, t0) -> Solution` on one device, routing queued solves through their custom rules."""

    def core(model, regimen, ts, t0):
        if kind == "checkpointed" and slots < _batch_size(model):
            # A member queue: reverse mode goes through `_queued_solve`'s custom VJP (no queue on the way back).
            return _queued_solve((model, regimen, ts, t0), method, rtol, atol, max_steps, saves_per_step, slots,
                                 checkpoints)
        if kind == "lax" and slots < _batch_size(model):
            # The same for forward mode: `_queued_solve_forward_mode`'s custom JVP solves without the queue.
            return _queued_solve_forward_mode((model, regimen, ts, t0), method=method, rtol=rtol, atol=atol,
                                              max_steps=max_steps, saves_per_step=saves_per_step, slots=slots)
        return _integrate(model, regimen, ts, t0, method, rtol, atol, max_steps, saves_per_step, slots, kind,
                          checkpoints)

    return core


@eqx.filter_jit
def _simulate_ensemble(model, regimen, ts, t0, method, rtol, atol, max_steps, saves_per_step, slots, kind,
                       checkpoints, throw, mesh) -> Solution:
    core = _solver(method, rtol, atol, max_steps, saves_per_step, slots, kind, checkpoints)
    if mesh is None:
        sol = core(model, regimen, ts, t0)
    elif kind == "checkpointed":
        # Reverse mode through `shard_map` trips equinox's checkpointed loop (closure-converted arguments carry
        # different shardings on the way back), so the backward pass runs on one device (`_sharded_solve`).
        sol = _sharded_solve((model, regimen, ts, t0), method, rtol, atol, max_steps, saves_per_step, slots,
                             checkpoints, mesh)
    else:
        sol = _shard(core, model, regimen, ts, t0, mesh)
    if throw:
        y = eqx.error_if(sol.y_array, ~jnp.all(sol.ok), "simulate_ensemble: at least one member failed (maximum "
                         "number of steps reached, step size underflow, or parameters outside their declared "
                         "bounds); use throw=False and Solution.result / Solution.ok.")
        sol = eqx.tree_at(lambda s: s.y_array, sol, y)
    return sol


def _shard(core, model, regimen, ts, t0, mesh) -> Solution:
    """`core(model, regimen, ts, t0)` with the members split over `mesh` (padded with copies of the last member)."""
    n = _batch_size(model)
    extra = -(-n // mesh.size) * mesh.size - n
    spec = PartitionSpec(_AXIS)
    t0_in = jnp.full((), jnp.nan, ts.dtype) if t0 is None else t0

    def local(model, regimen, ts, t0_in):
        return core(model, regimen, ts, None if t0 is None else t0_in)

    if hasattr(jax, "shard_map"):
        mapped = jax.shard_map(local, mesh=mesh, in_specs=(spec, spec, PartitionSpec(), PartitionSpec()),
                               out_specs=spec, check_vma=False)
    else:  # JAX < 0.6
        from jax.experimental.shard_map import shard_map

        mapped = shard_map(local, mesh=mesh, in_specs=(spec, spec, PartitionSpec(), PartitionSpec()),
                           out_specs=spec, check_rep=False)
    sol = mapped(_pad_members(model, extra), _pad_members(regimen, extra), ts, t0_in)
    return _first_members(sol, n)


def _pad_members(tree, extra):
    """`tree`'s member-first array leaves with `extra` copies of the last member appended."""
    return jax.tree_util.tree_map(
        lambda x: jnp.concatenate([x, jnp.repeat(x[-1:], extra, axis=0)]) if eqx.is_array(x) and extra else x, tree)


def _first_members(tree, n):
    return jax.tree_util.tree_map(lambda x: x[:n] if eqx.is_array(x) else x, tree)


@eqx.filter_custom_vjp
def _sharded_solve(inputs, method, rtol, atol, max_steps, saves_per_step, slots, checkpoints, mesh) -> Solution:
    """A solve sharded over `mesh` whose reverse mode runs on one device.

    Undifferentiated, the sharded solve (plain while loops); under reverse mode, the one-device solve without a
    queue and its VJP (`_solve_and_vjp_without_queue`): the same steps, so the same value and its gradient, without
    the member split (equinox's checkpointed loop cannot be transposed inside `shard_map` here).
    """
    model, regimen, ts, t0 = inputs
    core = _solver(method, rtol, atol, max_steps, saves_per_step, slots, "lax", None)
    return _shard(core, model, regimen, ts, t0, mesh)


@_sharded_solve.def_fwd
def _sharded_solve_fwd(perturbed, inputs, method, rtol, atol, max_steps, saves_per_step, slots, checkpoints, mesh):
    # Under reverse mode the forward pass is the one-device solve whose VJP the backward pass applies (as in
    # `_queued_solve`): the sharded solve would only be a second forward solve.
    del slots, mesh
    return _solve_and_vjp_without_queue(perturbed, inputs, method, rtol, atol, max_steps, saves_per_step, checkpoints)


@_sharded_solve.def_bwd
def _sharded_solve_bwd(residuals, grad_obj, perturbed, inputs, method, rtol, atol, max_steps, saves_per_step, slots,
                       checkpoints, mesh):
    del perturbed, inputs, method, rtol, atol, max_steps, saves_per_step, slots, checkpoints, mesh
    return _apply_vjp(residuals, grad_obj)


#: Most members a solve that reverse mode differentiates integrates at once (see `_solve_and_vjp_without_queue`):
#: one slot per member and no queue (one loop iteration per step of the batch: the cheapest loop to transpose).
_REVERSE_SLOTS = 4096
#: On CPU such a solve runs in chunks whose step touches about this many bytes (`method.member_floats`), so that a
#: chunk's working set stays in a core's L2 cache (1 MiB per core on the machine measured). SLE model (29 states,
#: Rodas5, ~9 KiB per member), population gradient at N = 1000 on one core (`benchmarks/gradient_cost.py`'s loss,
#: 1.1-1.2 s): 7.7 s with all 1,008 members at once, 5.1 / 4.4 / 5.1 s in chunks of 60 / 120 / 240 members.
#: Reference workload (9 states, Tsit5, ~0.7 KiB; loss 0.10-0.11 s): 0.33 s at once, 0.41 / 0.37 / 0.36 s in chunks
#: of 120 / 248 / 504.
_REVERSE_CHUNK_BYTES = 1 << 20
#: Up to this many members the backward pass applies the VJPs the forward pass kept (memory grows with N); above
#: it, it solves each chunk again (one forward solve more, memory of one chunk).
_REVERSE_KEEP_MAX = 4096


@eqx.filter_custom_vjp
def _queued_solve(inputs, method, rtol, atol, max_steps, saves_per_step, slots, checkpoints) -> Solution:
    """`_integrate` with a member queue (`slots < N`), whose reverse mode differentiates solves without a queue.

    A queue makes forward solves fast on CPU (small, cache-resident batches; no member waits for the slowest), but
    the loop that reverse mode transposes then has ~N / slots times more, smaller iterations: a population gradient
    cost 12x its loss at N = 1000 with 128 slots, against 4x with one slot per member. So an undifferentiated solve
    keeps the queue (a plain `lax` while loop), and under reverse mode the forward pass is
    `_solve_and_vjp_without_queue` (chunks of members, one slot each), whose VJPs (with their checkpoints) the
    backward pass applies; every member takes the same steps as in the queue, so value and gradient are those of the
    queued solve.
    """
    model, regimen, ts, t0 = inputs
    return _integrate(model, regimen, ts, t0, method, rtol, atol, max_steps, saves_per_step, slots, "lax", None)


@_queued_solve.def_fwd
def _queued_solve_fwd(perturbed, inputs, method, rtol, atol, max_steps, saves_per_step, slots, checkpoints):
    # Under differentiation the primal output comes from the solve that the backward pass differentiates (without
    # the queue; the same steps, so the same result): its VJP is the residual, and no second forward solve is needed.
    del slots
    return _solve_and_vjp_without_queue(perturbed, inputs, method, rtol, atol, max_steps, saves_per_step, checkpoints)


@_queued_solve.def_bwd
def _queued_solve_bwd(residuals, grad_obj, perturbed, inputs, method, rtol, atol, max_steps, saves_per_step, slots,
                      checkpoints):
    del perturbed, inputs, method, rtol, atol, max_steps, saves_per_step, slots, checkpoints
    return _apply_vjp(residuals, grad_obj)


def _chunking(n: int, method: AbstractEnsembleMethod, model, dtype) -> tuple[int, int]:
    """`(chunks, members per chunk)` of a differentiated solve without a queue (see `_solve_and_vjp_without_queue`).

    At most `_REVERSE_SLOTS` members per chunk; on CPU also at most a working set of `_REVERSE_CHUNK_BYTES`.
    """
    c = min(n, _REVERSE_SLOTS)
    if jax.default_backend() == "cpu":
        per_member = method.member_floats(len(model.state_names())) * jnp.dtype(dtype).itemsize
        c = max(1, min(c, _REVERSE_CHUNK_BYTES // per_member))
    k = -(-n // c)
    return k, -(-n // k)  # members per chunk as even as possible


def _split_members(tree, n, k, c):
    """Member-first `(N, ...)` leaves as `(k, c, ...)` chunks, padded with copies of the last member."""
    return jax.tree_util.tree_map(lambda x: _pad_members(x, k * c - n).reshape((k, c) + x.shape[1:]), tree)


def _repeat(tree, k):
    """Every leaf repeated along a new leading axis of size `k` (the same value for every chunk)."""
    return jax.tree_util.tree_map(lambda x: jnp.broadcast_to(x, (k,) + jnp.shape(x)), tree)


def _split_inputs(inputs, n, k, c):
    """`(model, regimen, ts, t0)` with the members split into `k` chunks of `c` and `ts`, `t0` repeated per chunk."""
    model, regimen, ts, t0 = inputs
    return _split_members(model, n, k, c), _split_members(regimen, n, k, c), _repeat(ts, k), _repeat(t0, k)


def _join_members(tree, n):
    """The inverse of the member split of `_split_inputs` on `(k, c, ...)` leaves: `(N, ...)`."""
    return jax.tree_util.tree_map(lambda x: x.reshape((x.shape[0] * x.shape[1],) + x.shape[2:])[:n], tree)


def _solve_and_vjp_without_queue(perturbed, inputs, method, rtol, atol, max_steps, saves_per_step, checkpoints):
    """A one-device solve without a member queue and its VJP: `(solution, (out, vjp_fn))`.

    Only the `perturbed` leaves of `inputs` are differentiated (the others' cotangents are never formed). The members
    are solved in chunks (`_chunking`), one slot per member, one chunk after the other (`lax.map`); up
    to `_REVERSE_KEEP_MAX` members every chunk's VJP (its checkpoints) is kept for the backward pass, above that the
    backward pass solves each chunk again (memory of one chunk, one forward solve more).
    """
    model, regimen, ts, t0 = inputs
    n = _batch_size(model)
    k, c = _chunking(n, method, model, ts.dtype)

    def solve(inputs, rtol, atol, kind="checkpointed"):
        model, regimen, ts, t0 = inputs
        return _integrate(model, regimen, ts, t0, method, rtol, atol, max_steps, saves_per_step, c, kind,
                          checkpoints)

    def vjp_of(inputs, rtol, atol):
        diff, nondiff = eqx.partition(inputs, perturbed)
        return eqx.filter_vjp(lambda d: solve(eqx.combine(d, nondiff), rtol, atol), diff)

    if k == 1:
        out, vjp_fn = vjp_of(inputs, rtol, atol)
        return out, (eqx.filter(out, eqx.is_inexact_array), vjp_fn)

    dynamic, static = eqx.partition(_split_inputs(inputs, n, k, c), eqx.is_array)
    xs = (dynamic, _repeat(rtol, k), _repeat(atol, k))

    def chunk_vjp(xs):
        dyn, rtol, atol = xs
        return vjp_of(eqx.combine(dyn, static), rtol, atol)

    if n <= _REVERSE_KEEP_MAX:
        vjp_static = []

        def forward(xs):
            out, vjp_fn = chunk_vjp(xs)
            # The VJP as a pytree: its arrays go through `lax.map`, its jaxpr (static) is kept aside.
            vjp_fn = eqx.filter_closure_convert(vjp_fn, eqx.filter(out, eqx.is_inexact_array))
            vjp_dynamic, vjp_st = eqx.partition(vjp_fn, eqx.is_array)
            vjp_static.append(vjp_st)
            return out, vjp_dynamic

        outs, residual = jax.lax.map(forward, xs)
        apply = functools.partial(_apply_kept_vjp, vjp_static=vjp_static[-1])
    else:
        def forward(xs):
            dyn, rtol, atol = xs
            return solve(eqx.combine(dyn, static), rtol, atol, kind="lax")

        outs, residual = jax.lax.map(forward, xs), xs
        apply = functools.partial(_apply_recomputed_vjp, chunk_vjp=chunk_vjp)
    out = _join_members(outs, n)
    vjp_fn = jax.tree_util.Partial(functools.partial(_chunked_vjp, k=k, c=c, n=n, apply=apply), residual)
    return out, (eqx.filter(out, eqx.is_inexact_array), vjp_fn)


def _apply_kept_vjp(xs, *, vjp_static):
    vjp_dynamic, ct = xs
    return eqx.combine(vjp_dynamic, vjp_static)(ct)[0]


def _apply_recomputed_vjp(xs, *, chunk_vjp):
    chunk_inputs, ct = xs
    return chunk_vjp(chunk_inputs)[1](ct)[0]


def _chunked_vjp(residual, ct, *, k, c, n, apply):
    """The VJP of a chunked solve (`_solve_and_vjp_without_queue`) applied to a member-first cotangent `ct`."""
    g_model, g_regimen, g_ts, g_t0 = jax.lax.map(apply, (residual, _split_members(ct, n, k, c)))
    total = lambda x: jnp.sum(x, axis=0)
    return ((_join_members(g_model, n), _join_members(g_regimen, n), jax.tree_util.tree_map(total, g_ts),
             jax.tree_util.tree_map(total, g_t0)),)


def _apply_vjp(residuals, grad_obj):
    diff_out, vjp_fn = residuals
    ct = jax.tree_util.tree_map(lambda o, g: None if o is None else (jnp.zeros_like(o) if g is None else g),
                                diff_out, grad_obj, is_leaf=lambda x: x is None)
    return vjp_fn(ct)[0]


@eqx.filter_custom_jvp
def _queued_solve_forward_mode(inputs, *, method, rtol, atol, max_steps, saves_per_step, slots) -> Solution:
    """`_integrate` with a member queue in forward mode (`adjoint=diffrax.ForwardMode()`).

    Tangents carried through the queue run its refill branch for every iteration (a batched `cond` becomes a
    `select`), so a `jax.jacfwd` cost 7x the solve at N = 1000 with 128 slots, against 3.6x with one slot per
    member. The custom JVP therefore solves primal and tangents together with `min(N, _REVERSE_SLOTS)` slots; plain
    forward solves keep the queue.
    """
    model, regimen, ts, t0 = inputs
    return _integrate(model, regimen, ts, t0, method, rtol, atol, max_steps, saves_per_step, slots, "lax", None)


@_queued_solve_forward_mode.def_jvp
def _queued_solve_forward_mode_jvp(primals, tangents, *, method, rtol, atol, max_steps, saves_per_step, slots):
    del slots
    (inputs,), (t_inputs,) = primals, tangents
    model, _, ts, _ = inputs
    n = _batch_size(model)
    k, c = _chunking(n, method, model, ts.dtype)

    def solve(inputs):
        model, regimen, ts, t0 = inputs
        return _integrate(model, regimen, ts, t0, method, rtol, atol, max_steps, saves_per_step, c, "lax", None)

    if k == 1:
        return eqx.filter_jvp(solve, (inputs,), (t_inputs,))
    dynamic, static = eqx.partition(_split_inputs(inputs, n, k, c), eqx.is_array)
    out, t_out = jax.lax.map(lambda xs: eqx.filter_jvp(solve, (eqx.combine(xs[0], static),), (xs[1],)),
                             (dynamic, _split_inputs(t_inputs, n, k, c)))
    return _join_members(out, n), _join_members(t_out, n)


def _integrate(model, regimen, ts, t0, method, rtol, atol, max_steps, saves_per_step, slots, kind,
               checkpoints) -> Solution:
    """`_integrate_lanes` with a CPU lane count that is not a multiple of `_CPU_LANE_ALIAS` (see there)."""
    n = _batch_size(model)
    w = min(slots, n)
    if jax.default_backend() != "cpu" or w % _CPU_LANE_ALIAS != 0:
        return _integrate_lanes(model, regimen, ts, t0, method, rtol, atol, max_steps, saves_per_step, w, kind,
                                checkpoints)
    if w < n:  # a queue: a few slots fewer (the same steps per member, the queue turns over a little more often)
        return _integrate_lanes(model, regimen, ts, t0, method, rtol, atol, max_steps, saves_per_step,
                                w - _CPU_LANE_PAD, kind, checkpoints)
    # One slot per member: a few extra members (copies of the last), sliced off again (no effect on gradients).
    sol = _integrate_lanes(_pad_members(model, _CPU_LANE_PAD), _pad_members(regimen, _CPU_LANE_PAD), ts, t0, method,
                           rtol, atol, max_steps, saves_per_step, n + _CPU_LANE_PAD, kind, checkpoints)
    return _first_members(sol, n)


def _integrate_lanes(model, regimen, ts, t0, method, rtol, atol, max_steps, saves_per_step, slots, kind,
                     checkpoints) -> Solution:
    n_states = len(model.state_names())
    n = _batch_size(model)
    w = min(slots, n)  # members integrated at once; the others wait in a queue and take over finished slots
    n_t = ts.shape[0]
    dtype = ts.dtype
    m_saves = saves_per_step
    q = method.error_order

    # Every member's schedule (the same segments `ck.simulate` integrates), member-first: (N,), (N, K, ...).
    t_start, ends, mult, add, rates, y0_all = eqx.filter_vmap(
        lambda m, r: _member_schedule(m, r, ts, t0), in_axes=(eqx.if_array(0), eqx.if_array(0))
    )(model, regimen)
    n_seg = ends.shape[1]
    # The parameters stay separate leaves (not packed into one matrix, which would compile fewer kernels): symbolic
    # zero tangents/cotangents of the parameters that are not differentiated are what keeps forward and reverse mode
    # cheap, and finite where a partial derivative is infinite (0 * inf).
    params_all, static = eqx.partition(model, eqx.is_array)

    vf = eqx.filter_vmap(lambda m, t, y: m.vector_field_flat(t, y, None), in_axes=(eqx.if_array(0), 0, 1),
                         out_axes=1)

    def field(params, rate):
        m = eqx.combine(params, static)
        return lambda t, y: vf(m, t, y) + rate

    def seg_gather(arr, ids, k):  # arr (N, K, ...) -> entry k of the members `ids`, batch-last
        out = arr[ids, k]
        return out.T if out.ndim == 2 else out

    def initial_dt(f, t, y, f0):
        scale = atol + rtol * jnp.abs(y)
        d0 = _rms(y / scale)
        d1 = _rms(f0 / scale)
        h0 = jnp.where((d0 < 1e-5) | (d1 < 1e-5), 1e-6, 0.01 * d0 / jnp.where(d1 > 0, d1, 1.0))
        f1 = f(t + h0, y + h0[None, :] * f0)
        d2 = _rms((f1 - f0) / scale) / h0
        dmax = jnp.maximum(d1, d2)
        h1 = jnp.where(dmax <= 1e-15, jnp.maximum(1e-6, h0 * 1e-3),
                       (0.01 / jnp.where(dmax > 0, dmax, 1.0)) ** (1.0 / q))
        h = jnp.minimum(100 * h0, h1)
        # The initial step size is not differentiated (as in diffrax's PIDController), which spares reverse mode
        # these two evaluations of the model (SLE model, Rodas5: gradient compile 19.7 -> 16.2 s). Later step sizes
        # are: holding them fixed as well gave wrong derivatives with respect to breakpoint times (a test
        # with Stein 2019's `tmax` showed 500x the finite-difference value).
        return jax.lax.stop_gradient(jnp.where(jnp.isfinite(h) & (h > 0), h, 1e-6).astype(dtype))

    def start_segment(params, rate, t, y):
        f = field(params, rate)
        f0 = f(t, y)
        return method.init(f, t, y, f0), initial_dt(f, t, y, f0)

    def select(mask, new, old):  # per-slot choice between two pytrees of (..., W) arrays
        return jax.tree_util.tree_map(lambda a, b: jnp.where(mask.reshape((1,) * (a.ndim - 1) + (w,)), a, b)
                                      if a.ndim >= 1 and a.shape[-1] == w else a, new, old)

    def load(ids):
        """The state of members `ids` at their start: (params, y0, t, y, k, seg_end, rate, last, dense shape)."""
        params = jax.tree_util.tree_map(lambda x: x[ids], params_all)
        y_init = y0_all[ids].T
        t = t_start[ids]
        rate = seg_gather(rates, ids, jnp.zeros_like(ids))
        return params, y_init, t, rate, ends[ids, 0]

    zero_i = jnp.zeros((w,), jnp.int32)
    ids0 = jnp.arange(w)
    # Members with traced parameters outside their declared bounds are not integrated (status invalid_parameters).
    invalid_all = eqx.filter_vmap(traced_parameters_invalid)(model)
    fail_init = jnp.where(invalid_all, _INVALID, _OK).astype(jnp.int32)
    params0, y00, t00, rate0, seg_end0 = load(ids0)
    # Every slot (re)starts its step size and method cache at the top of the next iteration (`restart`): the model's
    # vector field is traced once for all restarts (first segment, jumps, refills), which keeps compile time down.
    cache0 = jax.tree_util.tree_map(lambda sd: jnp.zeros(sd.shape, sd.dtype), jax.eval_shape(
        lambda: method.init(field(params0, rate0), t00, y00, y00)))
    dt0 = jnp.ones((w,), dtype)
    # One scratch slot (index T) receives the writes of members that save nothing this iteration (out-of-bounds
    # "drop" writes would be transposed into NaN-filled gathers in reverse mode).
    out0 = jnp.zeros((n, n_t + 1, n_states), dtype)
    zero_n = jnp.zeros((n,), jnp.int32)
    stats0 = (zero_n, zero_n, zero_n, zero_n)  # per member: saves written, failure code, accepted, rejected
    # Without a queue (every member has its own slot) the members' data never change: they stay out of the loop
    # carry, which keeps reverse mode's checkpoints small (and `stats` is filled after the loop).
    queued = w < n
    member0 = (ids0, params0, y00)
    slot0 = (member0 if queued else None, t00, y00, dt0, zero_i, seg_end0, zero_i, cache0, rate0,
             jnp.zeros((w,), bool), fail_init[ids0], zero_i, zero_i, jnp.ones((w,), bool))
    init = (slot0, jnp.asarray(w, jnp.int32), stats0 if queued else None, out0)

    def finished_of(done, fail, idx):
        return (fail != _OK) | (done & (idx >= n_t))

    def record(stats, ids, idx, fail, nacc, nrej):
        return tuple(g.at[ids].set(v) for g, v in zip(stats, (idx, fail, nacc, nrej)))

    def cond_fun(c):
        slot, queue, _, _ = c
        _, _, _, _, _, _, idx, _, _, done, fail, _, _, _ = slot
        return jnp.any(~finished_of(done, fail, idx)) | (queue < n)

    def body_fun(c):
        slot, queue, stats, out = c
        member, t, y, dt, k, seg_end, idx, cache, rate, done, fail, nacc, nrej, restart = slot
        ids, params, y_init = member if queued else member0
        live = ~done & (fail == _OK)
        flush = done & (fail == _OK)  # finished members write their remaining save times (all at their end time)

        def do_restart(cache, dt):
            c0, d0 = start_segment(params, rate, t, jnp.where((restart & live)[None, :], y, y_init))
            return select(restart, c0, cache), jnp.where(restart, d0, dt)

        cache, dt = jax.lax.cond(jnp.any(restart), do_restart, lambda *a: a, cache, dt)
        f = field(params, rate)
        # A step ends no later than the segment end and contains at most `saves_per_step` save times.
        nxt = idx + m_saves
        bound = jnp.minimum(seg_end, jnp.where(nxt < n_t, ts[jnp.minimum(nxt, n_t - 1)], jnp.inf))
        remaining = jnp.maximum(bound - t, 0.0)
        truncated = dt >= remaining
        dt_eff = jnp.where(truncated, remaining, dt)
        zero = dt_eff <= 0
        # Slots that do not step this iteration compute on safe values (no NaN can leak into gradients).
        h = jnp.where(live & ~zero, dt_eff, 1e-3).astype(dtype)
        ys = jnp.where(live[None, :], y, y_init)
        y1, y_err, dense, cache1 = method.step(f, t, ys, h, cache)
        scale = atol + rtol * jnp.maximum(jnp.abs(ys), jnp.abs(y1))
        err = _rms(y_err / scale)
        finite = jnp.all(jnp.isfinite(y1), axis=0) & jnp.isfinite(err)
        err = jnp.where(finite, err, jnp.inf)
        accept = live & (zero | (err <= 1.0))
        reject = live & ~accept
        t_new = jnp.where(truncated, bound, t + dt_eff)
        t_old = t

        # Advance accepted slots. A zero-length step (a member at the end of its segment) moves nothing: its y1
        # was computed with the placeholder step size and is discarded.
        moved = accept & ~zero
        t = jnp.where(moved, t_new, t)
        y = jnp.where(moved[None, :], y1, y)
        cache = select(moved, cache1, cache)

        # Step-size control (per slot).
        safe_err = jnp.where(err > 0, err, 1.0)
        factor = jnp.where(err > 0, 0.9 * safe_err ** (-1.0 / q), 10.0)
        factor = jnp.clip(jnp.where(jnp.isfinite(factor), factor, 0.2), 0.2, 10.0)
        # The controller's factor is not differentiated (as in diffrax's PIDController): step sizes keep their
        # dependence on the lengths of shortened steps (segment ends, save times) but not on the error estimate.
        factor = jax.lax.stop_gradient(factor)
        proposal = dt_eff * factor
        dt_new = jnp.where(reject | (moved & ~truncated) | (moved & truncated & (factor < 1.0)), proposal, dt)
        dt_new = jnp.where(moved & truncated & (factor >= 1.0), jnp.maximum(dt, proposal), dt_new)

        # The end of a segment: apply the next jump, switch the infusion input, restart the step size.
        at_end = accept & (t >= seg_end)
        advance = at_end & (k < n_seg - 1)
        done = done | (at_end & (k == n_seg - 1))

        def next_segment(k, y, rate, seg_end):
            k = k + advance.astype(jnp.int32)
            y = jnp.where(advance[None, :], seg_gather(mult, ids, k) * y + seg_gather(add, ids, k), y)
            rate = jnp.where(advance[None, :], seg_gather(rates, ids, k), rate)
            seg_end = jnp.where(advance, ends[ids, k], seg_end)
            return k, y, rate, seg_end

        k, y, rate, seg_end = jax.lax.cond(jnp.any(advance), next_segment, lambda *a: a, k, y, rate, seg_end)
        restart = advance

        nacc = nacc + moved.astype(jnp.int32)
        nrej = nrej + reject.astype(jnp.int32)
        too_many = live & ~done & (nacc + nrej >= max_steps)
        tiny = live & ~done & reject & (dt_new < 10 * jnp.finfo(dtype).eps * jnp.maximum(jnp.abs(t), 1.0))
        fail = jnp.where(too_many, _MAX_STEPS, jnp.where(tiny, _DT_MIN, fail))

        # Saves: the save times inside the accepted step [t_old, t_new) from the dense output; finished members
        # write their state.
        # All `saves_per_step` slots in one interpolation and one scatter (`(W, M)` rows of `out`).
        s_j = idx[:, None] + jnp.arange(m_saves)[None, :]  # (W, M)
        in_range = s_j < n_t
        ts_j = ts[jnp.minimum(s_j, n_t - 1)]
        want = (moved[:, None] & in_range & (ts_j < t_new[:, None])) | (flush[:, None] & in_range)
        theta = jnp.clip((ts_j - t_old[:, None]) / h[:, None], 0.0, 1.0)
        vals = jax.vmap(lambda th: method.interpolate(dense, ys, y1, th), in_axes=1, out_axes=1)(theta)  # (S, M, W)
        vals = jnp.where(flush[None, None, :], y[:, None, :], vals)
        out = out.at[ids[:, None], jnp.where(want, s_j, n_t)].set(jnp.transpose(vals, (2, 1, 0)))
        idx = idx + jnp.sum(want, axis=1, dtype=jnp.int32)
        slot = (member, t, y, dt_new, k, seg_end, idx, cache, rate, done, fail, nacc, nrej, restart)
        if not queued:
            return slot, queue, stats, out

        # Finished members hand their slot to the next members in the queue.
        free = finished_of(done, fail, idx)
        new_ids = queue + jnp.cumsum(free.astype(jnp.int32)) - 1
        take = free & (new_ids < n)

        def refill(slot, queue, stats):
            _, t, y, dt, k, seg_end, idx, cache, rate, done, fail, nacc, nrej, restart = slot
            stats = record(stats, ids, idx, fail, nacc, nrej)
            new = jnp.where(take, new_ids, ids)
            p1, yi1, t1, r1, e1 = load(new)
            fresh = (t1, yi1, dt, zero_i, e1, zero_i, cache, r1, jnp.zeros((w,), bool), fail_init[new], zero_i,
                     zero_i, jnp.ones((w,), bool))
            # Parameters are member-first (W, ...); everything else batch-last (..., W).
            p_sel = jax.tree_util.tree_map(lambda a, b: jnp.where(take.reshape((w,) + (1,) * (a.ndim - 1)), a, b),
                                           p1, params)
            member = (new, p_sel, select(take, yi1, y_init))
            return (member,) + select(take, fresh, slot[1:]), queue + jnp.sum(take, dtype=jnp.int32), stats

        # Refills are batched (a refill costs about one step for all slots): wait until an eighth of the slots
        # is free, or until every slot is.
        n_free = jnp.sum(free, dtype=jnp.int32)
        go = jnp.any(take) & ((n_free >= max(1, w // 8)) | (n_free == w))
        slot, queue, stats = jax.lax.cond(go, refill, lambda *a: a, slot, queue, stats)
        return slot, queue, stats, out

    loop_bound = -(-n // w) * (max_steps + n_seg + 2 * n_t + 4)
    final = eqxi.while_loop(cond_fun, body_fun, init, max_steps=loop_bound, buffers=lambda c: c[-1], kind=kind,
                            checkpoints=checkpoints)
    slot, _, stats, out = final
    member, _, _, _, _, _, idx, _, _, _, fail, nacc, nrej, _ = slot
    if queued:
        idx, fail, nacc, nrej = record(stats, member[0], idx, fail, nacc, nrej)
    # Save times a failed member never reached are NaN (masked after the loop: a NaN-initialised buffer would
    # leak NaN into reverse-mode gradients).
    out = out[:, :n_t]
    unsaved = jnp.arange(n_t)[None, :] >= idx[:, None]
    out = jnp.where(unsaved[:, :, None], jnp.nan, out)
    result = jax.vmap(lambda fl: RESULTS.where(
        fl == _MAX_STEPS, RESULTS.max_steps_reached, RESULTS.where(
            fl == _DT_MIN, RESULTS.dt_min_reached, RESULTS.where(
                fl == _INVALID, RESULTS.invalid_parameters, RESULTS.successful))))(fail)
    obs = eqx.filter_vmap(lambda m, yy: jax.vmap(m.observe_flat)(ts, yy), in_axes=(eqx.if_array(0), 0))(model, out)
    ts_b = jnp.broadcast_to(ts, (n, n_t))
    return Solution(ts_b, out, obs, result, nacc + nrej, nacc, nrej, type(model))
