"""Batched ensemble solver core (see issue 8)."""
