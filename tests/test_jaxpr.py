"""The core's jaxpr walker (`_core._jaxpr`): element movement against JAX itself, calls, and a toy domain.

Truth tests: for every data-movement primitive the element map of `source_elements` equals what the primitive
does to an array of element ids when JAX runs it; `eval_jaxpr` over a domain of concrete numbers reproduces the
function's own result, through `jit` and `custom_jvp` calls.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax
from jax.extend import core as jex_core

from carkinetics._core._jaxpr import (
    ELEMENTWISE,
    IDENTITY,
    MOVEMENT,
    REDUCTIONS,
    Rules,
    eval_jaxpr,
    rule_table,
    source_elements,
)

_MOVES = {
    "transpose": lambda x: x.T,
    "slice": lambda x: x[1:3, ::2],
    "rev": lambda x: x[::-1],
    "reshape": lambda x: x.reshape(2, 6),
    "squeeze": lambda x: x[None][0:1].squeeze(0),
    "broadcast_in_dim": lambda x: jnp.broadcast_to(x[:, :1], (2, 4, 3)),
    "concatenate": lambda x: jnp.concatenate([x, x[:1] * 2.0], axis=0),
    "stack": lambda x: jnp.stack([x, x + 1.0], axis=1),
    "split": lambda x: jnp.split(x, [1, 3], axis=0),
    "pad": lambda x: jnp.pad(x, ((1, 0), (0, 2)), constant_values=7.0),
    "gather": lambda x: x[jnp.array([3, 0, 2])],
    "dynamic_slice": lambda x: lax.dynamic_slice(x, (1, 1), (2, 2)),
    "dynamic_update_slice": lambda x: lax.dynamic_update_slice(x, x[:2, :2] * 3.0, (2, 1)),
}


@pytest.mark.parametrize("name", sorted(_MOVES))
def test_source_elements_match_the_primitive_run_on_element_ids(name):
    # Each data operand gets distinct float ids; running the primitive on them (JAX itself) must give exactly the
    # ids `source_elements` says each output element comes from (exact equality: ids are small integers).
    x = jnp.arange(12.0).reshape(4, 3)
    closed = jax.make_jaxpr(_MOVES[name])(x)
    eqns = [e for e in closed.jaxpr.eqns if e.primitive.name == name]
    if not eqns:  # jnp wraps some in a jit
        eqns = [
            e
            for outer in closed.jaxpr.eqns
            if "jaxpr" in outer.params
            for e in outer.params["jaxpr"].jaxpr.eqns
            if e.primitive.name == name
        ]
    assert eqns, f"{name!r} does not appear in the traced function"
    eqn = eqns[0]
    data = MOVEMENT[name](len(eqn.invars))
    indices, args, start = {}, [], 0
    for i, v in enumerate(eqn.invars):
        shape = tuple(v.aval.shape)
        if i in data:
            args.append(jnp.arange(start, start + int(np.prod(shape, dtype=int)), dtype=v.aval.dtype).reshape(shape))
            start += int(np.prod(shape, dtype=int))
        else:
            val = v.val if isinstance(v, jex_core.Literal) else None
            if val is None:  # an index computed in the jaxpr: evaluate the prefix concretely
                val = _concrete(closed, v, x)
            indices[i] = val
            args.append(jnp.asarray(val))
    expected = eqn.primitive.bind(*args, **eqn.params)
    expected = expected if eqn.primitive.multiple_results else [expected]
    got = source_elements(eqn, indices)
    assert len(got) == len(expected)
    for g, e in zip(got, expected):
        assert g.shape == e.shape and np.array_equal(g, np.asarray(e).astype(np.int64))


def _concrete(closed, var, x):
    """The concrete value of `var` in `closed` for input `x` (by the walker itself over numbers)."""
    rules = _number_rules()
    env = {}
    jaxpr = closed.jaxpr
    for v, c in zip(jaxpr.constvars, closed.consts):
        env[v] = np.asarray(c)
    env[jaxpr.invars[0]] = np.asarray(x)
    for eqn in jaxpr.eqns:
        vals = [np.asarray(v.val) if isinstance(v, jex_core.Literal) else env[v] for v in eqn.invars]
        for o, r in zip(eqn.outvars, rules.default(eqn, vals)):
            env[o] = r
        if var in env:
            return env[var]
    raise AssertionError("variable not found")


def _number_rules():
    def run(eqn, invals):
        outs = eqn.primitive.bind(*[jnp.asarray(v) for v in invals], **eqn.params)
        return [np.asarray(o) for o in (outs if eqn.primitive.multiple_results else [outs])]

    return Rules(table={}, default=run, constant=lambda value, aval: np.asarray(value))


def test_eval_jaxpr_over_numbers_reproduces_the_function_through_calls():
    # jit, custom_jvp (softplus, relu) and a closed-over constant: the walker descends into each call and its
    # constants, and evaluates every equation with the domain's rule; the result equals the function's to 0 ulp.
    const = jnp.array([0.5, -1.0, 2.0])

    @jax.jit
    def inner(u):
        return jax.nn.softplus(u) * const + jax.nn.relu(u[::-1])

    def f(x):
        return jnp.sum(inner(x) ** 2) + jnp.where(x > 0, x, -x)

    x = jnp.array([0.3, -0.7, 1.9])
    closed = jax.make_jaxpr(f)(x)
    names = {e.primitive.name for e in closed.jaxpr.eqns}
    assert names & {"jit", "pjit"}
    calls = []
    rules = _number_rules()
    traced = Rules(
        table={},
        default=lambda eqn, ins: calls.append(eqn.primitive.name) or rules.default(eqn, ins),
        constant=rules.constant,
    )
    (out,) = eval_jaxpr(closed.jaxpr, closed.consts, [np.asarray(x)], traced)
    assert np.array_equal(out, np.asarray(f(x)))
    assert not {"jit", "pjit", "custom_jvp_call"} & set(calls)  # every call was walked into, none bound whole


def test_rule_table_maps_each_class_and_leaves_the_rest_to_the_default():
    def marker(tag):
        return lambda eqn, ins: tag

    table = rule_table(elementwise=marker("e"), movement=marker("m"), extra={"cumsum": marker("c")})
    assert {table[n](None, []) for n in ELEMENTWISE} == {"e"}
    assert {table[n](None, []) for n in MOVEMENT} == {"m"}
    assert table["cumsum"](None, []) == "c"
    assert not (set(table) & (REDUCTIONS | IDENTITY | {"dot_general"}))
    assert not (ELEMENTWISE & set(MOVEMENT)) and not (ELEMENTWISE & REDUCTIONS) and not (ELEMENTWISE & IDENTITY)
