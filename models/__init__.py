"""Concrete carkinetics models, one file each (importable as `carkinetics.models`).

- `pk.py`: linear one- and two-compartment PK (reference models for the simulation core).
"""

from .pk import OneCompartmentPK as OneCompartmentPK, TwoCompartmentPK as TwoCompartmentPK
