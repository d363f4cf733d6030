"""Concrete carkinetics models (importable as `carkinetics.models`).

- `pk.py`: linear one- and two-compartment PK, IV and oral (reference models for the simulation core).
- `stein_2019.py`: Stein 2019 tisagenlecleucel cellular kinetics (`Stein2019CK`, `stein_closed_form`).
- `lag_ck.py`: lag-phase cellular kinetics of the liso-cel popCK structure, Ogasawara 2021 (`LagPhaseCK`,
  `lag_ck_closed_form`).
- `reference_workload.py`: the 9-state solver-core timing workload (`ReferenceWorkload`).
- `sle/` (`carkinetics.models.sle`): the SLE CAR-T application: mechanisms, the composed model, regimens, products,
  metrics, species presets and the mouse-to-human translation protocol.
"""

from carkinetics.models.lag_ck import LagPhaseCK as LagPhaseCK, lag_ck_closed_form as lag_ck_closed_form
from carkinetics.models.pk import (
    OneCompartmentOralPK as OneCompartmentOralPK,
    OneCompartmentPK as OneCompartmentPK,
    TwoCompartmentPK as TwoCompartmentPK,
)
from carkinetics.models.reference_workload import ReferenceWorkload as ReferenceWorkload
from carkinetics.models.stein_2019 import Stein2019CK as Stein2019CK, stein_closed_form as stein_closed_form
