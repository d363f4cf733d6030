"""Weighted isotonic (non-decreasing) regression, loop-free for short dose ladders."""

from __future__ import annotations

import equinox as eqx
import jax.numpy as jnp

from .._core._custom_types import Array, ArrayLike, Bool, Float


@eqx.filter_jit
def isotonic_regression(
    values: Float[ArrayLike, " n"],
    weights: Float[ArrayLike, " n"] | None = None,
    mask: Bool[ArrayLike, " n"] | None = None,
) -> Float[Array, " n"]:
    """Weighted least-squares fit of a non-decreasing sequence (what pool-adjacent-violators computes).

    Used to estimate DLT rates that increase with dose from observed rates that need not (BOIN's MTD selection).
    Instead of the sequential pool-adjacent-violators loop it evaluates the min-max formula
    `f_i = max_{j <= i} min_{k >= i} Av(j, k)`, where `Av(j, k)` is the weighted mean of entries `j..k`
    (Robertson, Wright & Dykstra 1988, Theorem 1.4.4). The fit is unique, so the result equals PAVA's; the
    formula has no data-dependent loop and runs under `jit`/`vmap` in `O(n^3)` work, which is nothing for a dose
    ladder.

    **Arguments:**

    - `values`: the observations, shape `(n,)`.
    - `weights`: positive weights, shape `(n,)` (default: all 1).
    - `mask`: which entries take part (default: all). Masked-out entries are skipped, as if the sequence were the
      selected entries only; their output is NaN.

    **Returns:** the fitted non-decreasing values, shape `(n,)`.

    **Example:**

    ```python
    from carkinetics.trials import isotonic_regression
    isotonic_regression([0.1, 0.4, 0.2, 0.5])      # [0.1, 0.3, 0.3, 0.5]: 0.4 and 0.2 are pooled
    ```

    ??? cite "Reference"

        Robertson T, Wright FT, Dykstra RL (1988). *Order Restricted Statistical Inference*. Wiley, Chichester.
    """
    x = jnp.asarray(values, dtype=jnp.result_type(float))
    n = x.shape[0]
    w = jnp.ones(n, dtype=x.dtype) if weights is None else jnp.asarray(weights, dtype=x.dtype)
    m = jnp.ones(n, dtype=bool) if mask is None else jnp.asarray(mask, dtype=bool)
    w = jnp.where(m, w, 0.0)
    zero = jnp.zeros(1, dtype=x.dtype)
    cw = jnp.concatenate([zero, jnp.cumsum(w)])
    cwx = jnp.concatenate([zero, jnp.cumsum(jnp.where(m, w * x, 0.0))])
    # block means Av(j, k) for j <= k, both endpoints taking part (the denominator is then positive)
    j = jnp.arange(n)[:, None]
    k = jnp.arange(n)[None, :]
    valid = (j <= k) & m[:, None] & m[None, :]
    den = cw[1:][None, :] - cw[:-1][:, None]
    num = cwx[1:][None, :] - cwx[:-1][:, None]
    av = jnp.where(valid, num / jnp.where(valid, den, 1.0), jnp.inf)  # (j, k)
    # inner[i, j] = min over k >= i of Av(j, k); then f_i = max over j <= i of inner[i, j]
    i = jnp.arange(n)[:, None, None]
    inner = jnp.min(jnp.where(k[None] >= i, av[None], jnp.inf), axis=-1)  # (i, j)
    outer_ok = (jnp.arange(n)[None, :] <= jnp.arange(n)[:, None]) & m[None, :] & jnp.isfinite(inner)
    fit = jnp.max(jnp.where(outer_ok, inner, -jnp.inf), axis=-1)
    return jnp.where(m, fit, jnp.nan)
