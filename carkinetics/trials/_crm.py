"""The one-parameter power-model continual reassessment method (CRM) of O'Quigley, Pepe & Fisher (1990)."""

from __future__ import annotations

import math
import numbers
from typing import ClassVar

import equinox as eqx
import jax.numpy as jnp
import numpy as np

from .._core._custom_types import Array, ArrayLike, Bool, Float, Int
from ._base import AbstractDesign, Decision, TrialState, action_from_move
from ._validation import check_open_probability, check_positive_real


class CRMPosterior(eqx.Module):
    """The CRM posterior given the data (from [`carkinetics.trials.CRM.posterior`][]).

    **Fields:**

    - `beta_mean`, `beta_variance`: posterior mean and variance of the model parameter `beta`.
    - `dlt_plug_in`: `skeleton ** exp(beta_mean)`, the DLT estimate of the `dfcrm` R package, shape `(n_doses,)`.
    - `dlt_mean`: posterior mean of each dose's DLT probability `E[skeleton ** exp(beta) | data]`.
    - `overdose_probability`: `P(p_d > target | data)` for each dose.
    """

    beta_mean: Float[Array, ""]
    beta_variance: Float[Array, ""]
    dlt_plug_in: Float[Array, " doses"]
    dlt_mean: Float[Array, " doses"]
    overdose_probability: Float[Array, " doses"]


class CRM(AbstractDesign):
    """The Bayesian continual reassessment method with the one-parameter power ("empiric") model.

    The DLT probability of dose `d` is `p_d = s_d ** exp(beta)` for the skeleton (prior guesses) `s`, with
    `beta ~ Normal(0, prior_variance)`; the default variance 1.34 is that of the `dfcrm` R package
    (`scale = sqrt(1.34)`). The posterior is computed by the trapezoid rule on a fixed grid of
    `n_quadrature` points over `|beta| <= 10 sqrt(prior_variance)` (the prior density there is below `e^-50`), in
    log space: posterior means are accurate to about 1e-12 and tail probabilities to about 1e-7 (checked against
    adaptive quadrature), with no data-dependent control flow (`jit`/`vmap`).

    After each cohort the dose whose DLT estimate is closest to the target is recommended (the lowest of equally
    close doses); as in `dfcrm`'s simulations (`restrict=TRUE`), the next dose is at most one level above the
    current dose (no skipping) and not above it when the latest cohort's DLT rate was at least the target
    (coherence). The estimate is `dfcrm`'s plug-in `s_d ** exp(E[beta])` (`plug_in=True`) or the posterior mean of
    `p_d` (`plug_in=False`). The trial runs to its full sample size, unless overdose control is on.

    Overdose control (`overdose_cutoff`, off by default): a dose with `P(p_d > target | data) > overdose_cutoff`
    is eliminated together with all higher doses (and stays eliminated); the recommendation is restricted to the
    remaining doses, and the trial stops with no MTD when the lowest dose is eliminated.

    The MTD (`select_mtd`) is the recommendation from all the data (without the no-skipping restriction), or -1
    when overdose control eliminates the lowest dose.

    **Arguments:**

    - `target`: target DLT rate, in (0, 1).
    - `skeleton`: prior DLT guesses per dose, strictly increasing in (0, 1), lowest dose first.
    - `prior_variance`: variance of the normal prior on `beta` (default 1.34).
    - `overdose_cutoff`: posterior probability of overdosing above which doses are eliminated, in (0, 1), or
      None for no overdose control (default).
    - `plug_in`: DLT estimate used for decisions (default True, as `dfcrm`).
    - `n_quadrature`: grid points of the quadrature (default 2001, at least 101).

    **Example:**

    ```python
    import jax
    from carkinetics.trials import CRM, operating_characteristics
    design = CRM(target=0.3, skeleton=[0.05, 0.12, 0.25, 0.40, 0.55])
    post = design.posterior(n_patients=[3, 3, 0, 0, 0], n_dlt=[0, 1, 0, 0, 0])
    post.dlt_plug_in                                  # updated DLT estimates per dose
    oc = operating_characteristics(design, true_dlt=[0.02, 0.05, 0.3, 0.65, 0.85], n_trials=1000,
                                   cohort_size=3, n_cohorts=10, key=jax.random.key(21))
    float(oc.selection_probability[2])                # about 0.9
    ```

    ??? cite "References"

        ```bibtex
        @article{oquigley1990continual,
          author  = {O'Quigley, John and Pepe, Margaret and Fisher, Lloyd},
          title   = {Continual Reassessment Method: A Practical Design for Phase 1 Clinical Trials in Cancer},
          journal = {Biometrics},
          volume  = {46},
          number  = {1},
          pages   = {33--48},
          year    = {1990},
          doi     = {10.2307/2531628},
        }
        @book{cheung2011dose,
          author    = {Cheung, Ying Kuen},
          title     = {Dose Finding by the Continual Reassessment Method},
          publisher = {Chapman \\& Hall/CRC},
          year      = {2011},
        }
        ```
    """

    name: ClassVar[str] = "CRM"

    target: float = eqx.field(static=True)
    skeleton: Float[Array, " doses"]
    prior_variance: float = eqx.field(static=True)
    overdose_cutoff: float | None = eqx.field(static=True)
    plug_in: bool = eqx.field(static=True)
    n_quadrature: int = eqx.field(static=True)
    # the quadrature grid and the data-independent tables on it, computed once at construction
    _beta: Float[Array, " grid"] = eqx.field(repr=False)
    _log_terms: Float[Array, "grid two_doses"] = eqx.field(repr=False)  # [log p_d(beta), log(1 - p_d(beta))]
    _slope_terms: Float[Array, "grid two_doses"] = eqx.field(repr=False)  # their derivatives in beta
    _p: Float[Array, "grid doses"] = eqx.field(repr=False)

    def __init__(
        self,
        target: float,
        skeleton: Float[ArrayLike, " doses"],
        prior_variance: float = 1.34,
        overdose_cutoff: float | None = None,
        plug_in: bool = True,
        n_quadrature: int = 2001,
    ):
        self.target = check_open_probability("CRM", "target", target)
        try:
            s = np.asarray(skeleton, dtype=float)
        except (TypeError, ValueError):
            raise ValueError(f"CRM: `skeleton` must be a 1-D array of DLT probabilities; got {skeleton!r}.") from None
        if s.ndim != 1 or s.shape[0] < 2:
            raise ValueError(
                f"CRM: `skeleton` must be a 1-D array with one probability per dose and at least two "
                f"doses; got shape {s.shape}."
            )
        if not np.all(np.isfinite(s)) or np.any(s <= 0.0) or np.any(s >= 1.0) or np.any(np.diff(s) <= 0.0):
            raise ValueError(
                f"CRM: `skeleton` must be strictly increasing with every entry strictly between 0 and "
                f"1; got {s.tolist()}."
            )
        self.skeleton = jnp.asarray(s)
        self.prior_variance = check_positive_real("CRM", "prior_variance", prior_variance)
        self.overdose_cutoff = (
            None if overdose_cutoff is None else check_open_probability("CRM", "overdose_cutoff", overdose_cutoff)
        )
        if not isinstance(plug_in, bool):
            raise ValueError(f"CRM: `plug_in` must be True or False; got {plug_in!r}.")
        self.plug_in = plug_in
        if isinstance(n_quadrature, bool) or not isinstance(n_quadrature, numbers.Integral) or n_quadrature < 101:
            raise ValueError(f"CRM: `n_quadrature` must be an integer of at least 101; got {n_quadrature!r}.")
        self.n_quadrature = int(n_quadrature)
        half_width = 10.0 * math.sqrt(self.prior_variance)
        beta = np.linspace(-half_width, half_width, self.n_quadrature)
        log_p = np.exp(beta)[:, None] * np.log(s)[None, :]  # log p_d(beta) = exp(beta) log s_d
        self._beta = jnp.asarray(beta)
        self._log_terms = jnp.asarray(np.concatenate([log_p, np.log(-np.expm1(log_p))], axis=1))
        # d/dbeta log p = log p; d/dbeta log(1 - p) = -log p * p / (1 - p) (bounded: -> 1 as p -> 1, 0 as p -> 0)
        slope_1mp = np.exp(log_p) * (log_p / np.expm1(log_p))
        self._slope_terms = jnp.asarray(np.concatenate([log_p, slope_1mp], axis=1))
        self._p = jnp.asarray(np.exp(log_p))

    def check_trial(self, n_doses: int, cohort_size: int) -> None:
        del cohort_size  # any cohort size
        if n_doses != self.skeleton.shape[0]:
            raise ValueError(
                f"CRM: the `skeleton` has {self.skeleton.shape[0]} doses but the trial has {n_doses}; "
                f"give one prior guess per dose."
            )

    @eqx.filter_jit
    def posterior(self, n_patients: Int[ArrayLike, " doses"], n_dlt: Int[ArrayLike, " doses"]) -> CRMPosterior:
        """The posterior of `beta` and of the DLT probabilities given `n_dlt` DLTs among `n_patients` per dose."""
        dtype = self._p.dtype
        n = jnp.asarray(n_patients).astype(dtype)
        y = jnp.asarray(n_dlt).astype(dtype)
        log_s = jnp.log(self.skeleton.astype(dtype))
        beta = self._beta
        h = beta[1] - beta[0]
        # one matrix-vector product (under vmap one matrix product, much faster than two)
        counts = jnp.concatenate([y, n - y])
        log_post = self._log_terms @ counts - 0.5 * beta**2 / self.prior_variance
        density = jnp.exp(log_post - jnp.max(log_post))
        weights = density.at[0].multiply(0.5).at[-1].multiply(0.5) * h  # trapezoid rule
        mass = jnp.sum(weights)
        beta_mean = jnp.sum(weights * beta) / mass
        beta_variance = jnp.sum(weights * (beta - beta_mean) ** 2) / mass
        dlt_mean = (weights @ self._p) / mass
        # p_d > target  <=>  beta < t_d = log(log(target) / log(s_d)). The posterior CDF at t_d integrates the
        # cubic Hermite interpolant of the density (values and exact slopes at the grid points): fourth order, where
        # interpolating the trapezoid rule's cumulative sums would be second order (about 1e-4 here).
        slope = density * (self._slope_terms @ counts - beta / self.prior_variance)
        cells = 0.5 * h * (density[1:] + density[:-1]) + h**2 / 12.0 * (slope[:-1] - slope[1:])
        cumulative = jnp.concatenate([jnp.zeros(1, dtype=dtype), jnp.cumsum(cells)])
        threshold = jnp.log(jnp.log(jnp.asarray(self.target, dtype=dtype)) / log_s)
        cell = jnp.clip(jnp.floor((threshold - beta[0]) / h).astype(int), 0, beta.shape[0] - 2)
        u = jnp.clip((threshold - beta[cell]) / h, 0.0, 1.0)
        partial = h * (
            (u**4 / 2 - u**3 + u) * density[cell]
            + (-(u**4) / 2 + u**3) * density[cell + 1]
            + h * (u**4 / 4 - 2 * u**3 / 3 + u**2 / 2) * slope[cell]
            + h * (u**4 / 4 - u**3 / 3) * slope[cell + 1]
        )
        overdose = jnp.clip((cumulative[cell] + partial) / cumulative[-1], 0.0, 1.0)
        return CRMPosterior(
            beta_mean=beta_mean,
            beta_variance=beta_variance,
            dlt_plug_in=jnp.exp(jnp.exp(beta_mean) * log_s),
            dlt_mean=dlt_mean,
            overdose_probability=overdose,
        )

    def _recommend(
        self, n: Int[Array, " doses"], y: Int[Array, " doses"], eliminated: Bool[Array, " doses"]
    ) -> tuple[Int[Array, ""], Bool[Array, " doses"]]:
        post = self.posterior(n, y)
        if self.overdose_cutoff is not None:
            eliminated = eliminated | (jnp.cumsum(post.overdose_probability > self.overdose_cutoff) > 0)
        estimate = post.dlt_plug_in if self.plug_in else post.dlt_mean
        distance = jnp.where(eliminated, jnp.inf, jnp.abs(estimate - self.target))
        return jnp.argmin(distance), eliminated

    @eqx.filter_jit
    def decide(self, state: TrialState) -> Decision:
        d = state.current
        recommended, eliminated = self._recommend(state.n_patients, state.n_dlt, state.eliminated)
        next_dose = jnp.minimum(recommended, d + 1)  # no skipping
        dtype = jnp.result_type(float)
        cohort_rate = state.last_cohort_dlt.astype(dtype) / jnp.maximum(state.last_cohort_patients, 1).astype(dtype)
        next_dose = jnp.where(cohort_rate >= self.target, jnp.minimum(next_dose, d), next_dose)  # coherence
        stop = eliminated[0]
        next_dose = jnp.where(stop, d, next_dose)
        return Decision(action=action_from_move(next_dose, d, stop), next_dose=next_dose, eliminated=eliminated)

    @eqx.filter_jit
    def select_mtd(self, n_patients: Int[ArrayLike, " doses"], n_dlt: Int[ArrayLike, " doses"]) -> Int[Array, ""]:
        """The dose whose DLT estimate from all the data is closest to the target; -1 if overdose control
        eliminates the lowest dose."""
        n = jnp.asarray(n_patients)
        recommended, eliminated = self._recommend(n, jnp.asarray(n_dlt), jnp.zeros(n.shape, dtype=bool))
        return jnp.where(eliminated[0], -1, recommended)
