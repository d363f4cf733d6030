"""Population data: one regimen and one set of observations per subject, read from a NONMEM-style table.

[`carkinetics.read_population_data`][] reads a whole data set with the one strict NONMEM parser of
`carkinetics.io` (encodings, field counts, numbers, `EVID`/`MDV` codes, contiguous subjects, line numbers in every
error) and adds what a population needs: per-subject time order, censoring flags (`BLQ`/`CENS` with `LLOQ`) and
baseline covariates. The result is a [`carkinetics.PopulationData`][]: every subject's doses as one batched
[`carkinetics.Regimen`][] (same structure for all subjects, padded with zero doses) and its observations as padded
`(N, M)` arrays on one shared save grid, so that all subjects are integrated in one batched ensemble solve.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.resources
from collections.abc import Mapping, Sequence
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .._core._custom_types import Array, Bool, Float, Int
from .._core._dosing import Bolus, Infusion, Regimen
from ..io._nonmem import _MISSING, Source, _check_number, _cmt, _read_rows, _Row, dose_from_row

#: Days per unit of time, for `time_unit`.
TIME_UNITS: dict[str, float] = {"d": 1.0, "h": 1.0 / 24.0, "min": 1.0 / 1440.0, "w": 7.0}

#: Example data sets shipped with the package (NONMEM format, time in hours; see `carkinetics/data/README.md`).
EXAMPLE_DATA: dict[str, str] = {
    "theophylline": "theophylline.csv (R `Theoph`; Boeckmann, Sheiner & Beal 1994): 12 subjects, oral",
    "indometacin": "indometacin.csv (R `Indometh`; Kwan et al. 1976): 6 subjects, IV bolus",
}

_CENSOR_COLUMNS = ("BLQ", "CENS")
_LIMIT_COLUMNS = ("LLOQ", "LIMIT")


def example_data(name: str) -> str:
    """Path of an example data set shipped with carkinetics (`"theophylline"` or `"indometacin"`).

    Both are NONMEM-style tables with time in hours; read them with `time_unit="h"`. Their provenance (R's
    `datasets` package; Boeckmann, Sheiner & Beal 1994; Kwan et al. 1976) is in `carkinetics/data/README.md`.

    **Example:**

    ```python
    import carkinetics as ck
    from carkinetics.models import OneCompartmentOralPK
    data = ck.read_population_data(ck.example_data("theophylline"), OneCompartmentOralPK, time_unit="h",
                                   covariates=["WT"])
    data.n_subjects, data.n_observations    # (12, 132)
    ```
    """
    if name not in EXAMPLE_DATA:
        raise ValueError(f"Unknown example data set {name!r}; available: {sorted(EXAMPLE_DATA)}.")
    return str(importlib.resources.files("carkinetics") / "data" / f"{name}.csv")


class PopulationData(eqx.Module):
    """Doses and observations of `N` subjects, ready for one batched solve.

    **Fields:**

    - `ids`: subject identifiers (the `ID` column), in file order.
    - `observables`: the model observables the data measure (column `k` of `obs_index` refers to `observables[k]`
      of the model's `observable_names()`; here the names themselves).
    - `regimen`: a [`carkinetics.Regimen`][] whose leaves carry a leading subject axis `N` (every subject has the
      same dose structure; missing doses are zero-amount padding).
    - `ts`: `(T,)` the sorted distinct observation times of all subjects (days): the shared save grid.
    - `time`, `dv`: `(N, M)` observation times (days) and values; `M` is the largest number of observations of a
      subject; padding entries have `mask` False.
    - `mask`: `(N, M)` True for real observations.
    - `censored`: `(N, M)` True for observations below the limit of quantification (M3 likelihood).
    - `limit`: `(N, M)` the LLOQ of censored observations (the `LLOQ` column, else `DV`); equal to `dv` elsewhere.
    - `time_index`: `(N, M)` position of each observation time in `ts`; `obs_index`: `(N, M)` index of its
      observable in the model's `observable_names()`.
    - `covariates`: `{name: (N,) array}` baseline covariates (upper-case column names).
    - `lines`: `(N, M)` line of each observation in the source table (0 for padding), for diagnostics tables.
    - `time_unit`: the unit of the source table's `TIME` (all times here are in days).
    - `any_censored`: whether any observation is censored (the M3 terms are compiled only then).
    """

    ids: tuple[str, ...] = eqx.field(static=True)
    observables: tuple[str, ...] = eqx.field(static=True)
    regimen: Regimen
    ts: Float[Array, " T"]
    time: Float[Array, "N M"]
    dv: Float[Array, "N M"]
    mask: Bool[Array, "N M"]
    censored: Bool[Array, "N M"]
    limit: Float[Array, "N M"]
    time_index: Int[Array, "N M"]
    obs_index: Int[Array, "N M"]
    covariates: dict[str, Float[Array, " N"]]
    lines: Int[Array, "N M"]
    time_unit: str = eqx.field(static=True, default="d")
    any_censored: bool = eqx.field(static=True, default=False)

    @property
    def n_subjects(self) -> int:
        return len(self.ids)

    @property
    def n_observations(self) -> int:
        """Number of observation records (censored ones included)."""
        return int(np.asarray(self.mask).sum())

    @property
    def n_censored(self) -> int:
        return int(np.asarray(self.censored & self.mask).sum())

    def take(self, indices: Sequence[int] | np.ndarray, ids: Sequence[str] | None = None) -> PopulationData:
        """The subjects at `indices` (repetition allowed, e.g. `np.arange(1000) % 12` for 1,000 subjects with the
        designs of 12), renamed `ids` (default: `"1"`, `"2"`, ... when an index repeats, else their own IDs)."""
        idx = np.asarray(indices, dtype=int)
        if idx.ndim != 1 or idx.size == 0 or idx.min() < 0 or idx.max() >= self.n_subjects:
            raise ValueError(
                f"`indices` must be a non-empty 1-D array of subject positions in [0, "
                f"{self.n_subjects}), got {np.asarray(indices)!r}."
            )
        if ids is None:
            ids = (
                [self.ids[i] for i in idx]
                if len(set(idx.tolist())) == idx.size
                else [str(k + 1) for k in range(idx.size)]
            )
        if len(ids) != idx.size or len(set(ids)) != idx.size:
            raise ValueError("`ids` must give one distinct identifier per index.")
        pick = lambda x: x[idx] if eqx.is_array(x) and jnp.ndim(x) > 0 else x
        arrays = {
            f: pick(getattr(self, f))
            for f in ("time", "dv", "mask", "censored", "limit", "time_index", "obs_index", "lines")
        }
        return dataclasses.replace(
            self,
            ids=tuple(str(i) for i in ids),
            regimen=jax.tree_util.tree_map(pick, self.regimen),
            covariates={k: pick(v) for k, v in self.covariates.items()},
            any_censored=bool(np.any(np.asarray(arrays["censored"] & arrays["mask"]))),
            **arrays,
        )

    def with_values(self, dv: Any, censored: Any = None) -> PopulationData:
        """The same design with new observation values `(N, M)` (and censoring flags): e.g. simulated data."""
        dv = jnp.where(self.mask, jnp.asarray(dv, dtype=self.dv.dtype), 0.0)
        cens = self.censored if censored is None else jnp.asarray(censored, bool) & self.mask
        limit = jnp.where(cens, self.limit if censored is None else jnp.maximum(self.limit, 0.0), dv)
        return dataclasses.replace(self, dv=dv, censored=cens, limit=limit, any_censored=bool(np.any(np.asarray(cens))))

    def censor_below(self, lloq: float | Any) -> PopulationData:
        """The data with every observation below `lloq` censored at `lloq` (M3): how BLQ data sets arise."""
        lloq = jnp.broadcast_to(jnp.asarray(lloq, dtype=self.dv.dtype), self.dv.shape)
        cens = self.mask & (self.censored | (self.dv < lloq))
        limit = jnp.where(cens, jnp.where(self.censored, self.limit, lloq), self.dv)
        return dataclasses.replace(self, censored=cens, limit=limit, any_censored=bool(np.any(np.asarray(cens))))

    def without_censored(self) -> PopulationData:
        """The data with censored observations dropped (masked out): the naive alternative to M3."""
        return dataclasses.replace(
            self, mask=self.mask & ~self.censored, censored=jnp.zeros_like(self.censored), any_censored=False
        )


def _number(row: _Row, column: str, what: str) -> float | None:
    raw = row.cells.get(column, "")
    if raw in _MISSING:
        return None
    return _check_number(raw, column, row.line, what)


def _observable(row: _Row, observables: Mapping[str, str] | tuple[str, ...] | None, names: tuple[str, ...]) -> str:
    if observables is None:  # a single observable: every observation record measures it
        return names[0]
    if isinstance(observables, tuple):
        return _cmt(row, observables, "observation")
    raw = row.cells.get("CMT", "")
    key = raw
    with contextlib.suppress(ValueError):
        key = str(int(float(raw)))
    if key not in observables:
        raise ValueError(
            f"Line {row.line}: column CMT = {raw!r} is not one of the observation compartments "
            f"{sorted(observables)} given in `observables`."
        )
    return observables[key]


def _expand(dose: Bolus | Infusion) -> list[Bolus | Infusion]:
    """A dose with `addl` repeats as `addl + 1` single doses (subjects then share one regimen structure)."""
    if dose.addl == 0:
        return [dose]
    if isinstance(dose, Bolus):
        return [Bolus(t, dose.amount, dose.state) for t in np.asarray(dose.times())]
    return [Infusion(t, dose.state, rate=dose.rate, duration=dose.duration) for t in np.asarray(dose.starts())]


def _pad_regimens(doses: list[list[Bolus | Infusion]], t_pad: list[float]) -> Regimen:
    """One batched regimen: each subject's doses grouped by (kind, state), padded with zero doses at `t_pad`."""
    keys: dict[tuple[str, str], int] = {}
    for ds in doses:
        counts: dict[tuple[str, str], int] = {}
        for d in ds:
            k = (type(d).__name__, d.state)
            counts[k] = counts.get(k, 0) + 1
        for k, c in counts.items():
            keys[k] = max(keys.get(k, 0), c)
    regimens = []
    for ds, t in zip(doses, t_pad):
        out = []
        for (kind, state), count in keys.items():
            mine = [d for d in ds if (type(d).__name__, d.state) == (kind, state)]
            pad = count - len(mine)
            if kind == "Bolus":
                mine += [Bolus(t, 0.0, state) for _ in range(pad)]
            else:
                mine += [Infusion(t, state, rate=0.0, duration=1.0) for _ in range(pad)]
            out += mine
        regimens.append(Regimen(out))
    return jax.tree_util.tree_map(lambda *xs: jnp.stack([jnp.asarray(x, dtype=float) for x in xs]), *regimens)


def read_population_data(
    source: Source,
    model: Any,
    *,
    observables: Sequence[str] | Mapping[Any, str] | None = None,
    covariates: Sequence[str] = (),
    time_unit: str = "d",
) -> PopulationData:
    """Read a NONMEM-style population data set: one regimen and one set of observations per subject.

    **Arguments:**

    - `source`: path to a CSV file or an open text/binary stream (UTF-8, a byte-order mark is allowed). Columns
      (case-insensitive): `ID`, `TIME`, `DV` required; `AMT`, `CMT`, `RATE`, `II`, `ADDL`, `EVID`, `MDV` as in
      NONMEM (see `carkinetics.io`); `BLQ` or `CENS` (0/1: 1 = below the limit of quantification, handled by the M3
      likelihood) with the limit in `LLOQ` or `LIMIT` (else `DV` holds the limit, the nlmixr2/Monolix convention);
      covariate columns.
    - `model`: the model (or model class) the data are fitted with: dose `CMT` values index its
      `state_names()` (1-based) or name a state.
    - `observables`: how observation records map to the model's observables. Default: with a single observable
      every observation record measures it (its `CMT` is not used); with several, `CMT` is a 1-based index into
      `observables` (default the model's `observable_names()`) or a name. A mapping `{CMT value: observable name}`
      (e.g. `{2: "concentration"}`) gives NONMEM's compartment numbers their observables.
    - `covariates`: columns to keep as baseline covariates (constant within a subject; time-varying covariates
      are rejected).
    - `time_unit`: unit of `TIME` and `II` (`"d"`, `"h"`, `"min"`, `"w"`); times are converted to days and `RATE`
      to amounts per day.

    **Returns:** a [`carkinetics.PopulationData`][].

    **Raises:** `ValueError` naming the line and column for anything malformed: the checks of the NONMEM parser
    (encoding, header, field counts, non-numbers, `EVID`/`MDV` codes, interleaved subjects), times that decrease
    within a subject, an observation without `DV`, a `BLQ`/`CENS` flag other than 0/1, a censored record without a
    limit, a non-numeric or time-varying covariate, unknown compartments, a subject without observations.

    **Example:**

    ```python
    import io, carkinetics as ck
    from carkinetics.models import OneCompartmentOralPK
    table = io.StringIO("ID,TIME,AMT,DV,EVID,CMT,BLQ,LLOQ\\n"
                        "1,0,320,.,1,1,0,.\\n1,1,.,7.5,0,2,0,.\\n1,24,.,.,0,2,1,0.5\\n"
                        "2,0,300,.,1,1,0,.\\n2,2,.,8.1,0,2,0,.\\n")
    data = ck.read_population_data(table, OneCompartmentOralPK, time_unit="h")
    data.n_subjects, data.n_observations, data.n_censored   # (2, 3, 1)
    ```
    """
    if time_unit not in TIME_UNITS:
        raise ValueError(f"`time_unit` must be one of {sorted(TIME_UNITS)}, got {time_unit!r}.")
    factor = TIME_UNITS[time_unit]
    states = tuple(model.state_names())
    names = tuple(model.observable_names())
    if observables is None:
        obs_map: Mapping[str, str] | tuple[str, ...] | None = None if len(names) == 1 else names
    elif isinstance(observables, Mapping):
        obs_map = {}
        for k, v in observables.items():
            if v not in names:
                raise ValueError(
                    f"`observables` maps CMT {k!r} to {v!r}, which is not an observable of the model ({list(names)})."
                )
            key = str(k)
            with contextlib.suppress(ValueError):
                key = str(int(float(k)))
            obs_map[key] = v
    else:
        obs_map = tuple(observables)
        unknown = [o for o in obs_map if o not in names]
        if unknown or not obs_map:
            raise ValueError(f"`observables` {list(obs_map)} must be observables of the model ({list(names)}).")
    if isinstance(covariates, str):
        raise ValueError(f"`covariates` must be a sequence of column names, got the string {covariates!r}.")
    cov_cols = tuple(c.strip().upper() for c in covariates)
    header, rows = _read_rows(source, ("ID", "TIME", "DV"), "population data table")
    for c in cov_cols:
        if c not in header:
            raise ValueError(f"Covariate column {c} is not in the table; its columns are {list(header)}.")
    cens_col = next((c for c in _CENSOR_COLUMNS if c in header), None)
    limit_col = next((c for c in _LIMIT_COLUMNS if c in header), None)

    subjects: dict[str, dict[str, Any]] = {}
    last_time: dict[str, tuple[float, int]] = {}
    for row in rows:
        sid = row.subject
        if sid == "":
            raise ValueError(f"Line {row.line}: column ID is empty; every record needs a subject.")
        s = subjects.setdefault(sid, {"doses": [], "obs": [], "cov": {}, "first_line": row.line})
        t_raw = _number(row, "TIME", "time")
        if t_raw is None:
            raise ValueError(f"Line {row.line}: column TIME is empty; every record needs a time.")
        if sid in last_time and t_raw < last_time[sid][0]:
            raise ValueError(
                f"Line {row.line}: column TIME = {t_raw:g} is earlier than TIME = {last_time[sid][0]:g} "
                f"on line {last_time[sid][1]} of the same subject (ID {sid}); sort each subject's "
                "records by time."
            )
        last_time[sid] = (t_raw, row.line)
        for c in cov_cols:
            v = _number(row, c, "a covariate")
            if v is None:
                continue
            if c in s["cov"] and s["cov"][c][0] != v:
                raise ValueError(
                    f"Line {row.line}: column {c} = {v:g} differs from {s['cov'][c][0]:g} on line "
                    f"{s['cov'][c][1]} of the same subject (ID {sid}); time-varying covariates are not "
                    "supported (use the baseline value)."
                )
            s["cov"].setdefault(c, (v, row.line))
        if row.evid == 1:
            s["doses"].extend(_expand(dose_from_row(row, states, factor)))
            continue
        if row.evid != 0 or row.mdv == 1:
            continue
        flag = 0
        if cens_col is not None:
            f = _number(row, cens_col, "a censoring flag")
            if f not in (None, 0.0, 1.0):
                extra = " (upper censoring, -1, is not supported)" if f == -1 else ""
                raise ValueError(
                    f"Line {row.line}: column {cens_col} = {row.cells[cens_col]!r} must be 0 or 1 "
                    f"(1 = below the limit of quantification){extra}."
                )
            flag = int(f or 0)
        dv = _number(row, "DV", "the observation")
        lim = _number(row, limit_col, "the limit of quantification") if limit_col is not None else None
        if flag:
            if lim is None and dv is None:
                raise ValueError(
                    f"Line {row.line}: a censored record ({cens_col} = 1) needs its limit in column "
                    f"{limit_col or 'DV'}, which is empty."
                )
            lim = lim if lim is not None else dv
            dv = lim
        elif dv is None:
            raise ValueError(
                f"Line {row.line}: column DV is empty; it is required for an observation record "
                "(EVID 0, MDV 0). Set MDV = 1 for a missing sample."
            )
        observable = _observable(row, obs_map, names)
        s["obs"].append((t_raw * factor, dv, bool(flag), lim if flag else dv, names.index(observable), row.line))
    if not subjects:
        raise ValueError("The population data table has no records.")
    for sid, s in subjects.items():
        if not s["obs"]:
            raise ValueError(
                f"Subject ID {sid} (from line {s['first_line']}) has no observation records; remove it or "
                "give its observations."
            )
        for c in cov_cols:
            if c not in s["cov"]:
                raise ValueError(
                    f"Subject ID {sid} (from line {s['first_line']}) has no value in covariate column {c}."
                )
    ids = tuple(subjects)
    n = len(ids)
    m = max(len(s["obs"]) for s in subjects.values())
    ts = np.unique(np.array([o[0] for s in subjects.values() for o in s["obs"]], dtype=float))
    arr = {k: np.zeros((n, m)) for k in ("time", "dv", "limit")}
    mask = np.zeros((n, m), bool)
    cens = np.zeros((n, m), bool)
    tidx = np.zeros((n, m), np.int32)
    oidx = np.zeros((n, m), np.int32)
    lines = np.zeros((n, m), np.int32)
    t_pad = []
    for i, sid in enumerate(ids):
        obs = subjects[sid]["obs"]
        for j, (t, dv, c, lim, o, line) in enumerate(obs):
            arr["time"][i, j], arr["dv"][i, j], arr["limit"][i, j] = t, dv, lim
            mask[i, j], cens[i, j], oidx[i, j], lines[i, j] = True, c, o, line
            tidx[i, j] = int(np.searchsorted(ts, t))
        arr["time"][i, len(obs) :] = obs[-1][0]
        tidx[i, len(obs) :] = tidx[i, len(obs) - 1]
        first = [float(d.time if isinstance(d, Bolus) else d.start) for d in subjects[sid]["doses"]]
        t_pad.append(min(first + [obs[0][0]]))
    regimen = _pad_regimens([subjects[sid]["doses"] for sid in ids], t_pad)
    covs = {c: jnp.asarray([subjects[sid]["cov"][c][0] for sid in ids], dtype=float) for c in cov_cols}
    return PopulationData(
        ids=ids,
        observables=tuple(dict.fromkeys(names[o] for o in oidx[mask].tolist())),
        regimen=regimen,
        ts=jnp.asarray(ts),
        time=jnp.asarray(arr["time"]),
        dv=jnp.asarray(arr["dv"]),
        mask=jnp.asarray(mask),
        censored=jnp.asarray(cens),
        limit=jnp.asarray(arr["limit"]),
        time_index=jnp.asarray(tidx),
        obs_index=jnp.asarray(oidx),
        covariates=covs,
        lines=jnp.asarray(lines),
        time_unit=time_unit,
        any_censored=bool(cens.any()),
    )
