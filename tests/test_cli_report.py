"""The self-contained HTML report: embedded images, escaped text, validated inputs."""

import base64
import re

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import pytest

from carkinetics.models import OneCompartmentPK
from carkinetics.report import Report


def test_report_is_self_contained_and_escaped(tmp_path):
    fig, ax = plt.subplots()
    ax.plot([0, 1], [0, 1])
    png = tmp_path / "f.png"
    fig.savefig(png)
    rep = Report("A <title>", subtitle="sub & title")
    rep.heading("Section").text("first <b>paragraph</b>\n\nsecond").figure(str(png), "caption 1").figure(fig, "c2")
    rep.table(["a", "b"], [["x", 1.23456789], ["y", 3]], caption="tab")
    rep.parameter_table(OneCompartmentPK())
    rep.note("skipped step", kind="skipped")
    path = rep.write(tmp_path / "sub" / "report.html")
    with open(path, encoding="utf-8") as fh:
        html = fh.read()
    imgs = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', html)
    assert len(imgs) == 2
    with open(png, "rb") as fh:
        assert base64.b64decode(imgs[0]) == fh.read()  # the file itself, byte for byte
    assert "&lt;b&gt;paragraph&lt;/b&gt;" in html and "<b>" not in html
    assert '<td class="num">1.235</td>' in html  # 4 significant digits
    assert "Ahmed JH et al., Front Pharmacol 2020;11:406" in html  # parameter sources are shown
    assert 'class="note skipped"' in html
    assert not re.search(r'(src|href)="(http|//)', html)  # nothing loaded from elsewhere
    plt.close(fig)


def test_report_rejects_bad_input(tmp_path):
    rep = Report("t")
    with pytest.raises(ValueError, match="does not exist"):
        rep.figure(str(tmp_path / "none.png"))
    with pytest.raises(ValueError, match="Row 0 of the table has 1 cells for 2 headers"):
        rep.table(["a", "b"], [["x"]])
    with pytest.raises(ValueError, match="`kind` must be one of"):
        rep.note("x", kind="fancy")
    with pytest.raises(ValueError, match="`title` must be a non-empty string"):
        Report("")


def test_key_findings_come_first_and_the_narrative_is_a_wrapped_list():
    # A reader sees the findings before the methods (whatever the call order), and the translation narrative is
    # paragraphs and a bulleted list that wrap, not a horizontally scrolling <pre> block.
    from carkinetics.models.sle import demo

    rep = Report("t")
    rep.heading("Methods").text("how it was done")
    rep.key_finding("B-cell aplasia lasts 110 days.")
    demo._narrative(
        rep,
        "How the mouse misleads (2 groups).\n- CRS grade: 0 vs 1 <gap>.\n- IL-6 peak: 12 vs 139 "
        "pg/mL.\n14 of 14 metric gaps rest on M parameters.",
    )
    html = rep.to_html()
    assert html.index("Key findings") < html.index("Methods")
    assert "<li>B-cell aplasia lasts 110 days.</li>" in html
    assert (
        "<p>How the mouse misleads (2 groups).</p>\n<ul><li>CRS grade: 0 vs 1 &lt;gap&gt;.</li><li>IL-6 peak: 12 "
        "vs 139 pg/mL.</li></ul>"
    ) in html
    assert "<p>14 of 14 metric gaps rest on M parameters.</p>" in html and "<pre>" not in html
    assert "Key findings" not in Report("t").to_html()  # no box without findings
    with pytest.raises(ValueError, match="`items` must hold at least one item"):
        rep.bullets([])
    with pytest.raises(ValueError, match="`text` must be a non-empty string"):
        rep.key_finding(" ")


def test_translation_figures_explain_their_colours():
    # The cells are labelled in percent; the colour bar was in fractions (-1..1). Both are percent now, and the title
    # says what the shares are shares of (so that a reader knows why a column's shares add up to 100 in |value|).
    import jax.numpy as jnp
    import numpy as np

    import carkinetics as ck
    import carkinetics.plot

    groups = [ck.MechanismGroup("clearance", ("cl",)), ck.MechanismGroup("volume", ("v",))]
    tm = ck.translation_map(
        lambda m: {"t_half": jnp.log(2.0) * m.v / m.cl, "cmax": 100.0 / m.v},
        OneCompartmentPK(cl=2.0, v=0.5),
        OneCompartmentPK(),
        groups,
        labels=("mouse", "human"),
    )
    fig = ck.plot.translation_heatmap(tm)
    heat, bar = fig.axes
    fig.canvas.draw()
    assert bar.get_ylabel() == "share of the gap (%)"
    ticks = [t.get_text() for t in bar.get_yticklabels() if t.get_text()]
    assert {"-100", "0", "100"} <= set(ticks)
    labels = [t.get_text() for t in heat.texts]
    np.testing.assert_allclose(
        sorted(float(s.rstrip("*?")) for s in labels), sorted(np.round(100 * tm.share().ravel())), atol=0.5
    )
    assert np.allclose(np.abs(tm.share()).sum(0), 1.0)  # the |shares| of a column add up to 100 %
    assert "add up to 100" in heat.get_title()
    plt.close(fig)
    # the waterfalls say what their colours and hatching mean: one legend under all panels, or one per lone panel
    want = {
        "mouse value",
        "human value",
        "mechanism raises the metric",
        "mechanism lowers the metric",
        "rests on A/M-tagged (unverified) values",
    }
    fig = ck.plot.attribution_waterfalls(tm)
    assert {t.get_text() for t in fig.legends[0].get_texts()} == want
    plt.close(fig)
    fig = ck.plot.attribution_waterfall(tm, "cmax")
    assert {t.get_text() for t in fig.axes[0].get_legend().get_texts()} == want
    plt.close(fig)


def test_timecourse_panels_take_readable_titles():
    import jax.numpy as jnp

    import carkinetics as ck
    from carkinetics.models.sle import demo
    from carkinetics.plot import plot_timecourse

    sol = ck.simulate(OneCompartmentPK(), ck.Bolus(0.0, 100.0, "central"), jnp.linspace(0.0, 1.0, 5))
    fig = plot_timecourse(sol, ["concentration", "central"], panel_titles={"concentration": "plasma concentration"})
    assert [ax.get_title() for ax in fig.axes] == ["plasma concentration", "central"]
    assert fig.axes[0].get_ylabel() == "concentration [mg/L]"  # the name and unit stay on the axis
    plt.close(fig)
    assert set(demo.PANEL_TITLES) == set(demo.PANELS)  # every demo panel has a readable title
