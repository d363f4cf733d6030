"""The integration schedule shared by every engine: save-time validation and the dose/breakpoint segments.

Both `simulate` (diffrax, one member) and `simulate_ensemble` (batched) integrate the same piecewise problem:
the horizon is cut at every dose event, infusion start/end and declared model breakpoint (a day, or a duration
after the first dose of the model's `breakpoint_origin` state); at the start of each segment a jump
`y <- mult * y + add` is applied, and within it the zero-order input `rate` is constant.
"""

from __future__ import annotations

import warnings
from typing import Any, NamedTuple

import equinox as eqx
import jax
import jax.core
import jax.numpy as jnp
import numpy as np

from ._custom_types import Array, Float
from ._dosing import AbstractDose, Infusion, Regimen, resolve_regimen
from ._model import AbstractKineticModel


class Segments(NamedTuple):
    """One member's integration schedule (K = number of events + 1).

    - `t0`: start time; `starts`, `ends` (K,): segment bounds, sorted, clipped to `[t0, ts[-1]]`.
    - `mult`, `add` (K, S): the jump applied at the start of each segment (identity for the first).
    - `rates` (K, S): constant infusion input within each segment (state units per day).
    - `y0` (S,): the model's initial state.
    """

    t0: Float[Array, ""]
    starts: Float[Array, " K"]
    ends: Float[Array, " K"]
    mult: Float[Array, "K S"]
    add: Float[Array, "K S"]
    rates: Float[Array, "K S"]
    y0: Float[Array, " S"]


def check_model_and_regimen(model: Any, regimen: Any) -> Regimen:
    """Entry checks shared by the engines: `model` is a kinetic model; `regimen` (a Regimen, one dose or None)
    becomes a Regimen whose target states all exist in the model (`ValueError` naming the valid states)."""
    if not isinstance(model, AbstractKineticModel):
        raise ValueError(f"`model` must be a carkinetics AbstractKineticModel, got {type(model).__name__}.")
    if regimen is None:
        regimen = Regimen()
    elif isinstance(regimen, AbstractDose):
        regimen = Regimen((regimen,))
    elif not isinstance(regimen, Regimen):
        raise ValueError(f"`regimen` must be a Regimen, a dose or None, got {type(regimen).__name__}.")
    names = model.state_names()
    origin = type(model).breakpoint_origin
    if origin is not None and origin not in names:
        raise ValueError(
            f"`{type(model).__name__}.breakpoint_origin` = {origin!r} is not a state of the model; "
            f"states are {list(names)}."
        )
    unknown = sorted(regimen.state_names() - set(names))
    if unknown:
        raise ValueError(
            f"Unknown state(s) {unknown} in `regimen`; valid states of {type(model).__name__} are {list(names)}."
        )
    return regimen


def tolerance_arrays(rtol: Any, atol: Any, dtype) -> tuple[Array, Array]:
    """`rtol` and `atol` as scalar arrays of `dtype`, the form the engines trace them in (new values reuse the
    compiled solve).

    Each may be a Python number, a NumPy scalar or a 0-d array. Concrete values must be finite and positive and
    `rtol` below 1 (a relative error of 100 % or more controls nothing); `ValueError` names the argument otherwise.
    An `rtol` below the machine epsilon of `dtype` is accepted with a warning: the error estimate then sits in the
    round-off, so smooth problems still integrate but stiff or long ones may exhaust `max_steps`. Traced values (e.g. a
    tolerance that is an argument of a jitted function) are checked when the solve runs (`eqx.error_if`).
    """
    eps = float(jnp.finfo(dtype).eps)
    out = []
    for name, tol in (("rtol", rtol), ("atol", atol)):
        if isinstance(tol, jax.core.Tracer):
            arr = jnp.asarray(tol)
            if arr.shape != () or not jnp.issubdtype(arr.dtype, jnp.floating):
                raise ValueError(
                    f"`{name}` must be a positive finite number or a floating-point scalar array, got "
                    f"a traced array of shape {arr.shape} and dtype {arr.dtype}."
                )
            arr = arr.astype(dtype)
            bad = ~(jnp.isfinite(arr) & (arr > 0))
            if name == "rtol":
                bad = bad | (arr >= 1)
            out.append(
                eqx.error_if(
                    arr, bad, f"`{name}` must be a positive finite number" + (" below 1." if name == "rtol" else ".")
                )
            )
            continue
        value = tol
        if (
            isinstance(tol, (np.ndarray, jax.Array))
            and np.shape(tol) == ()
            and np.issubdtype(np.asarray(tol).dtype, np.floating)
        ):
            value = float(tol)
        if isinstance(value, bool) or not (isinstance(value, (int, float)) and np.isfinite(value) and value > 0):
            raise ValueError(f"`{name}` must be a positive finite number, got {tol!r}.")
        if name == "rtol" and value >= 1:
            raise ValueError(
                f"`rtol` = {value:g} must be below 1: it is a relative error (1e-6 asks for six significant digits)."
            )
        if name == "rtol" and value < eps:
            warnings.warn(
                f"`rtol` = {value:g} is below the resolution of {jnp.dtype(dtype).name} numbers (machine "
                f"epsilon {eps:.1e}): the error estimate is dominated by round-off. Use a larger rtol or "
                "float64 (enable `jax_enable_x64`).",
                UserWarning,
                stacklevel=4,
            )
        out.append(jnp.asarray(float(value), dtype))
    return out[0], out[1]


def warn_unresolved_infusions(regimen: Regimen, dtype) -> None:
    """Warn about infusions shorter than the time resolution of `dtype` at their start time: such an infusion
    is delivered as a bolus of its amount at its start (its amount is kept exactly). Traced regimens are not
    checked (they are delivered the same way)."""
    for d in regimen.doses:
        if not isinstance(d, Infusion):
            continue
        starts = d.starts()
        if isinstance(starts, jax.core.Tracer) or isinstance(d.duration, jax.core.Tracer):
            continue
        s0, dur = np.broadcast_arrays(np.asarray(starts, dtype=np.float64), np.asarray(d.duration, dtype=np.float64))
        s = np.asarray(s0, dtype=dtype)
        e = np.asarray(s0 + dur, dtype=dtype)
        bad = e <= s
        if np.any(bad):
            warnings.warn(
                f"An infusion into {d.state!r} of {float(dur[bad].flat[0]) * 86400:g} s starting on day "
                f"{float(s[bad].flat[0]):g} is shorter than the time resolution of "
                f"{np.dtype(dtype).name} at that time; its amount is delivered as a bolus at its start. "
                "Use float64 (jax_enable_x64) or a bolus to silence this.",
                UserWarning,
                stacklevel=3,
            )


def validate_ts(ts: Any) -> Array:
    """Check save times: 1-D, non-empty, finite, non-decreasing (`ValueError` or, if traced, `eqx.error_if`)."""
    if isinstance(ts, jax.core.Tracer):
        ts = jnp.asarray(ts)
        if ts.ndim != 1 or ts.shape[0] == 0:
            raise ValueError(f"`ts` must be a non-empty 1-D array of save times (days), got shape {ts.shape}.")
        bad = ~jnp.all(jnp.isfinite(ts)) | jnp.any(jnp.diff(ts) < 0)
        return eqx.error_if(ts, bad, "`ts` must be finite and sorted in non-decreasing order.")
    arr = np.asarray(ts, dtype=float)
    if arr.ndim != 1 or arr.shape[0] == 0:
        raise ValueError(f"`ts` must be a non-empty 1-D array of save times (days), got shape {arr.shape}.")
    if not np.all(np.isfinite(arr)):
        raise ValueError(
            f"`ts` must be finite, got non-finite values at positions {np.flatnonzero(~np.isfinite(arr)).tolist()}."
        )
    if np.any(np.diff(arr) < 0):
        i = int(np.flatnonzero(np.diff(arr) < 0)[0])
        raise ValueError(
            f"`ts` must be sorted in non-decreasing order; ts[{i}] = {arr[i]} > ts[{i + 1}] = {arr[i + 1]}."
        )
    return jnp.asarray(arr)


def build_segments(model: Any, regimen: Regimen, ts: Float[Array, " T"], t0: Float[Array, ""] | None) -> Segments:
    """The integration schedule of `model` under `regimen` up to `ts[-1]` (traceable; shapes depend only on the
    regimen's structure, so new dose times or amounts never recompile).

    `t0=None` starts at the earlier of `ts[0]` and the first event. Events after `ts[-1]` do nothing (they must not
    alter the value saved at the horizon); stable sorting keeps same-time events in regimen order.
    """
    names = model.state_names()
    n_states = len(names)
    rr = resolve_regimen(regimen, names)
    dtype = ts.dtype
    t_end = ts[-1]
    first_jump = jnp.min(rr.jump_times, initial=jnp.inf)
    first_inf = jnp.min(rr.inf_start, initial=jnp.inf)
    if t0 is None:
        t0 = jnp.minimum(jnp.minimum(ts[0], first_jump), first_inf)
    else:
        bad = (t0 > ts[0]) | (first_jump < t0) | (first_inf < t0)
        t0 = eqx.error_if(t0, bad, "`t0` is later than ts[0] or than a dose event.")
    t0 = jnp.asarray(t0, dtype=dtype)
    model_bps = model.breakpoints().astype(dtype)
    origin = type(model).breakpoint_origin
    if origin is not None and model_bps.shape[0]:
        # durations after the first dose of the origin state (inf, i.e. beyond the horizon, if it is never dosed)
        k = names.index(origin)
        first_dose = jnp.min(
            jnp.concatenate(
                [
                    jnp.where(rr.jump_add[:, k] > 0, rr.jump_times, jnp.inf),
                    jnp.where(rr.inf_amount[:, k] > 0, rr.inf_start, jnp.inf),
                ]
            ).astype(dtype),
            initial=jnp.inf,
        )
        model_bps = model_bps + first_dose
    n_inf = rr.inf_start.shape[0]
    n_other = n_inf + model_bps.shape[0]
    # Infusion windows at the working precision: the rate delivers the dose's amount over the window as it is
    # represented, and a window that rounds to zero length (shorter than the time resolution at its time) delivers
    # its amount as a bolus at its start (`infusion_windows` warns about those at entry).
    inf_start, inf_end = rr.inf_start.astype(dtype), rr.inf_end.astype(dtype)
    length = inf_end - inf_start
    amount = rr.inf_amount.astype(dtype)
    resolved = (length > 0)[:, None]
    inf_rate = jnp.where(resolved, amount / jnp.where(resolved, length[:, None], 1.0), 0.0)
    inf_bolus = jnp.where(resolved, 0.0, amount)
    bps = jnp.concatenate([rr.jump_times.astype(dtype), inf_start, inf_end, model_bps])
    mult = jnp.concatenate([rr.jump_mult, jnp.ones((n_inf + n_other, n_states))]).astype(dtype)
    add = jnp.concatenate([rr.jump_add.astype(dtype), inf_bolus, jnp.zeros((n_other, n_states), dtype)])
    late = bps > t_end
    mult = jnp.where(late[:, None], 1.0, mult)
    add = jnp.where(late[:, None], 0.0, add)
    order = jnp.argsort(bps, stable=True)
    bps = jnp.clip(bps[order], t0, t_end)
    starts = jnp.concatenate([t0[None], bps])
    ends = jnp.concatenate([bps, t_end[None]])
    mult = jnp.concatenate([jnp.ones((1, n_states), dtype), mult[order]])
    add = jnp.concatenate([jnp.zeros((1, n_states), dtype), add[order]])
    mid = 0.5 * (starts + ends)
    active = (inf_start[None, :] <= mid[:, None]) & (mid[:, None] < inf_end[None, :])  # (K, I)
    rates = (active.astype(dtype) @ inf_rate).astype(dtype)  # (K, S)
    y0 = model.initial_state_flat().astype(dtype)
    return Segments(t0, starts, ends, mult, add, rates, y0)


def batch_size(model: Any) -> int:
    """The batch size `N` of a model whose array leaves all carry a leading member axis (`ValueError` otherwise)."""
    leaves = [x for x in jax.tree_util.tree_leaves(model) if eqx.is_array(x)]
    if not leaves:
        raise ValueError(
            "`model` has no array leaves; give every parameter a leading batch axis of size N "
            "(e.g. build the models with `jax.vmap`)."
        )
    bad = [x.shape for x in leaves if x.ndim == 0]
    if bad:
        raise ValueError(
            "Every array leaf of `model` must carry a leading batch axis of size N, but some are "
            "scalars; build the batch with `jax.vmap(make_model)(values)` or "
            "`jax.tree.map(lambda x: jnp.broadcast_to(x, (N,) + x.shape), model)`."
        )
    n = leaves[0].shape[0]
    shapes = sorted({x.shape[0] for x in leaves})
    if len(shapes) != 1:
        raise ValueError(
            f"The array leaves of `model` have different leading (batch) sizes {shapes}; they must "
            "all equal the ensemble size N."
        )
    return int(n)


def broadcast_regimen(regimen: Regimen, n: int) -> Regimen:
    """`regimen` with every leaf batched along a leading member axis of size `n` (a shared regimen is broadcast)."""

    def bcast(x):
        x = jnp.asarray(x)
        if x.ndim == 0:
            return jnp.broadcast_to(x, (n,))
        if x.shape[0] != n:
            raise ValueError(
                f"A batched `regimen` must have leading batch size N = {n} (the model's), got a leaf "
                f"of shape {x.shape}."
            )
        return x

    return jax.tree_util.tree_map(bcast, regimen)
