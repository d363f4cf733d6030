"""The interface every dose-escalation design implements: the trial state, the decision, and `AbstractDesign`."""

from __future__ import annotations

import abc
import numbers

import equinox as eqx
import jax.numpy as jnp

from .._core._custom_types import Array, ArrayLike, Bool, Int
from ._validation import check_positive_int


class Action(eqx.Enumeration):
    """What a design tells the trial to do after the latest cohort.

    Compare an action with a member (`decision.action == Action.escalate`); this works on batched actions too.
    """

    escalate = "Treat the next cohort at the next higher dose."
    stay = "Treat the next cohort at the current dose."
    deescalate = "Treat the next cohort at the next lower dose."
    stop = "Stop enrolment; the MTD is selected from the data (none if the lowest dose was eliminated)."


class TrialState(eqx.Module):
    """The data of one dose-escalation trial so far: everything a design's decision may depend on.

    **Fields** (doses are indexed from 0, lowest first):

    - `n_patients`: patients treated at each dose, shape `(n_doses,)`.
    - `n_dlt`: patients with a dose-limiting toxicity (DLT) at each dose, shape `(n_doses,)`.
    - `current`: index of the dose the latest cohort received (the next cohort's dose before a cohort is added).
    - `eliminated`: doses excluded for toxicity so far, shape `(n_doses,)`; once set a flag is never cleared.
    - `last_cohort_patients`, `last_cohort_dlt`: size and DLT count of the latest cohort (the CRM's coherence rule
      reads them).

    Build the start of a trial with [`carkinetics.trials.initial_state`][], record a cohort with `add_cohort`, and
    move to the next dose with `advance(decision)`. All methods are pure and work under `jax.jit` and `jax.vmap`.
    """

    n_patients: Int[Array, " doses"]
    n_dlt: Int[Array, " doses"]
    current: Int[Array, ""]
    eliminated: Bool[Array, " doses"]
    last_cohort_patients: Int[Array, ""]
    last_cohort_dlt: Int[Array, ""]

    @property
    def n_doses(self) -> int:
        return self.n_patients.shape[-1]

    def add_cohort(self, n_patients: Int[ArrayLike, ""], n_dlt: Int[ArrayLike, ""]) -> TrialState:
        """Record a cohort of `n_patients` treated at the current dose, `n_dlt` of whom had a DLT."""
        n_patients = jnp.asarray(n_patients, dtype=self.n_patients.dtype)
        n_dlt = jnp.asarray(n_dlt, dtype=self.n_dlt.dtype)
        return TrialState(
            n_patients=self.n_patients.at[self.current].add(n_patients),
            n_dlt=self.n_dlt.at[self.current].add(n_dlt),
            current=self.current,
            eliminated=self.eliminated,
            last_cohort_patients=n_patients,
            last_cohort_dlt=n_dlt,
        )

    def advance(self, decision: Decision) -> TrialState:
        """The state the next cohort is treated in: dose `decision.next_dose`, eliminations `decision.eliminated`."""
        return TrialState(
            n_patients=self.n_patients,
            n_dlt=self.n_dlt,
            current=jnp.asarray(decision.next_dose, dtype=self.current.dtype),
            eliminated=decision.eliminated,
            last_cohort_patients=self.last_cohort_patients,
            last_cohort_dlt=self.last_cohort_dlt,
        )


def initial_state(n_doses: int, start_dose: int = 0) -> TrialState:
    """The state of a trial before its first cohort: no patients, no eliminated dose, at dose `start_dose`.

    **Arguments:**

    - `n_doses`: number of dose levels (at least 2).
    - `start_dose`: index of the first cohort's dose (0 = lowest).

    **Raises:** `ValueError` if `n_doses < 2` or `start_dose` is not a dose index.

    **Example:**

    ```python
    from carkinetics.trials import BOIN, initial_state
    design = BOIN(target=0.3)
    state = initial_state(5).add_cohort(3, 0)      # 0/3 DLTs at the lowest dose
    decision = design.decide(state)
    int(decision.next_dose)                         # 1: escalate
    ```
    """
    n_doses = check_positive_int("initial_state", "n_doses", n_doses)
    if n_doses < 2:
        raise ValueError(f"initial_state: `n_doses` must be at least 2 (a dose ladder); got {n_doses}.")
    if (
        isinstance(start_dose, bool)
        or not isinstance(start_dose, numbers.Integral)
        or not 0 <= int(start_dose) < n_doses
    ):
        raise ValueError(f"initial_state: `start_dose` must be a dose index in [0, {n_doses - 1}]; got {start_dose!r}.")
    zeros = jnp.zeros(n_doses, dtype=int)
    return TrialState(
        n_patients=zeros,
        n_dlt=zeros,
        current=jnp.asarray(int(start_dose), dtype=int),
        eliminated=jnp.zeros(n_doses, dtype=bool),
        last_cohort_patients=jnp.asarray(0, dtype=int),
        last_cohort_dlt=jnp.asarray(0, dtype=int),
    )


class Decision(eqx.Module):
    """A design's decision after a cohort.

    **Fields:**

    - `action`: an [`carkinetics.trials.Action`][] member (escalate, stay, deescalate or stop).
    - `next_dose`: index of the dose for the next cohort (the current dose when the action is stay or stop).
    - `eliminated`: the updated elimination flags, shape `(n_doses,)` (the previous flags plus any new ones).
    """

    action: Action
    next_dose: Int[Array, ""]
    eliminated: Bool[Array, " doses"]

    @property
    def stop(self) -> Bool[Array, ""]:
        return self.action == Action.stop


class AbstractDesign(eqx.Module):
    """A dose-escalation design: a pure rule from the data so far to the next action, and a final MTD rule.

    Concrete designs implement:

    - `decide(state) -> Decision`: the action after the latest cohort (`state` is a
      [`carkinetics.trials.TrialState`][] that already contains that cohort).
    - `select_mtd(n_patients, n_dlt) -> index`: the maximum tolerated dose selected at the end of the trial, as a
      dose index, or -1 when no dose is selected (all doses too toxic).
    - `check_trial(n_doses, cohort_size)`: raise `ValueError` if the design cannot run on that ladder/cohort size.

    Both rules are pure `jax.numpy` functions without Python control flow on data, so whole trials run under
    `jax.vmap` and `lax.scan` ([`carkinetics.trials.simulate_trials`][]).
    """

    name: eqx.AbstractClassVar[str]

    @abc.abstractmethod
    def decide(self, state: TrialState) -> Decision:
        raise NotImplementedError

    @abc.abstractmethod
    def select_mtd(self, n_patients: Int[ArrayLike, " doses"], n_dlt: Int[ArrayLike, " doses"]) -> Int[Array, ""]:
        raise NotImplementedError

    @abc.abstractmethod
    def check_trial(self, n_doses: int, cohort_size: int) -> None:
        raise NotImplementedError


def at_or_above(index: Int[Array, ""], n_doses: int) -> Bool[Array, " doses"]:
    """Mask of the doses `index, index + 1, ...` (elimination removes a dose and every higher one)."""
    return jnp.arange(n_doses) >= index


def action_from_move(next_dose: Int[Array, ""], current: Int[Array, ""], stop: Bool[Array, ""]) -> Action:
    """The action that moves from `current` to `next_dose`, or stop."""
    move = Action.where(
        next_dose > current, Action.escalate, Action.where(next_dose < current, Action.deescalate, Action.stay)
    )
    return Action.where(stop, Action.stop, move)
