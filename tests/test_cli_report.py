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


def _course_stub(anti_dsdna_baseline=100.0, t_end=730.0):
    """What `course_target_overlays` reads of a solution of the SLE model: save times, the anti-dsDNA course and the
    model class (for the units), without solving it."""
    import types

    import numpy as np

    from carkinetics.models.sle.presets import load_preset

    ts = np.linspace(-6.0, t_end, 50)
    obs = types.SimpleNamespace(anti_dsdna=np.full(ts.shape, anti_dsdna_baseline))
    return types.SimpleNamespace(ts=ts, observables=obs, model_class=type(load_preset("human")))


def test_course_overlays_are_the_published_targets():
    import numpy as np

    from carkinetics.models.sle import demo_figures as df
    from carkinetics.models.sle.metrics import B_RETURN_PER_UL
    from carkinetics.models.sle.targets import load_sle_targets

    rows = load_sle_targets("human")
    full = {o.target_ids: o for o in df.course_target_overlays(_course_stub(80.0), rows)}
    for tid in ("mackensen2022_sledai_baseline", "mackensen2022_sledai_3mo"):
        o, r = full[(tid,)], rows[tid]
        assert (o.panel, o.kind, o.t, o.y, o.y_lo, o.y_hi) == ("sledai", "point", r.time, r.value, *r.interval())
        assert o.label.startswith("Mackensen 2022") and o.label.endswith(f"[{r.tag}]")
    peak = full[("sle_car_peak_blood_vs_nhl", "erlangen_car_tmax")]
    assert (peak.panel, peak.t, peak.t_lo, peak.t_hi) == ("car_blood", 9.0, 7.0, 14.0)  # median (range) day
    assert (peak.y, peak.y_lo, peak.y_hi) == (38.0, 15.0, 98.0)  # cells/uL, the model's unit
    back = full[("mackensen2022_b_reappearance",)]
    assert (back.panel, back.t, back.t_lo, back.t_hi) == ("b_blood", 110.0, 78.0, 142.0)  # mean +/- sd days
    assert back.y == B_RETURN_PER_UL
    ds = full[("cambridge2006_dsdna_rtx",)]  # fraction of baseline x the model's own baseline (80 U/mL here)
    assert (ds.panel, ds.t) == ("anti_dsdna", 210.0)
    np.testing.assert_allclose([ds.y, ds.y_lo, ds.y_hi], [0.38 * 80, 0.05 * 80, 0.71 * 80])
    band = full[("b_blood_reference_range",)]
    assert (band.kind, band.y_lo, band.y_hi) == ("band", 100.0, 500.0)
    # a horizon before day 210 leaves the anti-dsDNA point out (the quick run's 120 days)
    short = df.course_target_overlays(_course_stub(80.0, t_end=120.0), rows, t_end=120.0)
    assert ("cambridge2006_dsdna_rtx",) not in {o.target_ids for o in short}


def test_overlays_are_drawn_at_the_target_values_with_a_legend_per_source():
    from carkinetics.models.sle import demo_figures as df

    overlays = df.course_target_overlays(_course_stub())
    fig, axs = plt.subplots(1, 4)
    axes = dict(zip(("sledai", "car_blood", "b_blood", "anti_dsdna"), axs))
    assert df.overlay_targets(axes, overlays) == len(overlays)
    for name, ax in axes.items():
        points = sorted((o.t, o.y) for o in overlays if o.panel == name and o.kind == "point")
        drawn = sorted(tuple(map(float, c.lines[0].get_xydata()[0])) for c in ax.containers)
        assert drawn == points, name
        legend = [t.get_text() for t in ax.get_legend().get_texts()]
        assert len(legend) == len(set(legend)) == len({o.label for o in overlays if o.panel == name})
    assert axes["b_blood"].patches or axes["b_blood"].collections  # the reference range band
    plt.close(fig)


def test_population_band_figure_shows_both_bands_and_the_targets():
    import numpy as np

    from carkinetics.models.sle import demo, demo_figures as df

    ts = np.linspace(-6.0, 120.0, 40)
    rng = np.random.default_rng(0)
    bands = {n: np.percentile(np.exp(rng.normal(size=(30, 40))), df.PERCENTILES, axis=0) for n in df.BAND_PANELS}
    pb = df.PopulationBands(ts, bands, 30, 0)
    overlays = [o for o in df.course_target_overlays(_course_stub(t_end=120.0)) if o.panel in df.BAND_PANELS]
    fig = df.plot_population_bands(pb, overlays, demo.PANEL_TITLES)
    legend = {t.get_text() for t in fig.legends[0].get_texts()}
    assert {"5-95 % of virtual patients", "25-75 %", "median", "published target ± spread"} <= legend
    for ax, name in zip(fig.axes, df.BAND_PANELS):
        assert ax.get_title() == demo.PANEL_TITLES[name]
        assert len(ax.collections) >= 2  # the two bands
        drawn = sorted(tuple(map(float, c.lines[0].get_xydata()[0])) for c in ax.containers)
        assert drawn == sorted((o.t, o.y) for o in overlays if o.panel == name and o.kind == "point")
    plt.close(fig)
    titles = [s.title for s in demo.DEMO_STEPS]
    assert titles.index(demo.POPULATION) == titles.index(demo.HUMAN) + 1
    assert {"population_bands.png", "population_percentiles.csv", "human_targets.csv"} <= set(demo.DEMO_FILES)


class _Collect:
    """A stand-in report that keeps what a demo step writes."""

    def __init__(self):
        self.texts, self.tables = [], []

    def text(self, s):
        self.texts.append(s)

    def table(self, head, rows):
        self.tables.append((head, rows))


def test_translation_step_marks_censored_values_and_says_whether_shares_have_intervals(tmp_path):
    import equinox as eqx
    import jax
    import jax.numpy as jnp
    import numpy as np

    import carkinetics as ck
    from carkinetics.models.sle import demo

    groups = [ck.MechanismGroup("clearance", ("cl",)), ck.MechanismGroup("volume", ("v",))]

    def fn(m):
        return {"t_half": jnp.log(2.0) * m.v / m.cl, "cmax": 100.0 / m.v}

    a, b = OneCompartmentPK(cl=2.0, v=0.5), OneCompartmentPK()
    tm = ck.translation_map(fn, a, b, groups, labels=("mouse", "human"))
    tm = eqx.tree_at(lambda t: t.censored_b, tm, np.array([True, False]))  # t_half of b ran to the horizon
    ctx = demo.DemoContext(out=str(tmp_path), quick=True, report=_Collect())
    demo._translation_values_table(ctx, tm)
    demo._translation_uncertainty_note(ctx, tm)
    head, rows = ctx.report.tables[0]
    assert head == ["metric", "unit", "mouse", "human", "gap"]
    assert rows[0][3].startswith(">= ") and rows[0][4].startswith(">= ") and not rows[1][3].startswith(">=")
    assert "no uncertainty intervals" in ctx.report.texts[-1] and "--samples" in ctx.report.texts[-1]
    sampled = ck.translation_map(fn, a, b, groups, labels=("mouse", "human"), n_samples=4, key=jax.random.key(0))
    demo._translation_uncertainty_note(ctx, sampled)
    assert "4 parameter samples" in ctx.report.texts[-1] and "sample interval" in ctx.report.texts[-1]
