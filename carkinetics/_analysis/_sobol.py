"""Sobol indices (first and total order) on the radial Saltelli design, with bootstrap confidence intervals.

First-order indices use the Saltelli et al. (2010) estimator and total indices the Jansen (1999) estimator, both on
the radial "A, AB_1..AB_d, B" design (Saltelli 2002/2010), normalised as SALib's
`sobol.analyze(calc_second_order=False)`.

References:

- Saltelli A, Annoni P, Azzini I, Campolongo F, Ratto M, Tarantola S (2010). Variance based sensitivity
  analysis of model output. Comput Phys Commun 181:259-270. doi:10.1016/j.cpc.2009.09.018
- Jansen MJW (1999). Analysis of variance designs for model output. Comput Phys Commun 117:35-43.
  doi:10.1016/S0010-4655(98)00154-4
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from statistics import NormalDist
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from ._gsa import GSAProblem, _analyse_tree, _check_confidence, _check_int, _has_ok, gsa_problem
from ._sweep import SweepResult, sweep

# ----------------------------------------------------------------------------------------------------------------
# Sobol


def saltelli_sample(
    problem: Mapping[str, Any] | GSAProblem, n: int, *, key: jax.Array, method: str = "random"
) -> np.ndarray:
    """The Saltelli design for first- and total-order Sobol indices, `n (d + 2)` rows by `d` columns.

    Rows come in blocks of `d + 2` per base sample i: `A_i`, then `AB_i^(1..d)` (`A_i` with column j taken from
    `B_i`), then `B_i`; SALib's `sobol.sample(..., calc_second_order=False)` uses the same layout. Values are in
    the natural units of `problem["bounds"]`.

    **Arguments:**

    - `n`: number of base samples (model runs = `n (d + 2)`).
    - `key`: a JAX PRNG key (fixed keys give reproducible designs).
    - `method`: `"random"` (independent uniforms, pure JAX) or `"sobol"` (scrambled Sobol' sequence of
      dimension 2d, needs SciPy; `n` should then be a power of 2).

    **Example:**

    ```python
    import jax, carkinetics as ck
    x = ck.saltelli_sample({"names": ["a", "b"], "bounds": [[0, 1], [0, 2]]}, 8, key=jax.random.key(0))
    x.shape   # (32, 2)
    ```
    """
    prob = gsa_problem(problem)
    n = _check_int("n", n, 2)
    d = prob.num_vars
    if method == "random":
        u = np.asarray(
            jax.random.uniform(key, (n, 2 * d), dtype=jnp.float64 if jax.config.jax_enable_x64 else None),  # pyright: ignore[reportAttributeAccessIssue]
            dtype=float,
        )
    elif method == "sobol":
        try:
            from scipy.stats import qmc
        except ImportError as err:  # SciPy is optional at run time
            raise ValueError("`method='sobol'` needs SciPy; install it or use method='random'.") from err
        seed = int(jax.random.randint(key, (), 0, 2**31 - 1))
        # SciPy >= 1.15 calls `seed` `rng` (and still accepts `seed`); SciPy 1.11-1.14 know only `seed`.
        u = qmc.Sobol(2 * d, scramble=True, seed=seed).random(n)  # pyright: ignore[reportCallIssue]
    else:
        raise ValueError(f"`method` must be 'random' or 'sobol', got {method!r}.")
    a, b = u[:, :d], u[:, d:]
    blocks = np.repeat(a[:, None, :], d + 2, axis=1)
    idx = np.arange(d)
    blocks[:, 1 + idx, idx] = b[:, idx]
    blocks[:, d + 1, :] = b
    return (prob.lower() + blocks.reshape(n * (d + 2), d) * prob.width()).astype(float)


class SobolResult(eqx.Module):
    """First- and total-order Sobol indices with bootstrap confidence half-widths.

    **Fields:** `names` (the factors); `S1`, `ST`: indices of shape `(d, *output_shape)` (a time-course output
    of shape `(T,)` gives `(d, T)`); `S1_conf`, `ST_conf`: half-widths of the `confidence` interval
    (normal approximation z * bootstrap standard deviation, as SALib); `n_base`: base samples used;
    `n_dropped`: base samples left out because one of their `d + 2` runs failed.
    """

    names: tuple[str, ...] = eqx.field(static=True)
    S1: np.ndarray
    S1_conf: np.ndarray
    ST: np.ndarray
    ST_conf: np.ndarray
    confidence: float = eqx.field(static=True)
    n_base: int = eqx.field(static=True)
    n_dropped: int = eqx.field(static=True)


@eqx.filter_jit
def _sobol_core(blocks: jax.Array, keep: jax.Array, key: jax.Array, n_bootstrap: int):
    # blocks: (n, d + 2, ...); rows of dropped base samples hold zeros and have keep False.
    # Centre and scale by all kept outputs (SALib does the same): this reduces the bias of the first-order
    # estimator for outputs with a large mean.
    w = keep.reshape(keep.shape + (1,) * (blocks.ndim - 1)).astype(blocks.dtype)
    cnt = jnp.sum(keep) * blocks.shape[1]
    mean = jnp.sum(w * blocks, axis=(0, 1), keepdims=True) / cnt
    std = jnp.sqrt(jnp.sum(w * (blocks - mean) ** 2, axis=(0, 1), keepdims=True) / cnt)
    y = (blocks - mean) / jnp.where(std > 0, std, 1.0)
    y = y[jnp.argsort(~keep, stable=True)]  # kept base samples first
    n_keep = jnp.sum(keep)
    n = y.shape[0]
    s1, st = _sobol_estimate(y, jnp.arange(n), n_keep)
    boot_idx = jax.random.randint(key, (n_bootstrap, n), 0, jnp.maximum(n_keep, 1))
    b1, bt = jax.lax.map(lambda idx: _sobol_estimate(y, idx, n_keep), boot_idx)  # sequential: bounded memory
    return s1, st, jnp.std(b1, axis=0, ddof=1), jnp.std(bt, axis=0, ddof=1)


def _sobol_estimate(y: jax.Array, idx: jax.Array, n_keep: jax.Array):
    # Saltelli 2010 (first order) and Jansen 1999 (total) over the first n_keep base samples of y[idx] (fixed
    # shapes: the others get weight zero), normalised by the variance of the A and B outputs together (as SALib).
    yy = y[idx]
    ya, yab, yb = yy[:, 0], yy[:, 1:-1], yy[:, -1]
    w = (jnp.arange(idx.shape[0]) < n_keep).astype(y.dtype)
    wb = w.reshape(w.shape + (1,) * (ya.ndim - 1))
    nk = jnp.maximum(n_keep, 1).astype(y.dtype)
    both = jnp.concatenate([ya, yb])
    wboth = jnp.concatenate([wb, wb])
    m = jnp.sum(wboth * both, axis=0, keepdims=True) / (2 * nk)
    var = jnp.sum(wboth * (both - m) ** 2, axis=0, keepdims=True) / (2 * nk)
    wab = wb[:, None]
    s1 = jnp.sum(wab * yb[:, None] * (yab - ya[:, None]), axis=0) / nk
    st = 0.5 * jnp.sum(wab * (ya[:, None] - yab) ** 2, axis=0) / nk
    good = var > 0
    safe = jnp.where(good, var, 1.0)
    return jnp.where(good, s1 / safe, 0.0), jnp.where(good, st / safe, 0.0)


def sobol_indices(
    problem: Mapping[str, Any] | GSAProblem,
    y: Any,
    *,
    key: jax.Array,
    ok: Any = None,
    n_bootstrap: int = 100,
    confidence: float = 0.95,
) -> SobolResult:
    """First-order (Saltelli 2010) and total (Jansen 1999) Sobol indices from outputs on a Saltelli design.

    **Arguments:**

    - `problem`: SALib-style dict or [`carkinetics.GSAProblem`][] (d factors).
    - `y`: outputs on the rows of [`carkinetics.saltelli_sample`][] (or SALib's `sobol.sample` with
      `calc_second_order=False`), shape `(n (d + 2),)` for a scalar output or `(n (d + 2), *shape)` for a
      time course (indices are computed for every output element).
    - `key`: PRNG key of the bootstrap resampling of the base samples.
    - `ok`: optional boolean `(n (d + 2),)`; base samples with a failed run are dropped (and counted).
    - `n_bootstrap`, `confidence`: bootstrap replicates and confidence level of `S1_conf`/`ST_conf`.

    **Returns:** a [`carkinetics.SobolResult`][]. The point estimates equal SALib's `sobol.analyze` on the same
    outputs; the confidence half-widths differ only through the bootstrap random numbers.

    **Example:**

    ```python
    import jax, jax.numpy as jnp, carkinetics as ck
    prob = {"names": ["a", "b"], "bounds": [[0, 1], [0, 1]]}
    x = ck.saltelli_sample(prob, 1024, key=jax.random.key(0))
    res = ck.sobol_indices(prob, x[:, 0] + 0.1 * x[:, 1], key=jax.random.key(1))
    res.S1   # about [0.99, 0.01]
    ```
    """
    prob = gsa_problem(problem)
    d = prob.num_vars
    n_bootstrap = _check_int("n_bootstrap", n_bootstrap, 2)
    confidence = _check_confidence(confidence)
    y = np.asarray(y, dtype=float)
    if y.ndim < 1 or y.shape[0] % (d + 2) != 0:
        raise ValueError(
            f"`y` must have a leading axis of n (d + 2) = n x {d + 2} rows (Saltelli design without second order), "
            f"got shape {y.shape}."
        )
    n = y.shape[0] // (d + 2)
    blocks = y.reshape((n, d + 2) + y.shape[1:])
    if ok is None:
        keep = np.ones(n, dtype=bool)
    else:
        ok = np.asarray(ok, dtype=bool)
        if ok.shape != (y.shape[0],):
            raise ValueError(f"`ok` must have shape ({y.shape[0]},) like the rows of `y`, got {ok.shape}.")
        keep = ok.reshape(n, d + 2).all(axis=1)
    keep &= np.isfinite(blocks.reshape(n, -1)).all(axis=1)
    n_keep = int(keep.sum())
    if n_keep < 2:
        raise ValueError(f"Only {n_keep} base samples have all d + 2 runs successful and finite; need at least 2.")
    blocks = np.where(keep.reshape((n,) + (1,) * (blocks.ndim - 1)), blocks, 0.0)  # dropped rows: zeros
    s1, st, s1_sd, st_sd = _sobol_core(jnp.asarray(blocks), jnp.asarray(keep), key, n_bootstrap)
    z = NormalDist().inv_cdf(0.5 + confidence / 2)
    return SobolResult(
        prob.names,
        np.asarray(s1),
        z * np.asarray(s1_sd),
        np.asarray(st),
        z * np.asarray(st_sd),
        confidence,
        n_keep,
        n - n_keep,
    )


def sobol_analysis(
    fn: Callable,
    problem: Mapping[str, Any] | GSAProblem,
    n: int,
    *,
    key: jax.Array,
    method: str = "random",
    has_ok: bool | None = None,
    n_bootstrap: int = 100,
    confidence: float = 0.95,
    chunk_size: int = 1024,
    devices: Any = None,
    checkpoint: Any = None,
    progress: bool = True,
) -> tuple[Any, np.ndarray, SweepResult]:
    """Sample a Saltelli design, evaluate `fn` on it with [`carkinetics.sweep`][] and compute Sobol indices.

    **Arguments:**

    - `fn`: maps one factor vector `x` (shape `(d,)`, natural units, in the order of `problem["names"]`) to a
      pytree of outputs (scalars or time courses), or to `(outputs, ok)` with `has_ok=True`.
      [`carkinetics.model_function`][] builds such a function from a model (a batch function, integrated a chunk
      at a time).
    - `has_ok`: whether `fn` returns `(outputs, ok)`; default: `True` for [`carkinetics.ParameterBatch`][]
      functions (such as `model_function`'s), else `False`.
    - `problem`, `n`, `method`: see [`carkinetics.saltelli_sample`][] (`n (d + 2)` evaluations).
    - `key`: split into the sampling key and the bootstrap key.
    - `n_bootstrap`, `confidence`: see [`carkinetics.sobol_indices`][].
    - `chunk_size`, `devices`, `checkpoint`, `progress`: see [`carkinetics.sweep`][].

    **Returns:** `(indices, x, sweep_result)`: a [`carkinetics.SobolResult`][] for every output leaf (same pytree
    structure as the outputs of `fn`), the design `x` (`(n (d + 2), d)`) and the raw sweep (outputs per row).

    **Example:**

    ```python
    import jax, jax.numpy as jnp, carkinetics as ck
    prob = {"names": ["x1", "x2", "x3"], "bounds": [[-jnp.pi, jnp.pi]] * 3}
    ishigami = lambda x: jnp.sin(x[0]) + 7 * jnp.sin(x[1]) ** 2 + 0.1 * x[2] ** 4 * jnp.sin(x[0])
    idx, x, _ = ck.sobol_analysis(ishigami, prob, 1024, key=jax.random.key(0), progress=False)
    idx.S1   # about [0.31, 0.44, 0.0]
    ```
    """
    prob = gsa_problem(problem)
    k_sample, k_boot = jax.random.split(key)
    x = saltelli_sample(prob, n, key=k_sample, method=method)
    res = sweep(
        fn,
        x,
        chunk_size=chunk_size,
        devices=devices,
        checkpoint=checkpoint,
        progress=progress,
        has_ok=_has_ok(fn, has_ok),
    )
    indices = _analyse_tree(
        res.outputs,
        lambda y: sobol_indices(prob, y, key=k_boot, ok=res.ok, n_bootstrap=n_bootstrap, confidence=confidence),
    )
    return indices, x, res
