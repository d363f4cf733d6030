"""Structural sparsity of a batched vector field's Jacobian and its block-triangular form (for `EnsembleRodas5`).

`jacobian_pattern` reads the jaxpr of `f(t, y)` and propagates, element by element, which states every
intermediate value depends on: the core's jaxpr walker (`_core._jaxpr.eval_jaxpr`) over dependency sets. Every rule
is conservative: a primitive without an exact rule makes each of its outputs depend on everything its inputs depend
on, so the pattern is a superset of the non-zeros of `df/dy` at any point and for any parameter values (it never
misses an entry; it may include structural zeros).
"""

from __future__ import annotations

import jax
import numpy as np

from .._core._jaxpr import MOVEMENT, Rules, eval_jaxpr, rule_table, source_elements


def jacobian_pattern(f, t, y) -> np.ndarray:
    """Boolean `(S, S)`: `True` where `df_i/dy_j` may be non-zero for some member. `y` is batch-last `(S, N)`."""
    s = y.shape[0]
    closed = jax.make_jaxpr(lambda yy: f(t, yy))(y)
    dep_y = np.zeros(y.shape + (s,), bool)
    dep_y[np.arange(s), :, np.arange(s)] = True
    (out,) = eval_jaxpr(closed.jaxpr, closed.consts, [dep_y], _dependency_rules(s))
    pattern = out.reshape((s, -1, s)).any(axis=1)
    return pattern | np.eye(s, dtype=bool)


# The value of a variable of shape `shape` is a boolean array `shape + (S,)`: element `[..., j]` says whether that
# element depends on state `j`. Constants (parameters, inputs closed over, literals) depend on no state.


def _dependency_rules(s: int) -> Rules:
    def conservative(eqn, ins):
        union = np.zeros((s,), bool)
        for d in ins:
            union |= d.reshape((-1, s)).any(axis=0)
        return [np.broadcast_to(union, tuple(getattr(v.aval, "shape", ())) + (s,)) for v in eqn.outvars]

    def exact(rule):
        def checked(eqn, ins):
            try:
                return rule(eqn, ins)
            except (ValueError, IndexError, KeyError, TypeError):
                return conservative(eqn, ins)  # an unexpected form of a known primitive

        return checked

    def shape0(eqn):
        return tuple(eqn.outvars[0].aval.shape)

    def elementwise(eqn, ins):
        out = ins[0]
        for d in ins[1:]:
            out = out | d  # numpy broadcasting: rank-0 operands (trailing axis S only) broadcast
        return [np.broadcast_to(out, shape0(eqn) + (s,))]

    def movement(eqn, ins):
        data = MOVEMENT[eqn.primitive.name](len(ins))
        if len(data) != len(ins):  # indices whose values are unknown here
            return conservative(eqn, ins)
        pool = np.concatenate([d.reshape((-1, s)) for d in ins])
        return [pool[ids] for ids in source_elements(eqn, {})]

    def reduction(eqn, ins):
        return [np.broadcast_to(ins[0].any(axis=tuple(eqn.params["axes"])), shape0(eqn) + (s,))]

    def constant(value, aval):
        del value  # only the shape matters: a constant depends on no state
        return np.zeros(tuple(getattr(aval, "shape", ())) + (s,), bool)

    table = rule_table(
        elementwise=exact(elementwise),
        identity=exact(lambda eqn, ins: ins),
        movement=exact(movement),
        reduction=exact(reduction),
    )
    return Rules(table=table, default=conservative, constant=constant)


def block_triangular(pattern: np.ndarray) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """A symmetric permutation making `pattern` block lower triangular, and its diagonal blocks.

    **Returns:** `(order, blocks)`: state `order[k]` goes to position `k`; `blocks` are `(start, stop)` ranges of
    positions, the strongly connected components of the dependency graph (`i` depends on `j` where
    `pattern[i, j]`) in an order where every block depends only on itself and earlier blocks.
    """
    import scipy.sparse
    import scipy.sparse.csgraph

    s = pattern.shape[0]
    n_comp, label = scipy.sparse.csgraph.connected_components(
        scipy.sparse.csr_matrix(pattern), directed=True, connection="strong"
    )
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
