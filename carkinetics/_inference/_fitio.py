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

from .._core._files import atomic_write_text
from .._core._parameters import parameters, replace

FIT_FORMAT = "carkinetics-fit/1"


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 16), b""):
            h.update(chunk)
    return h.hexdigest()


def save_fit(
    path: str | os.PathLike,
    fit: Any,
    *,
    data_files: Sequence[str | os.PathLike] = (),
    target_ids: Sequence[str] | None = None,
    sd: Mapping[str, float] | None = None,
    script: str = "",
    notes: str = "",
    optimizer: str | None = None,
) -> dict[str, Any]:
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
    from ._fit import FitResult

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
        entry = {
            "value": fitted[n],
            "unit": info.unit,
            "tag": "F",
            "prior_centre": float(start[k]),
            "prior_tag": info.tag,
            "prior_source": info.source,
            "description": info.description,
        }
        if sd is not None and n in sd and math.isfinite(float(sd[n])):
            entry["sd"] = float(sd[n])
        params[n] = entry
    data = []
    for f in data_files:
        f = os.fspath(f)
        if not os.path.isfile(f):
            raise ValueError(f"Data file {f!r} does not exist; cannot record its provenance.")
        # relative to the fit file, so the record stays true when the repository moves
        try:
            rel = os.path.relpath(os.path.abspath(f), os.path.dirname(os.path.abspath(os.fspath(path))))
        except ValueError:  # another drive (Windows): keep the absolute path
            rel = os.path.abspath(f)
        data.append({"path": rel.replace(os.sep, "/"), "sha256": _sha256(f)})
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
            "date": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
            "carkinetics_version": __version__,
            "optimizer": optimizer or "multistart Adam + L-BFGS (optax)",
            "script": script,
            "notes": notes,
        },
    }
    atomic_write_text(path, json.dumps(doc, indent=2) + "\n")
    return doc


def _read(path: str | os.PathLike) -> dict[str, Any]:
    """The validated JSON document of a fit file (`ValueError` naming the file and the entry for anything malformed)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ValueError(f"Fit file {path!r} does not exist.")
    try:
        with open(path, encoding="utf-8") as fh:
            doc = json.load(fh)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"Fit file {path!r} is not valid UTF-8 JSON: {e}.") from None
    if not isinstance(doc, dict) or doc.get("format") != FIT_FORMAT:
        found = doc.get("format") if isinstance(doc, dict) else None
        raise ValueError(f"Fit file {path!r} is not a {FIT_FORMAT!r} file (format: {found!r}).")
    if not isinstance(doc.get("model"), str) or not doc["model"]:
        raise ValueError(f"Fit file {path!r} does not name the model class it was fitted to (field 'model').")
    params = doc.get("parameters")
    if not isinstance(params, dict) or not params:
        raise ValueError(f"Fit file {path!r} has no 'parameters' object.")
    for name, entry in params.items():
        if not isinstance(entry, dict):
            raise ValueError(
                f"Fit file {path!r}: parameter {name!r} must be an object with 'value' and 'unit', got {entry!r}."
            )
        for key in ("value", "unit"):
            if key not in entry:
                raise ValueError(f"Fit file {path!r}: parameter {name!r} lacks its {key!r}.")
        value = entry["value"]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(float(value)):
            raise ValueError(
                f"Fit file {path!r}: parameter {name!r} has the value {value!r}; a finite number is required."
            )
        if not isinstance(entry["unit"], str):
            raise ValueError(
                f"Fit file {path!r}: the unit of parameter {name!r} must be a string, got {entry['unit']!r}."
            )
    return doc


def load_fit(path: str | os.PathLike) -> dict[str, float]:
    """Read a fit file written by [`carkinetics.save_fit`][] and return `{parameter name: value}`.

    **Raises:** `ValueError` naming the file and the entry for a missing file, an unknown format, a missing model
    name, or a parameter entry without a finite value or a unit.

    **Example:** `ck.apply_fit(model, "calibration/fits/human_sle.json")` (checks model class and units).
    """
    return {name: float(entry["value"]) for name, entry in _read(path)["parameters"].items()}


def read_fit_provenance(path: str | os.PathLike) -> dict[str, Any]:
    """The full, validated JSON document of a fit file (parameters with units/tags and provenance)."""
    return _read(path)


def apply_fit(model: Any, fit: Mapping[str, float] | str | os.PathLike) -> Any:
    """Return `model` with the fitted values set (a mapping from [`carkinetics.load_fit`][] or a fit-file path).

    Names must be parameters of `model` (dotted names for nested groups); values are checked against bounds. A
    fit file must have been fitted to the model's class and give every value in the parameter's declared unit
    (`ValueError` naming the mismatch otherwise).
    """
    if isinstance(fit, (str, os.PathLike)):
        doc = _read(fit)
        if doc["model"] != type(model).__name__:
            raise ValueError(f"Fit file {os.fspath(fit)!r} was fitted to {doc['model']}, not {type(model).__name__}.")
        allp = parameters(model)
        for name, entry in doc["parameters"].items():
            if name in allp and entry["unit"] != allp[name].info.unit:
                raise ValueError(
                    f"Fit file {os.fspath(fit)!r}: parameter {name!r} is in {entry['unit']!r} but the "
                    f"model declares {allp[name].info.unit!r}."
                )
        fit = {name: float(entry["value"]) for name, entry in doc["parameters"].items()}
    if not isinstance(fit, Mapping):
        raise ValueError(f"`fit` must be a mapping name -> value or a fit-file path, got {type(fit).__name__}.")
    return replace(model, {k: float(v) for k, v in fit.items()})
