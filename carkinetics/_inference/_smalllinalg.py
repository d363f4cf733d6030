"""Cholesky factorisation, solves and log-determinants of the small per-subject matrices of population fits.

A matrix that is not positive definite gives NaN in its factor (the callers' test for definiteness), so these never
raise inside compiled code.
"""

from __future__ import annotations

import jax.numpy as jnp
from jax.scipy.linalg import cho_solve as _cho_solve

from .._core._custom_types import Array


def cholesky(a: Array) -> Array:
    """Lower Cholesky factor of `a` `(..., q, q)` (NaN entries when `a` is not positive definite)."""
    return jnp.linalg.cholesky(a)


def cho_solve(low: Array, b: Array) -> Array:
    """`x` with `L L' x = b`, for `b` `(..., q)` and `L` `(..., q, q)`."""
    return _cho_solve((low, True), b[..., None])[..., 0]


def logdet(low: Array) -> Array:
    """`log det (L L')` from the Cholesky factor."""
    return 2.0 * jnp.sum(jnp.log(jnp.diagonal(low, axis1=-2, axis2=-1)), axis=-1)


def inverse(a: Array) -> Array:
    """Inverse of a positive definite `a` `(q, q)`."""
    low = cholesky(a)
    return _cho_solve((low, True), jnp.eye(a.shape[-1], dtype=a.dtype))
