"""Global sensitivity analysis in JAX on top of `sweep`: Sobol indices (Saltelli design) and Morris screening.

Sobol first-order indices use the Saltelli et al. (2010) estimator and total indices the Jansen (1999)
estimator, both on the radial "A, AB_1..AB_d, B" design (Saltelli 2002/2010), with bootstrap confidence
intervals over the base samples. Morris (1991) screening uses the trajectory design and reports mu, mu*
(Campolongo et al. 2007) and sigma of the elementary effects. Problems are given SALib-style as
`{"names": [...], "bounds": [[lo, hi], ...]}` (uniform inputs); sample layouts and estimators match SALib's
`sobol.analyze(calc_second_order=False)` and `morris.analyze`, so samples from either library can be analysed
by the other.

References:

- Saltelli A, Annoni P, Azzini I, Campolongo F, Ratto M, Tarantola S (2010). Variance based sensitivity
  analysis of model output. Comput Phys Commun 181:259-270. doi:10.1016/j.cpc.2009.09.018
- Jansen MJW (1999). Analysis of variance designs for model output. Comput Phys Commun 117:35-43.
  doi:10.1016/S0010-4655(98)00154-4
- Morris MD (1991). Factorial sampling plans for preliminary computational experiments. Technometrics
  33:161-174. doi:10.1080/00401706.1991.10484804
- Campolongo F, Cariboni J, Saltelli A (2007). An effective screening design for sensitivity analysis of large
  models. Environ Model Softw 22:1509-1518. doi:10.1016/j.envsoft.2006.10.004
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from statistics import NormalDist
from typing import Any, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .._core._parameters import parameters
from .._engine._batch import Experiment
from .._engine._simulate import Engine, engine_of, resolve_solver
from ._sweep import ParameterBatch, SweepResult, sweep


@dataclasses.dataclass(frozen=True)
class GSAProblem:
    """Uniform input factors of a sensitivity analysis: `names` and `bounds` (`(d, 2)`, lower and upper).

    Build from a SALib-style dict with [`carkinetics.gsa_problem`][]; bounds are in the natural units of each
    factor (e.g. the parameter's unit when the names are model parameter names).
    """

    names: tuple[str, ...]
    bounds: tuple[tuple[float, float], ...]

    def __post_init__(self):
        if len(self.names) == 0:
            raise ValueError("A sensitivity problem needs at least one factor; `names` is empty.")
        if len(set(self.names)) != len(self.names):
            raise ValueError(f"`names` contains duplicates: {list(self.names)}.")
        if len(self.bounds) != len(self.names):
            raise ValueError(f"`bounds` has {len(self.bounds)} rows but there are {len(self.names)} names.")
        for n, (lo, hi) in zip(self.names, self.bounds):
            if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
                raise ValueError(f"Bounds of factor {n!r} must be finite with lower < upper, got [{lo}, {hi}].")

    @property
    def num_vars(self) -> int:
        return len(self.names)

    def lower(self) -> np.ndarray:
        return np.array([b[0] for b in self.bounds], dtype=float)

    def width(self) -> np.ndarray:
        return np.array([b[1] - b[0] for b in self.bounds], dtype=float)

    def to_salib(self) -> dict:
        """The SALib problem dict."""
        return {"num_vars": self.num_vars, "names": list(self.names), "bounds": [list(b) for b in self.bounds]}


def gsa_problem(problem: Mapping[str, Any] | GSAProblem) -> GSAProblem:
    """A [`carkinetics.GSAProblem`][] from a SALib-style dict `{"names": [...], "bounds": [[lo, hi], ...]}`.

    `num_vars`, if present, must equal the number of names; SALib's `groups` (other than one group per factor)
    and non-uniform `dists` are not supported (all factors are independent uniforms).

    **Example:** `ck.gsa_problem({"names": ["car.rho", "car.k_exh"], "bounds": [[0.1, 1.0], [0.01, 0.1]]})`
    """
    if isinstance(problem, GSAProblem):
        return problem
    if not isinstance(problem, Mapping):
        raise ValueError(
            f"`problem` must be a dict with 'names' and 'bounds' or a GSAProblem, got {type(problem).__name__}."
        )
    for key in ("names", "bounds"):
        if key not in problem:
            raise ValueError(f"`problem` is missing the key {key!r}; SALib-style problems have 'names' and 'bounds'.")
    groups, dists = problem.get("groups"), problem.get("dists")
    if groups is not None and list(groups) != list(problem["names"]):
        raise ValueError("`problem['groups']` is not supported (factor groups); carkinetics GSA analyses each factor.")
    if dists is not None and any(dist != "unif" for dist in dists):
        raise ValueError(f"`problem['dists']` = {list(dists)} is not supported: factors must be uniform ('unif').")
    names = tuple(str(n) for n in problem["names"])
    bounds = np.asarray(problem["bounds"], dtype=float)
    if bounds.ndim != 2 or bounds.shape[1] != 2:
        raise ValueError(f"`problem['bounds']` must be a list of [lower, upper] pairs, got shape {bounds.shape}.")
    if "num_vars" in problem and int(problem["num_vars"]) != len(names):
        raise ValueError(f"`problem['num_vars']` = {problem['num_vars']} differs from the {len(names)} names.")
    return GSAProblem(names, tuple((float(lo), float(hi)) for lo, hi in bounds))


def _check_int(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"`{name}` must be an int >= {minimum}, got {value!r}.")
    return int(value)


def _check_confidence(confidence: float) -> float:
    if not 0.0 < float(confidence) < 1.0:
        raise ValueError(f"`confidence` must lie strictly between 0 and 1, got {confidence!r}.")
    return float(confidence)


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
        u = np.asarray(jax.random.uniform(key, (n, 2 * d), dtype=jnp.float64 if jax.config.jax_enable_x64 else None),
                       dtype=float)
    elif method == "sobol":
        try:
            from scipy.stats import qmc
        except ImportError as err:  # SciPy is optional at run time
            raise ValueError("`method='sobol'` needs SciPy; install it or use method='random'.") from err
        seed = int(jax.random.randint(key, (), 0, 2**31 - 1))
        u = qmc.Sobol(2 * d, scramble=True, seed=seed).random(n)
    else:
        raise ValueError(f"`method` must be 'random' or 'sobol', got {method!r}.")
    a, b = u[:, :d], u[:, d:]
    blocks = np.repeat(a[:, None, :], d + 2, axis=1)
    idx = np.arange(d)
    blocks[:, 1 + idx, idx] = b[:, idx]
    blocks[:, d + 1, :] = b
    return (prob.lower() + blocks.reshape(n * (d + 2), d) * prob.width()).astype(float)


class SobolResult(NamedTuple):
    """First- and total-order Sobol indices with bootstrap confidence half-widths.

    **Fields:** `names` (the factors); `S1`, `ST`: indices of shape `(d, *output_shape)` (a time-course output
    of shape `(T,)` gives `(d, T)`); `S1_conf`, `ST_conf`: half-widths of the `confidence` interval
    (normal approximation z * bootstrap standard deviation, as SALib); `n_base`: base samples used;
    `n_dropped`: base samples left out because one of their `d + 2` runs failed.
    """

    names: tuple[str, ...]
    S1: np.ndarray
    S1_conf: np.ndarray
    ST: np.ndarray
    ST_conf: np.ndarray
    confidence: float
    n_base: int
    n_dropped: int


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
    return SobolResult(prob.names, np.asarray(s1), z * np.asarray(s1_sd), np.asarray(st), z * np.asarray(st_sd),
                       confidence, n_keep, n - n_keep)


def _has_ok(fn: Any, has_ok: bool | None) -> bool:
    return isinstance(fn, ParameterBatch) if has_ok is None else bool(has_ok)


def _analyse_tree(outputs: Any, analyse: Callable[[np.ndarray], Any]) -> Any:
    return jax.tree_util.tree_map(analyse, outputs, is_leaf=lambda x: isinstance(x, np.ndarray))


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
    res = sweep(fn, x, chunk_size=chunk_size, devices=devices, checkpoint=checkpoint, progress=progress,
                has_ok=_has_ok(fn, has_ok))
    indices = _analyse_tree(
        res.outputs,
        lambda y: sobol_indices(prob, y, key=k_boot, ok=res.ok, n_bootstrap=n_bootstrap, confidence=confidence),
    )
    return indices, x, res


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


class MorrisResult(NamedTuple):
    """Morris screening statistics per factor (shape `(d, *output_shape)`).

    **Fields:** `names`; `mu` (mean elementary effect), `mu_star` (mean absolute effect), `sigma` (standard
    deviation, ddof 1), `mu_star_conf` (bootstrap half-width at `confidence`), `n_trajectories` (used),
    `n_dropped` (trajectories left out because a run failed). Effects are output change per unit-cube step,
    as in SALib.
    """

    names: tuple[str, ...]
    mu: np.ndarray
    mu_star: np.ndarray
    sigma: np.ndarray
    mu_star_conf: np.ndarray
    confidence: float
    n_trajectories: int
    n_dropped: int


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
        raise ValueError("`x` is not a Morris trajectory design: each step must change exactly one factor, and each "
                         "factor exactly once per trajectory.")
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
    return MorrisResult(prob.names, np.asarray(mu), np.asarray(mu_star), np.asarray(sigma), z * np.asarray(sd),
                        confidence, n_keep, r - n_keep)


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
    res = sweep(fn, x, chunk_size=chunk_size, devices=devices, checkpoint=checkpoint, progress=progress,
                has_ok=_has_ok(fn, has_ok))
    stats = _analyse_tree(
        res.outputs,
        lambda y: morris_indices(prob, x, y, key=k_boot, ok=res.ok, n_bootstrap=n_bootstrap, confidence=confidence),
    )
    return stats, x, res


# ----------------------------------------------------------------------------------------------------------------
# models


def model_function(
    model: Any,
    regimen: Any,
    ts: Any,
    names: Sequence[str],
    metrics: Callable[[Any], Mapping[str, Any]],
    *,
    engine: Engine | None = None,
    solver: Any = None,
    rtol: float | None = None,
    atol: float | None = None,
    max_steps: int = 100_000,
    t0: float | None = None,
) -> ParameterBatch:
    """The batch function of a GSA of a model: rows `x (n, d)` of parameter values -> `(metrics, ok)`.

    Columns of `x` are the values (natural units) of the parameters `names` (dotted, as `problem["names"]`); each
    chunk of rows is integrated with one engine call (default: the batched ensemble engine; `engine="vmap"` for
    `jax.vmap` of the per-member diffrax engine) and reduced with `metrics(sol) -> dict`. Failed members are masked
    and dropped from the indices. The result is an `eqx.Module`, so new parameter values in `model` do not
    recompile.

    **Example:**

    ```python
    import jax, jax.numpy as jnp, carkinetics as ck
    from carkinetics.models import OneCompartmentPK
    ts = jnp.linspace(0.0, 1.0, 11)
    f = ck.model_function(OneCompartmentPK(), ck.Bolus(0.0, 100.0, "central"), ts, ["cl", "v"],
                          lambda sol: {"auc": ck.metrics.auc(sol.ts, sol.observables.concentration)})
    prob = {"names": ["cl", "v"], "bounds": [[50.0, 200.0], [30.0, 60.0]]}
    idx, x, _ = ck.sobol_analysis(f, prob, 64, key=jax.random.key(0), progress=False)
    ```
    """
    allp = parameters(model)
    for n in names:
        if n not in allp:
            raise ValueError(f"Unknown parameter {n!r} in `names`; known parameters are {sorted(allp)}.")
    if metrics is None or not callable(metrics):
        raise ValueError(f"`metrics` must be a function of a Solution returning a dict, got {metrics!r}.")
    experiment = Experiment(regimen, ts, metrics, solver=solver, rtol=rtol, atol=atol, max_steps=max_steps, t0=t0)
    return ParameterBatch(experiment, model, tuple(names), engine_of(resolve_solver(model, solver, engine)))
