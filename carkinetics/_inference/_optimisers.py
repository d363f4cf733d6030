"""The optimisers of `fit`: multistart Adam then L-BFGS, per start under `vmap` (vmap engine) or all starts in one
batched ensemble solve per iteration with a batched L-BFGS (ensemble engine)."""

from __future__ import annotations

from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import optax

from .._core._custom_types import Array
from ._problem import CalibrationProblem


def _safe_value_and_grad(fn, z):
    val, g = jax.value_and_grad(fn)(z)
    ok = jnp.isfinite(val) & jnp.all(jnp.isfinite(g))
    return val, jnp.where(ok, g, 0.0), ok


@eqx.filter_jit
def _run_multistart(
    problem: CalibrationProblem, z_starts, adam_steps: int, lbfgs_steps: int, learning_rate, mask, linesearch: str
):
    fn = problem.loss

    def one(z0):
        sched = optax.cosine_decay_schedule(learning_rate, max(adam_steps, 1), alpha=0.05)
        adam = optax.chain(optax.clip_by_global_norm(5.0), optax.adam(sched))

        def adam_step(carry, _):
            z, state = carry
            val, g, ok = _safe_value_and_grad(fn, z)
            upd, state = adam.update(g * mask, state, z)
            z_new = optax.apply_updates(z, upd)
            # optax types parameters and updates as pytrees (`Params`, `Updates`); here they are arrays.
            return (jnp.where(ok, z_new, z), state), val  # pyright: ignore[reportArgumentType]

        hist_a = jnp.zeros((0,), z0.dtype)
        z = z0
        if adam_steps > 0:  # static: no Adam program is traced for an L-BFGS-only fit
            (z, _), hist_a = jax.lax.scan(adam_step, (z0, adam.init(z0)), None, length=adam_steps)
        if linesearch == "zoom":
            lbfgs = optax.lbfgs()
        else:  # Armijo backtracking: cheaper to compile than the zoom (strong Wolfe) search, robust enough here
            lbfgs = optax.lbfgs(
                linesearch=optax.scale_by_backtracking_linesearch(max_backtracking_steps=25, store_grad=True)
            )
        vg = optax.value_and_grad_from_state(fn)

        def lbfgs_step(carry, _):
            z, state = carry
            val, g = vg(z, state=state)  # `g`, `upd` and `z_new` are arrays (optax types them as pytrees)
            ok = jnp.isfinite(val) & jnp.all(jnp.isfinite(g))  # pyright: ignore[reportArgumentType]
            g = jnp.where(ok, g, 0.0) * mask  # pyright: ignore[reportArgumentType]
            upd, new_state = lbfgs.update(g, state, z, value=val, grad=g, value_fn=fn)
            z_new = optax.apply_updates(z, upd * mask)
            good = ok & jnp.all(jnp.isfinite(z_new))  # pyright: ignore[reportArgumentType]
            z = jnp.where(good, z_new, z)  # pyright: ignore[reportArgumentType]
            state = jax.tree_util.tree_map(lambda a, b: jnp.where(good, a, b), new_state, state)
            return (z, state), val

        hist_l = jnp.zeros((0,), z0.dtype)
        if lbfgs_steps > 0:
            (z, _), hist_l = jax.lax.scan(lbfgs_step, (z, lbfgs.init(z)), None, length=lbfgs_steps)
        val, g, _ = _safe_value_and_grad(fn, z)
        return z, val, jnp.linalg.norm(g * mask), jnp.concatenate([hist_a, hist_l, val[None]])

    return jax.vmap(one)(z_starts)


#: Batched L-BFGS of the ensemble engine: memory, Armijo slope fraction, step-halving trials per line search, and
#: the relative directional derivative below which a start cannot decrease the loss measurably (frozen).
_LBFGS_MEMORY = 10
_ARMIJO_C1 = 1e-4
_MAX_LS = 15
_GD_TINY = 1e-12


def _lbfgs_direction(g, s_mem, y_mem, rho):
    """L-BFGS two-loop recursion for one start; memory newest first, `rho == 0` marks an empty entry.

    Without memory the direction is `-g` scaled to length at most 1 (optax's first-step heuristic); with memory
    the initial inverse Hessian is `s'y / y'y` of the newest pair."""

    def first(q, mem):
        sv, yv, r = mem
        a = r * jnp.dot(sv, q)
        return q - a * yv, a

    q, alphas = jax.lax.scan(first, g, (s_mem, y_mem, rho))
    yy = jnp.dot(y_mem[0], y_mem[0])
    gnorm = jnp.linalg.norm(g)
    has = (rho[0] > 0) & (yy > 0)
    gamma = jnp.where(
        has, 1.0 / jnp.where(has, rho[0] * yy, 1.0), jnp.minimum(1.0, 1.0 / jnp.where(gnorm > 0, gnorm, 1.0))
    )

    def second(r, mem):
        sv, yv, rr, a = mem
        return r + sv * (a - rr * jnp.dot(yv, r)), None

    r, _ = jax.lax.scan(second, gamma * q, (s_mem, y_mem, rho, alphas), reverse=True)
    return -r


class _EnsembleOpt(eqx.Module):
    """Carry of the batched multistart optimiser (a state machine with ONE batched loss+gradient per iteration)."""

    phase: Array  # 0 Adam, 1 L-BFGS start, 2 line-search trial, 3 final evaluation, 4 done
    k_adam: Array
    k_lbfgs: Array
    n_trial: Array
    z: Array  # (S, n) current points
    adam_state: Any
    f: Array  # (S,) loss and (S, n) gradient at z (L-BFGS phase)
    g: Array
    d: Array  # (S, n) search directions, (S,) directional derivatives g'd and trial step sizes
    gd: Array
    alpha: Array
    accepted: Array  # (S,) line search done (accepted or frozen)
    frozen: Array  # (S,) cannot decrease further (no descent direction, or line search failed without memory)
    f_new: Array
    g_new: Array
    s_mem: Array  # (S, m, n)
    y_mem: Array
    rho: Array  # (S, m)
    hist: Array  # (S, adam_steps + lbfgs_steps + 1)
    gnorm: Array


@eqx.filter_jit
def _run_multistart_ensemble(
    problem: CalibrationProblem, z_starts, adam_steps: int, lbfgs_steps: int, learning_rate, mask, slots: int | None
):
    """The ensemble engine of `fit`: every loss and gradient of all starts comes from one `simulate_ensemble` call.

    Adam (per-start clipping, vmapped optax update) then a batched L-BFGS whose Armijo backtracking line search
    tries a step for all starts at once (loss and gradient per trial, so an accepted step needs no further
    evaluation); starts that have accepted wait while the others halve their step (at most `_MAX_LS` trials). A
    start whose line search fails drops its L-BFGS memory; failing again without memory, it is frozen (its loss
    cannot be decreased measurably). Everything runs in one `while_loop` with a single call site of the batched
    loss and gradient (one compiled copy of the reverse-mode ensemble solve).
    """
    n_s, n_p = z_starts.shape
    dtype = z_starts.dtype
    m = _LBFGS_MEMORY
    n_hist = adam_steps + lbfgs_steps + 1
    cols = jnp.arange(n_hist)

    # Reverse mode transposes the solver loop: without a member queue (one slot per start) it has one iteration per
    # step of the batch instead of one per step of each queue round (benchmarks/gradient_cost.py measures it).
    slots_ = n_s if slots is None else slots

    def summed(z):
        vals = problem.ensemble_losses(z, slots=slots_)
        return jnp.sum(vals), vals

    def value_and_grad(z):  # per-start losses and gradients (starts are independent members of one ensemble)
        (_, vals), g = jax.value_and_grad(summed, has_aux=True)(z)
        ok = jnp.isfinite(vals) & jnp.all(jnp.isfinite(g), axis=1)
        return vals, jnp.where(ok[:, None], g, 0.0) * mask[None, :], ok

    sched = optax.cosine_decay_schedule(learning_rate, max(adam_steps, 1), alpha=0.05)
    adam = optax.chain(optax.clip_by_global_norm(5.0), optax.adam(sched))

    def record(hist, col, vals):  # write `vals` at column `col` and every later one (early stop fills the tail)
        return jnp.where(cols[None, :] >= col, vals[:, None], hist)

    def new_direction(c: _EnsembleOpt) -> _EnsembleOpt:
        d = jax.vmap(_lbfgs_direction)(c.g, c.s_mem, c.y_mem, c.rho) * mask[None, :]
        gd = jnp.sum(c.g * d, axis=1)
        bad = ~(gd < 0) | ~jnp.all(jnp.isfinite(d), axis=1)
        d = jnp.where(bad[:, None], 0.0, d)
        frozen = c.frozen | bad | (gd > -_GD_TINY * jnp.maximum(1.0, jnp.abs(c.f)))
        hist = record(c.hist, adam_steps + c.k_lbfgs, c.f)
        phase = jnp.where(jnp.all(frozen), 3, 2).astype(jnp.int32)
        return eqx.tree_at(
            lambda x: (x.d, x.gd, x.frozen, x.accepted, x.alpha, x.n_trial, x.f_new, x.g_new, x.hist, x.phase),
            c,
            (
                d,
                jnp.where(bad, 0.0, gd),
                frozen,
                frozen,
                jnp.ones((n_s,), dtype),
                jnp.zeros((), jnp.int32),
                c.f,
                c.g,
                hist,
                phase,
            ),
        )

    def adam_branch(c: _EnsembleOpt, f, g, ok) -> _EnsembleOpt:
        upd, st = jax.vmap(adam.update)(g, c.adam_state, c.z)  # an array (optax types it as a pytree)
        z = jnp.where(ok[:, None], c.z + upd, c.z)  # pyright: ignore[reportOperatorIssue]
        k = c.k_adam + 1
        phase = jnp.where(k < adam_steps, 0, 1 if lbfgs_steps > 0 else 3).astype(jnp.int32)
        return eqx.tree_at(
            lambda x: (x.z, x.adam_state, x.k_adam, x.hist, x.phase), c, (z, st, k, record(c.hist, c.k_adam, f), phase)
        )

    def lbfgs_start_branch(c: _EnsembleOpt, f, g, ok) -> _EnsembleOpt:
        c = eqx.tree_at(lambda x: (x.f, x.g), c, (f, g))
        return new_direction(c)

    def trial_branch(c: _EnsembleOpt, f, g, ok) -> _EnsembleOpt:
        armijo = ok & jnp.isfinite(f) & (f <= c.f + _ARMIJO_C1 * c.alpha * c.gd)
        newly = ~c.accepted & armijo
        f_new = jnp.where(newly, f, c.f_new)
        g_new = jnp.where(newly[:, None], g, c.g_new)
        accepted = c.accepted | armijo
        n_trial = c.n_trial + 1
        failed = ~accepted & (n_trial >= _MAX_LS)
        alpha = jnp.where(accepted, c.alpha, 0.5 * c.alpha)
        c = eqx.tree_at(
            lambda x: (x.f_new, x.g_new, x.accepted, x.n_trial, x.alpha), c, (f_new, g_new, accepted, n_trial, alpha)
        )

        def finish(c: _EnsembleOpt) -> _EnsembleOpt:
            moved = c.accepted & ~c.frozen
            z = jnp.where(moved[:, None], c.z + c.alpha[:, None] * c.d, c.z)
            sv, yv = z - c.z, c.g_new - c.g
            sy = jnp.sum(sv * yv, axis=1)
            pair = moved & (sy > 1e-10 * jnp.linalg.norm(sv, axis=1) * jnp.linalg.norm(yv, axis=1))
            push = lambda mem, new: jnp.where(
                pair.reshape((n_s,) + (1,) * (mem.ndim - 1)), jnp.concatenate([new[:, None], mem[:, :-1]], axis=1), mem
            )
            s_mem, y_mem = push(c.s_mem, sv), push(c.y_mem, yv)
            rho = push(c.rho, jnp.where(pair, 1.0 / jnp.where(pair, sy, 1.0), 0.0))
            had_memory = jnp.any(c.rho > 0, axis=1)
            reset = failed & had_memory
            frozen = c.frozen | (failed & ~had_memory)
            rho = jnp.where(reset[:, None], 0.0, rho)
            s_mem = jnp.where(reset[:, None, None], 0.0, s_mem)
            y_mem = jnp.where(reset[:, None, None], 0.0, y_mem)
            f0 = jnp.where(moved, c.f_new, c.f)
            g0 = jnp.where(moved[:, None], c.g_new, c.g)
            k = c.k_lbfgs + 1
            c = eqx.tree_at(
                lambda x: (x.z, x.f, x.g, x.s_mem, x.y_mem, x.rho, x.frozen, x.k_lbfgs),
                c,
                (z, f0, g0, s_mem, y_mem, rho, frozen, k),
            )
            return jax.lax.cond(
                k < lbfgs_steps,
                new_direction,
                lambda c: eqx.tree_at(lambda x: x.phase, c, jnp.asarray(3, jnp.int32)),
                c,
            )

        return jax.lax.cond(jnp.all(accepted | failed), finish, lambda c: c, c)

    def final_branch(c: _EnsembleOpt, f, g, ok) -> _EnsembleOpt:
        return eqx.tree_at(
            lambda x: (x.f, x.gnorm, x.hist, x.phase),
            c,
            (f, jnp.linalg.norm(g, axis=1), record(c.hist, n_hist - 1, f), jnp.asarray(4, jnp.int32)),
        )

    def body(c: _EnsembleOpt) -> _EnsembleOpt:
        z_eval = jnp.where(c.phase == 2, c.z + c.alpha[:, None] * c.d, c.z)
        f, g, ok = value_and_grad(z_eval)
        return jax.lax.switch(
            jnp.clip(c.phase, 0, 3), [adam_branch, lbfgs_start_branch, trial_branch, final_branch], c, f, g, ok
        )

    zeros_s = jnp.zeros((n_s,), dtype)
    zeros_sn = jnp.zeros((n_s, n_p), dtype)
    false_s = jnp.zeros((n_s,), bool)
    init = _EnsembleOpt(
        phase=jnp.asarray(0 if adam_steps > 0 else 1, jnp.int32),
        k_adam=jnp.asarray(0, jnp.int32),
        k_lbfgs=jnp.asarray(0, jnp.int32),
        n_trial=jnp.asarray(0, jnp.int32),
        z=z_starts,
        adam_state=jax.vmap(adam.init)(z_starts),
        f=zeros_s,
        g=zeros_sn,
        d=zeros_sn,
        gd=zeros_s,
        alpha=zeros_s + 1,
        accepted=false_s,
        frozen=false_s,
        f_new=zeros_s,
        g_new=zeros_sn,
        s_mem=jnp.zeros((n_s, m, n_p), dtype),
        y_mem=jnp.zeros((n_s, m, n_p), dtype),
        rho=jnp.zeros((n_s, m), dtype),
        hist=jnp.zeros((n_s, n_hist), dtype),
        gnorm=zeros_s,
    )
    out = jax.lax.while_loop(lambda c: c.phase < 4, body, init)
    return out.z, out.f, out.gnorm, out.hist
