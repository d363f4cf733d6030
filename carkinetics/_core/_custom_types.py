"""Shared array type aliases (jaxtyping) used across carkinetics."""

from typing import Any

from jaxtyping import Array, ArrayLike, Bool, Float, Int, PyTree

RealScalar = Float[Array, ""]
RealScalarLike = float | int | Float[ArrayLike, ""]
Times = Float[Array, " times"]
TimesLike = Float[ArrayLike, " times"]
StateVector = Float[Array, " states"]
Trajectory = Float[Array, "times states"]
Params = PyTree[Any]

__all__ = [
    "Array",
    "ArrayLike",
    "Bool",
    "Float",
    "Int",
    "Params",
    "PyTree",
    "RealScalar",
    "RealScalarLike",
    "StateVector",
    "Times",
    "TimesLike",
    "Trajectory",
]
