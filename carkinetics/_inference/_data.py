"""Data bound to model outputs: time courses and published summary numbers with their observation models."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import equinox as eqx
import jax
import jax.core
import jax.numpy as jnp
import numpy as np

from .._core._custom_types import Array, Float
from ._observation import AbstractObservationModel, CensoredError, LogNormalError, NormalError
from ._targets import AbstractStatistic, TargetRow, convert_unit, unit_dimension

#: Default log-scale error for summary targets published without a spread, by confidence tag.
DEFAULT_LOG_SIGMA: dict[str, float] = {"R": 0.2, "R2": 0.3, "D": 0.3, "M": 0.5, "A": 0.5, "F": 0.3}


class TimeCourseData(eqx.Module):
    """Observations of one model observable at given days, with an observation (error) model.

    **Fields:** `observable` (name), `times` (days, shape `(N,)`), `values` (observable unit, `(N,)`), `error`
    (an observation model), `ids` (labels of the data points, for tables), `label` (legend text).
    """

    observable: str = eqx.field(static=True)
    times: Float[Array, " N"]
    values: Float[Array, " N"]
    error: AbstractObservationModel
    ids: tuple[str, ...] = eqx.field(static=True, default=())
    label: str = eqx.field(static=True, default="")

    def __check_init__(self):
        t, v = np.shape(self.times), np.shape(self.values)
        if len(t) != 1 or t != v or t[0] == 0:
            raise ValueError(
                f"`times` and `values` must be non-empty 1-D arrays of equal length, got shapes {t} and {v}."
            )
        if isinstance(self.values, jax.core.Tracer) or isinstance(self.times, jax.core.Tracer):
            return
        times, values = np.asarray(self.times, float), np.asarray(self.values, float)
        where = f" of the {self.observable!r} data"
        if not np.all(np.isfinite(times)):
            raise ValueError(
                f"`times`{where} must be finite; positions {np.flatnonzero(~np.isfinite(times)).tolist()} are not."
            )
        if not np.all(np.isfinite(values)):
            raise ValueError(
                f"`values`{where} must be finite; positions "
                f"{np.flatnonzero(~np.isfinite(values)).tolist()} are NaN or infinite (drop missing "
                "observations, or censor them with CensoredError)."
            )
        if _log_scale(self.error) and np.any(values <= 0):
            raise ValueError(
                f"`values`{where} must be positive for a log-scale error model "
                f"({type(self.error).__name__}); positions {np.flatnonzero(values <= 0).tolist()} are "
                "zero or negative (censor them with CensoredError(..., lloq=...) instead)."
            )


def _log_scale(error: AbstractObservationModel) -> bool:
    inner = error.base if isinstance(error, CensoredError) else error
    return isinstance(inner, LogNormalError)


class SummaryData(eqx.Module):
    """A published summary number compared with a differentiable statistic of the simulation.

    **Fields:** `statistic` (an `AbstractStatistic`), `value` (in `unit`), `error` (observation model in `unit`),
    `target_id`, `unit`, and `interval` (the reported spread as `(low, high)` in `unit`, or `None`), used to
    check that a calibrated model hits the target within its spread.
    """

    statistic: AbstractStatistic
    value: Any
    error: AbstractObservationModel
    target_id: str = eqx.field(static=True, default="")
    unit: str = eqx.field(static=True, default="")
    interval: tuple[float, float] | None = eqx.field(static=True, default=None)


def _model_class(model: Any) -> type:
    return model if isinstance(model, type) else type(model)


def summary_target(
    row: TargetRow, statistic: AbstractStatistic, model: Any, *, error: AbstractObservationModel | None = None
) -> SummaryData:
    """Bind a published summary row to a statistic of `model`'s simulation.

    The row's unit must have the statistic's dimension (time for `TimeBelow`, the observable's for `PeakHeight`,
    ...); the value and spread are converted to the statistic's unit. Default error model: normal with the
    reported spread's sd (`row.sigma()`); for a published lower/upper bound a censored normal with sd = 10 % of
    the bound; without a spread a log-normal error with `DEFAULT_LOG_SIGMA[row.tag]`.

    **Raises:** `ValueError` for an unknown observable or a unit of the wrong dimension.
    """
    cls = _model_class(model)
    if statistic.observable not in cls.observable_units:
        raise ValueError(
            f"Statistic observable {statistic.observable!r} is not an observable of {cls.__name__}; "
            f"observables are {sorted(cls.observable_units)}."
        )
    unit = statistic.unit(cls.observable_units[statistic.observable])
    if unit_dimension(row.unit) != unit_dimension(unit):
        raise ValueError(
            f"Target {row.target_id!r} is in {row.unit!r} ({unit_dimension(row.unit)}) but "
            f"{type(statistic).__name__} of {statistic.observable!r} is in {unit!r} "
            f"({unit_dimension(unit)})."
        )
    value = float(convert_unit(row.value, row.unit, unit))
    iv = row.interval()
    interval = (
        None if iv is None else (float(convert_unit(iv[0], row.unit, unit)), float(convert_unit(iv[1], row.unit, unit)))
    )
    if error is None:
        sigma = row.sigma()
        if row.measure in ("lower_bound", "upper_bound"):
            base = NormalError(0.1 * abs(value) if value != 0 else 1.0)
            error = CensoredError(base, uloq=value) if row.measure == "lower_bound" else CensoredError(base, lloq=value)
        elif math.isfinite(sigma):
            error = NormalError(float(convert_unit(sigma, row.unit, unit)))
        elif value > 0:
            error = LogNormalError(DEFAULT_LOG_SIGMA[row.tag])
        else:
            raise ValueError(f"Target {row.target_id!r} has no spread and a non-positive value; pass `error`.")
    return SummaryData(statistic, jnp.asarray(value, dtype=float), error, row.target_id, unit, interval)


def timecourse_target(
    rows: Sequence[TargetRow],
    observable: str,
    model: Any,
    *,
    error: AbstractObservationModel | None = None,
    label: str = "",
) -> TimeCourseData:
    """Bind time-course rows (each with a `time`) of one observable to `model`'s observable.

    Values are converted to the observable's unit. Default error: log-normal with `DEFAULT_LOG_SIGMA` of the
    least certain tag among the rows.
    """
    cls = _model_class(model)
    if observable not in cls.observable_units:
        raise ValueError(
            f"{observable!r} is not an observable of {cls.__name__}; observables are {sorted(cls.observable_units)}."
        )
    if len(rows) == 0:
        raise ValueError("`rows` is empty; a time course needs at least one row with a time.")
    unit = cls.observable_units[observable]
    times, values = [], []
    for r in rows:
        if math.isnan(r.time):
            raise ValueError(f"Target {r.target_id!r} has no time; a time course needs a day for each row.")
        times.append(r.time)
        values.append(float(convert_unit(r.value, r.unit, unit)))
    if error is None:
        error = LogNormalError(max(DEFAULT_LOG_SIGMA[r.tag] for r in rows))
    return TimeCourseData(
        observable,
        jnp.asarray(times, dtype=float),
        jnp.asarray(values, dtype=float),
        error,
        tuple(r.target_id for r in rows),
        label,
    )
