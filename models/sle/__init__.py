"""The SLE CAR-T application (`carkinetics.models.sle`): one composed model of conditioning, CAR-T cell kinetics, host
anti-CAR rejection, B cells and plasma cells, autoantibodies, cytokine release/CRS and disease activity, with its
products, regimens, metrics, presets, the mouse-to-human translation protocol and model-linked virtual trials
(`trials.py`, figures in `trial_plots.py`).

Built only on the public `carkinetics` API; the library itself never imports this package. Its command-line
plugins (presets and the default run, `carkinetics translate`, `carkinetics demo`, `carkinetics trial`) are `cli.py`
and `demo.py`, loaded by the command line through entry points, not imported here.
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
from carkinetics.models.sle.metrics import (
    SLE_METRICS as SLE_METRICS,
    save_times as save_times,
    sle_metrics as sle_metrics,
)
from carkinetics.models.sle.model import (
    CAR_DOSE_STATE as CAR_DOSE_STATE,
    BodyParams as BodyParams,
    SLECarTModel as SLECarTModel,
)
from carkinetics.models.sle.presets import (
    PresetEntry as PresetEntry,
    dump_preset as dump_preset,
    fit_path as fit_path,
    load_preset as load_preset,
    preset_fit as preset_fit,
    preset_meta as preset_meta,
    preset_names as preset_names,
    preset_parameter_table as preset_parameter_table,
    preset_records as preset_records,
)
from carkinetics.models.sle.products import (
    PRODUCTS as PRODUCTS,
    Product as Product,
    ProductParams as ProductParams,
    get_product as get_product,
    host_of as host_of,
    with_product as with_product,
)
from carkinetics.models.sle.regimens import (
    TBI_STATES as TBI_STATES,
    car_cells as car_cells,
    car_infusion as car_infusion,
    conditioning as conditioning,
    dexamethasone as dexamethasone,
    erlangen_regimen as erlangen_regimen,
    flu_cy_regimen as flu_cy_regimen,
    mouse_regimen as mouse_regimen,
    no_conditioning_regimen as no_conditioning_regimen,
    tocilizumab as tocilizumab,
)
from carkinetics.models.sle.rejection import RejectionParams as RejectionParams
from carkinetics.models.sle.targets import (
    QUANTITIES as QUANTITIES,
    load_sle_targets as load_sle_targets,
    target_file as target_file,
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
from carkinetics.models.sle.trials import (
    DoseOutcomes as DoseOutcomes,
    StandardOfCare as StandardOfCare,
    TrialExperiment as TrialExperiment,
    comparator_power as comparator_power,
    conditioning_analysis as conditioning_analysis,
    eligibility_analysis as eligibility_analysis,
    monitoring_analysis as monitoring_analysis,
    run_model_trial as run_model_trial,
    simulate_dose_outcomes as simulate_dose_outcomes,
    trial_population as trial_population,
)
