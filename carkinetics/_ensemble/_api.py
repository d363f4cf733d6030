"""`ensemble_solve`: integrate a batch of models of one class, each with its own steps and dose events, with an
ensemble method (the batched engine behind `carkinetics.simulate_ensemble`)."""

from __future__ import annotations

from typing import Any

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from .._core._dosing import Regimen
from .._core._schedule import batch_size, broadcast_regimen
from .._core._solution import Solution
from ._autodiff import _solver
from ._method import AbstractEnsembleMethod
from ._sharding import _AXIS, _shard, _sharded_solve, resolve_devices

#: Default number of slots on CPU: members integrated at once (the rest wait in a queue). Small batches keep the
#: working set in cache and let the queue keep every slot busy; the cost per member-step is flat from about 96 to 240
#: slots except at multiples of 128 (see `_CPU_LANE_ALIAS`), and 120 is at the fast end of that range
#: (`benchmarks/ensemble_vs_peers.py`).
_CPU_SLOTS = 120


def ensemble_solve(
    model,
    regimen: Regimen,
    ts,
    t0,
    method: AbstractEnsembleMethod,
    rtol,
    atol,
    max_steps: int,
    adjoint: diffrax.AbstractAdjoint,
    devices: Any,
    throw: bool,
) -> Solution:
    """Integrate a validated batch (`model` leaves carry a leading axis `N`) with an ensemble method.

    Called by `carkinetics.simulate_ensemble` (which validates the arguments and documents them); `regimen` is
    shared or batched along `N`, `rtol`/`atol` are scalar arrays (traced values reuse the compiled solve).
    """
    if isinstance(adjoint, diffrax.ForwardMode):
        kind, checkpoints = "lax", None
    elif isinstance(adjoint, diffrax.RecursiveCheckpointAdjoint):
        kind, checkpoints = "checkpointed", adjoint.checkpoints
    else:
        raise ValueError(
            "With an ensemble method, `adjoint` must be None, diffrax.RecursiveCheckpointAdjoint() or "
            f"diffrax.ForwardMode(), got {adjoint!r}."
        )
    n = batch_size(model)
    regimen = broadcast_regimen(regimen, n)
    slots = method.slots
    if slots is None:
        slots = n if jax.default_backend() != "cpu" else _CPU_SLOTS
    saves_per_step = method.saves_per_step
    if saves_per_step is None:
        saves_per_step = method.default_saves_per_step
    devs = resolve_devices(devices)
    mesh = None if devs is None or len(devs) == 1 else Mesh(np.array(devs), (_AXIS,))
    return _simulate_ensemble(
        model, regimen, ts, t0, method, rtol, atol, max_steps, saves_per_step, slots, kind, checkpoints, throw, mesh
    )


@eqx.filter_jit
def _simulate_ensemble(
    model, regimen, ts, t0, method, rtol, atol, max_steps, saves_per_step, slots, kind, checkpoints, throw, mesh
) -> Solution:
    core = _solver(method, rtol, atol, max_steps, saves_per_step, slots, kind, checkpoints)
    if mesh is None:
        sol = core(model, regimen, ts, t0)
    elif kind == "checkpointed":
        # Reverse mode through `shard_map` trips equinox's checkpointed loop (closure-converted arguments carry
        # different shardings on the way back), so the backward pass runs on one device (`_sharded_solve`).
        sol = _sharded_solve(
            (model, regimen, ts, t0), method, rtol, atol, max_steps, saves_per_step, slots, checkpoints, mesh
        )
    else:
        sol = _shard(core, model, regimen, ts, t0, mesh)
    if throw:
        y = eqx.error_if(
            sol.y_array,
            ~jnp.all(sol.ok),
            "simulate_ensemble: at least one member failed (maximum "
            "number of steps reached, step size underflow, or parameters outside their declared "
            "bounds); use throw=False and inspect Solution.result / Solution.ok per member.",
        )
        sol = eqx.tree_at(lambda s: s.y_array, sol, y)
    return sol
