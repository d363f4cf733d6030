"""The batched integration loop: `W` slots advance together in one while loop, batch-last, each member with its own
time, step size, segment and save position; finished members hand their slot to the next member of a queue.

Design. Every iteration takes one step of the chosen method in every live slot (states `(S, W)`). A member's
horizon is split at its own dose events, infusion starts/ends and model breakpoints exactly as in the per-member
engine (`carkinetics._core._schedule`); a step never crosses the end of the member's current segment, and on
reaching it the member applies its next jump (`y <- mult * y + add`), switches its infusion input and restarts its
step size. Save times are written from the method's dense output, at most `saves_per_step` per step (a step is
shortened so that no more fall inside it), so the loop body has no inner loop and the same body serves forward mode
(`lax` while loop) and reverse mode (checkpointed while loop, `equinox.internal.while_loop`).
"""

from __future__ import annotations

import equinox as eqx
import equinox.internal as eqxi
import jax
import jax.numpy as jnp

from .._core._parameters import traced_parameters_invalid
from .._core._schedule import batch_size, build_segments
from .._core._solution import RESULTS, Solution

_OK, _MAX_STEPS, _DT_MIN, _INVALID = 0, 1, 2, 3
#: On CPU a slot count (lane count) that is a multiple of this many members makes every `(S, W)` float64 row a
#: multiple of 1 KiB, and the step's many same-shaped arrays then compete for the same cache sets (steps run
#: markedly slower at such lane counts). `_integrate` therefore moves such lane counts by `_CPU_LANE_PAD` (fewer
#: slots with a queue, padding members without one).
_CPU_LANE_ALIAS = 128
_CPU_LANE_PAD = 8


def _member_schedule(model, regimen, ts, t0):
    """One member's segments (the same schedule `ck.simulate` integrates): t0, ends (K,), jumps (K, S), rates, y0."""
    seg = build_segments(model, regimen, ts, t0)
    return seg.t0, seg.ends, seg.mult, seg.add, seg.rates, seg.y0


def _rms(x):
    # A safe square root: the derivative of sqrt at 0 is infinite and would turn masked gradients into NaN.
    ms = jnp.mean(x * x, axis=0)
    pos = ms > 0
    return jnp.where(pos, jnp.sqrt(jnp.where(pos, ms, 1.0)), 0.0)


def _pad_members(tree, extra):
    """`tree`'s member-first array leaves with `extra` copies of the last member appended."""
    return jax.tree_util.tree_map(
        lambda x: jnp.concatenate([x, jnp.repeat(x[-1:], extra, axis=0)]) if eqx.is_array(x) and extra else x, tree
    )


def _first_members(tree, n):
    return jax.tree_util.tree_map(lambda x: x[:n] if eqx.is_array(x) else x, tree)


def _integrate(
    model, regimen, ts, t0, method, rtol, atol, max_steps, saves_per_step, slots, kind, checkpoints
) -> Solution:
    """`_integrate_lanes` with a CPU lane count that is not a multiple of `_CPU_LANE_ALIAS` (see there)."""
    n = batch_size(model)
    w = min(slots, n)
    if jax.default_backend() != "cpu" or w % _CPU_LANE_ALIAS != 0:
        return _integrate_lanes(
            model, regimen, ts, t0, method, rtol, atol, max_steps, saves_per_step, w, kind, checkpoints
        )
    if w < n:  # a queue: a few slots fewer (the same steps per member, the queue turns over a little more often)
        return _integrate_lanes(
            model, regimen, ts, t0, method, rtol, atol, max_steps, saves_per_step, w - _CPU_LANE_PAD, kind, checkpoints
        )
    # One slot per member: a few extra members (copies of the last), sliced off again (no effect on gradients).
    sol = _integrate_lanes(
        _pad_members(model, _CPU_LANE_PAD),
        _pad_members(regimen, _CPU_LANE_PAD),
        ts,
        t0,
        method,
        rtol,
        atol,
        max_steps,
        saves_per_step,
        n + _CPU_LANE_PAD,
        kind,
        checkpoints,
    )
    return _first_members(sol, n)


def _integrate_lanes(
    model, regimen, ts, t0, method, rtol, atol, max_steps, saves_per_step, slots, kind, checkpoints
) -> Solution:
    n_states = len(model.state_names())
    n = batch_size(model)
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

    vf = eqx.filter_vmap(lambda m, t, y: m.vector_field_flat(t, y, None), in_axes=(eqx.if_array(0), 0, 1), out_axes=1)

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
        h1 = jnp.where(
            dmax <= 1e-15, jnp.maximum(1e-6, h0 * 1e-3), (0.01 / jnp.where(dmax > 0, dmax, 1.0)) ** (1.0 / q)
        )
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
        return jax.tree_util.tree_map(
            lambda a, b: (
                jnp.where(mask.reshape((1,) * (a.ndim - 1) + (w,)), a, b) if a.ndim >= 1 and a.shape[-1] == w else a
            ),
            new,
            old,
        )

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
    cache0 = jax.tree_util.tree_map(
        lambda sd: jnp.zeros(sd.shape, sd.dtype),
        jax.eval_shape(lambda: method.init(field(params0, rate0), t00, y00, y00)),
    )
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
    slot0 = (
        member0 if queued else None,
        t00,
        y00,
        dt0,
        zero_i,
        seg_end0,
        zero_i,
        cache0,
        rate0,
        jnp.zeros((w,), bool),
        fail_init[ids0],
        zero_i,
        zero_i,
        jnp.ones((w,), bool),
    )
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
        # No proposed step is shorter than the clock's resolution at t (it could not move the clock).
        dt = jnp.maximum(dt, 2 * jnp.finfo(dtype).eps * jnp.maximum(jnp.abs(t), 1.0))
        truncated = dt >= remaining
        # The step as the times represent it (as diffrax steps from t0 to t1): integrating over exactly the interval
        # the clock advances keeps zero-order inputs exact at any time resolution. A step too short to move the
        # clock is a step-size underflow.
        t_new = jnp.where(truncated, bound, t + dt)
        dt_eff = jnp.where(truncated, remaining, t_new - t)
        zero = dt_eff <= 0
        stalled = live & ~truncated & zero
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
        tiny = live & ~done & ((reject & (dt_new < 10 * jnp.finfo(dtype).eps * jnp.maximum(jnp.abs(t), 1.0))) | stalled)
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
            _, _, _, dt, _, _, idx, cache, _, _, fail, nacc, nrej, _ = slot
            stats = record(stats, ids, idx, fail, nacc, nrej)
            new = jnp.where(take, new_ids, ids)
            p1, yi1, t1, r1, e1 = load(new)
            fresh = (
                t1,
                yi1,
                dt,
                zero_i,
                e1,
                zero_i,
                cache,
                r1,
                jnp.zeros((w,), bool),
                fail_init[new],
                zero_i,
                zero_i,
                jnp.ones((w,), bool),
            )
            # Parameters are member-first (W, ...); everything else batch-last (..., W).
            p_sel = jax.tree_util.tree_map(
                lambda a, b: jnp.where(take.reshape((w,) + (1,) * (a.ndim - 1)), a, b), p1, params
            )
            member = (new, p_sel, select(take, yi1, y_init))
            return (member,) + select(take, fresh, slot[1:]), queue + jnp.sum(take, dtype=jnp.int32), stats

        # Refills are batched (a refill costs about one step for all slots): wait until an eighth of the slots
        # is free, or until every slot is.
        n_free = jnp.sum(free, dtype=jnp.int32)
        go = jnp.any(take) & ((n_free >= max(1, w // 8)) | (n_free == w))
        slot, queue, stats = jax.lax.cond(go, refill, lambda *a: a, slot, queue, stats)
        return slot, queue, stats, out

    loop_bound = -(-n // w) * (max_steps + n_seg + 2 * n_t + 4)
    final = eqxi.while_loop(
        cond_fun, body_fun, init, max_steps=loop_bound, buffers=lambda c: c[-1], kind=kind, checkpoints=checkpoints
    )
    slot, _, stats, out = final
    member, _, _, _, _, _, idx, _, _, _, fail, nacc, nrej, _ = slot
    if member is not None:  # a queue: the member data travel with the slots
        idx, fail, nacc, nrej = record(stats, member[0], idx, fail, nacc, nrej)
    # Save times a failed member never reached are NaN (masked after the loop: a NaN-initialised buffer would
    # leak NaN into reverse-mode gradients).
    out = out[:, :n_t]
    unsaved = jnp.arange(n_t)[None, :] >= idx[:, None]
    out = jnp.where(unsaved[:, :, None], jnp.nan, out)
    result = jax.vmap(
        lambda fl: RESULTS.where(
            fl == _MAX_STEPS,
            RESULTS.max_steps_reached,  # pyright: ignore[reportArgumentType]
            RESULTS.where(  # pyright: ignore[reportArgumentType]
                fl == _DT_MIN,
                RESULTS.dt_min_reached,  # pyright: ignore[reportArgumentType]
                RESULTS.where(  # pyright: ignore[reportArgumentType]
                    fl == _INVALID,
                    RESULTS.invalid_parameters,
                    RESULTS.successful,  # pyright: ignore[reportArgumentType]
                ),
            ),
        )
    )(fail)  # pyright: ignore[reportArgumentType]
    obs = eqx.filter_vmap(lambda m, yy: jax.vmap(m.observe_flat)(ts, yy), in_axes=(eqx.if_array(0), 0))(model, out)
    ts_b = jnp.broadcast_to(ts, (n, n_t))
    return Solution(ts_b, out, obs, result, nacc + nrej, nacc, nrej, type(model))
