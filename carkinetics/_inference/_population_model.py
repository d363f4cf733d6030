"""The population (nonlinear mixed-effects) model: typical values, covariate effects, random effects, residual error.

For subject `i` with baseline covariates `c_i`, the estimated parameters of the kinetic model take the values

    phi_i = theta + sum_e beta_e * log(c_ie / ref_e) * [parameter of effect e] + E eta_i,    eta_i ~ N(0, Omega)

on the unconstrained scale of [`carkinetics.ParameterSpace`][] (`log` for a positive parameter, so a random effect
is log-normal inter-individual variability and a covariate effect a power model `(c / ref) ** beta`; a scaled
`logit` for a parameter bounded on both sides). `E` places the random effects of the parameters in `random`;
`Omega` is full, diagonal or block-diagonal. Observation `j` of subject `i` is `y_ij ~ N(h(f_ij), V(f_ij))`
on the scale `h` of the residual error model (identity, or `log` for [`carkinetics.LogAdditiveError`][]), with
`f_ij` the model's observable at the observation time; an observation below the limit of quantification
contributes `P(Y <= LLOQ)` instead (Beal's M3 method).

Every estimation method works on one unconstrained vector `psi = [theta, beta, omega, sigma]`: `theta` the typical
values on the unconstrained scale, `beta` the covariate exponents, `omega` the Cholesky factor of each block of
`Omega` (log of its diagonal, then the entries below it, row by row), `sigma` the log of the residual error
parameters. Predictions of all subjects come from one batched solve
([`carkinetics.simulate_ensemble`][]), with their first derivatives in forward mode.
"""

from __future__ import annotations

import abc
import math
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import log_ndtr

from .._analysis._population import CovariateEffect
from .._core._custom_types import Array, Float
from .._core._model import AbstractKineticModel
from .._core._parameters import ParameterSpace, get_parameter, parameters
from .._engine._batch import batch_models
from .._engine._simulate import default_solver, simulate_ensemble
from .._ensemble import EnsembleTsit5
from ._popdata import PopulationData

LOG_2PI = math.log(2.0 * math.pi)
_TINY = 1e-300


# --------------------------------------------------------------------------------------------------------------
# Residual error models


def _check_positive(cls: str, name: str, value: Any) -> None:
    if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
        raise ValueError(f"`{name}` of {cls} must be a positive finite number (the initial estimate), got {value!r}.")


class AbstractResidualError(eqx.Module):
    """A residual error model of a population fit: `y ~ N(h(f), V(f))` with parameters estimated on the log scale.

    Concrete models: [`carkinetics.AdditiveError`][], [`carkinetics.ProportionalError`][],
    [`carkinetics.CombinedError`][], [`carkinetics.LogAdditiveError`][]. Their fields are initial estimates.
    """

    parameter_names: ClassVar[tuple[str, ...]]
    log_scale: ClassVar[bool] = False

    @abc.abstractmethod
    def initial(self) -> tuple[float, ...]:
        """Initial estimates of the parameters, in `parameter_names` order."""

    @abc.abstractmethod
    def variance(self, f: Array, s: Array) -> Array:
        """Residual variance on the transformed scale at prediction `f`, for parameter values `s` (natural)."""

    def transform(self, x: Array) -> Array:
        return jnp.log(jnp.maximum(x, _TINY)) if self.log_scale else x


class AdditiveError(AbstractResidualError):
    """Additive error `y = f + sd * eps` (unit of the data); nlmixr2's `add(sd)`.

    **Example:** `ck.AdditiveError(0.7)` starts the estimation at sd = 0.7 mg/L.
    """

    sd: float
    parameter_names: ClassVar[tuple[str, ...]] = ("sd",)

    def __check_init__(self):
        _check_positive("AdditiveError", "sd", self.sd)

    def initial(self):
        return (self.sd,)

    def variance(self, f, s):
        return jnp.broadcast_to(s[0] ** 2, jnp.shape(f))


class ProportionalError(AbstractResidualError):
    """Proportional error `y = f (1 + cv * eps)` (`cv` dimensionless); nlmixr2's `prop(cv)`.

    **Example:** `ck.ProportionalError(0.1)` starts at 10 %.
    """

    cv: float
    parameter_names: ClassVar[tuple[str, ...]] = ("cv",)

    def __check_init__(self):
        _check_positive("ProportionalError", "cv", self.cv)

    def initial(self):
        return (self.cv,)

    def variance(self, f, s):
        return (s[0] * f) ** 2 + _TINY


class CombinedError(AbstractResidualError):
    """Combined error with variance `sd**2 + (cv * f)**2` (NONMEM's usual form; nlmixr2's `add(sd) + prop(cv)`
    with `combined2`).

    **Example:** `ck.CombinedError(sd=0.1, cv=0.1)`.
    """

    sd: float
    cv: float
    parameter_names: ClassVar[tuple[str, ...]] = ("sd", "cv")

    def __check_init__(self):
        _check_positive("CombinedError", "sd", self.sd)
        _check_positive("CombinedError", "cv", self.cv)

    def initial(self):
        return (self.sd, self.cv)

    def variance(self, f, s):
        return s[0] ** 2 + (s[1] * f) ** 2


class LogAdditiveError(AbstractResidualError):
    """Log-normal error: `log y = log f + sd * eps` (NONMEM's exponential error on log-transformed data, nlmixr2's
    `lnorm(sd)`). The likelihood is the density of `y` itself (it includes the Jacobian `1/y`).

    **Example:** `ck.LogAdditiveError(0.3)`.
    """

    sd: float
    parameter_names: ClassVar[tuple[str, ...]] = ("sd",)
    log_scale: ClassVar[bool] = True

    def __check_init__(self):
        _check_positive("LogAdditiveError", "sd", self.sd)

    def initial(self):
        return (self.sd,)

    def variance(self, f, s):
        return jnp.broadcast_to(s[0] ** 2, jnp.shape(f))


def _elementwise_derivative(fn, x):
    return jax.jvp(fn, (x,), (jnp.ones_like(x),))


def observation_terms(
    error: AbstractResidualError, s: Array, y: Array, f: Array, censored: Array, limit: Array, *, censoring: bool = True
) -> tuple[Array, Array, Array, Array]:
    """Per observation: `ell = -2 log p(y | f)` (with `log 2 pi`), `d ell / df`, `d2 ell / df2` and the information
    weight `w`.

    `w` is the expected curvature `E[d2 ell / df2] / 2`: `h'(f)^2 / V + (dlogV/df)^2 / 2` for a measured value (the
    FOCEi interaction term), `lambda(z) (lambda(z) + z) (dz/df)^2` for a censored one (M3, `z` the standardised
    limit, `lambda` the inverse Mills ratio). With `censoring=False` the M3 branch is left out (faster to compile).
    All arrays have the shape of `f`.
    """
    y_safe = jnp.where(censored, limit, y) if censoring else y
    hy = error.transform(y_safe)
    jac = 2.0 * jnp.log(jnp.maximum(y_safe, _TINY)) if error.log_scale else jnp.zeros_like(y)

    def ell_measured(x):
        return LOG_2PI + jnp.log(error.variance(x, s)) + (hy - error.transform(x)) ** 2 / error.variance(x, s) + jac

    hl = error.transform(limit)

    def ell_censored(x):
        return -2.0 * log_ndtr((hl - error.transform(x)) / jnp.sqrt(error.variance(x, s)))

    def with_derivatives(fn):
        (value, d1), (_, d2) = jax.jvp(lambda x: _elementwise_derivative(fn, x), (f,), (jnp.ones_like(f),))
        return value, d1, d2

    _, dh = _elementwise_derivative(error.transform, f)
    var, dvar = _elementwise_derivative(lambda x: error.variance(x, s), f)
    dlogv = dvar / var
    ell, dell, d2ell = with_derivatives(ell_measured)
    w = dh**2 / var + 0.5 * dlogv**2
    if not censoring:
        return ell, dell, d2ell, w
    ell_c, dell_c, d2ell_c = with_derivatives(ell_censored)
    sd = jnp.sqrt(var)
    z = (hl - error.transform(f)) / sd
    lam = jnp.exp(-0.5 * z**2 - 0.5 * LOG_2PI - log_ndtr(z))
    dz = -dh / sd - 0.5 * z * dlogv
    w_c = lam * (lam + z) * dz**2
    pick = lambda a, b: jnp.where(censored, a, b)
    return pick(ell_c, ell), pick(dell_c, dell), pick(d2ell_c, d2ell), pick(w_c, w)


# --------------------------------------------------------------------------------------------------------------
# Parameters


class PopulationParameters(eqx.Module):
    """Population parameters in their working form.

    **Fields:** `theta` `(d,)` typical values on the unconstrained scale (ordered as `problem.names`), `beta` `(e,)`
    covariate exponents, `omega` `(q, q)` covariance of the random effects (ordered as `problem.random`), `sigma`
    `(s,)` residual error parameters (natural scale, ordered as `problem.sigma_names`).
    """

    theta: Float[Array, " d"]
    beta: Float[Array, " e"]
    omega: Float[Array, "q q"]
    sigma: Float[Array, " s"]


def _block_sizes(blocks: tuple[tuple[int, ...], ...]) -> list[int]:
    return [len(b) for b in blocks]


class PopulationProblem(eqx.Module):
    """A nonlinear mixed-effects model of a kinetic model and a population data set.

    **Arguments:**

    - `model`: the kinetic model; its current values of the estimated parameters are the initial typical values,
      its other parameters stay fixed.
    - `data`: a [`carkinetics.PopulationData`][] (from [`carkinetics.read_population_data`][]).
    - `random`: the parameters with log-normal (unconstrained-scale normal) random effects, as a mapping `{name:
      initial variance}` (e.g. `{"ka": 0.6, "cl": 0.3, "v": 0.1}`, nlmixr2's `eta.ka ~ 0.6`) or a sequence of names
      (initial variances 0.1, or `omega`).
    - `error`: the residual error model ([`carkinetics.AdditiveError`][], [`carkinetics.ProportionalError`][],
      [`carkinetics.CombinedError`][], [`carkinetics.LogAdditiveError`][]), or a mapping `{observable: error}` when
      the data measure several observables.
    - `estimate`: the parameters with estimated typical values (default: those in `random` and in `covariates`);
      one in `estimate` but not in `random` is a fixed effect without variability.
    - `omega`: an initial covariance matrix of the random effects (ordered as `random`), instead of the variances.
    - `blocks`: the structure of `Omega`: `"diagonal"` (default), `"full"`, or a sequence of groups of names
      (a block-diagonal `$OMEGA BLOCK`; every name of `random` in exactly one group).
    - `covariates`: [`carkinetics.CovariateEffect`][] power models `(c / reference) ** exponent` on typical values,
      with the exponent estimated (its given value is the initial estimate); the covariate is a column of the data.
    - `solver`: an ensemble method (default: the model class's, with up to 8 saves per step) or a diffrax solver
      (`jax.vmap` engine, for cross-checks).
    - `rtol`, `atol`, `max_steps`: integration settings (default `1e-8` in float64, `1e-5` in float32: derivatives
      are taken of the solution, so the tolerances are tight; population fits are meant for float64).

    **Raises:** `ValueError` for unknown parameters or covariates, a parameter with random effects that is not
    estimated, a malformed `omega` or `blocks`, an error model for an observable the data do not measure.

    **Example:**

    ```python
    import carkinetics as ck
    from carkinetics.models import OneCompartmentOralPK
    model = OneCompartmentOralPK()
    data = ck.read_population_data(ck.example_data("theophylline"), model, time_unit="h")
    problem = ck.PopulationProblem(model, data, {"ka": 0.6, "cl": 0.3, "v": 0.1}, error=ck.AdditiveError(0.7))
    problem.psi0.shape      # (7,): 3 typical values, 3 variances, 1 residual sd
    ```
    """

    model: AbstractKineticModel
    data: PopulationData
    psi0: Float[Array, " p"]
    design: Float[Array, "N e"]
    names: tuple[str, ...] = eqx.field(static=True)
    random: tuple[str, ...] = eqx.field(static=True)
    blocks: tuple[tuple[int, ...], ...] = eqx.field(static=True)
    errors: tuple[AbstractResidualError, ...] = eqx.field(static=True)
    effects: tuple[CovariateEffect, ...] = eqx.field(static=True)
    space: ParameterSpace = eqx.field(static=True)
    solver: Any = eqx.field(static=True)
    rtol: float = eqx.field(static=True)
    atol: float = eqx.field(static=True)
    max_steps: int = eqx.field(static=True)

    def __init__(
        self,
        model: AbstractKineticModel,
        data: PopulationData,
        random: Mapping[str, float] | Sequence[str],
        *,
        error: AbstractResidualError | Mapping[str, AbstractResidualError],
        estimate: Sequence[str] | None = None,
        omega: Any = None,
        blocks: str | Sequence[Sequence[str]] = "diagonal",
        covariates: Sequence[CovariateEffect] = (),
        solver: Any = None,
        rtol: float | None = None,
        atol: float | None = None,
        max_steps: int = 100_000,
    ):
        if not isinstance(model, AbstractKineticModel):
            raise ValueError(f"`model` must be a carkinetics model instance, got {model!r}.")
        if not isinstance(data, PopulationData):
            raise ValueError(f"`data` must be a PopulationData (from ck.read_population_data), got {type(data)!r}.")
        if isinstance(random, str):
            raise ValueError(f"`random` must be a mapping {{name: variance}} or a sequence of names, got {random!r}.")
        rand = tuple(random)
        if len(set(rand)) != len(rand):
            raise ValueError(f"`random` names a parameter twice: {list(rand)}.")
        effects = tuple(CovariateEffect(*e) for e in covariates)
        est = tuple(dict.fromkeys(list(rand) + [e.parameter for e in effects])) if estimate is None else tuple(estimate)
        if not est:
            raise ValueError("Nothing to estimate: give `random` and/or `estimate`.")
        allp = parameters(model)
        for n in est:
            if n not in allp:
                raise ValueError(f"Unknown parameter {n!r}; parameters of {type(model).__name__} are {sorted(allp)}.")
        missing = [n for n in rand if n not in est]
        if missing:
            raise ValueError(f"Parameters {missing} have random effects but are not in `estimate` {list(est)}.")
        for e in effects:
            if e.parameter not in est:
                raise ValueError(f"The covariate effect {e!r} acts on {e.parameter!r}, which is not estimated.")
            if e.covariate not in data.covariates:
                raise ValueError(
                    f"The covariate effect {e!r} uses {e.covariate!r}, which is not a covariate of the "
                    f"data (read with covariates=[...]; available: {sorted(data.covariates)})."
                )
            if not e.reference > 0 or np.any(np.asarray(data.covariates[e.covariate]) <= 0):
                raise ValueError(f"The power model {e!r} needs a positive reference and positive covariate values.")
        self.space = ParameterSpace(model, est)
        theta0 = np.asarray(self.space.to_vector(model), dtype=float)
        q = len(rand)
        if omega is None:
            var = np.array([float(random[n]) for n in rand]) if isinstance(random, Mapping) else np.full(q, 0.1)
            if np.any(~np.isfinite(var)) or np.any(var <= 0):
                raise ValueError(f"Initial variances in `random` must be positive and finite, got {random!r}.")
            omega0 = np.diag(var)
        else:
            omega0 = np.asarray(omega, dtype=float)
            if omega0.shape != (q, q) or not np.allclose(omega0, omega0.T):
                raise ValueError(
                    f"`omega` must be a symmetric ({q}, {q}) matrix ordered as `random`, got shape {omega0.shape}."
                )
        if blocks == "diagonal":
            blk = tuple((i,) for i in range(q))
        elif blocks == "full":
            blk = (tuple(range(q)),) if q else ()
        elif isinstance(blocks, str):
            raise ValueError(f"`blocks` must be 'diagonal', 'full' or a sequence of groups of names, got {blocks!r}.")
        else:
            blk = tuple(tuple(rand.index(n) if n in rand else -1 for n in g) for g in blocks)
            flat = sorted(i for g in blk for i in g)
            if flat != list(range(q)):
                raise ValueError(
                    f"`blocks` {[list(g) for g in blocks]} must put every parameter of `random` "
                    f"{list(rand)} in exactly one group."
                )
        mask = np.zeros((q, q), bool)
        for g in blk:
            mask[np.ix_(g, g)] = True
        omega0 = np.where(mask, omega0, 0.0)
        if q and np.linalg.eigvalsh(omega0).min() <= 0:
            raise ValueError("The initial `omega` must be positive definite.")
        names = tuple(model.observable_names())
        if isinstance(error, AbstractResidualError):
            errs = {o: error for o in data.observables}
        elif isinstance(error, Mapping):
            errs = dict(error)
            for o in errs:
                if o not in names:
                    raise ValueError(f"`error` names {o!r}, which is not an observable of the model ({list(names)}).")
            lacking = [o for o in data.observables if o not in errs]
            if lacking:
                raise ValueError(f"The data measure {lacking}, which have no error model in `error`.")
        else:
            raise ValueError(f"`error` must be a residual error model such as ck.AdditiveError(0.7), got {error!r}.")
        for e in errs.values():
            if not isinstance(e, AbstractResidualError):
                raise ValueError(
                    f"Residual error models must be ck.AdditiveError, ck.ProportionalError, "
                    f"ck.CombinedError or ck.LogAdditiveError, got {e!r}."
                )
        # one error model per observable of the model (observables the data lack get the first one; never used)
        first = next(iter(errs.values()))
        self.errors = tuple(errs.get(o, first) for o in names)
        self.model = model
        self.data = data
        sigma0 = np.concatenate([np.asarray(e.initial(), float) for e in self._used_errors()])
        beta0 = np.array([float(e.exponent) for e in effects])
        self.names = est
        self.random = rand
        self.blocks = blk
        self.effects = effects
        cov = data.covariates
        self.design = jnp.asarray(
            np.stack([np.log(np.asarray(cov[e.covariate]) / e.reference) for e in effects], axis=1)
            if effects
            else np.zeros((data.n_subjects, 0))
        )
        if solver is None:
            solver = default_solver(model)
            if isinstance(solver, EnsembleTsit5) and solver.saves_per_step is None:
                solver = EnsembleTsit5(slots=solver.slots, saves_per_step=8)
        self.solver = solver
        # derivatives are taken of the solution: tight tolerances in float64
        x64 = jax.dtypes.canonicalize_dtype(np.float64) == np.float64
        self.rtol = float(rtol if rtol is not None else (1e-8 if x64 else 1e-5))
        self.atol = float(atol if atol is not None else (1e-8 if x64 else 1e-5))
        self.max_steps = int(max_steps)
        self.psi0 = jnp.asarray(np.concatenate([theta0, beta0, self._omega_to_psi(omega0), np.log(sigma0)]))

    def observation_terms_of(
        self, sigma: Array, pred: Array, dv: Array, censored: Array, limit: Array, mask: Array, obs_index: Array
    ) -> tuple[Array, Array, Array, Array]:
        """`observation_terms` for arbitrary observation arrays of one shape (e.g. one subject's row)."""
        names = self.model.observable_names()
        out = [jnp.zeros_like(pred) for _ in range(4)]
        pos = 0
        for o in names:
            if o not in self.data.observables:
                continue
            err = self.errors[names.index(o)]
            k = len(err.parameter_names)
            terms = observation_terms(
                err, sigma[pos : pos + k], dv, pred, censored, limit, censoring=self.data.any_censored
            )
            pos += k
            sel = mask & (obs_index == names.index(o))
            out = [jnp.where(sel, t, acc) for t, acc in zip(terms, out)]
        return out[0], out[1], out[2], out[3]

    # -- layout ----------------------------------------------------------------------------------------------

    def _used_errors(self) -> list[AbstractResidualError]:
        """The error models of the observables in the data, in model-observable order (their sigmas in `psi`)."""
        names = self.model.observable_names()
        return [self.errors[names.index(o)] for o in names if o in self.data.observables]

    @property
    def sigma_names(self) -> tuple[str, ...]:
        names = self.model.observable_names()
        used = [o for o in names if o in self.data.observables]
        multi = len(used) > 1
        return tuple((f"{o}.{p}" if multi else p) for o in used for p in self.errors[names.index(o)].parameter_names)

    @property
    def sizes(self) -> tuple[int, int, int, int]:
        """Lengths of the `theta`, `beta`, `omega` and `sigma` parts of `psi`."""
        n_om = sum(m * (m + 1) // 2 for m in _block_sizes(self.blocks))
        return len(self.names), len(self.effects), n_om, len(self.sigma_names)

    @property
    def labels(self) -> tuple[str, ...]:
        """A label for each entry of `psi`."""
        out = [f"theta({n})" for n in self.names]
        out += [f"beta({e.parameter}~{e.covariate})" for e in self.effects]
        for g in self.blocks:
            out += [f"omega.logdiag({self.random[i]})" for i in g]
            out += [f"omega.lower({self.random[g[a]]},{self.random[g[b]]})" for a in range(len(g)) for b in range(a)]
        out += [f"sigma({s})" for s in self.sigma_names]
        return tuple(out)

    @property
    def random_index(self) -> tuple[int, ...]:
        """Positions of the `random` parameters in `names`."""
        return tuple(self.names.index(n) for n in self.random)

    def _omega_to_psi(self, omega: np.ndarray) -> np.ndarray:
        out = []
        for g in self.blocks:
            chol = np.linalg.cholesky(omega[np.ix_(g, g)])
            out += list(np.log(np.diag(chol)))
            out += [chol[a, b] for a in range(len(g)) for b in range(a)]
        return np.asarray(out, dtype=float)

    def unpack(self, psi: Float[Array, " p"]) -> PopulationParameters:
        """The population parameters of an unconstrained vector `psi`."""
        d, e, n_om, s = self.sizes
        if psi.shape != (d + e + n_om + s,):
            raise ValueError(f"`psi` must have shape ({d + e + n_om + s},), got {psi.shape}.")
        theta, beta = psi[:d], psi[d : d + e]
        pos = d + e
        q = len(self.random)
        chol = jnp.zeros((q, q), dtype=psi.dtype)
        for g in self.blocks:
            m = len(g)
            diag = jnp.exp(psi[pos : pos + m])
            pos += m
            idx = np.asarray(g)
            chol = chol.at[idx, idx].set(diag)
            for a in range(m):
                for b in range(a):
                    chol = chol.at[g[a], g[b]].set(psi[pos])
                    pos += 1
        sigma = jnp.exp(psi[pos:])
        return PopulationParameters(theta=theta, beta=beta, omega=chol @ chol.T, sigma=sigma)

    def pack(self, params: PopulationParameters) -> Float[Array, " p"]:
        """The unconstrained vector of `params` (host-side; the inverse of `unpack`)."""
        return jnp.asarray(
            np.concatenate(
                [
                    np.asarray(params.theta, float),
                    np.asarray(params.beta, float),
                    self._omega_to_psi(np.asarray(params.omega, float)),
                    np.log(np.asarray(params.sigma, float)),
                ]
            )
        )

    def theta_values(self, theta: Float[Array, " d"]) -> Float[Array, " d"]:
        """Typical values in natural units from unconstrained `theta`."""
        return self.space.values(self.space.to_model(self.model, theta))

    # -- individual parameters and predictions -----------------------------------------------------------------

    def typical_phi(self, params: PopulationParameters) -> Float[Array, "N d"]:
        """Each subject's typical parameters (unconstrained), covariate effects included: `(N, d)`."""
        n = self.data.n_subjects
        phi = jnp.broadcast_to(params.theta[None, :], (n, len(self.names)))
        for k, e in enumerate(self.effects):
            j = self.names.index(e.parameter)
            phi = phi.at[:, j].add(params.beta[k] * self.design[:, k])
        return phi

    def phi(self, params: PopulationParameters, eta: Float[Array, "N q"]) -> Float[Array, "N d"]:
        """Individual parameters (unconstrained) for random effects `eta` `(N, q)`."""
        return self.typical_phi(params).at[:, np.asarray(self.random_index, dtype=int)].add(eta)

    def models(self, phi: Float[Array, "N d"]) -> AbstractKineticModel:
        """The batch of individual models for unconstrained parameters `phi` `(N, d)`."""
        values = jax.vmap(self.theta_values)(phi)
        return batch_models(self.model, {n: values[:, k] for k, n in enumerate(self.names)}, check_bounds=False)

    def _solve(self, phi: Float[Array, "N d"], adjoint: Any = None):
        sol = simulate_ensemble(
            self.models(phi),
            self.data.regimen,
            self.data.ts,
            solver=self.solver,
            rtol=self.rtol,
            atol=self.atol,
            max_steps=self.max_steps,
            adjoint=adjoint,
            throw=False,
        )
        rows = jnp.arange(self.data.n_subjects)[:, None]
        pred = sol.obs_array[rows, self.data.time_index, self.data.obs_index]
        return pred, sol.ok

    def predict(self, phi: Float[Array, "N d"]) -> tuple[Float[Array, "N M"], Any]:
        """Predictions `(N, M)` at the observations and the solver status `(N,)` (one batched solve)."""
        return self._solve(phi)

    def predict_jacobian(self, phi: Float[Array, "N d"]) -> tuple[Float[Array, "N M"], Float[Array, "N M d"], Any]:
        """Predictions, their derivatives in each subject's own `phi` `(N, M, d)` (forward mode, one batched solve
        carrying `d` tangents), and the solver status."""

        def f(u):
            pred, ok = self._solve(phi + u[None, :], adjoint=diffrax.ForwardMode())
            return pred, (pred, ok)

        jac, (pred, ok) = jax.jacfwd(f, has_aux=True)(jnp.zeros(len(self.names), dtype=phi.dtype))
        return pred, jac, ok

    def observation_terms(
        self, sigma: Float[Array, " s"], pred: Float[Array, "N M"]
    ) -> tuple[Array, Array, Array, Array]:
        """`-2 log p(y | f)`, its first and second derivatives in `f` and the information weight per observation
        (0 for padding)."""
        d = self.data
        return self.observation_terms_of(sigma, pred, d.dv, d.censored, d.limit, d.mask, d.obs_index)

    def log_scale_mask(self) -> Array:
        """`(N, M)`: True for observations whose error model works on the log scale."""
        names = self.model.observable_names()
        mask = jnp.zeros(self.data.obs_index.shape, bool)
        for k in range(len(names)):
            if self.errors[k].log_scale:
                mask = mask | (self.data.obs_index == k)
        return mask

    # -- simulation --------------------------------------------------------------------------------------------

    def simulate(self, key: Any, params: PopulationParameters | None = None) -> tuple[PopulationData, Array]:
        """New observations on the data's design: random effects from `Omega`, residual errors from the error models.

        **Returns:** `(data, eta)`: the data set with simulated `DV` (no censoring; see
        [`carkinetics.PopulationData.censor_below`][]) and the random effects drawn `(N, q)`.

        **Example:** `data_sim, eta = problem.simulate(jax.random.key(0))` draws at `problem.psi0`.
        """
        params = self.unpack(self.psi0) if params is None else params
        k1, k2 = jax.random.split(key)
        n, q = self.data.n_subjects, len(self.random)
        eta = (
            jax.random.normal(k1, (n, q), dtype=params.omega.dtype) @ jnp.linalg.cholesky(params.omega).T
            if q
            else jnp.zeros((n, 0))
        )
        pred, ok = self.predict(self.phi(params, eta))
        if not bool(jnp.all(ok)):
            raise ValueError(f"Simulation failed for subjects {np.flatnonzero(~np.asarray(ok)).tolist()}.")
        y = self.observe(params, pred, k2)
        sim = self.data.with_values(y, jnp.zeros_like(self.data.censored))
        return sim, eta

    def observe(self, params: PopulationParameters, pred: Array, key: Any) -> Array:
        """Observations drawn around the predictions `pred` `(N, M)` with each observable's residual error model at
        `params.sigma` (log-normal errors around `log pred`)."""
        eps = jax.random.normal(key, pred.shape, dtype=pred.dtype)
        names = self.model.observable_names()
        y = pred
        pos = 0
        for o in names:
            if o not in self.data.observables:
                continue
            err = self.errors[names.index(o)]
            k = len(err.parameter_names)
            sd = jnp.sqrt(err.variance(pred, params.sigma[pos : pos + k]))
            pos += k
            yo = jnp.exp(jnp.log(jnp.maximum(pred, _TINY)) + sd * eps) if err.log_scale else pred + sd * eps
            y = jnp.where(self.data.obs_index == names.index(o), yo, y)
        return y

    def with_data(self, data: PopulationData) -> PopulationProblem:
        """The same model on another data set with the same covariates (e.g. simulated or censored data)."""
        if set(data.covariates) != set(self.data.covariates):
            raise ValueError(
                f"`data` has covariates {sorted(data.covariates)}, the problem {sorted(self.data.covariates)}."
            )
        design = jnp.asarray(
            np.stack([np.log(np.asarray(data.covariates[e.covariate]) / e.reference) for e in self.effects], axis=1)
            if self.effects
            else np.zeros((data.n_subjects, 0))
        )
        return eqx.tree_at(lambda p: (p.data, p.design), self, (data, design))

    def with_psi0(self, psi0: Any) -> PopulationProblem:
        """The same problem starting from another unconstrained vector (e.g. a previous fit's estimates)."""
        psi0 = jnp.asarray(psi0, dtype=self.psi0.dtype)
        if psi0.shape != self.psi0.shape:
            raise ValueError(f"`psi0` must have shape {self.psi0.shape}, got {psi0.shape}.")
        return eqx.tree_at(lambda p: p.psi0, self, psi0)

    def typical_values(self) -> dict[str, float]:
        """The model's current values of the estimated parameters (the initial typical values)."""
        return {n: float(get_parameter(self.model, n)) for n in self.names}
