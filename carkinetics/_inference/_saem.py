"""SAEM: stochastic approximation expectation-maximisation (Delyon, Lavielle, Moulines 1999; Kuhn & Lavielle 2005),
as in Monolix and nlmixr2, with all subjects and chains in one batched solve per Markov-chain step.

Each iteration `k`:

1. **Simulation.** The random effects of every subject and chain move by Metropolis-Hastings: two steps with the
   prior `N(0, Omega)` as independent proposal, then two random-walk steps `eta + s L xi` (`L L' = Omega`, the
   scale `s` adapted towards 30-40 % acceptance). Each step is one batched solve of all subjects x chains.
2. **Stochastic approximation** of the sufficient statistics of the complete-data likelihood, `S_k = S_{k-1} +
   gamma_k (s(phi_k) - S_{k-1})`: the cross-products of the individual parameters with the covariate design
   (`sum_i x_i phi_i'`) and with themselves (`sum_i phi_i phi_i'`). The step size is `gamma_k = 1` for the first
   `K1` iterations (exploration) and `1 / (k - K1)` for the next `K2` (convergence).
3. **Maximisation.** Typical values and covariate exponents by least squares on the statistics (exact for the
   normal random-effects model), `Omega` from the residual second moments (zero outside its blocks), the residual
   error parameters by maximising the likelihood of the current sample, then stochastic approximation on their
   logarithm. During `K1`, variances may shrink by at most 5 % per iteration (simulated annealing, as Monolix), so
   that the chains keep exploring.

Every estimated parameter must have a random effect (the statistics above are those of the random-effects model);
use FOCEi for parameters without variability.

After the iterations, the EBEs (modes) come from the FOCEi inner problem at the SAEM estimates, and the objective
function is reported two ways: the FOCEi approximation at the SAEM estimates (as nlmixr2 does, comparable with a
FOCEi fit) and an importance-sampling estimate of `-2 log L` (proposal: a multivariate t with 5 degrees of freedom
around each EBE with the FOCEi curvature as precision). Standard errors come from the FOCEi covariance step at the
SAEM estimates (a linearisation, like nlmixr2's `linFim`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import gammaln

from .._analysis._checkpoint import IterationStore
from . import _smalllinalg as sl
from ._population_model import PopulationProblem

#: What a SAEM checkpoint keeps after an iteration (besides the iteration number; the key is split again).
_SAEM_STATE = (
    "psi",
    "eta",
    "m2ll",
    "pred",
    "ok",
    "scale",
    "scale_c",
    "s_xphi",
    "s_2",
    "trajectory",
    "acceptance",
    "history",
)


class SAEMResult(NamedTuple):
    psi: Any
    eta_mean: Any
    chains: Any  # the final state of the chains (eta (N C, q), m2ll, pred, ok) and the proposal scales
    n_chains: int
    converged: bool
    message: str
    iterations: int
    ofv_history: list[float]
    trajectory: np.ndarray
    acceptance: np.ndarray


def _chain_problem(problem: PopulationProblem, chains: int) -> PopulationProblem:
    n = problem.data.n_subjects
    return problem.with_data(problem.data.take(np.tile(np.arange(n), chains)))


@eqx.filter_jit
def _m2ll_from_pred(problem: PopulationProblem, psi, pred, ok):
    ell = problem.observation_terms(problem.unpack(psi).sigma, pred)[0]
    total = jnp.sum(ell, axis=1)
    return jnp.where(ok & jnp.isfinite(total), total, jnp.inf)


@eqx.filter_jit
def _mh_steps(problem: PopulationProblem, psi, eta, m2ll, pred, ok, key, scale, scale_c):
    """Metropolis-Hastings moves of every subject-chain, each one batched solve (one trace of the solve, in a loop):
    two with the prior `N(0, Omega)` as independent proposal, two random-walk steps `eta + s L xi` (`L L' =
    Omega`), then one random-walk step per random effect alone (`scale_c[k] sqrt(Omega_kk)`), as Monolix's three
    kernels. Returns the new state, the acceptance rates of the joint and of the component-wise random walks, the
    individual parameters and `Omega`."""
    p = problem.unpack(psi)
    low = sl.cholesky(p.omega)
    om_inv = sl.inverse(p.omega)
    prior = lambda e: jnp.einsum("nq,qr,nr->n", e, om_inv, e)
    q = eta.shape[1]
    sd = jnp.sqrt(jnp.diagonal(p.omega))
    n_steps = 4 + q

    def step(j, carry):
        eta, m2ll, pred, ok, acc, acc_c, key = carry
        independent = j < 2
        joint = j < 4
        comp = jnp.clip(j - 4, 0, max(q - 1, 0))
        key, kp, ku = jax.random.split(key, 3)
        xi = jax.random.normal(kp, eta.shape, dtype=eta.dtype)
        onehot = jax.nn.one_hot(comp, q, dtype=eta.dtype)
        move = jnp.where(joint, scale * (xi @ low.T), (scale_c[comp] * sd[comp]) * xi * onehot[None, :])
        prop = jnp.where(independent, xi @ low.T, eta + move)
        pred_new, ok_new = problem.predict(problem.phi(p, prop))
        ell = jnp.sum(problem.observation_terms(p.sigma, pred_new)[0], axis=1)
        m2ll_new = jnp.where(ok_new & jnp.isfinite(ell), ell, jnp.inf)
        # log acceptance ratio: the prior cancels for the independent (prior) proposal
        log_ratio = -0.5 * (m2ll_new - m2ll) - 0.5 * jnp.where(independent, 0.0, prior(prop) - prior(eta))
        accept = jnp.log(jax.random.uniform(ku, m2ll.shape, dtype=m2ll.dtype)) < log_ratio
        rate = jnp.mean(accept)
        acc = acc + jnp.where(joint & ~independent, rate, 0.0)
        acc_c = acc_c + jnp.where(joint, 0.0, rate) * onehot
        return (
            jnp.where(accept[:, None], prop, eta),
            jnp.where(accept, m2ll_new, m2ll),
            jnp.where(accept[:, None], pred_new, pred),
            jnp.where(accept, ok_new, ok),
            acc,
            acc_c,
            key,
        )

    init = (eta, m2ll, pred, ok, jnp.zeros((), eta.dtype), jnp.zeros(q, eta.dtype), key)
    eta, m2ll, pred, ok, acc, acc_c, _ = jax.lax.fori_loop(0, n_steps, step, init)
    return eta, m2ll, pred, ok, acc / 2.0, acc_c, problem.phi(p, eta), p.omega


@eqx.filter_jit
def _complete_data_derivatives(problem: PopulationProblem, psi, phi, pred):
    """Per subject-chain gradient `(N, p)` and Hessian `(N, p, p)` in `psi` of the complete-data log-likelihood
    `log p(y | phi; sigma) + log p(phi; theta, beta, Omega)` (no derivative of the model: `pred` is fixed)."""
    data = problem.data
    ridx = np.asarray(problem.random_index, dtype=int)

    def loglik(z, phi_i, pred_i, design_i, *obs):
        p = problem.unpack(z)
        mu = p.theta
        for k, e in enumerate(problem.effects):
            mu = mu.at[problem.names.index(e.parameter)].add(p.beta[k] * design_i[k])
        r = (phi_i - mu)[ridx]
        low = sl.cholesky(p.omega)
        log_prior = -0.5 * (len(ridx) * math.log(2 * math.pi) + sl.logdet(low) + r @ sl.cho_solve(low, r))
        ell = problem.observation_terms_of(p.sigma, pred_i, *obs)[0]
        return log_prior - 0.5 * jnp.sum(ell)

    def one(*args):
        return jax.grad(loglik)(psi, *args), jax.hessian(loglik)(psi, *args)

    return jax.vmap(one)(phi, pred, problem.design, data.dv, data.censored, data.limit, data.mask, data.obs_index)


@eqx.filter_jit
def _eta_of(problem: PopulationProblem, psi, phi):
    """The random effects that keep the individual parameters `phi` under new population parameters."""
    mu = problem.typical_phi(problem.unpack(psi))
    return (phi - mu)[:, np.asarray(problem.random_index, dtype=int)]


def _design(problem: PopulationProblem) -> tuple[np.ndarray, list[slice]]:
    """The stacked design `(N, D)`: for each parameter a block `[1, covariates acting on it]`."""
    cols, blocks, pos = [], [], 0
    n = problem.data.n_subjects
    design = np.asarray(problem.design)
    for name in problem.names:
        ks = [k for k, e in enumerate(problem.effects) if e.parameter == name]
        cols.append(np.ones((n, 1)))
        cols += [design[:, k : k + 1] for k in ks]
        blocks.append(slice(pos, pos + 1 + len(ks)))
        pos += 1 + len(ks)
    return np.concatenate(cols, axis=1), blocks


@eqx.filter_jit
def _sigma_update(problem: PopulationProblem, psi, pred, n_newton: int = 25):
    """`log sigma` maximising the likelihood of the current predictions (Newton on the log parameters)."""
    d, e, n_om, s = problem.sizes
    start = psi[d + e + n_om :]

    def objective(log_sigma):
        ell = problem.observation_terms(jnp.exp(log_sigma), pred)[0]
        return jnp.sum(ell)

    grad = jax.grad(objective)
    hess = jax.hessian(objective)

    def body(_, z):
        g, h = grad(z), hess(z)
        step = -jnp.linalg.solve(h + 1e-9 * jnp.eye(s), g)
        step = jnp.clip(step, -1.0, 1.0)
        ok = jnp.all(jnp.isfinite(step)) & (objective(z + step) <= objective(z))
        return jnp.where(ok, z + step, z + 0.25 * jnp.where(jnp.isfinite(step), step, 0.0))

    return jax.lax.fori_loop(0, n_newton, body, start)


def saem(
    problem: PopulationProblem,
    key: Any,
    *,
    iterations: tuple[int, int] = (250, 150),
    chains: int | None = None,
    progress: Callable[[str], None] | None = None,
    store: IterationStore | None = None,
) -> SAEMResult:
    """Run SAEM from `problem.psi0` (see the module docstring). With `store`, the whole state of the chains and of
    the stochastic approximation is kept every few iterations (and resumed from: the continued run is the
    uninterrupted one), and a requested stop ends the run between iterations."""
    missing = [n for n in problem.names if n not in problem.random]
    if missing:
        raise ValueError(
            f"SAEM needs a random effect on every estimated parameter; {missing} have none (add them to "
            "`random`, or fit with method='focei')."
        )
    k1, k2 = (int(x) for x in iterations)
    if k1 < 1 or k2 < 1:
        raise ValueError(f"`saem_iterations` must be two positive ints (K1, K2), got {iterations!r}.")
    n = problem.data.n_subjects
    c = max(1, math.ceil(50 / n)) if chains is None else int(chains)
    pc = _chain_problem(problem, c)
    d, e, n_om, _ = problem.sizes
    design, blocks = _design(problem)
    design_c = np.tile(design, (c, 1))
    sxx = design.T @ design  # constant (the covariates do not change)
    ridx = list(problem.random_index)  # position of random effect r among names
    perm = np.asarray(ridx)  # names index of each random-effect column
    psi = jnp.asarray(problem.psi0)
    eta = jnp.zeros((n * c, len(problem.random)), dtype=psi.dtype)
    # the chains start at eta = 0 with an infinite objective: the first (independent) proposal is always accepted
    m2ll = jnp.full(n * c, jnp.inf, dtype=psi.dtype)
    pred = jnp.zeros(pc.data.dv.shape, dtype=psi.dtype)
    scale = 0.5
    scale_c = np.full(len(problem.random), 1.0)
    stats = None
    trajectory = [np.asarray(psi, float)]
    acceptance = []
    history: list[float] = []
    t0 = time.perf_counter()
    total = k1 + k2
    ok = jnp.zeros(n * c, dtype=bool)
    first = 1
    saved = None if store is None else store.load(_SAEM_STATE)
    if saved is not None:
        first = int(saved["iteration"]) + 1
        for _ in range(first - 1):  # the key after that many iterations
            key, _ = jax.random.split(key)
        psi, eta, m2ll, pred = (jnp.asarray(saved[x]) for x in ("psi", "eta", "m2ll", "pred"))
        ok = jnp.asarray(saved["ok"])
        scale, scale_c = float(saved["scale"]), np.asarray(saved["scale_c"], float)
        stats = (np.asarray(saved["s_xphi"]), np.asarray(saved["s_2"]))
        trajectory = list(np.asarray(saved["trajectory"]))
        acceptance = [float(a) for a in saved["acceptance"]]
        history = [float(h) for h in saved["history"]]
    for k in range(first, total + 1):
        key, sub = jax.random.split(key)
        eta, m2ll, pred, ok, rate_j, rate_c, phi_j, omega_j = _mh_steps(
            pc, psi, eta, m2ll, pred, ok, sub, jnp.asarray(scale, dtype=psi.dtype), jnp.asarray(scale_c, psi.dtype)
        )
        rate = float(rate_j)
        scale *= 1.1 if rate > 0.4 else (0.9 if rate < 0.3 else 1.0)
        rc = np.asarray(rate_c, float)
        scale_c *= np.where(rc > 0.4, 1.1, np.where(rc < 0.3, 0.9, 1.0))
        acceptance.append(rate)
        # sufficient statistics of this sample (averaged over chains)
        phi, old = np.asarray(phi_j, float), np.asarray(omega_j, float)  # (N C, d), (q, q)
        s_xphi = design_c.T @ phi / c
        s_2 = phi.T @ phi / c
        gamma = 1.0 if k <= k1 else 1.0 / (k - k1)
        new = (s_xphi, s_2)
        stats = new if stats is None else tuple(a + gamma * (b - a) for a, b in zip(stats, new))
        s_xphi, s_2 = stats
        # M-step: typical values and covariate exponents by least squares per parameter
        coef = np.zeros((design.shape[1], d))
        for j in range(d):
            bl = blocks[j]
            coef[bl, j] = np.linalg.solve(sxx[bl, bl], s_xphi[bl, j])
        theta = coef[[b.start for b in blocks], np.arange(d)]
        beta = np.zeros(e)
        for kk, eff in enumerate(problem.effects):
            j = problem.names.index(eff.parameter)
            ks_j = [q for q, e2 in enumerate(problem.effects) if e2.parameter == eff.parameter]
            beta[kk] = coef[blocks[j].start + 1 + ks_j.index(kk), j]
        omega_full = (s_2 - coef.T @ s_xphi - s_xphi.T @ coef + coef.T @ sxx @ coef) / n
        omega = omega_full[np.ix_(perm, perm)]
        mask = np.zeros_like(omega, bool)
        for g in problem.blocks:
            mask[np.ix_(g, g)] = True
        omega = np.where(mask, 0.5 * (omega + omega.T), 0.0)
        if k <= k1:  # simulated annealing: variances shrink by at most 5 % per iteration
            floor = 0.95 * np.diag(old)
            sd_scale = np.sqrt(np.maximum(np.diag(omega), floor) / np.maximum(np.diag(omega), 1e-300))
            omega = omega * np.outer(sd_scale, sd_scale)
        if np.linalg.eigvalsh(omega).min() <= 0:
            omega = omega + (1e-10 - min(0.0, np.linalg.eigvalsh(omega).min())) * np.eye(len(omega))
        log_sigma_hat = np.asarray(_sigma_update(pc, psi, pred), float)
        log_sigma_old = np.asarray(psi[d + e + n_om :], float)
        log_sigma = log_sigma_old + gamma * (log_sigma_hat - log_sigma_old)
        if k <= k1:
            log_sigma = np.maximum(log_sigma, log_sigma_old + math.log(0.95))
        psi = jnp.asarray(np.concatenate([theta, beta, problem._omega_to_psi(omega), log_sigma]))
        # the chains keep their individual parameters; only the residual error changes their likelihood
        eta = _eta_of(pc, psi, phi_j)
        m2ll = _m2ll_from_pred(pc, psi, pred, ok)
        history.append(float(jnp.sum(m2ll)) / c)
        trajectory.append(np.asarray(psi, float))
        if progress is not None and (k % 50 == 0 or k == total):
            progress(
                f"saem: iteration {k}/{total} ({'exploration' if k <= k1 else 'convergence'}), acceptance "
                f"{rate:.2f}, -2 log p(y | eta) {history[-1]:.3f}, {time.perf_counter() - t0:.1f}s"
            )
        if store is not None:
            assert stats is not None
            store.after(
                k,
                {
                    "psi": psi,
                    "eta": eta,
                    "m2ll": m2ll,
                    "pred": pred,
                    "ok": ok,
                    "scale": scale,
                    "scale_c": scale_c,
                    "s_xphi": stats[0],
                    "s_2": stats[1],
                    "trajectory": np.stack(trajectory),
                    "acceptance": np.asarray(acceptance),
                    "history": np.asarray(history),
                }
                if store.due(k)
                else None,
            )
    traj = np.stack(trajectory)
    finite = bool(np.all(np.isfinite(traj[-1])) and np.all(np.isfinite(np.asarray(m2ll))))
    if not np.all(np.isfinite(np.asarray(m2ll))):
        bad = sorted({problem.data.ids[i % n] for i in np.flatnonzero(~np.isfinite(np.asarray(m2ll)))})
        return SAEMResult(
            psi,
            jnp.mean(eta.reshape(c, n, -1), axis=0),
            None,
            c,
            False,
            f"the likelihood is not finite for subjects {bad} (every proposal failed)",
            total,
            history,
            traj,
            np.asarray(acceptance),
        )
    tail = traj[-min(20, k2) :]
    drift = float(np.max(np.abs(tail - tail[-1]))) if finite else float("inf")
    converged = finite and drift < 0.05
    message = (
        f"{k1} + {k2} iterations, {c} chain(s) per subject; parameter drift over the last {len(tail)} "
        f"iterations {drift:.2g} (unconstrained scale)" + ("" if converged else ": NOT stabilised")
    )
    eta_mean = jnp.mean(eta.reshape(c, n, -1), axis=0)
    chains_state = (eta, m2ll, pred, ok, scale, scale_c)
    return SAEMResult(psi, eta_mean, chains_state, c, converged, message, total, history, traj, np.asarray(acceptance))


def fisher_information(
    problem: PopulationProblem, psi, result: SAEMResult, key: Any, iterations: int = 200
) -> tuple[np.ndarray, str]:
    """Observed Fisher information of `psi` by Louis' principle, estimated from Markov chains at the estimates (as
    Monolix's stochastic-approximation standard errors): `I = sum_i (-E[d2 log p(y_i, phi_i)] - Var[d log p(y_i,
    phi_i)])` over the conditional distribution of each subject's parameters. Only the complete-data likelihood is
    differentiated (the predictions are held), so models whose predictions are not smooth in their parameters are
    fine. Returns `(covariance = I^-1, message)`."""
    n, c = problem.data.n_subjects, result.n_chains
    pc = _chain_problem(problem, c)
    eta, m2ll, pred, ok, scale, scale_c = result.chains
    p = psi.shape[0]
    sum_g = np.zeros((n, p))
    sum_gg = np.zeros((n, p, p))
    sum_h = np.zeros((n, p, p))
    for _ in range(iterations):
        key, sub = jax.random.split(key)
        eta, m2ll, pred, ok, _, _, phi, _ = _mh_steps(
            pc, psi, eta, m2ll, pred, ok, sub, jnp.asarray(scale, psi.dtype), jnp.asarray(scale_c, psi.dtype)
        )
        g, h = (np.asarray(x, float) for x in _complete_data_derivatives(pc, psi, phi, pred))
        g = g.reshape(c, n, p)
        sum_g += g.sum(axis=0)
        sum_gg += np.einsum("cnp,cnr->npr", g, g)
        sum_h += h.reshape(c, n, p, p).sum(axis=0)
    m = iterations * c
    mean_g = sum_g / m
    info = np.sum(-sum_h / m - (sum_gg / m - np.einsum("np,nr->npr", mean_g, mean_g)), axis=0)
    info = 0.5 * (info + info.T)
    try:
        np.linalg.cholesky(info)
    except np.linalg.LinAlgError:
        return np.full(
            (p, p), np.nan
        ), "covariance step failed: the stochastic-approximation information is not positive definite"
    return np.linalg.inv(info), (
        f"covariance: Louis' observed information from {iterations} x {c} Markov-chain draws at the estimates"
    )


@eqx.filter_jit
def _is_weights(problem: PopulationProblem, psi, mode, low_prec, key, df):
    """Log importance weights of one draw per subject-chain from a multivariate t around `mode`."""
    p = problem.unpack(psi)
    q = mode.shape[1]
    kz, kg = jax.random.split(key)
    z = jax.random.normal(kz, mode.shape, dtype=mode.dtype)
    g = jax.random.gamma(kg, df / 2.0, (mode.shape[0],), dtype=mode.dtype) / (df / 2.0)
    # draws: mode + L^-T z / sqrt(g), with L L' = A (the precision)
    x = jax.vmap(lambda lo, zz: jax.scipy.linalg.solve_triangular(lo.T, zz, lower=False))(low_prec, z)
    eta = mode + x / jnp.sqrt(g)[:, None]
    pred, ok = problem.predict(problem.phi(p, eta))
    ell = jnp.sum(problem.observation_terms(p.sigma, pred)[0], axis=1)
    om_low = sl.cholesky(p.omega)
    log_prior = -0.5 * (
        q * math.log(2 * math.pi) + sl.logdet(om_low) + jnp.einsum("nq,nq->n", eta, sl.cho_solve(om_low[None], eta))
    )
    dev = eta - mode
    maha = jnp.einsum(
        "nq,nq->n",
        jnp.einsum("nqr,nr->nq", jnp.swapaxes(low_prec, 1, 2), dev),
        jnp.einsum("nqr,nr->nq", jnp.swapaxes(low_prec, 1, 2), dev),
    )
    log_q = (
        gammaln((df + q) / 2)
        - gammaln(df / 2)
        - 0.5 * q * math.log(df * math.pi)
        + jnp.sum(jnp.log(jnp.diagonal(low_prec, axis1=1, axis2=2)), axis=1)
        - 0.5 * (df + q) * jnp.log1p(maha / df)
    )
    lw = -0.5 * ell + log_prior - log_q
    return jnp.where(ok & jnp.isfinite(lw), lw, -jnp.inf)


def importance_sampling_ofv(
    problem: PopulationProblem, psi, state: Any, key: Any, n_samples: int, chains: int | None = None
) -> float:
    """`-2 log L` (constant included) by importance sampling around the EBEs of `state`."""
    n = problem.data.n_subjects
    c = max(1, math.ceil(50 / n)) if chains is None else int(chains)
    pc = _chain_problem(problem, c)
    mode = jnp.tile(state.eta, (c, 1))
    low = sl.cholesky(jnp.tile(state.cond.amat, (c, 1, 1)))
    draws = []
    for k in range(max(1, math.ceil(n_samples / c))):
        lw = np.asarray(_is_weights(pc, jnp.asarray(psi), mode, low, jax.random.fold_in(key, k), 5.0))
        draws.append(lw.reshape(c, n))
    lw = np.concatenate(draws, axis=0)  # (S, N)
    top = lw.max(axis=0)
    log_mean = top + np.log(np.mean(np.exp(lw - top[None, :]), axis=0))
    return float(-2.0 * np.sum(log_mean))
