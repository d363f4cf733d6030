"""`simulate` and `simulate_ensemble`: the two public ways to integrate a model, with one set of keywords.

The solver object decides the engine, as in diffrax: a diffrax solver (`diffrax.Tsit5()`, `diffrax.Kvaerno5()`, ...)
integrates each member with `diffrax.diffeqsolve` (vectorised with `jax.vmap` over a batch); an ensemble method
(`ck.EnsembleTsit5()`, `ck.EnsembleRodas5()`) integrates the whole batch at once in the batched engine. Both
integrate the same schedule (segments split at every dose event, infusion start/end and model breakpoint), so they
agree to the solver tolerance. Without a `solver`, the model class's defaults apply (see `default_solver`).
"""

from __future__ import annotations

from typing import Any, Literal

import diffrax
import equinox as eqx
import jax
import jax.core
import jax.numpy as jnp
import numpy as np

from .._core._custom_types import RealScalarLike, TimesLike
from .._core._dosing import AbstractDose, Regimen
from .._core._model import AbstractKineticModel
from .._core._parameters import floats_to_arrays, traced_parameters_invalid, validate_parameters
from .._core._schedule import (
    batch_size,
    broadcast_regimen,
    check_model_and_regimen,
    tolerance_arrays,
    validate_ts,
    warn_unresolved_infusions,
)
from .._core._simulate import diffrax_solve
from .._core._solution import Solution
from .._ensemble import AbstractEnsembleMethod, EnsembleRodas5, EnsembleTsit5, ensemble_solve

Engine = Literal["ensemble", "vmap"]


class SimulationError(RuntimeError):
    """A simulation failed (`throw=True`): the message says which member, the solver's outcome and the likely
    cause (a non-finite vector field and the parameters behind it, a tolerance below the number resolution, or a
    stiff model / too small `max_steps`)."""


ENGINES: tuple[str, ...] = ("ensemble", "vmap")


def default_solver(model: Any, engine: Engine = "ensemble") -> Any:
    """The solver a model class asks for on an engine: its stiffness decides explicit or implicit.

    `engine="ensemble"`: [`carkinetics.EnsembleRodas5`][] for a stiff model class (`stiff = True`), else
    [`carkinetics.EnsembleTsit5`][]. `engine="vmap"` (per-member diffrax): the class's `diffrax_solver` if it names
    one, else `diffrax.Kvaerno5()` for a stiff class and `diffrax.Tsit5()` otherwise.

    **Example:**

    ```python
    import carkinetics as ck
    from carkinetics.models import OneCompartmentPK
    ck.default_solver(OneCompartmentPK())           # EnsembleTsit5()
    ck.default_solver(OneCompartmentPK(), "vmap")   # diffrax.Tsit5()
    ```
    """
    cls = model if isinstance(model, type) else type(model)
    if not (isinstance(cls, type) and issubclass(cls, AbstractKineticModel)):
        raise ValueError(f"`model` must be a carkinetics model or model class, got {model!r}.")
    if engine == "ensemble":
        return EnsembleRodas5() if cls.stiff else EnsembleTsit5()
    if engine == "vmap":
        if cls.diffrax_solver is not None:
            return cls.diffrax_solver
        return diffrax.Kvaerno5() if cls.stiff else diffrax.Tsit5()
    raise ValueError(f"`engine` must be one of {list(ENGINES)}, got {engine!r}.")


def engine_of(solver: Any) -> Engine:
    """`"ensemble"` for an ensemble method, `"vmap"` for a diffrax solver (`ValueError` for anything else)."""
    if isinstance(solver, AbstractEnsembleMethod):
        return "ensemble"
    if isinstance(solver, diffrax.AbstractSolver):
        return "vmap"
    raise ValueError(
        "`solver` must be a diffrax solver such as diffrax.Tsit5() or an ensemble method such as "
        f"ck.EnsembleRodas5(), got {solver!r}."
    )


def resolve_solver(model: Any, solver: Any = None, engine: Engine | None = None) -> Any:
    """The solver an analysis runs with: `solver` if given (it must fit `engine`, if that is given too), else the
    model class's default on `engine` (default `"ensemble"`)."""
    if engine is not None and engine not in ENGINES:
        raise ValueError(f"`engine` must be one of {list(ENGINES)}, got {engine!r}.")
    if solver is None:
        return default_solver(model, engine or "ensemble")
    kind = engine_of(solver)
    if engine is not None and kind != engine:
        raise ValueError(
            f"`solver` {type(solver).__name__} runs on the {kind!r} engine but `engine` = {engine!r}; "
            "give one of them, or a solver of that engine."
        )
    return solver


def _check_max_steps(max_steps: Any) -> int:
    if isinstance(max_steps, bool) or not isinstance(max_steps, int) or max_steps < 1:
        raise ValueError(
            f"`max_steps` must be a positive int (steps per member over the whole horizon), got {max_steps!r}."
        )
    return max_steps


def _check_adjoint(adjoint: Any) -> diffrax.AbstractAdjoint:
    if adjoint is None:
        return diffrax.RecursiveCheckpointAdjoint()
    if not isinstance(adjoint, diffrax.AbstractAdjoint):
        raise ValueError(f"`adjoint` must be None or a diffrax adjoint such as diffrax.ForwardMode(), got {adjoint!r}.")
    return adjoint


def _check_t0(t0: Any, ts: Any, regimen: Regimen) -> None:
    if t0 is None or isinstance(t0, jax.core.Tracer):
        return
    if not isinstance(ts, jax.core.Tracer) and float(t0) > float(ts[0]):
        raise ValueError(
            f"`t0` = {t0} is later than the first save time ts[0] = {float(ts[0])}; save times before "
            "the start of the simulation are invalid."
        )
    first = regimen.first_time()
    if (
        first is not None
        and not isinstance(first, jax.core.Tracer)
        and jnp.ndim(first) == 0
        and float(first) < float(t0)
    ):
        raise ValueError(
            f"`t0` = {t0} is later than the first dose event at t = {float(first)}; start the "
            "simulation at or before the first dose."
        )


def _tolerances(model: Any, rtol: Any, atol: Any, dtype) -> tuple[jax.Array, jax.Array]:
    cls = type(model)
    return tolerance_arrays(
        cls.default_rtol if rtol is None else rtol, cls.default_atol if atol is None else atol, dtype
    )


def _traced(tree: Any) -> bool:
    return any(isinstance(x, jax.core.Tracer) for x in jax.tree_util.tree_leaves(tree))


def _member(tree: Any, i: int) -> Any:
    return jax.tree_util.tree_map(lambda x: x[i] if eqx.is_array(x) and jnp.ndim(x) > 0 else x, tree)


def failure_report(
    model: AbstractKineticModel, regimen: Regimen, ts: Any, sol: Solution, rtol: Any, max_steps: int
) -> str:
    """A diagnosis of one failed member (host-side, concrete values): why the solver stopped."""
    from .._core._parameters import parameters as _params
    from .._core._schedule import build_segments

    message = sol.message
    assert isinstance(message, str)  # one member
    lines = [f"the solver stopped ({message.rstrip('.')})"]
    on_bound = []
    for name, p in _params(model).items():
        v = np.asarray(p.value, float)
        info = p.info
        if v.ndim == 0 and (v == info.lower or v == info.upper) and np.isfinite(v):
            on_bound.append(f"{name} = {float(v):g} {info.unit} (its bound)")
    seg = build_segments(model, regimen, jnp.asarray(ts), None)
    candidates = [(float(seg.t0), np.asarray(seg.y0))]
    for k in range(seg.starts.shape[0]):
        y = np.asarray(seg.mult[k]) * np.asarray(seg.y0) + np.asarray(seg.add[k])
        candidates.append((float(seg.starts[k]), y))
    ys = np.asarray(sol.y_array)
    for j in range(ys.shape[0]):
        if np.all(np.isfinite(ys[j])):
            candidates.append((float(np.asarray(sol.ts)[j]), ys[j]))
    bad = None
    for t, y in candidates:
        f = np.asarray(model.vector_field_flat(jnp.asarray(t), jnp.asarray(y), None))
        if not np.all(np.isfinite(f)):
            names = [n for n, ok in zip(model.state_names(), np.isfinite(f)) if not ok]
            bad = (t, names)
            break
    if bad is not None:
        lines.append(
            f"the model's vector field is not finite at t = {bad[0]:g} d (derivatives of {bad[1]}): a "
            "parameter value makes it divide by zero or overflow"
            + (f"; parameters on a bound: {', '.join(on_bound)}" if on_bound else "")
        )
    elif float(np.asarray(rtol)) < float(jnp.finfo(ts.dtype).eps):
        lines.append(
            f"rtol = {float(np.asarray(rtol)):g} is below the resolution of {ts.dtype} numbers: use a "
            "larger rtol or float64"
        )
    else:
        lines.append(
            f"no non-finite value was found: the model may be stiff for this solver (use an implicit one, "
            f"e.g. diffrax.Kvaerno5() or ck.EnsembleRodas5()) or need more than max_steps = {max_steps} "
            "steps" + (f"; parameters on a bound: {', '.join(on_bound)}" if on_bound else "")
        )
    return "; ".join(lines) + "."


def simulate(
    model: AbstractKineticModel,
    regimen: Regimen | AbstractDose | None,
    ts: TimesLike,
    *,
    solver: Any = None,
    t0: RealScalarLike | None = None,
    rtol: RealScalarLike | None = None,
    atol: RealScalarLike | None = None,
    max_steps: int = 100_000,
    adjoint: diffrax.AbstractAdjoint | None = None,
    throw: bool = True,
) -> Solution:
    """Integrate one model under a regimen and save its states and observables at `ts`.

    The horizon is split at every dose event, infusion start/end and declared model breakpoint; boluses and
    fractional kills are applied as jumps (`y <- mult * y + add`) at their times, infusions are constant inputs
    within each segment, so the adaptive step controller never steps across a discontinuity. Saved values are
    right-continuous: a save time equal to a dose time reports the state just *after* the dose.

    **Arguments** (the same keywords, with the same meanings, as [`carkinetics.simulate_ensemble`][]):

    - `model`: a [`carkinetics.AbstractKineticModel`][].
    - `regimen`: a [`carkinetics.Regimen`][], a single dose, or `None` for no doses.
    - `ts`: save times in days, 1-D, sorted, finite.
    - `solver`: decides the engine. A diffrax solver (`diffrax.Tsit5()`, `diffrax.Kvaerno5()`, ...) integrates with
      `diffrax.diffeqsolve`; an ensemble method (`ck.EnsembleTsit5()`, `ck.EnsembleRodas5()`) with the batched
      engine (a batch of one). Default: the model class's diffrax solver ([`carkinetics.default_solver`][] with
      `engine="vmap"`).
    - `t0`: start time (days). Default: the earlier of `ts[0]` and the first event. It must not be later than
      `ts[0]` or than any event.
    - `rtol`, `atol`: tolerances of the step-size controller (RMS norm of `error / (atol + rtol * |y|)`):
      positive numbers or floating-point scalar arrays, which may be traced (new values reuse the compiled solve).
      Default: the model class's `default_rtol` / `default_atol`.
    - `max_steps`: maximum number of steps over the whole horizon (all segments together).
    - `adjoint`: a diffrax adjoint; default `RecursiveCheckpointAdjoint()` (reverse mode). `diffrax.ForwardMode()`
      for forward-mode (`jax.jvp`/`jax.jacfwd`) differentiation.
    - `throw`: raise if the solver fails or a traced parameter is out of bounds (default). With `throw=False` the
      failure is reported in `Solution.result` (`RESULTS.invalid_parameters` for out-of-bounds traced parameters,
      which are then not integrated) and unsaved outputs are NaN. Concrete out-of-bounds values always raise
      `ValueError`.

    **Returns:** a [`carkinetics.Solution`][].

    **Raises:** `ValueError` naming the argument for malformed input; with `throw=True`, a
    [`carkinetics.SimulationError`][] that diagnoses a failed solve (a runtime error from inside JIT when the inputs
    are traced).

    **Example:**

    ```python
    import jax.numpy as jnp
    import carkinetics as ck
    from carkinetics.models import OneCompartmentPK

    model = OneCompartmentPK(cl=5.0, v=50.0)                # L/d and L
    regimen = ck.Regimen([ck.Bolus(0.0, 100.0, "central")])  # 100 mg IV at day 0
    sol = ck.simulate(model, regimen, jnp.linspace(0.0, 10.0, 11))
    sol.observables.concentration                           # mg/L at each day
    ```
    """
    regimen = check_model_and_regimen(model, regimen)
    solver = resolve_solver(model, solver, None if solver is not None else "vmap")
    if engine_of(solver) == "ensemble":
        batch = jax.tree_util.tree_map(
            lambda x: jnp.asarray(x)[None] if eqx.is_array_like(x) else x, floats_to_arrays(model)
        )
        sol = simulate_ensemble(
            batch,
            regimen,
            ts,
            solver=solver,
            t0=t0,
            rtol=rtol,
            atol=atol,
            max_steps=max_steps,
            adjoint=adjoint,
            throw=throw,
        )
        return jax.tree_util.tree_map(lambda x: x[0] if eqx.is_array(x) else x, sol)
    max_steps = _check_max_steps(max_steps)
    adjoint = _check_adjoint(adjoint)
    ts = validate_ts(ts)
    _check_t0(t0, ts, regimen)
    warn_unresolved_infusions(regimen, ts.dtype)
    if throw:
        model = validate_parameters(model)
        invalid = None
    else:  # concrete values still raise ValueError; traced ones become a per-member status
        validate_parameters(model, check_traced=False)
        invalid = traced_parameters_invalid(model)
    model = floats_to_arrays(model)
    t0_arr = None if t0 is None else jnp.asarray(t0, dtype=ts.dtype)
    rtol_arr, atol_arr = _tolerances(model, rtol, atol, ts.dtype)
    if throw and not _traced((model, regimen, ts, t0_arr, rtol_arr, atol_arr)):
        # concrete inputs: solve without the in-graph error and explain a failure on the host
        sol = diffrax_solve(model, regimen, ts, t0_arr, solver, rtol_arr, atol_arr, max_steps, adjoint, False, None)
        if not bool(sol.ok):
            raise SimulationError("simulate: " + failure_report(model, regimen, ts, sol, rtol_arr, max_steps))
        return sol
    return diffrax_solve(model, regimen, ts, t0_arr, solver, rtol_arr, atol_arr, max_steps, adjoint, throw, invalid)


def simulate_ensemble(
    model: AbstractKineticModel,
    regimen: Regimen | AbstractDose | None,
    ts: TimesLike,
    *,
    solver: Any = None,
    t0: RealScalarLike | None = None,
    rtol: RealScalarLike | None = None,
    atol: RealScalarLike | None = None,
    max_steps: int = 100_000,
    adjoint: diffrax.AbstractAdjoint | None = None,
    throw: bool = True,
    devices: Any = None,
) -> Solution:
    """Integrate a batch of `N` models of one class under per-member (or shared) regimens.

    The batched counterpart of [`carkinetics.simulate`][] with the same semantics and keywords. With an ensemble
    method (the default) the whole batch is integrated at once by a solver written for batches: states are stored
    batch-last, every member has its own adaptive step size and its own event schedule, finished members hand their
    slot to the next member of a queue, and save times are filled from each method's dense output. With a diffrax
    solver the members are integrated by `jax.vmap` of the per-member engine (for cross-checks and benchmarks).

    **Arguments:**

    - `model`: a carkinetics model whose array leaves all carry a leading batch axis of size `N`, e.g.
      `jax.vmap(lambda cl: OneCompartmentPK(cl=cl))(cls)` or [`carkinetics.batch_models`][].
    - `regimen`: a [`carkinetics.Regimen`][], a dose or `None`; either unbatched (shared by all members) or with
      every leaf batched along a leading axis of size `N` (e.g. `jax.vmap(lambda a: ck.Regimen(...))(amounts)`).
    - `ts`: save times in days, 1-D, sorted, finite, shared by all members.
    - `solver`: decides the engine: an ensemble method ([`carkinetics.EnsembleTsit5`][],
      [`carkinetics.EnsembleRodas5`][], whose `slots` and `saves_per_step` tune the batched engine) or a diffrax
      solver (`jax.vmap` of the per-member engine). Default: the model class's ensemble method
      ([`carkinetics.default_solver`][]).
    - `t0`, `rtol`, `atol`, `max_steps`, `adjoint`, `throw`: as for [`carkinetics.simulate`][]; `max_steps` bounds
      each member's steps over its whole horizon, `throw=True` raises if any member fails. With an ensemble method,
      `adjoint` is `RecursiveCheckpointAdjoint` (reverse mode, default) or `diffrax.ForwardMode()`. Derivatives are
      those of the computed solution, except that the initial step size of each segment and the controller's
      step-size factor are held fixed, as diffrax's `PIDController` does.
    - `devices`: `None` (one device), `"all"`, an int (the first n devices) or a sequence of jax devices: with an
      ensemble method the members are split evenly across them with `shard_map`, each device running its own queue
      (reverse-mode gradients of a sharded solve are computed on one device). On CPU, make several host devices
      with `XLA_FLAGS=--xla_force_host_platform_device_count=K` (set before importing jax) to use K cores.

    **Returns:** a [`carkinetics.Solution`][] whose fields have a leading batch axis of size `N`: `ts (N, T)`,
    `y_array (N, T, S)`, `obs_array (N, T, O)`, `result (N,)`, step counts `(N,)`.

    **Raises:** `ValueError` naming the argument for malformed input; with `throw=True`, a
    [`carkinetics.SimulationError`][] naming the first failed member and diagnosing why (a runtime error from
    inside JIT when the inputs are traced).

    **Example:**

    ```python
    import jax, jax.numpy as jnp
    import carkinetics as ck
    from carkinetics.models import OneCompartmentPK

    models = jax.vmap(lambda cl: OneCompartmentPK(cl=cl, v=46.5))(jnp.linspace(50.0, 200.0, 1000))
    regimen = ck.Bolus(0.0, 1800.0, "central")              # shared by all members
    sol = ck.simulate_ensemble(models, regimen, jnp.linspace(0.0, 2.0, 49))
    sol.observables.concentration.shape                    # (1000, 49), mg/L
    ```
    """
    regimen = check_model_and_regimen(model, regimen)
    solver = resolve_solver(model, solver)
    max_steps = _check_max_steps(max_steps)
    adjoint = _check_adjoint(adjoint)
    ts = validate_ts(ts)
    _check_t0(t0, ts, regimen)
    warn_unresolved_infusions(regimen, ts.dtype)
    # Concrete values are checked here (ValueError); traced ones per member inside the solve.
    model = validate_parameters(floats_to_arrays(model), check_traced=False)
    n = batch_size(model)
    t0_arr = None if t0 is None else jnp.asarray(t0, dtype=ts.dtype)
    rtol_arr, atol_arr = _tolerances(model, rtol, atol, ts.dtype)
    host_check = throw and not _traced((model, regimen, ts, t0_arr, rtol_arr, atol_arr))
    if engine_of(solver) == "ensemble":
        sol = ensemble_solve(
            model,
            regimen,
            ts,
            t0_arr,
            solver,
            rtol_arr,
            atol_arr,
            max_steps,
            adjoint,
            devices,
            throw and not host_check,
        )
    else:
        if devices is not None:
            raise ValueError(
                "`devices` applies to ensemble methods only; with a diffrax solver the members run "
                "under jax.vmap on one device."
            )
        sol = _vmap_solve(
            model,
            broadcast_regimen(regimen, n),
            ts,
            t0_arr,
            solver,
            rtol_arr,
            atol_arr,
            max_steps,
            adjoint,
            throw and not host_check,
        )
    if host_check:
        ok = np.asarray(sol.ok)
        if not ok.all():
            i = int(np.flatnonzero(~ok)[0])
            member_regimen = _member(broadcast_regimen(regimen, n), i)
            raise SimulationError(
                f"simulate_ensemble: {int((~ok).sum())} of {n} members failed; member {i}: "
                + failure_report(_member(model, i), member_regimen, ts, _member(sol, i), rtol_arr, max_steps)
            )
    return sol


@eqx.filter_jit
def _vmap_solve(model, regimen, ts, t0, solver, rtol, atol, max_steps, adjoint, throw) -> Solution:
    def one(m, r):
        invalid = traced_parameters_invalid(m)
        return diffrax_solve(m, r, ts, t0, solver, rtol, atol, max_steps, adjoint, False, invalid)

    sol = eqx.filter_vmap(one)(model, regimen)
    if throw:
        y = eqx.error_if(
            sol.y_array,
            ~jnp.all(sol.ok),
            "simulate_ensemble: at least one member failed (maximum "
            "number of steps reached, step size underflow, or parameters outside their declared "
            "bounds); use throw=False and inspect Solution.result / Solution.ok per member.",
        )
        sol = eqx.tree_at(lambda s: s.y_array, sol, y)
    return sol
