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

`preset_records(name)` returns the listed entries; `preset_records(name, complete=True)` adds the class defaults
(with the class provenance) for the rest; `preset_parameter_table(name)` is the complete table with the preset's
provenance.
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
    """Names of the shipped presets: `("human", "mouse_nzbw", "mouse_mrl_lpr")`."""
    return _PRESETS


def _read(name_or_path: str | os.PathLike) -> tuple[str, dict]:
    if not isinstance(name_or_path, (str, os.PathLike)):
        raise ValueError(f"`name` must be a preset name {list(_PRESETS)} or a path to a TOML file, got {name_or_path!r}.")
    if isinstance(name_or_path, str) and name_or_path in _PRESETS:
        res = importlib.resources.files("carkinetics.models.sle").joinpath("presets", f"{name_or_path}.toml")
        label = f"preset {name_or_path!r}"
        text = res.read_text(encoding="utf-8")
    else:
        path = os.fspath(name_or_path)
        if not (path.endswith(".toml") or os.sep in path or "/" in path):
            raise ValueError(f"Unknown preset {path!r}; known presets are {list(_PRESETS)} (or give a path to a "
                             ".toml file).")
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
            raise ValueError(f"The {label} has an unknown parameter group {group!r}; the groups of SLECarTModel are "
                             f"{sorted(groups)} (plus an optional [meta] table).")
        if not isinstance(table, Mapping):
            raise ValueError(f"In the {label}, {group!r} must be a table of parameters, got {table!r}.")
        for pname, entry in table.items():
            flat[f"{group}.{pname}"] = entry
    return flat


def preset_records(name: str | os.PathLike, *, complete: bool = False) -> dict[str, PresetEntry]:
    """The validated entries of a preset (name or TOML path), keyed by dotted parameter name.

    With `complete=True` every parameter of the model is included: the unlisted ones with the class default value
    and the class provenance (source, tag; no gap).

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
                raise ValueError(f"The {where} has no {key!r}; every listed parameter needs value, unit, source and "
                                 "tag.")
        value = entry["value"]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ValueError(f"The {where} must have a finite numeric value, got {value!r}.")
        for key in ("unit", "source", "tag"):
            if not isinstance(entry[key], str):
                raise ValueError(f"The {where} must have a string {key!r}, got {entry[key]!r}.")
        if entry["unit"] != info.unit:
            raise ValueError(f"The {where} has unit {entry['unit']!r}, but SLECarTModel declares {info.unit!r}; "
                             "convert the value to the declared unit.")
        if entry["tag"] not in ck.CONFIDENCE_TAGS:
            raise ValueError(f"The {where} has confidence tag {entry['tag']!r}, which is not one of "
                             f"{sorted(ck.CONFIDENCE_TAGS)}.")
        if not (info.lower <= float(value) <= info.upper):
            raise ValueError(f"The {where} has value {value!r} {info.unit}, outside the declared bounds "
                             f"[{info.lower}, {info.upper}] ({info.description}).")
        gap = entry.get("gap")
        if gap is not None and (not isinstance(gap, str) or not _GAP.match(gap)):
            raise ValueError(f"The {where} has gap {gap!r}; use a mechanism label 'G1' ... 'G12' (the translation gap ids).")
        out[pname] = PresetEntry(float(value), entry["unit"], entry["source"], entry["tag"], gap,
                                 entry.get("description"))
    if complete:
        for pname, p in declared.items():
            if pname not in out:
                out[pname] = PresetEntry(float(p.value), p.info.unit, p.info.source, p.info.tag, None,
                                         p.info.description)
    return out


def preset_meta(name: str | os.PathLike) -> dict[str, Any]:
    """The `[meta]` table of a preset (empty if it has none)."""
    _, data = _read(name)
    meta = data.get("meta", {})
    return dict(meta) if isinstance(meta, Mapping) else {}


def load_preset(name: str | os.PathLike) -> SLECarTModel:
    """Build an `SLECarTModel` from a preset name (see `preset_names`) or a TOML path: the class defaults with the
    preset's values.

    **Raises:** `ValueError` for an unknown name or an invalid file (see `preset_records`).

    **Example:**

    ```python
    from carkinetics.models.sle import load_preset
    mouse = load_preset("mouse_nzbw")
    float(mouse.humoral.k_igg)      # ~0.099 /d (IgG t1/2 ~7 d)
    ```
    """
    records = preset_records(name)
    return SLECarTModel().replace({k: r.value for k, r in records.items()})


def preset_parameter_table(name: str | os.PathLike) -> ck.ParameterTable:
    """The complete parameter table of a preset with the preset's own provenance where it sets a value.

    **Example:**

    ```python
    from carkinetics.models.sle import preset_parameter_table
    print(preset_parameter_table("mouse_nzbw").to_markdown()[:200])
    ```
    """
    records = preset_records(name, complete=True)
    declared = ck.parameters(SLECarTModel())
    rows = []
    for pname, p in declared.items():
        r = records[pname]
        desc = p.info.description + (f" [{r.gap}]" if r.gap else "")
        info = ck.ParamInfo(unit=r.unit, description=desc, source=r.source, tag=r.tag, lower=p.info.lower,
                            upper=p.info.upper)
        rows.append(ck.Parameter(pname, r.value, info))
    return ck.ParameterTable(rows)


def _toml_str(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def dump_preset(model: SLECarTModel, path: str | os.PathLike, *, name: str, description: str,
                records: Mapping[str, PresetEntry] | None = None, species: str = "") -> None:
    """Write the parameters of `model` that differ from the class defaults as a preset TOML file (e.g. after
    calibration).

    Provenance comes from `records` (dotted name → `PresetEntry`, whose `value` is ignored) where given, else from
    the class metadata: set `tag="F"` and a source naming the fit for fitted values.
    """
    if not isinstance(model, SLECarTModel):
        raise ValueError(f"`model` must be an SLECarTModel, got {type(model).__name__}.")
    records = dict(records or {})
    default = ck.parameters(SLECarTModel())
    lines = ["[meta]", f"name = {_toml_str(name)}", f"species = {_toml_str(species)}",
             f"description = {_toml_str(description)}", ""]
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
