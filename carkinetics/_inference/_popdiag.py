"""Diagnostics of a population fit: predictions, residuals (IWRES, WRES, CWRES), NPDE and tables.

- `PRED`: the prediction of the typical subject (`eta = 0`, covariate effects included); `IPRED`: at the EBEs.
- `RES = DV - PRED`, `IRES = DV - IPRED`, `IWRES = (h(DV) - h(IPRED)) / sqrt(V(IPRED))` on the scale `h` of the
  error model.
- `WRES` (first order, at `eta = 0`) and `CWRES` (conditional, Hooker, Staatz, Karlsson 2007, Pharm Res
  24:2187): `C^-1/2 (y - E)` per subject with `E = h(f(eta)) - G eta` and `C = G Omega G' + diag(V)`, `G` the
  derivatives of `h(f)` in `eta`, at `eta = 0` for WRES and at the EBEs for CWRES.
- `NPDE` (Brendel et al. 2006, Pharm Res 23:2036; optional, by simulation): each subject's observations and `K`
  simulated replicates are decorrelated with the replicates' mean and covariance, the prediction discrepancy is
  the fraction of replicates below the observation, mapped through the normal quantile.

Censored observations get NaN residuals (they have no measured value).
"""

from __future__ import annotations

import csv
import os
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import ndtri

from .._core._files import atomic_text_file
from ._popdata import TIME_UNITS
from ._population_model import PopulationProblem


@eqx.filter_jit
def _weighted_residuals(problem: PopulationProblem, psi, eta, pred, jac):
    """`(IWRES-type standardised residuals, conditional weighted residuals)` at `eta` (`eta = 0` gives WRES)."""
    p = problem.unpack(psi)
    data = problem.data
    names = problem.model.observable_names()
    ht = jnp.zeros_like(pred)
    hy = jnp.zeros_like(pred)
    dh = jnp.zeros_like(pred)
    var = jnp.ones_like(pred)
    pos = 0
    for o in names:
        if o not in data.observables:
            continue
        err = problem.errors[names.index(o)]
        k = len(err.parameter_names)
        sel = data.obs_index == names.index(o)
        f_t, d_t = jax.jvp(err.transform, (pred,), (jnp.ones_like(pred),))
        ht = jnp.where(sel, f_t, ht)
        dh = jnp.where(sel, d_t, dh)
        hy = jnp.where(sel, err.transform(jnp.where(data.mask, data.dv, 1.0)), hy)
        var = jnp.where(sel, err.variance(pred, p.sigma[pos : pos + k]), var)
        pos += k
    measured = data.mask & ~data.censored
    iw = jnp.where(measured, (hy - ht) / jnp.sqrt(var), jnp.nan)
    ridx = np.asarray(problem.random_index, dtype=int)
    g = dh[..., None] * jac[:, :, ridx]
    g = jnp.where(measured[..., None], g, 0.0)
    expected = ht - jnp.einsum("nmq,nq->nm", g, eta)
    c = jnp.einsum("nmq,qr,nkr->nmk", g, p.omega, g) + jax.vmap(jnp.diag)(jnp.where(measured, var, 1.0))
    low = jnp.linalg.cholesky(c)
    r = jnp.where(measured, hy - expected, 0.0)
    w = jax.scipy.linalg.solve_triangular(low, r[..., None], lower=True)[..., 0]
    return iw, jnp.where(measured, w, jnp.nan)


def _residual_arrays(problem: PopulationProblem, psi, eta) -> dict[str, np.ndarray]:
    """PRED, IPRED, RES, IRES, IWRES, WRES and CWRES as `(N, M)` arrays (NaN for padding and censored values)."""
    from ._focei import _evaluate

    psi = jnp.asarray(psi)
    eta = jnp.asarray(eta)
    ipred, ijac, _, _ = _evaluate(problem, psi, eta)
    pred, jac0, _, _ = _evaluate(problem, psi, jnp.zeros_like(eta))
    iwres, cwres = _weighted_residuals(problem, psi, eta, ipred, ijac)
    _, wres = _weighted_residuals(problem, psi, jnp.zeros_like(eta), pred, jac0)
    data = problem.data
    measured = np.asarray(data.mask & ~data.censored)
    dv = np.where(measured, np.asarray(data.dv), np.nan)
    out = {
        "PRED": np.asarray(pred),
        "IPRED": np.asarray(ipred),
        "RES": dv - np.asarray(pred),
        "IRES": dv - np.asarray(ipred),
        "IWRES": np.asarray(iwres),
        "WRES": np.asarray(wres),
        "CWRES": np.asarray(cwres),
    }
    mask = np.asarray(data.mask)
    return {k: np.where(mask, v, np.nan) for k, v in out.items()}


def npde(fit: Any, key: Any, n_samples: int = 500) -> np.ndarray:
    """Normalised prediction distribution errors `(N, M)` (NaN for padding and censored values) from `n_samples`
    simulated replicates of the data set at the fit's estimates (Brendel et al. 2006)."""
    problem = fit.problem
    params = problem.unpack(jnp.asarray(fit.psi))
    data = problem.data
    sims = []
    for k in range(n_samples):
        sim, _ = problem.simulate(jax.random.fold_in(key, k), params)
        sims.append(np.asarray(sim.dv))
    ysim = np.stack(sims)  # (K, N, M)
    measured = np.asarray(data.mask & ~data.censored)
    y = np.asarray(data.dv)
    out = np.full(y.shape, np.nan)
    for i in range(data.n_subjects):
        sel = measured[i]
        if not sel.any():
            continue
        s = ysim[:, i, sel]
        mean = s.mean(axis=0)
        cov = np.cov(s, rowvar=False).reshape(sel.sum(), sel.sum())
        try:
            low = np.linalg.cholesky(cov)
        except np.linalg.LinAlgError:
            low = np.diag(np.sqrt(np.clip(np.diag(cov), 1e-300, None)))
        dec_obs = np.linalg.solve(low, y[i, sel] - mean)
        dec_sim = np.linalg.solve(low, (s - mean).T).T
        pde = (np.sum(dec_sim < dec_obs[None, :], axis=0) + 0.5) / (n_samples + 1)
        out[i, sel] = np.asarray(ndtri(jnp.asarray(pde)))
    return out


def population_diagnostics(fit: Any, *, npde_key: Any = None, npde_samples: int = 500) -> dict[str, np.ndarray]:
    """One row per observation: `ID, TIME` (in the data's time unit), `DV, CENS, PRED, IPRED, RES, IRES, IWRES,
    WRES, CWRES`, optionally `NPDE`, the EBEs `ETA_<parameter>` and `LINE` (line in the source table).

    **Example:** `table = ck.population_diagnostics(fit)`; `table["CWRES"]` has one entry per observation.
    """
    problem = fit.problem
    data = problem.data
    res = _residual_arrays(problem, fit.psi, fit.eta)
    if npde_key is not None:
        res["NPDE"] = npde(fit, npde_key, npde_samples)
    mask = np.asarray(data.mask)
    rows, cols = np.nonzero(mask)
    table: dict[str, np.ndarray] = {
        "ID": np.asarray([data.ids[i] for i in rows]),
        "TIME": np.asarray(data.time)[rows, cols] / TIME_UNITS[data.time_unit],
        "DV": np.asarray(data.dv)[rows, cols],
        "CENS": np.asarray(data.censored)[rows, cols].astype(int),
    }
    for k, v in res.items():
        table[k] = v[rows, cols]
    for k, n in enumerate(problem.random):
        table[f"ETA_{n}"] = np.asarray(fit.eta)[rows, k]
    table["LINE"] = np.asarray(data.lines)[rows, cols]
    return table


def write_table(table: dict[str, np.ndarray], path: str | os.PathLike) -> None:
    """Write a column table (dict of equal-length arrays) as CSV (atomically: temporary file, then rename)."""
    keys = list(table)
    n = len(next(iter(table.values()))) if table else 0
    with atomic_text_file(path, newline="") as fh:
        w = csv.writer(fh)
        w.writerow(keys)
        for r in range(n):
            w.writerow([_fmt(table[k][r]) for k in keys])


def _fmt(x: Any) -> Any:
    if isinstance(x, (float, np.floating)):
        return "." if not np.isfinite(x) else f"{float(x):.8g}"
    return x.item() if isinstance(x, np.generic) else x
