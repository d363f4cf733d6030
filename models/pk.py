"""Linear one- and two-compartment pharmacokinetic models (IV dosing), in days.

These are the textbook reference models the simulation core is tested against (analytic solutions and the
matrix exponential). States are amounts (mg); the observable is the central concentration (mg/L).

One compartment:   dA/dt = -(CL/V) A
Two compartments:  dA1/dt = -(CL/V1) A1 - (Q/V1) A1 + (Q/V2) A2;   dA2/dt = (Q/V1) A1 - (Q/V2) A2

| parameter | default | unit | source |
|---|---|---|---|
| cl | 129.84 | L/d | cyclophosphamide CL 5.41 L/h × 24 (Ahmed 2020 Front Pharmacol 11:406) [R]/[D] |
| v | 46.5 | L | cyclophosphamide V (Ahmed 2020) [R] |
| two-compartment cl, v1, q, v2 | 192, 39, 206.4, 20 | L/d, L, L/d, L | fludarabine (Langenhorst 2019) [R]/[D] |

The two-compartment values are the first two compartments only of the fludarabine model of Langenhorst 2019
(Clin Pharmacokinet).
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

    cl: float = ck.param(5.41 * 24, unit="L/d", description="clearance",
                         source="Ahmed JH et al., Front Pharmacol 2020;11:406 (5.41 L/h x 24)", tag="D")
    v: float = ck.param(46.5, unit="L", description="volume of distribution",
                        source="Ahmed JH et al., Front Pharmacol 2020;11:406", tag="R")

    def initial_state(self):
        return self.State(central=0.0)

    def __call__(self, t, y, args):
        del t, args  # autonomous linear model
        return self.State(central=-self.cl / self.v * y.central)

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

    cl: float = ck.param(8.0 * 24, unit="L/d", description="total clearance (non-renal 3.24 + renal ~4.8 L/h)",
                         source="Langenhorst JB et al., Clin Pharmacokinet 2019, doi:10.1007/s40262-018-0715-9",
                         tag="D")
    v1: float = ck.param(39.0, unit="L", description="central volume",
                         source="Langenhorst 2019, doi:10.1007/s40262-018-0715-9", tag="R")
    q: float = ck.param(8.6 * 24, unit="L/d", description="intercompartmental clearance",
                        source="Langenhorst 2019 (8.6 L/h x 24)", tag="D")
    v2: float = ck.param(20.0, unit="L", description="peripheral volume",
                         source="Langenhorst 2019, doi:10.1007/s40262-018-0715-9", tag="R")

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
