"""The interface every batched ensemble method implements.

Layout: a state batch is an array of shape `(S, N)` (states x members, "batch-last"), so that every
arithmetic operation of a step is one vector operation over the `N` members. Times and step sizes are
`(N,)` arrays: each member has its own time, step size and event schedule.
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from typing import Any, ClassVar

import equinox as eqx
import numpy as np

from .._core._custom_types import Array, Float

#: A batched vector field `f(t: (N,), y: (S, N)) -> (S, N)` (dose inputs already included).
BatchedField = Callable[[Float[Array, " N"], Float[Array, "S N"]], Float[Array, "S N"]]


class AbstractEnsembleMethod(eqx.Module):
    """A one-step method advancing all members of a batch at once, each with its own step size.

    A concrete method implements

    - `init(f, t, y, f0) -> cache`: per-member data carried between steps (e.g. the FSAL derivative).
      `f0 = f(t, y)` is given because the driver needs it anyway (initial step size).
    - `step(f, t, y, dt, cache) -> (y1, y_error, dense, cache1)`: one step of size `dt` (`(N,)`, > 0) for
      every member; `y_error` is the embedded error estimate, `dense` the data of the local interpolant,
      `cache1` the cache to use if the step is accepted.
    - `interpolate(dense, y0, y1, theta) -> y`: the dense output at `t + theta * dt`, `theta` in `[0, 1]`
      of shape `(N,)`.

    and declares `error_order` (the step-size controller uses the exponent `1 / error_order`).

    Two static settings of the batched engine live on the method, so that the method object alone decides how a
    batch is integrated:

    - `slots`: how many members are integrated at once; the others wait in a queue and take over the slot of a
      finished member, so a batch does not run at the pace of its slowest member and the working set stays in
      cache. Default (`None`): 120 on CPU, all members on accelerators. Results do not depend on it (a member takes
      the same steps in any slot). On CPU a lane count that is a multiple of 128 is moved by 8 lanes (cache-set
      conflicts between rows of 1 KiB multiples). Derivatives do not use the queue: `jax.grad` differentiates
      solves with one slot per member, in cache-sized chunks of members on CPU.
    - `saves_per_step`: at most this many save times are written per step (a step is shortened so that no more
      fall inside it). Default (`None`): the method's `default_saves_per_step`.
    """

    error_order: ClassVar[int]
    #: Save slots per step when `saves_per_step` is `None`.
    default_saves_per_step: ClassVar[int] = 1
    slots: int | None = eqx.field(static=True, default=None, kw_only=True)
    saves_per_step: int | None = eqx.field(static=True, default=None, kw_only=True)

    def __check_init__(self):
        for name in ("slots", "saves_per_step"):
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1):
                raise ValueError(f"`{name}` of {type(self).__name__} must be a positive int or None, got {v!r}.")

    def member_floats(self, n_states: int) -> int:
        """About how many floats a step reads and writes per member (sizes the CPU chunks of reverse mode).

        The default counts ten state-sized arrays (stages, error estimate, dense output); methods that form a
        Jacobian add it.
        """
        return 10 * n_states

    @abc.abstractmethod
    def init(self, f: BatchedField, t: Array, y: Array, f0: Array) -> Any:
        """Per-member cache at the start of a segment."""

    @abc.abstractmethod
    def step(self, f: BatchedField, t: Array, y: Array, dt: Array, cache: Any) -> tuple[Array, Array, Any, Any]:
        """One step of size `dt` (days, shape `(N,)`) for every member."""

    @abc.abstractmethod
    def interpolate(self, dense: Any, y0: Array, y1: Array, theta: Array) -> Array:
        """Dense output at the fraction `theta` (shape `(N,)`) of the last step."""
