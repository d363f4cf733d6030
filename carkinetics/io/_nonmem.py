"""NONMEM-style data tables (CSV): dose and observation records in, dose and observation records out.

One parser reads every table: [`carkinetics.read_nonmem_events`][] takes its dose records into a
[`carkinetics.Regimen`][], [`carkinetics.io.read_nonmem_observations`][] its observation records, so a combined
dataset written by [`carkinetics.io.write_nonmem_dataset`][] (or by NONMEM, Monolix, nlmixr2 or Pumas tooling) is
checked by the same rules whichever reader opens it.

Conventions (as NONMEM/mrgsolve), times in days:

- The file is UTF-8 text (a byte-order mark is allowed) with a header line; column names are case-insensitive and
  every row has exactly as many fields as the header. `.` or an empty field is a missing value.
- `TIME`, `AMT`, `RATE`, `II`, `ADDL`, `SS`, `DV`, `EVID` and `MDV` are numbers wherever they are given; `EVID`,
  `MDV`, `ADDL` and `SS` are integers.
- `EVID`: 0 = observation, 1 = dose, 2 = other (skipped). NONMEM's 3 (reset) and 4 (reset and dose) have no
  carkinetics equivalent and are rejected, as is any other value. Without an `EVID` column a row with a non-zero
  `AMT` is a dose and every other row an observation.
- `MDV` is 0 or 1; an observation row with `MDV = 1` holds no measurement and is skipped.
- `ID` names the subject; the rows of one subject are contiguous (NONMEM starts a new individual whenever `ID`
  changes, so interleaved subjects are rejected rather than merged).
- `CMT` is a 1-based index into the given names (states for doses, observables for observations) or a name.
- `RATE` 0 or missing = bolus; `RATE` > 0 = zero-order infusion of `AMT` at `RATE` per day; `RATE` -1/-2
  (modelled rate/duration) and `SS` != 0 (steady state) are rejected. `II`/`ADDL` repeat a dose.

At equal times the writers put dose rows before observation rows: carkinetics reports the state just *after* a dose
at the dose time.
"""

from __future__ import annotations

import csv
import io
import math
import os
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

from .._core._dosing import Bolus, Infusion, Regimen
from .._core._files import atomic_text_file
from .._core._solution import Solution

# --------------------------------------------------------------------------------------------------------------
# The table parser (shared by every reader)

_EVENT_TYPES = {0: "observation", 1: "dose", 2: "other", 3: "reset", 4: "reset and dose"}
_SUPPORTED_EVID = (0, 1, 2)
_NUMERIC = ("TIME", "AMT", "RATE", "II", "ADDL", "SS", "DV", "EVID", "MDV")
_INTEGER = ("EVID", "MDV", "ADDL", "SS")
_MISSING = ("", ".")

Source = str | os.PathLike | io.IOBase


class _Row(NamedTuple):
    """One validated data row: its line in the file, subject, event type, MDV flag and cells by column."""

    line: int
    subject: str
    evid: int
    mdv: int
    cells: dict[str, str]

    def number(self, column: str, default: float | None = None, *, needed_for: str = "") -> float:
        """The value of a numeric column (already checked by the parser); `default` where it is missing."""
        raw = self.cells.get(column, "")
        if raw in _MISSING:
            if default is None:
                raise ValueError(f"Line {self.line}: column {column} is empty; it is required for {needed_for}.")
            return default
        return float(raw)


def _decode(data: bytes | str, label: str) -> str:
    """The text of a table, without a UTF-8 byte-order mark; `ValueError` for bytes that are not UTF-8."""
    if isinstance(data, bytes):
        try:
            data = data.decode("utf-8-sig")
        except UnicodeDecodeError as err:
            raise _encoding_error(err, label) from None
    return data.removeprefix("\ufeff")


def _encoding_error(err: UnicodeDecodeError, label: str) -> ValueError:
    raw = err.object
    line = raw[: err.start].count(b"\n") + 1
    column = err.start - (raw.rfind(b"\n", 0, err.start) + 1) + 1
    return ValueError(
        f"{label} is not UTF-8 text: byte 0x{raw[err.start]:02x} on line {line}, character {column} cannot be "
        f"decoded as UTF-8 ({err.reason}). Save the file as UTF-8; a Latin-1 or Windows-1252 export is the usual "
        "cause (e.g. an accented name or a micro sign)."
    )


def _read_text(source: Source, label: str) -> str:
    if isinstance(source, (str, os.PathLike)):
        with open(source, "rb") as fh:
            return _decode(fh.read(), label)
    try:
        return _decode(source.read(), label)
    except UnicodeDecodeError as err:  # a text stream opened with encoding="utf-8" on a non-UTF-8 file
        raise _encoding_error(err, label) from None


def _integer(raw: str, column: str, line: int) -> int:
    value = float(raw)
    if value != int(value):
        raise ValueError(f"Line {line}: column {column} = {raw!r} is not an integer.")
    return int(value)


def _check_number(raw: str, column: str, line: int, what: str = "") -> float:
    """The finite number in cell `raw` of `column` on `line`; `what` (the column's role) is named in the error."""
    role = f" ({what})" if what else ""
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"Line {line}: column {column} = {raw!r} is not a number{role}.") from None
    if not math.isfinite(value):
        raise ValueError(f"Line {line}: column {column} = {raw!r} is not finite{role}.")
    return value


def _read_rows(source: Source, required: Sequence[str], what: str) -> tuple[tuple[str, ...], list[_Row]]:
    """Header (upper case) and validated rows of a NONMEM-style CSV.

    Checks, each with a `ValueError` naming the line (and column): the encoding, the header (present, no empty or
    repeated names, the `required` columns), the field count of every row, numbers in the numeric columns,
    integers in `EVID`/`MDV`/`ADDL`/`SS`, the `EVID` and `MDV` codes, and contiguous subjects.
    """
    label = f"The {what}" if not isinstance(source, (str, os.PathLike)) else f"The {what} {os.fspath(source)!r}"
    reader = csv.reader(io.StringIO(_read_text(source, label), newline=""))
    header_raw = next(reader, None)
    if header_raw is None:
        raise ValueError(f"{label} is empty (no header line).")
    header = tuple(h.strip().upper() for h in header_raw)
    for k, h in enumerate(header):
        if not h:
            raise ValueError(f"{label}: column {k + 1} of the header has no name.")
        if header.index(h) != k:
            raise ValueError(f"{label}: column {h} appears twice in the header.")
    missing = [c for c in required if c not in header]
    if missing:
        raise ValueError(f"{label} lacks required column(s) {missing}; found columns {list(header)}.")
    rows: list[_Row] = []
    seen: dict[str, int] = {}  # subject -> first line
    for fields in reader:
        line = reader.line_num
        if not fields or (len(fields) == 1 and not fields[0].strip()):
            continue  # blank line
        if len(fields) != len(header):
            raise ValueError(
                f"Line {line} has {len(fields)} field(s) but the header has {len(header)} columns "
                f"({', '.join(header)}); every row needs one value per column (use '.' for a missing value)."
            )
        cells = {h: f.strip() for h, f in zip(header, fields)}
        for column in _NUMERIC:
            raw = cells.get(column, "")
            if raw not in _MISSING:
                _check_number(raw, column, line)
        ints = {c: _integer(cells[c], c, line) for c in _INTEGER if cells.get(c, "") not in _MISSING}
        if "EVID" in ints:
            evid = ints["EVID"]
        else:
            amt = cells.get("AMT", "")
            evid = 1 if amt not in _MISSING and float(amt) != 0 else 0
        if evid not in _SUPPORTED_EVID:
            known = f" (NONMEM's {_EVENT_TYPES[evid]})" if evid in _EVENT_TYPES else " (not a NONMEM event type)"
            raise ValueError(
                f"Line {line}: EVID = {evid} is not supported{known}; carkinetics reads EVID "
                + ", ".join(f"{k} ({_EVENT_TYPES[k]})" for k in _SUPPORTED_EVID)
                + ", and NONMEM defines 0 to 4."
            )
        mdv = ints.get("MDV", 0)
        if mdv not in (0, 1):
            raise ValueError(f"Line {line}: column MDV = {cells['MDV']!r} must be 0 or 1.")
        subject = cells.get("ID", "")
        if rows and subject != rows[-1].subject and subject in seen:
            raise ValueError(
                f"Line {line}: ID {subject} appears again after ID {rows[-1].subject} (its rows start on line "
                f"{seen[subject]}); the rows of each subject must be contiguous, as NONMEM starts a new individual "
                "whenever ID changes. Sort the table by ID."
            )
        seen.setdefault(subject, line)
        rows.append(_Row(line, subject, evid, mdv, cells))
    return header, rows


def _select_subject(
    header: Sequence[str], rows: list[_Row], subject_id: str | int | None, *, single: bool
) -> list[_Row]:
    """The rows of `subject_id`; with `single`, a table of several subjects needs a `subject_id`."""
    if "ID" not in header:
        if subject_id is not None:
            raise ValueError(f"`subject_id` {subject_id!r} was given but the table has no ID column.")
        return rows
    ids = list(dict.fromkeys(r.subject for r in rows))
    if subject_id is None:
        if single and len(ids) > 1:
            raise ValueError(f"The table holds several subjects {ids}; choose one with `subject_id`.")
        return rows
    if str(subject_id) not in ids:
        raise ValueError(f"`subject_id` {subject_id!r} is not in the table's IDs {ids}.")
    return [r for r in rows if r.subject == str(subject_id)]


def _cmt(row: _Row, names: tuple[str, ...], kind: str) -> str:
    """The name a row's `CMT` refers to: a 1-based index into `names` or one of the names."""
    raw = row.cells.get("CMT", "")
    if raw in _MISSING:
        raise ValueError(f"Line {row.line}: CMT is empty; every {kind} record needs a compartment.")
    if raw in names:
        return raw
    try:
        value = float(raw)
    except ValueError:
        value = 0.0  # a name that is not one of `names`
    if value != int(value) or not 1 <= value <= len(names):
        raise ValueError(
            f"Line {row.line}: unknown {kind} compartment CMT = {raw!r}; valid values are 1..{len(names)} "
            f"({', '.join(f'{j + 1}={n}' for j, n in enumerate(names))}) or one of these names."
        )
    return names[int(value) - 1]


def _names(names: Sequence[str], argument: str, kind: str) -> tuple[str, ...]:
    names = tuple(names)
    if not names or not all(isinstance(n, str) for n in names):
        raise ValueError(f"`{argument}` must be a non-empty sequence of {kind} names, got {names!r}.")
    return names


# --------------------------------------------------------------------------------------------------------------
# Readers


def read_nonmem_events(source: Source, compartments: Sequence[str], *, subject_id: str | int | None = None) -> Regimen:
    """Read the dose records of a NONMEM-style CSV table into a [`carkinetics.Regimen`][].

    **Arguments:**

    - `source`: path to a CSV file, or an open text or binary stream (UTF-8). Column names are case-insensitive;
      `TIME`, `AMT` and `CMT` are required.
    - `compartments`: state names in NONMEM compartment order (`CMT=1` is `compartments[0]`); usually
      `Model.state_names()`.
    - `subject_id`: which `ID` to read when the table holds several subjects.

    **Returns:** the boluses (`RATE` 0 or missing) and zero-order infusions (`RATE` > 0) of the `EVID = 1` rows, in
    file order; observation (`EVID = 0`) and other (`EVID = 2`) rows are checked and skipped.

    **Raises:** `ValueError` naming the line and column for anything the table conventions of this module rule out
    (encoding, field counts, non-numbers, `EVID`/`MDV` codes, interleaved subjects), for unknown compartments,
    negative amounts, unsupported `RATE`/`SS` codes, or several subjects without `subject_id`.

    **Example:**

    ```python
    import io, carkinetics as ck
    table = io.StringIO("TIME,AMT,CMT,EVID,RATE,II,ADDL\\n0,100,1,1,0,1,2\\n")
    regimen = ck.read_nonmem_events(table, ["central"])   # 100 units on days 0, 1 and 2
    ```
    """
    compartments = _names(compartments, "compartments", "state")
    header, rows = _read_rows(source, ("TIME", "AMT", "CMT"), "event table")
    return Regimen(
        [
            dose_from_row(row, compartments)
            for row in _select_subject(header, rows, subject_id, single=True)
            if row.evid == 1
        ]
    )


def dose_from_row(row: _Row, compartments: tuple[str, ...], time_factor: float = 1.0) -> Bolus | Infusion:
    """The dose of one `EVID = 1` row: a bolus (`RATE` 0 or missing) or a zero-order infusion (`RATE` > 0).

    `time_factor` converts the table's time unit to days (`TIME`, `II` multiplied by it, `RATE` divided by it).
    `ValueError` naming the line and column for a negative amount, an unknown compartment, `SS` != 0, a negative
    `RATE` code, or `ADDL` without a positive `II`.
    """
    line, need = row.line, "a dose record"
    time = row.number("TIME", needed_for=need) * time_factor
    amt = row.number("AMT", needed_for=need)
    if amt < 0:
        raise ValueError(f"Line {line}: AMT = {amt} is negative; doses must be non-negative.")
    state = _cmt(row, compartments, "dose")
    if row.number("SS", 0.0) != 0:
        raise ValueError(
            f"Line {line}: SS = {row.cells['SS']} (steady-state dosing) is not supported; give the "
            "doses explicitly with II and ADDL."
        )
    rate = row.number("RATE", 0.0)
    ii = row.number("II", 0.0) * time_factor
    addl = int(row.number("ADDL", 0.0))
    if addl < 0:
        raise ValueError(f"Line {line}: ADDL = {addl} must be a non-negative integer.")
    if addl > 0 and ii <= 0:
        raise ValueError(f"Line {line}: ADDL = {addl} needs a positive II, got II = {ii}.")
    if rate < 0:
        raise ValueError(f"Line {line}: RATE = {rate} (modelled rate/duration) is not supported; give RATE > 0 or 0.")
    if rate > 0:
        rate = rate / time_factor
        return Infusion(time, state, rate=rate, duration=amt / rate, ii=ii, addl=addl)
    return Bolus(time, amt, state, ii=ii, addl=addl)


class Observations(NamedTuple):
    """Observation records: parallel arrays `time` (days), `value` (in the observable's unit) and `observable`
    (names). `subject` holds the `ID` of each record (`""` when the table has no `ID` column)."""

    time: np.ndarray
    value: np.ndarray
    observable: tuple[str, ...]
    subject: tuple[str, ...] = ()

    def select(self, observable: str) -> tuple[np.ndarray, np.ndarray]:
        """Times and values of one observable, sorted by time."""
        mask = np.array([o == observable for o in self.observable], dtype=bool)
        order = np.argsort(self.time[mask], kind="stable")
        return self.time[mask][order], self.value[mask][order]


def read_nonmem_observations(
    source: Source, observables: Sequence[str], *, subject_id: str | int | None = None
) -> Observations:
    """Read the observation records (`EVID = 0`, `MDV = 0`) of a NONMEM-style CSV table.

    **Arguments:**

    - `source`: path or open text or binary stream (UTF-8); column names are case-insensitive; `TIME`, `DV` and
      `CMT` are required.
    - `observables`: observable names in `CMT` order (`CMT=1` is `observables[0]`); a `CMT` may also be a name.
    - `subject_id`: keep only this `ID` (default: all subjects).

    **Returns:** [`carkinetics.io.Observations`][] in file order.

    **Raises:** `ValueError` naming the line and column for anything the table conventions of this module rule out
    (encoding, field counts, non-numbers, `EVID`/`MDV` codes, interleaved subjects), for an unknown `CMT`, an
    observation without a value, a missing column, or a `subject_id` that is not in the table.

    **Example:**

    ```python
    import io
    import carkinetics.io as cio
    table = io.StringIO("TIME,AMT,CMT,EVID,DV,MDV\\n0,100,1,1,.,1\\n0.5,.,1,0,1.8,0\\n")
    obs = cio.read_nonmem_observations(table, ["concentration"])
    assert obs.value.tolist() == [1.8]
    ```
    """
    observables = _names(observables, "observables", "observable")
    header, rows = _read_rows(source, ("TIME", "DV", "CMT"), "data table")
    times, values, names, subjects = [], [], [], []
    for row in _select_subject(header, rows, subject_id, single=False):
        if row.evid != 0 or row.mdv == 1:
            continue
        need = "an observation record (EVID 0, MDV 0)"
        names.append(_cmt(row, observables, "observation"))
        times.append(row.number("TIME", needed_for=need))
        values.append(row.number("DV", needed_for=need))
        subjects.append(row.subject)
    return Observations(np.asarray(times, float), np.asarray(values, float), tuple(names), tuple(subjects))


def observations_from_solution(solution: Solution, names: Sequence[str] | None = None) -> Observations:
    """All observables of `solution` (or those in `names`) at its save times, as [`Observations`][]."""
    all_names = solution.model_class.observable_names()
    names = tuple(all_names if names is None else names)
    unknown = [n for n in names if n not in all_names]
    if unknown:
        raise ValueError(f"Unknown observable(s) {unknown}; valid observables are {list(all_names)}.")
    ts = np.asarray(solution.ts)
    t_all, v_all, n_all = [], [], []
    for n in names:
        t_all.append(ts)
        v_all.append(np.asarray(solution.obs_array[:, all_names.index(n)]))
        n_all.extend([n] * ts.shape[0])
    return Observations(np.concatenate(t_all), np.concatenate(v_all), tuple(n_all), ("",) * len(n_all))


# --------------------------------------------------------------------------------------------------------------
# Writers


def _dose_rows(
    regimen: Regimen | None, compartments: Sequence[str]
) -> list[tuple[float, float, int, float, float, int]]:
    """`(TIME, AMT, CMT, RATE, II, ADDL)` of each dose, in regimen order (`CMT` 1-based into `compartments`)."""
    compartments = tuple(compartments)
    rows = []
    for d in regimen.doses if regimen is not None else ():
        if isinstance(d, Bolus):
            t, amt, rate = float(d.time), float(d.amount), 0.0
        elif isinstance(d, Infusion):
            t, amt, rate = float(d.start), float(d.amount), float(d.rate)
        else:  # a valid dose the format cannot express: a value error, not a type error
            raise ValueError(f"{type(d).__name__} events cannot be written to a NONMEM-style table.")
        if d.state not in compartments:
            raise ValueError(f"Dose state {d.state!r} is not in `compartments` {list(compartments)}.")
        rows.append((t, amt, compartments.index(d.state) + 1, rate, float(d.ii), d.addl))
    return rows


def _write_csv(path: str | os.PathLike | io.TextIOBase, lines: list[list]) -> None:
    if isinstance(path, (str, os.PathLike)):
        with atomic_text_file(path, newline="") as fh:
            csv.writer(fh).writerows(lines)
    else:
        csv.writer(path).writerows(lines)


def write_nonmem_events(regimen: Regimen, path: str | os.PathLike | io.TextIOBase, compartments: Sequence[str]) -> None:
    """Write the bolus and infusion doses of `regimen` as a NONMEM-style CSV (TIME, AMT, CMT, EVID, RATE, II, ADDL).

    `CMT` is written as the 1-based index of the target state in `compartments`. Fractional-kill events have no
    NONMEM equivalent and raise `ValueError`.
    """
    lines = [["TIME", "AMT", "CMT", "EVID", "RATE", "II", "ADDL"]]
    lines += [[t, amt, cmt, 1, rate, ii, addl] for t, amt, cmt, rate, ii, addl in _dose_rows(regimen, compartments)]
    _write_csv(path, lines)


def write_nonmem_dataset(
    path: str | os.PathLike | io.TextIOBase,
    *,
    regimen: Regimen | None = None,
    compartments: Sequence[str] = (),
    observations: Observations | None = None,
    observables: Sequence[str] = (),
    subject_id: str | int = 1,
) -> None:
    """Write doses and observations of one subject as one NONMEM-style CSV.

    Columns: `ID, TIME, AMT, CMT, EVID, RATE, II, ADDL, DV, MDV`. Dose `CMT` is the 1-based index of the target
    state in `compartments` (usually `Model.state_names()`); observation `CMT` the 1-based index of the observable
    in `observables`. Rows are sorted by time, doses first at equal times.

    **Raises:** `ValueError` for a fractional kill (no NONMEM equivalent), a state not in `compartments`, or an
    observable not in `observables`.
    """
    observables = tuple(observables)
    rows = [
        (t, 0, [subject_id, t, amt, cmt, 1, rate, ii, addl, ".", 1])
        for t, amt, cmt, rate, ii, addl in _dose_rows(regimen, compartments)
    ]
    if observations is not None:
        for t, v, name in zip(observations.time, observations.value, observations.observable):
            if name not in observables:
                raise ValueError(f"Observation of {name!r} is not in `observables` {list(observables)}.")
            rows.append(
                (float(t), 1, [subject_id, float(t), ".", observables.index(name) + 1, 0, ".", ".", ".", float(v), 0])
            )
    rows.sort(key=lambda r: (r[0], r[1]))
    _write_csv(path, [["ID", "TIME", "AMT", "CMT", "EVID", "RATE", "II", "ADDL", "DV", "MDV"]] + [r[2] for r in rows])
