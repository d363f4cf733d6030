"""Batches of members and experiments on them: the one path every batched analysis takes.

`batch_models` builds a batch (every array leaf with a leading member axis) from a template and parameter values;
an experiment says what each member is, which regimen it gets, when it is saved and how its solution is reduced;
`run_experiment` solves the batch with one engine call (`simulate_ensemble`) and reduces it. Sweeps, Sobol/Morris,
Shapley attribution and translation maps, populations and calibration all go through these.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Mapping
from typing import Any

import equinox as eqx
import jax
import jax.core
import jax.numpy as jnp
import numpy as np

from .._core._custom_types import Array, Float
from .._core._dosing import AbstractDose, Regimen
from .._core._parameters import _getter, floats_to_arrays, parameters
from .._core._schedule import validate_ts
from .._core._solution import Solution
from ._simulate import Engine, resolve_solver, simulate_ensemble


def _is_traced(x: Any) -> bool:
    return isinstance(x, jax.core.Tracer)


def batch_models(
    template: Any, values: Mapping[str, Any] | None = None, n: int | None = None, *, check_bounds: bool = True
) -> Any:
    """A batch of `N` copies of `template` whose named parameters take the given per-member values.

    Every array leaf of the result carries a leading member axis of size `N` (the form
    [`carkinetics.simulate_ensemble`][] takes); parameters not named in `values` keep the template's value in every
    member. `template` may be a model or any module of parameters (e.g. a model together with a protocol).

    **Arguments:**

    - `template`: the module to copy.
    - `values`: `{dotted parameter name: array (N,) or (N, ...)}` in the parameter's unit.
    - `n`: the batch size; required when `values` is empty, else checked against it.
    - `check_bounds`: raise `ValueError` for a concrete value that is non-finite or outside the parameter's declared
      bounds (traced values are checked per member by the engine instead).

    **Example:**

    ```python
    import numpy as np, carkinetics as ck
    from carkinetics.models import OneCompartmentPK
    models = ck.batch_models(OneCompartmentPK(), {"cl": np.array([5.0, 10.0, 20.0])})
    models.cl.shape, models.v.shape     # (3,), (3,)
    ```
    """
    values = dict(values or {})
    known = parameters(template)
    sizes = {}
    arrays = {}
    for name, v in values.items():
        if name not in known:
            raise ValueError(
                f"Unknown parameter {name!r}; parameters of {type(template).__name__} are {sorted(known)}."
            )
        a = v if _is_traced(v) else np.asarray(v, dtype=float)
        if jnp.ndim(a) < 1:
            raise ValueError(f"The values of {name!r} need a leading member axis, got a scalar.")
        sizes[name] = int(jnp.shape(a)[0])
        if check_bounds and not _is_traced(a):
            info = known[name].info
            bad = ~np.isfinite(a) | (a < info.lower) | (a > info.upper)
            if np.any(bad):
                i = int(np.flatnonzero(bad.reshape(a.shape[0], -1).any(axis=1))[0])
                raise ValueError(
                    f"Member {i} of {name!r} = {a[i]!r} {info.unit} is non-finite or outside the "
                    f"declared bounds [{info.lower}, {info.upper}]."
                )
        arrays[name] = a
    distinct = set(sizes.values())
    if len(distinct) > 1:
        raise ValueError(f"All parameter values need the same number of members, got {sizes}.")
    if distinct:
        m = distinct.pop()
        if n is not None and int(n) != m:
            raise ValueError(f"`n` = {n} but the parameter values have {m} members.")
        n = m
    if n is None:
        raise ValueError("Give `values` or the batch size `n`.")
    if isinstance(n, bool) or int(n) < 1:
        raise ValueError(f"The batch size must be a positive int, got {n!r}.")
    n = int(n)

    # Leaves go through NumPy so that none is weakly typed: which parameters are batched must not change the
    # weak-type pattern of the leaves (that would force a new compilation).
    def widen(x):
        if not eqx.is_array(x):
            return x
        if _is_traced(x):
            return jnp.broadcast_to(x, (n, *jnp.shape(x)))
        return jnp.asarray(np.broadcast_to(np.asarray(x), (n, *np.shape(x))))

    base = jax.tree_util.tree_map(widen, floats_to_arrays(template))
    if not arrays:
        return base
    names = tuple(arrays)
    return eqx.tree_at(
        lambda m: [_getter(k)(m) for k in names],
        base,
        [jnp.asarray(arrays[k], dtype=_getter(k)(base).dtype) for k in names],
    )


class AbstractExperiment(eqx.Module):
    """An in-silico experiment on a batch of members: what each member simulates, and how it is read out.

    A member is a model, or any module holding one (e.g. a model with its treatment protocol). A concrete experiment
    declares the fields `ts` (save times, days), `solver`, `rtol`, `atol`, `max_steps`, `t0` (as for
    [`carkinetics.simulate`][]; `None` for the model class's defaults) and implements

    - `model(member) -> AbstractKineticModel` (default: the member itself),
    - `regimen(member) -> Regimen | None`: the member's doses (they may depend on its parameters, e.g. a dose per
      kg of its body weight),
    - `outputs(member, solution) -> pytree` of arrays for one member (e.g. a dict of summary metrics).

    [`carkinetics.run_experiment`][] integrates a whole batch with one engine call. Every batched analysis accepts
    an experiment (sweeps, Sobol/Morris, Shapley attribution, translation maps).
    """

    ts: eqx.AbstractVar[Float[Array, " T"]]
    solver: eqx.AbstractVar[Any]
    rtol: eqx.AbstractVar[float | None]
    atol: eqx.AbstractVar[float | None]
    max_steps: eqx.AbstractVar[int]
    t0: eqx.AbstractVar[float | None]

    def model(self, member: Any) -> Any:
        """The kinetic model of `member` (default: the member itself)."""
        return member

    @abc.abstractmethod
    def regimen(self, member: Any) -> Regimen | AbstractDose | None:
        """The doses `member` receives."""

    @abc.abstractmethod
    def outputs(self, member: Any, solution: Solution) -> Any:
        """The read-out of one member's solution (a pytree of arrays)."""


class Experiment(AbstractExperiment):
    """The common experiment: every member gets the same regimen and is reduced by a metrics function.

    **Arguments:**

    - `regimen`: a [`carkinetics.Regimen`][], a dose or `None`, shared by all members.
    - `ts`: save times (days).
    - `metrics`: `metrics(solution) -> dict` of per-member outputs (use [`carkinetics.metrics`][] functions);
      `None` for none.
    - `solver`, `rtol`, `atol`, `max_steps`, `t0`: as for [`carkinetics.simulate_ensemble`][] (`None`: the model
      class's defaults; the analysis's `engine` picks the default solver).
    - `keep_trajectories`: also return `"states"` `(T, S)` and `"observables"` `(T, O)` per member.

    **Example:**

    ```python
    import numpy as np, jax.numpy as jnp, carkinetics as ck
    from carkinetics.models import OneCompartmentPK
    exp = ck.Experiment(ck.Bolus(0.0, 100.0, "central"), jnp.linspace(0.0, 1.0, 25),
                        lambda sol: {"cmax": ck.metrics.cmax(sol.ts, sol.observables.concentration)})
    out, ok = ck.run_experiment(exp, ck.batch_models(OneCompartmentPK(), {"v": np.array([25.0, 50.0])}))
    out["cmax"]    # [4.0, 2.0] mg/L
    ```
    """

    regimen_: Regimen | None
    ts: Float[Array, " T"]
    metrics: Callable[[Solution], Mapping[str, Any]] | None = eqx.field(static=True)
    solver: Any
    rtol: float | None = eqx.field(static=True)
    atol: float | None = eqx.field(static=True)
    max_steps: int = eqx.field(static=True)
    t0: float | None = eqx.field(static=True)
    keep_trajectories: bool = eqx.field(static=True)

    def __init__(
        self,
        regimen: Regimen | AbstractDose | None,
        ts: Any,
        metrics: Callable[[Solution], Mapping[str, Any]] | None = None,
        *,
        solver: Any = None,
        rtol: float | None = None,
        atol: float | None = None,
        max_steps: int = 100_000,
        t0: float | None = None,
        keep_trajectories: bool = False,
    ):
        if regimen is not None and not isinstance(regimen, (Regimen, AbstractDose)):
            raise ValueError(f"`regimen` must be a Regimen, a dose or None, got {type(regimen).__name__}.")
        if metrics is not None and not callable(metrics):
            raise ValueError(f"`metrics` must be a function of a Solution or None, got {type(metrics).__name__}.")
        if metrics is None and not keep_trajectories:
            raise ValueError("The experiment reads out nothing: give `metrics` and/or keep_trajectories=True.")
        self.regimen_ = Regimen((regimen,)) if isinstance(regimen, AbstractDose) else regimen
        self.ts = validate_ts(ts)
        self.metrics = metrics
        self.solver = solver
        self.rtol, self.atol, self.max_steps, self.t0 = rtol, atol, max_steps, t0
        self.keep_trajectories = bool(keep_trajectories)

    def regimen(self, member: Any) -> Regimen | None:
        return self.regimen_

    def outputs(self, member: Any, solution: Solution) -> dict[str, Any]:
        out = dict(self.metrics(solution)) if self.metrics is not None else {}
        if self.keep_trajectories:
            out["states"] = solution.y_array
            out["observables"] = solution.obs_array
        return out


def _mask_failed(out: Any, ok: Array) -> Any:
    def mask(x):
        x = jnp.asarray(x)
        if jnp.issubdtype(x.dtype, jnp.inexact):
            return jnp.where(ok.reshape(ok.shape + (1,) * (x.ndim - 1)), x, jnp.nan)
        return x

    return jax.tree_util.tree_map(mask, out)


def run_experiment(
    experiment: AbstractExperiment, members: Any, *, engine: Engine | None = None, devices: Any = None
) -> tuple[Any, Array]:
    """Run `experiment` on a batch of members with one engine call: `(outputs, ok)`.

    **Arguments:**

    - `experiment`: an [`carkinetics.AbstractExperiment`][] (e.g. [`carkinetics.Experiment`][]).
    - `members`: a batch (every array leaf with a leading member axis of size `N`), e.g. from
      [`carkinetics.batch_models`][].
    - `engine`: `"ensemble"` (the batched solver, default) or `"vmap"` (`jax.vmap` of the per-member diffrax
      engine), used when the experiment names no `solver`; a solver that belongs to the other engine raises.
    - `devices`: split the members over devices (see [`carkinetics.simulate_ensemble`][]).

    **Returns:** `(outputs, ok)`: the per-member outputs with a leading axis `N` (floating-point outputs of failed
    members are NaN, never values) and the boolean success flags `(N,)`.
    """
    if not isinstance(experiment, AbstractExperiment):
        raise ValueError(f"`experiment` must be a carkinetics experiment, got {type(experiment).__name__}.")
    models = eqx.filter_vmap(experiment.model)(members)
    regimens = eqx.filter_vmap(lambda m: _as_regimen(experiment.regimen(m)))(members)
    solver = resolve_solver(models, experiment.solver, engine)
    sol = simulate_ensemble(
        models,
        regimens,
        experiment.ts,
        solver=solver,
        t0=experiment.t0,
        rtol=experiment.rtol,
        atol=experiment.atol,
        max_steps=experiment.max_steps,
        throw=False,
        devices=devices,
    )
    out = eqx.filter_vmap(experiment.outputs)(members, sol)
    return _mask_failed(out, sol.ok), sol.ok


def _as_regimen(regimen: Any) -> Regimen:
    if regimen is None:
        return Regimen()
    if isinstance(regimen, AbstractDose):
        return Regimen((regimen,))
    return regimen
