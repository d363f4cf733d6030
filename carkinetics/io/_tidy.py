"""Tidy (long) CSV tables of a simulation: one row per time, output and value, with units.

The format every carkinetics front end writes (`carkinetics simulate`, the demo): columns `time, kind, name, value,
unit`, where `kind` is `state` or `observable`; values are written with `repr`, so they read back exactly. Every
`name` stands for one quantity with one unit: observables keep their name, and a state whose name is also an
observable's (e.g. the SLE model's `flu_auc`, an amount-based state in mg·d/L, and its observable in mg·h/L) is
written `state:<name>`, so that a table pivoted on `name` never mixes the two.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Mapping, Sequence

import numpy as np

import carkinetics as ck

from .._core._files import atomic_text_file


def tidy_names(state_names: Sequence[str], observable_names: Sequence[str]) -> tuple[list[str], list[str]]:
    """The `name` column of the states and of the observables: a state that shares its name with an observable is
    `state:<name>` (see the module docstring)."""
    clash = set(state_names) & set(observable_names)
    return [f"state:{n}" if n in clash else n for n in state_names], list(observable_names)


def write_tidy_csv(path: str | os.PathLike, solution: ck.Solution, *, extra: Mapping[str, str] | None = None) -> str:
    """Write one solution as a tidy CSV table: `time, kind, name, value, unit` (+ `extra` constant columns), one name
    per quantity (a state named like an observable is `state:<name>`), the unit on every row; written atomically.

    **Arguments:**

    - `path`: the CSV file to write.
    - `solution`: a [`carkinetics.Solution`][] of one member (`ts` of shape `(T,)`).
    - `extra`: constant columns appended to every row (e.g. `{"arm": "human"}`).

    **Returns:** `path` as a string.

    **Example:**

    ```python
    import os, tempfile
    import jax.numpy as jnp
    import carkinetics as ck
    import carkinetics.io as cio
    from carkinetics.models import OneCompartmentPK
    sol = ck.simulate(OneCompartmentPK(), ck.Bolus(0.0, 100.0, "central"), jnp.linspace(0.0, 1.0, 5))
    cio.write_tidy_csv(os.path.join(tempfile.mkdtemp(), "sim.csv"), sol)   # 5 times x (1 state + 1 observable)
    ```
    """
    ts = np.asarray(solution.ts)
    if ts.ndim != 1:
        raise ValueError(f"`solution` must hold one member (ts of shape (T,)), got ts of shape {ts.shape}.")
    cls = solution.model_class
    extra = dict(extra or {})
    state_labels, observable_labels = tidy_names(cls.state_names(), cls.observable_names())
    with atomic_text_file(path, newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["time", "kind", "name", "value", "unit", *extra])
        for kind, names, labels, arr, units in (
            ("state", cls.state_names(), state_labels, np.asarray(solution.y_array), cls.state_units),
            (
                "observable",
                cls.observable_names(),
                observable_labels,
                np.asarray(solution.obs_array),
                cls.observable_units,
            ),
        ):
            for j, (name, label) in enumerate(zip(names, labels)):
                for i in range(ts.shape[0]):
                    w.writerow(
                        [repr(float(ts[i])), kind, label, repr(float(arr[i, j])), units.get(name, ""), *extra.values()]
                    )
    return os.fspath(path)
