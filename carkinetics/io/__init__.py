"""Interop: SBML/Antimony export, PEtab-style tables, NONMEM-style data, tidy CSV tables of a simulation."""

from .._core._files import (
    atomic_text_file as atomic_text_file,
    atomic_write_bytes as atomic_write_bytes,
    atomic_write_text as atomic_write_text,
)
from ._nonmem import (
    Observations as Observations,
    observations_from_solution as observations_from_solution,
    read_nonmem_events as read_nonmem_events,
    read_nonmem_observations as read_nonmem_observations,
    write_nonmem_dataset as write_nonmem_dataset,
    write_nonmem_events as write_nonmem_events,
)
from ._petab import (
    PetabCondition as PetabCondition,
    PetabMeasurement as PetabMeasurement,
    PetabObservable as PetabObservable,
    PetabParameter as PetabParameter,
    PetabProblem as PetabProblem,
    parameter_id as parameter_id,
    petab_parameters_from_model as petab_parameters_from_model,
    read_petab as read_petab,
    write_petab as write_petab,
)
from ._sbml import (
    SymbolicModel as SymbolicModel,
    antimony_to_sbml as antimony_to_sbml,
    symbolic_model as symbolic_model,
    to_antimony as to_antimony,
    to_sbml as to_sbml,
    write_sbml as write_sbml,
)
from ._tidy import write_tidy_csv as write_tidy_csv
