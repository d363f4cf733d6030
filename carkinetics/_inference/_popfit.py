"""`fit_population`: FOCEi or SAEM estimation of a [`carkinetics.PopulationProblem`][], and its result.

Both methods report the same things: estimates on the natural scale, the objective function value with its constant
stated, standard errors from the covariance step, empirical Bayes estimates (EBEs), shrinkage, and convergence
diagnostics. A fit that did not converge, or in which subjects failed, says so in `converged`, `message` and
`failed_subjects`; nothing is dropped silently.

**OFV conventions.** `ofv` is `-2 log L` *without* the constant `n log(2 pi)` (`n` = number of non-censored
observations), the convention of NONMEM and of nlmixr2's `OBJF`; `minus2ll` includes it, so `log_likelihood =
-minus2ll / 2` (nlmixr2's `Log-likelihood`, R's `logLik`). For a log-normal error model the likelihood is the
density of the observed `y`, Jacobian included.
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .._analysis._checkpoint import Checkpoint, IterationStore, fingerprint, package_version
from .._analysis._interrupt import stop_on_signals
from ._focei import covariance_step, estimate_eta, focei
from ._population_model import LOG_2PI, PopulationProblem

METHODS = ("focei", "saem")


class PopulationFit(eqx.Module):
    """The result of [`carkinetics.fit_population`][].

    **Fields:**

    - `method`: `"focei"` or `"saem"`.
    - `theta`: typical values `{parameter: value}` in the model's units; `beta`: covariate exponents
      `{"cl~WT": value}`; `omega`: `(q, q)` covariance of the random effects (on the unconstrained scale: the
      variances of log-normal IIV), ordered as `random`; `sigma`: residual error parameters `{name: value}`.
    - `ofv`: `-2 log L` without `n log(2 pi)` (NONMEM / nlmixr2 `OBJF`); `minus2ll` with it; `n_constant` the `n`
      used. For SAEM both are the FOCEi approximation at the SAEM estimates (as nlmixr2 reports); `ofv_is` is the
      importance-sampling estimate (`nan` for FOCEi).
    - `psi`: the estimates as the unconstrained vector of the problem; `covariance`: its covariance matrix
      (`2 R^-1`, NaN when the covariance step failed); `labels`: names of the entries of `psi`.
    - `se`: standard errors `{"theta": {...}, "theta_unconstrained": {...}, "beta": {...}, "omega": {...}, "sigma":
      {...}}` (natural scale by the delta method; `theta_unconstrained` on the log scale, as nlmixr2 prints for
      `tka`); `omega` keys are `"ka"` for variances and `"ka,cl"` for covariances.
    - `eta`: `(N, q)` EBEs (modes of the conditional distributions at the estimates); `individual`: `{parameter:
      (N,) values}` of every subject.
    - `shrinkage`: `{parameter: eta shrinkage}` (`1 - sd(eta) / omega`, as a fraction) and `"epsilon"`.
    - `converged`: True only if the optimiser met its criterion, every EBE converged and no subject failed;
      `message` explains; `failed_subjects`: IDs whose solves or EBEs failed.
    - `iterations`, `ofv_history`, `times` (`{"estimation", "covariance"}`, seconds), `n_subjects`,
      `n_observations`, `problem`.
    """

    method: str = eqx.field(static=True)
    theta: dict[str, float]
    beta: dict[str, float]
    omega: np.ndarray
    sigma: dict[str, float]
    ofv: float
    minus2ll: float
    n_constant: int
    ofv_is: float
    psi: np.ndarray
    covariance: np.ndarray
    labels: tuple[str, ...] = eqx.field(static=True)
    se: dict[str, dict[str, float]]
    eta: np.ndarray
    individual: dict[str, np.ndarray]
    shrinkage: dict[str, float]
    converged: bool
    message: str
    failed_subjects: tuple[str, ...]
    iterations: int
    ofv_history: tuple[float, ...]
    times: dict[str, float]
    n_subjects: int
    n_observations: int
    problem: PopulationProblem
    extra: dict[str, Any]

    @property
    def random(self) -> tuple[str, ...]:
        return self.problem.random

    @property
    def log_likelihood(self) -> float:
        return -0.5 * self.minus2ll

    def omega_variances(self) -> dict[str, float]:
        """The variances of the random effects `{parameter: omega^2}`."""
        return {n: float(self.omega[i, i]) for i, n in enumerate(self.random)}

    def cv_percent(self) -> dict[str, float]:
        """Between-subject variability as a CV % of the log-normal distribution, `100 sqrt(exp(omega^2) - 1)` (the
        "BSV(CV%)" column of nlmixr2)."""
        return {n: 100.0 * math.sqrt(math.expm1(v)) for n, v in self.omega_variances().items()}

    def summary(self) -> str:
        """A text table of the estimates, standard errors, relative standard errors and shrinkage."""
        lines = [
            f"{self.method.upper()} fit: {self.n_subjects} subjects, {self.n_observations} observations; "
            f"OFV {self.ofv:.4f} (without n log 2pi, n = {self.n_constant}), -2LL {self.minus2ll:.4f}; "
            f"{'converged' if self.converged else 'NOT CONVERGED'}: {self.message}"
        ]
        lines.append(f"{'parameter':<22}{'estimate':>14}{'SE':>12}{'RSE%':>8}")
        for group in ("theta", "beta", "omega", "sigma"):
            values = {
                "theta": self.theta,
                "beta": self.beta,
                "sigma": self.sigma,
                "omega": _omega_entries(self.omega, self.random, self.problem.blocks),
            }[group]
            for k, v in values.items():
                se = self.se.get(group, {}).get(k, float("nan"))
                rse = 100 * se / abs(v) if v else float("nan")
                lines.append(f"{group + ' ' + k:<22}{v:>14.6g}{se:>12.4g}{rse:>8.1f}")
        for k, v in self.shrinkage.items():
            lines.append(f"shrinkage {k:<12}{100 * v:>13.1f}%")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary (the `estimates.json` of the command line)."""
        return {
            "method": self.method,
            "theta": {k: float(v) for k, v in self.theta.items()},
            "beta": {k: float(v) for k, v in self.beta.items()},
            "omega": self.omega_variances(),
            "omega_matrix": np.asarray(self.omega).tolist(),
            "random": list(self.random),
            "sigma": {k: float(v) for k, v in self.sigma.items()},
            "ofv": float(self.ofv),
            "ofv_constant": f"ofv = -2 log L - n log(2 pi), n = {self.n_constant} (NONMEM/nlmixr2 OBJF); "
            "minus2ll includes it",
            "minus2ll": float(self.minus2ll),
            "log_likelihood": float(self.log_likelihood),
            "ofv_importance_sampling": None if not np.isfinite(self.ofv_is) else float(self.ofv_is),
            "se": self.se,
            "shrinkage": {k: float(v) for k, v in self.shrinkage.items()},
            "converged": bool(self.converged),
            "message": self.message,
            "failed_subjects": list(self.failed_subjects),
            "iterations": int(self.iterations),
            "n_subjects": int(self.n_subjects),
            "n_observations": int(self.n_observations),
            "times_s": {k: float(v) for k, v in self.times.items()},
        }


def _omega_entries(omega: np.ndarray, random: tuple[str, ...], blocks) -> dict[str, float]:
    out = {}
    for g in blocks:
        for a in range(len(g)):
            for b in range(a + 1):
                i, j = g[a], g[b]
                out[random[i] if i == j else f"{random[i]},{random[j]}"] = float(omega[i, j])
    return out


def _reported(problem: PopulationProblem, psi) -> jax.Array:
    """The reported quantities as one vector: theta (natural), beta, omega entries, sigma."""
    p = problem.unpack(psi)
    om = [p.omega[g[a], g[b]] for g in problem.blocks for a in range(len(g)) for b in range(a + 1)]
    return jnp.concatenate([problem.theta_values(p.theta), p.beta, jnp.stack(om) if om else jnp.zeros(0), p.sigma])


def _standard_errors(problem: PopulationProblem, psi, cov: np.ndarray) -> dict[str, dict[str, float]]:
    jac = np.asarray(jax.jacfwd(lambda z: _reported(problem, z))(jnp.asarray(psi)), float)
    var = np.einsum("ij,jk,ik->i", jac, cov, jac)
    se = np.sqrt(np.where(var >= 0, var, np.nan))
    d, e = len(problem.names), len(problem.effects)
    om_keys = list(_omega_entries(np.zeros((len(problem.random),) * 2), problem.random, problem.blocks))
    n_om = len(om_keys)
    se_z = np.sqrt(np.clip(np.diag(cov)[:d], 0, None))
    return {
        "theta": {n: float(se[k]) for k, n in enumerate(problem.names)},
        "theta_unconstrained": {n: float(se_z[k]) for k, n in enumerate(problem.names)},
        "beta": {f"{x.parameter}~{x.covariate}": float(se[d + k]) for k, x in enumerate(problem.effects)},
        "omega": {k: float(se[d + e + i]) for i, k in enumerate(om_keys)},
        "sigma": {n: float(se[d + e + n_om + i]) for i, n in enumerate(problem.sigma_names)},
    }


@eqx.filter_jit
def _individual(problem: PopulationProblem, psi, eta):
    phi = problem.phi(problem.unpack(psi), eta)
    return jax.vmap(problem.theta_values)(phi)


def build_result(
    problem: PopulationProblem,
    method: str,
    psi,
    state,
    *,
    converged: bool,
    message: str,
    iterations: int,
    history: list[float],
    times: dict[str, float],
    covariance: bool | str,
    ofv_is: float = float("nan"),
    extra: dict[str, Any] | None = None,
    progress: Callable[[str], None] | None = None,
    given_covariance: tuple[np.ndarray, str] | None = None,
) -> PopulationFit:
    """Assemble a [`carkinetics.PopulationFit`][] at `psi` with EBEs `state` (and run the covariance step)."""
    psi = jnp.asarray(psi)
    p = problem.unpack(psi)
    data = problem.data
    n_const = int(np.asarray(data.mask & ~data.censored).sum())
    minus2ll = float(jnp.sum(state.cond.ofv))
    ofv = minus2ll - n_const * LOG_2PI
    failed = [data.ids[i] for i in np.flatnonzero(~np.asarray(state.cond.ok) | ~state.converged)]
    if failed:
        converged = False
        message += f"; subjects {failed} failed (solver or EBE)"
    npsi = psi.shape[0]
    cov = np.full((npsi, npsi), np.nan)
    extra = dict(extra or {})
    t0 = time.perf_counter()
    if given_covariance is not None:
        cov, cov_msg = given_covariance
        message += f"; {cov_msg}"
    elif covariance and np.isfinite(minus2ll):
        if progress is not None:
            progress(f"{method}: covariance step")
        cov, r, s, cov_msg = covariance_step(
            problem, psi, state.eta, method="expansion" if covariance is True else str(covariance)
        )
        message += f"; {cov_msg}"
        if np.all(np.isfinite(cov)):
            r_inv = np.linalg.inv(r)
            extra["covariance_sandwich"] = r_inv @ s @ r_inv
            extra["se_sandwich"] = _standard_errors(problem, psi, extra["covariance_sandwich"])
    times = dict(times, covariance=times.get("covariance", 0.0) + time.perf_counter() - t0)
    se = _standard_errors(problem, psi, cov)
    eta = np.asarray(state.eta, float)
    values = np.asarray(_individual(problem, psi, state.eta), float)
    omega = np.asarray(p.omega, float)
    shrink = {}
    for k, n in enumerate(problem.random):
        shrink[n] = float(1.0 - np.std(eta[:, k], ddof=1) / math.sqrt(omega[k, k])) if eta.shape[0] > 1 else math.nan
    # epsilon shrinkage: 1 - sd(IWRES) over measured observations
    from ._popdiag import _residual_arrays

    iwres = _residual_arrays(problem, psi, state.eta)["IWRES"]
    sel = np.asarray(data.mask & ~data.censored)
    shrink["epsilon"] = float(1.0 - np.std(np.asarray(iwres)[sel], ddof=1)) if sel.sum() > 1 else math.nan
    theta = dict(zip(problem.names, np.asarray(problem.theta_values(p.theta), float).tolist()))
    return PopulationFit(
        method=method,
        theta=theta,
        beta={f"{e.parameter}~{e.covariate}": float(b) for e, b in zip(problem.effects, np.asarray(p.beta))},
        omega=omega,
        sigma=dict(zip(problem.sigma_names, np.asarray(p.sigma, float).tolist())),
        ofv=ofv,
        minus2ll=minus2ll,
        n_constant=n_const,
        ofv_is=float(ofv_is),
        psi=np.asarray(psi, float),
        covariance=cov,
        labels=problem.labels,
        se=se,
        eta=eta,
        individual={n: values[:, k] for k, n in enumerate(problem.names)},
        shrinkage=shrink,
        converged=bool(converged),
        message=message,
        failed_subjects=tuple(failed),
        iterations=int(iterations),
        ofv_history=tuple(float(h) for h in history),
        times=times,
        n_subjects=data.n_subjects,
        n_observations=data.n_observations,
        problem=problem,
        extra=extra,
    )


def _printer(progress: bool | Callable[[str], None]) -> Callable[[str], None] | None:
    if callable(progress):
        return progress
    if progress:
        return lambda line: print(line, file=sys.stderr, flush=True)
    return None


#: What each manifest entry of a population-fit checkpoint stands for (named when it belongs to another fit).
POPULATION_MEANING = {
    "method": "the estimation method",
    "model_sha256": "the model (its parameter values and structure)",
    "data_sha256": "the data set",
    "problem_sha256": "the population model (random effects, initial values, error model, covariates, blocks)",
    "settings": "the estimation settings",
    "key_sha256": "the random key (--seed)",
    "version": "the carkinetics version",
}


def population_manifest(problem: PopulationProblem, method: str, settings: dict[str, Any], key: Any) -> dict:
    """The manifest of a population-fit checkpoint: one entry per ingredient of the fit, so that a checkpoint of
    another fit is refused with a message naming what differs."""
    key_data = None if key is None else np.asarray(jax.random.key_data(key))
    return {
        "format": 1,
        "kind": "population fit",
        "method": method,
        "model_sha256": fingerprint(problem.model),
        "data_sha256": fingerprint(problem.data),
        "problem_sha256": fingerprint(problem),
        "settings": settings,
        "key_sha256": fingerprint(key_data),
        "version": package_version(),
    }


@contextlib.contextmanager
def iteration_store(
    checkpoint: str | os.PathLike | None, manifest: dict, total: int, label: str, every: int = 1
) -> Iterator[IterationStore]:
    """An [`IterationStore`][] over the checkpoint directory `checkpoint` (or none), with SIGINT/SIGTERM turned
    into a clean stop between iterations for the duration of the block."""
    ckpt = None if checkpoint is None else Checkpoint(checkpoint, manifest, POPULATION_MEANING)
    with stop_on_signals(label, unit="iteration") as stop:
        yield IterationStore(ckpt, stop, total, every)


def fit_population(
    problem: PopulationProblem,
    method: str = "focei",
    *,
    key: Any = None,
    max_iter: int | None = None,
    tol: float = 1e-4,
    covariance: bool | str = True,
    progress: bool | Callable[[str], None] = False,
    saem_iterations: tuple[int, int] = (250, 150),
    chains: int | None = None,
    importance_samples: int = 300,
    checkpoint: str | os.PathLike | None = None,
) -> PopulationFit:
    """Estimate the population parameters of `problem` by FOCEi or SAEM.

    **Arguments:**

    - `problem`: a [`carkinetics.PopulationProblem`][] (its `psi0` is the starting point).
    - `method`: `"focei"` (first-order conditional estimation with interaction: batched EBEs, trust-region outer
      optimisation, see `carkinetics/_inference/_focei.py`) or `"saem"` (stochastic approximation EM with batched
      Metropolis-Hastings, Kuhn & Lavielle 2005; see `_saem.py`).
    - `key`: a `jax.random` key, required for `"saem"` (the MCMC and the importance sampling).
    - `max_iter`: outer iterations for FOCEi (default 100).
    - `tol`: FOCEi convergence tolerance on the Newton decrement of the OFV.
    - `covariance`: the covariance step (standard errors). FOCEi: `True` or `"expansion"` (the Hessian of the OFV
      on the second-order expansion of the predictions at the estimates: no extra solve), `"exact"` (central
      differences of exact gradients, `2 p` re-solved EBE problems and expansions). SAEM: `True` or `"sa"`
      (Louis' observed information from Markov chains at the estimates, as Monolix; no derivative of the model),
      or the FOCEi options (a linearisation at the SAEM estimates, like nlmixr2's `linFim`). `False`: none.
    - `progress`: `True` prints one line per iteration on stderr (or give a callable taking a line).
    - `saem_iterations`: `(K1, K2)`, the SAEM iterations with step size 1 (exploration) and `1/k` (convergence).
    - `chains`: Markov chains per subject for SAEM (default: enough for 50 chains in all).
    - `importance_samples`: samples per subject for the importance-sampling OFV of SAEM (0 to skip).
    - `checkpoint`: a directory where the state of the estimation is kept (atomically) after every FOCEi outer
      iteration, or every 10 SAEM iterations, next to a `manifest.json` keyed on the model, the data, the
      population model, the settings, the key and the package version. Rerunning the same fit resumes from the
      last state kept and ends where the uninterrupted fit ends; a directory of another fit is refused with a
      `ValueError` naming what differs, a corrupt state file with one naming the file to delete. SIGINT/SIGTERM
      stop the estimation after the iteration in progress with [`carkinetics.Interrupted`][] (the state is kept
      first); a second SIGINT aborts at once. The covariance step and the importance sampling, which follow the
      estimation, are recomputed.

    **Returns:** a [`carkinetics.PopulationFit`][].

    **Raises:** `ValueError` for an unknown method or a missing key.

    **Example:**

    ```python
    import carkinetics as ck
    from carkinetics.models import OneCompartmentOralPK
    model = OneCompartmentOralPK()
    data = ck.read_population_data(ck.example_data("theophylline"), model, time_unit="h")
    problem = ck.PopulationProblem(model, data, {"ka": 0.6, "cl": 0.3, "v": 0.1}, error=ck.AdditiveError(0.7))
    fit = ck.fit_population(problem, "focei")
    fit.converged, round(fit.ofv, 1)      # (True, 116.8), the nlmixr2 FOCEi OBJF of this model and data
    ```
    """
    if covariance not in (True, False, "expansion", "exact", "sa"):
        raise ValueError(f"`covariance` must be True, 'expansion', 'exact', 'sa' or False, got {covariance!r}.")
    if covariance == "sa" and method != "saem":
        raise ValueError("`covariance='sa'` (stochastic approximation of the information) needs method='saem'.")
    if method not in METHODS:
        raise ValueError(f"`method` must be one of {list(METHODS)}, got {method!r}.")
    if not isinstance(problem, PopulationProblem):
        raise ValueError(f"`problem` must be a ck.PopulationProblem, got {type(problem).__name__}.")
    say = _printer(progress)
    t0 = time.perf_counter()
    if method == "focei":
        n_iter = 100 if max_iter is None else int(max_iter)
        manifest = population_manifest(problem, "focei", {"max_iter": n_iter, "tol": float(tol)}, None)
        with iteration_store(checkpoint, manifest, n_iter, "fit-population") as store:
            res = focei(problem, max_iter=n_iter, tol=tol, progress=say, store=store)
        times = {"estimation": time.perf_counter() - t0}
        return build_result(
            problem,
            "focei",
            res.psi,
            res.state,
            converged=res.converged,
            message=res.message,
            iterations=res.iterations,
            history=res.ofv_history,
            times=times,
            covariance=covariance,
            extra={"gradient": res.gradient, "n_solves": res.n_solves},
            progress=say,
        )
    if key is None:
        raise ValueError("SAEM needs a `key` (jax.random.key(...)) for its Markov chains.")
    from ._saem import fisher_information, importance_sampling_ofv, saem

    settings = {"saem_iterations": [int(x) for x in saem_iterations], "chains": chains}
    manifest = population_manifest(problem, "saem", settings, key)
    total = sum(int(x) for x in saem_iterations)
    with iteration_store(checkpoint, manifest, total, "fit-population", every=10) as store:
        res = saem(problem, key, iterations=saem_iterations, chains=chains, progress=say, store=store)
    state = estimate_eta(problem, res.psi, res.eta_mean)
    given = None
    if covariance in (True, "sa") and res.chains is not None:
        if say is not None:
            say("saem: covariance (Louis' information from Markov chains at the estimates)")
        t_cov = time.perf_counter()
        given = fisher_information(problem, res.psi, res, jax.random.fold_in(key, 2))
        t_cov = time.perf_counter() - t_cov
    ofv_is = float("nan")
    if importance_samples > 0:
        ofv_is = importance_sampling_ofv(problem, res.psi, state, jax.random.fold_in(key, 1), importance_samples)
        n_const = int(np.asarray(problem.data.mask & ~problem.data.censored).sum())
        ofv_is -= n_const * LOG_2PI
    times = {"estimation": time.perf_counter() - t0}
    if given is not None:
        times["estimation"] -= t_cov
        times["covariance"] = t_cov
    result = build_result(
        problem,
        "saem",
        res.psi,
        state,
        converged=res.converged,
        message=res.message,
        iterations=res.iterations,
        history=res.ofv_history,
        times=times,
        covariance=False if given is not None else covariance,
        ofv_is=ofv_is,
        extra={"trajectory": res.trajectory, "acceptance": res.acceptance},
        progress=say,
        given_covariance=given,
    )
    return result
