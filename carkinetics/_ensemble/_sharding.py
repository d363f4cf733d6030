"""Batched solves split over several devices (`shard_map` over a 1-D mesh of members).

Each device runs its own member queue; there is no cross-device synchronisation inside the adaptive loops. Reverse
mode of a sharded solve runs on one device (see `_sharded_solve`).
"""

from __future__ import annotations

from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec

from .._core._schedule import batch_size
from .._core._solution import Solution
from ._autodiff import _apply_vjp, _solve_and_vjp_without_queue, _solver
from ._loop import _first_members, _pad_members


def resolve_devices(devices: Any) -> list | None:
    """`None`, `"all"`, a count or a sequence of jax devices as a list of devices (`None` for the default device).

    Raises `ValueError` naming the argument for anything else, a count outside `1 .. len(jax.devices())` or an
    empty sequence.
    """
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
    if isinstance(devices, bool) or not hasattr(devices, "__iter__"):
        raise ValueError(f"`devices` must be None, 'all', an int or a sequence of jax devices, got {devices!r}.")
    devices = list(devices)
    if not devices:
        raise ValueError("`devices` must not be an empty sequence.")
    return devices


_AXIS = "members"


def _shard(core, model, regimen, ts, t0, mesh) -> Solution:
    """`core(model, regimen, ts, t0)` with the members split over `mesh` (padded with copies of the last member)."""
    n = batch_size(model)
    extra = -(-n // mesh.size) * mesh.size - n
    spec = PartitionSpec(_AXIS)
    t0_in = jnp.full((), jnp.nan, ts.dtype) if t0 is None else t0

    def local(model, regimen, ts, t0_in):
        return core(model, regimen, ts, None if t0 is None else t0_in)

    if hasattr(jax, "shard_map"):
        mapped = jax.shard_map(
            local, mesh=mesh, in_specs=(spec, spec, PartitionSpec(), PartitionSpec()), out_specs=spec, check_vma=False
        )
    else:  # JAX < 0.6
        from jax.experimental.shard_map import shard_map

        mapped = shard_map(
            local, mesh=mesh, in_specs=(spec, spec, PartitionSpec(), PartitionSpec()), out_specs=spec, check_rep=False
        )
    sol = mapped(_pad_members(model, extra), _pad_members(regimen, extra), ts, t0_in)
    return _first_members(sol, n)


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
def _sharded_solve_bwd(
    residuals, grad_obj, perturbed, inputs, method, rtol, atol, max_steps, saves_per_step, slots, checkpoints, mesh
):
    del perturbed, inputs, method, rtol, atol, max_steps, saves_per_step, slots, checkpoints, mesh
    return _apply_vjp(residuals, grad_obj)
