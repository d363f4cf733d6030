"""Differentiable summary metrics of one trajectory on a time grid (Cmax, Tmax, AUC, nadir, aplasia duration...).

Every function takes a time grid `ts` (days, shape `(T,)`, sorted) and the values of one trajectory `values`
(shape `(T,)`, any unit) and returns a scalar JAX array. They are pure JAX, un-jitted (they compose into the
caller's `jit`), and batch with `jax.vmap` (e.g. over the members of a sweep). Between grid points the
trajectory is taken as the piecewise-linear interpolant of the samples, which makes times (crossing times,
window edges, peak time) continuous and differentiable in the values and in the window bounds.

Units: times and durations are in days (the unit of `ts`); `cmax`/`nadir`/`value_at` are in the unit of
`values`; `auc` is in (unit of `values`) x days; `fold_change` is dimensionless; `half_life` is in days.
"""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp
import numpy as np

from ._core._custom_types import Array, Float

_DIRECTIONS = ("down", "up", "any")


def _as_grid(ts: Any, values: Any) -> tuple[Array, Array]:
    ts = jnp.asarray(ts)
    values = jnp.asarray(values)
    if ts.ndim != 1 or ts.shape[0] < 1:
        raise ValueError(
            f"`ts` must be a non-empty 1-D time grid (days), got shape {ts.shape}; use jax.vmap for batches."
        )
    if values.shape != ts.shape:
        raise ValueError(
            f"`values` must have the same shape as `ts` {ts.shape}, got {values.shape}; use jax.vmap over a batch "
            "of trajectories."
        )
    dtype = jnp.result_type(ts.dtype, values.dtype, float)
    return ts.astype(dtype), values.astype(dtype)


def _window(ts: Array, values: Array, t_start: Any, t_end: Any) -> tuple[Array, Array]:
    """Grid restricted to `[t_start, t_end]`: times clipped to the window, values interpolated at them.

    Clipped grid points coincide with the window edges, so they add zero-length segments (harmless for
    integrals and durations) and the interpolated edge values make the result continuous in the bounds.
    """
    if t_start is None and t_end is None:
        return ts, values
    lo = ts[0] if t_start is None else jnp.asarray(t_start, dtype=ts.dtype)
    hi = ts[-1] if t_end is None else jnp.asarray(t_end, dtype=ts.dtype)
    if np.ndim(lo) != 0 or np.ndim(hi) != 0:
        raise ValueError(f"`t_start` and `t_end` must be scalars (days), got shapes {np.shape(lo)} and {np.shape(hi)}.")
    tc = jnp.clip(ts, lo, jnp.maximum(lo, hi))
    return tc, jnp.interp(tc, ts, values)


def value_at(ts: Float[Array, " T"], values: Float[Array, " T"], t: Any) -> Array:
    """Value of the trajectory at time(s) `t` (days) by linear interpolation between grid points.

    Outside the grid the end values are held constant. `t` may be a scalar or an array; the result has its shape
    and the unit of `values`. Differentiable in `values` and in `t` (between grid points).

    **Example:**

    ```python
    import jax.numpy as jnp
    import carkinetics as ck
    ck.metrics.value_at(jnp.array([0.0, 1.0]), jnp.array([2.0, 4.0]), 0.25)   # 2.5
    ```
    """
    ts, values = _as_grid(ts, values)
    return jnp.interp(jnp.asarray(t, dtype=ts.dtype), ts, values)


def cmax(ts: Float[Array, " T"], values: Float[Array, " T"], *, t_start: Any = None, t_end: Any = None) -> Array:
    """Maximum of the trajectory (unit of `values`), over the whole grid or the window `[t_start, t_end]` (days).

    This is the NCA convention: the largest sampled value (with a window, the interpolated edge values count
    too). Differentiable almost everywhere (the gradient flows to the maximal sample).

    **Example:**

    ```python
    import jax.numpy as jnp
    import carkinetics as ck
    ck.metrics.cmax(jnp.array([0.0, 1.0, 2.0]), jnp.array([1.0, 3.0, 2.0]))   # 3.0
    ```
    """
    ts, values = _window(*_as_grid(ts, values), t_start, t_end)
    return jnp.max(values)


def nadir(ts: Float[Array, " T"], values: Float[Array, " T"], *, t_start: Any = None, t_end: Any = None) -> Array:
    """Minimum of the trajectory (unit of `values`) over the grid or the window `[t_start, t_end]` (days).

    **Example:**

    ```python
    import jax.numpy as jnp
    import carkinetics as ck
    ck.metrics.nadir(jnp.array([0.0, 1.0, 2.0]), jnp.array([5.0, 1.0, 2.0]))   # 1.0
    ```
    """
    ts, values = _window(*_as_grid(ts, values), t_start, t_end)
    return jnp.min(values)


def tmax(ts: Float[Array, " T"], values: Float[Array, " T"], *, interpolate: bool = True) -> Array:
    """Time of the maximum (days).

    With `interpolate=True` (default) the peak time is the vertex of the parabola through the maximal sample and
    its two neighbours (non-uniform spacing allowed), clipped to the neighbours' interval; this is continuous
    and differentiable in `values`. At the first or last grid point, or when the three points are collinear,
    the sampled time is returned. With `interpolate=False` it is the sampled time of the maximum (NCA Tmax).

    **Example:**

    ```python
    import jax.numpy as jnp
    import carkinetics as ck
    ts = jnp.array([0.0, 1.0, 2.0])
    ck.metrics.tmax(ts, -(ts - 0.8) ** 2)   # 0.8 (exact for a parabola)
    ```
    """
    ts, values = _as_grid(ts, values)
    i = jnp.argmax(values)
    if not interpolate or ts.shape[0] < 3:
        return ts[i]
    n = ts.shape[0]
    j = jnp.clip(i, 1, n - 2)
    t0, t1, t2 = ts[j - 1], ts[j], ts[j + 1]
    y0, y1, y2 = values[j - 1], values[j], values[j + 1]
    num = (t1 - t0) ** 2 * (y1 - y2) - (t1 - t2) ** 2 * (y1 - y0)
    den = (t1 - t0) * (y1 - y2) - (t1 - t2) * (y1 - y0)
    # den > 0 exactly when the parabola is concave with y1 its largest point; otherwise keep the sample.
    good = (den > 0) & (i == j)
    safe_den = jnp.where(good, den, 1.0)
    vertex = jnp.clip(t1 - 0.5 * num / safe_den, t0, t2)
    return jnp.where(good, vertex, ts[i])


def auc(ts: Float[Array, " T"], values: Float[Array, " T"], *, t_start: Any = None, t_end: Any = None) -> Array:
    """Area under the curve by the linear trapezoid rule, in (unit of `values`) x days.

    With a window, the integral runs over `[t_start, t_end]` with linearly interpolated edge values, so it is
    continuous and differentiable in the bounds. The window is limited to the grid (no extrapolation).

    **Example:**

    ```python
    import jax.numpy as jnp
    import carkinetics as ck
    ck.metrics.auc(jnp.array([0.0, 1.0, 2.0]), jnp.array([0.0, 2.0, 2.0]))            # 3.0
    ck.metrics.auc(jnp.array([0.0, 1.0, 2.0]), jnp.array([0.0, 2.0, 2.0]), t_end=0.5)  # 0.25
    ```
    """
    ts, values = _window(*_as_grid(ts, values), t_start, t_end)
    return jnp.sum(0.5 * (values[1:] + values[:-1]) * jnp.diff(ts))


def fold_change(ts: Float[Array, " T"], values: Float[Array, " T"], t: Any, ref_t: Any) -> Array:
    """Ratio `value_at(t) / value_at(ref_t)` (dimensionless), e.g. anti-dsDNA at day 90 relative to baseline.

    A fall to 20 % of baseline gives 0.2. Division by a zero reference gives `inf`/`nan` as in IEEE arithmetic.

    **Example:**

    ```python
    import jax.numpy as jnp
    import carkinetics as ck
    ck.metrics.fold_change(jnp.array([0.0, 90.0]), jnp.array([100.0, 20.0]), 90.0, 0.0)   # 0.2
    ```
    """
    ts, values = _as_grid(ts, values)
    return jnp.interp(jnp.asarray(t, ts.dtype), ts, values) / jnp.interp(jnp.asarray(ref_t, ts.dtype), ts, values)


def time_below(
    ts: Float[Array, " T"], values: Float[Array, " T"], threshold: Any, *, t_start: Any = None, t_end: Any = None
) -> Array:
    """Total time (days) that the piecewise-linear trajectory spends strictly below `threshold`.

    For example the B-cell aplasia duration: `time_below(ts, b_blood, 1.0)` with B cells in cells/µL. Partial
    segments are counted from the linearly interpolated crossing times, so the result is continuous and
    differentiable in `values` and `threshold` wherever the trajectory actually crosses. Optional window
    `[t_start, t_end]` (days).

    **Example:**

    ```python
    import jax.numpy as jnp
    import carkinetics as ck
    ck.metrics.time_below(jnp.array([0.0, 1.0, 2.0]), jnp.array([2.0, 0.0, 2.0]), 1.0)   # 1.0
    ```
    """
    ts, values = _window(*_as_grid(ts, values), t_start, t_end)
    thr = jnp.asarray(threshold, dtype=ts.dtype)
    a, b = values[:-1], values[1:]
    lo = jnp.minimum(a, b)
    span = jnp.abs(b - a)
    flat = span == 0
    frac = jnp.where(flat, (a < thr).astype(ts.dtype), jnp.clip((thr - lo) / jnp.where(flat, 1.0, span), 0.0, 1.0))
    return jnp.sum(frac * jnp.diff(ts))


def first_crossing(
    ts: Float[Array, " T"],
    values: Float[Array, " T"],
    threshold: Any,
    direction: str = "down",
    *,
    t_start: Any = None,
    fill_value: float = float("nan"),
) -> Array:
    """Time (days) at which the trajectory first crosses `threshold`, by linear interpolation.

    **Arguments:**

    - `direction`: `"down"` (from `>= threshold` to `< threshold`), `"up"` (from `<= threshold` to
      `> threshold`) or `"any"`.
    - `t_start`: only crossings at or after this time (days) count; e.g. B-cell recovery after the nadir.
    - `fill_value`: returned when there is no crossing (default `nan`).

    Differentiable in `values` and `threshold` (the crossing time moves continuously with them).

    **Example:**

    ```python
    import jax.numpy as jnp
    import carkinetics as ck
    ck.metrics.first_crossing(jnp.array([0.0, 1.0, 2.0]), jnp.array([4.0, 2.0, 0.0]), 1.0, "down")   # 1.5
    ```
    """
    if direction not in _DIRECTIONS:
        raise ValueError(f"`direction` must be one of {_DIRECTIONS}, got {direction!r}.")
    ts, values = _window(*_as_grid(ts, values), t_start, None)
    thr = jnp.asarray(threshold, dtype=ts.dtype)
    a, b = values[:-1], values[1:]
    down = (a >= thr) & (b < thr)
    up = (a <= thr) & (b > thr)
    hit = {"down": down, "up": up, "any": down | up}[direction]
    k = jnp.argmax(hit)
    ta, tb, va, vb = ts[:-1][k], ts[1:][k], a[k], b[k]
    dv = jnp.where(vb != va, vb - va, 1.0)
    t_cross = ta + (thr - va) / dv * (tb - ta)
    return jnp.where(jnp.any(hit), t_cross, jnp.asarray(fill_value, dtype=ts.dtype))


def half_life(ts: Float[Array, " T"], values: Float[Array, " T"], t_start: Any, t_end: Any) -> Array:
    """Half-life (days) from a least-squares fit of `log(values)` against time over grid points in `[t_start, t_end]`.

    Returns `ln 2 / k` where `-k` is the fitted slope (1/day): positive for a decline. A rising trajectory gives a
    negative number (minus the doubling time). Non-positive values are left out of the fit; with fewer than two
    usable points the result is `nan`.

    **Example:**

    ```python
    import jax.numpy as jnp
    import carkinetics as ck
    ts = jnp.linspace(0.0, 10.0, 11)
    ck.metrics.half_life(ts, 8.0 * 0.5 ** (ts / 3.0), 0.0, 10.0)   # 3.0
    ```
    """
    ts, values = _as_grid(ts, values)
    lo = jnp.asarray(t_start, ts.dtype)
    hi = jnp.asarray(t_end, ts.dtype)
    w = ((ts >= lo) & (ts <= hi) & (values > 0)).astype(ts.dtype)
    y = jnp.log(jnp.where(values > 0, values, 1.0))
    n = jnp.sum(w)
    safe_n = jnp.maximum(n, 1.0)
    tbar = jnp.sum(w * ts) / safe_n
    ybar = jnp.sum(w * y) / safe_n
    sxx = jnp.sum(w * (ts - tbar) ** 2)
    sxy = jnp.sum(w * (ts - tbar) * (y - ybar))
    ok = (n >= 2) & (sxx > 0)
    slope = sxy / jnp.where(ok, sxx, 1.0)
    return jnp.where(ok, -jnp.log(2.0) / slope, jnp.nan)


__all__ = ["auc", "cmax", "first_crossing", "fold_change", "half_life", "nadir", "time_below", "tmax", "value_at"]
