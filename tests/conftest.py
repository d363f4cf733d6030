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


@pytest.fixture(autouse=True, scope="module")
def _release_compiled_code():
    """Drop JAX's compiled executables after each test module.

    Every XLA CPU executable holds memory mappings (~2000 for one EnsembleRodas5 solve of the SLE model); a whole
    suite in one process reached the kernel's default `vm.max_map_count` (65530) and the next compilation crashed
    (segmentation fault in `backend_compile_and_load`). Tests within a module still share compilations.
    """
    yield
    import gc

    jax.clear_caches()
    gc.collect()
