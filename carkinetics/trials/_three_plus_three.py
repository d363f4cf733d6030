"""The standard 3+3 rule-based design (with de-escalation)."""

from __future__ import annotations

from typing import ClassVar

import equinox as eqx
import jax.numpy as jnp

from .._core._custom_types import Array, ArrayLike, Int
from ._base import AbstractDesign, Action, Decision, TrialState, at_or_above


class ThreePlusThree(AbstractDesign):
    """The standard 3+3 design: cohorts of 3, escalation on 0/3 or at most 1/6, de-escalation on 2 or more DLTs.

    The variant implemented (doses indexed from 0; `y/n` = DLTs/patients at the current dose):

    - **0/3**: escalate to the next dose. At the top dose, or below a dose eliminated earlier, treat 3 more at the
      current dose instead (an MTD needs 6 patients).
    - **1/3**: treat 3 more patients at the current dose.
    - **at most 1/6**: escalate; at the top dose or below an eliminated dose, stop (the current dose is the MTD).
    - **2 or more DLTs (of 3 or of 6)**: the current dose and every higher one are eliminated ("the MTD has been
      exceeded"). At the lowest dose the trial stops with no MTD. Otherwise de-escalate; if the lower dose already
      has 6 patients the trial stops instead (that dose is the MTD), otherwise 3 more patients are treated there.

    The MTD is the highest dose at which at least 6 patients were treated with at most 1 DLT (none: -1). The
    escalation rule is Storer's "design A" (the traditional design of his comparison); the de-escalation step and
    the MTD definition are those of the standard 3+3 as reviewed by Le Tourneau et al. (2009). The rule needs
    cohorts of exactly 3 patients, and a trial has at most `2 n_doses` cohorts (never more than 6 patients per
    dose), so give it `n_cohorts >= 2 * n_doses` to run every trial to its natural end.

    The design has no parameters.

    **Example:**

    ```python
    import jax
    from carkinetics.trials import ThreePlusThree, simulate_trials
    sims = simulate_trials(ThreePlusThree(), true_dlt=[0.05, 0.12, 0.3, 0.45, 0.6], n_trials=2000, cohort_size=3,
                           n_cohorts=10, key=jax.random.key(4))
    int(sims.n_patients.max())            # 6: never more than 6 patients per dose
    float((sims.selected == 2).mean())    # P(MTD = dose 2, DLT rate 0.3), about 0.3
    ```

    ??? cite "References"

        ```bibtex
        @article{storer1989design,
          author  = {Storer, Barry E.},
          title   = {Design and Analysis of Phase {I} Clinical Trials},
          journal = {Biometrics},
          volume  = {45},
          number  = {3},
          pages   = {925--937},
          year    = {1989},
          doi     = {10.2307/2531910},
        }
        @article{letourneau2009dose,
          author  = {Le Tourneau, Christophe and Lee, J. Jack and Siu, Lillian L.},
          title   = {Dose Escalation Methods in Phase {I} Cancer Clinical Trials},
          journal = {Journal of the National Cancer Institute},
          volume  = {101},
          number  = {10},
          pages   = {708--720},
          year    = {2009},
          doi     = {10.1093/jnci/djp079},
        }
        ```
    """

    name: ClassVar[str] = "3+3"

    def check_trial(self, n_doses: int, cohort_size: int) -> None:
        del n_doses  # any ladder of two or more doses works
        if cohort_size != 3:
            raise ValueError(
                f"ThreePlusThree: `cohort_size` must be 3 (the rule is defined for cohorts of three); "
                f"got {cohort_size}."
            )

    @eqx.filter_jit
    def decide(self, state: TrialState) -> Decision:
        n_doses = state.n_doses
        d = state.current
        n = state.n_patients[d]
        y = state.n_dlt[d]
        top = d == n_doses - 1
        too_toxic = y >= 2
        eliminated = state.eliminated | (too_toxic & at_or_above(d, n_doses))
        cannot_escalate = top | eliminated[jnp.minimum(d + 1, n_doses - 1)]
        lower_full = state.n_patients[jnp.maximum(d - 1, 0)] >= 6
        expanded = n >= 6
        # too toxic: stop at the lowest dose or when the dose below already has 6 patients, else de-escalate
        stop_toxic = too_toxic & ((d == 0) | lower_full)
        deescalate = too_toxic & ~stop_toxic
        # acceptable: 0/3 or <= 1/6
        acceptable = ~too_toxic & (expanded | (y == 0))
        escalate = acceptable & ~cannot_escalate
        stop_mtd = acceptable & expanded & cannot_escalate
        stop = stop_toxic | stop_mtd
        action = Action.where(
            stop,
            Action.stop,
            Action.where(escalate, Action.escalate, Action.where(deescalate, Action.deescalate, Action.stay)),
        )
        next_dose = d + jnp.where(escalate, 1, 0) - jnp.where(deescalate, 1, 0)
        return Decision(action=action, next_dose=next_dose, eliminated=eliminated)

    @eqx.filter_jit
    def select_mtd(self, n_patients: Int[ArrayLike, " doses"], n_dlt: Int[ArrayLike, " doses"]) -> Int[Array, ""]:
        """The highest dose with at least 6 patients and at most 1 DLT; -1 if there is none."""
        n_patients = jnp.asarray(n_patients)
        n_dlt = jnp.asarray(n_dlt)
        ok = (n_patients >= 6) & (n_dlt <= 1)
        index = jnp.arange(n_patients.shape[0])
        return jnp.max(jnp.where(ok, index, -1))
