"""`simulate`: integrate a kinetic model under a dosing regimen and return named trajectories."""

from __future__ import annotations

from typing import Any

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from ._custom_types import Array, Float, Int, RealScalarLike, Times, TimesLike
from ._dosing import AbstractDose, Regimen
from ._segments import build_segments, check_model_and_regimen, tolerance_arrays, validate_ts
from ._model import AbstractKineticModel
from ._parameters import floats_to_arrays, traced_parameters_invalid, validate_parameters

class RESULTS(diffrax.RESULTS):
    """Outcomes of a simulation: diffrax's solver outcomes (`successful`, `max_steps_reached`, `dt_min_reached`,
    ...) plus `invalid_parameters` for a member whose traced parameters were out of bounds (reported only with
    `throw=False`; such a member is not integrated)."""

    invalid_parameters = (
        "A parameter was non-finite or outside its declared bounds, so the simulation was not run."
    )


class Solution(eqx.Module):
    """The result of [`carkinetics.simulate`][].

    **Fields / properties:**

    - `ts`: save times (days), shape `(T,)`.
    - `ys`: the model's `State` NamedTuple, each field an array of shape `(T,)` (e.g. `sol.ys.central`).
    - `observables`: the model's `Observables` NamedTuple, each field of shape `(T,)`.
    - `y_array`, `obs_array`: the same as `(T, n_states)` / `(T, n_observables)` arrays.
    - `result`: a `carkinetics.RESULTS` member (`RESULTS.successful` on success); `ok` is the boolean view.
    - `num_steps`, `num_accepted_steps`, `num_rejected_steps`: integrator step counts over all segments.
    - `state_units`, `observable_units`: units by name.

    Under `jax.vmap` every field gains a leading batch axis.
    """

    ts: Times
    y_array: Float[Array, "times states"]
    obs_array: Float[Array, "times observables"]
    result: Any
    num_steps: Int[Array, ""]
    num_accepted_steps: Int[Array, ""]
    num_rejected_steps: Int[Array, ""]
    model_class: type = eqx.field(static=True)

    @property
    def ys(self):
        return self.model_class.State(*jnp.moveaxis(self.y_array, -1, 0))

    @property
    def observables(self):
        return self.model_class.Observables(*jnp.moveaxis(self.obs_array, -1, 0))

    @property
    def ok(self) -> Array:
        return self.result == RESULTS.successful

    @property
    def state_units(self):
        return dict(self.model_class.state_units)

    @property
    def observable_units(self):
        return dict(self.model_class.observable_units)

    def to_columns(self) -> dict[str, np.ndarray]:
        """Tidy columns (`time`, every state, every observable) as NumPy arrays, e.g. for CSV export."""
        cols = {"time": np.asarray(self.ts)}
        for i, n in enumerate(self.model_class.state_names()):
            cols[n] = np.asarray(self.y_array[..., i])
        for i, n in enumerate(self.model_class.observable_names()):
            cols[n] = np.asarray(self.obs_array[..., i])
        return cols


def simulate(
    model: AbstractKineticModel,
    regimen: Regimen | AbstractDose | None,
    ts: TimesLike,
    *,
    t0: float | None = None,
    solver: diffrax.AbstractSolver | None = None,
    rtol: RealScalarLike = 1e-6,
    atol: RealScalarLike = 1e-8,
    dt0: float | None = None,
    max_steps: int = 100_000,
    adjoint: diffrax.AbstractAdjoint | None = None,
    throw: bool = True,
) -> Solution:
    """Integrate `model` under `regimen` and save states and observables at `ts`.

    The horizon is split at every dose event, infusion start/end and declared model breakpoint; boluses and
    fractional kills are applied as jumps (`y <- mult * y + add`) at their times, infusions are constant inputs
    within each segment, so the adaptive step controller never steps across a discontinuity. Segments are
    integrated in a `lax.scan` (no Python loop over doses inside JIT). Saved values are right-continuous: a
    save time equal to a dose time reports the state just *after* the dose.

    **Arguments:**

    - `model`: an [`carkinetics.AbstractKineticModel`][].
    - `regimen`: a [`carkinetics.Regimen`][], a single dose, or `None` for no doses.
    - `ts`: save times in days, 1-D, sorted, finite.
    - `t0`: start time (days). Default: the earlier of `ts[0]` and the first event. It must not be later than
      `ts[0]` or than any event.
    - `solver`: a diffrax solver; default `diffrax.Tsit5()`. Use `diffrax.Kvaerno5()` for stiff models.
    - `rtol`, `atol`: tolerances of the PID step-size controller: positive numbers or floating-point scalar arrays,
      which may be traced (e.g. arguments of a jitted function); new values reuse the compiled solve.
    - `dt0`: initial step (days); default chosen automatically.
    - `max_steps`: maximum steps per segment.
    - `adjoint`: a diffrax adjoint; default `RecursiveCheckpointAdjoint()` (reverse mode). Pass
      `diffrax.ForwardMode()` for forward-mode (`jax.jvp`/`jax.jacfwd`) differentiation.
    - `throw`: raise if the solver fails or a traced parameter is out of bounds. With `throw=False` the failure
      is reported in `Solution.result` (`RESULTS.invalid_parameters` for out-of-bounds traced parameters, which
      are then not integrated); use this under `vmap` in sweeps and mask failed members by `Solution.ok`.
      Concrete out-of-bounds values always raise `ValueError`.

    **Returns:** a [`carkinetics.Solution`][].

    **Raises:** `ValueError` naming the argument for malformed input; a runtime error (`throw=True`) if the
    solver fails.

    **Example:**

    ```python
    import jax.numpy as jnp
    import carkinetics as ck
    from carkinetics.models import OneCompartmentPK

    model = OneCompartmentPK(cl=5.0, v=50.0)                # L/h-free units: L/d and L
    regimen = ck.Regimen([ck.Bolus(0.0, 100.0, "central")])  # 100 mg IV at day 0
    sol = ck.simulate(model, regimen, jnp.linspace(0.0, 10.0, 11))
    sol.observables.concentration                           # mg/L at each day
    ```
    """
    regimen = check_model_and_regimen(model, regimen)
    if solver is None:
        solver = diffrax.Tsit5()
    if not isinstance(solver, diffrax.AbstractSolver):
        raise ValueError(f"`solver` must be a diffrax solver instance such as diffrax.Tsit5(), got {solver!r}.")
    if adjoint is None:
        adjoint = diffrax.RecursiveCheckpointAdjoint()
    if isinstance(max_steps, bool) or not isinstance(max_steps, int) or max_steps < 1:
        raise ValueError(f"`max_steps` must be a positive int, got {max_steps!r}.")
    if dt0 is not None and (not np.isfinite(dt0) or dt0 <= 0):
        raise ValueError(f"`dt0` must be a positive number of days or None, got {dt0!r}.")

    ts = validate_ts(ts)
    if t0 is not None and not isinstance(t0, jax.core.Tracer):
        first_ev = regimen.first_time()
        if not isinstance(ts, jax.core.Tracer) and float(t0) > float(ts[0]):
            raise ValueError(f"`t0` = {t0} is later than the first save time ts[0] = {float(ts[0])}; save times before "
                             "the start of the simulation are invalid.")
        if first_ev is not None and not isinstance(first_ev, jax.core.Tracer) and float(first_ev) < float(t0):
            raise ValueError(f"`t0` = {t0} is later than the first dose event at t = {float(first_ev)}; "
                             "start the simulation at or before the first dose.")
    if throw:
        model = validate_parameters(model)
        invalid = None
    else:
        # concrete values still raise ValueError; traced ones become a per-member status
        validate_parameters(model, check_traced=False)
        invalid = traced_parameters_invalid(model)
    model = floats_to_arrays(model)
    t0_arr = None if t0 is None else jnp.asarray(t0, dtype=ts.dtype)
    # Traced tolerances: changing them reuses the compiled solve instead of recompiling.
    rtol_arr, atol_arr = tolerance_arrays(rtol, atol, ts.dtype)
    return _simulate(model, regimen, ts, t0_arr, solver, rtol_arr, atol_arr,
                     None if dt0 is None else float(dt0), max_steps, adjoint, throw, invalid)


@eqx.filter_jit
def _simulate(model, regimen, ts, t0, solver, rtol, atol, dt0, max_steps, adjoint, throw, invalid) -> Solution:
    n_states = len(model.state_names())
    dtype = ts.dtype
    t0, starts, ends, mult, add, rates, y0 = build_segments(model, regimen, ts, t0)
    n_seg = starts.shape[0]
    is_last = jnp.arange(n_seg) == n_seg - 1

    term = diffrax.ODETerm(lambda t, y, rate: model.vector_field_flat(t, y, None) + rate)
    controller = diffrax.PIDController(rtol=rtol, atol=atol)

    def segment(carry, seg):
        y, out, result, nsteps, nacc, nrej = carry
        s, e, m, a, rate, last = seg
        failed = result != RESULTS.successful
        e = jnp.where(failed, s, e)  # after a failure, do no more work
        y = m * y + a
        sol = diffrax.diffeqsolve(
            term, solver, s, e, dt0, y, args=rate,
            saveat=diffrax.SaveAt(ts=jnp.clip(ts, s, e), t1=True),
            stepsize_controller=controller, max_steps=max_steps, adjoint=adjoint, throw=False,
        )
        mask = (ts >= s) & ((ts < e) | (last & (ts <= e)))
        out = jnp.where(mask[:, None], sol.ys[:-1], out)
        result = RESULTS.where(failed, result, RESULTS.promote(sol.result))
        st = sol.stats
        i32 = jnp.int32
        return (sol.ys[-1], out, result, nsteps + st["num_steps"].astype(i32),
                nacc + st["num_accepted_steps"].astype(i32), nrej + st["num_rejected_steps"].astype(i32)), None

    zero = jnp.array(0, dtype=jnp.int32)
    result0 = RESULTS.successful if invalid is None else RESULTS.where(invalid, RESULTS.invalid_parameters,
                                                                       RESULTS.successful)
    init = (y0, jnp.full((ts.shape[0], n_states), jnp.nan, dtype), result0, zero, zero, zero)
    (y_end, out, result, nsteps, nacc, nrej), _ = jax.lax.scan(
        segment, init, (starts, ends, mult, add, rates, is_last)
    )
    del y_end
    obs = jax.vmap(model.observe_flat)(ts, out)
    if throw:
        out = result.error_if(out, result != RESULTS.successful)
    return Solution(ts, out, obs, result, nsteps, nacc, nrej, type(model))
