"""Structural Jacobian sparsity (`_ensemble._sparsity`) and the block-triangular LU behind `EnsembleRodas5`.

Truth tests: the pattern of the 9-state reference workload equals the one read off its equations by hand; for every
library model the pattern contains every non-zero of `jax.jacfwd` at random states; the block solver matches
`numpy.linalg.solve` to round-off (1e-12), including blocks that need pivoting.
"""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import rel_err

import carkinetics as ck
from carkinetics._ensemble._linalg import batched_jacobian, block_lu_solver, column_colouring, implicit_solver
from carkinetics._ensemble._sparsity import block_levels, block_triangular, jacobian_pattern
from carkinetics.models import OneCompartmentPK, Stein2019CK, TwoCompartmentPK
from carkinetics.models.reference_workload import ReferenceWorkload
from carkinetics.models.sle import load_preset

SEED = 20261126


def _batched_field(model, n=3):
    mb = jax.tree_util.tree_map(lambda x: jnp.broadcast_to(x, (n,) + jnp.shape(x)) if eqx.is_array(x) else x, model)
    vf = eqx.filter_vmap(lambda m, t, y: m.vector_field_flat(t, y, None), in_axes=(eqx.if_array(0), 0, 1), out_axes=1)
    return lambda t, y: vf(mb, t, y)


def _pattern(model, n=3):
    s = len(model.state_names())
    return jacobian_pattern(_batched_field(model, n), jnp.zeros(n), jnp.ones((s, n)))


def test_reference_workload_pattern_is_exact():
    # Dependencies read off `shared/bench/reference_workload.py` (state: the states its derivative uses).
    uses = {
        "ce": "ce b il7",
        "cm": "ce cm",
        "b": "b ce cy",
        "pb": "b pb ce",
        "ll": "ll",
        "ab": "pb ll ab",
        "il6": "ce b il6",
        "cy": "cy",
        "il7": "il7 b ce cm",
    }
    names = list(ReferenceWorkload().state_names())
    expected = np.zeros((9, 9), bool)
    for state, deps in uses.items():
        for d in deps.split():
            expected[names.index(state), names.index(d)] = True
    assert np.array_equal(_pattern(ReferenceWorkload()), expected)


@pytest.mark.parametrize(
    "model",
    [
        ReferenceWorkload(),
        OneCompartmentPK(),
        TwoCompartmentPK(),
        Stein2019CK(),
        load_preset("human"),
        load_preset("mouse_nzbw"),
    ],
    ids=["reference", "one_cpt", "two_cpt", "stein", "sle_human", "sle_mouse"],
)
def test_pattern_contains_every_nonzero_of_the_jacobian(model):
    # Random positive states (log-uniform over 6 decades) and times: every non-zero Jacobian entry must be in the
    # structural pattern (a missed entry would make Rodas5 solve with a wrong matrix).
    rng = np.random.default_rng(SEED)
    s = len(model.state_names())
    pattern = _pattern(model)
    seen = np.zeros((s, s), bool)
    for _ in range(20):
        y = jnp.asarray(10.0 ** rng.uniform(-3, 3, s))
        t = float(rng.uniform(-5, 365))
        jac = np.asarray(jax.jacfwd(lambda yy, t=t: model.vector_field_flat(t, yy, None))(y))
        seen |= jac != 0
    assert not np.any(seen & ~pattern)
    assert np.all(np.diag(pattern))


def test_data_movement_follows_elements_exactly():
    # Reversal, padding and a where over the reversed state (the shared element maps of `_core._jaxpr`): each output
    # depends on exactly the states it is built from (plus the diagonal, always kept).
    def f(t, y):  # y (4, N)
        del t
        shifted = jnp.pad(y[::-1], ((1, 0), (0, 0)))[:4]  # (0, y3, y2, y1)
        return jnp.where(y > 1.0, shifted, jnp.exp(y))

    expected = np.eye(4, dtype=bool)
    expected[1, 3] = expected[2, 2] = expected[3, 1] = True
    assert np.array_equal(jacobian_pattern(f, jnp.zeros(2), jnp.ones((4, 2))), expected)


def test_unknown_primitives_fall_back_to_dense_dependencies():
    # A matrix product and a `lax.cond` have no exact rule: outputs depend on every state their inputs depend on.
    a = jnp.array([[1.0, 0.0, 0.0], [0.0, 2.0, 0.0], [0.0, 0.0, 3.0]])

    def f(t, y):  # y (3, N)
        z = jnp.einsum("ij,jn->in", a, y)
        w = jax.lax.cond(t[0] > 0, lambda u: u * 2.0, lambda u: u, y[2])
        return jnp.stack([z[0], z[1], w])

    pattern = jacobian_pattern(f, jnp.zeros(2), jnp.ones((3, 2)))
    assert np.all(pattern[:2])  # the product: every state (conservative)
    assert pattern[2, 2]


def test_sle_model_block_triangular_form():
    # The human SLE model (v2, 38 states): one block of 22 states (T/NK cells, IL-7/15, the anti-CAR response, CAR-T
    # pools, B lineage and plasma cells, anti-dsDNA, myeloid activation and the tolerance loop), one of 3 (fludarabine
    # PK) and 13 single states; permuted, the pattern is block lower triangular.
    pattern = _pattern(load_preset("human"))
    order, blocks = block_triangular(pattern)
    assert sorted(order.tolist()) == list(range(38))
    assert sorted(e - a for a, e in blocks) == [1] * 13 + [3, 22]
    pp = pattern[np.ix_(order, order)]
    for a, e in blocks:
        assert not pp[a:e, e:].any()
    levels = block_levels(pattern, order, blocks)
    assert sorted(b for lv in levels for b in lv) == list(range(len(blocks)))


def test_column_colouring_is_valid_and_tight_on_library_models():
    # Columns of one colour share no row; on the SLE model (largest row: 23 entries) and the reference workload
    # (4) the greedy colouring reaches that lower bound.
    for model, expected in [(load_preset("human"), 23), (ReferenceWorkload(), 4)]:
        pattern = _pattern(model)
        colour = column_colouring(pattern)
        assert colour.max() + 1 == expected == pattern.sum(axis=1).max()
        for c in range(expected):
            assert pattern[:, colour == c].sum(axis=1).max() <= 1


@pytest.mark.parametrize("model", [ReferenceWorkload(), load_preset("human")], ids=["reference", "sle_human"])
def test_coloured_jacobian_equals_dense_jacobian(model):
    # Coloured JVPs separated by the pattern give the same Jacobian (and f, df/dt) as one JVP per state, at random
    # states and times per member, to round-off (1e-13 relative to each matrix's largest entry).
    rng = np.random.default_rng(SEED)
    s, n = len(model.state_names()), 4
    f = _batched_field(model, n)
    t = jnp.asarray(rng.uniform(-5, 365, n))
    y = jnp.asarray(10.0 ** rng.uniform(-3, 3, (s, n)))
    dense = batched_jacobian(f, t, y)
    coloured = batched_jacobian(f, t, y, _pattern(model, n))
    for a, b in zip(coloured, dense):
        assert float(jnp.max(jnp.abs(a - b))) <= 1e-13 * float(jnp.max(jnp.abs(b)))
    assert float(jnp.max(jnp.abs(dense[1]))) > 0


@pytest.mark.parametrize("kind", ["auto", "vectorized", "lapack"])
def test_block_lu_solver_matches_dense_solve(kind):
    # Random block-triangular systems (blocks of 3, 1, 2, 1 in scrambled state order, 5 members), one block with a
    # zero on its diagonal (needs pivoting within the block): x must match numpy.linalg.solve to 1e-12.
    rng = np.random.default_rng(SEED)
    s, n = 7, 5
    blocks = [[0, 1, 2], [3], [4, 5], [6]]
    lower = np.zeros((s, s), bool)
    for bi, blk in enumerate(blocks):
        for cj, other in enumerate(blocks[: bi + 1]):
            for i in blk:
                for j in other:
                    lower[i, j] = cj == bi or rng.uniform() < 0.6
    perm = rng.permutation(s)
    pattern = lower[np.ix_(perm, perm)]
    a = np.where(pattern[:, :, None], rng.normal(size=(s, s, n)), 0.0)
    i4, i5 = np.where(perm == 4)[0][0], np.where(perm == 5)[0][0]  # the block of states 4 and 5: zero diagonal
    a[i4, i4, :] = 0.0
    a[i4, i5, :] = 1.5
    a[i5, i4, :] = -0.7
    b = rng.normal(size=(s, n))
    solve = block_lu_solver(jnp.asarray(a), pattern, kind)
    x = np.asarray(solve(jnp.asarray(b)))
    expected = np.stack([np.linalg.solve(a[:, :, k], b[:, k]) for k in range(n)], axis=1)
    assert rel_err(x, expected) < 1e-12


@pytest.mark.parametrize("backend, lapack_calls", [("cpu", 0), ("gpu", 1)])
def test_block_lu_solver_auto_picks_lapack_for_large_blocks_on_accelerators(monkeypatch, backend, lapack_calls):
    # "auto" factorises a 13-state block by elimination on CPU and by LAPACK (cuSOLVER there) on accelerators (measured
    # on an H100: same speed, faster compile). The accelerator branch is exercised here on CPU by reporting another
    # backend; both must solve to 1e-12 of numpy.linalg.solve.
    from carkinetics._ensemble import _linalg as base

    rng = np.random.default_rng(SEED)
    s, n = 15, 4
    pattern = np.zeros((s, s), bool)
    pattern[:13, :13] = True
    pattern[13, 13] = pattern[14, 14] = pattern[13, 2] = pattern[14, 13] = True
    a = np.where(pattern[:, :, None], rng.normal(size=(s, s, n)), 0.0) + 3.0 * np.eye(s)[:, :, None]
    b = rng.normal(size=(s, n))
    calls = []
    real = base.lapack_lu_factor
    monkeypatch.setattr(base, "lapack_lu_factor", lambda m: calls.append(m.shape) or real(m))
    monkeypatch.setattr(base.jax, "default_backend", lambda: backend)
    x = np.asarray(base.block_lu_solver(jnp.asarray(a), pattern, "auto")(jnp.asarray(b)))
    expected = np.stack([np.linalg.solve(a[:, :, k], b[:, k]) for k in range(n)], axis=1)
    assert rel_err(x, expected) < 1e-12
    assert len(calls) == lapack_calls and all(c == (13, 13, n) for c in calls)


@pytest.mark.slow
def test_implicit_solver_derivatives_match_the_dense_solve_and_skip_the_factorisation():
    # `implicit_solver` differentiates x = W^-1 b by dx = W^-1 (db - dW x) with the same factors: forward and reverse
    # derivatives with respect to W and b must equal those of dense solves (jnp.linalg.solve per member) to 1e-10, and
    # the transposed program must not contain the transposed elimination: it is the same for both factorisations and
    # smaller than differentiating through either (10 x 10 matrices: 232 vs 732 / 389 equations when written).
    rng = np.random.default_rng(SEED)
    s, n = 10, 3
    pattern = np.ones((s, s), bool)
    w = jnp.asarray(rng.normal(size=(s, s, n)) + 4.0 * np.eye(s)[:, :, None])
    b = jnp.asarray(rng.normal(size=(s, n)))
    dw = jnp.asarray(rng.normal(size=(s, s, n)))
    db = jnp.asarray(rng.normal(size=(s, n)))
    lam = jnp.asarray(rng.normal(size=(s, n)))

    def dense(w, b):
        return jnp.stack([jnp.linalg.solve(w[:, :, k], b[:, k]) for k in range(n)], axis=1)

    def n_backward_eqns(fn):
        _, f_lin = jax.linearize(fn, w, b)
        return len(jax.make_jaxpr(jax.linear_transpose(f_lin, w, b))(lam).jaxpr.eqns)

    x_ref, dx_ref = jax.jvp(dense, (w, b), (dw, db))
    gw_ref, gb_ref = jax.vjp(dense, w, b)[1](lam)
    sizes = {}
    for kind in ("vectorized", "lapack"):

        def solve(w, b, kind=kind):
            return implicit_solver(w, lambda wc: block_lu_solver(wc, pattern, kind))(b)

        x, dx = jax.jvp(solve, (w, b), (dw, db))
        assert rel_err(x, x_ref) < 1e-12 and rel_err(dx, dx_ref) < 1e-10
        gw, gb = jax.vjp(solve, w, b)[1](lam)
        assert rel_err(gw, gw_ref) < 1e-10 and rel_err(gb, gb_ref) < 1e-10
        sizes[kind] = (
            n_backward_eqns(solve),
            n_backward_eqns(lambda w, b, kind=kind: block_lu_solver(w, pattern, kind)(b)),
        )
    assert sizes["vectorized"][0] == sizes["lapack"][0]
    assert all(implicit < direct for implicit, direct in sizes.values())
    assert sizes["vectorized"][0] < 0.5 * sizes["vectorized"][1]


@pytest.mark.slow
def test_rodas5_block_solver_agrees_with_lapack_on_the_sle_model():
    # Two members of the human SLE model under the Erlangen regimen over the first 30 days: the block-triangular LU
    # (CPU default) and LAPACK on the full matrix take the same steps and agree to 1e-8 of each state's maximum
    # (round-off: the solves differ in operation order); reverse-mode gradients agree to 1e-6 relative.
    from carkinetics.models.sle import erlangen_regimen

    base = load_preset("human")
    regimen = erlangen_regimen(base)
    ts = jnp.linspace(-5.0, 30.0, 36)

    def run(scale, kind):
        models = jax.vmap(lambda r: base.replace({"car.rho": r}))(base.get("car.rho") * jnp.array([1.0, 1.2]) * scale)
        sol = ck.simulate_ensemble(models, regimen, ts, solver=ck.EnsembleRodas5(linear_solver=kind))
        return jnp.sum(jnp.log1p(sol.y_array)), sol

    (_, blk), (_, lap) = run(1.0, "block"), run(1.0, "lapack")
    assert bool(jnp.all(blk.ok)) and np.array_equal(np.asarray(blk.num_steps), np.asarray(lap.num_steps))
    state_max = jnp.max(jnp.abs(lap.y_array), axis=1, keepdims=True)  # (2, 1, 38); tocilizumab is 0 throughout
    diff = jnp.abs(blk.y_array - lap.y_array) / jnp.where(state_max > 0, state_max, 1.0)
    assert float(jnp.max(diff)) < 1e-8  # round-off of two pivot orders, amplified by the stiff stage matrices
    g_blk = jax.grad(lambda s: run(s, "block")[0])(1.0)
    g_lap = jax.grad(lambda s: run(s, "lapack")[0])(1.0)
    assert abs(float(g_blk - g_lap)) < 1e-6 * abs(float(g_lap))


@pytest.mark.slow
def test_rodas5_forward_mode_on_the_sle_model_is_finite_and_matches_finite_differences():
    # Forward mode (`diffrax.ForwardMode`, the custom JVP without the member queue) through the block-LU Rodas5 solve
    # of the human SLE model, days -5..200: every sensitivity is finite and matches central differences of tight
    # solves. Regression: parameters packed into one matrix made every tangent dense and produced
    # 0 * inf = NaN from day ~100 on.
    import diffrax

    from carkinetics.models.sle import erlangen_regimen

    base = load_preset("human")
    regimen = erlangen_regimen(base)
    ts = jnp.linspace(-5.0, 200.0, 42)
    pop = ["car.rho", "car.k_kill", "humoral.k_igg"]
    eta = np.random.default_rng(0).normal(0.0, 0.2, (2, 3))
    log0 = np.log([float(base.get(p)) for p in pop]) + 0.05

    def obs(shift, rtol, adjoint=None):
        vals = jnp.exp(jnp.asarray(log0 + eta) + shift)
        models = jax.vmap(lambda v: base.replace({k: v[i] for i, k in enumerate(pop)}))(vals)
        sol = ck.simulate_ensemble(
            models, regimen, ts, solver=ck.EnsembleRodas5(), rtol=rtol, atol=rtol, adjoint=adjoint
        )
        return sol.obs_array[..., :3]

    # Log observables above 1e-6 of each one's maximum (CAR T cells in the body reach ~1e10: a fixed small floor
    # would let sub-tolerance round-off into the comparison).
    floor = 1e-6 * jnp.max(jnp.abs(obs(0.0, 1e-11)), axis=(0, 1), keepdims=True)

    def out(shift, rtol, adjoint=None):
        return jnp.log(jnp.abs(obs(shift, rtol, adjoint)) + floor)

    d_fwd = jax.jit(jax.jacfwd(lambda s: out(s, 1e-8, diffrax.ForwardMode())))(0.0)
    assert bool(jnp.all(jnp.isfinite(d_fwd)))
    h = 1e-4
    d_fd = (out(h, 1e-11) - out(-h, 1e-11)) / (2 * h)
    # Up to day 100 (B-cell nadir; later, regrowth from it amplifies the rtol 1e-8 discretisation error of the
    # sensitivities to ~4e-3): 1e-4 of the largest sensitivity.
    early = np.asarray(ts) <= 100.0
    assert float(jnp.max(jnp.abs(d_fwd - d_fd)[:, early])) < 1e-4 * float(jnp.max(jnp.abs(d_fd[:, early])))
    assert float(jnp.max(jnp.abs(d_fwd - d_fd))) < 1e-2 * float(jnp.max(jnp.abs(d_fd)))
