"""Parameter tables in docstrings, generated from the `ck.param` fields (one fact, one place).

Every parameter group of the SLE model is decorated with `document_params`, which appends a Markdown table
(name, default, unit, tag, description, source) built from the fields' metadata to the class docstring. The
module docstrings state the equations and point to these tables; no value is written twice.

**Convention for durations.** A parameter with unit `"d"` is a *duration* (a mean residence or programme time, name
prefix `tau_`) or a *half-life* (name prefix `t_half_`), and its description says "duration" or "half-life". No
parameter is a calendar time at which something happens: the only explicit times of the model are dose times.
`tests/test_sle_v2_conventions.py` scans every parameter of the model for this.
"""

from __future__ import annotations

import dataclasses
from typing import cast

#: Name prefixes allowed for parameters with unit "d" (see the module docstring).
DURATION_PREFIXES = ("tau_", "t_half_")
#: Words one of which the description of a unit-"d" parameter must contain.
DURATION_WORDS = ("duration", "half-life")


def _fmt(value: float) -> str:
    v = float(value)
    if v == 0.0:
        return "0"
    if 1e-3 <= abs(v) < 1e5:
        return f"{v:.4g}"
    return f"{v:.3g}"


def param_rows(cls) -> list[tuple[str, str, str, str, str, str]]:
    """(name, default, unit, tag, description, source) of every `ck.param` field of a parameter group class."""
    rows = []
    for f in dataclasses.fields(cls):
        info = f.metadata.get("carkinetics_param")
        if info is None:
            continue
        rows.append((f.name, _fmt(cast(float, f.default)), info.unit, info.tag, info.description, info.source))
    return rows


def param_table_markdown(cls) -> str:
    """The Markdown parameter table of a parameter group class (generated from its fields)."""
    lines = ["| parameter | default | unit | tag | description | source |", "|---|---|---|---|---|---|"]
    for name, default, unit, tag, desc, src in param_rows(cls):
        lines.append(f"| {name} | {default} | {unit} | {tag} | {desc} | {src.replace('|', '/')} |")
    return "\n".join(lines)


def document_params(cls):
    """Class decorator: append the generated parameter table to the class docstring."""
    doc = (cls.__doc__ or "").rstrip()
    cls.__doc__ = doc + "\n\n**Parameters** (generated from the fields):\n\n" + param_table_markdown(cls) + "\n"
    return cls
