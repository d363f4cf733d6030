"""Structural sparsity of a batched vector field's Jacobian and its block-triangular form (for `EnsembleRodas5`).

`jacobian_pattern` reads the jaxpr of `f(t, y)` and propagates, element by element, which states every
intermediate value depends on. Every rule is conservative: a primitive without an exact rule makes each of its
outputs depend on everything its inputs depend on, so the pattern is a superset of the non-zeros of `df/dy` at
any point and for any parameter values (it never misses an entry; it may include structural zeros).
"""

from __future__ import annotations

import numpy as np
import jax
from jax.extend import core as jex_core

_ELEMENTWISE = frozenset({
    "abs", "acos", "acosh", "add", "and", "asin", "asinh", "atan", "atan2", "atanh", "cbrt", "ceil", "clamp",
    "convert_element_type", "copy", "copy_p", "cos", "cosh", "div", "eq", "erf", "erf_inv", "erfc", "exp", "exp2",
    "expm1", "floor", "ge", "gt", "integer_pow", "is_finite", "le", "lgamma", "digamma", "log", "log1p", "logistic",
    "lt", "max", "min", "mul", "ne", "neg", "nextafter", "not", "or", "pow", "reduce_precision", "rem", "round",
    "rsqrt", "select_n", "sign", "sin", "sinh", "sqrt", "square", "sub", "tan", "tanh", "xor", "stop_gradient",
})
_REDUCTIONS = frozenset({"reduce_sum", "reduce_max", "reduce_min", "reduce_prod", "reduce_and", "reduce_or",
                         "argmax", "argmin"})


def jacobian_pattern(f, t, y) -> np.ndarray:
    """Boolean `(S, S)`: `True` where `df_i/dy_j` may be non-zero for some member. `y` is batch-last `(S, N)`."""
    s = y.shape[0]
    closed = jax.make_jaxpr(lambda yy: f(t, yy))(y)
    dep_y = np.zeros(y.shape + (s,), bool)
    dep_y[np.arange(s), :, np.arange(s)] = True
    (out,) = _propagate(closed.jaxpr, [dep_y], s)
    pattern = out.reshape((s, -1, s)).any(axis=1)
    return pattern | np.eye(s, dtype=bool)


def _zeros(aval, s):
    return np.zeros(tuple(getattr(aval, "shape", ())) + (s,), bool)


def _full(aval, deps, s):
    union = np.zeros((s,), bool)
    for d in deps:
        union |= d.reshape((-1, s)).any(axis=0)
    return np.broadcast_to(union, tuple(getattr(aval, "shape", ())) + (s,))


def _propagate(jaxpr, in_deps, s):
    env = {}

    def read(v):
        if isinstance(v, jex_core.Literal):
            return _zeros(v.aval, s)
        return env[v]

    for v in jaxpr.constvars:  # closed-over values (parameters, inputs): independent of the state
        env[v] = _zeros(v.aval, s)
    for v, d in zip(jaxpr.invars, in_deps):
        env[v] = d
    for eqn in jaxpr.eqns:
        ins = [read(v) for v in eqn.invars]
        outs = _rule(eqn, ins, s)
        for v, d in zip(eqn.outvars, outs):
            env[v] = np.asarray(d)
    return [read(v) for v in jaxpr.outvars]


def _sub_jaxpr(params):
    for key in ("jaxpr", "call_jaxpr", "fun_jaxpr"):
        sub = params.get(key)
        if sub is not None:
            return sub
    return None


def _rule(eqn, ins, s):
    name, p = eqn.primitive.name, eqn.params
    avals = [v.aval for v in eqn.outvars]
    shape0 = tuple(avals[0].shape) if avals and hasattr(avals[0], "shape") else ()
    try:
        if name in _ELEMENTWISE:
            out = ins[0]
            for d in ins[1:]:
                out = out | d  # numpy broadcasting: rank-0 operands (trailing axis S only) broadcast
            return [np.broadcast_to(out, shape0 + (s,))]
        if name == "transpose":
            return [np.transpose(ins[0], tuple(p["permutation"]) + (len(shape0),))]
        if name == "slice":
            strides = p["strides"] or (1,) * len(p["start_indices"])
            idx = tuple(slice(a, b, c) for a, b, c in zip(p["start_indices"], p["limit_indices"], strides))
            return [ins[0][idx]]
        if name == "squeeze":
            return [np.squeeze(ins[0], axis=tuple(p["dimensions"]))]
        if name == "expand_dims":
            return [np.expand_dims(ins[0], axis=tuple(p["dimensions"]))]
        if name == "reshape" and p.get("dimensions") is None:
            return [ins[0].reshape(shape0 + (s,))]
        if name == "broadcast_in_dim":
            operand = ins[0]
            shape = [1] * len(shape0)
            for src, dst in enumerate(p["broadcast_dimensions"]):
                shape[dst] = operand.shape[src]
            return [np.broadcast_to(operand.reshape(tuple(shape) + (s,)), shape0 + (s,))]
        if name == "concatenate":
            return [np.concatenate(ins, axis=p["dimension"])]
        if name == "stack":
            return [np.stack(ins, axis=p["axis"])]
        if name == "split":
            sizes, axis = p["sizes"], p["axis"]
            return np.split(ins[0], np.cumsum(sizes)[:-1], axis=axis)
        if name in _REDUCTIONS and "axes" in p:
            return [np.broadcast_to(ins[0].any(axis=tuple(p["axes"])), shape0 + (s,))]
        sub = _sub_jaxpr(p)
        if sub is not None and name in ("pjit", "jit", "closed_call", "core_call", "custom_jvp_call",
                                        "custom_vjp_call", "custom_vjp_call_jaxpr", "remat", "checkpoint"):
            inner = sub.jaxpr if hasattr(sub, "jaxpr") else sub
            if len(inner.invars) != len(ins):
                raise ValueError("unexpected call signature")
            outs = _propagate(inner, ins, s)
            return [np.broadcast_to(o, tuple(a.shape) + (s,)) for o, a in zip(outs, avals)]
    except (ValueError, IndexError, KeyError, TypeError):
        pass  # an unexpected form of a known primitive: fall back to the conservative rule below
    return [_full(a, ins, s) for a in avals]


def block_triangular(pattern: np.ndarray) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """A symmetric permutation making `pattern` block lower triangular, and its diagonal blocks.

    **Returns:** `(order, blocks)`: state `order[k]` goes to position `k`; `blocks` are `(start, stop)` ranges of
    positions, the strongly connected components of the dependency graph (`i` depends on `j` where
    `pattern[i, j]`) in an order where every block depends only on itself and earlier blocks.
    """
    import scipy.sparse
    import scipy.sparse.csgraph

    s = pattern.shape[0]
    n_comp, label = scipy.sparse.csgraph.connected_components(scipy.sparse.csr_matrix(pattern), directed=True,
                                                              connection="strong")
    # Condensation: component a depends on component b if some state of a depends on some state of b.
    deps = [set() for _ in range(n_comp)]
    rows, cols = np.nonzero(pattern)
    for i, j in zip(rows, cols):
        if label[i] != label[j]:
            deps[label[i]].add(label[j])
    done, topo = set(), []

    def visit(c):  # depth-first: dependencies first (the condensation is acyclic)
        stack = [(c, iter(sorted(deps[c])))]
        while stack:
            node, it = stack[-1]
            nxt = next((d for d in it if d not in done), None)
            if nxt is None:
                stack.pop()
                if node not in done:
                    done.add(node)
                    topo.append(node)
            else:
                stack.append((nxt, iter(sorted(deps[nxt]))))

    for c in range(n_comp):
        if c not in done:
            visit(c)
    order, blocks = [], []
    for c in topo:
        members = [i for i in range(s) if label[i] == c]
        blocks.append((len(order), len(order) + len(members)))
        order.extend(members)
    return np.asarray(order), blocks


def block_levels(pattern: np.ndarray, order: np.ndarray, blocks: list[tuple[int, int]]) -> list[list[int]]:
    """The blocks of `block_triangular` grouped into levels: a block's level is one more than the highest level of
    the blocks it depends on, so the blocks of one level can be solved at the same time."""
    pp = pattern[np.ix_(order, order)]
    level = []
    for b, (a, e) in enumerate(blocks):
        lv = 0
        for c in range(b):
            ca, ce = blocks[c]
            if pp[a:e, ca:ce].any():
                lv = max(lv, level[c] + 1)
        level.append(lv)
    return [[b for b in range(len(blocks)) if level[b] == lv] for lv in range(max(level) + 1)]
