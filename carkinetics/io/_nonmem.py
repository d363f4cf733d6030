"""NONMEM-style event tables (TIME, AMT, CMT, EVID, RATE, II, ADDL; CSV) to and from a Regimen.

Conventions (as NONMEM/mrgsolve): `EVID` 1 = dose, 0 = observation, 2 = other (both skipped here);
`EVID` 3/4 (reset) are rejected. `RATE` 0 or blank = bolus, `RATE` > 0 = zero-order infusion of `AMT` at
`RATE` per day (duration AMT/RATE), `RATE` -1/-2 (modelled rate/duration) are rejected. `II`/`ADDL` repeat the
dose. `CMT` is either a 1-based index into `compartments` or a state name. Times are in days.
"""

from __future__ import annotations

import csv
import io
import math
import os
from collections.abc import Sequence



from .._core._dosing import Bolus, Infusion, Regimen

_REQUIRED = ("TIME", "AMT", "CMT")


def parse_float(raw: str, key: str, lineno: int) -> float:
    """A finite float from a table cell (`ValueError` naming the line and column otherwise)."""
    try:
        val = float(raw)
    except ValueError:
        raise ValueError(f"Line {lineno}: column {key} = {raw!r} is not a number.") from None
    if not math.isfinite(val):
        raise ValueError(f"Line {lineno}: column {key} = {raw!r} is not finite.")
    return val


def read_text(source: str | os.PathLike | io.TextIOBase) -> str:
    """The whole text of a CSV path or open text stream."""
    if isinstance(source, (str, os.PathLike)):
        with open(source, newline="") as fh:
            return fh.read()
    return source.read()


def _num(row: dict, key: str, lineno: int, default: float | None = None) -> float:
    raw = row.get(key)
    if raw is None or str(raw).strip() in ("", "."):
        if default is None:
            raise ValueError(f"Line {lineno}: column {key} is empty; it is required for a dose record.")
        return default
    return parse_float(raw, key, lineno)


def read_nonmem_events(source: str | os.PathLike | io.TextIOBase, compartments: Sequence[str], *,
                       subject_id: str | None = None) -> Regimen:
    """Read the dose records of a NONMEM-style CSV event table into a [`carkinetics.Regimen`][].

    **Arguments:**

    - `source`: path to a CSV file, or an open text stream. Column names are case-insensitive.
    - `compartments`: state names in NONMEM compartment order (`CMT=1` is `compartments[0]`); usually
      `Model.state_names()`.
    - `subject_id`: which `ID` to read when the table holds several subjects.

    **Raises:** `ValueError` naming the line and column for unknown compartments, malformed numbers, negative
    amounts, unsupported `EVID`/`RATE` codes, or several subjects without `subject_id`.

    **Example:**

    ```python
    import io, carkinetics as ck
    table = io.StringIO("TIME,AMT,CMT,EVID,RATE,II,ADDL\\n0,100,1,1,0,1,2\\n")
    regimen = ck.read_nonmem_events(table, ["central"])   # 100 units on days 0, 1 and 2
    ```
    """
    compartments = tuple(compartments)
    if not compartments or not all(isinstance(c, str) for c in compartments):
        raise ValueError(f"`compartments` must be a non-empty sequence of state names, got {compartments!r}.")
    reader = csv.DictReader(io.StringIO(read_text(source)))
    if reader.fieldnames is None:
        raise ValueError("The event table is empty (no header line).")
    header = [h.strip().upper() for h in reader.fieldnames]
    missing = [c for c in _REQUIRED if c not in header]
    if missing:
        raise ValueError(f"The event table lacks required column(s) {missing}; found columns {header}.")
    rows = []
    for i, raw in enumerate(reader):
        row = {k.strip().upper(): (v if v is None else v.strip()) for k, v in raw.items() if k is not None}
        rows.append((i + 2, row))
    if "ID" in header:
        ids = sorted({r["ID"] for _, r in rows})
        if subject_id is None and len(ids) > 1:
            raise ValueError(f"The event table holds several subjects {ids}; choose one with `subject_id`.")
        if subject_id is not None:
            if str(subject_id) not in ids:
                raise ValueError(f"`subject_id` {subject_id!r} is not in the table's IDs {ids}.")
            rows = [(n, r) for n, r in rows if r["ID"] == str(subject_id)]

    doses = []
    for lineno, row in rows:
        amt_raw = row.get("AMT", "")
        if "EVID" in header and row.get("EVID", "") not in ("", "."):
            evid = int(_num(row, "EVID", lineno))
        else:
            evid = 1 if amt_raw not in ("", ".") and float(amt_raw) != 0 else 0
        if evid in (0, 2):
            continue
        if evid != 1:
            raise ValueError(f"Line {lineno}: EVID = {evid} is not supported (only 0 = observation, 1 = dose, 2 = other).")
        time = _num(row, "TIME", lineno)
        amt = _num(row, "AMT", lineno)
        if amt < 0:
            raise ValueError(f"Line {lineno}: AMT = {amt} is negative; doses must be non-negative.")
        cmt_raw = row.get("CMT", "")
        if cmt_raw in ("", "."):
            raise ValueError(f"Line {lineno}: CMT is empty; a dose record needs a compartment.")
        try:
            k = int(float(cmt_raw))
            if float(cmt_raw) != k or not 1 <= k <= len(compartments):
                raise ValueError(
                    f"Line {lineno}: unknown compartment CMT = {cmt_raw}; valid values are 1..{len(compartments)} "
                    f"({', '.join(f'{j + 1}={c}' for j, c in enumerate(compartments))}) or a state name."
                )
            state = compartments[k - 1]
        except ValueError as err:
            if "unknown compartment" in str(err):
                raise
            if cmt_raw not in compartments:
                raise ValueError(
                    f"Line {lineno}: unknown compartment CMT = {cmt_raw!r}; valid names are {list(compartments)}."
                ) from None
            state = cmt_raw
        rate = _num(row, "RATE", lineno, 0.0) if "RATE" in header else 0.0
        ii = _num(row, "II", lineno, 0.0) if "II" in header else 0.0
        addl_f = _num(row, "ADDL", lineno, 0.0) if "ADDL" in header else 0.0
        if addl_f < 0 or addl_f != int(addl_f):
            raise ValueError(f"Line {lineno}: ADDL = {addl_f} must be a non-negative integer.")
        addl = int(addl_f)
        if addl > 0 and ii <= 0:
            raise ValueError(f"Line {lineno}: ADDL = {addl} needs a positive II, got II = {ii}.")
        if rate < 0:
            raise ValueError(f"Line {lineno}: RATE = {rate} (modelled rate/duration) is not supported; give RATE > 0 or 0.")
        if rate > 0:
            doses.append(Infusion(time, state, rate=rate, duration=amt / rate, ii=ii, addl=addl))
        else:
            doses.append(Bolus(time, amt, state, ii=ii, addl=addl))
    return Regimen(doses)


def write_nonmem_events(regimen: Regimen, path: str | os.PathLike | io.TextIOBase, compartments: Sequence[str]) -> None:
    """Write the bolus and infusion doses of `regimen` as a NONMEM-style CSV (TIME, AMT, CMT, EVID, RATE, II, ADDL).

    `CMT` is written as the 1-based index of the target state in `compartments`. Fractional-kill events have no
    NONMEM equivalent and raise `ValueError`.
    """
    compartments = tuple(compartments)
    lines = [["TIME", "AMT", "CMT", "EVID", "RATE", "II", "ADDL"]]
    for d in regimen.doses:
        if isinstance(d, Bolus):
            lines.append([float(d.time), float(d.amount), d.state, 1, 0.0, float(d.ii), d.addl])
        elif isinstance(d, Infusion):
            lines.append([float(d.start), float(d.amount), d.state, 1, float(d.rate), float(d.ii), d.addl])
        else:
            raise ValueError(f"{type(d).__name__} events cannot be written to a NONMEM-style table.")
    for row in lines[1:]:
        if row[2] not in compartments:
            raise ValueError(f"State {row[2]!r} is not in `compartments` {list(compartments)}.")
        row[2] = compartments.index(row[2]) + 1
    if isinstance(path, (str, os.PathLike)):
        with open(path, "w", newline="") as fh:
            csv.writer(fh).writerows(lines)
    else:
        csv.writer(path).writerows(lines)

