"""FOCEi: first-order conditional estimation with interaction, all subjects in one batched solve per step.

**Objective.** For subject `i` with conditional objective (`-2 log` of likelihood times prior, `log 2 pi` included)

    l_i(eta) = sum_j ell_ij(f_ij(eta)) + eta' Omega^-1 eta,

the FOCEi approximation of `-2 log L_i` is the Laplace approximation at the empirical Bayes estimate `eta_i`
(the mode of `l_i`) with the expected (Gauss-Newton) curvature of the individual likelihood, as in NONMEM and
nlmixr2:

    OFV_i = l_i(eta_i) + log det Omega + log det A_i,    A_i = sum_j w_ij g_ij g_ij' + Omega^-1,

`g_ij = d f_ij / d eta` and `w_ij` the information weight of observation `j` (`1 / V + (dlogV/df)^2 / 2` times
`h'(f)^2` for a measured value: the "interaction" of the residual variance with `eta`; the inverse-Mills-ratio
curvature for a censored one). The total OFV is `sum_i OFV_i`.

**Inner problem (EBEs).** All subjects at once: each iteration is one batched forward-mode solve that returns the
predictions and their derivatives `g` (the `d` tangents ride along in the same solve), then a Levenberg-Marquardt
step per subject with the Gauss-Newton matrix `2 A_i`, which is the exact Hessian of `l_i` up to terms weighted by
the residuals. Gauss-Newton was chosen over the exact Hessian (forward-over-reverse) because `A_i` is needed for
the objective anyway, it is positive definite by construction (no Hessian modification), it needs only first
derivatives (one solve carrying `d` tangents instead of `d^2`), and it converges fast from the warm starts the
outer loop provides; the damping follows the gain ratio (actual over predicted decrease), which damps the zig-zag of
Gauss-Newton steps along flat directions. A subject has converged when the Gauss-Newton decrement
`g' (2A)^-1 g / 2` is below `1e-8` (after eight iterations, `1e-6`: its OFV is then within `1e-6` of the minimum).

**Outer problem.** The population parameters `psi` (typical values on the unconstrained scale, covariate
exponents, the Cholesky factors of `Omega` with log diagonals, log residual parameters) are optimised by a trust
region method on a local model: at the current estimates, the predictions of every subject are expanded to second
order in its own parameters (`f + J d + d' T d / 2`, with `T` from central differences of the forward-mode
Jacobians). On this expansion the FOCEi objective, including the inner EBE problem (Newton iterations, then one
differentiable Newton step so that `d eta / d psi` is the implicit-function derivative), is an algebraic function
of `psi` whose value and gradient equal those of the exact FOCEi objective at the expansion point (the gradient of
`log det A` needs `d g / d phi = T`). Its Hessian (automatic differentiation) gives the trust-region step; each
step is accepted only if the *exact* OFV (inner problem re-solved on the ODE) decreases. The fit has converged when
the Newton decrement `g' B^-1 g / 2` of the OFV is below `tol` (the remaining improvement, in OFV units; `1e-4`
means the remaining step is about 1 % of a standard error) with every subject's EBE converged.

**Covariance step.** `R` is the Hessian of the OFV: by default that of the OFV on the second-order expansion at
the estimates (central differences of its exact gradients; it lacks only third derivatives of the predictions),
or (`"exact"`) by central differences of exact gradients, each at re-solved EBEs and a new expansion. The
covariance of `psi` is `2 R^-1` (the OFV is `-2 log L`); the sandwich `R^-1 S R^-1` is reported as well.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from .._analysis._checkpoint import IterationStore
from .._core._custom_types import Array
from . import _smalllinalg as sl
from ._population_model import PopulationProblem

_EBE_TOL = 1e-8


class Conditional(eqx.Module):
    """Per-subject conditional quantities at `(psi, eta)`: objective `lval` `(N,)`, its gradient in `eta` `(N, q)`,
    the curvature `A` `(N, q, q)`, the FOCEi contribution `ofv` `(N,)` and whether the solve succeeded `ok`."""

    lval: Array
    grad: Array
    amat: Array
    ofv: Array
    ok: Array


@eqx.filter_jit
def _predict(problem: PopulationProblem, phi):
    return problem.predict(phi)


def _conditional(problem: PopulationProblem, psi, eta, pred, jac, ok) -> Conditional:
    p = problem.unpack(psi)
    ridx = np.asarray(problem.random_index, dtype=int)
    je = jac[:, :, ridx]
    ell, dell, _, w = problem.observation_terms(p.sigma, pred)
    om_inv = sl.inverse(p.omega)
    logdet_om = sl.logdet(sl.cholesky(p.omega))
    quad = jnp.einsum("nq,qr,nr->n", eta, om_inv, eta)
    lval = jnp.sum(ell, axis=1) + quad
    grad = jnp.einsum("nm,nmq->nq", dell, je) + 2.0 * eta @ om_inv
    amat = jnp.einsum("nm,nmq,nmr->nqr", w, je, je) + om_inv[None, :, :]
    ofv = lval + logdet_om + sl.logdet(sl.cholesky(amat))
    good = ok & jnp.isfinite(lval) & jnp.all(jnp.isfinite(grad), axis=1) & jnp.isfinite(ofv)
    return Conditional(
        lval=jnp.where(good, lval, jnp.inf), grad=grad, amat=amat, ofv=jnp.where(good, ofv, jnp.inf), ok=good
    )


@eqx.filter_jit
def _evaluate(problem: PopulationProblem, psi, eta):
    """Predictions, their Jacobians in `phi`, solver status and the conditional terms at `(psi, eta)`: one batched
    forward-mode solve."""
    pred, jac, ok = problem.predict_jacobian(problem.phi(problem.unpack(psi), eta))
    return pred, jac, ok, _conditional(problem, psi, eta, pred, jac, ok)


@eqx.filter_jit
def _lm_propose(cond: Conditional, eta, lam):
    """Levenberg-Marquardt step per subject on `l` with the Gauss-Newton matrix `2A`; the Gauss-Newton decrement
    and the reduction of `l` the quadratic model predicts for the step."""
    h = 2.0 * cond.amat
    q = eta.shape[1]
    diag = jnp.diagonal(h, axis1=1, axis2=2)
    damped = h + lam[:, None, None] * (diag[:, :, None] * jnp.eye(q)[None, :, :])
    step = -sl.cho_solve(sl.cholesky(damped), cond.grad)
    dec = 0.5 * jnp.einsum("nq,nq->n", cond.grad, sl.cho_solve(sl.cholesky(h), cond.grad))
    big = jnp.max(jnp.abs(step), axis=1, initial=0.0)
    step = step * jnp.minimum(1.0, 2.0 / jnp.maximum(big, 1e-300))[:, None]  # at most 2 log units per step
    predicted = -(jnp.einsum("nq,nq->n", cond.grad, step) + 0.5 * jnp.einsum("nq,nqr,nr->n", step, h, step))
    return eta + step, jnp.abs(dec), predicted


@eqx.filter_jit
def _select(accept, new, old):
    def pick(a, b):
        shape = (accept.shape[0],) + (1,) * (a.ndim - 1)
        return jnp.where(accept.reshape(shape), a, b)

    return jax.tree_util.tree_map(pick, new, old)


@eqx.filter_jit
def _lm_accept(active, new, old, lam, predicted):
    """Accept steps that do not increase `l`; adapt the damping by the gain ratio (actual / predicted reduction), so
    that Gauss-Newton steps that overshoot along a flat direction (zig-zag) are damped."""
    cond_t, cond = new[4], old[4]
    accept = active & cond_t.ok & (cond_t.lval <= cond.lval)
    gain = (cond.lval - cond_t.lval) / jnp.maximum(predicted, 1e-300)
    lam_acc = jnp.where(gain > 0.75, lam * 0.3, jnp.where(gain < 0.25, jnp.maximum(lam * 4.0, 1e-3), lam))
    lam = jnp.where(accept, lam_acc, jnp.maximum(lam * 10.0, 1e-3))
    lam = jnp.where(lam < 1e-6, 0.0, lam)
    return _select(accept, new, old), lam, ~accept & active & (lam > 1e8)


class EBEState(NamedTuple):
    """Empirical Bayes estimates at `psi` with everything computed there."""

    eta: Array
    cond: Conditional
    pred: Array
    jac: Array
    ok: Array
    converged: np.ndarray  # (N,) bool: each subject's inner problem converged
    iterations: int

    @property
    def ofv(self) -> float:
        return float(jnp.sum(self.cond.ofv))


def estimate_eta(problem: PopulationProblem, psi, eta0, *, max_iter: int = 60, tol: float = _EBE_TOL) -> EBEState:
    """The empirical Bayes estimates (modes of `l_i`) of all subjects at `psi`, from `eta0` (one batched solve per
    Levenberg-Marquardt iteration)."""
    eta = jnp.asarray(eta0)
    pred, jac, ok, cond = _evaluate(problem, psi, eta)
    n = eta.shape[0]
    lam = jnp.zeros(n, dtype=eta.dtype)
    converged = np.zeros(n, bool)
    it = 0
    for it in range(1, max_iter + 1):
        eta_try, dec, predicted = _lm_propose(cond, eta, lam)
        # converged: the Gauss-Newton decrement is below tol; after a few iterations also below 100 tol (a subject
        # that creeps along a flat direction is then within 1e-6 of its minimum in OFV units), or nothing is left to
        # gain within rounding
        limit = tol if it <= 8 else 100.0 * tol
        nothing = np.asarray(dec < 1e-12 * (1.0 + jnp.abs(cond.lval)))
        converged = (np.asarray(dec < limit) | nothing) & np.asarray(cond.ok)
        active = ~converged & np.asarray(cond.ok)
        if not active.any():
            break
        eta_try = _select(active, eta_try, eta)
        new = _evaluate(problem, psi, eta_try)
        l_old = cond.lval
        (eta, pred, jac, ok, cond), lam, stalled = _lm_accept(
            active, (eta_try, *new), (eta, pred, jac, ok, cond), lam, predicted
        )
        # converged as well: l no longer changes (a minimum at a kink of the model, where the gradient need not
        # vanish), or a rejected step that cannot change l any more (flat within rounding)
        flat = np.asarray(jnp.abs(l_old - cond.lval) <= 1e-10 * (1.0 + jnp.abs(cond.lval))) & np.asarray(cond.ok)
        converged = converged | np.asarray(stalled) | (flat & (it > 1))
    return EBEState(eta, cond, pred, jac, ok, converged, it)


# --------------------------------------------------------------------------------------------------------------
# The local second-order model of the predictions and the FOCEi objective on it


class Expansion(NamedTuple):
    """Second-order expansion of every subject's predictions around its parameters `phi` `(N, d)`: values
    `(N, M)`, first derivatives `(N, M, d)`, second derivatives `(N, M, d, d)`, of `log f` for observations with a
    log-scale error model (where exponential kinetics are close to linear in log-parameters, and the expansion keeps
    predictions positive), of `f` itself otherwise."""

    phi: Array
    pred: Array
    jac: Array
    hess: Array


def expansion(problem: PopulationProblem, psi, state: EBEState, *, step: float = 1e-3) -> Expansion:
    """The second-order expansion at the EBEs of `state`; second derivatives by central differences of the
    forward-mode Jacobians (`2 d` batched solves: a shift of typical value `k` shifts every subject's `phi_k`).

    Where the forward and backward differences of a derivative disagree by more than half their size, the
    prediction has a kink between them (e.g. an observation at the peak time of a piecewise model, where the OFV
    is not twice differentiable); such entries are set to zero (locally linear) instead of a meaningless large
    difference quotient."""
    d = len(problem.names)
    plus, minus = [], []
    for k in range(d):
        e = np.eye(psi.shape[0])[k] * step
        plus.append(_evaluate(problem, psi + e, state.eta)[1])
        minus.append(_evaluate(problem, psi - e, state.eta)[1])
    return _expansion(problem, psi, state.eta, state.pred, state.jac, plus, minus, step)


@eqx.filter_jit
def _expansion(problem, psi, eta, pred, jac, plus, minus, step):
    cols = []
    for jp, jm in zip(plus, minus):
        fwd, bwd = (jp - jac) / step, (jac - jm) / step
        kink = jnp.abs(fwd - bwd) > 0.5 * jnp.maximum(jnp.abs(fwd), jnp.abs(bwd)) + 1e-8 * jnp.abs(jac) / step
        cols.append(jnp.where(kink | ~jnp.isfinite(fwd + bwd), 0.0, 0.5 * (fwd + bwd)))
    hess = jnp.stack(cols, axis=-1)
    hess = 0.5 * (hess + jnp.swapaxes(hess, -1, -2))
    logm = problem.log_scale_mask()
    f = jnp.maximum(pred, 1e-300)
    g = jnp.where(logm, jnp.log(f), pred)
    jg = jnp.where(logm[..., None], jac / f[..., None], jac)
    tg = jnp.where(logm[..., None, None], hess / f[..., None, None] - jg[..., :, None] * jg[..., None, :], hess)
    return Expansion(problem.phi(problem.unpack(psi), eta), g, jg, tg)


def _surrogate(problem: PopulationProblem, psi, ex: Expansion, eta0, n_newton: int = 8):
    """The FOCEi objective on the second-order expansion `ex`: `(OFV_i (N,), EBEs (N, q))` at `psi`."""
    p = problem.unpack(psi)
    mu = problem.typical_phi(p)
    ridx = np.asarray(problem.random_index, dtype=int)
    om_inv = sl.inverse(p.omega)
    logdet_om = sl.logdet(sl.cholesky(p.omega))
    data = problem.data

    def local(eta, om_inv, sigma, mu_i, phi_i, g, jac, hess, logm, *obs):
        """`l`, its gradient and Hessian in `eta`, and `A`, on the expansion (exact derivatives of the model)."""
        delta = (mu_i - phi_i).at[ridx].add(eta)
        hd = hess @ delta
        gq = g + jac @ delta + 0.5 * hd @ delta
        jgq = jac + hd
        fq = jnp.where(logm, jnp.exp(jnp.minimum(gq, 700.0)), gq)
        je = jnp.where(logm[:, None], fq[:, None] * jgq, jgq)[:, ridx]
        te = hess[:, ridx][:, :, ridx]
        te = jnp.where(logm[:, None, None], fq[:, None, None] * (te + jgq[:, ridx, None] * jgq[:, None, ridx]), te)
        ell, dell, d2ell, w = problem.observation_terms_of(sigma, fq, *obs)
        lval = jnp.sum(ell) + eta @ om_inv @ eta
        g = je.T @ dell + 2.0 * om_inv @ eta
        h = je.T @ (d2ell[:, None] * je) + jnp.einsum("m,mab->ab", dell, te) + 2.0 * om_inv
        a = je.T @ (w[:, None] * je) + om_inv
        return lval, g, h, a

    def one(eta0_i, *subject):
        args = (om_inv, p.sigma, *subject)
        frozen = jax.tree_util.tree_map(lax.stop_gradient, args)

        def body(_, eta):
            l0, g, h, a = local(eta, *frozen)
            pd = jnp.all(jnp.isfinite(sl.cholesky(h)))
            s = -sl.cho_solve(sl.cholesky(jnp.where(pd, h, 2.0 * a)), g)
            s = s * jnp.minimum(1.0, 1.0 / jnp.maximum(jnp.max(jnp.abs(s), initial=0.0), 1e-300))
            s = jnp.where(jnp.all(jnp.isfinite(s)), s, 0.0)
            # backtracking: the first of s, s/2, s/4, s/8 that does not increase l (else stay)
            trial = [eta + s * 0.5**k for k in range(4)]
            values = jnp.stack([local(x, *frozen)[0] for x in trial])
            ok = jnp.isfinite(values) & (values <= l0)
            first = jnp.argmax(ok)
            return jnp.where(jnp.any(ok), jnp.stack(trial)[first], eta)

        eta_star = lax.stop_gradient(lax.fori_loop(0, n_newton, body, lax.stop_gradient(eta0_i)))
        # one Newton step that carries d eta / d psi (the implicit-function derivative at the mode); the choice of
        # matrix is made without derivatives, so that a failed factorisation never leaks NaN into the gradient
        _, g, h, a = local(eta_star, *args)
        pd = jnp.all(jnp.isfinite(sl.cholesky(lax.stop_gradient(h))))
        newton = sl.cho_solve(sl.cholesky(jnp.where(pd, h, 2.0 * a)), g)
        eta_t = eta_star - (newton - lax.stop_gradient(newton))  # the value stays at the mode found
        lval, _, _, a = local(eta_t, *args)
        return lval + logdet_om + sl.logdet(sl.cholesky(a)), eta_t

    return jax.vmap(one)(
        eta0,
        mu,
        ex.phi,
        ex.pred,
        ex.jac,
        ex.hess,
        problem.log_scale_mask(),
        data.dv,
        data.censored,
        data.limit,
        data.mask,
        data.obs_index,
    )


@eqx.filter_jit
def _surrogate_derivatives(problem, psi, ex, eta0):
    """`(OFV, gradient, per-subject gradients (N, p), EBEs)` of the OFV on the expansion (forward mode)."""

    def per_subject(z):
        ofv_i, eta_t = _surrogate(problem, z, ex, eta0)
        return ofv_i, (ofv_i, eta_t)

    gi, (ofv_i, eta_t) = jax.jacfwd(per_subject, has_aux=True)(psi)
    return jnp.sum(ofv_i), jnp.sum(gi, axis=0), gi, eta_t


def surrogate_hessian(
    problem: PopulationProblem, psi, ex: Expansion, eta0, *, step: float = 1e-4, gradient: Any = None
) -> np.ndarray:
    """Hessian of the OFV on the expansion, by differences of its exact gradients: central by default; forward
    (`p` gradients instead of `2 p`) when the gradient at `psi` is given, as in the trust-region model."""
    p = psi.shape[0]
    cols = []
    for k in range(p):
        e = np.eye(p)[k] * step
        gp = _surrogate_derivatives(problem, psi + e, ex, eta0)[1]
        if gradient is not None:
            cols.append(np.asarray((gp - gradient) / step, float))
        else:
            gm = _surrogate_derivatives(problem, psi - e, ex, eta0)[1]
            cols.append(np.asarray((gp - gm) / (2.0 * step), float))
    h = np.stack(cols, axis=1)
    return 0.5 * (h + h.T)


def _trust_region_step(g: np.ndarray, b: np.ndarray, radius: float) -> np.ndarray:
    """Minimise `g'x + x'Bx/2` subject to `|x| <= radius` (eigen-decomposition and bisection on the shift)."""
    lam, vec = np.linalg.eigh(0.5 * (b + b.T))
    gt = vec.T @ g

    def step(mu):
        return -vec @ (gt / (lam + mu))

    lo = max(0.0, -lam.min()) + 1e-12 * max(1.0, abs(lam).max())
    if lam.min() > 0:
        x = step(0.0)
        if np.linalg.norm(x) <= radius:
            return x
        lo = 0.0
    hi = lo + np.linalg.norm(g) / radius + abs(lam).max() + 1.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if np.linalg.norm(step(mid)) > radius:
            lo = mid
        else:
            hi = mid
    return step(hi)


def newton_decrement(g: np.ndarray, b: np.ndarray) -> float:
    """`g' B^-1 g / 2`, or infinity when `B` is not positive definite."""
    try:
        chol = np.linalg.cholesky(0.5 * (b + b.T))
    except np.linalg.LinAlgError:
        return float("inf")
    z = np.linalg.solve(chol, g)
    return 0.5 * float(z @ z)


#: What a FOCEi checkpoint keeps after an outer iteration (besides the iteration number).
_FOCEI_STATE = ("psi", "eta", "ebe_converged", "ebe_iterations", "solves", "radius", "history")


class FOCEiResult(NamedTuple):
    psi: Array
    state: EBEState
    ofv_history: list[float]
    converged: bool
    message: str
    iterations: int
    gradient: np.ndarray
    hessian: np.ndarray
    n_solves: int


def focei(
    problem: PopulationProblem,
    *,
    psi0: Any = None,
    eta0: Any = None,
    max_iter: int = 100,
    tol: float = 1e-4,
    progress: Callable[[str], None] | None = None,
    store: IterationStore | None = None,
) -> FOCEiResult:
    """Minimise the FOCEi OFV over the population parameters (see the module docstring). With `store`, the state
    after each outer iteration is kept (and resumed from), and a requested stop ends the run between iterations."""
    psi = problem.psi0 if psi0 is None else jnp.asarray(psi0)
    n, q = problem.data.n_subjects, len(problem.random)
    eta = jnp.zeros((n, q), dtype=psi.dtype) if eta0 is None else jnp.asarray(eta0)
    t0 = time.perf_counter()
    radius = 0.5
    first = 1
    saved = None if store is None else store.load(_FOCEI_STATE)
    if saved is not None:  # resume after the last finished iteration: the EBEs there and what was computed at them
        psi, eta = jnp.asarray(saved["psi"]), jnp.asarray(saved["eta"])
        pred, jac, ok, cond = _evaluate(problem, psi, eta)
        state = EBEState(eta, cond, pred, jac, ok, saved["ebe_converged"], int(saved["ebe_iterations"]))
        solves, radius, first = int(saved["solves"]), float(saved["radius"]), int(saved["iteration"]) + 1
        history = [float(h) for h in saved["history"]]
    else:
        state = estimate_eta(problem, psi, eta)
        solves = state.iterations + 1
        history = [state.ofv]
    ofv = history[-1]
    if not np.isfinite(ofv):
        bad = [problem.data.ids[i] for i in np.flatnonzero(~np.asarray(state.cond.ok))]
        return FOCEiResult(
            psi,
            state,
            history,
            False,
            f"The OFV is not finite at the initial estimates (subjects "
            f"{bad} failed: the solver stopped or the likelihood is zero).",
            0,
            np.full(psi.shape, np.nan),
            np.full(psi.shape * 2, np.nan),
            solves,
        )
    converged = False
    message = f"stopped after max_iter = {max_iter} iterations without convergence"
    g = np.full(psi.shape, np.nan)
    b = np.full(psi.shape * 2, np.nan)
    it = first - 1
    for it in range(first, max_iter + 1):
        ex = expansion(problem, psi, state)
        solves += 4 * len(problem.names)
        gj = _surrogate_derivatives(problem, psi, ex, state.eta)[1]
        g = np.asarray(gj, float)
        b = surrogate_hessian(problem, psi, ex, state.eta, gradient=gj)
        dec = newton_decrement(g, b)
        if progress is not None:
            progress(
                f"focei: iteration {it}, OFV {ofv:.6f}, decrement "
                f"{dec:.3g}, radius {radius:.3g}, {time.perf_counter() - t0:.1f}s"
            )
        if not np.all(np.isfinite(g)):
            message = "the OFV gradient is not finite"
            break
        if dec < tol and state.converged.all():
            converged = True
            message = f"converged: Newton decrement {dec:.2g} < tol = {tol:g}"
            break
        accepted = False
        for _ in range(12):
            delta = _trust_region_step(g, b, radius)
            psi_try = psi + jnp.asarray(delta)
            value_s, _, _, eta_pred = _surrogate_derivatives(problem, psi_try, ex, state.eta)
            predicted = float(value_s) - ofv
            trial = estimate_eta(problem, psi_try, eta_pred)
            solves += trial.iterations + 1
            ofv_try = trial.ofv
            if np.isfinite(ofv_try) and ofv_try < ofv:
                rho = (ofv_try - ofv) / predicted if predicted < 0 else 0.0
                step_norm = float(np.linalg.norm(delta))
                if rho > 0.75 and step_norm > 0.8 * radius:
                    radius = min(4.0 * radius, 8.0)
                elif rho < 0.25:
                    radius = 0.5 * step_norm
                psi, state, ofv = psi_try, trial, ofv_try
                accepted = True
                break
            radius = 0.25 * float(np.linalg.norm(delta))
            if radius < 1e-8:
                break
        history.append(ofv)
        if not accepted:
            if dec < 100 * tol and state.converged.all():
                converged = True
                message = f"converged: no further decrease possible, Newton decrement {dec:.2g}"
            else:
                message = f"no step decreases the OFV (trust radius {radius:.2g}, Newton decrement {dec:.3g})"
            break
        if store is not None:
            store.after(
                it,
                {
                    "psi": psi,
                    "eta": state.eta,
                    "ebe_converged": state.converged,
                    "ebe_iterations": state.iterations,
                    "solves": solves,
                    "radius": radius,
                    "history": np.asarray(history),
                }
                if store.due(it)
                else None,
            )
    if not state.converged.all():
        bad = [problem.data.ids[i] for i in np.flatnonzero(~state.converged)]
        converged = False
        message += f"; the EBEs of subjects {bad} did not converge"
    return FOCEiResult(psi, state, history, converged, message, it, g, b, solves)


def exact_gradient(problem: PopulationProblem, psi, eta0) -> tuple[np.ndarray, EBEState]:
    """The gradient of the exact FOCEi OFV at `psi` (EBEs re-solved from `eta0`, a new expansion)."""
    state = estimate_eta(problem, psi, eta0)
    ex = expansion(problem, psi, state)
    g = _surrogate_derivatives(problem, psi, ex, state.eta)[1]
    return np.asarray(g, float), state


def covariance_step(
    problem: PopulationProblem, psi, eta, *, method: str = "expansion", step: float = 1e-3
) -> tuple[np.ndarray, np.ndarray, np.ndarray, str]:
    """`(cov, R, S, message)`: `R` the Hessian of the OFV, `S` the sum of outer products of per-subject gradients of
    the OFV, `cov = 2 R^-1` (NaN with a message when `R` is not positive definite). The sandwich estimator
    (NONMEM's default, nlmixr2's `"r,s"`) is `R^-1 S R^-1`.

    `method="expansion"`: `R` is the Hessian of the OFV on the second-order expansion at the estimates (central
    differences of its exact gradients: algebra, no solve); it lacks only the third derivatives of the predictions
    (on the theophylline model its standard errors differ from the exact ones by about 1 %). `method="exact"`:
    central differences of exact gradients, each with re-solved EBEs and a new expansion (`2 p` of them)."""
    p = psi.shape[0]
    state = estimate_eta(problem, psi, eta)
    ex = expansion(problem, psi, state)
    if method == "exact":
        cols = []
        for k in range(p):
            e = np.eye(p)[k] * step
            gp, _ = exact_gradient(problem, psi + e, state.eta)
            gm, _ = exact_gradient(problem, psi - e, state.eta)
            cols.append((gp - gm) / (2.0 * step))
        r = np.stack(cols, axis=1)
        r = 0.5 * (r + r.T)
        how = "R by central differences of exact gradients"
    elif method == "expansion":
        r = surrogate_hessian(problem, psi, ex, state.eta)
        how = "R the Hessian on the second-order expansion at the estimates"
    else:
        raise ValueError(f"`covariance` must be True, 'expansion', 'exact' or False, got {method!r}.")
    gi = np.asarray(_surrogate_derivatives(problem, psi, ex, state.eta)[2], float)
    s = gi.T @ gi
    try:
        np.linalg.cholesky(r)
    except np.linalg.LinAlgError:
        return np.full((p, p), np.nan), r, s, "covariance step failed: the R matrix is not positive definite"
    return 2.0 * np.linalg.inv(r), r, s, f"covariance step: 2 R^-1, {how}"
