"""The per-member engine: one model integrated by a diffrax solver over the dose schedule (`lax.scan` over segments).

All event times (bolus and kill times, infusion starts and ends, declared model breakpoints) cut the horizon into
segments; at the start of segment `k` its jump `y <- mult * y + add` is applied and inside it the zero-order input is
constant, so the adaptive controller never steps across a discontinuity. Each segment saves at `clip(ts, s_k, e_k)`
and a mask keeps the save times that belong to it; saved values are right-continuous (a save time equal to a dose
time reports the post-dose state). After a failure the remaining segments do no work.
"""

from __future__ import annotations

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp

from ._dosing import Regimen
from ._model import AbstractKineticModel
from ._schedule import build_segments
from ._solution import RESULTS, Solution


@eqx.filter_jit
def diffrax_solve(
    model: AbstractKineticModel,
    regimen: Regimen,
    ts,
    t0,
    solver: diffrax.AbstractSolver,
    rtol,
    atol,
    max_steps: int,
    adjoint: diffrax.AbstractAdjoint,
    throw: bool,
    invalid,
) -> Solution:
    """Integrate one validated member (see `carkinetics.simulate`); `max_steps` bounds the steps over the horizon.

    `invalid` is `None` or a traced boolean: the member's traced parameters are out of bounds, so it is reported as
    `RESULTS.invalid_parameters` and not integrated.
    """
    n_states = len(model.state_names())
    dtype = ts.dtype
    t0, starts, ends, mult, add, rates, y0 = build_segments(model, regimen, ts, t0)
    n_seg = starts.shape[0]
    is_last = jnp.arange(n_seg) == n_seg - 1

    # diffrax types `t` as RealScalarLike; inside a solve it is always an array.
    term = diffrax.ODETerm(lambda t, y, rate: model.vector_field_flat(t, y, None) + rate)  # pyright: ignore[reportArgumentType]
    controller = diffrax.PIDController(rtol=rtol, atol=atol)

    def segment(carry, seg):
        y, out, result, nsteps, nacc, nrej = carry
        s, e, m, a, rate, last = seg
        failed = result != RESULTS.successful
        e = jnp.where(failed, s, e)  # after a failure, do no more work
        y = m * y + a
        sol = diffrax.diffeqsolve(
            term,
            solver,
            s,
            e,
            None,
            y,
            args=rate,
            saveat=diffrax.SaveAt(ts=jnp.clip(ts, s, e), t1=True),
            stepsize_controller=controller,
            max_steps=max_steps,
            adjoint=adjoint,
            throw=False,
        )
        mask = (ts >= s) & ((ts < e) | (last & (ts <= e)))
        # Only save times the solver reached: after a failure diffrax fills the others with inf, or (the last one)
        # with the state where it stopped; those stay NaN, as in the batched engine.
        sol_ts, sol_ys = sol.ts, sol.ys
        assert sol_ts is not None and sol_ys is not None  # SaveAt(ts=..., t1=True) saves both
        mask = mask & (sol_ts[:-1] == jnp.clip(ts, s, e))
        out = jnp.where(mask[:, None], sol_ys[:-1], out)
        st = sol.stats
        i32 = jnp.int32
        nsteps = nsteps + st["num_steps"].astype(i32)
        # `max_steps` counts the steps of the whole horizon, as in the batched engine.
        seg_result = RESULTS.where(nsteps > max_steps, RESULTS.max_steps_reached, RESULTS.promote(sol.result))  # pyright: ignore[reportArgumentType]
        result = RESULTS.where(failed, result, seg_result)
        return (
            sol_ys[-1],
            out,
            result,
            nsteps,
            nacc + st["num_accepted_steps"].astype(i32),
            nrej + st["num_rejected_steps"].astype(i32),
        ), None

    zero = jnp.array(0, dtype=jnp.int32)
    result0 = (
        RESULTS.successful
        if invalid is None
        else RESULTS.where(invalid, RESULTS.invalid_parameters, RESULTS.successful)  # pyright: ignore[reportArgumentType]
    )
    init = (y0, jnp.full((ts.shape[0], n_states), jnp.nan, dtype), result0, zero, zero, zero)
    (_, out, result, nsteps, nacc, nrej), _ = jax.lax.scan(segment, init, (starts, ends, mult, add, rates, is_last))
    # Save times not reached by a failed member stay NaN; its observables follow.
    obs = jax.vmap(model.observe_flat)(ts, out)
    if throw:
        out = result.error_if(out, result != RESULTS.successful)
    return Solution(ts, out, obs, result, nsteps, nacc, nrej, type(model))
