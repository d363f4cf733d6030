"""Interop: SBML/Antimony export, PEtab-style tables, NONMEM-style data."""
