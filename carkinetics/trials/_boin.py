"""The Bayesian optimal interval (BOIN) design of Liu & Yuan (2015), as in the BOIN R package."""

from __future__ import annotations

import math
import numbers
from typing import ClassVar

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.scipy.special as jsp
import numpy as np

from .._core._custom_types import Array, ArrayLike, Bool, Float, Int
from ._base import AbstractDesign, Decision, TrialState, action_from_move, at_or_above
from ._isotonic import isotonic_regression
from ._validation import check_open_probability, check_positive_int

# The BOIN R package decides "de-escalate if y >= b_d" with b_d the smallest integer strictly above lambda_d * n,
# treating lambda_d * n within this distance of an integer as that integer.
_BOUNDARY_TOL = 1e-12
# Pseudo-counts of the Beta(0.05, 0.05) prior of the BOIN R package's MTD estimate (`select.mtd`).
_PSEUDO = 0.05
# Among doses whose isotonic estimates are equally close to the target, the choice of `select.mtd` (which adds
# i * 1e-10 to the i-th estimate): distances within this tolerance count as equal.
_TIE_TOL = 1e-9


def _binomial_cdf(k: Int[Array, "*shape"], m: Int[Array, "*shape"], p: float) -> Float[Array, "*shape"]:
    """`P(Binomial(m, p) <= k)` for integer arrays `k`, `m` (summing the probabilities of 0..k in log space)."""
    k, m = jnp.broadcast_arrays(k, m)
    dtype = jnp.result_type(float)
    mf = m.astype(dtype)
    log_p, log_q = math.log(p), math.log1p(-p)

    def log_pmf(j):
        jf = jnp.asarray(j, dtype=dtype)
        return jsp.gammaln(mf + 1) - jsp.gammaln(jf + 1) - jsp.gammaln(mf - jf + 1) + jf * log_p + (mf - jf) * log_q

    def body(j, acc):
        return jnp.where(j <= k, jnp.logaddexp(acc, log_pmf(j)), acc)

    upper = jnp.max(jnp.minimum(k, m)) + 1  # terms above every k are never added
    log_cdf = jax.lax.fori_loop(0, upper, body, jnp.full(k.shape, -jnp.inf, dtype=dtype))
    return jnp.where(k >= m, 1.0, jnp.exp(log_cdf))


def boin_boundaries(target: float, phi1: float | None = None, phi2: float | None = None) -> tuple[float, float]:
    """BOIN's escalation and de-escalation boundaries `(lambda_e, lambda_d)` for a target DLT rate.

    The boundaries minimise the probability of a wrong decision when the true DLT rate of the current dose is
    `phi1` (sub-therapeutic: escalation needed), `target` or `phi2` (overly toxic: de-escalation needed):

    `lambda_e = log((1 - phi1) / (1 - phi)) / log(phi (1 - phi1) / (phi1 (1 - phi)))`,
    `lambda_d = log((1 - phi) / (1 - phi2)) / log(phi2 (1 - phi) / (phi (1 - phi2)))`, with `phi = target`.

    **Arguments:**

    - `target`: target DLT rate `phi`, in (0, 1).
    - `phi1`: highest DLT rate deemed sub-therapeutic, in (0, target); default `0.6 * target`.
    - `phi2`: lowest DLT rate deemed overly toxic, in (target, 1); default `1.4 * target`.

    **Returns:** `(lambda_e, lambda_d)` as Python floats; `phi1 < lambda_e < target < lambda_d < phi2`.

    **Raises:** `ValueError` naming the argument when a value is outside its range.

    **Example:**

    ```python
    from carkinetics.trials import boin_boundaries
    boin_boundaries(0.3)             # (0.2364..., 0.3585...): the published 0.236 and 0.358
    ```
    """
    phi = check_open_probability("boin_boundaries", "target", target)
    phi1 = 0.6 * phi if phi1 is None else check_open_probability("boin_boundaries", "phi1", phi1)
    phi2 = 1.4 * phi if phi2 is None else check_open_probability("boin_boundaries", "phi2", phi2)
    if not phi1 < phi:
        raise ValueError(f"boin_boundaries: `phi1` must be below the target {phi}; got {phi1}.")
    if not phi < phi2 < 1.0:
        raise ValueError(f"boin_boundaries: `phi2` must be above the target {phi} and below 1; got {phi2}.")
    lambda_e = math.log((1 - phi1) / (1 - phi)) / math.log(phi * (1 - phi1) / (phi1 * (1 - phi)))
    lambda_d = math.log((1 - phi) / (1 - phi2)) / math.log(phi2 * (1 - phi) / (phi * (1 - phi2)))
    return lambda_e, lambda_d


class BOINBoundaryTable(eqx.Module):
    """BOIN's decision table for 1..`max_patients` patients at the current dose (as `get.boundary` prints it).

    **Fields** (NumPy integer arrays indexed by the number of patients minus one):

    - `n_patients`: 1, 2, ..., `max_patients`.
    - `escalate_at_most`: escalate if the number of DLTs is at most this.
    - `deescalate_at_least`: de-escalate if the number of DLTs is at least this.
    - `eliminate_at_least`: eliminate the dose (and all higher ones) if the number of DLTs is at least this;
      -1 where no count eliminates (fewer than 3 patients, or no count reaches the posterior cutoff).
    """

    n_patients: np.ndarray
    escalate_at_most: np.ndarray
    deescalate_at_least: np.ndarray
    eliminate_at_least: np.ndarray


class BOIN(AbstractDesign):
    """The Bayesian optimal interval (BOIN) design (Liu & Yuan 2015), following the BOIN R package (v2.7.2).

    After each cohort, with `y` DLTs among the `n` patients treated so far at the current dose:

    - **escalate** if `y <= floor(lambda_e n)`, **de-escalate** if `y > lambda_d n`, otherwise stay
      ([`carkinetics.trials.boin_boundaries`][]); escalation into an eliminated dose and de-escalation below the
      lowest dose become "stay".
    - **eliminate** the current dose and all higher doses when `n >= 3` and
      `P(p > target | y, n) > cutoff_eli` under a Beta(1, 1) prior, i.e. `1 - I_target(y + 1, n - y + 1)`. An
      eliminated current dose means de-escalation; if it is the lowest dose the trial **stops** with no MTD.
      With `extrasafe=True` the trial also stops when `n >= 3` at the lowest dose and that posterior probability
      exceeds `cutoff_eli - offset`.
    - **stop early** (and select an MTD) once `n >= n_earlystop` at the current dose and the decision would be to
      stay, to de-escalate from the lowest dose or to escalate from the highest admissible dose.

    The MTD (`select_mtd`) is chosen as in the package's `select.mtd`: doses are eliminated by the rule above
    (from the final data); if the lowest is eliminated there is no MTD (-1). Otherwise the rates of the treated,
    non-eliminated doses are estimated with a Beta(0.05, 0.05) prior, `(y + 0.05) / (n + 0.1)`, made
    non-decreasing by isotonic regression weighted by the inverse posterior variances, and the dose whose estimate
    is closest to the target is selected; among equally close doses, the higher one when the estimate is below the
    target and the lower one otherwise (the package breaks these ties by adding `i * 1e-10` to the i-th estimate).

    **Arguments:**

    - `target`: target DLT rate `phi`, in (0, 1) (typically 0.2-0.35).
    - `phi1`, `phi2`: the sub-therapeutic and overly toxic DLT rates (default `0.6 phi` and `1.4 phi`).
    - `cutoff_eli`: posterior probability above which a dose is eliminated (default 0.95).
    - `extrasafe`: add the stricter stopping rule for the lowest dose (default False).
    - `offset`: how much stricter (default 0.05), in [0, 0.5).
    - `n_earlystop`: patients at one dose after which the trial may stop (default 100, i.e. practically off).

    **Example:**

    ```python
    import jax
    from carkinetics.trials import BOIN, operating_characteristics
    design = BOIN(target=0.3)
    design.lambda_e, design.lambda_d                 # 0.236, 0.358
    oc = operating_characteristics(design, true_dlt=[0.05, 0.12, 0.3, 0.45, 0.6], n_trials=4000,
                                   cohort_size=3, n_cohorts=10, key=jax.random.key(0))
    float(oc.selection_probability[2])               # about 0.57: the dose with DLT rate 0.3
    ```

    ??? cite "References"

        ```bibtex
        @article{liu2015bayesian,
          author  = {Liu, Suyu and Yuan, Ying},
          title   = {Bayesian Optimal Interval Designs for Phase {I} Clinical Trials},
          journal = {Journal of the Royal Statistical Society: Series C (Applied Statistics)},
          volume  = {64},
          number  = {3},
          pages   = {507--523},
          year    = {2015},
          doi     = {10.1111/rssc.12089},
        }
        @article{yan2020boin,
          author  = {Yan, Fangrong and Zhang, Liangcai and Zhou, Yanhong and Pan, Haitao and Liu, Suyu and
                     Yuan, Ying},
          title   = {{BOIN}: An {R} Package for Designing Single-Agent and Drug-Combination Dose-Finding Trials
                     Using {B}ayesian Optimal Interval Designs},
          journal = {Journal of Statistical Software},
          volume  = {94},
          number  = {13},
          pages   = {1--32},
          year    = {2020},
          doi     = {10.18637/jss.v094.i13},
        }
        ```
    """

    name: ClassVar[str] = "BOIN"

    target: float = eqx.field(static=True)
    phi1: float = eqx.field(static=True)
    phi2: float = eqx.field(static=True)
    cutoff_eli: float = eqx.field(static=True)
    extrasafe: bool = eqx.field(static=True)
    offset: float = eqx.field(static=True)
    n_earlystop: int = eqx.field(static=True)

    def __init__(
        self,
        target: float,
        phi1: float | None = None,
        phi2: float | None = None,
        cutoff_eli: float = 0.95,
        extrasafe: bool = False,
        offset: float = 0.05,
        n_earlystop: int = 100,
    ):
        target = check_open_probability("BOIN", "target", target)
        phi1 = 0.6 * target if phi1 is None else check_open_probability("BOIN", "phi1", phi1)
        phi2 = 1.4 * target if phi2 is None else check_open_probability("BOIN", "phi2", phi2)
        if not phi1 < target:
            raise ValueError(f"BOIN: `phi1` must be below the target {target}; got {phi1}.")
        if not target < phi2:
            raise ValueError(f"BOIN: `phi2` must be above the target {target}; got {phi2}.")
        self.target = target
        self.phi1 = phi1
        self.phi2 = phi2
        self.cutoff_eli = check_open_probability("BOIN", "cutoff_eli", cutoff_eli)
        if not isinstance(extrasafe, bool):
            raise ValueError(f"BOIN: `extrasafe` must be True or False; got {extrasafe!r}.")
        self.extrasafe = extrasafe
        if isinstance(offset, bool) or not isinstance(offset, numbers.Real) or not 0.0 <= float(offset) < 0.5:
            raise ValueError(f"BOIN: `offset` must be a number in [0, 0.5); got {offset!r}.")
        if extrasafe and not float(offset) < self.cutoff_eli:
            raise ValueError(f"BOIN: `offset` must be below `cutoff_eli` ({self.cutoff_eli}); got {offset!r}.")
        self.offset = float(offset)
        self.n_earlystop = check_positive_int("BOIN", "n_earlystop", n_earlystop)

    @property
    def lambda_e(self) -> float:
        """Escalation boundary on the observed DLT rate."""
        return boin_boundaries(self.target, self.phi1, self.phi2)[0]

    @property
    def lambda_d(self) -> float:
        """De-escalation boundary on the observed DLT rate."""
        return boin_boundaries(self.target, self.phi1, self.phi2)[1]

    def check_trial(self, n_doses: int, cohort_size: int) -> None:
        del n_doses, cohort_size  # any ladder and cohort size

    @eqx.filter_jit
    def overdose_probability(
        self, n_patients: Int[ArrayLike, "*doses"], n_dlt: Int[ArrayLike, "*doses"]
    ) -> Float[Array, "*doses"]:
        """`P(p > target | data)` under a Beta(1, 1) prior: `1 - I_target(y + 1, n - y + 1)`.

        For integer counts this is the binomial probability `P(Binomial(n + 1, target) <= y)`, which is what is
        evaluated (a short sum in log space; simpler to compile than the general incomplete beta function).
        """
        n = jnp.asarray(n_patients)
        y = jnp.asarray(n_dlt)
        return _binomial_cdf(y, n + 1, self.target)

    def _eliminates(self, n: Int[Array, "*doses"], y: Int[Array, "*doses"]) -> Bool[Array, "*doses"]:
        return (n >= 3) & (self.overdose_probability(n, y) > self.cutoff_eli)

    def _extrasafe_stop(self, n: Int[Array, ""], y: Int[Array, ""]) -> Bool[Array, ""]:
        if not self.extrasafe:
            return jnp.asarray(False)
        return (n >= 3) & (self.overdose_probability(n, y) > self.cutoff_eli - self.offset)

    def _escalate_at_most(self, n: Int[Array, "*doses"]) -> Int[Array, "*doses"]:
        return jnp.floor(self.lambda_e * n).astype(n.dtype)

    def _deescalate_at_least(self, n: Int[Array, "*doses"]) -> Int[Array, "*doses"]:
        x = self.lambda_d * n
        near = jnp.abs(jnp.round(x) - x) < _BOUNDARY_TOL
        return jnp.where(near, jnp.round(x) + 1, jnp.ceil(x)).astype(n.dtype)

    def boundary_table(self, max_patients: int) -> BOINBoundaryTable:
        """The decision table for 1..`max_patients` patients at a dose (for a protocol or a check).

        **Example:**

        ```python
        from carkinetics.trials import BOIN
        table = BOIN(target=0.3).boundary_table(12)
        table.escalate_at_most[[2, 5, 8, 11]]        # [0, 1, 2, 2] at 3, 6, 9, 12 patients
        table.deescalate_at_least[[2, 5, 8, 11]]     # [2, 3, 4, 5]
        table.eliminate_at_least[[2, 5, 8, 11]]      # [3, 4, 5, 7]
        ```
        """
        max_patients = check_positive_int("BOIN.boundary_table", "max_patients", max_patients)
        n = np.arange(1, max_patients + 1)
        y = np.arange(max_patients + 1)
        n_grid, y_grid = np.meshgrid(n, y, indexing="ij")
        feasible = y_grid <= n_grid
        elim = np.asarray(self._eliminates(jnp.asarray(n_grid), jnp.asarray(np.minimum(y_grid, n_grid)))) & feasible
        eliminate_at_least = np.where(elim.any(axis=1), np.argmax(elim, axis=1), -1)
        escalate = np.asarray(self._escalate_at_most(jnp.asarray(n)))
        deescalate = np.asarray(self._deescalate_at_least(jnp.asarray(n)))
        # as in the package's table: the de-escalation boundary never exceeds the elimination boundary
        deescalate = np.where(eliminate_at_least >= 0, np.minimum(deescalate, eliminate_at_least), deescalate)
        return BOINBoundaryTable(
            n_patients=n,
            escalate_at_most=escalate,
            deescalate_at_least=deescalate,
            eliminate_at_least=eliminate_at_least,
        )

    @eqx.filter_jit
    def decide(self, state: TrialState) -> Decision:
        n_doses = state.n_doses
        d = state.current
        n = state.n_patients[d]
        y = state.n_dlt[d]
        top = n_doses - 1
        elim_now = self._eliminates(n, y)
        eliminated = state.eliminated | (elim_now & at_or_above(d, n_doses))
        extrasafe_stop = (d == 0) & self._extrasafe_stop(n, y)
        eliminated = eliminated | extrasafe_stop
        safety_stop = eliminated[0]
        escalate = y <= self._escalate_at_most(n)
        deescalate = (y >= self._deescalate_at_least(n)) | elim_now
        cannot_escalate = (d == top) | eliminated[jnp.minimum(d + 1, top)]
        converged = (n >= self.n_earlystop) & (
            (~escalate & ~deescalate) | ((d == 0) & deescalate) | (cannot_escalate & escalate)
        )
        next_dose = jnp.where(escalate & ~cannot_escalate, d + 1, jnp.where(deescalate & (d > 0), d - 1, d))
        stop = safety_stop | converged
        next_dose = jnp.where(stop, d, next_dose)
        return Decision(action=action_from_move(next_dose, d, stop), next_dose=next_dose, eliminated=eliminated)

    @eqx.filter_jit
    def select_mtd(self, n_patients: Int[ArrayLike, " doses"], n_dlt: Int[ArrayLike, " doses"]) -> Int[Array, ""]:
        """The MTD as in the BOIN package's `select.mtd` (see the class docstring); -1 when none is selected."""
        n = jnp.asarray(n_patients)
        y = jnp.asarray(n_dlt)
        n_doses = n.shape[0]
        # a dose is eliminated with every higher one
        eliminated = jnp.cumsum(self._eliminates(n, y)) > 0
        eliminated = eliminated | self._extrasafe_stop(n[0], y[0])
        admissible = (n > 0) & ~eliminated
        no_mtd = eliminated[0] | ~jnp.any(admissible)
        dtype = jnp.result_type(float)
        nf = n.astype(dtype)
        yf = y.astype(dtype)
        phat = (yf + _PSEUDO) / (nf + 2 * _PSEUDO)
        variance = (yf + _PSEUDO) * (nf - yf + _PSEUDO) / ((nf + 2 * _PSEUDO) ** 2 * (nf + 2 * _PSEUDO + 1))
        iso = isotonic_regression(phat, 1.0 / variance, admissible)
        distance = jnp.where(admissible, jnp.abs(iso - self.target), jnp.inf)
        tied = admissible & (distance <= jnp.min(distance) + _TIE_TOL)
        # ties: an estimate below the target prefers higher doses, one at or above it lower doses, and a dose below
        # the target beats one above it (the order `select.mtd`'s i * 1e-10 perturbation gives)
        index = jnp.arange(n_doses)
        rank = jnp.where(iso < self.target, -n_doses + (n_doses - 1 - index), index)
        choice = jnp.argmin(jnp.where(tied, rank, 2 * n_doses))
        return jnp.where(no_mtd, -1, choice)
