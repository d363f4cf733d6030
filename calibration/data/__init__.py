"""Published calibration targets (tidy CSV files with provenance), installed as package data of the SLE
application (`carkinetics.models.sle.data`); see README.md in this folder."""
