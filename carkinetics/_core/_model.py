"""The abstract kinetic model: named states, a vector field, an initial state and named observables."""

import abc
from collections.abc import Mapping
from typing import Any, ClassVar

import equinox as eqx
import jax.numpy as jnp

from ._custom_types import Array, Float, RealScalar
from ._parameters import ParameterTable, get_parameter, parameter_table, replace


class AbstractKineticModel(eqx.Module):
    """Base class of every carkinetics model.

    A concrete model is a final `eqx.Module` whose fields are its parameters (declared with
    [`carkinetics.param`][]) or nested parameter groups, and which declares:

    - `State`: a `typing.NamedTuple` class naming the states. **States are amounts or concentrations in the
      unit given by `state_units`; a bolus adds its amount to the state directly**, so dose in the state's unit.
    - `Observables`: a `NamedTuple` class naming derived outputs (concentrations, counts per µL, indices).
    - `state_units`, `observable_units`: mappings from each name to its unit string.
    - `breakpoint_parameters` (optional, default none): dotted names of parameters that are times at which
      the vector field is discontinuous (e.g. Stein's `tmax`); the integrator restarts there.
    - `breakpoint_origin` (optional, default `None`): the name of a state. If given, the declared breakpoints are
      *durations after the first dose of that state* (the first bolus with a positive amount or infusion with a
      positive rate, e.g. the CAR-T infusion) instead of days, so the switches move with the dose; without such a
      dose they lie beyond the horizon. The vector field must then measure time from that dose itself (e.g. with
      a clock state), since it never sees doses.
    - solver defaults (optional): `stiff` (default `False`): whether the default solvers are implicit
      (`EnsembleRodas5`, `diffrax.Kvaerno5`) rather than explicit (`EnsembleTsit5`, `diffrax.Tsit5`);
      `diffrax_solver`: a diffrax solver instance that overrides the per-member default; `default_rtol`,
      `default_atol`: the tolerances every engine uses when none are given (see [`carkinetics.default_solver`][]).

    and implements

    - `initial_state(self) -> State`,
    - `__call__(self, t, y: State, args) -> State`: the time derivative, in state units per day. `args` is
      reserved for time-varying covariates and is `None` when called by [`carkinetics.simulate`][],
    - `observe(self, t, y: State) -> Observables`.

    Model code addresses states by name (`y.central`), never by position.
    Zero-order infusions are added to the vector field by the simulator; the model never sees doses.
    """

    State: eqx.AbstractClassVar[type]
    Observables: eqx.AbstractClassVar[type]
    state_units: eqx.AbstractClassVar[Mapping[str, str]]
    observable_units: eqx.AbstractClassVar[Mapping[str, str]]
    breakpoint_parameters: ClassVar[tuple[str, ...]] = ()
    breakpoint_origin: ClassVar[str | None] = None
    stiff: ClassVar[bool] = False
    diffrax_solver: ClassVar[Any] = None
    default_rtol: ClassVar[float] = 1e-6
    default_atol: ClassVar[float] = 1e-8

    @abc.abstractmethod
    def initial_state(self) -> Any:
        """The state at the start of the simulation (before any dose), as a `State`."""

    @abc.abstractmethod
    def __call__(self, t: RealScalar, y: Any, args: Any) -> Any:
        """Time derivative of the state (per day), as a `State`."""

    @abc.abstractmethod
    def observe(self, t: RealScalar, y: Any) -> Any:
        """Observables at time `t` in state `y`, as an `Observables`."""

    # ---- concrete helpers (not meant to be overridden) ----------------------------------------------------------

    @classmethod
    def state_names(cls) -> tuple[str, ...]:
        """Names of the states, in storage order."""
        return tuple(cls.State._fields)

    @classmethod
    def observable_names(cls) -> tuple[str, ...]:
        """Names of the observables."""
        return tuple(cls.Observables._fields)

    def replace(self, updates: Mapping[str, Any] | None = None, /, **kwargs: Any):
        """Copy with parameter values replaced; see [`carkinetics.replace`][]."""
        return replace(self, updates, **kwargs)

    def parameter_table(self) -> ParameterTable:
        """All parameters with value, unit, bounds, tag, description and source."""
        return parameter_table(self)

    def get(self, name: str) -> Any:
        """Value of the parameter at dotted path `name`."""
        return get_parameter(self, name)

    def breakpoints(self) -> Float[Array, " n"]:
        """Values of the declared breakpoint parameters: days of the discontinuities of the vector field, or
        durations after the first dose of `breakpoint_origin` when the class names one."""
        vals = [jnp.asarray(get_parameter(self, n), dtype=float) for n in self.breakpoint_parameters]
        return jnp.stack(vals) if vals else jnp.zeros((0,))

    # flat <-> named conversion used by the simulators
    def vector_field_flat(self, t: RealScalar, y: Float[Array, " states"], args: Any) -> Float[Array, " states"]:
        """The vector field on a flat state vector (ordered as `State`)."""
        dy = self(t, self.State(*_rows(y)), args)
        return jnp.stack([jnp.asarray(d, dtype=y.dtype) for d in dy])

    def initial_state_flat(self) -> Float[Array, " states"]:
        """The initial state as a flat vector (ordered as `State`)."""
        y0 = self.initial_state()
        return jnp.stack([jnp.asarray(v, dtype=float) for v in y0])

    def observe_flat(self, t: RealScalar, y: Float[Array, " states"]) -> Float[Array, " observables"]:
        """Observables on a flat state vector, as a flat vector (ordered as `Observables`)."""
        obs = self.observe(t, self.State(*_rows(y)))
        return jnp.stack([jnp.broadcast_to(jnp.asarray(o, dtype=y.dtype), ()) for o in obs])


def _rows(y: Float[Array, " states"]) -> list[Array]:
    """The entries of a flat state vector as scalars, by one `split` (not `y[i]` per state).

    Both give the same values, but reverse mode transposes a `split` into one concatenation, while `S` separate
    indexings become `S` zero-padded full-length cotangents that are then summed: on the SLE model (29 states,
    120 members batch-last, one CPU core) a vector-Jacobian product of the vector field took 28 us that way
    and 6.4 us with the split (the vector field itself 2.8 us either way).
    """
    return [jnp.reshape(r, ()) for r in jnp.split(y, y.shape[0])]


def state_index(model_or_cls: Any, name: str) -> int:
    """Position of state `name` (raises `ValueError` naming the valid states)."""
    names = model_or_cls.state_names()
    if name not in names:
        raise ValueError(
            f"Unknown state {name!r} for {getattr(model_or_cls, '__name__', type(model_or_cls).__name__)}; "
            f"valid states are {list(names)}."
        )
    return names.index(name)
