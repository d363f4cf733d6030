"""Exact Shapley attribution and group swaps: axioms on synthetic games, truth on small PK models."""

import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import carkinetics as ck
from carkinetics.models import OneCompartmentPK, TwoCompartmentPK


def _index(mask):
    return jnp.sum(mask.astype(jnp.int32) << jnp.arange(mask.shape[0], dtype=jnp.int32))


def _brute_force_shapley(table, g):
    """Shapley values as the average marginal contribution over all g! orderings (independent of the code)."""
    phi = np.zeros(g)
    for order in itertools.permutations(range(g)):
        idx = 0
        for p in order:
            new = idx | (1 << p)
            phi[p] += table[new] - table[idx]
            idx = new
    return phi / math.factorial(g)


def test_coalition_masks_and_matrix():
    m = ck.coalition_masks(3)
    assert m.shape == (8, 3)
    assert not m[0].any() and m[-1].all()
    assert m[5].tolist() == [True, False, True]  # 5 = 0b101
    w = ck.shapley_matrix(3)
    # each row of W sums to zero (v = const gives phi = 0), and the columns sum to the efficiency vector e_N - e_0
    np.testing.assert_allclose(w.sum(axis=1), 0.0, atol=1e-15)
    expected = np.zeros(8)
    expected[0], expected[-1] = -1.0, 1.0
    np.testing.assert_allclose(w.sum(axis=0), expected, atol=1e-15)


def test_known_values_additive_and_product():
    # v(S) = 1 x0 + 2 x1 + 3 x0 x2: additive terms go to their player, the product term is split equally.
    def game(mask):
        x = mask.astype(float)
        return x[0] + 2.0 * x[1] + 3.0 * x[0] * x[2]

    res = ck.shapley_values(game, 3, group_names=("a", "b", "c"))
    np.testing.assert_allclose(np.asarray(res.values), [2.5, 2.0, 1.5], rtol=0, atol=1e-12)
    assert float(res.total) == pytest.approx(6.0, abs=1e-12)
    assert res.group_names == ("a", "b", "c")
    assert bool(jnp.all(res.ok))


def test_symmetry_and_null_player():
    # players 0 and 1 are symmetric, player 2 is null, player 3 is additive: v = (x0 + x1)^2 + 5 x3.
    def game(mask):
        x = mask.astype(float)
        return (x[0] + x[1]) ** 2 + 5.0 * x[3]

    res = ck.shapley_values(game, 4)
    phi = np.asarray(res.values)
    assert phi[0] == pytest.approx(phi[1], abs=1e-12)  # symmetry
    assert phi[2] == pytest.approx(0.0, abs=1e-12)  # null player
    np.testing.assert_allclose(phi, [2.0, 2.0, 0.0, 5.0], atol=1e-12)


def test_efficiency_and_brute_force_on_random_game(getkey):
    g = 5
    table = jax.random.normal(getkey(), (2**g,), dtype=jnp.float64) * 10.0
    res = ck.shapley_values(lambda mask: table[_index(mask)], g, batch_size=7)
    np.testing.assert_allclose(
        np.asarray(res.values), _brute_force_shapley(np.asarray(table), g), rtol=1e-12, atol=1e-12
    )
    assert res.efficiency_error() <= 1e-8


def test_efficiency_twelve_groups_vector_output(getkey):
    g = 12  # 4,096 coalitions, vector-valued output, chunked
    table = jax.random.normal(getkey(), (2**g, 3), dtype=jnp.float64)
    res = ck.shapley_values(lambda mask: table[_index(mask)], g, batch_size=512)
    assert res.values.shape == (g, 3)
    assert res.efficiency_error() <= 1e-8
    np.testing.assert_allclose(np.asarray(res.values.sum(0)), np.asarray(table[-1] - table[0]), rtol=1e-8)


def _pk_metrics(model):
    """Simulated metrics of a 100 mg IV bolus: Cmax (mg/L) and log half-life from two samples (log days)."""
    ts = jnp.array([0.0, 0.005, 0.01])
    sol = ck.simulate(model, ck.Bolus(0.0, 100.0, "central"), ts, throw=False, rtol=1e-12, atol=1e-12)
    c = sol.observables.concentration
    log_half_life = jnp.log(jnp.log(2.0) * (ts[2] - ts[1]) / jnp.log(c[1] / c[2]))
    return {"cmax": c[0], "log_half_life": log_half_life}


def test_pk_simulated_attribution_truth():
    mouse = OneCompartmentPK(cl=2.0, v=0.5)  # L/d, L
    human = OneCompartmentPK(cl=130.0, v=46.5)
    groups = [ck.MechanismGroup("clearance", ("cl",), gap="G0"), ck.MechanismGroup("volume", ("v",))]
    res = ck.shapley_attribution(_pk_metrics, mouse, human, groups)
    # Cmax = dose / V: only the volume group carries the gap (clearance is a null player for Cmax).
    assert float(res.values["cmax"][0]) == pytest.approx(0.0, abs=1e-6 * abs(float(res.total["cmax"])))
    assert float(res.values["cmax"][1]) == pytest.approx(100.0 / 46.5 - 100.0 / 0.5, rel=1e-8)
    # log t1/2 = log(ln 2) + log V - log CL is additive: each group gets its own log ratio.
    np.testing.assert_allclose(
        np.asarray(res.values["log_half_life"]), [-np.log(130.0 / 2.0), np.log(46.5 / 0.5)], rtol=1e-5
    )
    assert res.efficiency_error() <= 1e-8


@pytest.mark.parametrize("engine", ["ensemble", "vmap"])
def test_experiment_attribution_matches_per_member_function(engine):
    # The same attribution from an experiment (coalitions solved in batches on the engine) and from a plain function
    # of one model (vmapped): agreement to the solver tolerance (rtol 1e-12 on a 10-minute horizon).
    mouse = OneCompartmentPK(cl=2.0, v=0.5)
    human = OneCompartmentPK(cl=130.0, v=46.5)
    groups = [ck.MechanismGroup("clearance", ("cl",), gap="G0"), ck.MechanismGroup("volume", ("v",))]

    def metrics(sol):
        c, ts = sol.observables.concentration, sol.ts
        return {"cmax": c[0], "log_half_life": jnp.log(jnp.log(2.0) * (ts[2] - ts[1]) / jnp.log(c[1] / c[2]))}

    exp = ck.Experiment(ck.Bolus(0.0, 100.0, "central"), jnp.array([0.0, 0.005, 0.01]), metrics, rtol=1e-12, atol=1e-12)
    res = ck.shapley_attribution(exp, mouse, human, groups, engine=engine)
    ref = ck.shapley_attribution(_pk_metrics, mouse, human, groups)
    for k in ("cmax", "log_half_life"):
        np.testing.assert_allclose(
            np.asarray(res.values[k]),
            np.asarray(ref.values[k]),
            rtol=1e-8,
            atol=1e-10 * float(np.max(np.abs(np.asarray(ref.total[k])))),
        )
    assert res.efficiency_error() <= 1e-8
    # an experiment's solver must fit the engine asked for
    with pytest.raises(ValueError, match="`engine`"):
        other = "vmap" if engine == "ensemble" else "ensemble"
        ck.evaluate_models(
            ck.Experiment(exp.regimen_, exp.ts, metrics, solver=ck.default_solver(mouse, engine)),
            mouse,
            {"cl": jnp.array([2.0, 3.0])},
            engine=other,
        )


def test_two_differing_groups_get_the_whole_gap():
    a = TwoCompartmentPK()
    b = a.replace(cl=50.0, v2=80.0)  # differs from `a` in two groups only
    groups = [ck.MechanismGroup(n, (n,)) for n in ("cl", "v1", "q", "v2")]

    def auc_and_trough(model):
        ts = jnp.linspace(0.0, 2.0, 41)
        sol = ck.simulate(model, ck.Bolus(0.0, 100.0, "central"), ts, throw=False)
        c = sol.observables.concentration
        return jnp.stack([jnp.trapezoid(c, ts), c[-1]])

    res = ck.shapley_attribution(auc_and_trough, a, b, groups, batch_size=4)
    phi = np.asarray(res.values)
    # v1 and q do not differ: zero up to round-off of the Shapley sum
    np.testing.assert_allclose(phi[[1, 2]], 0.0, atol=1e-12 * float(np.max(np.abs(np.asarray(res.total)))))
    np.testing.assert_allclose(phi[[0, 3]].sum(0), np.asarray(res.total), rtol=1e-10)
    assert np.all(np.abs(phi[[0, 3]]) > 1e-3 * np.abs(np.asarray(res.total)))


def test_forward_reverse_swaps_match_one_group_swaps():
    a, b = OneCompartmentPK(cl=2.0, v=2.0), OneCompartmentPK(cl=10.0, v=50.0)
    groups = [ck.MechanismGroup("clearance", ("cl",)), ck.MechanismGroup("volume", ("v",))]

    def f(m):
        return m.v / m.cl + m.cl

    res = ck.shapley_attribution(f, a, b, groups)
    sw = ck.one_group_swaps(f, a, b, groups)
    # f(a) = 3, f(b) = 15, f(cl_b, v_a) = 10.2, f(cl_a, v_b) = 27
    np.testing.assert_allclose(np.asarray(sw.forward), [10.2 - 3.0, 27.0 - 3.0], atol=1e-12)
    np.testing.assert_allclose(np.asarray(sw.reverse), [15.0 - 27.0, 15.0 - 10.2], atol=1e-12)
    np.testing.assert_allclose(np.asarray(res.forward_swaps()), np.asarray(sw.forward), atol=1e-12)
    np.testing.assert_allclose(np.asarray(res.reverse_swaps()), np.asarray(sw.reverse), atol=1e-12)
    # for two players the Shapley value is the mean of the forward and reverse swap effects
    np.testing.assert_allclose(np.asarray(res.values), 0.5 * np.asarray(sw.forward + sw.reverse), atol=1e-12)
    assert float(res.coalition(["volume"])) == pytest.approx(27.0, abs=1e-12)


def test_swap_takes_only_listed_groups():
    a, b = TwoCompartmentPK(), TwoCompartmentPK(cl=1.0, v1=2.0, q=3.0, v2=4.0)
    m = ck.swap(a, b, [ck.MechanismGroup("distribution", ("q", "v2"))])
    assert (float(m.cl), float(m.v1), float(m.q), float(m.v2)) == (float(a.cl), float(a.v1), 3.0, 4.0)


def test_samples_match_per_sample_attribution():
    a, b = OneCompartmentPK(cl=2.0, v=2.0), OneCompartmentPK(cl=10.0, v=50.0)
    groups = [ck.MechanismGroup("clearance", ("cl",)), ck.MechanismGroup("volume", ("v",))]

    def f(m):
        return jnp.log(m.v / m.cl) * m.cl

    cl_a = jnp.array([1.0, 2.0, 4.0])
    v_b = jnp.array([30.0, 50.0, 70.0])
    res = ck.shapley_attribution(f, a, b, groups, samples_a={"cl": cl_a}, samples_b={"v": v_b})
    assert res.values.shape == (2, 3)
    for k in range(3):
        ref = ck.shapley_attribution(f, a.replace(cl=float(cl_a[k])), b.replace(v=float(v_b[k])), groups)
        np.testing.assert_allclose(np.asarray(res.values[:, k]), np.asarray(ref.values), rtol=1e-12)
    assert res.efficiency_error() <= 1e-8


def test_input_errors():
    a, b = OneCompartmentPK(), OneCompartmentPK(cl=1.0)
    with pytest.raises(ValueError, match="does not have"):
        ck.shapley_attribution(lambda m: m.cl, a, b, [ck.MechanismGroup("x", ("k_igg",))])
    with pytest.raises(ValueError, match="two mechanism groups"):
        ck.swap(a, b, [ck.MechanismGroup("x", ("cl",)), ck.MechanismGroup("y", ("cl",))])
    with pytest.raises(ValueError, match="same class"):
        ck.swap(a, TwoCompartmentPK(), [ck.MechanismGroup("x", ("cl",))])
    with pytest.raises(ValueError, match="single string"):
        ck.MechanismGroup("x", "cl")
    with pytest.raises(ValueError, match="n_groups"):
        ck.coalition_masks(17)
    with pytest.raises(ValueError, match="batch_size"):
        ck.shapley_values(lambda m: m.sum(), 2, batch_size=0)
    with pytest.raises(ValueError, match="samples_b"):
        ck.shapley_attribution(lambda m: m.cl, a, b, [ck.MechanismGroup("x", ("cl",))], samples_b={"v": jnp.ones(2)})


def test_no_retrace_on_new_values():
    traces = []

    def f(m):
        traces.append(1)  # Python side effect: runs once per trace
        return m.v / m.cl

    groups = [ck.MechanismGroup("clearance", ("cl",)), ck.MechanismGroup("volume", ("v",))]
    ck.shapley_attribution(f, OneCompartmentPK(cl=2.0, v=2.0), OneCompartmentPK(cl=10.0, v=50.0), groups)
    n = len(traces)
    res = ck.shapley_attribution(f, OneCompartmentPK(cl=3.0, v=4.0), OneCompartmentPK(cl=7.0, v=9.0), groups)
    assert len(traces) == n  # second call with new values: no new trace
    assert float(res.total) == pytest.approx(9.0 / 7.0 - 4.0 / 3.0, rel=1e-12)

    game_traces = []

    def game(mask):
        game_traces.append(1)
        return mask.astype(float).sum()

    ck.shapley_values(game, 3)
    m = len(game_traces)
    ck.shapley_values(game, 3)
    assert len(game_traces) == m
