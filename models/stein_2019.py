"""Stein 2019 tisagenlecleucel cellular kinetics (multiphasic empirical model) as an ODE.

Stein AM, Grupp SA, Levine JE, et al. "Tisagenlecleucel model-based cellular kinetic analysis of chimeric
antigen receptor-T cells." CPT Pharmacometrics Syst Pharmacol 2019;8(5):285-295, doi:10.1002/psp4.12388.

Transgene level (copies/µg gDNA) of an effector pool `E` and a memory-like pool `M`:

- for t < Tmax: dE/dt = ρ·E with ρ = ln(foldx)/Tmax (× F_toci from the first tocilizumab dose on), M = 0;
- for t ≥ Tmax: dE/dt = −α·E, dM/dt = k·E − β·M with k = F_B(α − β) and M(Tmax) = 0.

E(0) = R0 = Cmax/foldx, so that without tocilizumab E(Tmax) = Cmax. The observable is E + M, which equals the
closed form C(t) = (1−F_B)·Cmax·e^{−α(t−Tmax)} + F_B·Cmax·e^{−β(t−Tmax)} after Tmax (see `stein_closed_form`).
This ODE form is the re-implementation of the published model in nlmixr2lib (`Stein_2019_Tisagenlecleucel.R`) [R2].

| parameter | default | unit | tag | source |
|---|---|---|---|---|
| foldx | 3900 | 1 | R | Stein 2019 Table 1 (RSE 30 %) |
| tmax | 9.3 | d | R | Stein 2019 Table 1 (RSE 4.2 %) |
| cmax | 24000 | copies/ug | R | Stein 2019 Table 1 (RSE 20 %) |
| alpha | 0.16 | 1/d | R | Stein 2019 Table 1 (RSE 11 %) |
| fb | 0.0079 | 1 | R | Stein 2019 Table 1 (RSE 15 %) |
| beta | 0.0032 | 1/d | R | Stein 2019 Table 1 (RSE 23 %) |
| f_toci | 1.2 | 1 | R | Stein 2019 Table 1 (RSE 7.5 %) |
| t_toci | 1e6 | d | A | day of the first tocilizumab dose; the default (far beyond any horizon) means none given |

Values transcribed via nlmixr2lib `Stein_2019_Tisagenlecleucel.R` ("Stein 2019 Table 1") and the paper's abstract
(Europe PMC).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

import jax.numpy as jnp

import carkinetics as ck

_STEIN = "Stein AM et al., CPT Pharmacometrics Syst Pharmacol 2019;8:285, doi:10.1002/psp4.12388, Table 1"


class Stein2019CK(ck.AbstractKineticModel):
    """Stein 2019 multiphasic CAR-T cellular kinetics (tisagenlecleucel, paediatric r/r B-ALL).

    Default parameters are the Table 1 typical values [R]; `rho`, `r0` and the half-lives are derived [D]
    properties. The vector field is discontinuous at `tmax` and `t_toci`, declared as breakpoints so the
    integrator restarts there. No dose is needed: the expansion starts from `E(0) = cmax / foldx`.

    **Example:**

    ```python
    import jax.numpy as jnp, carkinetics as ck
    from carkinetics.models import Stein2019CK, stein_closed_form
    model = Stein2019CK()
    ts = jnp.array([0.0, 9.3, 28.0, 365.0])
    sol = ck.simulate(model, None, ts)
    sol.observables.transgene            # copies/ug gDNA, ~[6.15, 24000, 1.4e3, 1.2e2]
    stein_closed_form(model, ts)         # the same from the closed form
    ```

    ??? cite "Reference"
        Stein AM, Grupp SA, Levine JE, et al. CPT Pharmacometrics Syst Pharmacol 2019;8(5):285-295.
        doi:10.1002/psp4.12388
    """

    class State(NamedTuple):
        effector: Any
        memory: Any

    class Observables(NamedTuple):
        transgene: Any

    state_units = {"effector": "copies/ug", "memory": "copies/ug"}
    observable_units = {"transgene": "copies/ug"}
    breakpoint_parameters = ("tmax", "t_toci")

    foldx: float = ck.param(
        3900.0, unit="1", description="fold expansion from R0 to Cmax", source=_STEIN, tag="R", lower=1.0
    )
    tmax: float = ck.param(9.3, unit="d", description="time of peak expansion", source=_STEIN, tag="R")
    cmax: float = ck.param(24000.0, unit="copies/ug", description="peak transgene level", source=_STEIN, tag="R")
    alpha: float = ck.param(0.16, unit="1/d", description="effector contraction rate", source=_STEIN, tag="R")
    fb: float = ck.param(
        0.0079,
        unit="1",
        description="fraction of the peak entering the slow (memory) phase",
        source=_STEIN,
        tag="R",
        upper=1.0,
    )
    beta: float = ck.param(0.0032, unit="1/d", description="memory-phase decline rate", source=_STEIN, tag="R")
    f_toci: float = ck.param(
        1.2, unit="1", description="multiplier on rho from the first tocilizumab dose on", source=_STEIN, tag="R"
    )
    t_toci: float = ck.param(
        1.0e6,
        unit="d",
        description="day of the first tocilizumab dose (1e6: none given)",
        source="modelling choice: tocilizumab timing is a per-patient covariate",
        tag="A",
    )

    @property
    def rho(self):
        """Expansion rate ln(foldx)/tmax (1/d) [D]: 0.889/d with Table 1 values (doubling time 0.78 d)."""
        return jnp.log(self.foldx) / self.tmax

    @property
    def r0(self):
        """Initial transgene level cmax/foldx (copies/µg) [D]."""
        return self.cmax / self.foldx

    def initial_state(self):
        return self.State(effector=self.r0, memory=jnp.zeros_like(jnp.asarray(self.cmax, dtype=float)))

    def __call__(self, t, y, args):
        del args  # no covariates
        expanding = t < self.tmax
        rho = self.rho * jnp.where(t >= self.t_toci, self.f_toci, 1.0)
        k = self.fb * (self.alpha - self.beta)
        d_e = jnp.where(expanding, rho * y.effector, -self.alpha * y.effector)
        d_m = jnp.where(expanding, 0.0, k * y.effector - self.beta * y.memory)
        return self.State(effector=d_e, memory=d_m)

    def observe(self, t, y):
        del t
        return self.Observables(transgene=y.effector + y.memory)


def stein_closed_form(params: Stein2019CK | Mapping[str, Any], t) -> Any:
    """Closed-form Stein 2019 transgene level (copies/µg) at times `t` (days).

    C(t) = R0·exp(∫ρ) for t < Tmax (ρ multiplied by F_toci after `t_toci`), then
    C(t) = (1−F_B)·C(Tmax)·e^{−α(t−Tmax)} + F_B·C(Tmax)·e^{−β(t−Tmax)}.

    **Arguments:**

    - `params`: a `Stein2019CK` or a mapping with keys `foldx, tmax, cmax, alpha, fb, beta` (optionally
      `f_toci`, `t_toci`).
    - `t`: times in days (array-like).

    **Returns:** array of the same shape as `t`.

    **Example:** `stein_closed_form(Stein2019CK(), 9.3)` is 24000.0.
    """
    if isinstance(params, Stein2019CK):
        p = {n: getattr(params, n) for n in ("foldx", "tmax", "cmax", "alpha", "fb", "beta", "f_toci", "t_toci")}
    elif isinstance(params, Mapping):
        missing = {"foldx", "tmax", "cmax", "alpha", "fb", "beta"} - set(params)
        if missing:
            raise ValueError(f"`params` lacks the Stein parameters {sorted(missing)}; got keys {sorted(params)}.")
        p = dict(params)
        p.setdefault("f_toci", 1.0)
        p.setdefault("t_toci", jnp.inf)
    else:
        raise ValueError(
            f"`params` must be a Stein2019CK or a mapping of parameter values, got {type(params).__name__}."
        )
    t = jnp.asarray(t, dtype=float)
    rho = jnp.log(p["foldx"]) / p["tmax"]
    r0 = p["cmax"] / p["foldx"]

    def log_expansion(s):  # log(E(s)/R0) for s <= tmax
        before = jnp.minimum(s, p["t_toci"])
        after = jnp.maximum(s - p["t_toci"], 0.0)
        return rho * before + rho * p["f_toci"] * after

    c_peak = r0 * jnp.exp(log_expansion(p["tmax"]))
    tau = jnp.maximum(t - p["tmax"], 0.0)
    contraction = c_peak * ((1.0 - p["fb"]) * jnp.exp(-p["alpha"] * tau) + p["fb"] * jnp.exp(-p["beta"] * tau))
    expansion = r0 * jnp.exp(log_expansion(jnp.minimum(t, p["tmax"])))
    return jnp.where(t < p["tmax"], expansion, contraction)
