"""Virtual dose-escalation trials: the 3+3, BOIN and CRM designs as pure decision rules, and their simulation.

A design is an `eqx.Module` with two pure rules: `decide(state) -> Decision` after each cohort and
`select_mtd(n_patients, n_dlt) -> dose index or -1` at the end. `simulate_trials` and `operating_characteristics` run
many trials at once (`jax.vmap` over trials, `lax.scan` over cohorts), with DLTs drawn from true probabilities or
from a pool of simulated patients. Doses are indexed from 0 (lowest first). See `docs/trials.md`.
"""

from ._base import (
    AbstractDesign as AbstractDesign,
    Action as Action,
    Decision as Decision,
    TrialState as TrialState,
    initial_state as initial_state,
)
from ._boin import BOIN as BOIN, BOINBoundaryTable as BOINBoundaryTable, boin_boundaries as boin_boundaries
from ._crm import CRM as CRM, CRMPosterior as CRMPosterior
from ._isotonic import isotonic_regression as isotonic_regression
from ._outcomes import (
    AbstractOutcomeSource as AbstractOutcomeSource,
    BernoulliOutcomes as BernoulliOutcomes,
    ResampledOutcomes as ResampledOutcomes,
)
from ._simulate import (
    OperatingCharacteristics as OperatingCharacteristics,
    SimulatedTrials as SimulatedTrials,
    operating_characteristics as operating_characteristics,
    simulate_trials as simulate_trials,
)
from ._three_plus_three import ThreePlusThree as ThreePlusThree
