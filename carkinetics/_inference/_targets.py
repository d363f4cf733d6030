"""Published calibration targets: tidy-file loading and validation, units, and differentiable summary statistics.

A *target row* is one published number (a value with its spread, unit, time, population, citation, DOI and
confidence tag), read from a tidy CSV file such as `calibration/data/human_sle_targets.csv` by
[`carkinetics.load_targets`][]. The validator rejects malformed or unit-inconsistent rows with a sentence naming the
file, the row and the column.

A *summary statistic* ([`carkinetics.PeakHeight`][], [`carkinetics.PeakTime`][], [`carkinetics.TimeBelow`][],
[`carkinetics.TimeAbove`][], [`carkinetics.FoldChange`][], [`carkinetics.HalfLife`][], [`carkinetics.ValueAt`][],
[`carkinetics.CrossingTime`][]) maps a simulated trajectory of one observable on a time grid to a scalar,
differentiably; the numerics are those of `carkinetics.metrics`.
"""

from __future__ import annotations

import abc
import csv
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, ClassVar, NamedTuple

import equinox as eqx
import jax.numpy as jnp

from .. import _metrics as metrics
from .._core._custom_types import Array, Float

# --------------------------------------------------------------------------------------------------------------
# Units

#: unit string -> (physical dimension, factor converting one unit into the dimension's canonical unit).
UNITS: dict[str, tuple[str, float]] = {
    "d": ("time", 1.0),
    "h": ("time", 1.0 / 24.0),
    "min": ("time", 1.0 / 1440.0),
    "wk": ("time", 7.0),
    "mo": ("time", 30.4375),
    "y": ("time", 365.25),
    "1/d": ("rate", 1.0),
    "1/h": ("rate", 24.0),
    "cells/uL": ("cell_concentration", 1.0),
    "cells/mL": ("cell_concentration", 1.0e-3),
    "cells/L": ("cell_concentration", 1.0e-6),
    "copies/ug": ("transgene_level", 1.0),
    "mg/L": ("mass_concentration", 1.0),
    "ng/mL": ("mass_concentration", 1.0e-3),
    "pg/mL": ("mass_concentration", 1.0e-6),
    "mg*h/L": ("exposure", 1.0),
    "1": ("dimensionless", 1.0),
    "%": ("dimensionless", 0.01),
    "grade": ("dimensionless", 1.0),  # CRS grade (ASTCT 0-4) as a number
    "score": ("dimensionless", 1.0),  # clinical index (SLEDAI-2K) as a number
    "g/g": ("dimensionless", 1.0),  # protein/creatinine ratio
    "cells": ("cell_count", 1.0),
    "mg*d/L": ("exposure", 24.0),
    "IU/mL": ("titre", 1.0),
    "AU": ("arbitrary", 1.0),
}

MEASURES = (
    "mean",
    "median",
    "typical",
    "proportion",
    "mode",
    "reference_range",
    "single_patient",
    "lower_bound",
    "upper_bound",
)
SPREAD_KINDS = ("none", "sd", "se", "rse", "range", "ci95", "iqr")
_TAGS = ("R", "R2", "D", "M", "A", "F")
COLUMNS = (
    "target_id",
    "quantity",
    "measure",
    "value",
    "spread_kind",
    "spread",
    "spread_low",
    "spread_high",
    "unit",
    "time",
    "population",
    "n",
    "species",
    "source",
    "doi",
    "tag",
    "note",
)


def base_unit(unit: str) -> str:
    """The unit without a trailing parenthetical comment: `"1 (relative to baseline)"` -> `"1"`."""
    return unit.split(" (", 1)[0].strip()


def unit_dimension(unit: str) -> str:
    """Physical dimension of `unit` (raises `ValueError` naming the known units).

    A trailing comment in parentheses is ignored, so model units such as `"1 (0-4)"` are understood.
    """
    unit = base_unit(unit)
    if unit not in UNITS:
        raise ValueError(f"Unknown unit {unit!r}; known units are {sorted(UNITS)}.")
    return UNITS[unit][0]


def convert_unit(value: Any, from_unit: str, to_unit: str) -> Any:
    """Convert `value` from `from_unit` to `to_unit` (same dimension; `ValueError` otherwise).

    **Example:** `ck.convert_unit(2.0, "wk", "d")` is 14.0; `ck.convert_unit(1.0, "cells/mL", "cells/uL")` is 0.001.
    """
    d_from, d_to = unit_dimension(from_unit), unit_dimension(to_unit)
    if d_from != d_to:
        raise ValueError(f"Cannot convert {from_unit!r} ({d_from}) to {to_unit!r} ({d_to}): the dimensions differ.")
    return value * (UNITS[base_unit(from_unit)][1] / UNITS[base_unit(to_unit)][1])


# --------------------------------------------------------------------------------------------------------------
# Target rows


class TargetRow(NamedTuple):
    """One validated published number. Numbers are floats (`nan` where the file leaves them empty)."""

    target_id: str
    quantity: str
    measure: str
    value: float
    spread_kind: str
    spread: float
    spread_low: float
    spread_high: float
    unit: str
    time: float
    population: str
    n: float
    species: str
    source: str
    doi: str
    tag: str
    note: str
    dimension: str = ""

    def sigma(self) -> float:
        """A standard deviation implied by the reported spread (in `unit`), or `nan` if none was reported.

        `sd`/`se`: the number itself; `rse`: value × rse/100; `range`: (high − low)/4; `ci95`: (high − low)/3.92;
        `iqr`: (high − low)/1.349 (normal approximations).
        """
        k = self.spread_kind
        if k in ("sd", "se"):
            return self.spread
        if k == "rse":
            return abs(self.value) * self.spread / 100.0
        width = self.spread_high - self.spread_low
        return {"range": width / 4.0, "ci95": width / 3.92, "iqr": width / 1.349}.get(k, math.nan)

    def interval(self) -> tuple[float, float] | None:
        """The interval a calibrated prediction must fall in to 'hit the target within its spread'.

        `sd`/`se`/`rse`: value ± sigma; `range`/`ci95`/`iqr`: [low, high]; `lower_bound`: [value, inf);
        `upper_bound`: (-inf, value]; otherwise `None` (no spread reported).
        """
        if self.measure == "lower_bound":
            return (self.value, math.inf)
        if self.measure == "upper_bound":
            return (-math.inf, self.value)
        k = self.spread_kind
        if k in ("sd", "se", "rse"):
            s = self.sigma()
            return (self.value - s, self.value + s)
        if k in ("range", "ci95", "iqr"):
            return (self.spread_low, self.spread_high)
        return None

    def value_in(self, unit: str) -> float:
        """`value` converted to `unit`."""
        return float(convert_unit(self.value, self.unit, unit))


class TargetTable(tuple):
    """A tuple of [`carkinetics.TargetRow`][] with lookup by `target_id` and filters; prints as Markdown."""

    def __getitem__(self, key):
        if isinstance(key, str):
            for r in self:
                if r.target_id == key:
                    return r
            raise KeyError(f"No target with id {key!r}; ids are {[r.target_id for r in self]}.")
        out = tuple.__getitem__(self, key)
        return TargetTable(out) if isinstance(key, slice) else out

    def ids(self) -> list[str]:
        return [r.target_id for r in self]

    def select(self, **criteria: Any) -> TargetTable:
        """Rows whose columns equal the given values (a sequence value means 'one of'), e.g.
        `select(species="human")`."""

        def ok(r):
            for k, v in criteria.items():
                if k not in COLUMNS:
                    raise ValueError(f"Unknown column {k!r} in select(); columns are {list(COLUMNS)}.")
                val = getattr(r, k)
                if isinstance(v, (list, tuple, set, frozenset)):
                    if val not in v:
                        return False
                elif val != v:
                    return False
            return True

        return TargetTable(r for r in self if ok(r))

    def to_markdown(self) -> str:
        head = (
            "| target | quantity | measure | value | spread | unit | time | tag | source |\n"
            "|---|---|---|---|---|---|---|---|---|"
        )
        rows = []
        for r in self:
            iv = r.interval()
            spread = "" if iv is None else f"[{iv[0]:.4g}, {iv[1]:.4g}]"
            t = "" if math.isnan(r.time) else f"{r.time:g}"
            rows.append(
                f"| {r.target_id} | {r.quantity} | {r.measure} | {r.value:.4g} | {spread} | {r.unit} | {t} | "
                f"{r.tag} | {r.source} |"
            )
        return "\n".join([head, *rows])

    def __str__(self) -> str:
        return self.to_markdown()


def _num(text: str, where: str, col: str, *, required: bool) -> float:
    text = (text or "").strip()
    if not text:
        if required:
            raise ValueError(f"{where}: column {col!r} is empty but required.")
        return math.nan
    try:
        x = float(text)
    except ValueError:
        raise ValueError(f"{where}: column {col!r} must be a number, got {text!r}.") from None
    if not math.isfinite(x):
        raise ValueError(f"{where}: column {col!r} must be finite, got {text!r}.")
    return x


def validate_target_row(raw: Mapping[str, Any], quantities: Mapping[str, str], where: str = "row") -> TargetRow:
    """Validate one raw row (a mapping of column -> text) and return a [`carkinetics.TargetRow`][].

    `quantities` is the application's vocabulary: quantity name -> physical dimension (a dimension of `UNITS`,
    e.g. `"time"`, `"cell_concentration"`); a row's unit must have its quantity's dimension.

    Checks: all columns present; known quantity, measure, spread kind, unit and tag; the unit has the
    quantity's dimension; numbers parse and are finite; the spread columns match the spread kind (`sd`/`se`/`rse`
    need `spread` > 0 and no low/high; `range`/`ci95`/`iqr` need `spread_low <= value <= spread_high`); `time`
    (days) and `n` are non-negative; a DOI looks like `10.xxxx/...` or is the word `none`; a source is given.

    **Raises:** `ValueError` naming `where`, the column and the offending value.
    """
    quantities = _check_quantities(quantities)
    missing = [c for c in COLUMNS if c not in raw]
    if missing:
        raise ValueError(f"{where}: missing columns {missing}; a target row needs the columns {list(COLUMNS)}.")
    txt = {c: ("" if raw[c] is None else str(raw[c]).strip()) for c in COLUMNS}
    tid = txt["target_id"]
    if not tid:
        raise ValueError(f"{where}: column 'target_id' is empty.")
    where = f"{where} ({tid})"
    if txt["quantity"] not in quantities:
        raise ValueError(f"{where}: unknown quantity {txt['quantity']!r}; known quantities are {sorted(quantities)}.")
    if txt["measure"] not in MEASURES:
        raise ValueError(f"{where}: measure {txt['measure']!r} is not one of {list(MEASURES)}.")
    kind = txt["spread_kind"] or "none"
    if kind not in SPREAD_KINDS:
        raise ValueError(f"{where}: spread_kind {kind!r} is not one of {list(SPREAD_KINDS)}.")
    if txt["unit"] not in UNITS:
        raise ValueError(f"{where}: unknown unit {txt['unit']!r}; known units are {sorted(UNITS)}.")
    dim_q, dim_u = quantities[txt["quantity"]], UNITS[txt["unit"]][0]
    if dim_q != dim_u:
        raise ValueError(
            f"{where}: unit {txt['unit']!r} ({dim_u}) is inconsistent with quantity {txt['quantity']!r}, "
            f"which is a {dim_q}."
        )
    if txt["tag"] not in _TAGS:
        raise ValueError(f"{where}: confidence tag {txt['tag']!r} is not one of {list(_TAGS)}.")
    value = _num(txt["value"], where, "value", required=True)
    spread = _num(txt["spread"], where, "spread", required=False)
    low = _num(txt["spread_low"], where, "spread_low", required=False)
    high = _num(txt["spread_high"], where, "spread_high", required=False)
    if kind in ("sd", "se", "rse"):
        if math.isnan(spread) or spread <= 0:
            raise ValueError(f"{where}: spread_kind {kind!r} needs a positive 'spread', got {txt['spread']!r}.")
        if not (math.isnan(low) and math.isnan(high)):
            raise ValueError(f"{where}: spread_kind {kind!r} uses 'spread'; leave 'spread_low'/'spread_high' empty.")
    elif kind in ("range", "ci95", "iqr"):
        if math.isnan(low) or math.isnan(high):
            raise ValueError(f"{where}: spread_kind {kind!r} needs both 'spread_low' and 'spread_high'.")
        if not (low <= value <= high) or low == high:
            raise ValueError(f"{where}: the {kind} [{low}, {high}] must contain value {value} and have positive width.")
        if not math.isnan(spread):
            raise ValueError(f"{where}: spread_kind {kind!r} uses 'spread_low'/'spread_high'; leave 'spread' empty.")
    else:
        if not (math.isnan(spread) and math.isnan(low) and math.isnan(high)):
            raise ValueError(f"{where}: spread_kind 'none' but spread columns are filled; name the spread kind.")
    time = _num(txt["time"], where, "time", required=False)
    if not math.isnan(time) and time < -365:
        raise ValueError(f"{where}: time {time} d is implausible (more than a year before CAR-T infusion).")
    n = _num(txt["n"], where, "n", required=False)
    if not math.isnan(n) and (n < 1 or n != int(n)):
        raise ValueError(f"{where}: n must be a positive whole number of subjects, got {txt['n']!r}.")
    if dim_q == "dimensionless" and txt["measure"] == "proportion" and not (0.0 <= value <= 1.0):
        raise ValueError(f"{where}: a proportion must lie in [0, 1], got {value} (write 60 % as 0.6 with unit '1').")
    doi = txt["doi"]
    if doi != "none" and not (doi.startswith("10.") and "/" in doi and " " not in doi):
        raise ValueError(f"{where}: doi {doi!r} must look like '10.xxxx/suffix' or be the word 'none'.")
    if not txt["source"]:
        raise ValueError(f"{where}: column 'source' is empty; every target needs a citation.")
    if not txt["species"]:
        raise ValueError(f"{where}: column 'species' is empty.")
    return TargetRow(
        target_id=tid,
        quantity=txt["quantity"],
        measure=txt["measure"],
        value=value,
        spread_kind=kind,
        spread=spread,
        spread_low=low,
        spread_high=high,
        unit=txt["unit"],
        time=time,
        population=txt["population"],
        n=n,
        species=txt["species"],
        source=txt["source"],
        doi=doi,
        tag=txt["tag"],
        note=txt["note"],
        dimension=dim_q,
    )


def _check_quantities(quantities: Any) -> dict[str, str]:
    if not isinstance(quantities, Mapping) or not quantities:
        raise ValueError(
            f"`quantities` must be a non-empty mapping from quantity name to physical dimension, got {quantities!r}."
        )
    dims = {d for d, _ in UNITS.values()}
    bad = {k: v for k, v in quantities.items() if v not in dims}
    if bad:
        raise ValueError(f"`quantities` names unknown dimensions {bad}; the dimensions of UNITS are {sorted(dims)}.")
    return dict(quantities)


def load_targets(
    paths: str | os.PathLike | Sequence[str | os.PathLike], *, quantities: Mapping[str, str]
) -> TargetTable:
    """Read and validate tidy CSV target files (see `calibration/data/README.md` for the columns).

    **Arguments:**

    - `paths`: one path or a sequence of paths.
    - `quantities`: the vocabulary of the application: quantity name -> physical dimension (see
      [`carkinetics.validate_target_row`][]).

    **Returns:** a [`carkinetics.TargetTable`][] (lookup by `target_id`, `select(...)` filters).

    **Raises:** `ValueError` naming file, line, target and column for malformed or unit-inconsistent rows, or
    duplicated target ids.

    **Example:**

    ```python
    import carkinetics as ck
    from carkinetics.models.sle import QUANTITIES, target_file
    t = ck.load_targets(target_file("human"), quantities=QUANTITIES)
    t["mackensen2022_b_reappearance"].interval()      # (78.0, 142.0) days
    ```
    """
    quantities = _check_quantities(quantities)
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    rows: list[TargetRow] = []
    seen: dict[str, str] = {}
    for path in paths:
        path = os.fspath(path)
        if not os.path.isfile(path):
            raise ValueError(f"Target file {path!r} does not exist.")
        with open(path, newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            header = reader.fieldnames or []
            bad = [c for c in COLUMNS if c not in header]
            if bad:
                raise ValueError(f"Target file {path!r} lacks the columns {bad}; expected {list(COLUMNS)}.")
            for i, raw in enumerate(reader, start=2):
                if None in raw:
                    raise ValueError(f"{path}:{i}: the row has more fields than the header (unquoted comma?).")
                row = validate_target_row(raw, quantities, f"{path}:{i}")
                if row.target_id in seen:
                    raise ValueError(
                        f"{path}:{i}: target_id {row.target_id!r} is duplicated (first in {seen[row.target_id]})."
                    )
                seen[row.target_id] = f"{path}:{i}"
                rows.append(row)
    return TargetTable(rows)


# --------------------------------------------------------------------------------------------------------------
# Summary statistics (differentiable, built on carkinetics.metrics)


class AbstractStatistic(eqx.Module):
    """A differentiable scalar summary of one observable's trajectory on a time grid.

    Subclasses declare `observable` (the model observable name) and `dimension` (`"time"`, `"same"` for the
    observable's own unit, or `"dimensionless"`), and implement `__call__(ts, values) -> scalar`.
    """

    observable: eqx.AbstractVar[str]
    dimension: ClassVar[str]

    @abc.abstractmethod
    def __call__(self, ts: Float[Array, " T"], values: Float[Array, " T"]) -> Array:
        """The statistic of the trajectory `values` sampled at the grid `ts` (days)."""

    def __check_init__(self):
        _check_statistic_args(self)

    def times(self) -> tuple[float, ...]:
        """Times (days) that should be on the simulation grid for this statistic to be exact."""
        return ()

    def unit(self, observable_unit: str) -> str:
        """Unit of the statistic's value given the observable's unit."""
        return {"time": "d", "dimensionless": "1"}.get(self.dimension, observable_unit)


def _scalar(name: str, x: Any) -> float:
    try:
        v = float(x)
    except (TypeError, ValueError):
        raise ValueError(f"`{name}` must be a real number, got {x!r}.") from None
    if not math.isfinite(v):
        raise ValueError(f"`{name}` must be finite, got {x!r}.")
    return v


def _opt(name: str, x: Any) -> float | None:
    return None if x is None else _scalar(name, x)


class PeakHeight(AbstractStatistic):
    """Maximum of `observable` over `[t_start, t_end]` (unit of the observable); `metrics.cmax`."""

    observable: str = eqx.field(static=True)
    t_start: float | None = eqx.field(static=True, default=None)
    t_end: float | None = eqx.field(static=True, default=None)
    dimension: ClassVar[str] = "same"

    def __call__(self, ts, values):
        return metrics.cmax(ts, values, t_start=self.t_start, t_end=self.t_end)


class PeakTime(AbstractStatistic):
    """Time of the maximum of `observable` (days), parabola-interpolated; `metrics.tmax`.

    `t_start` (days) restricts the search to times at or after it (e.g. ignore the infusion spike at day 0).
    """

    observable: str = eqx.field(static=True)
    t_start: float | None = eqx.field(static=True, default=None)
    dimension: ClassVar[str] = "time"

    def __call__(self, ts, values):
        if self.t_start is not None:
            values = jnp.where(ts >= self.t_start, values, jnp.min(values))
        return metrics.tmax(ts, values)


class TimeBelow(AbstractStatistic):
    """Total time (days) `observable` spends below `threshold` within `[t_start, t_end]`; `metrics.time_below`.

    E.g. B-cell aplasia duration: `TimeBelow("b_blood", 1.0, t_start=0.0)`.
    """

    observable: str = eqx.field(static=True)
    threshold: float = eqx.field(static=True)
    t_start: float | None = eqx.field(static=True, default=None)
    t_end: float | None = eqx.field(static=True, default=None)
    dimension: ClassVar[str] = "time"

    def __call__(self, ts, values):
        return metrics.time_below(ts, values, self.threshold, t_start=self.t_start, t_end=self.t_end)

    def times(self):
        return tuple(t for t in (self.t_start, self.t_end) if t is not None)


class TimeAbove(AbstractStatistic):
    """Total time (days) `observable` spends at or above `threshold` within `[t_start, t_end]`.

    Computed as the window length minus `metrics.time_below`, so it is differentiable in the same places.
    """

    observable: str = eqx.field(static=True)
    threshold: float = eqx.field(static=True)
    t_start: float | None = eqx.field(static=True, default=None)
    t_end: float | None = eqx.field(static=True, default=None)
    dimension: ClassVar[str] = "time"

    def __call__(self, ts, values):
        lo = ts[0] if self.t_start is None else jnp.asarray(self.t_start, ts.dtype)
        hi = ts[-1] if self.t_end is None else jnp.asarray(self.t_end, ts.dtype)
        total = jnp.clip(hi, ts[0], ts[-1]) - jnp.clip(lo, ts[0], ts[-1])
        return total - metrics.time_below(ts, values, self.threshold, t_start=self.t_start, t_end=self.t_end)

    def times(self):
        return tuple(t for t in (self.t_start, self.t_end) if t is not None)


class FoldChange(AbstractStatistic):
    """`observable(t) / observable(ref_t)` (dimensionless); `metrics.fold_change`."""

    observable: str = eqx.field(static=True)
    t: float = eqx.field(static=True)
    ref_t: float = eqx.field(static=True)
    dimension: ClassVar[str] = "dimensionless"

    def __call__(self, ts, values):
        return metrics.fold_change(ts, values, self.t, self.ref_t)

    def times(self):
        return (self.t, self.ref_t)


class HalfLife(AbstractStatistic):
    """Half-life (days) from a log-linear least-squares fit over grid points in `[t_start, t_end]`;
    `metrics.half_life`."""

    observable: str = eqx.field(static=True)
    t_start: float = eqx.field(static=True)
    t_end: float = eqx.field(static=True)
    dimension: ClassVar[str] = "time"

    def __call__(self, ts, values):
        return metrics.half_life(ts, values, self.t_start, self.t_end)

    def times(self):
        return (self.t_start, self.t_end)


class ValueAt(AbstractStatistic):
    """Value of `observable` at day `t` (linear interpolation on the grid); `metrics.value_at`."""

    observable: str = eqx.field(static=True)
    t: float = eqx.field(static=True)
    dimension: ClassVar[str] = "same"

    def __call__(self, ts, values):
        return metrics.value_at(ts, values, self.t)

    def times(self):
        return (self.t,)


class CrossingTime(AbstractStatistic):
    """First time (days) at or after `t_start` that `observable` crosses `threshold` (`"up"`/`"down"`/`"any"`).

    If there is no crossing the end of the grid is returned (a censored "not before the horizon"), so the value
    stays finite; `metrics.first_crossing`.
    """

    observable: str = eqx.field(static=True)
    threshold: float = eqx.field(static=True)
    direction: str = eqx.field(static=True, default="up")
    t_start: float | None = eqx.field(static=True, default=None)
    dimension: ClassVar[str] = "time"

    def __call__(self, ts, values):
        t = metrics.first_crossing(ts, values, self.threshold, self.direction, t_start=self.t_start)
        return jnp.where(jnp.isfinite(t), t, ts[-1])

    def times(self):
        return () if self.t_start is None else (self.t_start,)


def _check_statistic_args(stat: AbstractStatistic) -> None:
    if not isinstance(stat.observable, str) or not stat.observable:
        raise ValueError(f"`observable` of {type(stat).__name__} must be a non-empty string, got {stat.observable!r}.")
    for name in ("threshold", "t", "ref_t", "t_start", "t_end"):
        if hasattr(stat, name):
            v = getattr(stat, name)
            if name in ("t_start", "t_end") and v is None:
                continue
            _scalar(f"{type(stat).__name__}.{name}", v)
    if isinstance(stat, CrossingTime) and stat.direction not in ("up", "down", "any"):
        raise ValueError(f"`direction` must be 'up', 'down' or 'any', got {stat.direction!r}.")
    lo, hi = getattr(stat, "t_start", None), getattr(stat, "t_end", None)
    if lo is not None and hi is not None and not lo < hi:
        raise ValueError(f"{type(stat).__name__}: `t_start` ({lo}) must be earlier than `t_end` ({hi}).")


def statistic_times(stats: Iterable[AbstractStatistic]) -> list[float]:
    """All times (days) the given statistics need on the grid."""
    out: list[float] = []
    for s in stats:
        out.extend(float(t) for t in s.times())
    return out
