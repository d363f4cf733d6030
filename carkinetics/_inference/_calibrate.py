"""Calibration: targets bound to a model, priors from confidence tags, and multistart optax optimisation.

The workflow:

1. Bind data to model outputs: [`carkinetics.TimeCourseData`][] (observations of one observable at given days)
   and [`carkinetics.SummaryData`][] (a published summary number compared with a differentiable statistic of a
   simulation, e.g. `TimeBelow("b_blood", 1.0)` vs "B-cell reappearance 110 ± 32 d"). The helpers
   [`carkinetics.summary_target`][] and [`carkinetics.timecourse_target`][] build them from validated target rows
   (unit conversion, spread -> error model).
2. Build a [`carkinetics.CalibrationProblem`][]: the model, the regimen, the targets, the names of the parameters
   to estimate (all others stay fixed), and priors from the confidence tags (see `PRIOR_SD`). The problem works in
   the unconstrained space of [`carkinetics.ParameterSpace`][] (log / logit transforms from the declared bounds);
   `problem.loss(z)` is the negative log posterior.
3. [`carkinetics.fit`][] runs Adam then L-BFGS from several starts in one compiled program - by default every
   iteration evaluates all starts in one batched ensemble solve (`engine="ensemble"`; `engine="vmap"` vmaps
   optax over `ck.simulate`) - and returns a [`carkinetics.FitResult`][] with per-start convergence information.
"""

from __future__ import annotations

import dataclasses

import math
from collections.abc import Mapping, Sequence
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax

from .._core._custom_types import Array, Float
from .._core._model import AbstractKineticModel
from ._observation import AbstractObservationModel, CensoredError, LogNormalError, NormalError
from .._core._parameters import ParameterSpace, floats_to_arrays, parameters
from .._engine._simulate import ENGINES, default_solver, engine_of, simulate, simulate_ensemble
from ._targets import AbstractStatistic, TargetRow, convert_unit, statistic_times, unit_dimension

#: Prior standard deviation on the unconstrained (log / logit) scale, by confidence tag. A published value read in
#: the primary source (`R`) is trusted to about ±30 % (1 sd), a recalled one (`M`) only to a factor ~e.
PRIOR_SD: dict[str, float] = {"R": 0.3, "R2": 0.5, "D": 0.5, "M": 1.0, "A": 1.5, "F": 1.0}

#: Default log-scale error for summary targets published without a spread, by confidence tag.
DEFAULT_LOG_SIGMA: dict[str, float] = {"R": 0.2, "R2": 0.3, "D": 0.3, "M": 0.5, "A": 0.5, "F": 0.3}

_Z_CLIP = 40.0  # |z| beyond this maps to values at the edge of float range; clipped for safety


# --------------------------------------------------------------------------------------------------------------
# Targets bound to model outputs


class TimeCourseData(eqx.Module):
    """Observations of one model observable at given days, with an observation (error) model.

    **Fields:** `observable` (name), `times` (days, shape `(N,)`), `values` (observable unit, `(N,)`), `error`
    (an observation model), `ids` (labels of the data points, for tables), `label` (legend text).
    """

    observable: str = eqx.field(static=True)
    times: Float[Array, " N"]
    values: Float[Array, " N"]
    error: AbstractObservationModel
    ids: tuple[str, ...] = eqx.field(static=True, default=())
    label: str = eqx.field(static=True, default="")

    def __check_init__(self):
        t, v = np.shape(self.times), np.shape(self.values)
        if len(t) != 1 or t != v or t[0] == 0:
            raise ValueError(f"`times` and `values` must be non-empty 1-D arrays of equal length, got shapes {t} and {v}.")
        if isinstance(self.values, jax.core.Tracer) or isinstance(self.times, jax.core.Tracer):
            return
        times, values = np.asarray(self.times, float), np.asarray(self.values, float)
        where = f" of the {self.observable!r} data"
        if not np.all(np.isfinite(times)):
            raise ValueError(f"`times`{where} must be finite; positions {np.flatnonzero(~np.isfinite(times)).tolist()} "
                             "are not.")
        if not np.all(np.isfinite(values)):
            raise ValueError(f"`values`{where} must be finite; positions {np.flatnonzero(~np.isfinite(values)).tolist()} "
                             "are NaN or infinite (drop missing observations, or censor them with CensoredError).")
        if _log_scale(self.error) and np.any(values <= 0):
            raise ValueError(f"`values`{where} must be positive for a log-scale error model "
                             f"({type(self.error).__name__}); positions {np.flatnonzero(values <= 0).tolist()} are "
                             "zero or negative (censor them with CensoredError(..., lloq=...) instead).")


def _log_scale(error: AbstractObservationModel) -> bool:
    inner = error.base if isinstance(error, CensoredError) else error
    return isinstance(inner, LogNormalError)


class SummaryData(eqx.Module):
    """A published summary number compared with a differentiable statistic of the simulation.

    **Fields:** `statistic` (an `AbstractStatistic`), `value` (in `unit`), `error` (observation model in `unit`),
    `target_id`, `unit`, and `interval` (the reported spread as `(low, high)` in `unit`, or `None`), used to
    check that a calibrated model hits the target within its spread.
    """

    statistic: AbstractStatistic
    value: Any
    error: AbstractObservationModel
    target_id: str = eqx.field(static=True, default="")
    unit: str = eqx.field(static=True, default="")
    interval: tuple[float, float] | None = eqx.field(static=True, default=None)


def _model_class(model: Any) -> type:
    return model if isinstance(model, type) else type(model)


def summary_target(row: TargetRow, statistic: AbstractStatistic, model: Any, *,
                   error: AbstractObservationModel | None = None) -> SummaryData:
    """Bind a published summary row to a statistic of `model`'s simulation.

    The row's unit must have the statistic's dimension (time for `TimeBelow`, the observable's for `PeakHeight`,
    ...); the value and spread are converted to the statistic's unit. Default error model: normal with the
    reported spread's sd (`row.sigma()`); for a published lower/upper bound a censored normal with sd = 10 % of
    the bound; without a spread a log-normal error with `DEFAULT_LOG_SIGMA[row.tag]`.

    **Raises:** `ValueError` for an unknown observable or a unit of the wrong dimension.
    """
    cls = _model_class(model)
    if statistic.observable not in cls.observable_units:
        raise ValueError(f"Statistic observable {statistic.observable!r} is not an observable of {cls.__name__}; "
                         f"observables are {sorted(cls.observable_units)}.")
    unit = statistic.unit(cls.observable_units[statistic.observable])
    if unit_dimension(row.unit) != unit_dimension(unit):
        raise ValueError(f"Target {row.target_id!r} is in {row.unit!r} ({unit_dimension(row.unit)}) but "
                         f"{type(statistic).__name__} of {statistic.observable!r} is in {unit!r} ({unit_dimension(unit)}).")
    value = float(convert_unit(row.value, row.unit, unit))
    iv = row.interval()
    interval = None if iv is None else tuple(float(convert_unit(x, row.unit, unit)) for x in iv)
    if error is None:
        sigma = row.sigma()
        if row.measure in ("lower_bound", "upper_bound"):
            base = NormalError(0.1 * abs(value) if value != 0 else 1.0)
            error = CensoredError(base, uloq=value) if row.measure == "lower_bound" else CensoredError(base, lloq=value)
        elif math.isfinite(sigma):
            error = NormalError(float(convert_unit(sigma, row.unit, unit)))
        elif value > 0:
            error = LogNormalError(DEFAULT_LOG_SIGMA[row.tag])
        else:
            raise ValueError(f"Target {row.target_id!r} has no spread and a non-positive value; pass `error`.")
    return SummaryData(statistic, jnp.asarray(value, dtype=float), error, row.target_id, unit, interval)


def timecourse_target(rows: Sequence[TargetRow], observable: str, model: Any, *,
                      error: AbstractObservationModel | None = None, label: str = "") -> TimeCourseData:
    """Bind time-course rows (each with a `time`) of one observable to `model`'s observable.

    Values are converted to the observable's unit. Default error: log-normal with `DEFAULT_LOG_SIGMA` of the
    least certain tag among the rows.
    """
    cls = _model_class(model)
    if observable not in cls.observable_units:
        raise ValueError(f"{observable!r} is not an observable of {cls.__name__}; observables are "
                         f"{sorted(cls.observable_units)}.")
    if len(rows) == 0:
        raise ValueError("`rows` is empty; a time course needs at least one row with a time.")
    unit = cls.observable_units[observable]
    times, values = [], []
    for r in rows:
        if math.isnan(r.time):
            raise ValueError(f"Target {r.target_id!r} has no time; a time course needs a day for each row.")
        times.append(r.time)
        values.append(float(convert_unit(r.value, r.unit, unit)))
    if error is None:
        error = LogNormalError(max(DEFAULT_LOG_SIGMA[r.tag] for r in rows))
    return TimeCourseData(observable, jnp.asarray(times, dtype=float), jnp.asarray(values, dtype=float), error,
                          tuple(r.target_id for r in rows), label)


# --------------------------------------------------------------------------------------------------------------
# The problem


class CalibrationProblem(eqx.Module):
    """A model, a regimen, targets, and the parameters to estimate, with priors; `loss(z)` is differentiable.

    **Arguments:**

    - `model`: an [`carkinetics.AbstractKineticModel`][]; its current values are the fixed values and the
      prior centres.
    - `regimen`: a [`carkinetics.Regimen`][] (or a dose, or `None`).
    - `targets`: a sequence of [`carkinetics.TimeCourseData`][] / [`carkinetics.SummaryData`][].
    - `estimate`: dotted names of the parameters to estimate; all others stay fixed.
    - `priors`: `"tags"` (default) for normal priors on the unconstrained scale centred at the current values with
      sd `PRIOR_SD[tag]`; `None` for flat priors (pure maximum likelihood); or a mapping name -> sd (names not
      listed get a flat prior).
    - `t_end`: last simulated day (default: the last data/statistic time, at least 1 day after infusion).
    - `n_grid`: number of uniformly spaced grid points (data and statistic times are added to the grid).
    - `bounds`: optional working bounds `{name: (lower, upper)}` inside the declared ones, used for the
      unconstrained transform instead of the declared bounds (e.g. a time declared on `[-1e4, inf)` is better
      estimated on `(0, 1000)`); the prior sd then applies on that transformed scale.
    - `grid`: explicit save times (days, sorted) used instead of the uniform grid (e.g. finer around the peak);
      data and statistic times are still added.
    - `t0`: start of the simulation (default: the first dose event or the first grid time).
    - `solver`, `rtol`, `atol`, `max_steps`: as for [`carkinetics.simulate`][] (`None`: the model class's defaults;
      `max_steps` bounds the steps over the whole horizon). A diffrax solver makes [`carkinetics.fit`][] run on
      the vmap engine, an ensemble method (or none) on the batched ensemble engine.
    - `failure_loss`: loss assigned when the solver fails (such points are rejected by the optimisers).

    **Example:**

    ```python
    import jax.numpy as jnp, carkinetics as ck
    from carkinetics.models import Stein2019CK
    model = Stein2019CK()
    data = ck.TimeCourseData("transgene", jnp.array([7.0, 28.0]), jnp.array([9000.0, 1500.0]),
                             ck.LogNormalError(0.3))
    problem = ck.CalibrationProblem(model, None, [data], ["alpha", "cmax"])
    problem.loss(problem.z0)
    ```
    """

    model: AbstractKineticModel
    regimen: Any
    space: ParameterSpace
    targets: tuple[Any, ...]
    ts: Float[Array, " T"]
    prior_mean: Float[Array, " n"]
    prior_weight: Float[Array, " n"]
    obs_index: tuple[int, ...] = eqx.field(static=True)
    t0: float | None = eqx.field(static=True)
    solver: Any = eqx.field(static=True)
    rtol: float | None = eqx.field(static=True)
    atol: float | None = eqx.field(static=True)
    max_steps: int = eqx.field(static=True)
    failure_loss: float = eqx.field(static=True)

    def __init__(self, model: AbstractKineticModel, regimen: Any, targets: Sequence[Any], estimate: Sequence[str], *,
                 priors: str | Mapping[str, float] | None = "tags", t_end: float | None = None, n_grid: int = 300,
                 grid: Any = None, bounds: Mapping[str, tuple[float, float]] | None = None,
                 t0: float | None = None, solver: Any = None, rtol: float | None = None,
                 atol: float | None = None, max_steps: int = 20_000, failure_loss: float = 1e10):
        if not isinstance(model, AbstractKineticModel):
            raise ValueError(f"`model` must be an AbstractKineticModel, got {type(model).__name__}.")
        targets = tuple(targets)
        if not targets:
            raise ValueError("`targets` is empty; a calibration needs at least one target.")
        if isinstance(estimate, str) or len(estimate) == 0:
            raise ValueError(f"`estimate` must be a non-empty sequence of parameter names, got {estimate!r}.")
        if isinstance(n_grid, bool) or not isinstance(n_grid, int) or n_grid < 2:
            raise ValueError(f"`n_grid` must be an int >= 2, got {n_grid!r}.")
        names = model.observable_names()
        obs_index, times = [], []
        for tg in targets:
            if isinstance(tg, TimeCourseData):
                obs, tt = tg.observable, [float(x) for x in np.asarray(tg.times)]
            elif isinstance(tg, SummaryData):
                obs, tt = tg.statistic.observable, statistic_times([tg.statistic])
            else:
                raise ValueError(f"Each target must be a TimeCourseData or SummaryData, got {type(tg).__name__}.")
            if obs not in names:
                raise ValueError(f"Target observable {obs!r} is not an observable of {type(model).__name__}; "
                                 f"observables are {list(names)}.")
            obs_index.append(names.index(obs))
            times.extend(tt)
        self.space = ParameterSpace(model, list(estimate), bounds=bounds)
        allp = parameters(model)
        z0 = np.asarray(self.space.to_vector(model))
        if priors is None:
            sd = np.full(len(estimate), np.inf)
        elif isinstance(priors, str):
            if priors != "tags":
                raise ValueError(f"`priors` must be 'tags', None or a mapping name -> sd, got {priors!r}.")
            sd = np.array([PRIOR_SD[allp[n].info.tag] for n in estimate])
        elif isinstance(priors, Mapping):
            unknown = sorted(set(priors) - set(estimate))
            if unknown:
                raise ValueError(f"`priors` names {unknown} that are not estimated; estimated are {list(estimate)}.")
            sd = np.array([float(priors.get(n, np.inf)) for n in estimate])
            if np.any(sd <= 0):
                raise ValueError(f"Prior sds must be positive, got {dict(priors)}.")
        else:
            raise ValueError(f"`priors` must be 'tags', None or a mapping name -> sd, got {type(priors).__name__}.")
        self.prior_mean = jnp.asarray(z0)
        self.prior_weight = jnp.asarray(np.where(np.isfinite(sd), 1.0 / np.where(np.isfinite(sd), sd, 1.0) ** 2, 0.0))
        first_event = None if regimen is None or not hasattr(regimen, "first_time") else regimen.first_time()
        start = 0.0 if first_event is None else min(0.0, float(first_event))
        if t0 is not None:
            start = float(t0)
        if times and min(times) < start:
            start = min(times)
        stop = max([1.0, *times]) if t_end is None else float(t_end)
        if stop <= start:
            raise ValueError(f"`t_end` ({stop}) must be later than the simulation start ({start}).")
        if grid is None:
            base = np.linspace(start, stop, n_grid)
        else:
            base = np.asarray(grid, dtype=float)
            if base.ndim != 1 or base.size < 2 or np.any(np.diff(base) <= 0) or not np.all(np.isfinite(base)):
                raise ValueError("`grid` must be a finite, strictly increasing 1-D array of at least 2 days.")
            start, stop = min(start, float(base[0])), float(base[-1]) if t_end is None else stop
            base = base[(base >= start) & (base <= stop)]
        grid = np.union1d(base, np.clip(np.asarray(times, float), start, stop))
        self.model = model
        self.regimen = regimen
        self.targets = targets
        self.ts = jnp.asarray(grid)
        self.obs_index = tuple(obs_index)
        self.t0 = None if t0 is None else float(t0)
        if solver is not None:
            engine_of(solver)  # ValueError for anything but a diffrax solver or an ensemble method
        self.solver = solver
        self.rtol = None if rtol is None else float(rtol)
        self.atol = None if atol is None else float(atol)
        self.max_steps = int(max_steps)
        self.failure_loss = float(failure_loss)

    # ---- parameter space helpers -------------------------------------------------------------------------------

    @property
    def names(self) -> tuple[str, ...]:
        return self.space.names

    @property
    def z0(self) -> Float[Array, " n"]:
        """Unconstrained vector of the model's current values (the prior centre)."""
        return self.prior_mean

    def to_model(self, z: Float[Array, " n"]) -> AbstractKineticModel:
        """The model with the estimated parameters set from the unconstrained vector `z`."""
        return self.space.to_model(self.model, jnp.clip(z, -_Z_CLIP, _Z_CLIP))

    def values(self, z: Float[Array, " n"]) -> Float[Array, " n"]:
        """Natural-unit values of the estimated parameters at `z`."""
        return self.space.values(self.to_model(z))

    def to_vector(self, values: Mapping[str, float]) -> Float[Array, " n"]:
        """Unconstrained vector from a mapping name -> natural value (missing names: current model values)."""
        return self.space.to_vector(self.model.replace({k: float(v) for k, v in values.items() if k in self.names}))

    # ---- simulation and predictions -----------------------------------------------------------------------------

    def simulate(self, z: Float[Array, " n"]):
        """Simulate at the problem's grid with parameters `z` (`throw=False`; check `.ok`)."""
        return simulate(self.to_model(z), self.regimen, self.ts, t0=self.t0, solver=self.solver, rtol=self.rtol,
                        atol=self.atol, max_steps=self.max_steps, throw=False)

    def predict_from_solution(self, sol) -> tuple[Array, ...]:
        """Model predictions for every target (arrays for time courses, scalars for summaries)."""
        out = []
        for tg, i in zip(self.targets, self.obs_index):
            traj = sol.obs_array[:, i]
            if isinstance(tg, TimeCourseData):
                out.append(jnp.interp(tg.times, self.ts, traj))
            else:
                out.append(tg.statistic(self.ts, traj))
        return tuple(out)

    def predictions(self, z: Float[Array, " n"]) -> tuple[Array, ...]:
        """Predictions for every target at `z` (failed solves give `nan`)."""
        sol = self.simulate(z)
        return tuple(jnp.where(sol.ok, p, jnp.nan) for p in self.predict_from_solution(sol))

    # ---- objective ---------------------------------------------------------------------------------------------

    def _data_terms(self, z):
        return self._terms_from_solution(self.simulate(z))

    def _terms_from_solution(self, sol):
        terms = []
        for tg, pred in zip(self.targets, self.predict_from_solution(sol)):
            obs = tg.values if isinstance(tg, TimeCourseData) else tg.value
            safe = jnp.where(sol.ok & jnp.isfinite(pred), pred, 1.0)
            terms.append(tg.error.nll(safe, obs))
        return jnp.stack(terms), sol.ok

    def loss_from_solution(self, z: Float[Array, " n"], sol) -> Array:
        """`loss(z)` given the simulation `sol` of `to_model(z)` (one member, e.g. of a batched ensemble solve)."""
        return self._nll_from_solution(sol) + self.prior_nll(z)

    def _nll_from_solution(self, sol) -> Array:
        terms, ok = self._terms_from_solution(sol)
        total = jnp.sum(terms)
        return jnp.where(ok & jnp.isfinite(total), total, self.failure_loss)

    def ensemble_solver(self, slots: int | None = None) -> Any:
        """The ensemble method of batched losses: the problem's `solver` if it is one, else the model class's
        default ensemble method; `slots` overrides its slot count."""
        if self.solver is not None and engine_of(self.solver) != "ensemble":
            raise ValueError(f"The problem's solver {type(self.solver).__name__} is a diffrax solver; batched losses "
                             "need an ensemble method (give solver=None or ck.EnsembleRodas5(), or use "
                             "engine='vmap').")
        method = default_solver(self.model, "ensemble") if self.solver is None else self.solver
        return method if slots is None else dataclasses.replace(method, slots=slots)

    def ensemble_losses(self, zs: Float[Array, "S n"], *, slots: int | None = None) -> Float[Array, " S"]:
        """`loss` at every row of `zs` from ONE batched solve ([`carkinetics.simulate_ensemble`][]).

        Differentiable (reverse mode): the gradient of `sum(ensemble_losses(zs))` with respect to `zs` is the
        per-row gradient of `loss`, as the rows are independent. `slots` overrides the method's slot count.
        """
        base = floats_to_arrays(self.model)
        models = jax.vmap(lambda z: self.space.to_model(base, jnp.clip(z, -_Z_CLIP, _Z_CLIP)))(zs)
        sol = simulate_ensemble(models, self.regimen, self.ts, solver=self.ensemble_solver(slots), t0=self.t0,
                                rtol=self.rtol, atol=self.atol, max_steps=self.max_steps, throw=False)
        return jax.vmap(self.loss_from_solution)(zs, sol)

    def data_nll(self, z: Float[Array, " n"]) -> Array:
        """Negative log-likelihood of all targets at `z` (`failure_loss` if the solver fails)."""
        return self._nll_from_solution(self.simulate(z))

    def target_nll(self, z: Float[Array, " n"]) -> Array:
        """Per-target negative log-likelihoods at `z`, shape `(n_targets,)`."""
        return self._data_terms(z)[0]

    def prior_nll(self, z: Float[Array, " n"]) -> Array:
        """Negative log prior (up to a constant): `0.5 * sum(w * (z - z_prior)^2)`, `w = 1/sd^2` (0 if flat)."""
        return 0.5 * jnp.sum(self.prior_weight * (z - self.prior_mean) ** 2)

    def loss(self, z: Float[Array, " n"]) -> Array:
        """Negative log posterior (data + prior) at the unconstrained vector `z`."""
        return self.data_nll(z) + self.prior_nll(z)

    def diagnose(self, z: Float[Array, " n"]) -> list[str]:
        """Why the loss at `z` is the failure penalty: one sentence per problem (empty if it is not)."""
        sol = self.simulate(z)
        if not bool(sol.ok):
            return [f"the simulation fails ({sol.result}) at {dict(zip(self.names, np.asarray(self.values(z))))}"]
        out = []
        terms, _ = self._terms_from_solution(sol)
        for tg, pred, term in zip(self.targets, self.predict_from_solution(sol), np.asarray(terms)):
            what = (f"target {tg.observable!r}" if isinstance(tg, TimeCourseData)
                    else f"summary {tg.target_id or type(tg.statistic).__name__}")
            p = np.asarray(pred, float)
            if not np.all(np.isfinite(p)):
                out.append(f"{what}: the model predicts non-finite values")
            elif _log_scale(tg.error) and np.any(p <= 0):
                out.append(f"{what}: the model predicts {float(np.min(p)):g} (<= 0) where a log-scale error model "
                           "needs positive values (does any dose reach this observable?)")
            elif not np.isfinite(term):
                out.append(f"{what}: the likelihood is not finite")
        return out


# --------------------------------------------------------------------------------------------------------------
# Optimisation


_TRACES = {"multistart": 0, "multistart_ensemble": 0, "grad_batch": 0, "profile": 0}


def _safe_value_and_grad(fn, z):
    val, g = jax.value_and_grad(fn)(z)
    ok = jnp.isfinite(val) & jnp.all(jnp.isfinite(g))
    return val, jnp.where(ok, g, 0.0), ok


@eqx.filter_jit
def _run_multistart(problem: CalibrationProblem, z_starts, adam_steps: int, lbfgs_steps: int, learning_rate,
                    mask, linesearch: str):
    _TRACES["multistart"] += 1
    fn = problem.loss

    def one(z0):
        sched = optax.cosine_decay_schedule(learning_rate, max(adam_steps, 1), alpha=0.05)
        adam = optax.chain(optax.clip_by_global_norm(5.0), optax.adam(sched))

        def adam_step(carry, _):
            z, state = carry
            val, g, ok = _safe_value_and_grad(fn, z)
            upd, state = adam.update(g * mask, state, z)
            z_new = optax.apply_updates(z, upd)
            return (jnp.where(ok, z_new, z), state), val

        hist_a = jnp.zeros((0,), z0.dtype)
        z = z0
        if adam_steps > 0:  # static: no Adam program is traced for an L-BFGS-only fit
            (z, _), hist_a = jax.lax.scan(adam_step, (z0, adam.init(z0)), None, length=adam_steps)
        if linesearch == "zoom":
            lbfgs = optax.lbfgs()
        else:  # Armijo backtracking: cheaper to compile than the zoom (strong Wolfe) search, robust enough here
            lbfgs = optax.lbfgs(linesearch=optax.scale_by_backtracking_linesearch(max_backtracking_steps=25,
                                                                                  store_grad=True))
        vg = optax.value_and_grad_from_state(fn)

        def lbfgs_step(carry, _):
            z, state = carry
            val, g = vg(z, state=state)
            ok = jnp.isfinite(val) & jnp.all(jnp.isfinite(g))
            g = jnp.where(ok, g, 0.0) * mask
            upd, new_state = lbfgs.update(g, state, z, value=val, grad=g, value_fn=fn)
            z_new = optax.apply_updates(z, upd * mask)
            good = ok & jnp.all(jnp.isfinite(z_new))
            z = jnp.where(good, z_new, z)
            state = jax.tree_util.tree_map(lambda a, b: jnp.where(good, a, b), new_state, state)
            return (z, state), val

        hist_l = jnp.zeros((0,), z0.dtype)
        if lbfgs_steps > 0:
            (z, _), hist_l = jax.lax.scan(lbfgs_step, (z, lbfgs.init(z)), None, length=lbfgs_steps)
        val, g, _ = _safe_value_and_grad(fn, z)
        return z, val, jnp.linalg.norm(g * mask), jnp.concatenate([hist_a, hist_l, val[None]])

    return jax.vmap(one)(z_starts)


#: Batched L-BFGS of the ensemble engine: memory, Armijo slope fraction, step-halving trials per line search, and
#: the relative directional derivative below which a start cannot decrease the loss measurably (frozen).
_LBFGS_MEMORY = 10
_ARMIJO_C1 = 1e-4
_MAX_LS = 15
_GD_TINY = 1e-12


def _lbfgs_direction(g, s_mem, y_mem, rho):
    """L-BFGS two-loop recursion for one start; memory newest first, `rho == 0` marks an empty entry.

    Without memory the direction is `-g` scaled to length at most 1 (optax's first-step heuristic); with memory
    the initial inverse Hessian is `s'y / y'y` of the newest pair."""

    def first(q, mem):
        sv, yv, r = mem
        a = r * jnp.dot(sv, q)
        return q - a * yv, a

    q, alphas = jax.lax.scan(first, g, (s_mem, y_mem, rho))
    yy = jnp.dot(y_mem[0], y_mem[0])
    gnorm = jnp.linalg.norm(g)
    has = (rho[0] > 0) & (yy > 0)
    gamma = jnp.where(has, 1.0 / jnp.where(has, rho[0] * yy, 1.0),
                      jnp.minimum(1.0, 1.0 / jnp.where(gnorm > 0, gnorm, 1.0)))

    def second(r, mem):
        sv, yv, rr, a = mem
        return r + sv * (a - rr * jnp.dot(yv, r)), None

    r, _ = jax.lax.scan(second, gamma * q, (s_mem, y_mem, rho, alphas), reverse=True)
    return -r


class _EnsembleOpt(eqx.Module):
    """Carry of the batched multistart optimiser (a state machine with ONE batched loss+gradient per iteration)."""

    phase: Array  # 0 Adam, 1 L-BFGS start, 2 line-search trial, 3 final evaluation, 4 done
    k_adam: Array
    k_lbfgs: Array
    n_trial: Array
    z: Array  # (S, n) current points
    adam_state: Any
    f: Array  # (S,) loss and (S, n) gradient at z (L-BFGS phase)
    g: Array
    d: Array  # (S, n) search directions, (S,) directional derivatives g'd and trial step sizes
    gd: Array
    alpha: Array
    accepted: Array  # (S,) line search done (accepted or frozen)
    frozen: Array  # (S,) cannot decrease further (no descent direction, or line search failed without memory)
    f_new: Array
    g_new: Array
    s_mem: Array  # (S, m, n)
    y_mem: Array
    rho: Array  # (S, m)
    hist: Array  # (S, adam_steps + lbfgs_steps + 1)
    gnorm: Array


@eqx.filter_jit
def _run_multistart_ensemble(problem: CalibrationProblem, z_starts, adam_steps: int, lbfgs_steps: int,
                             learning_rate, mask, slots: int | None):
    """The ensemble engine of `fit`: every loss and gradient of all starts comes from one `simulate_ensemble` call.

    Adam (per-start clipping, vmapped optax update) then a batched L-BFGS whose Armijo backtracking line search
    tries a step for all starts at once (loss and gradient per trial, so an accepted step needs no further
    evaluation); starts that have accepted wait while the others halve their step (at most `_MAX_LS` trials). A
    start whose line search fails drops its L-BFGS memory; failing again without memory, it is frozen (its loss
    cannot be decreased measurably). Everything runs in one `while_loop` with a single call site of the batched
    loss and gradient (one compiled copy of the reverse-mode ensemble solve).
    """
    _TRACES["multistart"] += 1
    _TRACES["multistart_ensemble"] += 1
    n_s, n_p = z_starts.shape
    dtype = z_starts.dtype
    m = _LBFGS_MEMORY
    n_hist = adam_steps + lbfgs_steps + 1
    cols = jnp.arange(n_hist)

    # Reverse mode transposes the solver loop: without a member queue (one slot per start) it has one iteration per
    # step of the batch instead of one per step of each queue round (benchmarks/gradient_cost.py: ~3x faster).
    slots_ = n_s if slots is None else slots

    def summed(z):
        vals = problem.ensemble_losses(z, slots=slots_)
        return jnp.sum(vals), vals

    def value_and_grad(z):  # per-start losses and gradients (starts are independent members of one ensemble)
        (_, vals), g = jax.value_and_grad(summed, has_aux=True)(z)
        ok = jnp.isfinite(vals) & jnp.all(jnp.isfinite(g), axis=1)
        return vals, jnp.where(ok[:, None], g, 0.0) * mask[None, :], ok

    sched = optax.cosine_decay_schedule(learning_rate, max(adam_steps, 1), alpha=0.05)
    adam = optax.chain(optax.clip_by_global_norm(5.0), optax.adam(sched))

    def record(hist, col, vals):  # write `vals` at column `col` and every later one (early stop fills the tail)
        return jnp.where(cols[None, :] >= col, vals[:, None], hist)

    def new_direction(c: _EnsembleOpt) -> _EnsembleOpt:
        d = jax.vmap(_lbfgs_direction)(c.g, c.s_mem, c.y_mem, c.rho) * mask[None, :]
        gd = jnp.sum(c.g * d, axis=1)
        bad = ~(gd < 0) | ~jnp.all(jnp.isfinite(d), axis=1)
        d = jnp.where(bad[:, None], 0.0, d)
        frozen = c.frozen | bad | (gd > -_GD_TINY * jnp.maximum(1.0, jnp.abs(c.f)))
        hist = record(c.hist, adam_steps + c.k_lbfgs, c.f)
        phase = jnp.where(jnp.all(frozen), 3, 2).astype(jnp.int32)
        return eqx.tree_at(lambda x: (x.d, x.gd, x.frozen, x.accepted, x.alpha, x.n_trial, x.f_new, x.g_new,
                                      x.hist, x.phase),
                           c, (d, jnp.where(bad, 0.0, gd), frozen, frozen, jnp.ones((n_s,), dtype),
                               jnp.zeros((), jnp.int32), c.f, c.g, hist, phase))

    def adam_branch(c: _EnsembleOpt, f, g, ok) -> _EnsembleOpt:
        upd, st = jax.vmap(adam.update)(g, c.adam_state, c.z)
        z = jnp.where(ok[:, None], c.z + upd, c.z)
        k = c.k_adam + 1
        phase = jnp.where(k < adam_steps, 0, 1 if lbfgs_steps > 0 else 3).astype(jnp.int32)
        return eqx.tree_at(lambda x: (x.z, x.adam_state, x.k_adam, x.hist, x.phase), c,
                           (z, st, k, record(c.hist, c.k_adam, f), phase))

    def lbfgs_start_branch(c: _EnsembleOpt, f, g, ok) -> _EnsembleOpt:
        c = eqx.tree_at(lambda x: (x.f, x.g), c, (f, g))
        return new_direction(c)

    def trial_branch(c: _EnsembleOpt, f, g, ok) -> _EnsembleOpt:
        armijo = ok & jnp.isfinite(f) & (f <= c.f + _ARMIJO_C1 * c.alpha * c.gd)
        newly = ~c.accepted & armijo
        f_new = jnp.where(newly, f, c.f_new)
        g_new = jnp.where(newly[:, None], g, c.g_new)
        accepted = c.accepted | armijo
        n_trial = c.n_trial + 1
        failed = ~accepted & (n_trial >= _MAX_LS)
        alpha = jnp.where(accepted, c.alpha, 0.5 * c.alpha)
        c = eqx.tree_at(lambda x: (x.f_new, x.g_new, x.accepted, x.n_trial, x.alpha), c,
                        (f_new, g_new, accepted, n_trial, alpha))

        def finish(c: _EnsembleOpt) -> _EnsembleOpt:
            moved = c.accepted & ~c.frozen
            z = jnp.where(moved[:, None], c.z + c.alpha[:, None] * c.d, c.z)
            sv, yv = z - c.z, c.g_new - c.g
            sy = jnp.sum(sv * yv, axis=1)
            pair = moved & (sy > 1e-10 * jnp.linalg.norm(sv, axis=1) * jnp.linalg.norm(yv, axis=1))
            push = lambda mem, new: jnp.where(pair.reshape((n_s,) + (1,) * (mem.ndim - 1)),  # noqa: E731
                                              jnp.concatenate([new[:, None], mem[:, :-1]], axis=1), mem)
            s_mem, y_mem = push(c.s_mem, sv), push(c.y_mem, yv)
            rho = push(c.rho, jnp.where(pair, 1.0 / jnp.where(pair, sy, 1.0), 0.0))
            had_memory = jnp.any(c.rho > 0, axis=1)
            reset = failed & had_memory
            frozen = c.frozen | (failed & ~had_memory)
            rho = jnp.where(reset[:, None], 0.0, rho)
            s_mem = jnp.where(reset[:, None, None], 0.0, s_mem)
            y_mem = jnp.where(reset[:, None, None], 0.0, y_mem)
            f0 = jnp.where(moved, c.f_new, c.f)
            g0 = jnp.where(moved[:, None], c.g_new, c.g)
            k = c.k_lbfgs + 1
            c = eqx.tree_at(lambda x: (x.z, x.f, x.g, x.s_mem, x.y_mem, x.rho, x.frozen, x.k_lbfgs), c,
                            (z, f0, g0, s_mem, y_mem, rho, frozen, k))
            return jax.lax.cond(k < lbfgs_steps, new_direction,
                                lambda c: eqx.tree_at(lambda x: x.phase, c, jnp.asarray(3, jnp.int32)), c)

        return jax.lax.cond(jnp.all(accepted | failed), finish, lambda c: c, c)

    def final_branch(c: _EnsembleOpt, f, g, ok) -> _EnsembleOpt:
        return eqx.tree_at(lambda x: (x.f, x.gnorm, x.hist, x.phase), c,
                           (f, jnp.linalg.norm(g, axis=1), record(c.hist, n_hist - 1, f), jnp.asarray(4, jnp.int32)))

    def body(c: _EnsembleOpt) -> _EnsembleOpt:
        z_eval = jnp.where(c.phase == 2, c.z + c.alpha[:, None] * c.d, c.z)
        f, g, ok = value_and_grad(z_eval)
        return jax.lax.switch(jnp.clip(c.phase, 0, 3), [adam_branch, lbfgs_start_branch, trial_branch, final_branch],
                              c, f, g, ok)

    zeros_s = jnp.zeros((n_s,), dtype)
    zeros_sn = jnp.zeros((n_s, n_p), dtype)
    false_s = jnp.zeros((n_s,), bool)
    init = _EnsembleOpt(
        phase=jnp.asarray(0 if adam_steps > 0 else 1, jnp.int32), k_adam=jnp.asarray(0, jnp.int32),
        k_lbfgs=jnp.asarray(0, jnp.int32), n_trial=jnp.asarray(0, jnp.int32), z=z_starts,
        adam_state=jax.vmap(adam.init)(z_starts), f=zeros_s, g=zeros_sn, d=zeros_sn, gd=zeros_s, alpha=zeros_s + 1,
        accepted=false_s, frozen=false_s, f_new=zeros_s, g_new=zeros_sn,
        s_mem=jnp.zeros((n_s, m, n_p), dtype), y_mem=jnp.zeros((n_s, m, n_p), dtype), rho=jnp.zeros((n_s, m), dtype),
        hist=jnp.zeros((n_s, n_hist), dtype), gnorm=zeros_s)
    out = jax.lax.while_loop(lambda c: c.phase < 4, body, init)
    return out.z, out.f, out.gnorm, out.hist


class FitResult(eqx.Module):
    """The outcome of [`carkinetics.fit`][].

    **Fields:** `problem`; `z` (best unconstrained vector) and `loss` (its negative log posterior); per start:
    `z_starts`, `z_final`, `losses`, `grad_norms`, `converged` and `history` (loss after every iteration,
    shape `(starts, iterations + 1)`); `best` (index of the best start); `gtol`, `ftol` (convergence criteria);
    `engine` (`"ensemble"` or `"vmap"`: the engine that ran, see [`carkinetics.fit`][]).

    **Properties / methods:** `model` (fitted model), `values()` (name -> value), `success` (the best start
    converged), `at_bounds()`, `parameter_table()`, `convergence_report()`, `n_agree` (starts within `ftol` of the
    best loss).
    """

    problem: CalibrationProblem
    z: Float[Array, " n"]
    loss: Array
    z_starts: Float[Array, "S n"]
    z_final: Float[Array, "S n"]
    losses: Float[Array, " S"]
    grad_norms: Float[Array, " S"]
    converged: Any
    history: Float[Array, "S K"]
    best: int = eqx.field(static=True)
    gtol: float = eqx.field(static=True)
    ftol: float = eqx.field(static=True)
    engine: str = eqx.field(static=True, default="vmap")

    @property
    def model(self) -> AbstractKineticModel:
        return self.problem.to_model(self.z)

    def values(self) -> dict[str, float]:
        """Fitted values (natural units) by parameter name."""
        return {n: float(v) for n, v in zip(self.problem.names, np.asarray(self.problem.values(self.z)))}

    @property
    def success(self) -> bool:
        """Whether the best start converged (see `converged`): a failed fit is never reported as converged."""
        return bool(np.asarray(self.converged)[self.best])

    def at_bounds(self) -> list[str]:
        """Parameters of the best start that ran to the edge of their transform (a bound or infinity)."""
        z = np.asarray(self.z)
        return [n for n, zi in zip(self.problem.names, z) if abs(zi) >= _Z_CLIP - 1.0]

    @property
    def n_agree(self) -> int:
        """Number of starts whose final loss is within `ftol * max(1, |best|)` of the best."""
        tol = self.ftol * max(1.0, abs(float(self.loss)))
        return int(np.sum(np.abs(np.asarray(self.losses) - float(self.loss)) <= tol))

    def parameter_table(self, sd_z: Any = None) -> str:
        """Markdown table: parameter, prior centre, fitted value, unit, prior tag (fitted values are tag F)."""
        allp = parameters(self.problem.model)
        start = np.asarray(self.problem.values(self.problem.z0))
        fitted = np.asarray(self.problem.values(self.z))
        head = "| parameter | prior centre / default | fitted [F] | unit | tag of default | sd (z scale) |\n|---|---|---|---|---|---|"
        rows = []
        for k, n in enumerate(self.problem.names):
            sd = "" if sd_z is None else f"{float(np.asarray(sd_z)[k]):.3g}"
            rows.append(f"| {n} | {start[k]:.5g} | {fitted[k]:.5g} | {allp[n].info.unit} | {allp[n].info.tag} | {sd} |")
        return "\n".join([head, *rows])

    def convergence_report(self) -> str:
        """Per-start final loss, gradient norm and convergence flag, plus the agreement of the starts."""
        lines = [f"multistart: {len(np.asarray(self.losses))} starts, best loss {float(self.loss):.6g} (start {self.best}), "
                 f"{self.n_agree} starts within ftol={self.ftol:g} of the best, "
                 f"{int(np.sum(np.asarray(self.converged)))} converged (|grad| <= {self.gtol:g}, or relative loss "
                 f"change <= {self.ftol:g} over the last 5 iterations with |grad| <= sqrt(ftol) max(1, |loss|); "
                 "from a finite loss below the failure penalty, no worse than the start, no parameter at the edge of "
                 "its range)"
                 + ("" if self.success else "; THE FIT FAILED: the best start did not converge")
                 + (f"; at a bound: {self.at_bounds()}" if self.at_bounds() else ""),
                 "| start | final loss | grad norm | converged |", "|---|---|---|---|"]
        for i, (l, g, c) in enumerate(zip(np.asarray(self.losses), np.asarray(self.grad_norms),
                                          np.asarray(self.converged))):
            lines.append(f"| {i}{' *' if i == self.best else ''} | {l:.6g} | {g:.3g} | {bool(c)} |")
        return "\n".join(lines)


def make_starts(problem: CalibrationProblem, key: Any, n_starts: int, *, scale: float = 0.5,
                include_default: bool = True) -> Float[Array, "S n"]:
    """Starting points: the prior centre (if `include_default`) plus normal perturbations of sd `scale` on the
    unconstrained scale (a factor ~e^±scale for log-transformed parameters)."""
    if isinstance(n_starts, bool) or not isinstance(n_starts, int) or n_starts < 1:
        raise ValueError(f"`n_starts` must be a positive int, got {n_starts!r}.")
    if not (isinstance(scale, (int, float)) and scale >= 0):
        raise ValueError(f"`scale` must be a non-negative number, got {scale!r}.")
    z0 = problem.z0
    noise = scale * jax.random.normal(key, (n_starts, z0.shape[0]), dtype=z0.dtype)
    if include_default:
        noise = noise.at[0].set(0.0)
    return z0[None, :] + noise


def _choose_engine(problem: CalibrationProblem, engine: str | None, linesearch: str) -> str:
    """The engine `fit` runs: `engine` if given (checked against the problem's solver and the line search), else
    the engine of the problem's solver, else "ensemble" ("vmap" for the zoom line search)."""
    own = None if problem.solver is None else engine_of(problem.solver)
    if engine is None:
        engine = own or ("vmap" if linesearch == "zoom" else "ensemble")
    if engine not in ENGINES:
        raise ValueError(f"`engine` must be one of {list(ENGINES)} or None, got {engine!r}.")
    if own is not None and own != engine:
        raise ValueError(f"`engine` = {engine!r} but the problem's solver {type(problem.solver).__name__} runs on the "
                         f"{own!r} engine.")
    if engine == "ensemble" and linesearch != "backtracking":
        raise ValueError("The zoom line search runs on the vmap engine only; use engine='vmap' or "
                         "linesearch='backtracking'.")
    return engine


def fit(problem: CalibrationProblem, *, key: Any = None, n_starts: int = 8, starts: Any = None,
        start_scale: float = 0.5, adam_steps: int = 200, lbfgs_steps: int = 50, learning_rate: float = 0.05,
        gtol: float = 1e-3, ftol: float = 1e-6, linesearch: str = "backtracking", engine: str | None = None,
        slots: int | None = None) -> FitResult:
    """Minimise `problem.loss` from several starts at once: Adam (cosine-decayed) then L-BFGS.

    **Arguments:**

    - `problem`: a [`carkinetics.CalibrationProblem`][].
    - `key`: PRNG key for the starts (default `jax.random.key(0)`); ignored if `starts` is given.
    - `n_starts`, `start_scale`: number of starts and their spread (see [`carkinetics.make_starts`][]).
    - `starts`: explicit unconstrained starting points, shape `(S, n)`.
    - `adam_steps`, `lbfgs_steps`, `learning_rate`: optimiser budget (fixed iteration counts, so that all starts
      run in one compiled program).
    - `engine`: how the starts are evaluated.
      `"ensemble"` (default): the losses and gradients of ALL starts come from one batched solve
      ([`carkinetics.CalibrationProblem.ensemble_losses`][], i.e. [`carkinetics.simulate_ensemble`][], reverse
      mode) per iteration, with the problem's ensemble method ([`carkinetics.default_solver`][] if it names
      none). Each start keeps its own optimiser: Adam with per-start gradient clipping
      (optax update vmapped over starts), then a batched L-BFGS (memory 10) with an Armijo backtracking line
      search that tries a step for every start at once (halving, at most 15 trials; a start whose search fails
      drops its memory, and failing again without memory it stops: its loss cannot be decreased measurably).
      `"vmap"`: optax Adam then `optax.lbfgs` per start, vmapped over starts, each loss a `ck.simulate` solve.
      Default (`None`): the engine of the problem's solver, else `"ensemble"` (`"vmap"` with
      `linesearch="zoom"`); `FitResult.engine` says which ran. The engines reach the same optimum to the solver
      tolerance but follow different paths (different line searches).
    - `linesearch`: L-BFGS line search of the vmap engine, `"backtracking"` (Armijo; default, faster to compile)
      or `"zoom"` (strong Wolfe; vmap engine only).
    - `slots`: members integrated at once by the ensemble engine (see `simulate_ensemble`; default: one per start,
      no member queue, the fastest for the reverse-mode gradients the fit takes).
    - `gtol`, `ftol`: convergence criteria: a start has converged when its gradient norm (unconstrained scale) is
      at most `gtol`, or when its loss changed by at most `ftol` (relative) over the last 5 iterations with a
      gradient norm at most `sqrt(ftol) * max(1, |loss|)`; in both cases only from a finite loss below
      `failure_loss`, no worse than its start, with no parameter at the edge of its range. `FitResult.success` says
      whether the best start converged.

    **Raises:** `ValueError` when every start gives the failure penalty (the data cannot be fitted), naming the
    reason found at the first start (a failing simulation, non-positive predictions for log-scale data, ...).

    **Returns:** a [`carkinetics.FitResult`][].

    **Example:**

    ```python
    res = ck.fit(problem, n_starts=4, adam_steps=100, lbfgs_steps=30)
    print(res.convergence_report()); res.values()
    ```
    """
    for name, v in (("adam_steps", adam_steps), ("lbfgs_steps", lbfgs_steps)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise ValueError(f"`{name}` must be a non-negative int, got {v!r}.")
    if adam_steps + lbfgs_steps == 0:
        raise ValueError("`adam_steps + lbfgs_steps` must be positive.")
    if linesearch not in ("backtracking", "zoom"):
        raise ValueError(f"`linesearch` must be 'backtracking' or 'zoom', got {linesearch!r}.")
    if not (learning_rate > 0 and math.isfinite(learning_rate)):
        raise ValueError(f"`learning_rate` must be positive, got {learning_rate!r}.")
    if slots is not None and (isinstance(slots, bool) or not isinstance(slots, int) or slots < 1):
        raise ValueError(f"`slots` must be a positive int or None, got {slots!r}.")
    engine = _choose_engine(problem, engine, linesearch)
    if starts is None:
        starts = make_starts(problem, jax.random.key(0) if key is None else key, n_starts, scale=start_scale)
    starts = jnp.asarray(starts, dtype=problem.z0.dtype)
    if starts.ndim != 2 or starts.shape[1] != problem.z0.shape[0]:
        raise ValueError(f"`starts` must have shape (S, {problem.z0.shape[0]}), got {starts.shape}.")
    start_losses = np.asarray(jax.vmap(problem.loss)(starts))
    if not np.any(np.isfinite(start_losses) & (start_losses < problem.failure_loss)):
        reasons = problem.diagnose(starts[0])
        raise ValueError("The data cannot be fitted: every start gives the failure penalty. At the first start "
                         + ("; ".join(reasons) if reasons else "the loss is not finite") + ".")
    mask = jnp.ones_like(problem.z0)
    lr = jnp.asarray(learning_rate, problem.z0.dtype)
    if engine == "ensemble":
        z_final, losses, gnorms, hist = _run_multistart_ensemble(problem, starts, adam_steps, lbfgs_steps, lr, mask,
                                                                 slots)
    else:
        z_final, losses, gnorms, hist = _run_multistart(problem, starts, adam_steps, lbfgs_steps, lr, mask,
                                                        linesearch)
    losses_np = np.asarray(losses)
    best = int(np.nanargmin(np.where(np.isfinite(losses_np), losses_np, np.inf)))
    h = np.asarray(hist)
    tail = h[:, -6:]
    rel = np.abs(tail.max(axis=1) - tail.min(axis=1)) / np.maximum(1.0, np.abs(tail[:, -1]))
    final = np.asarray(losses)
    # A start has converged only if it met a criterion from a valid point: a finite loss below the failure penalty,
    # no worse than where it started, with no parameter run off to the edge of its transform (|z| at the clip).
    valid = np.isfinite(final) & (final < problem.failure_loss) & (final <= start_losses + 1e-12 * np.abs(start_losses))
    inside = np.all(np.abs(np.asarray(z_final)) < _Z_CLIP - 1.0, axis=1)
    # A stalled loss (rel <= ftol) counts only with a gradient small relative to the loss: an optimiser stuck on a
    # noisy or steep objective with a large gradient has not converged.
    g = np.asarray(gnorms)
    stalled_ok = (rel <= ftol) & (g <= np.maximum(gtol, np.sqrt(ftol) * np.maximum(1.0, np.abs(final))))
    converged = ((g <= gtol) | stalled_ok) & valid & inside
    return FitResult(problem, z_final[best], losses[best], starts, z_final, losses, gnorms, jnp.asarray(converged),
                     hist, best, float(gtol), float(ftol), engine)
