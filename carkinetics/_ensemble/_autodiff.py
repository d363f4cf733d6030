"""Derivatives of batched solves: routing of queued solves through custom VJP/JVP rules that differentiate solves
without the member queue, in cache-sized chunks of members.

Reverse mode is cheapest through a loop with one iteration per step of the whole batch, so a solve with a member
queue is differentiated as the same members solved with one slot each (the same steps, hence the same value); on
CPU those solves run in chunks whose step touches about `_REVERSE_CHUNK_BYTES`, one after the other (`lax.map`).
"""

from __future__ import annotations

import functools

import equinox as eqx
import jax
import jax.numpy as jnp

from .._core._schedule import batch_size
from .._core._solution import Solution
from ._loop import _integrate, _pad_members
from ._method import AbstractEnsembleMethod


def _solver(method, rtol, atol, max_steps, saves_per_step, slots, kind, checkpoints):
    """`core(model, regimen, ts, t0) -> Solution` on one device, routing queued solves through their custom rules."""

    def core(model, regimen, ts, t0):
        if kind == "checkpointed" and slots < batch_size(model):
            # A member queue: reverse mode goes through `_queued_solve`'s custom VJP (no queue on the way back).
            return _queued_solve(
                (model, regimen, ts, t0), method, rtol, atol, max_steps, saves_per_step, slots, checkpoints
            )
        if kind == "lax" and slots < batch_size(model):
            # The same for forward mode: `_queued_solve_forward_mode`'s custom JVP solves without the queue.
            return _queued_solve_forward_mode(
                (model, regimen, ts, t0),
                method=method,
                rtol=rtol,
                atol=atol,
                max_steps=max_steps,
                saves_per_step=saves_per_step,
                slots=slots,
            )
        return _integrate(
            model, regimen, ts, t0, method, rtol, atol, max_steps, saves_per_step, slots, kind, checkpoints
        )

    return core


#: Most members a solve that reverse mode differentiates integrates at once (see `_solve_and_vjp_without_queue`):
#: one slot per member and no queue (one loop iteration per step of the batch: the cheapest loop to transpose).
_REVERSE_SLOTS = 4096
#: On CPU such a solve runs in chunks whose step touches about this many bytes (`method.member_floats`), so that a
#: chunk's working set stays in a core's L2 cache (a transposed step touches several times the forward step's
#: memory; `benchmarks/gradient_cost.py` measures the chunk sizes this rule gives).
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
def _queued_solve_bwd(
    residuals, grad_obj, perturbed, inputs, method, rtol, atol, max_steps, saves_per_step, slots, checkpoints
):
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
    model, _, ts, _ = inputs
    n = batch_size(model)
    k, c = _chunking(n, method, model, ts.dtype)

    def solve(inputs, rtol, atol, kind="checkpointed"):
        model, regimen, ts, t0 = inputs
        return _integrate(model, regimen, ts, t0, method, rtol, atol, max_steps, saves_per_step, c, kind, checkpoints)

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

        def forward_keep(xs):
            out, vjp_fn = chunk_vjp(xs)
            # The VJP as a pytree: its arrays go through `lax.map`, its jaxpr (static) is kept aside.
            vjp_fn = eqx.filter_closure_convert(vjp_fn, eqx.filter(out, eqx.is_inexact_array))
            vjp_dynamic, vjp_st = eqx.partition(vjp_fn, eqx.is_array)
            vjp_static.append(vjp_st)
            return out, vjp_dynamic

        outs, residual = jax.lax.map(forward_keep, xs)
        apply = functools.partial(_apply_kept_vjp, vjp_static=vjp_static[-1])
    else:

        def forward_recompute(xs):
            dyn, rtol, atol = xs
            return solve(eqx.combine(dyn, static), rtol, atol, kind="lax")

        outs, residual = jax.lax.map(forward_recompute, xs), xs
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
    return (
        (
            _join_members(g_model, n),
            _join_members(g_regimen, n),
            jax.tree_util.tree_map(total, g_ts),
            jax.tree_util.tree_map(total, g_t0),
        ),
    )


def _apply_vjp(residuals, grad_obj):
    diff_out, vjp_fn = residuals
    ct = jax.tree_util.tree_map(
        lambda o, g: None if o is None else (jnp.zeros_like(o) if g is None else g),
        diff_out,
        grad_obj,
        is_leaf=lambda x: x is None,
    )
    return vjp_fn(ct)[0]


@eqx.filter_custom_jvp
def _queued_solve_forward_mode(inputs, *, method, rtol, atol, max_steps, saves_per_step, slots) -> Solution:
    """`_integrate` with a member queue in forward mode (`adjoint=diffrax.ForwardMode()`).

    Tangents carried through the queue run its refill branch for every iteration (a batched `cond` becomes a
    `select`), which makes a `jax.jacfwd` through the queue about twice as expensive as through one slot per member.
    The custom JVP therefore solves primal and tangents together with `min(N, _REVERSE_SLOTS)` slots; plain
    forward solves keep the queue.
    """
    model, regimen, ts, t0 = inputs
    return _integrate(model, regimen, ts, t0, method, rtol, atol, max_steps, saves_per_step, slots, "lax", None)


@_queued_solve_forward_mode.def_jvp
def _queued_solve_forward_mode_jvp(primals, tangents, *, method, rtol, atol, max_steps, saves_per_step, slots):
    del slots
    (inputs,), (t_inputs,) = primals, tangents
    model, _, ts, _ = inputs
    n = batch_size(model)
    k, c = _chunking(n, method, model, ts.dtype)

    def solve(inputs):
        model, regimen, ts, t0 = inputs
        return _integrate(model, regimen, ts, t0, method, rtol, atol, max_steps, saves_per_step, c, "lax", None)

    if k == 1:
        return eqx.filter_jvp(solve, (inputs,), (t_inputs,))
    dynamic, static = eqx.partition(_split_inputs(inputs, n, k, c), eqx.is_array)
    out, t_out = jax.lax.map(
        lambda xs: eqx.filter_jvp(solve, (eqx.combine(xs[0], static),), (xs[1],)),
        (dynamic, _split_inputs(t_inputs, n, k, c)),
    )
    return _join_members(out, n), _join_members(t_out, n)
