"""Parameter metadata, validation, tables and unconstrained transforms.

A model parameter is an ordinary field of an `eqx.Module` declared with [`carkinetics.param`][], which
attaches a [`carkinetics.ParamInfo`][] (unit, bounds, description, source, confidence tag) to the field's
metadata. Parameters may live in nested modules (parameter groups); they are addressed by dotted paths such as
`"car.rho"`.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, NamedTuple

import equinox as eqx
import jax
import jax.core
import jax.numpy as jnp
import numpy as np

from ._custom_types import Array, Float

_META_KEY = "carkinetics_param"

#: Confidence tags of every number: how it was obtained (the first four grade published values).
CONFIDENCE_TAGS: dict[str, str] = {
    "R": "read verbatim in the cited primary source (abstract, label, table)",
    "R2": "read in a secondary source quoting the primary work; not checked against it",
    "D": "derived by arithmetic from [R]/[R2] numbers (the working is in the description)",
    "M": "recalled or textbook value, NOT verified against the primary source",
    "A": "modelling assumption chosen by carkinetics (no published value exists)",
    "F": "fitted by carkinetics to the named published targets (not a published estimate)",
}

#: How uncertain a value of each confidence tag is: the standard deviation on the unconstrained (log / logit) scale.
#: The one table behind the calibration priors (`CalibrationProblem(priors="tags")`) and the parameter samples of
#: the uncertainty analyses (`sample_parameters`, the translation map). A published value read in the primary
#: source (`R`) is trusted to about +/-30 % (1 sd), a recalled one (`M`) only to a factor ~e, an assumption (`A`)
#: least (a factor ~4.5). A fitted value (`F`) is better described by its own posterior sd where one is known
#: (the fit file's `sd`); 1.0 is the fallback.
PRIOR_SD: dict[str, float] = {"R": 0.3, "R2": 0.5, "D": 0.5, "M": 1.0, "A": 1.5, "F": 1.0}


@dataclasses.dataclass(frozen=True)
class ParamInfo:
    """Metadata of one model parameter.

    **Fields:**

    - `unit`: physical unit, e.g. `"1/d"`, `"cells/uL"`, `"L/h"`; `"1"` for dimensionless.
    - `description`: one line saying what the parameter is.
    - `source`: citation (first author, year, journal, DOI) or the derivation.
    - `tag`: confidence tag, one of [`carkinetics.CONFIDENCE_TAGS`][].
    - `lower`, `upper`: closed bounds of the admissible values; the default `(0, inf)` declares positivity.
    """

    unit: str
    description: str
    source: str
    tag: str
    lower: float = 0.0
    upper: float = math.inf

    def __post_init__(self):
        if self.tag not in CONFIDENCE_TAGS:
            raise ValueError(
                f"Confidence tag {self.tag!r} is not one of {sorted(CONFIDENCE_TAGS)} "
                f"(parameter described as {self.description!r})."
            )
        if not self.lower < self.upper:
            raise ValueError(
                f"Parameter bounds must satisfy lower < upper, got lower={self.lower}, upper={self.upper} "
                f"(parameter described as {self.description!r})."
            )


def param(
    default: float,
    *,
    unit: str,
    description: str,
    source: str,
    tag: str,
    lower: float = 0.0,
    upper: float = math.inf,
) -> Any:
    """Declare a documented model parameter as an `eqx.Module` field.

    **Arguments:**

    - `default`: the default value, in `unit`.
    - `unit`, `description`, `source`, `tag`, `lower`, `upper`: see [`carkinetics.ParamInfo`][].

    **Returns:** a dataclass field carrying the metadata.

    **Example:**

    ```python
    import equinox as eqx
    import carkinetics as ck

    class Decay(eqx.Module):
        k: float = ck.param(0.033, unit="1/d", description="IgG elimination rate",
                            source="t1/2 = 21 d; immunodeficiencyuk.org", tag="D")
    ```
    """
    info = ParamInfo(unit=unit, description=description, source=source, tag=tag, lower=lower, upper=upper)
    if not (lower <= default <= upper):
        raise ValueError(
            f"The default {default!r} of the parameter described as {description!r} lies outside its "
            f"declared bounds [{lower}, {upper}]."
        )
    return eqx.field(default=default, metadata={_META_KEY: info})


class Parameter(NamedTuple):
    """One row of a parameter table: dotted `name`, current `value` and its [`carkinetics.ParamInfo`][]."""

    name: str
    value: Any
    info: ParamInfo


def _iter_parameters(module: Any, prefix: str = "") -> Iterator[Parameter]:
    if not dataclasses.is_dataclass(module):
        return
    for field in dataclasses.fields(module):
        value = getattr(module, field.name, None)
        info = field.metadata.get(_META_KEY)
        if info is not None:
            yield Parameter(prefix + field.name, value, info)
        elif isinstance(value, eqx.Module):
            yield from _iter_parameters(value, prefix + field.name + ".")


def parameters(model: eqx.Module) -> dict[str, Parameter]:
    """All declared parameters of `model` (recursing into nested modules), keyed by dotted name."""
    return {p.name: p for p in _iter_parameters(model)}


def _getter(name: str):
    parts = name.split(".")
    return lambda m: functools.reduce(getattr, parts, m)


def _unknown(model: eqx.Module, name: str, what: str = "parameter") -> ValueError:
    known = ", ".join(sorted(parameters(model)))
    return ValueError(f"Unknown {what} {name!r} for {type(model).__name__}; known parameters are: {known}.")


def replace(model: eqx.Module, updates: Mapping[str, Any] | None = None, /, **kwargs: Any) -> Any:
    """Return a copy of `model` with some parameter values replaced.

    **Arguments:**

    - `updates`: mapping from dotted parameter name (e.g. `"car.rho"`) to the new value.
    - `**kwargs`: top-level parameter names as keywords.

    **Raises:** `ValueError` for an unknown name or a concrete value outside the declared bounds.

    **Example:**

    ```python
    from carkinetics.models import OneCompartmentPK
    m = OneCompartmentPK().replace(cl=2.0)
    assert float(m.cl) == 2.0
    ```
    """
    allp = parameters(model)
    changes = dict(updates or {}, **kwargs)
    for name, value in changes.items():
        if name not in allp:
            raise _unknown(model, name)
        _check_concrete_value(name, value, allp[name].info)
    if not changes:
        return model
    names = list(changes)
    return eqx.tree_at(
        lambda m: [_getter(n)(m) for n in names],
        model,
        [changes[n] for n in names],
        is_leaf=lambda x: x is None,
    )


def _is_concrete(x: Any) -> bool:
    return not isinstance(x, jax.core.Tracer)


def _fmt(arr: np.ndarray) -> str:
    return repr(float(arr)) if arr.ndim == 0 else np.array2string(arr, precision=6)


def _check_concrete_value(name: str, value: Any, info: ParamInfo) -> None:
    if not _is_concrete(value):
        return
    arr = np.asarray(value, dtype=float)
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"Parameter {name!r} must be finite, got {_fmt(arr)} {info.unit}.")
    if np.any(arr < info.lower) or np.any(arr > info.upper):
        raise ValueError(
            f"Parameter {name!r} = {_fmt(arr)} {info.unit} is outside its declared bounds "
            f"[{info.lower}, {info.upper}] ({info.description})."
        )


def validate_parameters(model: eqx.Module, *, check_traced: bool = True) -> Any:
    """Check every declared parameter is finite and within its bounds.

    Concrete values raise `ValueError` naming the parameter; traced values (inside `jit`/`vmap`/`grad`) are
    checked with `eqx.error_if` (unless `check_traced=False`), and the returned model must be used for the check to
    take effect.
    """
    traced = []
    for p in _iter_parameters(model):
        if _is_concrete(p.value):
            _check_concrete_value(p.name, p.value, p.info)
        else:
            traced.append(p)
    if not traced or not check_traced:
        return model
    checked = []
    for p in traced:
        bad = ~jnp.isfinite(p.value) | (p.value < p.info.lower) | (p.value > p.info.upper)
        checked.append(
            eqx.error_if(
                p.value,
                bad,
                f"Parameter {p.name!r} is non-finite or outside its declared bounds "
                f"[{p.info.lower}, {p.info.upper}] {p.info.unit}.",
            )
        )
    return eqx.tree_at(lambda m: [_getter(p.name)(m) for p in traced], model, checked)


def traced_parameters_invalid(model: eqx.Module) -> Any:
    """Boolean scalar: is any *traced* parameter non-finite or outside its bounds? (`False` if none is traced.)

    Concrete parameters are not looked at here; check them with [`carkinetics.validate_parameters`][].
    """
    bad = jnp.asarray(False)
    for p in _iter_parameters(model):
        if not _is_concrete(p.value):
            v = jnp.asarray(p.value)
            bad = bad | jnp.any(~jnp.isfinite(v) | (v < p.info.lower) | (v > p.info.upper))
    return bad


def _strong(x: Any) -> Any:
    if isinstance(x, float):
        return jnp.asarray(x, dtype=float)
    if isinstance(x, (jax.Array, np.ndarray)) and jnp.issubdtype(x.dtype, jnp.floating):
        # weakly typed arrays (e.g. jnp.asarray(0.5)) would compile differently from strongly typed ones
        return jnp.asarray(x, dtype=x.dtype) if getattr(x, "weak_type", False) or isinstance(x, np.ndarray) else x
    return x


def floats_to_arrays(model: Any) -> Any:
    """Turn Python-float leaves (and weakly typed float arrays) into strongly typed JAX arrays of the default
    float dtype, so that a model built from floats, from `jnp.asarray(...)` or by `ParameterSpace.with_values`
    compiles once: new *values* never trigger recompilation."""
    return jax.tree_util.tree_map(_strong, model)


class ParameterTable(tuple):
    """A tuple of [`carkinetics.Parameter`][] rows that prints as a Markdown table."""

    def to_markdown(self) -> str:
        head = "| parameter | value | unit | bounds | tag | description | source |\n|---|---|---|---|---|---|---|"
        rows = []
        for p in self:
            v = np.asarray(p.value)
            val = f"{float(v):.6g}" if v.ndim == 0 else np.array2string(v, precision=4)
            rows.append(
                f"| {p.name} | {val} | {p.info.unit} | [{p.info.lower:g}, {p.info.upper:g}] | {p.info.tag} | "
                f"{p.info.description} | {p.info.source} |"
            )
        return "\n".join([head, *rows])

    def to_csv(self, path: str) -> None:
        """Write the table as CSV (one row per parameter)."""
        import csv

        from ._files import atomic_text_file

        with atomic_text_file(path, newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["parameter", "value", "unit", "lower", "upper", "tag", "description", "source"])
            for p in self:
                w.writerow(
                    [
                        p.name,
                        float(np.asarray(p.value)),
                        p.info.unit,
                        p.info.lower,
                        p.info.upper,
                        p.info.tag,
                        p.info.description,
                        p.info.source,
                    ]
                )

    def __str__(self) -> str:
        return self.to_markdown()


def parameter_table(model: eqx.Module) -> ParameterTable:
    """The parameters of `model` as a printable [`carkinetics.ParameterTable`][]."""
    return ParameterTable(_iter_parameters(model))


# --------------------------------------------------------------------------------------------------------------
# Unconstrained transforms


def _forward(x, lo: float, hi: float):
    if math.isfinite(lo) and math.isfinite(hi):
        u = (x - lo) / (hi - lo)
        return jnp.log(u) - jnp.log1p(-u)
    if math.isfinite(lo):
        return jnp.log(x - lo)
    if math.isfinite(hi):
        return jnp.log(hi - x)
    return x


def _inverse(z, lo: float, hi: float):
    if math.isfinite(lo) and math.isfinite(hi):
        return lo + (hi - lo) * jax.nn.sigmoid(z)
    if math.isfinite(lo):
        return lo + jnp.exp(z)
    if math.isfinite(hi):
        return hi - jnp.exp(z)
    return z


class ParameterSpace(eqx.Module):
    """A bijection between chosen scalar parameters of a model and an unconstrained vector.

    Positive parameters map through `log`, parameters bounded on both sides through a scaled `logit`, and
    unbounded ones are left as they are. This is the space in which calibration optimises.

    **Arguments:**

    - `model`: the model whose parameters are addressed (used only to read names and bounds).
    - `names`: dotted names of the parameters to map; default all scalar parameters.
    - `bounds`: optional working bounds `{name: (lower, upper)}` strictly inside the declared ones, used for the
      transform instead of the declared bounds (e.g. a time declared on `[-1e4, inf)` estimated on `(0, 1000)`).

    **Example:**

    ```python
    import carkinetics as ck
    from carkinetics.models import OneCompartmentPK
    model = OneCompartmentPK()
    space = ck.ParameterSpace(model, ["cl", "v"])
    z = space.to_vector(model)              # log(cl), log(v)
    model2 = space.to_model(model, z + 0.1)
    ```
    """

    names: tuple[str, ...] = eqx.field(static=True)
    lower: tuple[float, ...] = eqx.field(static=True)
    upper: tuple[float, ...] = eqx.field(static=True)
    units: tuple[str, ...] = eqx.field(static=True)

    def __init__(
        self,
        model: eqx.Module,
        names: Sequence[str] | None = None,
        *,
        bounds: Mapping[str, tuple[float, float]] | None = None,
    ):
        allp = parameters(model)
        if names is None:
            names = [n for n, p in allp.items() if np.ndim(p.value) == 0]
        if isinstance(names, str):
            raise ValueError(f"`names` must be a sequence of parameter names, got the single string {names!r}.")
        for n in names:
            if n not in allp:
                raise _unknown(model, n)
            if np.ndim(allp[n].value) != 0:
                raise ValueError(f"Parameter {n!r} is not a scalar; ParameterSpace maps scalar parameters only.")
        if len(set(names)) != len(names):
            raise ValueError(f"`names` contains duplicates: {list(names)}.")
        lower = [allp[n].info.lower for n in names]
        upper = [allp[n].info.upper for n in names]
        for name, lohi in (bounds or {}).items():
            if name not in names:
                raise ValueError(f"`bounds` names {name!r}, which is not mapped; mapped parameters are {list(names)}.")
            lo, hi = (float(x) for x in lohi)
            info = allp[name].info
            if not (info.lower <= lo < hi <= info.upper):
                raise ValueError(
                    f"Working bounds ({lo}, {hi}) of {name!r} must lie inside its declared bounds "
                    f"[{info.lower}, {info.upper}] with lower < upper."
                )
            value = allp[name].value
            if _is_concrete(value) and not lo < float(np.asarray(value)) < hi:
                raise ValueError(
                    f"The current value {float(np.asarray(value))} of {name!r} lies outside its working "
                    f"bounds ({lo}, {hi})."
                )
            i = list(names).index(name)
            lower[i], upper[i] = lo, hi
        self.names = tuple(names)
        self.lower = tuple(lower)
        self.upper = tuple(upper)
        self.units = tuple(allp[n].info.unit for n in names)

    def to_vector(self, model: eqx.Module) -> Float[Array, " n"]:
        """Unconstrained vector of the current values (raises if a value sits on a bound)."""
        vals = [_getter(n)(model) for n in self.names]
        for n, v, lo, hi in zip(self.names, vals, self.lower, self.upper):
            if _is_concrete(v) and (float(v) <= lo or float(v) >= hi):
                raise ValueError(
                    f"Parameter {n!r} = {float(v)!r} lies on or outside the boundary of ({lo}, {hi}); it cannot be "
                    "mapped to an unconstrained value. Fix it instead of estimating it."
                )
        zs = [_forward(jnp.asarray(v, dtype=float), lo, hi) for v, lo, hi in zip(vals, self.lower, self.upper)]
        return jnp.stack(zs) if zs else jnp.zeros((0,))

    def to_model(self, model: eqx.Module, z: Float[Array, " n"]) -> Any:
        """Model with the mapped parameters set from the unconstrained vector `z`."""
        if z.shape != (len(self.names),):
            raise ValueError(f"`z` must have shape ({len(self.names)},) for parameters {self.names}, got {z.shape}.")
        vals = [_inverse(z[i], lo, hi) for i, (lo, hi) in enumerate(zip(self.lower, self.upper))]
        return eqx.tree_at(lambda m: [_getter(n)(m) for n in self.names], model, vals)

    def values(self, model: eqx.Module) -> Float[Array, " n"]:
        """Current values (natural units) of the mapped parameters, as a vector."""
        return jnp.stack([jnp.asarray(_getter(n)(model), dtype=float) for n in self.names])

    def with_values(self, model: eqx.Module, values: Float[Array, " n"]) -> Any:
        """Model with the mapped parameters set from natural-unit `values`."""
        return eqx.tree_at(
            lambda m: [_getter(n)(m) for n in self.names], model, [values[i] for i in range(len(self.names))]
        )


def get_parameter(model: eqx.Module, name: str) -> Any:
    """The value of the parameter at dotted path `name`."""
    allp = parameters(model)
    if name not in allp:
        raise _unknown(model, name)
    return allp[name].value
