"""Virtual populations: inter-individual variability, covariates, and draws from a calibrated uncertainty.

Random effects live in the unconstrained space of [`carkinetics.ParameterSpace`][]: for a positive parameter
this is `log`, so `theta_i = theta_typ * exp(eta_i)` is the usual log-normal inter-individual variability (IIV)
with `eta ~ N(0, Omega)`; for a parameter bounded on both sides (a fraction) it is the scaled logit, so every
sampled value stays inside its declared bounds. Covariates act on the typical value through power models,
`theta_typ,i = theta_typ * (cov_i / reference) ** exponent` (e.g. allometric clearance, exponent 0.75).

The result is a [`carkinetics.Population`][], which [`carkinetics.sweep_model`][] simulates in chunks (the
`Population` itself or its `samples` dict), with checkpoints and on every device of every process after
[`carkinetics.distributed_setup`][]. A population is drawn from a key, so every process of a multi-process run
draws the same members.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .._core._parameters import ParameterSpace, get_parameter, parameters


class CovariateEffect(NamedTuple):
    """Power-model covariate effect: `theta_typ,i = theta_typ * (covariate_i / reference) ** exponent`.

    **Example:** allometric clearance, `ck.CovariateEffect("cl", "weight_kg", 0.75, 70.0)`.
    """

    parameter: str
    covariate: str
    exponent: float
    reference: float


class Population(eqx.Module):
    """A virtual population of `n` members.

    **Fields:**

    - `samples`: `{parameter name: (n,) array}` in natural units, ready for [`carkinetics.sweep_model`][].
    - `covariates`: `{covariate name: (n,) array}` (e.g. `weight_kg`, `height_cm`, `bsa_m2`).
    - `eta`: `(n, k)` random effects in the unconstrained space, columns ordered as `names`.
    - `names`: the parameters with random effects (or drawn from the posterior).
    """

    samples: dict[str, np.ndarray]
    covariates: dict[str, np.ndarray]
    eta: np.ndarray
    names: tuple[str, ...] = eqx.field(static=True)


def _check_n(n: Any) -> int:
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"`n` (members) must be a positive int, got {n!r}.")
    return int(n)


def _check_cov(cov: Any, k: int, what: str) -> np.ndarray:
    cov = np.asarray(cov, dtype=float)
    if cov.shape != (k, k):
        raise ValueError(f"`{what}` must be a ({k}, {k}) matrix, got shape {cov.shape}.")
    if not np.all(np.isfinite(cov)) or not np.allclose(cov, cov.T, rtol=1e-10, atol=1e-12):
        raise ValueError(f"`{what}` must be finite and symmetric.")
    eig = np.linalg.eigvalsh(cov)
    if eig.min() < -1e-10 * max(1.0, eig.max()):
        raise ValueError(f"`{what}` must be positive semi-definite; its smallest eigenvalue is {eig.min():.3g}.")
    return cov


def _mvn(key: jax.Array, n: int, cov: np.ndarray) -> np.ndarray:
    # Eigen-factorisation rather than Cholesky, so that singular (perfectly correlated) covariances work.
    w, v = np.linalg.eigh(cov)
    factor = v * np.sqrt(np.clip(w, 0.0, None))
    z = np.asarray(
        jax.random.normal(key, (n, cov.shape[0]), dtype=jnp.float64 if jax.config.jax_enable_x64 else None),  # pyright: ignore[reportAttributeAccessIssue]
        dtype=float,
    )
    return z @ factor.T


def _natural(space: ParameterSpace, model: Any, z: np.ndarray) -> np.ndarray:
    f = jax.vmap(lambda zi: space.values(space.to_model(model, zi)))
    return np.asarray(f(jnp.asarray(z)), dtype=float)


def _unconstrained(space: ParameterSpace, model: Any, values: np.ndarray) -> np.ndarray:
    f = jax.vmap(lambda v: space.to_vector(space.with_values(model, v)))
    return np.array(f(jnp.asarray(values)), dtype=float)  # a writable copy


def sample_covariates(
    key: jax.Array,
    n: int,
    *,
    weight_kg: tuple[float, float] = (70.0, 0.2),
    height_cm: tuple[float, float] = (170.0, 0.05),
    correlation: float = 0.5,
) -> dict[str, np.ndarray]:
    """Draw body weight and height (log-normal, correlated on the log scale) and the Mosteller BSA.

    **Arguments:**

    - `weight_kg`, `height_cm`: `(median, sd of the log)`. The defaults (70 kg, 0.2; 170 cm, 0.05; log-scale
      correlation 0.5) are an illustrative adult population, a modelling assumption [A], not a fitted
      demography; pass the trial's values.
    - `correlation`: correlation of log weight and log height, in (-1, 1).

    **Returns:** `{"weight_kg", "height_cm", "bsa_m2"}`, each `(n,)`; BSA (m²) by Mosteller (1987),
    `sqrt(height_cm * weight_kg / 3600)`.

    **Example:**

    ```python
    import jax, carkinetics as ck
    cov = ck.sample_covariates(jax.random.key(0), 100)
    cov["bsa_m2"].shape   # (100,)
    ```
    """
    n = _check_n(n)
    for name, (median, sd) in (("weight_kg", weight_kg), ("height_cm", height_cm)):
        if not (median > 0 and sd >= 0 and np.isfinite(median) and np.isfinite(sd)):
            raise ValueError(f"`{name}` must be (positive median, non-negative log-sd), got {(median, sd)!r}.")
    if not -1.0 < correlation < 1.0:
        raise ValueError(f"`correlation` must lie in (-1, 1), got {correlation!r}.")
    sw, sh = weight_kg[1], height_cm[1]
    cov = np.array([[sw**2, correlation * sw * sh], [correlation * sw * sh, sh**2]])
    eta = _mvn(key, n, cov)
    w = weight_kg[0] * np.exp(eta[:, 0])
    h = height_cm[0] * np.exp(eta[:, 1])
    return {"weight_kg": w, "height_cm": h, "bsa_m2": np.sqrt(h * w / 3600.0)}


def virtual_population(
    model: Any,
    key: jax.Array,
    n: int,
    *,
    omega: Mapping[str, float] | None = None,
    correlation: Any = None,
    covariance: Any = None,
    names: Sequence[str] | None = None,
    covariates: Mapping[str, Any] | None = None,
    effects: Sequence[CovariateEffect] = (),
) -> Population:
    """Sample `n` virtual patients: typical values of `model`, covariate effects, and correlated IIV.

    **Arguments:**

    - `model`: provides the typical values (its current parameter values) and bounds.
    - `key`: PRNG key; `n`: number of members.
    - `omega`: `{parameter: omega}`, the standard deviation of the random effect in the unconstrained space
      (for a positive parameter, the SD of log theta; omega = 0.3 is about 30 % CV).
    - `correlation`: optional `(k, k)` correlation matrix of the random effects, ordered as `omega`.
    - `covariance`, `names`: alternatively the full `(k, k)` covariance Omega of the random effects of the
      parameters `names` (e.g. a NONMEM `$OMEGA BLOCK`).
    - `covariates`: `{name: (n,) array}` (e.g. from [`carkinetics.sample_covariates`][]), used by `effects`.
    - `effects`: [`carkinetics.CovariateEffect`][] power models on typical values.

    **Returns:** a [`carkinetics.Population`][] (simulate it with [`carkinetics.sweep_model`][]); parameters with a
    covariate effect but no IIV also appear in `samples`.

    **Raises:** `ValueError` for unknown parameters/covariates, a malformed Omega, or a typical value that
    lies on a bound.

    **Example:**

    ```python
    import jax, carkinetics as ck
    from carkinetics.models import OneCompartmentPK
    cov = ck.sample_covariates(jax.random.key(0), 500)
    pop = ck.virtual_population(OneCompartmentPK(), jax.random.key(1), 500, omega={"cl": 0.3, "v": 0.2},
                                correlation=[[1.0, 0.5], [0.5, 1.0]], covariates=cov,
                                effects=[ck.CovariateEffect("cl", "weight_kg", 0.75, 70.0)])
    pop.samples["cl"].shape   # (500,)
    ```
    """
    n = _check_n(n)
    allp = parameters(model)
    if covariance is not None:
        if omega is not None or correlation is not None:
            raise ValueError(
                "Give either `omega` (with optional `correlation`) or `covariance` with `names`, not both."
            )
        if names is None:
            raise ValueError("`names` is required with `covariance` (the parameters of its rows and columns).")
        iiv = tuple(names)
        cov = _check_cov(covariance, len(iiv), "covariance")
    else:
        omega = dict(omega or {})
        iiv = tuple(omega)
        sd = np.array([float(omega[k]) for k in iiv])
        if np.any(~np.isfinite(sd)) or np.any(sd < 0):
            raise ValueError(f"`omega` values must be finite and non-negative, got {omega!r}.")
        corr = np.eye(len(iiv)) if correlation is None else _check_cov(correlation, len(iiv), "correlation")
        if not np.allclose(np.diag(corr), 1.0):
            raise ValueError("`correlation` must have ones on its diagonal.")
        cov = corr * np.outer(sd, sd)
    covariates = {k: np.asarray(v, dtype=float) for k, v in (covariates or {}).items()}
    for k, v in covariates.items():
        if v.shape != (n,):
            raise ValueError(f"Covariate {k!r} must have shape ({n},), got {v.shape}.")
        if not np.all(np.isfinite(v)):
            raise ValueError(f"Covariate {k!r} has non-finite values.")
    effects = [CovariateEffect(*e) for e in effects]
    for e in effects:
        if e.covariate not in covariates:
            raise ValueError(
                f"Covariate effect on {e.parameter!r} uses {e.covariate!r}, which is not in `covariates` "
                f"(given: {sorted(covariates)})."
            )
        if not e.reference > 0:
            raise ValueError(f"The reference of the covariate effect {e!r} must be positive.")
        if np.any(covariates[e.covariate] <= 0):
            raise ValueError(f"Covariate {e.covariate!r} must be positive for the power model on {e.parameter!r}.")
    names_all = tuple(dict.fromkeys(list(iiv) + [e.parameter for e in effects]))
    for p in names_all:
        if p not in allp:
            raise ValueError(f"Unknown parameter {p!r}; known parameters are {sorted(allp)}.")
    if not names_all:
        raise ValueError("Nothing varies: give `omega`/`covariance` and/or covariate `effects`.")
    space = ParameterSpace(model, names_all)
    typical = np.array([float(get_parameter(model, p)) for p in names_all])
    theta_typ = np.tile(typical, (n, 1))
    for e in effects:
        j = names_all.index(e.parameter)
        theta_typ[:, j] *= (covariates[e.covariate] / e.reference) ** e.exponent
    lo = np.array(space.lower)
    hi = np.array(space.upper)
    bad = np.any((theta_typ <= lo) | (theta_typ >= hi), axis=1)
    if np.any(bad):
        j = int(np.flatnonzero(bad)[0])
        raise ValueError(
            f"Covariate effects move the typical values of member {j} to {dict(zip(names_all, theta_typ[j]))}, "
            "on or outside the declared bounds."
        )
    z = _unconstrained(space, model, theta_typ)
    eta = _mvn(key, n, cov) if iiv else np.zeros((n, 0))
    for i, p in enumerate(iiv):
        z[:, names_all.index(p)] += eta[:, i]
    values = _natural(space, model, z)
    samples = {p: values[:, j] for j, p in enumerate(names_all)}
    return Population(samples, covariates, eta, iiv)


def sample_posterior(
    model: Any,
    key: jax.Array,
    n: int,
    mean: Any,
    covariance: Any,
    names: Sequence[str] | None = None,
    *,
    space: ParameterSpace | None = None,
) -> Population:
    """Draw `n` parameter sets from a Gaussian in the unconstrained space of a [`carkinetics.ParameterSpace`][].

    This is how a calibration's uncertainty (e.g. a Laplace approximation: the optimum `mean = z_hat` and the
    inverse Hessian `covariance`, both in `ParameterSpace` coordinates) becomes a population of plausible
    parameter sets.

    **Arguments:**

    - `model`: supplies the bounds (and the values of parameters that are not drawn).
    - `mean`: `(k,)` mean in unconstrained coordinates; `covariance`: `(k, k)`.
    - `names` or `space`: the parameters (dotted names) or the `ParameterSpace` used in the calibration.

    **Returns:** a [`carkinetics.Population`][] with `samples` in natural units and `eta = z - mean`.

    **Example:**

    ```python
    import jax, numpy as np, carkinetics as ck
    from carkinetics.models import OneCompartmentPK
    m = OneCompartmentPK()
    space = ck.ParameterSpace(m, ["cl", "v"])
    pop = ck.sample_posterior(m, jax.random.key(0), 200, space.to_vector(m), np.diag([0.01, 0.04]), space=space)
    ```
    """
    n = _check_n(n)
    if space is None:
        if names is None:
            raise ValueError("Give the parameter `names` or the calibration's `space`.")
        space = ParameterSpace(model, list(names))
    elif names is not None and tuple(names) != space.names:
        raise ValueError(f"`names` {list(names)} differ from `space.names` {list(space.names)}.")
    k = len(space.names)
    mean = np.asarray(mean, dtype=float)
    if mean.shape != (k,) or not np.all(np.isfinite(mean)):
        raise ValueError(f"`mean` must be a finite ({k},) vector in unconstrained coordinates, got shape {mean.shape}.")
    cov = _check_cov(covariance, k, "covariance")
    eta = _mvn(key, n, cov)
    values = _natural(space, model, mean[None, :] + eta)
    return Population({p: values[:, j] for j, p in enumerate(space.names)}, {}, eta, space.names)


def percentile_bands(values: Any, percentiles: Sequence[float] = (5.0, 50.0, 95.0), *, ok: Any = None) -> np.ndarray:
    """Pointwise percentiles over members: `values` `(n, T)` -> `(len(percentiles), T)`.

    Failed members (`ok` False) and `nan` entries are excluded, e.g. for a visual predictive check of the
    `"observables"` kept by [`carkinetics.sweep_model`][].

    **Example:** `ck.percentile_bands(np.arange(12.0).reshape(4, 3), (50,))` is `[[4.5, 5.5, 6.5]]`.
    """
    v = np.asarray(values, dtype=float)
    if v.ndim != 2:
        raise ValueError(f"`values` must have shape (members, times), got {v.shape}.")
    q = np.asarray(percentiles, dtype=float)
    if q.ndim != 1 or np.any((q < 0) | (q > 100)):
        raise ValueError(f"`percentiles` must be numbers in [0, 100], got {list(percentiles)}.")
    if ok is not None:
        ok = np.asarray(ok, dtype=bool)
        if ok.shape != (v.shape[0],):
            raise ValueError(f"`ok` must have shape ({v.shape[0]},), got {ok.shape}.")
        v = v[ok]
    if v.shape[0] == 0:
        raise ValueError("No successful members to compute percentiles from.")
    return np.nanpercentile(v, q, axis=0)
