"""carkinetics: differentiable mechanistic PK/PD and cell-kinetic models in JAX + diffrax + equinox.

The public API is exactly what this module exports (plus the public submodules `metrics`, `io`, `plot`, `report`).
Time is in days (day 0 = the reference dose, e.g. the CAR-T infusion). Concrete models, including the SLE CAR-T
application, live in `carkinetics.models`, which this package never imports.
"""

import importlib.metadata

from . import metrics as metrics
from ._analysis._distributed import (
    DistributedSetting as DistributedSetting,
    ProcessFailed as ProcessFailed,
    distributed_setup as distributed_setup,
)
from ._analysis._gsa import GSAProblem as GSAProblem, gsa_problem as gsa_problem, model_function as model_function
from ._analysis._interrupt import Interrupted as Interrupted
from ._analysis._morris import (
    MorrisResult as MorrisResult,
    morris_analysis as morris_analysis,
    morris_indices as morris_indices,
    morris_sample as morris_sample,
)
from ._analysis._population import (
    CovariateEffect as CovariateEffect,
    Population as Population,
    percentile_bands as percentile_bands,
    sample_covariates as sample_covariates,
    sample_posterior as sample_posterior,
    virtual_population as virtual_population,
)
from ._analysis._sobol import (
    SobolResult as SobolResult,
    saltelli_sample as saltelli_sample,
    sobol_analysis as sobol_analysis,
    sobol_indices as sobol_indices,
)
from ._analysis._sweep import (
    AbstractBatchFunction as AbstractBatchFunction,
    ParameterBatch as ParameterBatch,
    SweepResult as SweepResult,
    observable_metrics as observable_metrics,
    sweep as sweep,
    sweep_model as sweep_model,
)
from ._attribution._shapley import (
    GroupSwaps as GroupSwaps,
    MechanismGroup as MechanismGroup,
    ShapleyResult as ShapleyResult,
    coalition_masks as coalition_masks,
    evaluate_coalitions as evaluate_coalitions,
    evaluate_models as evaluate_models,
    one_group_swaps as one_group_swaps,
    shapley_attribution as shapley_attribution,
    shapley_from_values as shapley_from_values,
    shapley_matrix as shapley_matrix,
    shapley_values as shapley_values,
    swap as swap,
)
from ._attribution._translation import (
    DEFAULT_SPREAD as DEFAULT_SPREAD,
    UNVERIFIED_TAGS as UNVERIFIED_TAGS,
    TranslationMap as TranslationMap,
    differing_parameters as differing_parameters,
    sample_parameters as sample_parameters,
    translation_map as translation_map,
)
from ._core._dosing import (
    AbstractDose as AbstractDose,
    Bolus as Bolus,
    FractionalKill as FractionalKill,
    Infusion as Infusion,
    Regimen as Regimen,
    ResolvedRegimen as ResolvedRegimen,
    resolve_regimen as resolve_regimen,
)
from ._core._model import AbstractKineticModel as AbstractKineticModel, state_index as state_index
from ._core._parameters import (
    CONFIDENCE_TAGS as CONFIDENCE_TAGS,
    Parameter as Parameter,
    ParameterSpace as ParameterSpace,
    ParameterTable as ParameterTable,
    ParamInfo as ParamInfo,
    get_parameter as get_parameter,
    param as param,
    parameter_table as parameter_table,
    parameters as parameters,
    replace as replace,
    validate_parameters as validate_parameters,
)
from ._core._regimens import (
    bsa_dubois as bsa_dubois,
    bsa_mosteller as bsa_mosteller,
    car_t_infusion as car_t_infusion,
    cyclophosphamide as cyclophosphamide,
    fludarabine as fludarabine,
)
from ._core._solution import RESULTS as RESULTS, Solution as Solution
from ._engine._batch import (
    AbstractExperiment as AbstractExperiment,
    Experiment as Experiment,
    batch_models as batch_models,
    run_experiment as run_experiment,
)
from ._engine._simulate import (
    SimulationError as SimulationError,
    default_solver as default_solver,
    simulate as simulate,
    simulate_ensemble as simulate_ensemble,
)
from ._ensemble import (
    AbstractEnsembleMethod as AbstractEnsembleMethod,
    EnsembleRodas5 as EnsembleRodas5,
    EnsembleTsit5 as EnsembleTsit5,
)
from ._inference._data import (
    SummaryData as SummaryData,
    TimeCourseData as TimeCourseData,
    summary_target as summary_target,
    timecourse_target as timecourse_target,
)
from ._inference._fit import FitResult as FitResult, fit as fit, make_starts as make_starts
from ._inference._fitio import (
    apply_fit as apply_fit,
    load_fit as load_fit,
    read_fit_provenance as read_fit_provenance,
    save_fit as save_fit,
)
from ._inference._identifiability import (
    IdentifiabilityWarning as IdentifiabilityWarning,
    LaplaceResult as LaplaceResult,
    Profile as Profile,
    laplace as laplace,
    profile_likelihood as profile_likelihood,
)
from ._inference._observation import (
    AbstractObservationModel as AbstractObservationModel,
    CensoredError as CensoredError,
    LogNormalError as LogNormalError,
    NormalError as NormalError,
)
from ._inference._popdata import (
    PopulationData as PopulationData,
    example_data as example_data,
    read_population_data as read_population_data,
)
from ._inference._popdiag import (
    npde as npde,
    population_diagnostics as population_diagnostics,
    write_table as write_table,
)
from ._inference._popfit import PopulationFit as PopulationFit, fit_population as fit_population
from ._inference._population_model import (
    AbstractResidualError as AbstractResidualError,
    AdditiveError as AdditiveError,
    CombinedError as CombinedError,
    LogAdditiveError as LogAdditiveError,
    PopulationParameters as PopulationParameters,
    PopulationProblem as PopulationProblem,
    ProportionalError as ProportionalError,
)
from ._inference._posterior import (
    PopulationPosterior as PopulationPosterior,
    sample_population_posterior as sample_population_posterior,
)
from ._inference._problem import PRIOR_SD as PRIOR_SD, CalibrationProblem as CalibrationProblem
from ._inference._targets import (
    UNITS as UNITS,
    AbstractStatistic as AbstractStatistic,
    CrossingTime as CrossingTime,
    FoldChange as FoldChange,
    HalfLife as HalfLife,
    PeakHeight as PeakHeight,
    PeakTime as PeakTime,
    TargetRow as TargetRow,
    TargetTable as TargetTable,
    TimeAbove as TimeAbove,
    TimeBelow as TimeBelow,
    ValueAt as ValueAt,
    convert_unit as convert_unit,
    load_targets as load_targets,
    validate_target_row as validate_target_row,
)
from .io._nonmem import read_nonmem_events as read_nonmem_events, write_nonmem_events as write_nonmem_events

try:
    __version__ = importlib.metadata.version("carkinetics")
except importlib.metadata.PackageNotFoundError:  # running from a source tree without installation
    __version__ = "0.0.0+unknown"
