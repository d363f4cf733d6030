"""`EnsembleRodas5`: the Rodas5 Rosenbrock method (stiff, L-stable) in batch-last layout."""

from __future__ import annotations

from typing import ClassVar

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from ._linalg import (
    _lu_factor_loop,
    batched_jacobian,
    batched_lu_factor,
    batched_lu_solve,
    block_lu_solver,
    implicit_solver,
    lapack_lu_factor,
)
from ._method import AbstractEnsembleMethod
from ._sparsity import jacobian_pattern

# Rodas5 (Di Marzo 1993) in the transformed form of Hairer & Wanner (1996, Sec. IV.7): with
# W = I / (h gamma) - J,   W u_i = f(t + c_i h, y + sum_j a_ij u_j) + sum_j (C_ij / h) u_j + d_i h f_t,
# y1 = y + sum_j a_6j u_j + u_6 + u_7 + u_8 (stiffly accurate), error estimate u_8.
_GAMMA = 0.19
_A = (
    (2.0,),
    (3.040894194418781, 1.041747909077569),
    (2.576417536461461, 1.622083060776640, -0.9089668560264532),
    (2.760842080225597, 1.446624659844071, -0.3036980084553738, 0.2877498600325443),
    (-14.09640773051259, 6.925207756232704, -41.47510893210728, 2.343771018586405, 24.13215229196062),
)
_C = (
    (-10.31323885133993,),
    (-21.04823117650003, -7.234992135176716),
    (32.22751541853323, -4.943732386540191, 19.44922031041879),
    (-20.69865579590063, -8.816374604402768, 1.260436877740897, -0.7495647613787146),
    (-46.22004352711257, -17.49534862857472, -289.6389582892057, 93.60855400400906, 318.3822534212147),
    (
        34.20013733472935,
        -14.15535402717690,
        57.82335640988400,
        25.83362985412365,
        1.408950972071624,
        -6.551835421242162,
    ),
    (
        42.57076742291101,
        -13.80770672017997,
        93.98938432427124,
        18.77919633714503,
        -31.58359187223370,
        -6.685968952921985,
        -5.810979938412932,
    ),
)
_CT = (0.38, 0.3878509998321533, 0.4839718937873840, 0.4570477008819580)  # stage times c_2..c_5
_D = (_GAMMA, -0.1823079225333714636, -0.319231832186874912, 0.3449828624725343, -0.377417564392089818)
# Dense output: y(theta) = (1 - theta) y0 + theta (y1 + (1 - theta) (K1 + theta (K2 + theta K3))), K_r = sum_j H_rj u_j.
_H = (
    (
        27.354592673333357,
        -6.925207756232857,
        26.40037733258859,
        0.5635230501052979,
        -4.699151156849391,
        -1.6008677469422725,
        -1.5306074446748028,
        -1.3929872940716344,
    ),
    (
        44.19024239501722,
        1.3677947663381929e-13,
        202.93261852171622,
        -35.5669339789154,
        -181.91095152160645,
        3.4116351403665033,
        2.5793540257308067,
        2.2435122582734066,
    ),
    (
        -44.0988150021747,
        -5.755396159656812e-13,
        -181.26175034586677,
        56.99302194811676,
        183.21182741427398,
        -7.480257918273637,
        -5.792426076169686,
        -5.32503859794143,
    ),
)


def _full_tableau():
    a = np.zeros((8, 8))
    c = np.zeros((8, 8))
    for i, row in enumerate(_A):
        a[i + 1, : len(row)] = row
    a[6, :5], a[6, 5] = _A[4], 1.0  # stage 7 at y6 + u6
    a[7, :5], a[7, 5], a[7, 6] = _A[4], 1.0, 1.0  # stage 8 at y6 + u6 + u7
    for i, row in enumerate(_C):
        c[i + 1, : len(row)] = row
    ct = np.array((0.0,) + _CT + (1.0, 1.0, 1.0))
    d = np.array(_D + (0.0, 0.0, 0.0))
    m = np.concatenate([np.array(_A[4]), [1.0, 1.0, 1.0]])
    return a, c, ct, d, m


_A_FULL, _C_FULL, _CT_FULL, _D_FULL, _M = _full_tableau()


class EnsembleRodas5(AbstractEnsembleMethod):
    """Rodas5: an 8-stage, order 5(4), stiffly accurate and L-stable Rosenbrock method for stiff ensembles.

    Each step forms every member's Jacobian `df/dy` (and `df/dt`) by forward-mode AD (batched JVPs, one per colour
    of the Jacobian's structural pattern plus one for `df/dt`: 14 for the 29-state SLE model),
    factorises `I / (h gamma) - J` once per member (by default only the diagonal blocks of its block-triangular
    form, see `linear_solver`; partial pivoting) and solves 8 linear systems with it; no Newton
    iterations. Dense output is the method's own 4th-order interpolant.
    Use it with [`carkinetics.simulate_ensemble`][] when time scales differ by orders of magnitude (drug PK
    in hours, cytokines in minutes, B-cell reconstitution in months).

    **Example:** `ck.simulate_ensemble(models, regimen, ts, solver=ck.EnsembleRodas5(slots=60))`.

    ??? cite "Reference"

        Di Marzo G. Rodas5(4) - Methodes de Rosenbrock d'ordre 5(4) adaptees aux problemes
        differentiels-algebriques. Master's thesis, University of Geneva, 1993. Coefficients and the
        transformed formulation as in Hairer E, Wanner G. Solving Ordinary Differential Equations II,
        2nd ed., Springer 1996, Sec. IV.7; dense output coefficients as in OrdinaryDiffEq.jl (Rodas5).
    """

    error_order: ClassVar[int] = 5
    #: Save slots per step used by `simulate_ensemble` when `saves_per_step=None`: Rosenbrock steps are long and
    #: costly, so a step may cover several save times (8 keeps ~300 steps on the SLE model with daily saves).
    default_saves_per_step: ClassVar[int] = 8
    #: How `I / (h gamma) - J` is factorised: `"lapack"` (XLA's batched LU: LAPACK getrf per member on CPU,
    #: cuSOLVER/cuBLAS batched on GPU), `"vectorized"` (elimination unrolled over the states, vectorised over the
    #: batch; fastest for small systems), `"loop"` (the same in a `fori_loop`: compile time independent of the size),
    #: `"block"` (the model's structural Jacobian pattern, read from its jaxpr, permuted to block lower triangular
    #: form: only the diagonal blocks are factorised, vectorised below 16 states on CPU and 12 on accelerators, LAPACK
    #: from there, and solves are block forward substitutions; `"block_lapack"`: LAPACK for every block), or `"auto"`
    #: (= `"block"`, on every backend). All use partial pivoting (within each block for the block solvers, which is
    #: exact: the off-diagonal blocks only couple to earlier blocks). The block solvers factorise far fewer entries on
    #: models whose states couple sparsely (`benchmarks/gpu_rodas5_linear_solvers.py` compares the choices).
    linear_solver: str = eqx.field(static=True, default="auto")

    def member_floats(self, n_states: int) -> int:
        # The iteration matrix W and its factors (S x S) besides the stages and the dense output.
        return super().member_floats(n_states) + n_states * n_states

    def __check_init__(self):
        if self.linear_solver not in ("auto", "lapack", "vectorized", "loop", "block", "block_lapack"):
            raise ValueError(
                "`linear_solver` must be 'auto', 'lapack', 'vectorized', 'loop', 'block' or "
                "'block_lapack', got "
                f"{self.linear_solver!r}."
            )

    def init(self, f, t, y, f0):
        del f, t, y, f0  # Rosenbrock steps re-evaluate f and its Jacobian at the start of every step
        return jnp.zeros(())

    def step(self, f, t, y, dt, cache):
        h = dt[None, :]
        dtype = y.dtype
        # The Jacobian's structural pattern (from the model's jaxpr, at trace time): coloured JVPs, and on CPU only the
        # diagonal blocks of its block-triangular form are factorised.
        pattern = jacobian_pattern(f, t, y)
        f0, jac, f_t = batched_jacobian(f, t, y, pattern)
        w = jnp.eye(y.shape[0], dtype=dtype)[:, :, None] / (_GAMMA * h)[None] - jac
        kind = self.linear_solver
        if kind == "auto":
            kind = "block"

        def make_solve(w):
            if kind.startswith("block"):
                return block_lu_solver(w, pattern, "lapack" if kind == "block_lapack" else "auto")
            if kind == "lapack":
                lu, perm = lapack_lu_factor(w)
            elif kind == "loop":
                lu, perm = _lu_factor_loop(w)
            else:
                lu, perm = batched_lu_factor(w)
            return lambda rhs: batched_lu_solve(lu, perm, rhs)

        # Derivatives of the solves by the implicit rule (the factorisation is not differentiated).
        solve = implicit_solver(w, make_solve)
        a_full, c_full = jnp.asarray(_A_FULL, dtype), jnp.asarray(_C_FULL, dtype)
        ct_full, d_full = jnp.asarray(_CT_FULL, dtype), jnp.asarray(_D_FULL, dtype)
        del f0  # stage 1 re-evaluates f(t, y) inside the loop: one trace of the model and of `solve` for all stages

        # All 8 stages in a `fori_loop` (stage 1: c = a = C = 0, d = gamma, so rhs = f(t, y) + gamma h f_t).
        def stage(i, u):
            fi = f(t + ct_full[i] * dt, y + jnp.tensordot(a_full[i], u, axes=1))
            rhs = fi + d_full[i] * h * f_t + jnp.tensordot(c_full[i], u, axes=1) / h
            return u.at[i].set(solve(rhs))

        u = jax.lax.fori_loop(0, 8, stage, jnp.zeros((8,) + y.shape, dtype))
        y1 = y + jnp.tensordot(jnp.asarray(_M, dtype), u, axes=1)
        dense = tuple(jnp.tensordot(jnp.asarray(_H, dtype), u, axes=1))
        return y1, u[7], dense, cache

    def interpolate(self, dense, y0, y1, theta):
        k1, k2, k3 = dense
        th = theta[None, :]
        return (1 - th) * y0 + th * (y1 + (1 - th) * (k1 + th * (k2 + th * k3)))
