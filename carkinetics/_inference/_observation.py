"""Observation (residual-error) models: negative log-likelihoods of data given model predictions.

Three families, all differentiable in the prediction and in their scale parameter:

- [`carkinetics.NormalError`][]: additive normal error, `y ~ N(pred, sigma^2)` (same unit as the data).
- [`carkinetics.LogNormalError`][]: multiplicative error, `log y ~ N(log pred, sigma^2)` (`sigma` on the natural-log
  scale, e.g. Stein 2019's additive log-scale residual 0.56).
- [`carkinetics.CensoredError`][]: wraps either of them; data at or below `lloq` (limit of quantification) count
  through the probability mass `P(Y <= lloq)` instead of the density (Beal's M3 method), data at or above `uloq`
  through `P(Y >= uloq)` (used for published lower bounds such as "B-cell aplasia for at least 143 days").
"""

from __future__ import annotations

import abc
import math
from typing import Any

import equinox as eqx
import jax.numpy as jnp
from jax.scipy.special import log_ndtr

from .._core._custom_types import Array

_HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)


def _check_sigma(name: str, sigma: Any) -> None:
    if isinstance(sigma, (int, float)) and not (math.isfinite(sigma) and sigma > 0):
        raise ValueError(f"`sigma` of {name} must be a positive finite number, got {sigma!r}.")


class AbstractObservationModel(eqx.Module):
    """Interface: `nll(pred, obs)` (summed negative log-likelihood) and `residuals(pred, obs)` (standardised)."""

    @abc.abstractmethod
    def transform(self, x: Array) -> Array:
        """The scale on which the error is normal (identity or log)."""

    @abc.abstractmethod
    def scale(self) -> Array:
        """The standard deviation on the transformed scale."""

    def residuals(self, pred: Any, obs: Any) -> Array:
        """Standardised residuals `(h(obs) - h(pred)) / sigma` (h = identity or log)."""
        pred, obs = jnp.asarray(pred), jnp.asarray(obs)
        return (self.transform(obs) - self.transform(pred)) / self.scale()

    def nll(self, pred: Any, obs: Any) -> Array:
        """Negative log-likelihood of `obs` given `pred`, summed over elements (shapes must broadcast)."""
        r = self.residuals(pred, obs)
        jac = self._log_jacobian(jnp.asarray(obs))
        return jnp.sum(0.5 * r**2 + jnp.log(self.scale()) + _HALF_LOG_2PI + jac)

    def _log_jacobian(self, obs: Array) -> Array:
        del obs  # identity transform: no Jacobian term
        return jnp.zeros(())


class NormalError(AbstractObservationModel):
    """Additive normal error with standard deviation `sigma` (unit of the data).

    **Example:**

    ```python
    import carkinetics as ck
    ck.NormalError(32.0).nll(110.0, 142.0)   # 0.5 + log(32) + 0.919
    ```
    """

    sigma: Any

    def __check_init__(self):
        _check_sigma("NormalError", self.sigma)

    def transform(self, x):
        return x

    def scale(self):
        return jnp.asarray(self.sigma)


class LogNormalError(AbstractObservationModel):
    """Multiplicative (log-normal) error: `log(obs) ~ N(log(pred), sigma^2)`; `sigma` is dimensionless.

    Predictions and data must be positive; non-positive values give `nan`, so clip or censor them first.
    The density includes the Jacobian `-log(obs)`, so the likelihood is a proper density of `obs`.

    **Example:** `ck.LogNormalError(0.56).residuals(24000.0, 30000.0)` is `log(1.25) / 0.56`.
    """

    sigma: Any

    def __check_init__(self):
        _check_sigma("LogNormalError", self.sigma)

    def transform(self, x):
        return jnp.log(x)

    def scale(self):
        return jnp.asarray(self.sigma)

    def _log_jacobian(self, obs):
        return jnp.log(obs)


class CensoredError(AbstractObservationModel):
    """Censoring wrapper (Beal M3): data `<= lloq` contribute `-log P(Y <= lloq)`, data `>= uloq` `-log P(Y >= uloq)`.

    **Arguments:**

    - `base`: a [`carkinetics.NormalError`][] or [`carkinetics.LogNormalError`][].
    - `lloq`: lower limit of quantification (data unit), or `None`.
    - `uloq`: upper limit (or a published lower bound on a summary value), or `None`.

    Observations flagged as censored are usually recorded *at* the limit (e.g. `obs = lloq`).

    **Example:**

    ```python
    import carkinetics as ck
    err = ck.CensoredError(ck.LogNormalError(0.3), lloq=1.0)
    err.nll(0.2, 1.0)            # -log Phi((log 1 - log 0.2)/0.3): small, the prediction is below the LLOQ
    ```
    """

    base: AbstractObservationModel
    lloq: float | None = eqx.field(static=True, default=None)
    uloq: float | None = eqx.field(static=True, default=None)

    def __check_init__(self):
        if not isinstance(self.base, (NormalError, LogNormalError)):
            raise ValueError(f"`base` must be a NormalError or LogNormalError, got {type(self.base).__name__}.")
        if self.lloq is None and self.uloq is None:
            raise ValueError("CensoredError needs `lloq`, `uloq` or both; got neither.")
        for name, v in (("lloq", self.lloq), ("uloq", self.uloq)):
            if v is not None and not math.isfinite(v):
                raise ValueError(f"`{name}` must be finite, got {v!r}.")
            if v is not None and isinstance(self.base, LogNormalError) and v <= 0:
                raise ValueError(f"`{name}` must be positive for a log-normal error, got {v!r}.")
        if self.lloq is not None and self.uloq is not None and not self.lloq < self.uloq:
            raise ValueError(f"`lloq` ({self.lloq}) must be below `uloq` ({self.uloq}).")

    def transform(self, x):
        return self.base.transform(x)

    def scale(self):
        return self.base.scale()

    def nll(self, pred, obs):
        pred, obs = jnp.asarray(pred), jnp.asarray(obs)
        pred, obs = jnp.broadcast_arrays(pred, obs)
        s = self.scale()
        hp = self.transform(pred)
        below = jnp.zeros(obs.shape, bool) if self.lloq is None else obs <= self.lloq
        above = jnp.zeros(obs.shape, bool) if self.uloq is None else obs >= self.uloq
        censored = below | above
        safe_obs = jnp.where(censored, jnp.where(below, self.lloq or 1.0, self.uloq or 1.0), obs)
        dens = (
            0.5 * ((self.transform(safe_obs) - hp) / s) ** 2
            + jnp.log(s)
            + _HALF_LOG_2PI
            + self.base._log_jacobian(safe_obs)
        )
        lo = 0.0 if self.lloq is None else self.transform(jnp.asarray(self.lloq, pred.dtype))
        hi = 0.0 if self.uloq is None else self.transform(jnp.asarray(self.uloq, pred.dtype))
        l_below = -log_ndtr((lo - hp) / s)
        l_above = -log_ndtr((hp - hi) / s)
        return jnp.sum(jnp.where(below, l_below, jnp.where(above, l_above, dens)))

    def residuals(self, pred, obs):
        """Standardised residuals; censored observations that the prediction honours give 0."""
        pred, obs = jnp.broadcast_arrays(jnp.asarray(pred), jnp.asarray(obs))
        r = self.base.residuals(pred, obs)
        below = jnp.zeros(obs.shape, bool) if self.lloq is None else (obs <= self.lloq) & (pred <= self.lloq)
        above = jnp.zeros(obs.shape, bool) if self.uloq is None else (obs >= self.uloq) & (pred >= self.uloq)
        return jnp.where(below | above, 0.0, r)
