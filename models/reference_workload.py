"""The 9-state solver-core timing workload shared with the peer benchmarks, as a carkinetics model.

A CAR-T / B-cell / autoantibody / cytokine ODE of representative size (9 states, saturable kinetics,
stiff-ish cytokine and drug dynamics). **Not a calibrated model**: it fixes a workload so solver timings are
comparable between carkinetics, scipy, libroadrunner and diffrax. Every parameter is tagged `A` (a workload
choice, not a published or fitted value). Units: days, cells/uL, IU/mL, pg/mL.

| state | meaning | unit |
|---|---|---|
| ce, cm | effector / memory CAR-T | cells/uL |
| b, pb, ll | B cells, plasmablasts, long-lived plasma cells | cells/uL |
| ab | autoantibody | IU/mL |
| il6, il7 | cytokines | pg/mL |
| cy | lymphodepleting drug (arbitrary concentration) | a.u. |
"""

from __future__ import annotations

from typing import NamedTuple

import jax.numpy as jnp

import carkinetics as ck

_SRC = "solver-core timing workload of the benchmarks (benchmarks/README.md); not calibrated"


def _p(default, unit, description):
    return ck.param(default, unit=unit, description=description, source=_SRC, tag="A")


class ReferenceWorkload(ck.AbstractKineticModel):
    """The 9-state solver-timing workload of the benchmarks (identical equations and defaults to the shared
    reference).

    **Example:**

    ```python
    import jax.numpy as jnp, carkinetics as ck
    from carkinetics.models.reference_workload import ReferenceWorkload
    sol = ck.simulate(ReferenceWorkload(), None, jnp.linspace(0.0, 365.0, 366))
    ```
    """

    class State(NamedTuple):
        ce: object
        cm: object
        b: object
        pb: object
        ll: object
        ab: object
        il6: object
        cy: object
        il7: object

    class Observables(NamedTuple):
        car_t: object
        b_cells: object
        autoantibody: object

    state_units = {
        "ce": "cells/uL",
        "cm": "cells/uL",
        "b": "cells/uL",
        "pb": "cells/uL",
        "ll": "cells/uL",
        "ab": "IU/mL",
        "il6": "pg/mL",
        "cy": "a.u.",
        "il7": "pg/mL",
    }
    observable_units = {"car_t": "cells/uL", "b_cells": "cells/uL", "autoantibody": "IU/mL"}

    rho: float = _p(0.9, "1/d", "maximal antigen-driven CAR-T expansion rate")
    kb: float = _p(50.0, "cells/uL", "B-cell level of half-maximal expansion")
    rh: float = _p(0.3, "1/d", "maximal IL-7-driven expansion rate")
    k7: float = _p(20.0, "pg/mL", "IL-7 level of half-maximal expansion")
    de: float = _p(0.35, "1/d", "effector CAR-T death rate")
    kem: float = _p(0.05, "1/d", "effector-to-memory conversion rate")
    dm: float = _p(0.01, "1/d", "memory CAR-T death rate")
    sb: float = _p(2.0, "cells/uL/d", "B-cell production")
    db: float = _p(0.01, "1/d", "B-cell death rate")
    kk: float = _p(0.5, "1/d", "maximal killing rate per CAR-T (scaled)")
    kkill: float = _p(200.0, "cells/uL", "target level of half-maximal killing")
    kdiff: float = _p(0.002, "1/d", "B-cell to plasmablast differentiation rate")
    dpb: float = _p(0.3, "1/d", "plasmablast death rate")
    ppb: float = _p(40.0, "IU/mL per cells/uL/d", "antibody secretion by plasmablasts")
    pll: float = _p(0.5, "IU/mL per cells/uL/d", "antibody secretion by long-lived plasma cells")
    dll: float = _p(0.0005, "1/d", "long-lived plasma cell death rate")
    kab: float = _p(0.033, "1/d", "antibody elimination rate")
    kil6: float = _p(5.0, "pg/mL per cells/uL", "IL-6 released per killed B cell")
    dil6: float = _p(3.0, "1/d", "IL-6 elimination rate")
    kcy: float = _p(0.6, "1/d", "drug elimination rate")
    s7: float = _p(4.0, "pg/mL/d", "IL-7 production")
    d7: float = _p(0.2, "1/d", "IL-7 elimination rate")
    c7: float = _p(0.002, "1/d per cells/uL", "IL-7 consumption by lymphocytes")

    def initial_state(self):
        return self.State(ce=0.02, cm=0.0, b=200.0, pb=2.0, ll=50.0, ab=300.0, il6=2.0, cy=30.0, il7=20.0)

    def __call__(self, t, y, args):
        del t, args  # autonomous
        kill = self.kk * y.ce * y.b / (y.b + self.kkill)
        grow = self.rho * y.b / (y.b + self.kb) + self.rh * y.il7 / (y.il7 + self.k7)
        lymph = y.b + y.ce + y.cm
        return self.State(
            ce=grow * y.ce - self.de * y.ce - self.kem * y.ce,
            cm=self.kem * y.ce - self.dm * y.cm,
            b=self.sb - self.db * y.b - kill - self.kdiff * y.b - 0.02 * y.cy * y.b,
            pb=self.kdiff * y.b * 100 - self.dpb * y.pb - self.kk * y.ce * y.pb / (y.pb + self.kkill),
            ll=-self.dll * y.ll,
            ab=self.ppb * y.pb + self.pll * y.ll - self.kab * y.ab,
            il6=self.kil6 * kill - self.dil6 * y.il6,
            cy=-self.kcy * y.cy,
            il7=self.s7 - self.d7 * y.il7 - self.c7 * lymph * y.il7,
        )

    def observe(self, t, y):
        del t
        return self.Observables(car_t=y.ce + y.cm, b_cells=y.b, autoantibody=jnp.asarray(y.ab))


#: Parameter names in the order of the shared reference's `P0` dict (for scipy / roadrunner comparisons).
SHARED_ORDER = (
    "rho",
    "kb",
    "rh",
    "k7",
    "de",
    "kem",
    "dm",
    "sb",
    "db",
    "kk",
    "kkill",
    "kdiff",
    "dpb",
    "ppb",
    "pll",
    "dll",
    "kab",
    "kil6",
    "dil6",
    "kcy",
    "s7",
    "d7",
    "c7",
)
