"""Batch-last linear algebra shared by the ensemble methods: batched Jacobians (coloured JVPs), small-matrix LU
factorisations and solves, the block-triangular solver and the implicit differentiation rule of linear solves.

Layout: matrices are `(S, S, N)` and vectors `(S, N)` (batch-last), so every operation is one vector operation
over the `N` members.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .._core._custom_types import Array, Float
from ._method import BatchedField

#: Matrices up to this size are factorised with a Python-unrolled elimination (fastest to run, longer to compile);
#: larger ones with a `fori_loop` over columns (compile time independent of the size, about three times the flops).
UNROLL_MAX = 32
#: The same threshold for the triangular solves (cheap per column; looping them costs little at run time).
UNROLL_MAX_SOLVE = 12


def batched_lu_factor(a: Float[Array, "S S N"]) -> tuple[Array, Array]:
    """LU factorisation with partial pivoting of `N` small matrices stored batch-last (`a[i, j, n]`).

    Unrolled over the (static, small) matrix size; every operation is vectorised over the batch, which is
    far faster on CPU and GPU than a loop of LAPACK calls on 10 x 10 matrices. Right-looking elimination on a
    shrinking set of rows: the pivot row leaves the set (it is row `k` of the factors), the first remaining row takes
    its place, and the rest are updated with concatenations, so the compiled program has no scatters (SLE model,
    Rodas5 solve: ~1 s less XLA compile than in-place row updates, the same bits).

    **Returns:** `(lu, perm)`: the packed factors (unit lower `L` below the diagonal, `U` on and above it)
    and the row permutation `(S, N)` (row `i` of `P a` is row `perm[i]` of `a`).
    """
    s = a.shape[0]
    if s > UNROLL_MAX:
        return _lu_factor_loop(a)
    m = a  # (rows not yet pivoted, S, N): columns < k hold multipliers, columns >= k the Schur complement
    idx = jnp.broadcast_to(jnp.arange(s)[:, None], (s, a.shape[2]))  # their original row numbers
    lu_rows, perm_rows = [], []
    for k in range(s - 1):
        p = jnp.argmax(jnp.abs(m[:, k, :]), axis=0)  # (N,) pivot among the remaining rows
        pivot = jnp.take_along_axis(m, p[None, None, :], axis=0)[0]  # (S, N)
        lu_rows.append(pivot)
        perm_rows.append(jnp.take_along_axis(idx, p[None, :], axis=0)[0])
        is_p = jnp.arange(s - k)[:, None] == p[None, :]
        rest = jnp.where(is_p[:, None, :], m[0][None], m)[1:]  # the first row moves into the pivot's place
        idx = jnp.where(is_p, idx[0][None], idx)[1:]
        mult = rest[:, k, :] / pivot[k][None, :]
        m = jnp.concatenate(
            [rest[:, :k], mult[:, None, :], rest[:, k + 1 :] - mult[:, None, :] * pivot[None, k + 1 :]], axis=1
        )
    lu_rows.append(m[0])
    perm_rows.append(idx[0])
    return jnp.stack(lu_rows), jnp.stack(perm_rows)


def _lu_factor_loop(a):
    s, _, n = a.shape
    rows = jnp.arange(s)
    perm0 = jnp.broadcast_to(rows[:, None], (s, n))

    def column(k, carry):
        a, perm = carry
        col = jnp.where(rows[:, None] >= k, jnp.abs(a[:, k, :]), -1.0)
        p = jnp.argmax(col, axis=0)  # (N,)
        row_k, row_p = a[k], jnp.take_along_axis(a, p[None, None, :], axis=0)[0]
        is_k = rows[:, None] == k
        is_p = rows[:, None] == p[None, :]
        a = jnp.where(is_k[:, None, :], row_p[None], jnp.where(is_p[:, None, :], row_k[None], a))
        pk, pp = perm[k], jnp.take_along_axis(perm, p[None, :], axis=0)[0]
        perm = jnp.where(is_k, pp[None], jnp.where(is_p, pk[None], perm))
        below = rows[:, None] > k  # (S, 1)
        mult = jnp.where(below, a[:, k, :] / a[k, k][None, :], 0.0)  # (S, N)
        u_row = jnp.where(below, a[k], 0.0)  # row k right of the diagonal, indexed by column
        a = a - mult[:, None, :] * u_row[None, :, :]
        a = jnp.where(below[:, :, None] & is_k[None, :, :], mult[:, None, :], a)
        return a, perm

    return jax.lax.fori_loop(0, s - 1, column, (a, perm0))


#: Members per LAPACK call on CPU (see `lapack_lu_factor`).
_LAPACK_CHUNK = 4


def lapack_lu_factor(a: Float[Array, "S S N"]) -> tuple[Array, Array]:
    """The same factorisation as `batched_lu_factor` by XLA's batched LU (LAPACK `getrf` per member on CPU).

    For more than ~16 states this is faster than the batch-vectorised elimination (the elimination's work grows with
    the cube of the size on every member) and compiles in constant time.
    Differentiable like any `jax.lax.linalg.lu`.
    """
    s, _, n = a.shape
    if jax.default_backend() != "cpu":
        lu, _, perm = jax.lax.linalg.lu(jnp.moveaxis(a, 2, 0))
        return jnp.moveaxis(lu, 0, 2), perm.T
    # On CPU, in chunks of `_LAPACK_CHUNK` members: larger batched calls go through XLA's parallel path, which is
    # slower here and deadlocked when several host devices (sharded ensembles) called it at once.
    c = _LAPACK_CHUNK
    n_pad = -(-n // c) * c
    mats = jnp.moveaxis(a, 2, 0)
    mats = jnp.concatenate([mats, jnp.broadcast_to(jnp.eye(s, dtype=a.dtype), (n_pad - n, s, s))])
    lu, perm = jax.lax.map(lambda m: jax.lax.linalg.lu(m)[::2], mats.reshape((n_pad // c, c, s, s)))
    return jnp.moveaxis(lu.reshape((n_pad, s, s))[:n], 0, 2), perm.reshape((n_pad, s))[:n].T


def batched_lu_solve(lu: Array, perm: Array, b: Float[Array, "S N"]) -> Float[Array, "S N"]:
    """Solve `a x = b` for every member, given `batched_lu_factor(a)`."""
    s = lu.shape[0]
    x = jnp.take_along_axis(b, perm, axis=0)
    if s > UNROLL_MAX_SOLVE:
        rows = jnp.arange(s)[:, None]

        def fwd(j, x):
            return x - jnp.where(rows > j, lu[:, j, :], 0.0) * x[j][None, :]

        def bwd(i, x):
            j = s - 1 - i
            xj = x[j] / lu[j, j]
            x = jnp.where(rows == j, xj[None, :], x)
            return x - jnp.where(rows < j, lu[:, j, :], 0.0) * xj[None, :]

        return jax.lax.fori_loop(0, s, bwd, jax.lax.fori_loop(0, s - 1, fwd, x))
    for j in range(s - 1):  # forward substitution with the unit lower factor
        x = x.at[j + 1 :].add(-lu[j + 1 :, j, :] * x[j][None, :])
    for j in range(s - 1, -1, -1):  # back substitution with the upper factor
        xj = x[j] / lu[j, j]
        x = x.at[j].set(xj)
        if j > 0:
            x = x.at[:j].add(-lu[:j, j, :] * xj[None, :])
    return x


def batched_jacobian(f: BatchedField, t: Array, y: Array, pattern=None) -> tuple[Array, Array, Array]:
    """`f(t, y)`, the per-member Jacobian `df/dy` `(S, S, N)` and `df/dt` `(S, N)` by forward-mode AD.

    The members are independent, so one JVP with the tangent `e_k` for every member gives column `k` of all
    `N` Jacobians at once: `S + 1` JVPs in total, vectorised with `vmap`. With a structural `pattern` (`(S, S)`
    bool, a superset of the non-zeros, e.g. from `_sparsity.jacobian_pattern`) columns that share no row are
    seeded together (greedy column colouring, Curtis-Powell-Reid) and separated again by the pattern: the SLE
    model needs 13 JVPs instead of 29, the reference workload 4 instead of 9.
    """
    s, n = y.shape
    f0, f_lin = jax.linearize(f, t, y)
    # Without a pattern every column is its own colour (identity seeds).
    pattern = np.ones((s, s), bool) if pattern is None else np.asarray(pattern, bool)
    colour = column_colouring(pattern)
    seeds = np.zeros((int(colour.max()) + 1, s), y.dtype)
    seeds[colour, np.arange(s)] = 1.0
    seeds = jnp.broadcast_to(jnp.asarray(seeds)[:, :, None], seeds.shape + (n,))
    comp = jax.vmap(lambda e: f_lin(jnp.zeros_like(t), e))(seeds)  # comp[c] = sum of the columns of colour c
    jac = jnp.where(jnp.asarray(pattern)[:, :, None], jnp.moveaxis(comp[colour], 0, 1), 0.0)
    f_t = f_lin(jnp.ones_like(t), jnp.zeros_like(y))
    return f0, jac, f_t


def column_colouring(pattern: np.ndarray) -> np.ndarray:
    """Greedy colouring of the columns of a boolean `(S, S)` pattern: columns of one colour share no row.

    Columns are visited densest first (largest-first ordering); the number of colours is at least the largest number
    of entries in a row, which it reaches on the library's models.
    """
    s = pattern.shape[1]
    colour = np.full(s, -1, int)
    rows_of = []
    for j in np.argsort(-pattern.sum(axis=0), kind="stable"):
        for c, rows in enumerate(rows_of):
            if not (rows & pattern[:, j]).any():
                colour[j], rows_of[c] = c, rows | pattern[:, j]
                break
        else:
            colour[j] = len(rows_of)
            rows_of.append(pattern[:, j].copy())
    return colour


def implicit_solver(
    w: Float[Array, "S S N"], make_solve: Callable[[Array], Callable[[Array], Array]]
) -> Callable[[Array], Array]:
    """`solve(b)` for `w x = b` whose derivatives follow from `x = w^-1 b`, not from the factorisation's arithmetic.

    `make_solve(w)` factorises `w` and returns its solve; here it sees `w` without derivatives, and the JVP of a
    solve is `w^-1 (db - dw x)` by the same factors (one more solve per tangent; reverse mode transposes it into one
    transposed solve and an outer product). Differentiating the pivoted elimination itself instead repeats and
    transposes all of its operations: the SLE model's population gradient (Rodas5) spent most of its time there.
    """
    # The factors enter as an explicit (non-differentiated) argument: custom rules cannot close over traced values.
    b0 = jnp.zeros(w.shape[:1] + w.shape[2:], w.dtype)
    solve_c = eqx.filter_closure_convert(make_solve(jax.lax.stop_gradient(w)), b0)

    @eqx.filter_custom_jvp
    def solve(wb, solve_c):
        return solve_c(wb[1])

    @solve.def_jvp
    def solve_jvp(primals, tangents):
        (_, b), solve_c = primals
        dw, db = tangents[0]
        x = solve_c(b)
        rhs = jnp.zeros_like(x) if db is None else db
        if dw is not None:
            rhs = rhs - jnp.sum(dw * x[None, :, :], axis=1)
        return x, solve_c(rhs)

    return lambda b: solve((w, b), solve_c)


def _block_lapack_min() -> int:
    """The smallest diagonal block that `block_lu_solver(..., "auto")` factorises with LAPACK instead of elimination.

    CPU: 16 (LAPACK wins on larger blocks, vectorised elimination on smaller ones). Accelerators: 12 (both run a
    13-state block at the same speed and cuSOLVER compiles faster). `benchmarks/gpu_rodas5_linear_solvers.py`
    measures the crossover.
    """
    return 16 if jax.default_backend() == "cpu" else 12


def block_lu_solver(w: Float[Array, "S S N"], pattern, kind: str) -> Callable[[Array], Array]:
    """`solve(b)` for `w x = b` (every member), using the block-triangular structure of a static sparsity `pattern`.

    `pattern` (`(S, S)` bool, a superset of `w`'s non-zeros, e.g. `I` plus the Jacobian's structural pattern from
    `_sparsity.jacobian_pattern`) is permuted to block lower triangular form (strongly connected components in
    dependency order); only the diagonal blocks are factorised (partial pivoting within each block, by `kind`:
    `"lapack"` or `"vectorized"`, see `lapack_lu_factor`; `"auto"`: LAPACK from `_block_lapack_min()` states), single
    states are divisions, and a solve is a block forward substitution over levels of independent blocks (one vector
    operation per level for the single states, plus the couplings to earlier blocks gathered once per factorisation).
    The SLE model (29 states) has blocks of 13, 3 and 13 x 1.
    """
    from ._sparsity import block_levels, block_triangular

    s = w.shape[0]
    order, blocks = block_triangular(np.asarray(pattern))
    levels = block_levels(np.asarray(pattern), order, blocks)
    pp = np.asarray(pattern)[np.ix_(order, order)]
    wp = w[order][:, order]
    plan = []
    for lv in levels:
        rows = [i for b in lv for i in range(*blocks[b])]
        rowset = set(rows)
        cols = [j for j in range(s) if j not in rowset and pp[rows, j].any()]  # couplings (solved in earlier levels)
        coupling = wp[np.asarray(rows)][:, np.asarray(cols)] if cols else None  # (R, C, N)
        singles = [blocks[b][0] for b in lv if blocks[b][1] - blocks[b][0] == 1]
        diag = wp[np.asarray(singles), np.asarray(singles)] if singles else None  # (len(singles), N)
        multi = []
        for b in lv:
            a, e = blocks[b]
            if e - a > 1:
                lapack = kind == "lapack" or (kind == "auto" and e - a >= _block_lapack_min())
                factor = lapack_lu_factor if lapack else batched_lu_factor
                multi.append((a, e, factor(wp[a:e, a:e])))
        plan.append((rows, cols, coupling, singles, diag, multi))
    inverse = np.argsort(order)

    def solve(b):
        bp = b[order]
        x: list[Any] = [None] * s
        for rows, cols, coupling, singles, diag, multi in plan:
            r = bp[np.asarray(rows)]
            if cols:
                r = r - sum(coupling[:, k, :] * x[j][None, :] for k, j in enumerate(cols))
            where = {i: k for k, i in enumerate(rows)}
            if singles:
                xs = r[np.asarray([where[i] for i in singles])] / diag
                for k, i in enumerate(singles):
                    x[i] = xs[k]
            for a, e, (lu, perm) in multi:
                xb = batched_lu_solve(lu, perm, r[where[a] : where[a] + (e - a)])
                for k in range(e - a):
                    x[a + k] = xb[k]
        return jnp.stack(x)[inverse]

    return solve
