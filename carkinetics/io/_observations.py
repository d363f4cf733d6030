"""NONMEM-style observation records (EVID 0, DV) in and out, next to the core's dose records.

The dose side lives in the core ([`carkinetics.read_nonmem_events`][], [`carkinetics.write_nonmem_events`][]); this
module adds the observation rows and a writer for a combined dataset (ID, TIME, AMT, CMT, EVID, RATE, II, ADDL,
DV, MDV), so that a simulated or published data set can travel to NONMEM, Monolix, nlmixr2 or Pumas and back.

Conventions: times are days; an observation row has `EVID = 0` (or no `EVID` column and an empty/zero `AMT`) and
`MDV` 0 or absent; its `CMT` is a 1-based index into `observables` or an observable name. At equal times, dose rows
are written before observation rows: carkinetics reports the state just *after* a dose at the dose time.
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

import carkinetics as ck
from carkinetics.io._nonmem import parse_float, read_text


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


def read_nonmem_observations(source: str | os.PathLike | io.TextIOBase, observables: Sequence[str], *,
                             subject_id: str | None = None) -> Observations:
    """Read the observation records (EVID 0, MDV 0) of a NONMEM-style CSV.

    **Arguments:**

    - `source`: path or open text stream; column names are case-insensitive; `TIME`, `DV` and `CMT` are required.
    - `observables`: observable names in `CMT` order (`CMT=1` is `observables[0]`); a `CMT` may also be a name.
    - `subject_id`: keep only this `ID` (default: all subjects).

    **Returns:** [`carkinetics.io.Observations`][] in file order.

    **Raises:** `ValueError` naming the line and column for a malformed number, an unknown `CMT` or a missing
    column.

    **Example:**

    ```python
    import io
    import carkinetics.io as cio
    table = io.StringIO("TIME,AMT,CMT,EVID,DV,MDV\\n0,100,1,1,.,1\\n0.5,.,1,0,1.8,0\\n")
    obs = cio.read_nonmem_observations(table, ["concentration"])
    assert obs.value.tolist() == [1.8]
    ```
    """
    observables = tuple(observables)
    if not observables or not all(isinstance(o, str) for o in observables):
        raise ValueError(f"`observables` must be a non-empty sequence of observable names, got {observables!r}.")
    reader = csv.DictReader(io.StringIO(read_text(source)))
    if reader.fieldnames is None:
        raise ValueError("The data table is empty (no header line).")
    header = [h.strip().upper() for h in reader.fieldnames]
    missing = [c for c in ("TIME", "DV", "CMT") if c not in header]
    if missing:
        raise ValueError(f"The data table lacks required column(s) {missing}; found columns {header}.")
    times, values, names, subjects = [], [], [], []
    for i, raw in enumerate(reader):
        lineno = i + 2
        row = {k.strip().upper(): (v or "").strip() for k, v in raw.items() if k is not None}
        sid = row.get("ID", "")
        if subject_id is not None and sid != str(subject_id):
            continue
        evid_raw = row.get("EVID", "")
        if evid_raw not in ("", "."):
            evid = int(parse_float(evid_raw, "EVID", lineno))
        else:
            amt = row.get("AMT", "")
            evid = 1 if amt not in ("", ".") and float(amt) != 0 else 0
        if evid != 0:
            continue
        mdv = row.get("MDV", "")
        if mdv not in ("", ".") and int(parse_float(mdv, "MDV", lineno)) == 1:
            continue
        cmt = row.get("CMT", "")
        if cmt in observables:
            name = cmt
        else:
            try:
                k = int(cmt)
            except ValueError:
                k = -1
            if not 1 <= k <= len(observables):
                raise ValueError(
                    f"Line {lineno}: unknown observation compartment CMT = {cmt!r}; valid values are "
                    f"1..{len(observables)} ({', '.join(f'{j + 1}={o}' for j, o in enumerate(observables))}) or a name."
                )
            name = observables[k - 1]
        times.append(parse_float(row.get("TIME", ""), "TIME", lineno))
        values.append(parse_float(row.get("DV", ""), "DV", lineno))
        names.append(name)
        subjects.append(sid)
    if subject_id is not None and not times and "ID" in header:
        raise ValueError(f"`subject_id` {subject_id!r} has no observation records in the table.")
    return Observations(np.asarray(times, float), np.asarray(values, float), tuple(names), tuple(subjects))


def write_nonmem_dataset(path: str | os.PathLike | io.TextIOBase, *, regimen: ck.Regimen | None = None,
                         compartments: Sequence[str] = (), observations: Observations | None = None,
                         observables: Sequence[str] = (), subject_id: str | int = 1) -> None:
    """Write doses and observations of one subject as one NONMEM-style CSV.

    Columns: `ID, TIME, AMT, CMT, EVID, RATE, II, ADDL, DV, MDV`. Dose `CMT` is the 1-based index of the target
    state in `compartments` (usually `Model.state_names()`); observation `CMT` the 1-based index of the observable
    in `observables`. Rows are sorted by time, doses first at equal times.

    **Raises:** `ValueError` for a fractional kill (no NONMEM equivalent), a state not in `compartments`, or an
    observable not in `observables`.
    """
    compartments = tuple(compartments)
    observables = tuple(observables)
    rows = []
    for d in (regimen.doses if regimen is not None else ()):
        if isinstance(d, ck.Bolus):
            t, amt, rate = float(d.time), float(d.amount), 0.0
        elif isinstance(d, ck.Infusion):
            t, amt, rate = float(d.start), float(d.amount), float(d.rate)
        else:
            raise ValueError(f"{type(d).__name__} events cannot be written to a NONMEM-style table.")
        if d.state not in compartments:
            raise ValueError(f"Dose state {d.state!r} is not in `compartments` {list(compartments)}.")
        rows.append((t, 0, [subject_id, t, amt, compartments.index(d.state) + 1, 1, rate, float(d.ii), d.addl, ".", 1]))
    if observations is not None:
        for t, v, name in zip(observations.time, observations.value, observations.observable):
            if name not in observables:
                raise ValueError(f"Observation of {name!r} is not in `observables` {list(observables)}.")
            rows.append((float(t), 1, [subject_id, float(t), ".", observables.index(name) + 1, 0, ".", ".", ".",
                                       float(v), 0]))
    rows.sort(key=lambda r: (r[0], r[1]))
    lines = [["ID", "TIME", "AMT", "CMT", "EVID", "RATE", "II", "ADDL", "DV", "MDV"]] + [r[2] for r in rows]
    if isinstance(path, (str, os.PathLike)):
        with open(path, "w", newline="") as fh:
            csv.writer(fh).writerows(lines)
    else:
        csv.writer(path).writerows(lines)


def observations_from_solution(solution: ck.Solution, names: Sequence[str] | None = None) -> Observations:
    """All observables of `solution` (or those in `names`) at its save times, as [`Observations`][]."""
    all_names = solution.model_class.observable_names()
    names = tuple(all_names if names is None else names)
    unknown = [n for n in names if n not in all_names]
    if unknown:
        raise ValueError(f"Unknown observable(s) {unknown}; valid observables are {list(all_names)}.")
    ts = np.asarray(solution.ts)
    t_all, v_all, n_all = [], [], []
    for n in names:
        v = np.asarray(solution.obs_array[:, all_names.index(n)])
        t_all.append(ts)
        v_all.append(v)
        n_all.extend([n] * ts.shape[0])
    return Observations(np.concatenate(t_all), np.concatenate(v_all), tuple(n_all), ("",) * len(n_all))
