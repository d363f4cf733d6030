"""Simulated dose-escalation trials (vmap over trials, scan over cohorts) and their operating characteristics."""

from __future__ import annotations

import numbers
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
from jax import lax

from .._core._custom_types import Array, ArrayLike, Bool, Float, Int
from ._base import AbstractDesign, initial_state
from ._outcomes import AbstractOutcomeSource, BernoulliOutcomes, ResampledOutcomes
from ._validation import check_positive_int


class SimulatedTrials(eqx.Module):
    """The end of every simulated trial (from [`carkinetics.trials.simulate_trials`][]).

    **Fields** (one row per trial):

    - `n_patients`, `n_dlt`: patients treated and DLTs per dose, shape `(n_trials, n_doses)`.
    - `selected`: index of the selected MTD, or -1 when none was selected, shape `(n_trials,)`.
    - `n_cohorts_treated`: cohorts enrolled before the trial ended, shape `(n_trials,)`.
    - `stopped_early`: whether the design stopped the trial before its last cohort, shape `(n_trials,)`.
    """

    n_patients: Int[Array, "trials doses"]
    n_dlt: Int[Array, "trials doses"]
    selected: Int[Array, " trials"]
    n_cohorts_treated: Int[Array, " trials"]
    stopped_early: Bool[Array, " trials"]


class OperatingCharacteristics(eqx.Module):
    """Operating characteristics of a design in one scenario (from
    [`carkinetics.trials.operating_characteristics`][]). Probabilities are fractions of the simulated trials.

    **Fields:**

    - `design`: the design's name (`"3+3"`, `"BOIN"`, `"CRM"`).
    - `n_trials`: number of simulated trials (Monte Carlo standard error of a probability `P`:
      `sqrt(P (1 - P) / n_trials)`).
    - `true_dlt`: each dose's DLT probability in the scenario (for a patient pool: the pool's DLT fractions).
    - `selection_probability`: probability that each dose is selected as the MTD, followed by the probability that
      no dose is selected (so it has `n_doses + 1` entries and sums to 1).
    - `mean_patients`, `mean_dlts`: mean number of patients treated and of DLTs per dose.
    - `early_stop_probability`: probability that the trial stopped before its last cohort (for a safety stop,
      for BOIN's `n_earlystop`, or because the 3+3 rule ended).
    - `mean_total_patients`: mean sample size.
    """

    design: str = eqx.field(static=True)
    n_trials: int = eqx.field(static=True)
    true_dlt: Float[Array, " doses"]
    selection_probability: Float[Array, " doses_and_none"]
    mean_patients: Float[Array, " doses"]
    mean_dlts: Float[Array, " doses"]
    early_stop_probability: Float[Array, ""]
    mean_total_patients: Float[Array, ""]

    @property
    def no_mtd_probability(self) -> Float[Array, ""]:
        """Probability that no dose is selected (the last entry of `selection_probability`)."""
        return self.selection_probability[-1]

    def summary(self) -> str:
        """A plain-text table: one row per dose, then the no-MTD and early-stop probabilities and the sample size."""
        lines = [
            f"{self.design}: {self.n_trials} simulated trials",
            "dose  true DLT  P(select)  mean patients  mean DLTs",
        ]
        for d in range(self.true_dlt.shape[0]):
            lines.append(
                f"{d:4d}  {float(self.true_dlt[d]):8.3f}  {float(self.selection_probability[d]):9.3f}  "
                f"{float(self.mean_patients[d]):13.2f}  {float(self.mean_dlts[d]):9.2f}"
            )
        lines.append(
            f"no MTD selected: {float(self.no_mtd_probability):.3f}; "
            f"stopped early: {float(self.early_stop_probability):.3f}; "
            f"mean sample size: {float(self.mean_total_patients):.2f}"
        )
        return "\n".join(lines)


def _outcome_source(owner: str, true_dlt: Any, outcomes: Any) -> AbstractOutcomeSource:
    if (true_dlt is None) == (outcomes is None):
        raise ValueError(
            f"{owner}: give exactly one of `true_dlt` (DLT probabilities per dose) and `outcomes` "
            f"(a (n_doses, n_pool) boolean array of simulated patients, or an outcome source)."
        )
    if true_dlt is not None:
        return BernoulliOutcomes(true_dlt)
    if isinstance(outcomes, AbstractOutcomeSource):
        return outcomes
    return ResampledOutcomes(outcomes)


def _check_key(owner: str, key: object) -> None:
    ok = isinstance(key, jax.Array) and (
        (jnp.issubdtype(key.dtype, jax.dtypes.prng_key) and key.shape == ())
        or (key.dtype == jnp.uint32 and key.shape == (2,))
    )
    if not ok:
        raise ValueError(f"{owner}: `key` must be a single JAX PRNG key (e.g. `jax.random.key(0)`); got {key!r}.")


def _prepare(owner, design, true_dlt, outcomes, n_trials, cohort_size, n_cohorts, key, start_dose):
    if not isinstance(design, AbstractDesign):
        msg = f"{owner}: `design` must be a design such as BOIN(...), CRM(...) or ThreePlusThree(); got {design!r}."
        raise ValueError(msg)
    source = _outcome_source(owner, true_dlt, outcomes)
    n_trials = check_positive_int(owner, "n_trials", n_trials)
    cohort_size = check_positive_int(owner, "cohort_size", cohort_size)
    n_cohorts = check_positive_int(owner, "n_cohorts", n_cohorts)
    _check_key(owner, key)
    n_doses = source.dlt_probability.shape[0]
    if n_doses < 2:
        raise ValueError(f"{owner}: the dose ladder must have at least two doses; got {n_doses}.")
    if (
        isinstance(start_dose, bool)
        or not isinstance(start_dose, numbers.Integral)
        or not 0 <= int(start_dose) < n_doses
    ):
        raise ValueError(f"{owner}: `start_dose` must be a dose index in [0, {n_doses - 1}]; got {start_dose!r}.")
    design.check_trial(n_doses, cohort_size)
    return source, n_trials, cohort_size, n_cohorts, int(start_dose)


def _run(
    design: AbstractDesign,
    source: AbstractOutcomeSource,
    key: Array,
    n_trials: int,
    cohort_size: int,
    n_cohorts: int,
    start_dose: int,
) -> SimulatedTrials:
    if isinstance(source, BernoulliOutcomes):
        p = source.true_dlt
        p = eqx.error_if(p, ~jnp.all((p >= 0) & (p <= 1)), "Every entry of `true_dlt` must be a probability in [0, 1].")
        source = BernoulliOutcomes(p)
    n_doses = source.dlt_probability.shape[0]

    def one_trial(trial_key):
        def cohort(carry, k):
            state, stopped, treated = carry
            dlt = source.sample(jr.fold_in(trial_key, k), state.current, cohort_size)
            after = state.add_cohort(cohort_size, jnp.sum(dlt))
            decision = design.decide(after)
            following = after.advance(decision)
            state = jax.tree.map(lambda old, new: jnp.where(stopped, old, new), state, following)
            treated = treated + jnp.where(stopped, 0, 1)
            stopped = stopped | decision.stop
            return (state, stopped, treated), None

        start = (initial_state(n_doses, start_dose), jnp.asarray(False), jnp.asarray(0))
        (state, _, treated), _ = lax.scan(cohort, start, jnp.arange(n_cohorts))
        selected = design.select_mtd(state.n_patients, state.n_dlt)
        # a design that eliminated its lowest dose during the trial selects nothing
        selected = jnp.where(state.eliminated[0], -1, selected)
        return state.n_patients, state.n_dlt, selected, treated

    n_patients, n_dlt, selected, treated = jax.vmap(one_trial)(jr.split(key, n_trials))
    return SimulatedTrials(
        n_patients=n_patients,
        n_dlt=n_dlt,
        selected=selected,
        n_cohorts_treated=treated,
        stopped_early=treated < n_cohorts,
    )


@eqx.filter_jit
def _simulate_jit(design, source, key, n_trials, cohort_size, n_cohorts, start_dose):
    return _run(design, source, key, n_trials, cohort_size, n_cohorts, start_dose)


@eqx.filter_jit
def _operating_characteristics_jit(design, source, key, n_trials, cohort_size, n_cohorts, start_dose):
    trials = _run(design, source, key, n_trials, cohort_size, n_cohorts, start_dose)
    n_doses = trials.n_patients.shape[1]
    dtype = jnp.result_type(float)
    choice = jnp.where(trials.selected < 0, n_doses, trials.selected)
    selection = jnp.mean(jax.nn.one_hot(choice, n_doses + 1, dtype=dtype), axis=0)
    return OperatingCharacteristics(
        design=type(design).name,
        n_trials=n_trials,
        true_dlt=source.dlt_probability.astype(dtype),
        selection_probability=selection,
        mean_patients=jnp.mean(trials.n_patients.astype(dtype), axis=0),
        mean_dlts=jnp.mean(trials.n_dlt.astype(dtype), axis=0),
        early_stop_probability=jnp.mean(trials.stopped_early.astype(dtype)),
        mean_total_patients=jnp.mean(jnp.sum(trials.n_patients, axis=1).astype(dtype)),
    )


def simulate_trials(
    design: AbstractDesign,
    true_dlt: Float[ArrayLike, " doses"] | None = None,
    *,
    outcomes: Bool[ArrayLike, "doses pool"] | AbstractOutcomeSource | None = None,
    n_trials: int,
    cohort_size: int,
    n_cohorts: int,
    key: Array,
    start_dose: int = 0,
) -> SimulatedTrials:
    """Simulate `n_trials` independent dose-escalation trials of a design; return how each one ended.

    Each trial starts at `start_dose` and enrols up to `n_cohorts` cohorts of `cohort_size` patients. After every
    cohort the design's `decide` rule picks the next dose or stops the trial; at the end its `select_mtd` rule picks
    the MTD (-1: none, also whenever the lowest dose was eliminated). Trials run in parallel (`jax.vmap`), cohorts
    in a `lax.scan`; the whole simulation is compiled once per design, ladder length and trial size: new `true_dlt`
    values or a new `key` do not recompile. Trial `i` uses `jax.random.split(key, n_trials)[i]`, so results are
    reproducible from `key`.

    **Arguments:**

    - `design`: a [`carkinetics.trials.AbstractDesign`][] (`ThreePlusThree()`, `BOIN(...)`, `CRM(...)`).
    - `true_dlt`: DLT probability of each dose, in [0, 1], lowest dose first (at least two doses); patients are
      independent Bernoulli draws.
    - `outcomes`: instead of `true_dlt`, a boolean array of shape `(n_doses, n_pool)` whose entry `[d, i]` says
      whether simulated patient `i` has a DLT at dose `d` (enrolled patients are drawn from this pool with
      replacement, see [`carkinetics.trials.ResampledOutcomes`][]), or any
      [`carkinetics.trials.AbstractOutcomeSource`][].
    - `n_trials`: number of simulated trials (positive integer).
    - `cohort_size`: patients per cohort (positive integer; 3 for the 3+3 design).
    - `n_cohorts`: maximum number of cohorts per trial (positive integer).
    - `key`: a JAX PRNG key, e.g. `jax.random.key(0)`.
    - `start_dose`: index of the first cohort's dose (default 0, the lowest).

    **Returns:** a [`carkinetics.trials.SimulatedTrials`][].

    **Raises:** `ValueError` naming the argument for an invalid input (both or neither of `true_dlt` and
    `outcomes`, probabilities outside [0, 1], a ladder of fewer than two doses, non-positive counts, a cohort size
    the design does not support, a CRM skeleton of another length).

    **Example:**

    ```python
    import jax
    from carkinetics.trials import ThreePlusThree, simulate_trials
    sims = simulate_trials(ThreePlusThree(), true_dlt=[0.25, 0.5], n_trials=100_000, cohort_size=3, n_cohorts=3,
                           key=jax.random.key(25))
    float((sims.n_patients[:, 1] > 0).mean())     # P(escalate from dose 0) = 0.75^3 (1 + 3 x 0.25 x 0.75^2) = 0.600
    ```
    """
    args = _prepare("simulate_trials", design, true_dlt, outcomes, n_trials, cohort_size, n_cohorts, key, start_dose)
    source, n_trials, cohort_size, n_cohorts, start_dose = args
    return _simulate_jit(design, source, key, n_trials, cohort_size, n_cohorts, start_dose)


def operating_characteristics(
    design: AbstractDesign,
    true_dlt: Float[ArrayLike, " doses"] | None = None,
    *,
    outcomes: Bool[ArrayLike, "doses pool"] | AbstractOutcomeSource | None = None,
    n_trials: int,
    cohort_size: int,
    n_cohorts: int,
    key: Array,
    start_dose: int = 0,
) -> OperatingCharacteristics:
    """Operating characteristics of a design in one scenario, by simulating `n_trials` trials.

    The arguments are those of [`carkinetics.trials.simulate_trials`][]: the scenario is either `true_dlt`
    (probabilities per dose) or `outcomes` (a `(n_doses, n_pool)` boolean array of simulated patients' DLTs, e.g.
    from a mechanistic model run over a virtual population at each dose). Compiled once per design, ladder length
    and trial size; a new scenario of the same shape or a new key does not recompile.

    **Returns:** an [`carkinetics.trials.OperatingCharacteristics`][]: selection probability per dose plus "no MTD",
    mean patients and DLTs per dose, early-stop probability and mean sample size.

    **Raises:** `ValueError` naming the argument for an invalid input (see `simulate_trials`).

    **Example:**

    ```python
    import jax
    from carkinetics.trials import BOIN, operating_characteristics
    oc = operating_characteristics(BOIN(target=0.3), true_dlt=[0.05, 0.12, 0.3, 0.45, 0.6], n_trials=4000,
                                   cohort_size=3, n_cohorts=10, key=jax.random.key(0))
    print(oc.summary())
    ```
    """
    args = _prepare(
        "operating_characteristics", design, true_dlt, outcomes, n_trials, cohort_size, n_cohorts, key, start_dose
    )
    source, n_trials, cohort_size, n_cohorts, start_dose = args
    return _operating_characteristics_jit(design, source, key, n_trials, cohort_size, n_cohorts, start_dose)
