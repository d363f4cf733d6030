"""Concrete carkinetics models, one file each (importable as `carkinetics.models`).

- `pk.py`: linear one- and two-compartment PK (reference models for the simulation core).
- `stein_2019.py`: Stein 2019 tisagenlecleucel cellular kinetics (`Stein2019CK`, `stein_closed_form`).
- `lymphodepletion.py`, `car_t.py`, `bcells.py`, `autoantibodies.py`, `cytokines.py`, `disease.py`: the SLE
  CAR-T mechanisms; `sle_car_t.py`: the composed `SLECarTModel`; `presets.py` + `presets/*.toml`: species presets.
"""

from .pk import OneCompartmentPK as OneCompartmentPK, TwoCompartmentPK as TwoCompartmentPK
from .stein_2019 import Stein2019CK as Stein2019CK, stein_closed_form as stein_closed_form
from .autoantibodies import HumoralParams as HumoralParams
from .bcells import BCellParams as BCellParams
from .car_t import CarTParams as CarTParams
from .cytokines import MyeloidParams as MyeloidParams
from .disease import DiseaseParams as DiseaseParams
from .lymphodepletion import (
    CyclophosphamidePK as CyclophosphamidePK,
    FludarabinePK as FludarabinePK,
    LymphodepletionParams as LymphodepletionParams,
    TCellParams as TCellParams,
)
from .presets import (
    PresetEntry as PresetEntry,
    dump_preset as dump_preset,
    load_preset as load_preset,
    preset_names as preset_names,
    preset_parameter_table as preset_parameter_table,
    preset_records as preset_records,
)
from .sle_car_t import (
    DEFAULT_TOLERANCES as DEFAULT_TOLERANCES,
    TBI_STATES as TBI_STATES,
    BodyParams as BodyParams,
    SLECarTModel as SLECarTModel,
    erlangen_regimen as erlangen_regimen,
    human_default_ts as human_default_ts,
    mouse_regimen as mouse_regimen,
    simulate_default as simulate_default,
    tocilizumab as tocilizumab,
)
