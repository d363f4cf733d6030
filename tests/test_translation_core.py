"""Translation map machinery on a small PK model: efficiency, ungrouped gaps, samples, flags, tables, figures."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import carkinetics as ck
from carkinetics.models import OneCompartmentPK, TwoCompartmentPK

GROUPS = [
    ck.MechanismGroup("G1 clearance", ("cl",), description="elimination", gap="G1"),
    ck.MechanismGroup("G2 volume", ("v1", "v2"), description="distribution volumes", gap="G2"),
]
UNITS = {"cmax": "mg/L", "auc": "mg d/L", "log10_trough": "log10 mg/L"}
BATCH = 8  # one chunk size for the module: `_metrics` compiles once


def _metrics(model):
    ts = jnp.linspace(0.0, 1.0, 49)
    sol = ck.simulate(model, ck.Bolus(0.0, 100.0, "central"), ts, throw=False)
    c = sol.observables.concentration
    return {
        "cmax": ck.metrics.cmax(ts, c),
        "auc": ck.metrics.auc(ts, c),
        "log10_trough": jnp.log10(jnp.maximum(c[-1], 1e-12)),
    }


MOUSE = TwoCompartmentPK(cl=5.0, v1=1.0, q=3.0, v2=0.6)
HUMAN = TwoCompartmentPK(cl=192.0, v1=39.0, q=206.4, v2=20.0)


def test_map_efficiency_ungrouped_and_order():
    tm = ck.translation_map(_metrics, MOUSE, HUMAN, GROUPS, units=UNITS, labels=("mouse", "human"), batch_size=BATCH)
    # q differs but is in no group: it is collected into an extra group, so the map explains the whole gap
    assert tm.group_names == ("G1 clearance", "G2 volume", "ungrouped")
    assert tm.metric_names == ("cmax", "auc", "log10_trough")  # order of `units`
    direct_a, direct_b = _metrics(MOUSE), _metrics(HUMAN)
    for k, n in enumerate(tm.metric_names):
        assert tm.value_a[k] == pytest.approx(float(direct_a[n]), rel=1e-10)
        assert tm.value_b[k] == pytest.approx(float(direct_b[n]), rel=1e-10)
    np.testing.assert_allclose(tm.shapley.sum(0), tm.total, rtol=1e-8)  # efficiency
    # Cmax = dose / V1 (at t = 0): only the volume group carries it
    k = tm.metric_names.index("cmax")
    np.testing.assert_allclose(tm.shapley[:, k], [0.0, 100.0 / 39.0 - 100.0, 0.0], atol=1e-8)


def test_without_ungrouped_the_parameters_stay_at_a():
    tm = ck.translation_map(_metrics, MOUSE, HUMAN, GROUPS, units=UNITS, include_ungrouped=False, batch_size=BATCH)
    assert tm.group_names == ("G1 clearance", "G2 volume")
    expected = _metrics(HUMAN.replace(q=float(MOUSE.q)))
    k = tm.metric_names.index("auc")
    assert tm.value_b[k] == pytest.approx(float(expected["auc"]), rel=1e-10)


def test_samples_reproducible_and_intervals_cover_point():
    kw = dict(units=UNITS, n_samples=16, key=jax.random.key(3), batch_size=BATCH)
    tm1 = ck.translation_map(_metrics, MOUSE, HUMAN, GROUPS, **kw)
    tm2 = ck.translation_map(_metrics, MOUSE, HUMAN, GROUPS, **kw)
    tm3 = ck.translation_map(_metrics, MOUSE, HUMAN, GROUPS, **{**kw, "key": jax.random.key(4)})
    np.testing.assert_array_equal(tm1.sample_shapley, tm2.sample_shapley)  # fixed key: identical
    assert np.max(np.abs(tm1.sample_shapley - tm3.sample_shapley)) > 1e-6  # another key: different
    assert tm1.sample_shapley.shape == (16, 3, 3) and bool(np.all(tm1.sample_ok))
    # the map records its key's data (reproducibility), and samples need a key
    assert tm1.key_data == tuple(int(v) for v in np.asarray(jax.random.key_data(jax.random.key(3))).ravel())
    with pytest.raises(ValueError, match="`key`"):
        ck.translation_map(_metrics, MOUSE, HUMAN, GROUPS, units=UNITS, n_samples=2, batch_size=BATCH)
    np.testing.assert_allclose(tm1.sample_shapley.sum(1), tm1.sample_total, rtol=1e-8)  # efficiency per sample
    lo, hi = tm1.intervals(0.9)
    assert np.all(lo <= hi)
    # with 16 samples the 90% band of the dominant cmax attribution contains the point estimate
    k = tm1.metric_names.index("cmax")
    assert lo[1, k] <= tm1.shapley[1, k] <= hi[1, k]


def test_sample_spreads_are_the_calibration_priors():
    # one table: the translation samples use the calibration priors, assumptions widest, then recalled, then read
    assert ck.DEFAULT_SPREAD is ck.PRIOR_SD
    assert ck.PRIOR_SD["A"] > ck.PRIOR_SD["M"] > ck.PRIOR_SD["R"]
    assert ck.UNVERIFIED_TAGS == ("A", "M")


def test_sample_parameters_spread_by_tag_and_bounds(getkey):
    model = TwoCompartmentPK()  # cl: D, v1: R
    s = ck.sample_parameters(
        model, ["cl", "v1", "v2"], getkey(), 4000, tags={"cl": "M", "v2": "A"}, scales={"v1": 0.05}
    )
    log_ratio_cl = np.log(np.asarray(s["cl"]) / float(model.cl))
    log_ratio_v1 = np.log(np.asarray(s["v1"]) / float(model.v1))
    log_ratio_v2 = np.log(np.asarray(s["v2"]) / float(model.v2))
    # lognormal around the model value: sd PRIOR_SD["M"] = 1.0 for M, 1.5 for A, and a per-parameter scale (e.g. a
    # fitted value's posterior sd) replaces the tag's spread (4000 draws: sampling error of the sd ~1.1%)
    assert np.std(log_ratio_cl) == pytest.approx(ck.PRIOR_SD["M"], rel=0.05)
    assert np.std(log_ratio_v2) == pytest.approx(ck.PRIOR_SD["A"], rel=0.05)
    assert np.std(log_ratio_v1) == pytest.approx(0.05, rel=0.05)
    assert abs(np.median(log_ratio_cl)) < 0.05
    assert np.all(np.asarray(s["cl"]) > 0)
    # a parameter on its bound (0) is held fixed, not sampled
    assert ck.sample_parameters(OneCompartmentPK(cl=0.0), ["cl"], getkey(), 5) == {}
    with pytest.raises(ValueError, match="not one of"):
        ck.sample_parameters(model, ["cl"], getkey(), 5, tags={"cl": "X"})
    with pytest.raises(ValueError, match="scales"):
        ck.sample_parameters(model, ["cl"], getkey(), 5, scales={"nope": 0.1})


def test_unverified_flags_a_and_m_and_narrative():
    # cl: D in both models; v1: M in the mouse; v2 differs too and is A in the human
    tm = ck.translation_map(
        _metrics,
        MOUSE,
        HUMAN,
        GROUPS,
        units=UNITS,
        labels=("mouse", "human"),
        tags_a={"v1": "M"},
        tags_b={"v2": "A"},
        batch_size=BATCH,
    )
    flags = tm.unverified_flags()
    assert tm.group_unverified_parameters == ((), ("v1", "v2"), ())
    assert tm.group_unverified_tags == ("", "A,M", "")
    k = tm.metric_names.index("cmax")
    assert flags[1, k] and not flags[0, k]  # cmax rests on the (M-tagged) mouse V1
    tm_a = ck.translation_map(_metrics, MOUSE, HUMAN, GROUPS, units=UNITS, tags_b={"cl": "A"}, batch_size=BATCH)
    assert tm_a.group_unverified_tags[0] == "A"  # an assumption is flagged like a recalled value
    assert tm_a.unverified_flags()[0, tm_a.metric_names.index("auc")]
    text = tm.narrative()
    assert "cmax: mouse 100 vs human 2.56 mg/L" in text
    assert "G2 volume" in text and "rests on unverified (A,M-tagged) parameters: v1, v2" in text
    assert "*AM" in tm.to_markdown()


def test_censored_metrics_are_marked_as_bounds():
    def f(model):
        out = _metrics(model)
        return {**out, "auc_censored": (model.cl < 10.0).astype(float)}  # say: the mouse AUC ran to the horizon

    tm = ck.translation_map(
        f,
        MOUSE,
        HUMAN,
        GROUPS,
        units=UNITS,
        labels=("mouse", "human"),
        censored={"auc": "auc_censored"},
        batch_size=BATCH,
    )
    assert "auc_censored" not in tm.metric_names  # flags are read, not attributed
    k = tm.metric_names.index("auc")
    assert bool(tm.censored_a[k]) and not bool(tm.censored_b[k])
    assert tm.value_text(k, "a").startswith(">= ") and not tm.value_text(k, "b").startswith(">=")
    assert tm.gap_text(k).startswith("<= ")  # the mouse value is a lower bound, so the gap is an upper bound
    assert f"| auc | mg d/L | >= {tm.value_text(k, 'a')[3:]} |" in tm.to_markdown()
    assert "censored at the horizon" in tm.narrative()
    rows = [r for r in tm.rows() if r["metric"] == "auc"]
    assert rows[0]["mouse_censored"] and not rows[0]["human_censored"]
    with pytest.raises(ValueError, match="censored"):
        ck.translation_map(f, MOUSE, HUMAN, GROUPS, censored={"auc": "nope"}, batch_size=BATCH)


def test_tables(tmp_path):
    tm = ck.translation_map(
        _metrics,
        MOUSE,
        HUMAN,
        GROUPS,
        units=UNITS,
        labels=("mouse", "human"),
        n_samples=4,
        key=jax.random.key(0),
        batch_size=BATCH,
    )
    path = tmp_path / "map.csv"
    tm.to_csv(str(path))
    lines = path.read_text().strip().splitlines()
    assert len(lines) == 1 + 3 * 3  # header + metrics x groups
    assert lines[0].startswith("metric,unit,group,gap,mouse,human,mouse_censored,human_censored,total_gap,shapley")
    md = tm.to_markdown()
    assert md.count("\n| ") == 3 and md.count("\n|---") == 1  # one row per metric, one separator
    assert "| cmax | mg/L | 100 | 2.56 |" in md


def test_figures(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import carkinetics.plot as ckplot

    tm = ck.translation_map(
        _metrics, MOUSE, HUMAN, GROUPS, units=UNITS, n_samples=4, key=jax.random.key(0), batch_size=BATCH
    )
    fig = ckplot.translation_heatmap(tm)
    image = fig.axes[0].images[0].get_array()
    np.testing.assert_allclose(np.asarray(image), tm.share())  # the heatmap shows the shares
    fig.savefig(tmp_path / "heat.png")
    fig2 = ckplot.attribution_waterfall(tm, "auc")
    assert len(fig2.axes[0].patches) == 3 + 2  # groups + the two end bars
    fig3 = ckplot.attribution_waterfalls(tm)
    assert sum(ax.get_visible() for ax in fig3.axes) == 3
    assert (tmp_path / "heat.png").stat().st_size > 1000
    with pytest.raises(ValueError, match="Unknown metric"):
        ckplot.attribution_waterfall(tm, "tmax")


def test_translation_map_no_retrace():
    traces = []

    def f(model):
        traces.append(1)
        return {"ratio": model.v1 / model.cl}

    ck.translation_map(f, MOUSE, HUMAN, GROUPS)
    n = len(traces)
    tm = ck.translation_map(f, MOUSE.replace(cl=7.0), HUMAN.replace(v1=30.0), GROUPS)
    assert len(traces) == n
    assert tm.value_b[0] == pytest.approx(30.0 / 192.0, rel=1e-12)


def test_failed_coalitions_are_reported():
    tm = ck.translation_map(lambda m: {"log_trough": jnp.log(_metrics(m)["cmax"] - 60.0)}, MOUSE, HUMAN, GROUPS)
    # every coalition with the human V1 has cmax = 2.56 mg/L < 60: log of a negative number is NaN
    assert tm.n_failed == 4
    assert "4 of 8 coalition evaluations gave non-finite metrics" in tm.narrative()


class _Bounded(eqx.Module):
    """An onset time that may be negative (shifted lower bound) and a fraction (bounded on both sides)."""

    onset: float = ck.param(70.0, unit="d", lower=-1e4, description="onset", source="test value", tag="A")
    frac: float = ck.param(0.8, unit="1", upper=1.0, description="fraction", source="test value", tag="R")


def test_sample_parameters_transforms(getkey):
    model = _Bounded()
    s = ck.sample_parameters(model, ["onset", "frac"], getkey(), 4000, tags={"frac": "M"})
    t = np.asarray(s["onset"])
    # a shifted lower bound gives a normal spread relative to the value (sd PRIOR_SD["A"] x 70 d), clipped to the
    # bounds, not log(x + 1e4)
    assert np.median(t) == pytest.approx(70.0, abs=5.0) and np.all(t >= -1e4)
    assert np.std(t) == pytest.approx(ck.PRIOR_SD["A"] * 70.0, rel=0.05)
    f = np.asarray(s["frac"])
    logit = np.log(f / (1.0 - f))
    assert np.all((f > 0.0) & (f < 1.0))
    assert np.std(logit) == pytest.approx(ck.PRIOR_SD["M"], rel=0.05)
    assert np.median(logit) == pytest.approx(np.log(4.0), abs=0.07)
