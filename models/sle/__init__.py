"""The SLE CAR-T application (`carkinetics.models.sle`): one composed model of lymphodepletion, CAR-T cell
kinetics, B cells, autoantibodies, cytokines/CRS and disease activity, with its regimens, metrics, species presets
and the mouse-to-human translation protocol.

Built only on the public `carkinetics` API; the library itself never imports this package. Its command-line
plugins (presets and the default run, `carkinetics translate`, `carkinetics demo`) are `cli.py` and `demo.py`,
loaded by the command line through entry points, not imported here.
"""

from carkinetics.models.sle.autoantibodies import HumoralParams as HumoralParams
from carkinetics.models.sle.bcells import BCellParams as BCellParams
from carkinetics.models.sle.car_t import CarTParams as CarTParams
from carkinetics.models.sle.cytokines import MyeloidParams as MyeloidParams
from carkinetics.models.sle.disease import DiseaseParams as DiseaseParams
from carkinetics.models.sle.lymphodepletion import (
    CyclophosphamidePK as CyclophosphamidePK,
    FludarabinePK as FludarabinePK,
    LymphodepletionParams as LymphodepletionParams,
    TCellParams as TCellParams,
)
from carkinetics.models.sle.model import BodyParams as BodyParams, SLECarTModel as SLECarTModel
from carkinetics.models.sle.regimens import (
    TBI_STATES as TBI_STATES,
    erlangen_regimen as erlangen_regimen,
    mouse_regimen as mouse_regimen,
    tocilizumab as tocilizumab,
)
from carkinetics.models.sle.metrics import (
    SLE_METRICS as SLE_METRICS,
    save_times as save_times,
    sle_metrics as sle_metrics,
)
from carkinetics.models.sle.presets import (
    PresetEntry as PresetEntry,
    dump_preset as dump_preset,
    load_preset as load_preset,
    preset_names as preset_names,
    preset_parameter_table as preset_parameter_table,
    preset_records as preset_records,
)
from carkinetics.models.sle.translation import (
    ArmExperiment as ArmExperiment,
    SLEArm as SLEArm,
    SLEProtocol as SLEProtocol,
    gap_groups as gap_groups,
    mouse_protocol as mouse_protocol,
    sle_scenarios as sle_scenarios,
    sle_translation_map as sle_translation_map,
    write_translation_report as write_translation_report,
)
from carkinetics.models.sle.targets import (
    QUANTITIES as QUANTITIES,
    load_sle_targets as load_sle_targets,
    target_file as target_file,
)
