"""`CalibrationProblem`: a model, a regimen, targets and the parameters to estimate, with priors from the confidence
tags; `loss(z)` is the differentiable negative log posterior on the unconstrained scale."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .._core._custom_types import Array, Float
from .._core._model import AbstractKineticModel
from .._core._parameters import PRIOR_SD, ParameterSpace, floats_to_arrays, parameters
from .._engine._simulate import default_solver, engine_of, simulate, simulate_ensemble
from ._data import SummaryData, TimeCourseData, _log_scale
from ._targets import statistic_times

__all__ = ["PRIOR_SD", "CalibrationProblem"]  # PRIOR_SD (sd by confidence tag) is defined in _core/_parameters.py

_Z_CLIP = 40.0  # |z| beyond this maps to values at the edge of float range; clipped for safety


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

    def __init__(
        self,
        model: AbstractKineticModel,
        regimen: Any,
        targets: Sequence[Any],
        estimate: Sequence[str],
        *,
        priors: str | Mapping[str, float] | None = "tags",
        t_end: float | None = None,
        n_grid: int = 300,
        grid: Any = None,
        bounds: Mapping[str, tuple[float, float]] | None = None,
        t0: float | None = None,
        solver: Any = None,
        rtol: float | None = None,
        atol: float | None = None,
        max_steps: int = 20_000,
        failure_loss: float = 1e10,
    ):
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
                raise ValueError(
                    f"Target observable {obs!r} is not an observable of {type(model).__name__}; "
                    f"observables are {list(names)}."
                )
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
        return simulate(
            self.to_model(z),
            self.regimen,
            self.ts,
            t0=self.t0,
            solver=self.solver,
            rtol=self.rtol,
            atol=self.atol,
            max_steps=self.max_steps,
            throw=False,
        )

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
            raise ValueError(
                f"The problem's solver {type(self.solver).__name__} is a diffrax solver; batched losses "
                "need an ensemble method (give solver=None or ck.EnsembleRodas5(), or use "
                "engine='vmap')."
            )
        method = default_solver(self.model, "ensemble") if self.solver is None else self.solver
        return method if slots is None else dataclasses.replace(method, slots=slots)

    def ensemble_losses(self, zs: Float[Array, "S n"], *, slots: int | None = None) -> Float[Array, " S"]:
        """`loss` at every row of `zs` from ONE batched solve ([`carkinetics.simulate_ensemble`][]).

        Differentiable (reverse mode): the gradient of `sum(ensemble_losses(zs))` with respect to `zs` is the
        per-row gradient of `loss`, as the rows are independent. `slots` overrides the method's slot count.
        """
        base = floats_to_arrays(self.model)
        models = jax.vmap(lambda z: self.space.to_model(base, jnp.clip(z, -_Z_CLIP, _Z_CLIP)))(zs)
        sol = simulate_ensemble(
            models,
            self.regimen,
            self.ts,
            solver=self.ensemble_solver(slots),
            t0=self.t0,
            rtol=self.rtol,
            atol=self.atol,
            max_steps=self.max_steps,
            throw=False,
        )
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
            what = (
                f"target {tg.observable!r}"
                if isinstance(tg, TimeCourseData)
                else f"summary {tg.target_id or type(tg.statistic).__name__}"
            )
            p = np.asarray(pred, float)
            if not np.all(np.isfinite(p)):
                out.append(f"{what}: the model predicts non-finite values")
            elif _log_scale(tg.error) and np.any(p <= 0):
                out.append(
                    f"{what}: the model predicts {float(np.min(p)):g} (<= 0) where a log-scale error model "
                    "needs positive values (does any dose reach this observable?)"
                )
            elif not np.isfinite(term):
                out.append(f"{what}: the likelihood is not finite")
        return out
