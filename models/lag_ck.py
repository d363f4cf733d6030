"""Lag-phase CAR-T cellular kinetics: lag, exponential growth, then biexponential decline (liso-cel popCK structure).

Ogasawara K, et al. Clin Pharmacokinet 2021, doi:10.1007/s40262-021-01039-5 (PMC8613160): population cellular
kinetics of lisocabtagene maraleucel (liso-cel) in relapsed/refractory large B-cell lymphoma, 2524 transgene
observations from 261 patients of TRANSCEND NHL 001, nonlinear mixed-effects model: "a piecewise model of cellular
growth kinetics that featured lag, exponential growth, and biexponential decay phases" [R, abstract]. (The abstract,
DOI and journal were read; the author list was not.)

With τ the time since the infusion (days) and C the transgene level (copies/µg genomic DNA):

- lag, τ < t_lag: C = C0 (no growth, no decline);
- growth, t_lag ≤ τ < t_peak: C = C0·exp(k_growth·(τ − t_lag));
- decline, τ ≥ t_peak: C = Cpeak·[f_fast·exp(−α(τ − t_peak)) + (1 − f_fast)·exp(−β(τ − t_peak))].

As an ODE (the Stein 2019 effector/memory form after the peak): dE/dt = 0, k_growth·E, −α·E in the three phases,
and dM/dt = (1 − f_fast)(α − β)·E − β·M after the peak with M(t_peak) = 0, so E + M follows the closed form
exactly (see `lag_ck_closed_form`). E and M are in multiples of C0 and the observable is C = C0·(E + M).

| parameter | default | unit | tag | source |
|---|---|---|---|---|
| t_lag | 3.27 | d | R | Ogasawara 2021 abstract: lag phase duration 3.27 d (95 % CI 2.71-3.97) |
| k_growth | 0.918 | 1/d | D | ln 2 / doubling time 0.755 d (95 % CI 0.667-0.821) [R] |
| t_peak | 9.29 | d | R | Ogasawara 2021 abstract: time to maximum 9.29 d (95 % CI 8.81-9.70) |
| alpha | 0.139 | 1/d | D | ln 2 / initial decline half-life 5.00 d (95 % CI 4.15-5.90) [R] |
| beta | 0.00197 | 1/d | D | ln 2 / terminal half-life 352 d (95 % CI 241-647) [R] |
| f_fast | 0.9921 | 1 | A | not in the abstract; 1 - F_B of Stein 2019 (tisagenlecleucel, F_B = 0.79 %) |
| c0 | 100 | copies/ug | A | Cpeak = 25,134 copies/µg, between the EU SmPC median Cmax 11,846 / 33,766 [R2] |

Between-subject variabilities, the residual error and the exact parameterisation of the source were not retrieved
(the full text was not available); the abstract states that the covariate effects (age, disease, product and
co-medication factors) were smaller than the residual between-subject variability.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, ClassVar, NamedTuple

import jax.numpy as jnp

import carkinetics as ck

_OGASAWARA = (
    "Ogasawara K et al., Clin Pharmacokinet 2021, doi:10.1007/s40262-021-01039-5 (PMC8613160), "
    "abstract: population means of TRANSCEND NHL 001 (LBCL, n = 261)"
)
_SMPC = (
    "Breyanzi EU SmPC section 5.2 (EMA, 2022), as reproduced by rxreasoner.com: median Cmax 33,766 copies/ug "
    "in responders (n = 150) and 11,846 in non-responders (n = 45)"
)
_NAMES = ("t_lag", "k_growth", "t_peak", "alpha", "beta", "f_fast", "c0")


class LagPhaseCK(ck.AbstractKineticModel):
    """Lag-phase CAR-T cellular kinetics (lisocabtagene maraleucel, r/r large B-cell lymphoma).

    The transgene level stays at `c0` for `t_lag` days after the infusion, grows exponentially at `k_growth` until
    `t_peak` days after the infusion, then declines biexponentially: a fraction `f_fast` at `alpha`, the rest at
    `beta`. The switch times are **durations after the infusion**, not calendar days: the model has a clock
    state (days since the infusion) that starts with the first dose of `effector`, and it declares
    `breakpoint_origin = "effector"`, so the integrator restarts at infusion + `t_lag` and infusion + `t_peak`
    whatever the infusion day. Shifting the infusion shifts the whole curve; derivatives with respect to the
    durations and to the infusion day are exact.

    The infusion is a bolus into `effector`: amount 1.0 is the infused product and gives the lag-phase level
    `c0`. The level is proportional to the amount, a modelling choice; the source reports no meaningful covariate
    effect (product factors were among the covariates tested), so keep 1.0 unless a dose effect is being explored. The
    model describes one infusion: the clock is not reset by a second dose.
    If `t_peak <= t_lag` there is no growth phase (the decline starts from `c0` at `t_peak`).

    **Example:**

    ```python
    import jax.numpy as jnp, carkinetics as ck
    from carkinetics.models import LagPhaseCK, lag_ck_closed_form
    model = LagPhaseCK()
    infusion = ck.Bolus(0.0, 1.0, "effector")  # the liso-cel infusion on day 0
    ts = jnp.array([1.0, 3.27, 9.29, 28.0, 365.0])
    sol = ck.simulate(model, infusion, ts)
    sol.observables.transgene              # copies/ug gDNA, ~[100, 100, 25134, 2055, 99]
    lag_ck_closed_form(model, ts)          # the same from the closed form
    ```

    ??? cite "Reference"
        Ogasawara K, et al. Population cellular kinetics of lisocabtagene maraleucel in relapsed/refractory large
        B-cell lymphoma (TRANSCEND NHL 001). Clin Pharmacokinet 2021. doi:10.1007/s40262-021-01039-5
    """

    class State(NamedTuple):
        clock: Any
        effector: Any
        memory: Any

    class Observables(NamedTuple):
        transgene: Any

    state_units: ClassVar[dict[str, str]] = {"clock": "d", "effector": "1", "memory": "1"}
    observable_units: ClassVar[dict[str, str]] = {"transgene": "copies/ug"}
    breakpoint_parameters = ("t_lag", "t_peak")
    breakpoint_origin = "effector"

    t_lag: float = ck.param(
        3.27, unit="d", description="lag phase duration after the infusion (level constant)", source=_OGASAWARA, tag="R"
    )
    k_growth: float = ck.param(
        math.log(2.0) / 0.755,
        unit="1/d",
        description="exponential growth rate after the lag phase",
        source="ln 2 / doubling time 0.755 d (95 % CI 0.667-0.821) [R]; " + _OGASAWARA,
        tag="D",
    )
    t_peak: float = ck.param(
        9.29, unit="d", description="time of the peak after the infusion (end of growth)", source=_OGASAWARA, tag="R"
    )
    alpha: float = ck.param(
        math.log(2.0) / 5.00,
        unit="1/d",
        description="rate of the fast (initial) decline",
        source="ln 2 / initial decline half-life 5.00 d (95 % CI 4.15-5.90) [R]; " + _OGASAWARA,
        tag="D",
    )
    beta: float = ck.param(
        math.log(2.0) / 352.0,
        unit="1/d",
        description="rate of the slow (terminal) decline",
        source="ln 2 / terminal half-life 352 d (95 % CI 241-647) [R]; " + _OGASAWARA,
        tag="D",
    )
    f_fast: float = ck.param(
        1.0 - 0.0079,
        unit="1",
        description="fraction of the peak level in the fast phase",
        source="not reported in the Ogasawara 2021 abstract; 1 - F_B with F_B = 0.79 % of "
        "Stein AM et al., CPT Pharmacometrics Syst Pharmacol 2019, doi:10.1002/psp4.12388 "
        "(tisagenlecleucel), borrowed",
        tag="A",
        upper=1.0,
    )
    c0: float = ck.param(
        100.0,
        unit="copies/ug",
        description="transgene level during the lag phase for an infusion of amount 1",
        source="chosen so that the peak (c0 x 251.3 = 25,134) lies between the median Cmax of "
        "non-responders and responders; " + _SMPC,
        tag="A",
    )

    @property
    def doubling_time(self):
        """Doubling time ln 2 / `k_growth` of the growth phase (d)."""
        return jnp.log(2.0) / self.k_growth

    @property
    def half_life_fast(self):
        """Half-life ln 2 / `alpha` of the fast decline (d)."""
        return jnp.log(2.0) / self.alpha

    @property
    def half_life_slow(self):
        """Half-life ln 2 / `beta` of the slow decline (d)."""
        return jnp.log(2.0) / self.beta

    @property
    def fold_expansion(self):
        """Peak level over lag-phase level, exp(`k_growth` · max(`t_peak` − `t_lag`, 0)) (dimensionless)."""
        return jnp.exp(self.k_growth * jnp.maximum(self.t_peak - self.t_lag, 0.0))

    @property
    def c_peak(self):
        """Peak transgene level `c0` · `fold_expansion` for an infusion of amount 1 (copies/µg)."""
        return self.c0 * self.fold_expansion

    def initial_state(self):
        zero = jnp.zeros_like(jnp.asarray(self.c0, dtype=float))
        return self.State(clock=zero, effector=zero, memory=zero)

    def __call__(self, t, y, args):
        del t, args  # autonomous: time enters only as the clock since the infusion
        infused = (y.effector + y.memory) > 0  # the clock starts with the infusion
        tau = y.clock
        growing = (tau >= self.t_lag) & (tau < self.t_peak)
        declining = tau >= self.t_peak
        to_memory = (1.0 - self.f_fast) * (self.alpha - self.beta)
        d_clock = jnp.where(infused, 1.0, 0.0)
        d_e = jnp.where(declining, -self.alpha * y.effector, jnp.where(growing, self.k_growth * y.effector, 0.0))
        d_m = jnp.where(declining, to_memory * y.effector - self.beta * y.memory, 0.0)
        return self.State(clock=d_clock, effector=d_e, memory=d_m)

    def observe(self, t, y):
        del t
        return self.Observables(transgene=self.c0 * (y.effector + y.memory))


def lag_ck_closed_form(params: LagPhaseCK | Mapping[str, Any], t) -> Any:
    """Closed-form transgene level (copies/µg) at `t` days after an infusion of amount 1.

    C = 0 before the infusion (t < 0), `c0`·exp(`k_growth`·max(t − `t_lag`, 0)) up to `t_peak`, then
    Cpeak·[`f_fast`·exp(−`alpha`(t − `t_peak`)) + (1 − `f_fast`)·exp(−`beta`(t − `t_peak`))].

    **Arguments:**

    - `params`: a `LagPhaseCK` or a mapping with the keys `t_lag, k_growth, t_peak, alpha, beta, f_fast, c0`.
    - `t`: time since the infusion in days (array-like); for an infusion on day `d` pass `days - d`.

    **Returns:** an array of the shape of `t`.

    **Raises:** `ValueError` if `params` is neither a `LagPhaseCK` nor a mapping with all seven keys.

    **Example:** `lag_ck_closed_form(LagPhaseCK(), 9.29)` is the peak, `LagPhaseCK().c_peak` (~25,134).
    """
    if isinstance(params, LagPhaseCK):
        params = {n: getattr(params, n) for n in _NAMES}
    keys = set(params) if isinstance(params, Mapping) else None
    if keys is None:
        raise ValueError(
            f"`params` must be a LagPhaseCK or a mapping of parameter values, got {type(params).__name__}."
        )
    missing = set(_NAMES) - keys
    if missing:
        raise ValueError(f"`params` lacks the LagPhaseCK parameters {sorted(missing)}; got keys {sorted(keys)}.")
    p = dict(params)
    t = jnp.asarray(t, dtype=float)
    growth = p["k_growth"] * jnp.maximum(jnp.minimum(t, p["t_peak"]) - p["t_lag"], 0.0)
    before_peak = p["c0"] * jnp.exp(growth)
    c_peak = p["c0"] * jnp.exp(p["k_growth"] * jnp.maximum(p["t_peak"] - p["t_lag"], 0.0))
    tau = jnp.maximum(t - p["t_peak"], 0.0)
    after_peak = c_peak * (p["f_fast"] * jnp.exp(-p["alpha"] * tau) + (1.0 - p["f_fast"]) * jnp.exp(-p["beta"] * tau))
    level = jnp.where(t < p["t_peak"], before_peak, after_peak)
    return jnp.where(t < 0.0, 0.0, level)
