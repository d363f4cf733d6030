"""Test helpers."""

import numpy as np


def rel_err(a, b, floor: float = 0.0) -> float:
    """Max relative error of `a` against reference `b` (with an absolute floor in the denominator)."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    return float(np.max(np.abs(a - b) / (np.abs(b) + floor)))


def central_fd(f, x: float, h: float) -> float:
    """Central finite difference of scalar `f` at `x` with step `h`."""
    return (f(x + h) - f(x - h)) / (2 * h)
