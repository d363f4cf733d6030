"""Figures (matplotlib). One private module per feature; public functions re-exported here."""
