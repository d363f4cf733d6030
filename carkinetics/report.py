"""A self-contained HTML report: headings, paragraphs, figures (PNG embedded as base64), tables and notes.

The file needs nothing else to display (no external scripts, fonts or image files), so it can be mailed or
archived as is. Used by `carkinetics demo`; usable from Python.

**Example:**

```python
import os, tempfile
from carkinetics.report import Report
rep = Report("My analysis", subtitle="carkinetics")
rep.heading("Results")
rep.text("Trajectories of the two-compartment model.")
rep.table(["parameter", "value"], [["cl", 192.0], ["v1", 39.0]], caption="Fludarabine PK")
rep.note("The sensitivity step was skipped.", kind="skipped")
rep.bullets(["clearance 192 L/d", "central volume 39 L"], intro="Fitted values:")
rep.key_finding("Clearance is four times the literature value.")
path = rep.write(os.path.join(tempfile.mkdtemp(), "report.html"))
```
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
import io
import os
from collections.abc import Sequence
from typing import Any

_CSS = """
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;
color:#222;line-height:1.45}
h1{margin-bottom:0}.subtitle{color:#666;margin-top:.2em}
h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:1.8em}
figure{margin:1em 0}figure img{max-width:100%;border:1px solid #eee}
figcaption{color:#555;font-size:.9em}
table{border-collapse:collapse;font-size:.85em;margin:.6em 0}
th,td{border:1px solid #ddd;padding:3px 7px;text-align:left;vertical-align:top}th{background:#f4f4f4}
td.num{text-align:right;font-variant-numeric:tabular-nums}
.note{padding:.5em .8em;border-left:4px solid #4a90d9;background:#f2f7fd;margin:.8em 0}
.note.skipped{border-color:#d9a04a;background:#fdf8f0}.note.warning{border-color:#d94a4a;background:#fdf2f2}
pre{background:#f6f6f6;padding:.6em;overflow-x:auto;font-size:.85em}
.findings{padding:.6em 1em;border:1px solid #cfe0f3;background:#f7fbff;margin:1em 0}.findings h2{margin-top:.2em}
footer{color:#888;font-size:.8em;margin-top:3em}
"""

_KINDS = ("info", "skipped", "warning")


def _cell(v: Any) -> str:
    if isinstance(v, float):
        return f'<td class="num">{v:.4g}</td>'
    if isinstance(v, int) and not isinstance(v, bool):
        return f'<td class="num">{v}</td>'
    return f"<td>{html.escape(str(v))}</td>"


class Report:
    """Builder of a self-contained HTML report (sections are appended in call order).

    **Arguments:**

    - `title`: the page title.
    - `subtitle`: a line under the title (e.g. the package version and date).
    """

    def __init__(self, title: str, subtitle: str | None = None):
        if not isinstance(title, str) or not title.strip():
            raise ValueError(f"`title` must be a non-empty string, got {title!r}.")
        self.title = title
        self.subtitle = subtitle
        self._parts: list[str] = []
        self._findings: list[str] = []

    def heading(self, text: str, level: int = 2) -> Report:
        """A section heading (`level` 2 or 3)."""
        if level not in (2, 3):
            raise ValueError(f"`level` must be 2 or 3, got {level!r}.")
        self._parts.append(f"<h{level}>{html.escape(text)}</h{level}>")
        return self

    def text(self, text: str) -> Report:
        """Paragraphs of plain text (blank lines separate paragraphs; HTML is escaped)."""
        for para in str(text).strip().split("\n\n"):
            self._parts.append(f"<p>{html.escape(para.strip())}</p>")
        return self

    def bullets(self, items: Sequence[str], intro: str = "") -> Report:
        """A bulleted list of plain-text items (wrapped like paragraphs), after an optional introductory sentence."""
        items = [str(i).strip() for i in items]
        if not items:
            raise ValueError("`items` must hold at least one item for a bulleted list.")
        head = f"<p>{html.escape(intro.strip())}</p>" if intro.strip() else ""
        self._parts.append(head + "<ul>" + "".join(f"<li>{html.escape(i)}</li>" for i in items) + "</ul>")
        return self

    def key_finding(self, text: str) -> Report:
        """A one-sentence finding for the "Key findings" box at the top of the report (in call order), so that a
        reader sees the results before the methods."""
        if not isinstance(text, str) or not text.strip():
            raise ValueError(f"`text` must be a non-empty string, got {text!r}.")
        self._findings.append(text.strip())
        return self

    def code(self, text: str) -> Report:
        """Preformatted text (a command line, a Markdown table)."""
        self._parts.append(f"<pre>{html.escape(str(text))}</pre>")
        return self

    def note(self, text: str, kind: str = "info") -> Report:
        """A highlighted note; `kind` is `"info"`, `"skipped"` (a step left out) or `"warning"`."""
        if kind not in _KINDS:
            raise ValueError(f"`kind` must be one of {_KINDS}, got {kind!r}.")
        self._parts.append(f'<div class="note {kind}">{html.escape(str(text))}</div>')
        return self

    def figure(self, fig_or_path: Any, caption: str = "") -> Report:
        """Embed a PNG file (path) or a matplotlib `Figure` (rendered at 110 dpi) as a base64 image."""
        if isinstance(fig_or_path, (str, os.PathLike)):
            path = os.fspath(fig_or_path)
            if not os.path.isfile(path):
                raise ValueError(f"The figure file {path!r} does not exist.")
            with open(path, "rb") as fh:
                data = fh.read()
        elif hasattr(fig_or_path, "savefig"):
            buf = io.BytesIO()
            fig_or_path.savefig(buf, format="png", dpi=110)
            data = buf.getvalue()
        else:
            raise ValueError(
                f"`fig_or_path` must be a PNG path or a matplotlib Figure, got {type(fig_or_path).__name__}."
            )
        if not data.startswith(b"\x89PNG"):
            raise ValueError("Only PNG images can be embedded in the report.")
        b64 = base64.b64encode(data).decode("ascii")
        cap = f"<figcaption>{html.escape(caption)}</figcaption>" if caption else ""
        self._parts.append(
            f'<figure><img alt="{html.escape(caption)}" src="data:image/png;base64,{b64}">{cap}</figure>'
        )
        return self

    def table(self, headers: Sequence[str], rows: Sequence[Sequence[Any]], caption: str = "") -> Report:
        """A table; floats are shown with 4 significant digits."""
        headers = list(headers)
        for i, r in enumerate(rows):
            if len(r) != len(headers):
                raise ValueError(f"Row {i} of the table has {len(r)} cells for {len(headers)} headers.")
        head = "".join(f"<th>{html.escape(str(h))}</th>" for h in headers)
        body = "".join("<tr>" + "".join(_cell(v) for v in r) + "</tr>" for r in rows)
        cap = f"<caption>{html.escape(caption)}</caption>" if caption else ""
        self._parts.append(f"<table>{cap}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")
        return self

    def parameter_table(self, model: Any, caption: str = "") -> Report:
        """The model's parameters: name, value, unit, bounds, confidence tag, description and source."""
        import numpy as np

        import carkinetics as ck

        rows = []
        for p in ck.parameter_table(model):
            v = np.asarray(p.value)
            val = float(v) if v.ndim == 0 else np.array2string(v, precision=4)
            rows.append(
                [
                    p.name,
                    val,
                    p.info.unit,
                    f"[{p.info.lower:g}, {p.info.upper:g}]",
                    p.info.tag,
                    p.info.description,
                    p.info.source,
                ]
            )
        return self.table(["parameter", "value", "unit", "bounds", "tag", "description", "source"], rows, caption)

    def to_html(self) -> str:
        """The complete HTML document."""
        import carkinetics as ck

        sub = f'<p class="subtitle">{html.escape(self.subtitle)}</p>' if self.subtitle else ""
        if self._findings:
            sub += (
                '<div class="findings"><h2>Key findings</h2><ul>'
                + "".join(f"<li>{html.escape(f)}</li>" for f in self._findings)
                + "</ul></div>"
            )
        stamp = _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
        return (
            '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f"<title>{html.escape(self.title)}</title><style>{_CSS}</style></head><body>"
            f"<h1>{html.escape(self.title)}</h1>{sub}\n"
            + "\n".join(self._parts)
            + f"\n<footer>Generated by carkinetics {html.escape(ck.__version__)} on {stamp}. Parameter confidence "
            "tags: R read in the primary source, R2 secondary source, D derived, M recalled/unverified, A modelling "
            "assumption, F fitted by carkinetics.</footer></body></html>\n"
        )

    def write(self, path: str | os.PathLike) -> str:
        """Write the report to `path` (folders are created) and return the absolute path."""
        path = os.path.abspath(os.fspath(path))
        os.makedirs(os.path.dirname(path), exist_ok=True)
        from ._core._files import atomic_write_text

        atomic_write_text(path, self.to_html())
        return path
