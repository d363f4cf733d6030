"""Concrete carkinetics models, one file each (importable as `carkinetics.models`).

- `pk.py`: linear one- and two-compartment PK (reference models for the simulation core).
"""

from .pk import OneCompartmentPK as OneCompartmentPK, TwoCompartmentPK as TwoCompartmentPK
from .stein_2019 import Stein2019CK as Stein2019CK, stein_closed_form as stein_closed_form
