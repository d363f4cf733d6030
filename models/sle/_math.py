"""Numerical helpers shared by the SLE model's sub-models."""

from __future__ import annotations

import jax.numpy as jnp


def power(x, n):
    """`x**n` for x >= 0 with finite derivatives of every order at x = 0 (zero there).

    The stiff solvers differentiate the Jacobian of the right-hand side, and d²/dx² x**n = n(n-1)·0**(n-2) is NaN at
    x = 0 for 1 <= n < 2 (e.g. a Hill coefficient of 1). Used for every Hill exponent that is a model parameter.

    **Example:** `power(jnp.asarray(0.0), 1.0)` is 0 and `jax.grad(jax.grad(lambda v: power(v, 1.0)))(0.0)` is 0.
    """
    pos = x > 0.0
    return jnp.where(pos, jnp.where(pos, x, 1.0) ** n, 0.0)
