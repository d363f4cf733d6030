"""Where simulated patients' DLT outcomes come from: true DLT probabilities or a pool of simulated patients."""

from __future__ import annotations

import abc

import equinox as eqx
import jax
import jax.core
import jax.numpy as jnp
import jax.random as jr
import numpy as np

from .._core._custom_types import Array, ArrayLike, Bool, Float, Int
from ._validation import check_dose_probabilities


class AbstractOutcomeSource(eqx.Module):
    """A source of DLT outcomes for the patients of a simulated trial.

    Implement `sample(key, dose, cohort_size)` (a pure function returning one boolean per patient) and the
    property `dlt_probability` (each dose's DLT probability under this source, reported with the operating
    characteristics).
    """

    @abc.abstractmethod
    def sample(self, key: Array, dose: Int[Array, ""], cohort_size: int) -> Bool[Array, " cohort"]:
        raise NotImplementedError

    @property
    @abc.abstractmethod
    def dlt_probability(self) -> Float[Array, " doses"]:
        raise NotImplementedError


class BernoulliOutcomes(AbstractOutcomeSource):
    """Independent patients: each patient treated at dose `d` has a DLT with probability `true_dlt[d]`.

    **Arguments:**

    - `true_dlt`: the true DLT probability of each dose, in [0, 1], lowest dose first (at least two doses).

    **Example:**

    ```python
    import jax
    from carkinetics.trials import BernoulliOutcomes
    source = BernoulliOutcomes([0.1, 0.3, 0.5])
    source.sample(jax.random.key(0), dose=jax.numpy.asarray(1), cohort_size=3)   # 3 booleans
    ```
    """

    true_dlt: Float[Array, " doses"]

    def __init__(self, true_dlt: Float[ArrayLike, " doses"]):
        if isinstance(true_dlt, jax.core.Tracer):
            # traced (the user's jit or vmap): the range is checked inside the simulator with eqx.error_if
            self.true_dlt = true_dlt
        else:
            self.true_dlt = jnp.asarray(check_dose_probabilities("BernoulliOutcomes", "true_dlt", true_dlt))

    @property
    def dlt_probability(self) -> Float[Array, " doses"]:
        return self.true_dlt

    def sample(self, key: Array, dose: Int[Array, ""], cohort_size: int) -> Bool[Array, " cohort"]:
        return jr.uniform(key, (cohort_size,), dtype=self.true_dlt.dtype) < self.true_dlt[dose]


class ResampledOutcomes(AbstractOutcomeSource):
    """Patients drawn from a pool of simulated patients whose DLT at every dose is known in advance.

    `outcomes[d, i]` is whether patient `i` of the pool has a DLT when treated at dose `d` (e.g. from a
    mechanistic model run over a virtual population at each dose). Each enrolled patient is a pool member drawn
    uniformly with replacement (independently of every other enrolment), and their outcome is the one at the dose
    they receive, so a trial samples the pool's joint dose-toxicity behaviour rather than independent coin flips
    per dose. With a large pool the DLT probability of dose `d` is the pool mean `outcomes[d].mean()`.

    **Arguments:**

    - `outcomes`: boolean (or 0/1) array of shape `(n_doses, n_pool)`, at least two doses and one patient.

    **Example:**

    ```python
    import numpy as np
    from carkinetics.trials import ResampledOutcomes
    rng = np.random.default_rng(0)
    tolerance = rng.uniform(size=5000)                      # each virtual patient's latent tolerance
    outcomes = np.array([0.1, 0.25, 0.4])[:, None] > tolerance[None, :]
    ResampledOutcomes(outcomes).dlt_probability             # close to [0.1, 0.25, 0.4]
    ```
    """

    outcomes: Bool[Array, "doses pool"]

    def __init__(self, outcomes: Bool[ArrayLike, "doses pool"]):
        if isinstance(outcomes, jax.core.Tracer):
            self.outcomes = outcomes.astype(bool)
            return
        arr = np.asarray(outcomes)
        if arr.ndim != 2 or arr.shape[0] < 2 or arr.shape[1] < 1:
            raise ValueError(
                f"ResampledOutcomes: `outcomes` must be a 2-D array of shape (n_doses, n_pool) with at "
                f"least two doses and one patient; got shape {arr.shape}."
            )
        if arr.dtype != bool:
            if not np.issubdtype(arr.dtype, np.number) or not np.all((arr == 0) | (arr == 1)):
                raise ValueError(
                    "ResampledOutcomes: `outcomes` must be booleans (or 0/1 values): whether each "
                    "pool patient has a DLT at each dose."
                )
            arr = arr.astype(bool)
        self.outcomes = jnp.asarray(arr)

    @property
    def dlt_probability(self) -> Float[Array, " doses"]:
        return jnp.mean(self.outcomes, axis=1, dtype=jnp.result_type(float))

    def sample(self, key: Array, dose: Int[Array, ""], cohort_size: int) -> Bool[Array, " cohort"]:
        patients = jr.randint(key, (cohort_size,), 0, self.outcomes.shape[1])
        return self.outcomes[dose, patients]
