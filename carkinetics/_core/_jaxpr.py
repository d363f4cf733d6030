"""Evaluate a jaxpr over a value domain of the caller's choosing, and the primitive classes such domains share.

Reading a model's equations off its jaxpr (to print them as SBML, or to find which states each derivative depends
on) is abstract interpretation: every variable holds a value of some domain instead of an array, and every
primitive needs a rule for that domain. [`eval_jaxpr`][] does the walking, once for every domain: it binds
literals, constants and inputs, descends into the sub-jaxprs of call primitives (`jit`/`pjit`, `closed_call`,
`custom_jvp_call`, `custom_vjp_call`, `remat`), and hands every other equation to the domain's rule table
([`Rules`][]). A domain supplies only what differs: its rules and how a concrete constant enters it.

The primitive classes ([`ELEMENTWISE`][], [`IDENTITY`][], [`MOVEMENT`][], [`REDUCTIONS`][], [`DOT_GENERAL`][]) are
structural facts about JAX's primitives that every domain relies on in the same way, so they are stated here once;
[`rule_table`][] maps each class to a domain's handler. [`source_elements`][] gives, for a data-movement primitive,
which input element every output element is, so a domain moves its own values without re-implementing the
primitive.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Generic, TypeVar, cast

import jax
import jax.core
import jax.numpy as jnp
import numpy as np
from jax.extend import core as jex_core

V = TypeVar("V")
Rule = Callable[[jex_core.JaxprEqn, list], list]

#: One output element from the same element of every operand (rank-0 operands broadcast).
ELEMENTWISE = frozenset(
    {
        "abs",
        "acos",
        "acosh",
        "add",
        "and",
        "asin",
        "asinh",
        "atan",
        "atan2",
        "atanh",
        "cbrt",
        "ceil",
        "clamp",
        "convert_element_type",
        "cos",
        "cosh",
        "digamma",
        "div",
        "eq",
        "erf",
        "erf_inv",
        "erfc",
        "exp",
        "exp2",
        "expm1",
        "floor",
        "ge",
        "gt",
        "integer_pow",
        "is_finite",
        "le",
        "lgamma",
        "log",
        "log1p",
        "logistic",
        "lt",
        "max",
        "min",
        "mul",
        "ne",
        "neg",
        "nextafter",
        "not",
        "or",
        "pow",
        "real",
        "reduce_precision",
        "rem",
        "round",
        "rsqrt",
        "select_n",
        "sign",
        "sin",
        "sinh",
        "sqrt",
        "square",
        "stop_gradient",
        "sub",
        "tan",
        "tanh",
        "xor",
    }
)

#: Every output is the corresponding operand, unchanged.
IDENTITY = frozenset({"copy", "copy_p", "optimization_barrier"})


def _first(n: int) -> tuple[int, ...]:
    del n  # one data operand whatever the count
    return (0,)


def _all(n: int) -> tuple[int, ...]:
    return tuple(range(n))


def _two(n: int) -> tuple[int, ...]:
    del n  # operand and update (or padding value); the rest are indices
    return (0, 1)


#: Data movement: every output element is one element of the data operands. Maps each primitive to the positions of
#: its data operands given the operand count; the other operands are indices, which must be concrete to move data.
MOVEMENT: Mapping[str, Callable[[int], tuple[int, ...]]] = {
    "broadcast_in_dim": _first,
    "concatenate": _all,
    "dynamic_slice": _first,
    "dynamic_update_slice": _two,
    "expand_dims": _first,
    "gather": _first,
    "pad": _two,
    "reshape": _first,
    "rev": _first,
    "slice": _first,
    "split": _first,
    "squeeze": _first,
    "stack": _all,
    "transpose": _first,
}

#: Reductions over the `axes` parameter.
REDUCTIONS = frozenset(
    {"argmax", "argmin", "reduce_and", "reduce_max", "reduce_min", "reduce_or", "reduce_prod", "reduce_sum"}
)

#: Tensor contraction (`jnp.dot`, `@`, `einsum`).
DOT_GENERAL = frozenset({"dot_general"})

#: Call primitives: their sub-jaxpr is evaluated in place, with the equation's operands as its inputs.
CALLS = frozenset(
    {
        "checkpoint",
        "closed_call",
        "core_call",
        "custom_jvp_call",
        "custom_vjp_call",
        "custom_vjp_call_jaxpr",
        "jit",
        "pjit",
        "remat",
    }
)
_CALL_PARAM_KEYS = ("jaxpr", "call_jaxpr", "fun_jaxpr")


def rule_table(
    *,
    elementwise: Rule | None = None,
    identity: Rule | None = None,
    movement: Rule | None = None,
    reduction: Rule | None = None,
    dot_general: Rule | None = None,
    extra: Mapping[str, Rule] | None = None,
) -> dict[str, Rule]:
    """A rule table giving every primitive of a class the domain's handler for that class (`None`: not handled,
    so those primitives reach the domain's default rule); `extra` adds or overrides single primitives."""
    table: dict[str, Rule] = {}
    for names, rule in (
        (ELEMENTWISE, elementwise),
        (IDENTITY, identity),
        (MOVEMENT, movement),
        (REDUCTIONS, reduction),
        (DOT_GENERAL, dot_general),
    ):
        if rule is not None:
            table.update(dict.fromkeys(names, rule))
    table.update(extra or {})
    return table


@dataclasses.dataclass(frozen=True)
class Rules(Generic[V]):
    """A value domain for [`eval_jaxpr`][].

    **Fields:**

    - `table`: primitive name -> rule `(eqn, operand values) -> output values` (a list, one per `eqn.outvars`).
    - `default`: the rule for primitives not in `table` (raise, or a conservative answer).
    - `constant`: `(value, aval) -> domain value` for literals and closed-over constants, including those of
      sub-jaxprs. `value` may be a tracer when the jaxpr was traced inside a transformation: a domain that only
      needs shapes reads `aval`.
    """

    table: Mapping[str, Rule]
    default: Rule
    constant: Callable[[Any, Any], V]

    def apply(self, eqn: jex_core.JaxprEqn, invals: list) -> list:
        return self.table.get(eqn.primitive.name, self.default)(eqn, invals)


def call_jaxpr(eqn: jex_core.JaxprEqn) -> tuple[jex_core.Jaxpr, Sequence[Any]] | None:
    """The sub-jaxpr and its constants of a call primitive (`None` for other primitives)."""
    if eqn.primitive.name not in CALLS:
        return None
    sub = next((eqn.params[k] for k in _CALL_PARAM_KEYS if k in eqn.params), None)
    if sub is None:
        return None
    return (sub.jaxpr, sub.consts) if hasattr(sub, "consts") else (sub, ())


def eval_jaxpr(jaxpr: jex_core.Jaxpr, consts: Sequence[Any], args: Sequence[V], rules: Rules[V]) -> list[V]:
    """The outputs of `jaxpr` for inputs `args` in the domain of `rules`.

    Call primitives whose sub-jaxpr takes exactly the equation's operands are evaluated in place (their constants
    enter through `rules.constant`); every other equation, including a call of another form, goes to the rule
    table.
    """
    env: dict[Any, Any] = {}

    def read(v):
        if isinstance(v, jex_core.Literal):
            return rules.constant(v.val, v.aval)
        return env[v]

    for var, c in zip(jaxpr.constvars, consts):
        env[var] = rules.constant(c, var.aval)
    for var, a in zip(jaxpr.invars, args):
        env[var] = a
    for eqn in jaxpr.eqns:
        invals = [read(v) for v in eqn.invars]
        call = call_jaxpr(eqn)
        if call is not None and len(call[0].invars) == len(invals):
            outvals = eval_jaxpr(call[0], call[1], invals, rules)
        else:
            outvals = rules.apply(eqn, invals)
        for var, val in zip(eqn.outvars, outvals):
            if not isinstance(var, jex_core.DropVar):
                env[var] = val
    return [read(v) for v in jaxpr.outvars]


def _shape(v: Any) -> tuple[int, ...]:
    """The shape of an array variable of a jaxpr (its aval is a `ShapedArray`)."""
    return tuple(cast(jax.core.ShapedArray, v.aval).shape)


def source_elements(eqn: jex_core.JaxprEqn, indices: Mapping[int, Any]) -> list[np.ndarray]:
    """For a [`MOVEMENT`][] primitive: which input element each output element is.

    **Arguments:**

    - `eqn`: the equation.
    - `indices`: the concrete values of its index operands (the operands `MOVEMENT` does not list as data), by
      operand position.

    **Returns:** one integer array per output, of the output's shape: positions in the concatenation of the
    flattened data operands, in operand order. A domain gathers its own values with it, e.g.
    `pool[ids]` where `pool` stacks the flattened data operands.
    """
    name, p = eqn.primitive.name, eqn.params
    data = MOVEMENT[name](len(eqn.invars))
    ids, start = [], 0
    for i in data:
        shape = _shape(eqn.invars[i])
        ids.append(np.arange(start, start + int(np.prod(shape, dtype=int)), dtype=np.int64).reshape(shape))
        start += ids[-1].size
    out_shapes = [_shape(v) for v in eqn.outvars]
    a = ids[0]
    # Static data movement in numpy (no device work: this also runs while an outer computation is being traced).
    if name == "transpose":
        return [np.transpose(a, p["permutation"])]
    if name == "slice":
        strides = p["strides"] or (1,) * a.ndim
        return [a[tuple(slice(lo, hi, st) for lo, hi, st in zip(p["start_indices"], p["limit_indices"], strides))]]
    if name == "rev":
        return [np.flip(a, axis=tuple(p["dimensions"]))]
    if name in ("squeeze", "expand_dims") or (name == "reshape" and p.get("dimensions") is None):
        return [a.reshape(out_shapes[0])]
    if name == "broadcast_in_dim":
        shape = [1] * len(out_shapes[0])
        for src, dst in enumerate(p["broadcast_dimensions"]):
            shape[dst] = a.shape[src]
        return [np.broadcast_to(a.reshape(shape), out_shapes[0])]
    if name == "concatenate":
        return [np.concatenate(ids, axis=p["dimension"])]
    if name == "stack":
        return [np.stack(ids, axis=p["axis"])]
    if name == "split":
        return np.split(a, np.cumsum(p["sizes"])[:-1], axis=p["axis"])
    # The rest (gather, dynamic slices, pad, a transposing reshape) run the primitive itself on the element ids.
    args = []
    for i in range(len(eqn.invars)):
        args.append(jnp.asarray(ids[data.index(i)], dtype=jnp.int32) if i in data else jnp.asarray(indices[i]))
    params = dict(p)
    if params.get("fill_value") is not None:  # an out-of-bounds fill is a float, not an element id
        params["fill_value"] = None
    with jax.ensure_compile_time_eval():
        outs = eqn.primitive.bind(*args, **params)
    return [np.asarray(o) for o in (outs if eqn.primitive.multiple_results else [outs])]
