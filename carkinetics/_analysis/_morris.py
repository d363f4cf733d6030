"""Morris (1991) elementary-effects screening on the trajectory design: mu, mu* (Campolongo et al. 2007) and sigma,
with bootstrap confidence intervals, as SALib's `morris.analyze`.

References:

- Morris MD (1991). Factorial sampling plans for preliminary computational experiments. Technometrics
  33:161-174. doi:10.1080/00401706.1991.10484804
- Campolongo F, Cariboni J, Saltelli A (2007). An effective screening design for sensitivity analysis of large
  models. Environ Model Softw 22:1509-1518. doi:10.1016/j.envsoft.2006.10.004
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
# Morris


def morris_sample(problem: Mapping[str, Any] | GSAProblem, r: int, *, key: jax.Array, levels: int = 4) -> np.ndarray:
    """Morris (1991) trajectory design: `r` trajectories of `d + 1` points, `r (d + 1)` rows by `d` columns.

    Each trajectory starts at a random point of the `levels`-level grid on the unit cube and moves one factor at a
    time by `delta = levels / (2 (levels - 1))` (up or down, in random factor order); values are then scaled to
    the bounds. The layout matches SALib's `morris.sample`.

    **Example:**

    ```python
    import jax, carkinetics as ck
    x = ck.morris_sample({"names": ["a", "b", "c"], "bounds": [[0, 1]] * 3}, 10, key=jax.random.key(0))
    x.shape   # (40, 3)
    ```
    """
    prob = gsa_problem(problem)
    r = _check_int("r", r, 2)
    levels = _check_int("levels", levels, 2)
    if levels % 2:
        raise ValueError(f"`levels` must be even (so that the step delta keeps points on the grid), got {levels}.")
    d = prob.num_vars
    delta = levels / (2.0 * (levels - 1))
    k_start, k_dir, k_perm = jax.random.split(key, 3)
    start = np.asarray(jax.random.randint(k_start, (r, d), 0, levels // 2)) / (levels - 1)
    signs = np.asarray(jax.random.choice(k_dir, np.array([-1.0, 1.0]), (r, d)))
    perms = np.asarray(jax.vmap(lambda k: jax.random.permutation(k, d))(jax.random.split(k_perm, r)))
    lower = np.tril(np.ones((d + 1, d)), -1)  # B: strictly lower triangular
    traj = np.empty((r, d + 1, d))
    for t in range(r):  # host-side design construction (cheap; r is at most thousands)
        dmat = np.diag(signs[t])
        b_star = start[t][None, :] + (delta / 2.0) * ((2.0 * lower - 1.0) @ dmat + 1.0)
        traj[t] = b_star[:, perms[t]]
    return (prob.lower() + traj.reshape(r * (d + 1), d) * prob.width()).astype(float)


class MorrisResult(eqx.Module):
    """Morris screening statistics per factor (shape `(d, *output_shape)`).

    **Fields:** `names`; `mu` (mean elementary effect), `mu_star` (mean absolute effect), `sigma` (standard
    deviation, ddof 1), `mu_star_conf` (bootstrap half-width at `confidence`), `n_trajectories` (used),
    `n_dropped` (trajectories left out because a run failed). Effects are output change per unit-cube step,
    as in SALib.
    """

    names: tuple[str, ...] = eqx.field(static=True)
    mu: np.ndarray
    mu_star: np.ndarray
    sigma: np.ndarray
    mu_star_conf: np.ndarray
    confidence: float = eqx.field(static=True)
    n_trajectories: int = eqx.field(static=True)
    n_dropped: int = eqx.field(static=True)


@eqx.filter_jit
def _morris_core(xs: jax.Array, blocks: jax.Array, key: jax.Array, n_bootstrap: int):
    # xs: (r, d + 1, d) in unit-cube coordinates; blocks: (r, d + 1, ...)
    dx = jnp.diff(xs, axis=1)  # (r, d, d): step k changes one factor
    which = jnp.argmax(jnp.abs(dx), axis=-1)  # (r, d)
    step = jnp.take_along_axis(dx, which[..., None], axis=-1)[..., 0]  # (r, d): +-delta
    dy = jnp.diff(blocks, axis=1)  # (r, d, ...)
    ee_step = dy / step.reshape(step.shape + (1,) * (dy.ndim - 2))
    onehot = jax.nn.one_hot(which, xs.shape[-1], dtype=blocks.dtype)  # (r, step, factor)
    ee = jnp.einsum("rk...,rkf->fr...", ee_step, onehot)  # (d, r, ...)
    mu = jnp.mean(ee, axis=1)
    mu_star = jnp.mean(jnp.abs(ee), axis=1)
    sigma = jnp.std(ee, axis=1, ddof=1)
    r = ee.shape[1]
    idx = jax.random.randint(key, (n_bootstrap, r), 0, r)
    boot = jax.lax.map(lambda i: jnp.mean(jnp.abs(ee[:, i]), axis=1), idx)
    return mu, mu_star, sigma, jnp.std(boot, axis=0, ddof=1)


def morris_indices(
    problem: Mapping[str, Any] | GSAProblem,
    x: Any,
    y: Any,
    *,
    key: jax.Array,
    ok: Any = None,
    n_bootstrap: int = 100,
    confidence: float = 0.95,
) -> MorrisResult:
    """Morris elementary-effect statistics from a trajectory design `x` (`(r (d + 1), d)`) and outputs `y`.

    `y` has shape `(r (d + 1),)` or `(r (d + 1), *shape)` (time courses). Trajectories with a failed (`ok`
    False) or non-finite run are dropped and counted. mu, mu* and sigma equal SALib's `morris.analyze` on the
    same design and outputs (unscaled effects).

    **Example:**

    ```python
    import jax, carkinetics as ck
    prob = {"names": ["a", "b"], "bounds": [[0, 1], [0, 1]]}
    x = ck.morris_sample(prob, 20, key=jax.random.key(0))
    ck.morris_indices(prob, x, 3 * x[:, 0] + x[:, 1] ** 2, key=jax.random.key(1)).mu_star[0]   # 3.0
    ```
    """
    prob = gsa_problem(problem)
    d = prob.num_vars
    n_bootstrap = _check_int("n_bootstrap", n_bootstrap, 2)
    confidence = _check_confidence(confidence)
    x = np.asarray(x, dtype=float)
    y = np.asarray(y, dtype=float)
    if x.ndim != 2 or x.shape[1] != d or x.shape[0] % (d + 1) != 0:
        raise ValueError(f"`x` must have shape (r (d + 1), d) = (r x {d + 1}, {d}) (a Morris design), got {x.shape}.")
    if y.shape[:1] != x.shape[:1]:
        raise ValueError(f"`y` must have {x.shape[0]} rows like `x`, got shape {y.shape}.")
    r = x.shape[0] // (d + 1)
    xs = ((x - prob.lower()) / prob.width()).reshape(r, d + 1, d)
    moves = np.abs(np.diff(xs, axis=1)) > 1e-12
    if not np.all(moves.sum(axis=2) == 1) or not np.all(moves.sum(axis=1) == 1):
        raise ValueError(
            "`x` is not a Morris trajectory design: each step must change exactly one factor, and each "
            "factor exactly once per trajectory."
        )
    blocks = y.reshape((r, d + 1) + y.shape[1:])
    keep = np.isfinite(blocks.reshape(r, -1)).all(axis=1)
    if ok is not None:
        ok = np.asarray(ok, dtype=bool)
        if ok.shape != (x.shape[0],):
            raise ValueError(f"`ok` must have shape ({x.shape[0]},), got {ok.shape}.")
        keep &= ok.reshape(r, d + 1).all(axis=1)
    n_keep = int(keep.sum())
    if n_keep < 2:
        raise ValueError(f"Only {n_keep} Morris trajectories have all runs successful and finite; need at least 2.")
    mu, mu_star, sigma, sd = _morris_core(jnp.asarray(xs[keep]), jnp.asarray(blocks[keep]), key, n_bootstrap)
    z = NormalDist().inv_cdf(0.5 + confidence / 2)
    return MorrisResult(
        prob.names,
        np.asarray(mu),
        np.asarray(mu_star),
        np.asarray(sigma),
        z * np.asarray(sd),
        confidence,
        n_keep,
        r - n_keep,
    )


def morris_analysis(
    fn: Callable,
    problem: Mapping[str, Any] | GSAProblem,
    r: int,
    *,
    key: jax.Array,
    levels: int = 4,
    has_ok: bool | None = None,
    n_bootstrap: int = 100,
    confidence: float = 0.95,
    chunk_size: int = 1024,
    devices: Any = None,
    checkpoint: Any = None,
    progress: bool = True,
) -> tuple[Any, np.ndarray, SweepResult]:
    """Sample a Morris design, evaluate `fn` with [`carkinetics.sweep`][] and compute mu, mu*, sigma.

    Arguments as [`carkinetics.sobol_analysis`][], with `r` trajectories of `levels` grid levels.
    **Returns:** `(stats, x, sweep_result)`: a [`carkinetics.MorrisResult`][] per output leaf, the design and the
    raw sweep.

    **Example:**

    ```python
    import jax, carkinetics as ck
    prob = {"names": ["a", "b"], "bounds": [[0, 1], [0, 1]]}
    stats, x, _ = ck.morris_analysis(lambda x: 3 * x[0] + x[1] ** 2, prob, 20, key=jax.random.key(0),
                                     progress=False)
    ```
    """
    prob = gsa_problem(problem)
    k_sample, k_boot = jax.random.split(key)
    x = morris_sample(prob, r, key=k_sample, levels=levels)
    res = sweep(
        fn,
        x,
        chunk_size=chunk_size,
        devices=devices,
        checkpoint=checkpoint,
        progress=progress,
        has_ok=_has_ok(fn, has_ok),
    )
    stats = _analyse_tree(
        res.outputs,
        lambda y: morris_indices(prob, x, y, key=k_boot, ok=res.ok, n_bootstrap=n_bootstrap, confidence=confidence),
    )
    return stats, x, res
