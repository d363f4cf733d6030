"""Entry checks shared by the trial designs and the trial simulator (concrete values, `ValueError` with the name)."""

from __future__ import annotations

import math
import numbers

import numpy as np


def check_open_probability(owner: str, name: str, value: object) -> float:
    """A real number strictly between 0 and 1 (a target DLT rate, a cutoff)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0.0 < float(value) < 1.0:
        raise ValueError(f"{owner}: `{name}` must be a number strictly between 0 and 1; got {value!r}.")
    return float(value)


def check_positive_int(owner: str, name: str, value: object) -> int:
    """A positive Python or NumPy integer (not a bool, not a float such as 3.0)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or int(value) < 1:
        raise ValueError(f"{owner}: `{name}` must be a positive integer; got {value!r}.")
    return int(value)


def check_positive_real(owner: str, name: str, value: object) -> float:
    if (
        isinstance(value, bool)
        or not isinstance(value, numbers.Real)
        or not math.isfinite(float(value))
        or float(value) <= 0.0
    ):
        raise ValueError(f"{owner}: `{name}` must be a finite positive number; got {value!r}.")
    return float(value)


def check_dose_probabilities(owner: str, name: str, value: object) -> np.ndarray:
    """A 1-D ladder of at least two probabilities in [0, 1] (one per dose, lowest dose first)."""
    try:
        arr = np.asarray(value, dtype=float)
    except (TypeError, ValueError):
        raise ValueError(
            f"{owner}: `{name}` must be a 1-D array of probabilities, one per dose; got {value!r}."
        ) from None
    if arr.ndim != 1 or arr.shape[0] < 2:
        raise ValueError(
            f"{owner}: `{name}` must be a 1-D array with one probability per dose and at least two "
            f"doses; got shape {arr.shape}."
        )
    if not np.all(np.isfinite(arr)) or np.any(arr < 0.0) or np.any(arr > 1.0):
        raise ValueError(f"{owner}: every entry of `{name}` must be a probability in [0, 1]; got {arr.tolist()}.")
    return arr
