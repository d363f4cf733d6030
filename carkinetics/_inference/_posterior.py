"""Bayesian population posteriors by NUTS (blackjax) through the ODE, with diagnostics by arviz.

The posterior is over every population parameter and every subject's random effects:

- typical values `theta` (unconstrained scale) ~ `N(theta_0, PRIOR_SD[tag])`: centred on the problem's initial
  typical values with the spread of each parameter's confidence tag (`R` 0.3, `R2`/`D` 0.5, `M`/`F` 1.0, `A` 1.5 on
  the log scale: a value read in a paper constrains the fit more than a recalled one, an assumption least);
- covariate exponents ~ `N(initial, 1)`;
- random-effect standard deviations `omega_k` ~ log-normal(`log omega_k,0`, 1), correlations within a block ~
  LKJ(2) on the Cholesky factor (canonical partial correlations as unconstrained coordinates);
- residual parameters ~ log-normal(`log sigma_0`, 1);
- random effects non-centred, `eta_i = L z_i` with `z_i ~ N(0, I)` (`L L' = Omega`), which avoids the funnel of
  hierarchical models with few observations per subject.

Each log-density gradient is one batched reverse-mode solve of all subjects. Chains run one after the other (each
with its own Stan-style window adaptation of step size and diagonal mass matrix), so no chain waits for another's
trajectory length. R-hat (rank-normalised, split), bulk and tail ESS come from arviz; divergent transitions are
counted per chain.
"""

from __future__ import annotations

import math
import os
import sys
import time
from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .._analysis._checkpoint import Checkpoint, fingerprint
from .._analysis._interrupt import Interrupted, stop_on_signals
from .._analysis._population import Population
from .._core._parameters import parameters
from ._popfit import POPULATION_MEANING, population_manifest
from ._population_model import PopulationParameters, PopulationProblem
from ._problem import PRIOR_SD

_LKJ_ETA = 2.0


def _corr_cholesky(y: jax.Array, m: int) -> tuple[jax.Array, jax.Array]:
    """Cholesky factor of an `m x m` correlation matrix from `m(m-1)/2` unconstrained values (canonical partial
    correlations `tanh(y)`), and the log-Jacobian of the map."""
    z = jnp.tanh(y)
    log_jac = jnp.sum(jnp.log1p(-(z**2)))
    rows = [jnp.zeros(m, y.dtype).at[0].set(1.0)]
    pos = 0
    for i in range(1, m):
        row = []
        rest = jnp.ones((), y.dtype)
        for _ in range(i):
            zij = z[pos]
            pos += 1
            log_jac = log_jac + 0.5 * jnp.log(rest)
            row.append(zij * jnp.sqrt(rest))
            rest = rest - row[-1] ** 2
        row.append(jnp.sqrt(rest))
        rows.append(jnp.concatenate([jnp.stack(row), jnp.zeros(m - i - 1, y.dtype)]))
    return jnp.stack(rows), log_jac


def _lkj_cholesky_logpdf(low: jax.Array, eta: float) -> jax.Array:
    m = low.shape[0]
    k = jnp.arange(2, m + 1)
    return jnp.sum((m - k + 2.0 * eta - 2.0) * jnp.log(jnp.diagonal(low)[1:]))


class _Layout(eqx.Module):
    centered: bool = eqx.field(static=True)
    d: int = eqx.field(static=True)
    e: int = eqx.field(static=True)
    q: int = eqx.field(static=True)
    n_corr: int = eqx.field(static=True)
    s: int = eqx.field(static=True)
    n: int = eqx.field(static=True)

    @property
    def n_population(self) -> int:
        return self.d + self.e + self.q + self.n_corr + self.s

    @property
    def size(self) -> int:
        return self.n_population + self.n * self.q


def _layout(problem: PopulationProblem, centered: bool = True) -> _Layout:
    n_corr = sum(len(g) * (len(g) - 1) // 2 for g in problem.blocks)
    d, e, _, n_sigma = problem.sizes
    return _Layout(centered, d, e, len(problem.random), n_corr, n_sigma, problem.data.n_subjects)


def _unpack(problem: PopulationProblem, lay: _Layout, x: jax.Array):
    """`(PopulationParameters, eta (N, q), log prior + log Jacobian of the correlation map)`."""
    d, e, q, nc = lay.d, lay.e, lay.q, lay.n_corr
    theta, beta = x[:d], x[d : d + e]
    log_sd = x[d + e : d + e + q]
    corr = x[d + e + q : d + e + q + nc]
    log_sigma = x[d + e + q + nc : lay.n_population]
    z = x[lay.n_population :].reshape(lay.n, q)
    sd = jnp.exp(log_sd)
    chol = jnp.zeros((q, q), x.dtype)
    extra = jnp.zeros((), x.dtype)
    pos = 0
    for g in problem.blocks:
        m = len(g)
        k = m * (m - 1) // 2
        low, log_jac = _corr_cholesky(corr[pos : pos + k], m) if m > 1 else (jnp.ones((1, 1), x.dtype), 0.0)
        if m > 1:
            extra = extra + log_jac + _lkj_cholesky_logpdf(low, _LKJ_ETA)
        pos += k
        idx = np.asarray(g)
        chol = chol.at[np.ix_(idx, idx)].set(sd[idx][:, None] * low)
    if lay.centered:  # the coordinates are the random effects themselves; z = L^-1 eta for the prior
        eta = z
        z = jax.scipy.linalg.solve_triangular(chol, eta.T, lower=True).T
        extra = extra - lay.n * jnp.sum(jnp.log(jnp.diagonal(chol)))
    else:
        eta = z @ chol.T
    params = PopulationParameters(theta=theta, beta=beta, omega=chol @ chol.T, sigma=jnp.exp(log_sigma))
    return params, eta, z, extra


def _prior_centre(problem: PopulationProblem, lay: _Layout) -> tuple[np.ndarray, np.ndarray]:
    """Means and standard deviations of the normal priors of the population coordinates (correlations: LKJ)."""
    p0 = problem.unpack(problem.psi0)
    tags = parameters(problem.model)
    mean = np.concatenate(
        [
            np.asarray(p0.theta, float),
            np.asarray(p0.beta, float),
            0.5 * np.log(np.diag(np.asarray(p0.omega, float))),
            np.zeros(lay.n_corr),
            np.log(np.asarray(p0.sigma, float)),
        ]
    )
    sd = np.concatenate(
        [
            [PRIOR_SD[tags[n].info.tag] for n in problem.names],
            np.ones(lay.e),
            np.ones(lay.q),
            np.ones(lay.n_corr),
            np.ones(lay.s),
        ]
    )
    return mean, sd


def _logdensity_fn(problem: PopulationProblem, lay: _Layout) -> Callable[[jax.Array], jax.Array]:
    mean, sd = (jnp.asarray(a) for a in _prior_centre(problem, lay))
    normal = np.ones(lay.n_population, bool)
    normal[lay.d + lay.e + lay.q : lay.d + lay.e + lay.q + lay.n_corr] = False  # LKJ instead
    normal = jnp.asarray(normal)

    def logdensity(x):
        params, eta, z, extra = _unpack(problem, lay, x)
        pred, ok = problem.predict(problem.phi(params, eta))
        safe = jnp.where(jnp.isfinite(pred), pred, 1.0)
        ell = problem.observation_terms(params.sigma, safe)[0]
        lik = -0.5 * jnp.sum(ell)
        pop = x[: lay.n_population]
        prior = -0.5 * jnp.sum(jnp.where(normal, ((pop - mean) / sd) ** 2, 0.0)) - 0.5 * jnp.sum(z**2) + extra
        good = jnp.all(ok) & jnp.all(jnp.isfinite(pred)) & jnp.isfinite(lik)
        return jnp.where(good, lik + prior, -jnp.inf)

    return logdensity


class PopulationPosterior(eqx.Module):
    """Posterior draws of a population model ([`carkinetics.sample_population_posterior`][]).

    **Fields:**

    - `theta` `{parameter: (chains, draws)}` typical values (natural units); `omega` `(chains, draws, q, q)`;
      `sigma` `{name: (chains, draws)}`; `beta` `{name: (chains, draws)}`; `eta` `(chains, draws, N, q)`.
    - `rhat`, `ess_bulk`, `ess_tail`: `{quantity: value}` from arviz for every population quantity;
      `divergences` `(chains,)`; `converged`: every R-hat <= 1.01, no divergence, bulk ESS >= 100 per chain...
      (see `message`).
    - `step_size` `(chains,)`, `tree_depth` mean per chain; `times` (seconds); `problem`; `names`.
    """

    theta: dict[str, np.ndarray]
    omega: np.ndarray
    sigma: dict[str, np.ndarray]
    beta: dict[str, np.ndarray]
    eta: np.ndarray
    rhat: dict[str, float]
    ess_bulk: dict[str, float]
    ess_tail: dict[str, float]
    divergences: np.ndarray
    converged: bool
    message: str
    step_size: np.ndarray
    mean_steps: np.ndarray
    times: dict[str, float]
    problem: PopulationProblem
    positions: np.ndarray
    centered: bool = eqx.field(static=True, default=True)

    def means(self) -> dict[str, float]:
        """Posterior means of the typical values, variances (`omega.<name>`) and residual parameters."""
        out = {n: float(np.mean(v)) for n, v in self.theta.items()}
        out.update({f"omega.{n}": float(np.mean(self.omega[..., i, i])) for i, n in enumerate(self.problem.random)})
        out.update({n: float(np.mean(v)) for n, v in self.sigma.items()})
        out.update({n: float(np.mean(v)) for n, v in self.beta.items()})
        return out

    def summary(self) -> str:
        lines = [
            f"NUTS posterior: {self.omega.shape[0]} chains x {self.omega.shape[1]} draws, "
            f"{int(np.sum(self.divergences))} divergences; {'converged' if self.converged else 'NOT CONVERGED'}:"
            f" {self.message}",
            f"{'quantity':<18}{'mean':>12}{'sd':>11}{'R-hat':>8}{'ESS bulk':>10}",
        ]
        draws = self._draws()
        for k, v in draws.items():
            lines.append(f"{k:<18}{np.mean(v):>12.5g}{np.std(v):>11.4g}{self.rhat[k]:>8.4f}{self.ess_bulk[k]:>10.0f}")
        return "\n".join(lines)

    def _draws(self) -> dict[str, np.ndarray]:
        draws = {f"theta.{n}": v for n, v in self.theta.items()}
        draws.update({f"omega.{n}": self.omega[..., i, i] for i, n in enumerate(self.problem.random)})
        draws.update({f"sigma.{n}": v for n, v in self.sigma.items()})
        draws.update({f"beta.{n}": v for n, v in self.beta.items()})
        return draws

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary (the `estimates.json` of the command line with `--method nuts`: posterior means)."""
        m = self.means()
        return {
            "method": "nuts",
            "theta": {n: m[n] for n in self.theta},
            "omega": {n: m[f"omega.{n}"] for n in self.problem.random},
            "sigma": {n: m[n] for n in self.sigma},
            "beta": {n: m[n] for n in self.beta},
            "sd": {k: float(np.std(v)) for k, v in self._draws().items()},
            "rhat": self.rhat,
            "ess_bulk": self.ess_bulk,
            "ess_tail": self.ess_tail,
            "divergences": int(np.sum(self.divergences)),
            "converged": bool(self.converged),
            "message": self.message,
            "n_subjects": self.problem.data.n_subjects,
            "n_observations": self.problem.data.n_observations,
            "times_s": self.times,
        }

    def virtual_population(self, key: Any, n: int) -> Population:
        """`n` new virtual subjects drawn from the posterior predictive distribution of individual parameters: a
        posterior draw of `(theta, Omega)` per subject, then `eta ~ N(0, Omega)` (no covariate effects).

        **Returns:** a [`carkinetics.Population`][] (feeds [`carkinetics.sweep_model`][], like
        [`carkinetics.virtual_population`][]).
        """
        problem = self.problem
        k1, k2 = jax.random.split(key)
        flat_theta = np.stack([self.theta[nm].reshape(-1) for nm in problem.names], axis=1)
        flat_omega = self.omega.reshape(-1, *self.omega.shape[2:])
        pick = np.asarray(jax.random.randint(k1, (n,), 0, flat_theta.shape[0]))
        z = np.asarray(jax.random.normal(k2, (n, flat_omega.shape[1])))
        low = np.linalg.cholesky(flat_omega[pick] + 1e-15 * np.eye(flat_omega.shape[1]))
        eta = np.einsum("nqr,nr->nq", low, z)
        space = problem.space
        theta_z = np.stack(
            [np.asarray(space.to_vector(space.with_values(problem.model, jnp.asarray(v)))) for v in flat_theta[pick]]
        )
        ridx = np.asarray(problem.random_index, dtype=int)
        theta_z[:, ridx] += eta
        values = np.asarray(jax.vmap(problem.theta_values)(jnp.asarray(theta_z)))
        return Population({nm: values[:, k] for k, nm in enumerate(problem.names)}, {}, eta, problem.random)

    def posterior_predictive(self, key: Any, n_draws: int = 100) -> np.ndarray:
        """Replicated observations `(n_draws, N, M)` of the observed subjects: for a posterior draw, each subject's
        sampled random effects and residual errors (the posterior predictive check of the data)."""
        problem = self.problem
        c, s = self.omega.shape[:2]
        flat = self.positions.reshape(c * s, -1)
        lay = _layout(problem, self.centered)
        picks = np.asarray(jax.random.randint(key, (n_draws,), 0, c * s))
        out = []
        for r, i in enumerate(picks):
            params, eta, _, _ = _unpack(problem, lay, jnp.asarray(flat[i]))
            pred, _ = problem.predict(problem.phi(params, eta))
            out.append(np.asarray(problem.observe(params, pred, jax.random.fold_in(key, r))))
        return np.stack(out)

    def ppc_coverage(self, key: Any, n_draws: int = 200, level: float = 0.9) -> float:
        """Fraction of measured observations inside the central `level` posterior predictive interval."""
        rep = self.posterior_predictive(key, n_draws)
        data = self.problem.data
        sel = np.asarray(data.mask & ~data.censored)
        lo, hi = np.percentile(rep, [50 * (1 - level), 50 * (1 + level)], axis=0)
        y = np.asarray(data.dv)
        return float(np.mean((y[sel] >= lo[sel]) & (y[sel] <= hi[sel])))


def sample_population_posterior(
    problem: PopulationProblem,
    key: Any,
    *,
    num_warmup: int = 500,
    num_samples: int = 500,
    chains: int = 4,
    init: Any = None,
    target_acceptance: float = 0.8,
    max_num_doublings: int = 8,
    centered: bool = True,
    dense_mass: bool = False,
    progress: bool | Callable[[str], None] = False,
    checkpoint: str | os.PathLike | None = None,
) -> PopulationPosterior:
    """Sample the posterior of a population model with NUTS (blackjax) through the ODE.

    **Arguments:**

    - `problem`: a [`carkinetics.PopulationProblem`][]; its initial values centre the priors (see the module
      docstring: spreads from the confidence tags).
    - `key`: `jax.random` key; `chains`: independent chains (default 4), each with `num_warmup` adaptation steps
      (step size and diagonal mass matrix) and `num_samples` draws.
    - `init`: a [`carkinetics.PopulationFit`][] to start the chains from (its estimates and EBEs, jittered per chain);
      default the problem's initial values with zero random effects.
    - `target_acceptance`, `max_num_doublings`: NUTS settings.
    - `progress`: print a line per chain.
    - `checkpoint`: a directory where every finished chain is kept (atomically, `chunk_<chain>.npz`) next to a
      `manifest.json` keyed on the model, the data, the population model, the sampler settings, `init`, the key
      and the package version; rerunning the same call resumes with the missing chains. A directory of another
      run is refused with a `ValueError` naming what differs. SIGINT/SIGTERM stop after the chain in progress with
      [`carkinetics.Interrupted`][].

    **Returns:** a [`carkinetics.PopulationPosterior`][] with R-hat, ESS and divergences.

    **Raises:** `ImportError` naming the extra when blackjax or arviz are not installed
    (`pip install carkinetics[bayes]`).

    **Example:**

    ```python slow
    import jax, carkinetics as ck
    post = ck.sample_population_posterior(problem, jax.random.key(0), init=fit)
    post.rhat["theta.cl"], post.divergences.sum()
    ```
    """
    try:
        import warnings

        with warnings.catch_warnings():  # arviz 0.2x announces its 1.0 refactor with a FutureWarning on import
            warnings.simplefilter("ignore", FutureWarning)
            import arviz as az
        import blackjax
    except ImportError as err:
        raise ImportError("NUTS needs blackjax and arviz: pip install 'carkinetics[bayes]'.") from err
    say = progress if callable(progress) else ((lambda s: print(s, file=sys.stderr, flush=True)) if progress else None)
    lay = _layout(problem, centered)
    logdensity = _logdensity_fn(problem, lay)
    x0 = _initial_position(problem, lay, init)
    positions, divergent, steps, step_sizes = [], [], [], []
    t0 = time.perf_counter()

    @jax.jit
    def run_chain(key, x):
        k_warm, k_sample = jax.random.split(key)
        warmup = blackjax.window_adaptation(
            blackjax.nuts,
            logdensity,
            is_mass_matrix_diagonal=not dense_mass,
            target_acceptance_rate=target_acceptance,
            max_num_doublings=max_num_doublings,
        )
        (state, params), _ = warmup.run(k_warm, x, num_steps=num_warmup)  # pyright: ignore[reportCallIssue]
        kernel = blackjax.nuts(logdensity, **params)  # (the adapted parameters carry max_num_doublings)

        def one(state, k):
            state, info = kernel.step(k, state)
            return state, (state.position, info.is_divergent, info.num_integration_steps)  # pyright: ignore

        _, (pos, div, n_steps) = jax.lax.scan(one, state, jax.random.split(k_sample, num_samples))
        return pos, div, n_steps, params["step_size"]

    settings = {
        "num_warmup": num_warmup,
        "num_samples": num_samples,
        "chains": chains,
        "target_acceptance": float(target_acceptance),
        "max_num_doublings": max_num_doublings,
        "centered": centered,
        "dense_mass": dense_mass,
        "init_sha256": fingerprint(np.asarray(x0)),
    }
    manifest = population_manifest(problem, "nuts", settings, key)
    ckpt = None if checkpoint is None else Checkpoint(checkpoint, manifest, POPULATION_MEANING)
    with stop_on_signals("nuts", unit="chain") as stop:
        for c in range(chains):
            loaded = None if ckpt is None else ckpt.load(c, 3)
            if loaded is not None:
                pos, div, n_steps = loaded[0]
                eps = float(loaded[1][0])
            else:
                if stop.signum is not None:
                    raise Interrupted(stop.signum, c, chains, None if ckpt is None else ckpt.path, "chains")
                kc = jax.random.fold_in(key, c)
                start = x0 + 0.05 * jax.random.normal(jax.random.fold_in(kc, 99), x0.shape, dtype=x0.dtype)
                pos, div, n_steps, eps = (np.asarray(x) for x in run_chain(kc, start))
                if ckpt is not None:
                    ckpt.save(c, [pos, div, n_steps], np.asarray([eps]))
            positions.append(np.asarray(pos))
            divergent.append(int(np.sum(np.asarray(div))))
            steps.append(float(np.mean(np.asarray(n_steps))))
            step_sizes.append(float(eps))
            if say:
                say(
                    f"nuts: chain {c + 1}/{chains} done ({num_warmup} warm-up + {num_samples} draws, step size "
                    f"{float(eps):.3g}, {steps[-1]:.1f} leapfrog steps per draw, {divergent[-1]} divergences), "
                    f"{time.perf_counter() - t0:.0f}s"
                )
    pos = np.stack(positions)  # (C, S, dim)
    unpack = jax.jit(jax.vmap(lambda x: _unpack(problem, lay, x)[:2]))
    flat = jnp.asarray(pos.reshape(-1, pos.shape[-1]))
    params, eta = unpack(flat)
    c, s = pos.shape[:2]
    theta_nat = np.asarray(jax.vmap(problem.theta_values)(params.theta)).reshape(c, s, -1)
    omega = np.asarray(params.omega).reshape(c, s, lay.q, lay.q)
    sigma = np.asarray(params.sigma).reshape(c, s, -1)
    beta = np.asarray(params.beta).reshape(c, s, -1)
    theta = {n: theta_nat[..., k] for k, n in enumerate(problem.names)}
    sig = {n: sigma[..., k] for k, n in enumerate(problem.sigma_names)}
    bet = {f"{e.parameter}~{e.covariate}": beta[..., k] for k, e in enumerate(problem.effects)}
    draws = {f"theta.{n}": v for n, v in theta.items()}
    draws.update({f"omega.{n}": omega[..., i, i] for i, n in enumerate(problem.random)})
    draws.update({f"sigma.{n}": v for n, v in sig.items()})
    draws.update({f"beta.{n}": v for n, v in bet.items()})
    idata = az.from_dict(posterior=draws)
    rhat = {k: float(v) for k, v in az.rhat(idata).data_vars.items()}  # pyright: ignore[reportAttributeAccessIssue]
    ess_b = {k: float(v) for k, v in az.ess(idata, method="bulk").data_vars.items()}
    ess_t = {k: float(v) for k, v in az.ess(idata, method="tail").data_vars.items()}
    n_div = int(np.sum(divergent))
    worst = max(rhat.values())
    min_ess = min(ess_b.values())
    converged = worst <= 1.01 and n_div == 0 and min_ess >= 100
    message = (
        f"max R-hat {worst:.4f} (<= 1.01 required), {n_div} divergences, min bulk ESS {min_ess:.0f} (>= 100 required)"
    )
    return PopulationPosterior(
        theta=theta,
        omega=omega,
        sigma=sig,
        beta=bet,
        eta=np.asarray(eta).reshape(c, s, lay.n, lay.q),
        rhat=rhat,
        ess_bulk=ess_b,
        ess_tail=ess_t,
        divergences=np.asarray(divergent),
        converged=converged,
        message=message,
        step_size=np.asarray(step_sizes),
        mean_steps=np.asarray(steps),
        times={"sampling": time.perf_counter() - t0},
        problem=problem,
        positions=pos,
        centered=centered,
    )


def _initial_position(problem: PopulationProblem, lay: _Layout, init: Any) -> jax.Array:
    psi = problem.psi0 if init is None else jnp.asarray(init.psi)
    p = problem.unpack(psi)
    eta = jnp.zeros((lay.n, lay.q)) if init is None else jnp.asarray(init.eta)
    omega = np.asarray(p.omega, float)
    sd = np.sqrt(np.diag(omega))
    corr_params = []
    chol_blocks = np.zeros_like(omega)
    for g in problem.blocks:
        idx = np.asarray(g)
        block = omega[np.ix_(idx, idx)]
        corr = block / np.outer(sd[idx], sd[idx])
        low = np.linalg.cholesky(corr)
        chol_blocks[np.ix_(idx, idx)] = sd[idx][:, None] * low
        # invert the canonical-partial-correlation map row by row
        for i in range(1, len(g)):
            rest = 1.0
            for j in range(i):
                zij = low[i, j] / math.sqrt(rest)
                corr_params.append(math.atanh(float(np.clip(zij, -0.999999, 0.999999))))
                rest -= low[i, j] ** 2
    if lay.centered:
        z = np.asarray(eta, float)
    else:
        z = np.linalg.solve(chol_blocks, np.asarray(eta, float).T).T if lay.q else np.zeros((lay.n, 0))
    return jnp.asarray(
        np.concatenate(
            [
                np.asarray(p.theta, float),
                np.asarray(p.beta, float),
                np.log(sd),
                np.asarray(corr_params, float),
                np.log(np.asarray(p.sigma, float)),
                z.reshape(-1),
            ]
        )
    )
