"""Fitted parameter sets as readable JSON files with provenance; loading and applying them to models.

File layout (`"format": "carkinetics-fit/1"`):

```json
{
  "format": "carkinetics-fit/1",
  "model": "SLECarTModel",
  "parameters": {"car.rho": {"value": 0.9, "unit": "1/d", "tag": "F", "prior_centre": 0.89,
                             "prior_tag": "R", "sd": 0.05}},
  "provenance": {"data": [{"path": "...", "sha256": "...", "target_ids": ["..."]}], "loss": 12.3,
                 "date": "2026-...Z", "carkinetics_version": "0.1.0", "optimizer": "...", "script": "...",
                 "notes": "..."}
}
```

Every fitted value is tagged `F` (fitted by carkinetics, not a published estimate); the tag and source of the
default it replaced are kept as `prior_tag` / `prior_source`.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from .._core._parameters import parameters, replace

FIT_FORMAT = "carkinetics-fit/1"


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 16), b""):
            h.update(chunk)
    return h.hexdigest()


def save_fit(path: str | os.PathLike, fit: Any, *, data_files: Sequence[str | os.PathLike] = (),
             target_ids: Sequence[str] | None = None, sd: Mapping[str, float] | None = None, script: str = "",
             notes: str = "", optimizer: str | None = None) -> dict[str, Any]:
    """Write a fitted parameter set with provenance to a JSON file; returns the written dictionary.

    **Arguments:**

    - `path`: output file (`.json`).
    - `fit`: a [`carkinetics.FitResult`][].
    - `data_files`: the target files used (recorded with their SHA-256).
    - `target_ids`: ids of the targets used (default: those of the problem's targets).
    - `sd`: optional standard deviations (natural units) by parameter, e.g. from [`carkinetics.laplace`][].
    - `script`, `notes`, `optimizer`: free-text provenance.
    """
    from .. import __version__
    from ._calibrate import FitResult

    if not isinstance(fit, FitResult):
        raise ValueError(f"`fit` must be a FitResult, got {type(fit).__name__}.")
    problem = fit.problem
    allp = parameters(problem.model)
    start = np.asarray(problem.values(problem.z0))
    fitted = fit.values()
    if target_ids is None:
        target_ids = []
        for tg in problem.targets:
            target_ids.extend(getattr(tg, "ids", ()) or ([tg.target_id] if getattr(tg, "target_id", "") else []))
    params = {}
    for k, n in enumerate(problem.names):
        info = allp[n].info
        entry = {"value": fitted[n], "unit": info.unit, "tag": "F", "prior_centre": float(start[k]),
                 "prior_tag": info.tag, "prior_source": info.source, "description": info.description}
        if sd is not None and n in sd and math.isfinite(float(sd[n])):
            entry["sd"] = float(sd[n])
        params[n] = entry
    data = []
    for f in data_files:
        f = os.fspath(f)
        if not os.path.isfile(f):
            raise ValueError(f"Data file {f!r} does not exist; cannot record its provenance.")
        data.append({"path": f, "sha256": _sha256(f)})
    doc = {
        "format": FIT_FORMAT,
        "model": type(problem.model).__name__,
        "parameters": params,
        "provenance": {
            "data": data,
            "target_ids": list(target_ids),
            "loss": float(fit.loss),
            "n_starts": int(np.asarray(fit.losses).shape[0]),
            "n_converged": int(np.sum(np.asarray(fit.converged))),
            "n_agree": fit.n_agree,
            "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "carkinetics_version": __version__,
            "optimizer": optimizer or "multistart Adam + L-BFGS (optax)",
            "script": script,
            "notes": notes,
        },
    }
    with open(path, "w", encoding="utf-8") as fh:
        json.dump(doc, fh, indent=2)
        fh.write("\n")
    return doc


def load_fit(path: str | os.PathLike) -> dict[str, float]:
    """Read a fit file written by [`carkinetics.save_fit`][] and return `{parameter name: value}`.

    **Raises:** `ValueError` for a missing file, an unknown format or a non-finite value.

    **Example:** `ck.apply_fit(model, ck.load_fit("calibration/fits/human_sle.json"))`.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ValueError(f"Fit file {path!r} does not exist.")
    with open(path, encoding="utf-8") as fh:
        try:
            doc = json.load(fh)
        except json.JSONDecodeError as e:
            raise ValueError(f"Fit file {path!r} is not valid JSON: {e}.") from None
    if not isinstance(doc, dict) or doc.get("format") != FIT_FORMAT:
        raise ValueError(f"Fit file {path!r} is not a {FIT_FORMAT!r} file (format: {doc.get('format') if isinstance(doc, dict) else None!r}).")
    out = {}
    for name, entry in doc.get("parameters", {}).items():
        v = float(entry["value"]) if isinstance(entry, dict) else float(entry)
        if not math.isfinite(v):
            raise ValueError(f"Fit file {path!r}: parameter {name!r} has the non-finite value {v!r}.")
        out[name] = v
    return out


def read_fit_provenance(path: str | os.PathLike) -> dict[str, Any]:
    """The full JSON document of a fit file (parameters with units/tags and provenance)."""
    load_fit(path)  # validates
    with open(os.fspath(path), encoding="utf-8") as fh:
        return json.load(fh)


def apply_fit(model: Any, fit: Mapping[str, float] | str | os.PathLike) -> Any:
    """Return `model` with the fitted values set (a mapping from [`carkinetics.load_fit`][] or a fit-file path).

    Names must be parameters of `model` (dotted names for nested groups); values are checked against bounds.
    """
    if isinstance(fit, (str, os.PathLike)):
        fit = load_fit(fit)
    if not isinstance(fit, Mapping):
        raise ValueError(f"`fit` must be a mapping name -> value or a fit-file path, got {type(fit).__name__}.")
    return replace(model, {k: float(v) for k, v in fit.items()})
