"""Export a carkinetics model (with its parameters and, optionally, a regimen) to Antimony and SBML.

The vector field of a carkinetics model is JAX code. The exporter traces `vector_field_flat`, `observe_flat`
and `initial_state_flat` with `jax.make_jaxpr`, with every declared parameter as a symbolic input, and evaluates
the jaxpr on symbolic values (the core's jaxpr walker, `_core._jaxpr.eval_jaxpr`, with the rules below) to build
infix expressions:

- states become variables with rate rules (`central' = ...`),
- observables become assignment rules (`concentration := ...`),
- parameters become named SBML parameters (dotted names such as `car.rho` become `car_rho`),
- boluses and fractional kills become SBML events; infusions become a rate parameter switched on and off by
  events; declared model breakpoints become (no-op) events, so an SBML integrator restarts there as well.

Time is in days, as everywhere in carkinetics. Units, descriptions and sources of the parameters are written as
Antimony comments. Antimony -> SBML conversion needs the `antimony` package (`pip install -e ".[sbml]"`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
import operator
import re
from collections.abc import Callable, Sequence
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

import carkinetics as ck

from .._core._jaxpr import MOVEMENT, Rules, eval_jaxpr, rule_table, source_elements

# --------------------------------------------------------------------------------------------------------------
# Symbolic scalars


class _E:
    """A symbolic scalar: an infix expression in Antimony/SBML-L3 syntax (always safe to embed: atoms or (...))."""

    __slots__ = ("s",)

    def __init__(self, s: str):
        self.s = s

    def __repr__(self) -> str:  # pragma: no cover - debugging aid
        return f"_E({self.s!r})"

    # numpy's object-dtype einsum/sum use these
    def __add__(self, o):
        return _binop("+", self, o)

    def __radd__(self, o):
        return _binop("+", o, self)

    def __mul__(self, o):
        return _binop("*", self, o)

    def __rmul__(self, o):
        return _binop("*", o, self)


def _is_num(x: Any) -> bool:
    return not isinstance(x, _E)


def _fmt(x: Any) -> str:
    if isinstance(x, _E):
        return x.s
    if isinstance(x, (bool, np.bool_)):
        return "true" if x else "false"
    v = float(x)
    if math.isnan(v):
        return "NaN"
    if math.isinf(v):
        return "INF" if v > 0 else "(-INF)"
    s = repr(v)
    return f"({s})" if v < 0 else s


def _binop(op: str, a: Any, b: Any) -> Any:
    if _is_num(a) and _is_num(b):
        return {"+": operator.add, "-": operator.sub, "*": operator.mul, "/": operator.truediv}[op](a, b)
    # light algebraic simplification keeps the exported text readable
    if op == "+":
        if _is_num(a) and a == 0:
            return b
        if _is_num(b) and b == 0:
            return a
    if op == "-" and _is_num(b) and b == 0:
        return a
    if op == "*":
        if _is_num(a) and a == 1:
            return b
        if _is_num(b) and b == 1:
            return a
    if op == "/" and _is_num(b) and b == 1:
        return a
    return _E(f"({_fmt(a)} {op} {_fmt(b)})")


def _fn(name: str, *args: Any) -> _E:
    return _E(f"{name}({', '.join(_fmt(a) for a in args)})")


def _piecewise(value_true: Any, cond: Any, value_false: Any) -> Any:
    if _is_num(cond):
        return value_true if bool(cond) else value_false
    return _fn("piecewise", value_true, cond, value_false)


def _cmp(op: str) -> Callable:
    return lambda a, b: _E(f"({_fmt(a)} {op} {_fmt(b)})")


def _logical(op: str) -> Callable:
    return lambda a, b: _E(f"({_fmt(a)} {op} {_fmt(b)})")


def _select_n(which, *cases):
    if len(cases) == 1:
        return cases[0]
    if len(cases) == 2:
        return _piecewise(cases[1], which, cases[0])
    out = cases[-1]
    for k in range(len(cases) - 2, -1, -1):
        out = _piecewise(cases[k], _E(f"({_fmt(which)} == {k})"), out)
    return out


def _sign(a):
    return _fn("piecewise", 1.0, _E(f"({_fmt(a)} > 0)"), -1.0, _E(f"({_fmt(a)} < 0)"), 0.0)


# primitive name -> function of symbolic scalar operands (and the eqn params)
_ELEMENTWISE: dict[str, Callable] = {
    "add": lambda p, a, b: _binop("+", a, b),
    "sub": lambda p, a, b: _binop("-", a, b),
    "mul": lambda p, a, b: _binop("*", a, b),
    "div": lambda p, a, b: _binop("/", a, b),
    "neg": lambda p, a: _E(f"(-{_fmt(a)})"),
    "exp": lambda p, a: _fn("exp", a),
    "exp2": lambda p, a: _E(f"(2 ^ {_fmt(a)})"),
    "log": lambda p, a: _fn("ln", a),
    "log1p": lambda p, a: _fn("ln", _binop("+", 1.0, a)),
    "expm1": lambda p, a: _binop("-", _fn("exp", a), 1.0),
    "pow": lambda p, a, b: _E(f"({_fmt(a)} ^ {_fmt(b)})"),
    "integer_pow": lambda p, a: _E(f"({_fmt(a)} ^ {int(p['y'])})"),
    "square": lambda p, a: _E(f"({_fmt(a)} ^ 2)"),
    "sqrt": lambda p, a: _fn("sqrt", a),
    "rsqrt": lambda p, a: _E(f"(1 / sqrt({_fmt(a)}))"),
    "abs": lambda p, a: _fn("abs", a),
    "sign": lambda p, a: _sign(a),
    "floor": lambda p, a: _fn("floor", a),
    "ceil": lambda p, a: _fn("ceil", a),
    "max": lambda p, a, b: _fn("max", a, b),
    "min": lambda p, a, b: _fn("min", a, b),
    "clamp": lambda p, lo, x, hi: _fn("min", _fn("max", x, lo), hi),
    "tanh": lambda p, a: _fn("tanh", a),
    "sinh": lambda p, a: _fn("sinh", a),
    "cosh": lambda p, a: _fn("cosh", a),
    "sin": lambda p, a: _fn("sin", a),
    "cos": lambda p, a: _fn("cos", a),
    "tan": lambda p, a: _fn("tan", a),
    "logistic": lambda p, a: _E(f"(1 / (1 + exp(-{_fmt(a)})))"),
    "lt": lambda p, a, b: _cmp("<")(a, b),
    "le": lambda p, a, b: _cmp("<=")(a, b),
    "gt": lambda p, a, b: _cmp(">")(a, b),
    "ge": lambda p, a, b: _cmp(">=")(a, b),
    "eq": lambda p, a, b: _cmp("==")(a, b),
    "ne": lambda p, a, b: _cmp("!=")(a, b),
    "and": lambda p, a, b: _logical("&&")(a, b),
    "or": lambda p, a, b: _logical("||")(a, b),
    "not": lambda p, a: _E(f"(!{_fmt(a)})"),
    "select_n": lambda p, which, *cases: _select_n(which, *cases),
    "real": lambda p, a: a,
}


def _unsupported(prim: str) -> ValueError:
    return ValueError(
        f"The JAX primitive {prim!r} has no SBML/Antimony equivalent in carkinetics' exporter; rewrite that part "
        "of the model with elementary operations (+, -, *, /, exp, log, pow, max/min, where, comparisons) or "
        "export a model that does not use it."
    )


def _as_object(a: np.ndarray) -> np.ndarray:
    if a.dtype == object:
        return a
    out = np.empty(a.shape, dtype=object)
    for idx in np.ndindex(a.shape):
        v = a[idx]
        out[idx] = bool(v) if a.dtype == bool else (int(v) if np.issubdtype(a.dtype, np.integer) else float(v))
    return out


def _maybe_numeric(a: np.ndarray, dtype) -> np.ndarray:
    """Back to a numeric array when no element is symbolic (enables constant folding downstream)."""
    if a.dtype == object and all(_is_num(v) for v in a.flat):
        return np.asarray(a.tolist() if a.ndim else a.item(), dtype=dtype)
    return a


def _movement(eqn, invals: list[np.ndarray]) -> list[np.ndarray]:
    """Apply a data-movement primitive to symbolic arrays: gather the elements each output element comes from."""
    data = MOVEMENT[eqn.primitive.name](len(invals))
    indices = {}
    for i, v in enumerate(invals):
        if i not in data:
            if v.dtype == object:
                raise ValueError(
                    f"The primitive {eqn.primitive.name!r} uses an index that depends on parameters or states; "
                    "SBML export needs indices that are fixed numbers."
                )
            indices[i] = v
    pool = np.concatenate([_as_object(invals[i]).reshape(-1) for i in data])
    return [
        _maybe_numeric(pool[ids.reshape(-1)].reshape(ids.shape), var.aval.dtype)
        for ids, var in zip(source_elements(eqn, indices), eqn.outvars)
    ]


def _elementwise(eqn, invals: list[np.ndarray]) -> list[np.ndarray]:
    name = eqn.primitive.name
    out_aval = eqn.outvars[0].aval
    shape = out_aval.shape
    if name == "convert_element_type":
        src = invals[0]
        new = np.dtype(eqn.params["new_dtype"])
        out = np.empty(shape, dtype=object)
        for idx in np.ndindex(shape):
            v = src[idx] if src.ndim else src.item()
            if _is_num(v):
                out[idx] = np.asarray(v).astype(new).item()
            elif src.dtype == object and eqn.invars[0].aval.dtype == np.dtype(bool) and new != np.dtype(bool):
                out[idx] = _piecewise(1.0, v, 0.0)
            elif new == np.dtype(bool):
                out[idx] = _E(f"({_fmt(v)} != 0)")
            elif np.issubdtype(new, np.floating):
                out[idx] = v
            else:
                raise ValueError(
                    f"Converting a symbolic value to {new} (integer) cannot be exported to SBML; keep the model in "
                    "floating point."
                )
        return [_maybe_numeric(out, new)]
    fn = _ELEMENTWISE.get(name)
    if fn is None:
        raise _unsupported(name)
    ops = [np.broadcast_to(v, shape) if v.ndim else np.broadcast_to(v.reshape(()), shape) for v in invals]
    out = np.empty(shape, dtype=object)
    for idx in np.ndindex(shape):
        elems = [o[idx] for o in ops]
        if all(_is_num(e) for e in elems):
            r = eqn.primitive.bind(
                *[jnp.asarray(e, dtype=v.aval.dtype) for e, v in zip(elems, eqn.invars)], **eqn.params
            )
            out[idx] = np.asarray(r).item()
        else:
            out[idx] = fn(eqn.params, *elems)
    return [_maybe_numeric(out, out_aval.dtype)]


def _reduce(eqn, invals: list[np.ndarray]) -> list[np.ndarray]:
    name = eqn.primitive.name
    axes = tuple(eqn.params["axes"])
    a = _as_object(invals[0])
    keep = [d for d in range(a.ndim) if d not in axes]
    moved = np.moveaxis(a, keep + list(axes), list(range(a.ndim)))
    out_shape = tuple(a.shape[d] for d in keep)
    flat = moved.reshape(out_shape + (-1,))
    out = np.empty(out_shape, dtype=object)
    for idx in np.ndindex(out_shape):
        items = list(flat[idx])
        if name == "reduce_sum":
            out[idx] = functools.reduce(lambda x, y: _binop("+", x, y), items, 0.0)
        elif name == "reduce_prod":
            out[idx] = functools.reduce(lambda x, y: _binop("*", x, y), items, 1.0)
        elif name in ("reduce_max", "reduce_min"):
            fn = "max" if name == "reduce_max" else "min"
            acc = items[0]
            for it in items[1:]:
                acc = (max if fn == "max" else min)(acc, it) if _is_num(acc) and _is_num(it) else _fn(fn, acc, it)
            out[idx] = acc
        else:  # the other reductions (argmax, reduce_and, ...) have no SBML equivalent
            raise _unsupported(name)
    return [_maybe_numeric(out, eqn.outvars[0].aval.dtype)]


def _dot_general(eqn, invals: list[np.ndarray]) -> list[np.ndarray]:
    (lc, rc), (lb, rb) = eqn.params["dimension_numbers"]
    lhs, rhs = _as_object(invals[0]), _as_object(invals[1])
    letters = iter("abcdefghijklmnopqrstuvwxyz")
    ls = [""] * lhs.ndim  # "": not yet lettered
    rs = [""] * rhs.ndim
    batch = []
    for i, j in zip(lb, rb):
        c = next(letters)
        ls[i] = rs[j] = c
        batch.append(c)
    for i, j in zip(lc, rc):
        c = next(letters)
        ls[i] = rs[j] = c
    lfree = []
    for i in range(lhs.ndim):
        if not ls[i]:
            ls[i] = next(letters)
            lfree.append(ls[i])
    rfree = []
    for j in range(rhs.ndim):
        if not rs[j]:
            rs[j] = next(letters)
            rfree.append(rs[j])
    spec = f"{''.join(ls)},{''.join(rs)}->{''.join(batch + lfree + rfree)}"
    out = np.asarray(np.einsum(spec, lhs, rhs), dtype=object)
    return [_maybe_numeric(out, eqn.outvars[0].aval.dtype)]


def _folding(rule: Callable) -> Callable:
    """`rule`, except that an equation without symbolic operands is evaluated (constant folding)."""

    def fold(eqn, invals: list[np.ndarray]) -> list[np.ndarray]:
        if any(v.dtype == object for v in invals):
            return rule(eqn, invals)
        outs = eqn.primitive.bind(*[jnp.asarray(v) for v in invals], **eqn.params)
        return [np.asarray(o) for o in (outs if eqn.primitive.multiple_results else [outs])]

    return fold


def _no_rule(eqn, invals):
    del invals  # nothing to evaluate: the primitive has no SBML equivalent
    raise _unsupported(eqn.primitive.name)


# The symbolic domain: every value is a numpy array, numeric where known and of dtype object (holding `_E`
# expressions and numbers) where it depends on parameters, states or time.
_RULES = Rules(
    table={
        name: _folding(rule)
        for name, rule in rule_table(
            elementwise=_elementwise,
            identity=lambda eqn, invals: invals,
            movement=_movement,
            reduction=_reduce,
            dot_general=_dot_general,
        ).items()
    },
    default=_folding(_no_rule),
    constant=lambda value, aval: np.asarray(value),
)


# --------------------------------------------------------------------------------------------------------------
# Names

_RESERVED = {
    # Antimony keywords and SBML/MathML names that cannot be used as identifiers
    "time",
    "model",
    "module",
    "end",
    "function",
    "species",
    "compartment",
    "reaction",
    "const",
    "var",
    "at",
    "after",
    "priority",
    "persistent",
    "fromtrigger",
    "t0",
    "in",
    "is",
    "has",
    "import",
    "delete",
    "unit",
    "formula",
    "ext",
    "substanceonly",
    "dna",
    "gene",
    "operator",
    "and",
    "or",
    "not",
    "xor",
    "true",
    "false",
    "pi",
    "exponentiale",
    "e",
    "inf",
    "infinity",
    "nan",
    "notanumber",
    "avogadro",
    "rateof",
    "exp",
    "ln",
    "log",
    "log10",
    "pow",
    "power",
    "sqrt",
    "root",
    "abs",
    "floor",
    "ceil",
    "ceiling",
    "factorial",
    "min",
    "max",
    "piecewise",
    "sin",
    "cos",
    "tan",
    "sec",
    "csc",
    "cot",
    "sinh",
    "cosh",
    "tanh",
    "asin",
    "acos",
    "atan",
    "arcsin",
    "arccos",
    "arctan",
    "delay",
    "quotient",
    "rem",
    "implies",
    "eq",
    "neq",
    "lt",
    "gt",
    "leq",
    "geq",
    "plus",
    "minus",
    "times",
    "divide",
    "sbo",
    "identity",
    "event",
    "events",
}


def _sanitize(name: str, taken: set[str]) -> str:
    s = re.sub(r"[^A-Za-z0-9_]", "_", name)
    if not s or not (s[0].isalpha() or s[0] == "_"):
        s = "p_" + s
    while s.lower() in _RESERVED or s in taken:
        s += "_"
    taken.add(s)
    return s


# --------------------------------------------------------------------------------------------------------------
# The symbolic model


@dataclasses.dataclass(frozen=True)
class SymbolicModel:
    """A carkinetics model as infix expressions (the intermediate form of the SBML export).

    **Fields:**

    - `name`: model identifier.
    - `state_ids`, `observable_ids`: exported identifiers, in the model's order.
    - `parameter_ids`: mapping dotted parameter name -> exported identifier (array parameters map each
      element to `id_0`, `id_1`, ...).
    - `parameters`: rows `(id, value, unit, description, source, tag)` in natural units.
    - `rates`, `observables`, `initial`: one expression per state / observable / state.
    - `breakpoints`: expressions of the times of declared vector-field discontinuities.
    - `state_units`, `observable_units`: units by exported identifier.
    """

    name: str
    state_ids: tuple[str, ...]
    observable_ids: tuple[str, ...]
    parameter_ids: dict[str, str]
    parameters: tuple[tuple[str, float, str, str, str, str], ...]
    rates: tuple[str, ...]
    observables: tuple[str, ...]
    initial: tuple[str, ...]
    breakpoints: tuple[str, ...]
    state_units: dict[str, str]
    observable_units: dict[str, str]


def _x64():
    enable = getattr(jax, "enable_x64", None)
    return enable(True) if enable is not None else contextlib.nullcontext()


def symbolic_model(model: ck.AbstractKineticModel, *, name: str | None = None, time: str = "time") -> SymbolicModel:
    """Trace `model` into infix expressions with named parameters, states and `time`.

    `time` is the expression used for the model's time (e.g. `"(time + t_start)"` for a shifted clock).

    **Raises:** `ValueError` if `model` is not a carkinetics model or uses a JAX primitive without an SBML
    equivalent (the message names the primitive).
    """
    if not isinstance(model, ck.AbstractKineticModel):
        raise ValueError(f"`model` must be a carkinetics AbstractKineticModel, got {type(model).__name__}.")
    name = name or type(model).__name__
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
        raise ValueError(f"`name` must be an identifier (letters, digits, underscores), got {name!r}.")
    taken: set[str] = set()
    state_names = model.state_names()
    obs_names = model.observable_names()
    state_ids = tuple(_sanitize(s, taken) for s in state_names)
    obs_ids = tuple(_sanitize(o, taken) for o in obs_names)
    plist = list(ck.parameters(model).values())
    param_ids: dict[str, str] = {}
    rows = []
    sym_params = []
    for p in plist:
        val = np.asarray(p.value, dtype=float)
        pid = _sanitize(p.name, taken)
        param_ids[p.name] = pid
        if val.ndim == 0:
            rows.append((pid, float(val), p.info.unit, p.info.description, p.info.source, p.info.tag))
            sym_params.append(np.asarray(_E(pid), dtype=object))
        else:
            arr = np.empty(val.shape, dtype=object)
            for k, idx in enumerate(np.ndindex(val.shape)):
                eid = _sanitize(f"{pid}_{k}", taken)
                rows.append(
                    (
                        eid,
                        float(val[idx]),
                        p.info.unit,
                        f"{p.info.description} (element {idx})",
                        p.info.source,
                        p.info.tag,
                    )
                )
                arr[idx] = _E(eid)
            sym_params.append(arr)
    getters = [functools.partial(_get, parts=tuple(p.name.split("."))) for p in plist]

    def with_params(pvals):
        if not plist:
            return model
        return eqx.tree_at(lambda m: [g(m) for g in getters], model, list(pvals))

    def traced(pvals, t, y):
        m = with_params(pvals)
        return m.vector_field_flat(t, y, None), m.observe_flat(t, y), m.initial_state_flat(), m.breakpoints()

    with _x64():
        pvals0 = [jnp.asarray(np.asarray(p.value, dtype=float)) for p in plist]
        y0 = jnp.zeros((len(state_names),))
        closed = jax.make_jaxpr(traced)(pvals0, jnp.asarray(0.0), y0)
        t_sym = np.asarray(_E(time), dtype=object)
        y_sym = np.empty((len(state_names),), dtype=object)
        for i, sid in enumerate(state_ids):
            y_sym[i] = _E(sid)
        rates, obs, init, bps = eval_jaxpr(closed.jaxpr, closed.consts, [*sym_params, t_sym, y_sym], _RULES)

    def strs(a):
        return tuple(_fmt(v) for v in np.asarray(a, dtype=object).reshape(-1))

    return SymbolicModel(
        name=name,
        state_ids=state_ids,
        observable_ids=obs_ids,
        parameter_ids=param_ids,
        parameters=tuple(rows),
        rates=strs(rates),
        observables=strs(obs),
        initial=strs(init),
        breakpoints=strs(bps),
        state_units={sid: model.state_units.get(s, "") for sid, s in zip(state_ids, state_names)},
        observable_units={oid: model.observable_units.get(o, "") for oid, o in zip(obs_ids, obs_names)},
    )


def _get(m, parts):
    return functools.reduce(getattr, parts, m)


# --------------------------------------------------------------------------------------------------------------
# Antimony text


def _comment(s: str) -> str:
    return " ".join(str(s).split())


def _events(sm: SymbolicModel, regimen: ck.Regimen | None, state_names: Sequence[str], t0: float = 0.0):
    """(extra rate terms per state id, parameter lines, event lines) for the regimen; SBML time = day - t0."""
    sid = dict(zip(state_names, sm.state_ids))
    extra: dict[str, list[str]] = {s: [] for s in sm.state_ids}
    plines: list[str] = []
    elines: list[str] = []
    if regimen is None:
        return extra, plines, elines
    unknown = sorted(regimen.state_names() - set(state_names))
    if unknown:
        raise ValueError(f"Unknown state(s) {unknown} in `regimen`; valid states are {list(state_names)}.")
    # Each dose's events fire in regimen order at equal times: priorities decrease along the regimen.
    n_ev = 0
    prio = 1000000
    for k, d in enumerate(regimen.doses):
        if isinstance(d, ck.Bolus):
            for t, amt in zip(
                np.asarray(d.times()).reshape(-1), np.broadcast_to(np.asarray(d.amount), np.asarray(d.times()).shape)
            ):
                n_ev += 1
                prio -= 1
                s = sid[d.state]
                elines.append(
                    f"  dose_{n_ev}: at (time >= {_fmt(float(t) - t0)}), priority = {prio}, t0 = false, "
                    f"fromTrigger = false: {s} = {s} + {_fmt(float(amt))};  // bolus into {d.state}, "
                    f"day {float(t):g}"
                )
        elif isinstance(d, ck.FractionalKill):
            for t in np.asarray(d.times()).reshape(-1):
                n_ev += 1
                prio -= 1
                f = float(np.asarray(d.fraction))
                assigns = ", ".join(f"{sid[s]} = {sid[s]} * {_fmt(1.0 - f)}" for s in d.states)
                elines.append(
                    f"  dose_{n_ev}: at (time >= {_fmt(float(t) - t0)}), priority = {prio}, t0 = false, "
                    f"fromTrigger = false: {assigns};  // fractional kill {f:g}, day {float(t):g}"
                )
        elif isinstance(d, ck.Infusion):
            rate = float(np.asarray(d.rate))
            dur = float(np.asarray(d.duration))
            for j, t in enumerate(np.asarray(d.starts()).reshape(-1)):
                n_ev += 1
                prio -= 1
                rid = f"infusion_{k + 1}_{j + 1}_rate"
                s = sid[d.state]
                plines.append(
                    f"  {rid} = 0;  // {d.state} units/d, zero-order infusion from day {float(t):g} for {dur:g} d"
                )
                extra[s].append(rid)
                elines.append(
                    f"  dose_{n_ev}_on: at (time >= {_fmt(float(t) - t0)}), priority = {prio}, t0 = false, "
                    f"fromTrigger = false: {rid} = {_fmt(rate)};"
                )
                elines.append(
                    f"  dose_{n_ev}_off: at (time >= {_fmt(float(t) + dur - t0)}), priority = {prio}, "
                    f"t0 = false, fromTrigger = false: {rid} = 0;"
                )
        else:  # pragma: no cover - Regimen only holds the three types
            raise ValueError(f"Unsupported dose type {type(d).__name__}.")
    return extra, plines, elines


def _default_t0(regimen: ck.Regimen | None) -> float:
    first = None if regimen is None else regimen.first_time()
    return 0.0 if first is None else min(0.0, float(first))


def to_antimony(
    model: ck.AbstractKineticModel,
    regimen: ck.Regimen | ck.AbstractDose | None = None,
    *,
    name: str | None = None,
    t0: float | None = None,
) -> str:
    """Antimony text of `model` with its parameters (and `regimen` as SBML events).

    **Arguments:**

    - `model`: any [`carkinetics.AbstractKineticModel`][].
    - `regimen`: optional [`carkinetics.Regimen`][] (or a single dose): boluses and fractional kills become
      events, infusions become event-switched rate parameters. Times are days, as in carkinetics.
    - `name`: model identifier (default: the class name).
    - `t0`: the carkinetics day at which the SBML clock starts (SBML `time` = day - `t0`), because SBML
      simulators start at time 0 and evaluate events from there. Default: the first dose day if it is negative
      (e.g. -5 for fludarabine on day -5), else 0. A non-zero offset is stored in the parameter `t_start` and
      the model's own time reads `(time + t_start)`.

    **Returns:** Antimony source text (states with rate rules, observables as assignment rules, parameters
    with their unit, tag and source in comments).

    **Raises:** `ValueError` for an unsupported JAX primitive or an unknown state in `regimen`.

    **Example:**

    ```python
    import carkinetics as ck
    from carkinetics.models import OneCompartmentPK
    import carkinetics.io as cio
    text = cio.to_antimony(OneCompartmentPK(), ck.Bolus(0.0, 100.0, "central"))
    assert "central' = " in text
    ```
    """
    if isinstance(regimen, ck.AbstractDose):
        regimen = ck.Regimen([regimen])
    if regimen is not None and not isinstance(regimen, ck.Regimen):
        raise ValueError(f"`regimen` must be a Regimen, a dose or None, got {type(regimen).__name__}.")
    t0 = _default_t0(regimen) if t0 is None else float(t0)
    if not math.isfinite(t0):
        raise ValueError(f"`t0` must be a finite day, got {t0!r}.")
    first = None if regimen is None else regimen.first_time()
    if first is not None and float(first) < t0:
        raise ValueError(
            f"`t0` = {t0} is later than the first dose on day {float(first)}; the SBML "
            "clock must start at or before the first dose."
        )
    sm = symbolic_model(model, name=name, time="(time + t_start)" if t0 != 0.0 else "time")
    if t0 != 0.0 and "t_start" in {*sm.state_ids, *sm.observable_ids, *(p[0] for p in sm.parameters)}:
        raise ValueError(
            "The model has an output or parameter named 't_start', which the time offset needs; "
            "export with t0=0 or rename it."
        )
    extra, plines, elines = _events(sm, regimen, model.state_names(), t0)
    clock = "SBML time 0 = day 0" if t0 == 0.0 else f"SBML time 0 = day {t0:g}: carkinetics day = time + t_start"
    lines = [
        f"// {sm.name}: exported by carkinetics {ck.__version__} from {type(model).__module__}.{type(model).__name__}",
        f"// Time unit: day (day 0 = CAR-T infusion; {clock}). States with rate rules; observables as assignment "
        "rules.",
        f"model {sm.name}()",
        "  // states (rate rules, per day)",
    ]
    for s, r in zip(sm.state_ids, sm.rates):
        terms = " + ".join([r, *extra[s]])
        lines.append(f"  {s}' = {terms};  // {sm.state_units.get(s, '')}")
    lines.append("  // observables")
    for o, r in zip(sm.observable_ids, sm.observables):
        lines.append(f"  {o} := {r};  // {sm.observable_units.get(o, '')}")
    lines.append("  // initial state")
    for s, v in zip(sm.state_ids, sm.initial):
        lines.append(f"  {s} = {v};")
    lines.append("  // parameters: value; unit; confidence tag; description; source")
    if t0 != 0.0:
        lines.append(
            f"  t_start = {_fmt(t0)};  // d; carkinetics day at SBML time 0 (export setting, not a model parameter)"
        )
    for pid, val, unit, desc, src, tag in sm.parameters:
        lines.append(f"  {pid} = {_fmt(val)};  // {unit}; [{tag}] {_comment(desc)}; {_comment(src)}")
    if sm.breakpoints:
        lines.append("  // declared discontinuities of the vector field (no-op events restart the integrator)")
        lines.append("  breakpoint_counter = 0;")
        for k, b in enumerate(sm.breakpoints):
            b = b if t0 == 0.0 else f"({b} - t_start)"
            lines.append(
                f"  breakpoint_{k + 1}: at (time >= {b}), t0 = false: breakpoint_counter = breakpoint_counter + 1;"
            )
    if plines or elines:
        lines.append("  // dosing regimen")
        lines.extend(plines)
        lines.extend(elines)
    lines.append("end")
    return "\n".join(lines) + "\n"


def antimony_to_sbml(text: str, name: str | None = None) -> str:
    """Convert Antimony text to an SBML (Level 3) string with the `antimony` package.

    **Raises:** `ImportError` with install instructions if `antimony` is missing; `ValueError` with
    Antimony's message if the text does not parse.
    """
    try:
        import antimony
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError(
            'SBML export needs the `antimony` package: pip install -e ".[sbml]" (or pip install antimony).'
        ) from err
    antimony.clearPreviousLoads()
    if antimony.loadAntimonyString(text) < 0:
        raise ValueError(f"Antimony could not parse the model text: {antimony.getLastError()}")
    module = name or antimony.getMainModuleName()
    sbml = antimony.getSBMLString(module)
    if not sbml:
        raise ValueError(f"Antimony produced no SBML for module {module!r}: {antimony.getLastError()}")
    return sbml


def to_sbml(
    model: ck.AbstractKineticModel,
    regimen: ck.Regimen | ck.AbstractDose | None = None,
    *,
    name: str | None = None,
    t0: float | None = None,
) -> str:
    """SBML (Level 3) string of `model` with its parameters and optional `regimen` (see [`to_antimony`][]).

    Runs in libroadrunner, COPASI or AMICI. Needs the `antimony` package.

    **Example:**

    ```python
    import carkinetics as ck
    from carkinetics.models import TwoCompartmentPK
    import carkinetics.io as cio
    sbml = cio.to_sbml(TwoCompartmentPK(), ck.Bolus(0.0, 100.0, "central"))
    assert "<sbml" in sbml
    ```
    """
    sm_name = name or type(model).__name__
    return antimony_to_sbml(to_antimony(model, regimen, name=sm_name, t0=t0), sm_name)


def write_sbml(
    model: ck.AbstractKineticModel,
    path,
    regimen: ck.Regimen | ck.AbstractDose | None = None,
    *,
    name: str | None = None,
    t0: float | None = None,
) -> None:
    """Write `to_sbml(model, regimen, t0=t0)` to `path` (an `.xml`/`.sbml` file), atomically."""
    from .._core._files import atomic_write_text

    atomic_write_text(path, to_sbml(model, regimen, name=name, t0=t0))
