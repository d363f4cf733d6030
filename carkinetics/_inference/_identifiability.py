"""Identifiability: Laplace (Hessian) covariance, correlations, non-identifiable directions, profile likelihoods.

- [`carkinetics.laplace`][]: the Hessian of the negative log posterior (and of the data term alone) at a fitted
  point, by central differences of the exact (autodiff) gradient, vmapped over the `2n` perturbed points. Its
  inverse is the Laplace covariance on the unconstrained scale; standard deviations in natural units follow by the
  delta method. Eigen-directions of the *data* Hessian with tiny curvature are the directions the data cannot pin
  down; parameters whose posterior sd is close to their prior sd are informed by the prior only.
- [`carkinetics.profile_likelihood`][]: for one parameter, fix it on a grid and re-optimise all others (Adam,
  vmapped over the grid). A profile that stays within the chi-square threshold (1.92 for 95 %, one parameter)
  on one side is flagged practically non-identifiable.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax

from ._fit import FitResult
from ._optimisers import _safe_value_and_grad
from ._problem import CalibrationProblem

#: Half the 95 % quantile of chi-square with 1 degree of freedom: the likelihood-ratio threshold of a profile.
CHI2_95_HALF = 1.920729410347062


class IdentifiabilityWarning(UserWarning):
    """A parameter or a direction of parameters is not determined by the calibration data."""


@eqx.filter_jit
def _grad_batch(problem: CalibrationProblem, zs):
    return jax.vmap(jax.grad(problem.data_nll))(zs)


def _fd_hessian(problem: CalibrationProblem, z, step: float) -> np.ndarray:
    """Hessian of the data negative log-likelihood by central differences of autodiff gradients."""
    n = z.shape[0]
    eye = jnp.eye(n, dtype=z.dtype) * step
    zs = jnp.concatenate([z[None] + eye, z[None] - eye])
    g = np.asarray(_grad_batch(problem, zs))
    h = (g[:n] - g[n:]).T / (2 * step)  # column j: d grad / d z_j
    return 0.5 * (h + h.T)


class LaplaceResult(eqx.Module):
    """Laplace approximation at a fitted point (unconstrained scale `z` unless stated).

    **Fields:** `names`; `z`; `values` (natural units); `hessian` (of the negative log posterior);
    `hessian_data` (of the data term only); `covariance_z`; `sd_z`; `sd` (natural units, delta method);
    `correlation`; `prior_sd_z` (inf where flat); `eigenvalues_data`, `eigenvectors_data` (ascending);
    `warnings` (text of every identifiability warning).
    """

    names: tuple[str, ...] = eqx.field(static=True)
    z: Any
    values: Any
    hessian: Any
    hessian_data: Any
    covariance_z: Any
    sd_z: Any
    sd: Any
    correlation: Any
    prior_sd_z: Any
    eigenvalues_data: Any
    eigenvectors_data: Any
    warnings: tuple[str, ...] = eqx.field(static=True)

    def table(self) -> str:
        """Markdown table: value, sd (natural), sd on the z scale, prior sd, and the ratio posterior/prior sd."""
        head = "| parameter | value | sd | sd (z) | prior sd (z) | posterior/prior sd |\n|---|---|---|---|---|---|"
        rows = []
        for i, n in enumerate(self.names):
            p = float(self.prior_sd_z[i])
            ratio = "" if not math.isfinite(p) else f"{float(self.sd_z[i]) / p:.2f}"
            rows.append(
                f"| {n} | {float(self.values[i]):.5g} | {float(self.sd[i]):.3g} | {float(self.sd_z[i]):.3g} | "
                f"{p:.3g} | {ratio} |"
            )
        return "\n".join([head, *rows])


def laplace(
    problem_or_fit: CalibrationProblem | FitResult,
    z: Any = None,
    *,
    step: float = 1e-4,
    rel_eig_tol: float = 1e-6,
    prior_ratio_tol: float = 0.9,
    corr_tol: float = 0.95,
    warn: bool = True,
) -> LaplaceResult:
    """Laplace covariance, correlation matrix and identifiability diagnostics at `z`.

    **Arguments:**

    - `problem_or_fit`: a [`carkinetics.CalibrationProblem`][] (then pass `z`) or a [`carkinetics.FitResult`][]
      (its best point is used).
    - `step`: central-difference step on the unconstrained scale for the Hessian (of autodiff gradients).
    - `rel_eig_tol`: a data-Hessian eigenvalue below `rel_eig_tol * max eigenvalue` (or negative) marks a
      non-identifiable direction.
    - `prior_ratio_tol`: a posterior sd above this fraction of the prior sd marks a parameter the data do not inform.
    - `corr_tol`: pairs with |correlation| above it are reported.
    - `warn`: also emit each finding as an [`carkinetics.IdentifiabilityWarning`][].

    **Returns:** a [`carkinetics.LaplaceResult`][].
    """
    if isinstance(problem_or_fit, FitResult):
        problem, z = problem_or_fit.problem, problem_or_fit.z if z is None else z
    elif isinstance(problem_or_fit, CalibrationProblem):
        problem = problem_or_fit
        if z is None:
            raise ValueError("Pass `z` (the fitted unconstrained vector) when giving a CalibrationProblem.")
    else:
        raise ValueError(f"Expected a CalibrationProblem or FitResult, got {type(problem_or_fit).__name__}.")
    if not (step > 0 and math.isfinite(step)):
        raise ValueError(f"`step` must be a positive finite number, got {step!r}.")
    z = jnp.asarray(z, dtype=problem.z0.dtype)
    names = problem.names
    h_data = _fd_hessian(problem, z, step)
    h_post = h_data + np.diag(np.asarray(problem.prior_weight))  # the prior is quadratic in z
    msgs: list[str] = []
    evals, evecs = np.linalg.eigh(h_data)
    top = max(float(np.max(np.abs(evals))), 1e-300)
    for k in np.flatnonzero(evals < rel_eig_tol * top):
        v = evecs[:, k]
        order = np.argsort(-np.abs(v))[:3]
        comp = " + ".join(f"{v[j]:+.2f}*{names[j]}" for j in order if abs(v[j]) > 0.1)
        msgs.append(
            f"Non-identifiable direction (data-Hessian eigenvalue {evals[k]:.3g}, max {top:.3g}) "
            f"along {comp} (unconstrained scale): the data cannot pin down this combination."
        )
    try:
        cov = np.linalg.inv(h_post)
        if not np.all(np.isfinite(cov)) or np.any(np.diag(cov) <= 0):
            raise np.linalg.LinAlgError
    except np.linalg.LinAlgError:
        cov = np.linalg.pinv(h_post)
        msgs.append(
            "The Hessian of the negative log posterior is singular or indefinite at this point: the "
            "covariance is a pseudo-inverse (not at a minimum, or flat directions without priors)."
        )
    sd_z = np.sqrt(np.abs(np.diag(cov)))
    corr = cov / np.outer(sd_z, sd_z)
    w = np.asarray(problem.prior_weight)
    prior_sd = np.where(w > 0, 1.0 / np.sqrt(np.where(w > 0, w, 1.0)), np.inf)
    for i, n in enumerate(names):
        if np.isfinite(prior_sd[i]) and sd_z[i] > prior_ratio_tol * prior_sd[i]:
            msgs.append(
                f"Parameter {n!r} is not informed by the data: posterior sd {sd_z[i]:.3g} is "
                f"{sd_z[i] / prior_sd[i]:.0%} of its prior sd {prior_sd[i]:.3g} (unconstrained scale)."
            )
    for i in range(len(names)):
        for j in range(i + 1, len(names)):
            if abs(corr[i, j]) > corr_tol:
                msgs.append(
                    f"Parameters {names[i]!r} and {names[j]!r} are strongly correlated "
                    f"(r = {corr[i, j]:+.3f}): only a combination is determined."
                )
    # delta method: d value / d z for each transform
    zz = jnp.asarray(z)
    jac = np.asarray(jax.jacfwd(lambda q: problem.values(q))(zz))
    dvals = np.diag(jac)
    values = np.asarray(problem.values(zz))
    if warn:
        for m in msgs:
            warnings.warn(m, IdentifiabilityWarning, stacklevel=2)
    return LaplaceResult(
        names,
        np.asarray(z),
        values,
        h_post,
        h_data,
        cov,
        sd_z,
        np.abs(dvals) * sd_z,
        corr,
        prior_sd,
        evals,
        evecs,
        tuple(msgs),
    )


# --------------------------------------------------------------------------------------------------------------
# Profile likelihood


@eqx.filter_jit
def _profile_batch(problem: CalibrationProblem, z_hat, index, grid, which: str, steps: int, learning_rate):
    # `index` is a traced integer: profiling another parameter of the same problem compiles nothing new
    fn = {"loss": problem.loss, "data": problem.data_nll}[which]
    n = z_hat.shape[0]
    mask = jnp.ones((n,), z_hat.dtype).at[index].set(0.0)

    def one(zi):
        z0 = z_hat.at[index].set(zi)
        sched = optax.cosine_decay_schedule(learning_rate, max(steps, 1), alpha=0.02)
        opt = optax.chain(optax.clip_by_global_norm(5.0), optax.adam(sched))

        def step(carry, _):
            z, state, best_z, best_v = carry
            val, g, ok = _safe_value_and_grad(fn, z)
            better = ok & (val < best_v)
            best_z = jnp.where(better, z, best_z)
            best_v = jnp.where(better, val, best_v)
            upd, state = opt.update(g * mask, state, z)
            z_new = optax.apply_updates(z, upd)  # an array (optax types it as a pytree)
            return (jnp.where(ok, z_new, z), state, best_z, best_v), None  # pyright: ignore[reportArgumentType]

        init = (z0, opt.init(z0), z0, jnp.asarray(jnp.inf, z_hat.dtype))
        (z, _, best_z, best_v), _ = jax.lax.scan(step, init, None, length=steps)
        v_end = fn(z)
        take_end = jnp.isfinite(v_end) & (v_end < best_v)
        return jnp.where(take_end, v_end, best_v), jnp.where(take_end, z, best_z)

    return jax.vmap(one)(grid)


class Profile(eqx.Module):
    """A profile likelihood of one parameter.

    **Fields:** `name`; `values` (natural units) and `z` (unconstrained) of the grid; `objective` (re-optimised
    objective at each grid point); `delta` (objective minus its minimum); `threshold` (1.92 for 95 %);
    `identifiable_lower` / `identifiable_upper` (whether the profile rises above the threshold below / above the
    optimum within the grid); `ci` (the 95 % profile interval in natural units, with `nan` for an open side).
    """

    name: str = eqx.field(static=True)
    values: Any
    z: Any
    objective: Any
    delta: Any
    threshold: float = eqx.field(static=True)
    identifiable_lower: bool = eqx.field(static=True)
    identifiable_upper: bool = eqx.field(static=True)
    ci: tuple[float, float] = eqx.field(static=True)
    which: str = eqx.field(static=True)

    @property
    def identifiable(self) -> bool:
        """True when the profile exceeds the threshold on both sides of the optimum."""
        return self.identifiable_lower and self.identifiable_upper

    def summary(self) -> str:
        lo, hi = self.ci
        flag = (
            "identifiable"
            if self.identifiable
            else "NOT identifiable (profile flat on the "
            + " and ".join(
                s for s, ok in (("lower", self.identifiable_lower), ("upper", self.identifiable_upper)) if not ok
            )
            + " side)"
        )
        return f"{self.name}: {flag}; 95 % profile interval [{lo:.4g}, {hi:.4g}] ({self.which} objective)"


def profile_likelihood(
    problem_or_fit: CalibrationProblem | FitResult,
    name: str,
    z_hat: Any = None,
    *,
    span: float = math.log(10.0),
    n_points: int = 9,
    steps: int = 200,
    learning_rate: float = 0.05,
    which: str = "data",
    threshold: float = CHI2_95_HALF,
    warn: bool = True,
) -> Profile:
    """Profile likelihood of parameter `name`: fix it on a grid around the optimum, re-optimise all others.

    **Arguments:**

    - `problem_or_fit`: a [`carkinetics.FitResult`][] (its best point) or a problem plus `z_hat`.
    - `name`: the estimated parameter to profile.
    - `span`: half-width of the grid on the unconstrained scale (`log(10)`: a factor 10 either way for a
      log-transformed parameter); `n_points`: grid size (odd, so the optimum is on it).
    - `steps`, `learning_rate`: Adam budget of each re-optimisation (all grid points run vmapped at once, warm
      started from the optimum).
    - `which`: `"data"` (default: the data negative log-likelihood, so priors cannot hide non-identifiability)
      or `"loss"` (the negative log posterior).
    - `threshold`: rise of the objective that closes a side (1.92: 95 % for one parameter).
    - `warn`: emit an [`carkinetics.IdentifiabilityWarning`][] if a side stays open.

    **Returns:** a [`carkinetics.Profile`][].
    """
    if isinstance(problem_or_fit, FitResult):
        problem, z_hat = problem_or_fit.problem, problem_or_fit.z if z_hat is None else z_hat
    elif isinstance(problem_or_fit, CalibrationProblem):
        problem = problem_or_fit
        if z_hat is None:
            raise ValueError("Pass `z_hat` (the fitted unconstrained vector) when giving a CalibrationProblem.")
    else:
        raise ValueError(f"Expected a CalibrationProblem or FitResult, got {type(problem_or_fit).__name__}.")
    if name not in problem.names:
        raise ValueError(f"{name!r} is not an estimated parameter; estimated are {list(problem.names)}.")
    if which not in ("data", "loss"):
        raise ValueError(f"`which` must be 'data' or 'loss', got {which!r}.")
    if isinstance(n_points, bool) or not isinstance(n_points, int) or n_points < 3 or n_points % 2 == 0:
        raise ValueError(f"`n_points` must be an odd int >= 3, got {n_points!r}.")
    if not (span > 0 and math.isfinite(span)):
        raise ValueError(f"`span` must be a positive finite number, got {span!r}.")
    z_hat = jnp.asarray(z_hat, dtype=problem.z0.dtype)
    i = problem.names.index(name)
    grid = z_hat[i] + jnp.linspace(-span, span, n_points, dtype=z_hat.dtype)
    obj, zs = _profile_batch(
        problem, z_hat, jnp.asarray(i), grid, which, int(steps), jnp.asarray(learning_rate, z_hat.dtype)
    )
    obj = np.asarray(obj)
    centre = n_points // 2
    best = float(np.nanmin(obj))
    delta = obj - best
    lower_ok = bool(np.any(delta[:centre] > threshold))
    upper_ok = bool(np.any(delta[centre + 1 :] > threshold))
    vals = np.asarray(jax.vmap(problem.values)(zs))[:, i]

    def edge(idx: Sequence[int]) -> float:
        prev = None
        for k in idx:
            if delta[k] > threshold:
                if prev is None:
                    return float(vals[k])
                # linear interpolation of the crossing between grid points prev and k
                f = (threshold - delta[prev]) / (delta[k] - delta[prev])
                return float(vals[prev] + f * (vals[k] - vals[prev]))
            prev = k
        return math.nan

    ci = (edge(range(centre, -1, -1)), edge(range(centre, n_points)))
    prof = Profile(name, vals, np.asarray(grid), obj, delta, float(threshold), lower_ok, upper_ok, ci, which)
    if warn and not prof.identifiable:
        warnings.warn(prof.summary(), IdentifiabilityWarning, stacklevel=2)
    return prof
