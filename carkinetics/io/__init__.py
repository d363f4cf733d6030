"""Interop: SBML/Antimony export, PEtab-style tables, NONMEM-style data."""

from ._sbml import (
    SymbolicModel as SymbolicModel,
    antimony_to_sbml as antimony_to_sbml,
    symbolic_model as symbolic_model,
    to_antimony as to_antimony,
    to_sbml as to_sbml,
    write_sbml as write_sbml,
)
