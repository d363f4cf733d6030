"""Tidy (long) CSV tables of a simulation: one row per time, output and value, with units.

The format every carkinetics front end writes (`carkinetics simulate`, the demo): columns `time, kind, name, value,
unit`, where `kind` is `state` or `observable`; values are written with `repr`, so they read back exactly.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Mapping

import numpy as np

import carkinetics as ck


def write_tidy_csv(path: str | os.PathLike, solution: ck.Solution, *, extra: Mapping[str, str] | None = None) -> str:
    """Write one solution as a tidy CSV table: `time, kind, name, value, unit` (+ `extra` constant columns).

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
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["time", "kind", "name", "value", "unit", *extra])
        for kind, names, arr, units in (
            ("state", cls.state_names(), np.asarray(solution.y_array), cls.state_units),
            ("observable", cls.observable_names(), np.asarray(solution.obs_array), cls.observable_units),
        ):
            for j, name in enumerate(names):
                for i in range(ts.shape[0]):
                    w.writerow([repr(float(ts[i])), kind, name, repr(float(arr[i, j])), units.get(name, ""),
                                *extra.values()])
    return os.fspath(path)
