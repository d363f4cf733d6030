"""Presets of `SLECarTModel` as readable TOML data files that hold only what differs from the class defaults.

The class defaults are the human values (`SLECarTModel()`); a preset (`presets/<name>.toml`, shipped as package data)
lists only the parameters whose value differs, each with its own unit, source and confidence tag (one fact, one
place). It has an optional `[meta]` table (`name`, `species`, `description`, `product`) and one table per
parameter, addressed by its dotted name:

```toml
[humoral.k_igg]
value = 0.099
unit = "1/d"
tag = "M"
source = "mouse IgG t1/2 ~7 d (Vieira P, Rajewsky K, Eur J Immunol 1988;18:313)"
gap = "G1"                      # optional: translation-gap mechanism G1-G12
description = "IgG elimination rate"   # optional
```

Loading checks, with a `ValueError` naming the file and the parameter: unknown group or parameter names, missing or
empty `value`/`unit`/`source`/`tag`, unknown confidence tags, unknown entry keys, non-numeric or non-finite values,
values outside the declared bounds, units that differ from the model's declared unit, and malformed `gap` labels.
All presets build the same `SLECarTModel` class (same structure), so parameter groups can be swapped between them.

**Calibrated presets.** A preset's `[meta]` table may name a fit file, `fit = "human_sle.json"`: a file written by
`carkinetics.save_fit` and shipped as package data (`carkinetics.models.sle.fits`, source `calibration/fits/`).
`load_preset` then builds the class defaults, sets the fitted values from that file (tag `F`, with the fit file,
its data files and their SHA-256 as the source; the tag and source of the default they replaced are kept in the
file as the prior), and finally the preset's own values. The fit file is the only place the fitted numbers live:
a preset never copies them. `load_preset(name, calibrated=False)` skips the fit (the priors of the calibration,
used by `calibration/fit_human_sle.py`). The shipped human presets and the mouse presets all name the human SLE
fit, so every preset lists only what differs from the calibrated adult human (one fact, one place).

`preset_records(name)` returns the preset's entries (the fitted ones first, then the listed ones);
`preset_records(name, complete=True)` adds the class defaults (with the class provenance) for the rest;
`preset_parameter_table(name)` is the complete table with the preset's provenance.
"""

from __future__ import annotations

import dataclasses
import importlib.resources
import math
import os
import re
import tomllib
from collections.abc import Mapping
from typing import Any

import carkinetics as ck
from carkinetics.models.sle.model import SLECarTModel

_PRESETS = ("human", "human_oncology", "mouse_nzbw", "mouse_mrl_lpr")
_FITS_PACKAGE = "carkinetics.models.sle.fits"
_REQUIRED = ("value", "unit", "source", "tag")
_OPTIONAL = ("gap", "description")
_GAP = re.compile(r"^G(?:[1-9]|1[0-2])$")


@dataclasses.dataclass(frozen=True)
class PresetEntry:
    """One parameter of a preset: value (in `unit`), provenance and the optional gap mechanism (G1-G12)."""

    value: float
    unit: str
    source: str
    tag: str
    gap: str | None = None
    description: str | None = None


def preset_names() -> tuple[str, ...]:
    """Names of the shipped presets: `("human", "human_oncology", "mouse_nzbw", "mouse_mrl_lpr")`."""
    return _PRESETS


def fit_path(name: str) -> str:
    """Path of a shipped fit file (package data `carkinetics.models.sle.fits`; source `calibration/fits/`).

    **Example:** `fit_path("human_sle.json")`.
    """
    if not isinstance(name, str) or not name.endswith(".json") or "/" in name or os.sep in name:
        raise ValueError(f"`name` must be the file name of a shipped fit (e.g. 'human_sle.json'), got {name!r}.")
    path = str(importlib.resources.files(_FITS_PACKAGE).joinpath(name))
    if not os.path.isfile(path):
        raise ValueError(f"No shipped fit file {name!r} (looked in {os.path.dirname(path)!r}).")
    return path


def preset_fit(name: str | os.PathLike) -> str | None:
    """Path of the fit file a preset names in `[meta] fit` (`None` if it names none)."""
    label, data = _read(name)
    meta = data.get("meta", {})
    fit = meta.get("fit") if isinstance(meta, Mapping) else None
    if fit is None:
        return None
    if not isinstance(fit, str) or not fit.strip():
        raise ValueError(f"The {label} has `fit = {fit!r}` in [meta]; give the file name of a shipped fit.")
    try:
        return fit_path(fit)
    except ValueError as err:
        raise ValueError(f"The {label}: {err}") from None


def _fit_records(path: str, declared: Mapping[str, Any]) -> dict[str, PresetEntry]:
    """The fitted values of a fit file as preset entries (tag F; the source names the file and its data)."""
    doc = ck.read_fit_provenance(path)
    if doc["model"] != SLECarTModel.__name__:
        raise ValueError(f"Fit file {path!r} was fitted to {doc['model']}, not {SLECarTModel.__name__}.")
    prov = doc.get("provenance", {})
    data = "; ".join(
        f"{os.path.basename(d.get('path', ''))} sha256 {str(d.get('sha256', ''))[:12]}" for d in prov.get("data", [])
    )
    where = f"calibration/fits/{os.path.basename(path)}"
    out: dict[str, PresetEntry] = {}
    for pname, entry in doc["parameters"].items():
        if pname not in declared:
            raise ValueError(
                f"Fit file {path!r} sets {pname!r}, which is not a parameter of SLECarTModel (a fit of "
                "an older model version: refit)."
            )
        info = declared[pname].info
        if entry["unit"] != info.unit:
            raise ValueError(
                f"Fit file {path!r}: parameter {pname!r} is in {entry['unit']!r} but SLECarTModel "
                f"declares {info.unit!r}."
            )
        value = float(entry["value"])
        if not (info.lower <= value <= info.upper):
            raise ValueError(
                f"Fit file {path!r}: parameter {pname!r} = {value!r} lies outside the declared bounds "
                f"[{info.lower}, {info.upper}]."
            )
        source = (
            f"fitted by carkinetics ({where}, {prov.get('date', 'undated')}; data: {data or 'none recorded'})"
            f"; prior: {entry.get('prior_source', info.source)} [{entry.get('prior_tag', info.tag)}]"
        )
        out[pname] = PresetEntry(value, info.unit, source, "F", None, entry.get("description") or info.description)
    return out


def _read(name_or_path: str | os.PathLike) -> tuple[str, dict]:
    if not isinstance(name_or_path, (str, os.PathLike)):
        raise ValueError(
            f"`name` must be a preset name {list(_PRESETS)} or a path to a TOML file, got {name_or_path!r}."
        )
    if isinstance(name_or_path, str) and name_or_path in _PRESETS:
        res = importlib.resources.files("carkinetics.models.sle").joinpath("presets", f"{name_or_path}.toml")
        label = f"preset {name_or_path!r}"
        text = res.read_text(encoding="utf-8")
    else:
        path = os.fspath(name_or_path)
        if not (path.endswith(".toml") or os.sep in path or "/" in path):
            raise ValueError(
                f"Unknown preset {path!r}; known presets are {list(_PRESETS)} (or give a path to a .toml file)."
            )
        if not os.path.isfile(path):
            raise ValueError(f"Preset file {path!r} does not exist.")
        label = f"preset file {path!r}"
        with open(path, encoding="utf-8") as fh:
            text = fh.read()
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise ValueError(f"The {label} is not valid TOML: {err}.") from err
    return label, data


def _flatten(label: str, data: Mapping[str, Any], groups: set[str]) -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for group, table in data.items():
        if group == "meta":
            continue
        if group not in groups:
            raise ValueError(
                f"The {label} has an unknown parameter group {group!r}; the groups of SLECarTModel are "
                f"{sorted(groups)} (plus an optional [meta] table)."
            )
        if not isinstance(table, Mapping):
            raise ValueError(f"In the {label}, {group!r} must be a table of parameters, got {table!r}.")
        for pname, entry in table.items():
            flat[f"{group}.{pname}"] = entry
    return flat


def preset_records(
    name: str | os.PathLike, *, complete: bool = False, calibrated: bool = True
) -> dict[str, PresetEntry]:
    """The validated entries of a preset (name or TOML path), keyed by dotted parameter name.

    With `calibrated=True` (default) the fitted values of the fit file the preset names (`[meta] fit`) come first
    (tag `F`), then the preset's own entries, which take precedence; `calibrated=False` gives the preset's own
    entries only. With `complete=True` every parameter of the model is included: the others with the class
    default value and the class provenance (source, tag; no gap).

    **Raises:** `ValueError` naming the file and the parameter for every problem listed in the module docstring.

    **Example:**

    ```python
    from carkinetics.models.sle import preset_records
    rec = preset_records("mouse_nzbw")["humoral.k_igg"]
    rec.value, rec.unit, rec.gap      # (0.099..., '1/d', 'G1')
    ```
    """
    label, data = _read(name)
    declared = ck.parameters(SLECarTModel())
    groups = {n.split(".")[0] for n in declared}
    flat = _flatten(label, data, groups)
    fit = preset_fit(name) if calibrated else None
    unknown = sorted(set(flat) - set(declared))
    if unknown:
        raise ValueError(f"The {label} has unknown parameter(s) {unknown}; known parameters are {sorted(declared)}.")
    out: dict[str, PresetEntry] = {}
    for pname, entry in flat.items():
        info = declared[pname].info
        where = f"parameter {pname!r} of the {label}"
        if not isinstance(entry, Mapping):
            raise ValueError(f"The {where} must be a table with keys {list(_REQUIRED)}, got {entry!r}.")
        extra = sorted(set(entry) - set(_REQUIRED) - set(_OPTIONAL))
        if extra:
            raise ValueError(f"The {where} has unknown key(s) {extra}; allowed keys are {list(_REQUIRED + _OPTIONAL)}.")
        for key in _REQUIRED:
            if key not in entry or (isinstance(entry[key], str) and not entry[key].strip()):
                raise ValueError(
                    f"The {where} has no {key!r}; every listed parameter needs value, unit, source and tag."
                )
        value = entry["value"]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ValueError(f"The {where} must have a finite numeric value, got {value!r}.")
        for key in ("unit", "source", "tag"):
            if not isinstance(entry[key], str):
                raise ValueError(f"The {where} must have a string {key!r}, got {entry[key]!r}.")
        if entry["unit"] != info.unit:
            raise ValueError(
                f"The {where} has unit {entry['unit']!r}, but SLECarTModel declares {info.unit!r}; "
                "convert the value to the declared unit."
            )
        if entry["tag"] not in ck.CONFIDENCE_TAGS:
            raise ValueError(
                f"The {where} has confidence tag {entry['tag']!r}, which is not one of {sorted(ck.CONFIDENCE_TAGS)}."
            )
        if not (info.lower <= float(value) <= info.upper):
            raise ValueError(
                f"The {where} has value {value!r} {info.unit}, outside the declared bounds "
                f"[{info.lower}, {info.upper}] ({info.description})."
            )
        gap = entry.get("gap")
        if gap is not None and (not isinstance(gap, str) or not _GAP.match(gap)):
            raise ValueError(
                f"The {where} has gap {gap!r}; use a mechanism label 'G1' ... 'G12' (the translation gap ids)."
            )
        out[pname] = PresetEntry(
            float(value), entry["unit"], entry["source"], entry["tag"], gap, entry.get("description")
        )
    if fit is not None:
        out = {**_fit_records(fit, declared), **out}
    if complete:
        for pname, p in declared.items():
            if pname not in out:
                out[pname] = PresetEntry(
                    float(p.value), p.info.unit, p.info.source, p.info.tag, None, p.info.description
                )
    return out


def preset_meta(name: str | os.PathLike) -> dict[str, Any]:
    """The `[meta]` table of a preset (empty if it has none)."""
    _, data = _read(name)
    meta = data.get("meta", {})
    return dict(meta) if isinstance(meta, Mapping) else {}


def load_preset(name: str | os.PathLike, *, calibrated: bool = True) -> SLECarTModel:
    """Build an `SLECarTModel` from a preset name (see `preset_names`) or a TOML path: the class defaults, the
    fitted values of the fit file the preset names (unless `calibrated=False`), then the preset's own values.

    `load_preset("human")` is the calibrated default of the application (fit file `human_sle.json`, written by
    `calibration/fit_human_sle.py`); `load_preset("human", calibrated=False)` the hand-set class defaults it was
    calibrated from.

    **Raises:** `ValueError` for an unknown name or an invalid file (see `preset_records`).

    **Example:**

    ```python
    from carkinetics.models.sle import load_preset
    mouse = load_preset("mouse_nzbw")
    float(mouse.humoral.k_igg)      # ~0.099 /d (IgG t1/2 ~7 d)
    ```
    """
    records = preset_records(name, calibrated=calibrated)
    return SLECarTModel().replace({k: r.value for k, r in records.items()})


def preset_parameter_table(name: str | os.PathLike, *, calibrated: bool = True) -> ck.ParameterTable:
    """The complete parameter table of a preset with the preset's own provenance where it sets a value (fitted
    values with tag `F` and the fit file as their source).

    **Example:**

    ```python
    from carkinetics.models.sle import preset_parameter_table
    print(preset_parameter_table("mouse_nzbw").to_markdown()[:200])
    ```
    """
    records = preset_records(name, complete=True, calibrated=calibrated)
    declared = ck.parameters(SLECarTModel())
    rows = []
    for pname, p in declared.items():
        r = records[pname]
        desc = p.info.description + (f" [{r.gap}]" if r.gap else "")
        info = ck.ParamInfo(
            unit=r.unit, description=desc, source=r.source, tag=r.tag, lower=p.info.lower, upper=p.info.upper
        )
        rows.append(ck.Parameter(pname, r.value, info))
    return ck.ParameterTable(rows)


def _toml_str(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def dump_preset(
    model: SLECarTModel,
    path: str | os.PathLike,
    *,
    name: str,
    description: str,
    records: Mapping[str, PresetEntry] | None = None,
    species: str = "",
) -> None:
    """Write the parameters of `model` that differ from the class defaults as a preset TOML file (e.g. after
    calibration).

    Provenance comes from `records` (dotted name → `PresetEntry`, whose `value` is ignored) where given, else from
    the class metadata: set `tag="F"` and a source naming the fit for fitted values.
    """
    if not isinstance(model, SLECarTModel):
        raise ValueError(f"`model` must be an SLECarTModel, got {type(model).__name__}.")
    records = dict(records or {})
    default = ck.parameters(SLECarTModel())
    lines = [
        "[meta]",
        f"name = {_toml_str(name)}",
        f"species = {_toml_str(species)}",
        f"description = {_toml_str(description)}",
        "",
    ]
    for p in ck.parameter_table(model):
        if float(p.value) == float(default[p.name].value):
            continue
        rec = records.get(p.name)
        unit, source, tag = p.info.unit, p.info.source, p.info.tag
        gap, desc = None, p.info.description
        if rec is not None:
            source, tag, gap = rec.source, rec.tag, rec.gap
            desc = rec.description or desc
        lines.append(f"[{p.name}]")
        lines.append(f"value = {float(p.value)!r}")
        lines.append(f"unit = {_toml_str(unit)}")
        lines.append(f"tag = {_toml_str(tag)}")
        lines.append(f"source = {_toml_str(source)}")
        if gap:
            lines.append(f"gap = {_toml_str(gap)}")
        lines.append(f"description = {_toml_str(desc)}")
        lines.append("")
    with open(path, "w", encoding="utf-8") as fh:
        fh.write("\n".join(lines))
