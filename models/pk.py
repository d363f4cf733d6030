"""Linear one- and two-compartment pharmacokinetic models (IV and oral dosing), in days.

These are the textbook reference models the simulation core is tested against (analytic solutions and the
matrix exponential). States are amounts (mg); the observable is the central concentration (mg/L).

One compartment:   dA/dt = -(CL/V) A
One compartment, first-order absorption (oral):   dD/dt = -ka D;   dA/dt = ka D - (CL/V) A   (the dose is a bolus
into `depot`; bioavailability is absorbed into CL/F and V/F)
Two compartments:  dA1/dt = -(CL/V1) A1 - (Q/V1) A1 + (Q/V2) A2;   dA2/dt = (Q/V1) A1 - (Q/V2) A2

| parameter | default | unit | source |
|---|---|---|---|
| cl | 129.84 | L/d | cyclophosphamide CL 5.41 L/h × 24 (Ahmed 2020 Front Pharmacol 11:406) [R]/[D] |
| v | 46.5 | L | cyclophosphamide V (Ahmed 2020) [R] |
| oral ka, cl, v | 36, 66, 31.5 | 1/d, L/d, L | theophylline, nlmixr2 `theo_sd` estimates [M] |
| two-compartment cl, v1, q, v2 | 192, 39, 206.4, 20 | L/d, L, L/d, L | fludarabine (Langenhorst 2019) [R]/[D] |

The oral values are nlmixr2's `theo_sd` estimates per hour (ka 1.5 /h, CL 2.75 L/h, V 31.5 L). The two-compartment
values are the first two compartments only of the fludarabine model of Langenhorst 2019 (Clin Pharmacokinet).
"""

from __future__ import annotations

from typing import NamedTuple

import carkinetics as ck


class OneCompartmentPK(ck.AbstractKineticModel):
    """Linear one-compartment model; defaults are cyclophosphamide's population PK (Ahmed 2020).

    **Example:**

    ```python
    import jax.numpy as jnp, carkinetics as ck
    from carkinetics.models import OneCompartmentPK
    sol = ck.simulate(OneCompartmentPK(), ck.Bolus(0.0, 1800.0, "central"), jnp.linspace(0, 1, 25))
    ```
    """

    class State(NamedTuple):
        central: object

    class Observables(NamedTuple):
        concentration: object

    state_units = {"central": "mg"}
    observable_units = {"concentration": "mg/L"}

    cl: float = ck.param(
        5.41 * 24,
        unit="L/d",
        description="clearance",
        source="Ahmed JH et al., Front Pharmacol 2020;11:406 (5.41 L/h x 24)",
        tag="D",
    )
    v: float = ck.param(
        46.5,
        unit="L",
        description="volume of distribution",
        source="Ahmed JH et al., Front Pharmacol 2020;11:406",
        tag="R",
    )

    def initial_state(self):
        return self.State(central=0.0)

    def __call__(self, t, y, args):
        del t, args  # autonomous linear model
        return self.State(central=-self.cl / self.v * y.central)

    def observe(self, t, y):
        del t
        return self.Observables(concentration=y.central / self.v)


class OneCompartmentOralPK(ck.AbstractKineticModel):
    """One-compartment model with first-order absorption from a depot (oral dosing).

    An oral dose is a bolus into the `depot` state; `cl` and `v` are apparent (divided by the unknown
    bioavailability F). Defaults are rounded theophylline values (the population estimates nlmixr2 reports for the
    `theo_sd` data set, converted from hours to days), tagged [M]: illustrative starting values, not a dose
    recommendation.

    **Example:**

    ```python
    import jax.numpy as jnp, carkinetics as ck
    from carkinetics.models import OneCompartmentOralPK
    sol = ck.simulate(OneCompartmentOralPK(), ck.Bolus(0.0, 320.0, "depot"), jnp.linspace(0, 1, 25))
    sol.observables.concentration.max()   # ~8.5 mg/L about 2 h after 320 mg
    ```

    ??? cite "Reference"
        Fidler M, Wilkins JJ, Hooijmaijers R, et al. Nonlinear mixed-effects model development and simulation using
        nlmixr and related R open-source packages. CPT Pharmacometrics Syst Pharmacol 2019;8:621-633.
        doi:10.1002/psp4.12445
    """

    class State(NamedTuple):
        depot: object
        central: object

    class Observables(NamedTuple):
        concentration: object

    state_units = {"depot": "mg", "central": "mg"}
    observable_units = {"concentration": "mg/L"}

    ka: float = ck.param(
        1.5 * 24,
        unit="1/d",
        description="first-order absorption rate constant",
        source="theophylline, nlmixr2 theo_sd estimate ~1.5 /h x 24 (Fidler 2019, doi:10.1002/psp4.12445)",
        tag="M",
    )
    cl: float = ck.param(
        2.75 * 24,
        unit="L/d",
        description="apparent clearance CL/F",
        source="theophylline, nlmixr2 theo_sd estimate ~2.75 L/h x 24 (Fidler 2019)",
        tag="M",
    )
    v: float = ck.param(
        31.5,
        unit="L",
        description="apparent volume of distribution V/F",
        source="theophylline, nlmixr2 theo_sd estimate ~31.5 L (Fidler 2019)",
        tag="M",
    )

    def initial_state(self):
        return self.State(depot=0.0, central=0.0)

    def __call__(self, t, y, args):
        del t, args  # autonomous linear model
        absorbed = self.ka * y.depot
        return self.State(depot=-absorbed, central=absorbed - self.cl / self.v * y.central)

    def observe(self, t, y):
        del t
        return self.Observables(concentration=y.central / self.v)


class TwoCompartmentPK(ck.AbstractKineticModel):
    """Linear two-compartment model (central + peripheral); defaults from fludarabine (Langenhorst 2019)."""

    class State(NamedTuple):
        central: object
        peripheral: object

    class Observables(NamedTuple):
        concentration: object

    state_units = {"central": "mg", "peripheral": "mg"}
    observable_units = {"concentration": "mg/L"}

    cl: float = ck.param(
        8.0 * 24,
        unit="L/d",
        description="total clearance (non-renal 3.24 + renal ~4.8 L/h)",
        source="Langenhorst JB et al., Clin Pharmacokinet 2019, doi:10.1007/s40262-018-0715-9",
        tag="D",
    )
    v1: float = ck.param(
        39.0, unit="L", description="central volume", source="Langenhorst 2019, doi:10.1007/s40262-018-0715-9", tag="R"
    )
    q: float = ck.param(
        8.6 * 24,
        unit="L/d",
        description="intercompartmental clearance",
        source="Langenhorst 2019 (8.6 L/h x 24)",
        tag="D",
    )
    v2: float = ck.param(
        20.0,
        unit="L",
        description="peripheral volume",
        source="Langenhorst 2019, doi:10.1007/s40262-018-0715-9",
        tag="R",
    )

    def initial_state(self):
        return self.State(central=0.0, peripheral=0.0)

    def __call__(self, t, y, args):
        del t, args
        k10, k12, k21 = self.cl / self.v1, self.q / self.v1, self.q / self.v2
        return self.State(
            central=-(k10 + k12) * y.central + k21 * y.peripheral,
            peripheral=k12 * y.central - k21 * y.peripheral,
        )

    def observe(self, t, y):
        del t
        return self.Observables(concentration=y.central / self.v1)
