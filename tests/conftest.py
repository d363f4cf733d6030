"""Test configuration: float64, strict numerics, fixed seeds."""

import jax
import pytest

jax.config.update("jax_enable_x64", True)
jax.config.update("jax_numpy_rank_promotion", "raise")


@pytest.fixture
def getkey():
    """Deterministic PRNG keys: the n-th call returns jax.random.key(n) (fixed constants, never time-based)."""
    counter = iter(range(10_000))

    def _getkey():
        return jax.random.key(next(counter))

    return _getkey
