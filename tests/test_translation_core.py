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
    return {"cmax": ck.metrics.cmax(ts, c), "auc": ck.metrics.auc(ts, c),
            "log10_trough": jnp.log10(jnp.maximum(c[-1], 1e-12))}


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


def test_sample_parameters_spread_by_tag_and_bounds(getkey):
    model = TwoCompartmentPK()  # cl: D, v1: R
    s = ck.sample_parameters(model, ["cl", "v1"], getkey(), 4000, tags={"cl": "M"})
    log_ratio_cl = np.log(np.asarray(s["cl"]) / float(model.cl))
    log_ratio_v1 = np.log(np.asarray(s["v1"]) / float(model.v1))
    # lognormal around the model value: sd 0.5 for M, 0.1 for R (4000 draws: sampling error of the sd ~1.1%)
    assert np.std(log_ratio_cl) == pytest.approx(0.5, rel=0.05)
    assert np.std(log_ratio_v1) == pytest.approx(0.1, rel=0.05)
    assert abs(np.median(log_ratio_cl)) < 0.05
    assert np.all(np.asarray(s["cl"]) > 0)
    # a parameter on its bound (0) is held fixed, not sampled
    assert ck.sample_parameters(OneCompartmentPK(cl=0.0), ["cl"], getkey(), 5) == {}
    with pytest.raises(ValueError, match="not one of"):
        ck.sample_parameters(model, ["cl"], getkey(), 5, tags={"cl": "X"})


def test_m_flags_and_narrative():
    tm = ck.translation_map(_metrics, MOUSE, HUMAN, GROUPS, units=UNITS, labels=("mouse", "human"),
                            tags_a={"v1": "M"}, batch_size=BATCH)
    flags = tm.m_flags()
    assert tm.group_m_parameters == ((), ("v1",), ())
    k = tm.metric_names.index("cmax")
    assert flags[1, k] and not flags[0, k]  # cmax rests on the (M-tagged) mouse V1
    text = tm.narrative()
    assert "cmax: mouse 100 vs human 2.56 mg/L" in text
    assert "G2 volume" in text and "rests on unverified M parameters: v1" in text


def test_tables(tmp_path):
    tm = ck.translation_map(_metrics, MOUSE, HUMAN, GROUPS, units=UNITS, labels=("mouse", "human"), n_samples=4,
                            key=jax.random.key(0), batch_size=BATCH)
    path = tmp_path / "map.csv"
    tm.to_csv(str(path))
    lines = path.read_text().strip().splitlines()
    assert len(lines) == 1 + 3 * 3  # header + metrics x groups
    assert lines[0].startswith("metric,unit,group,gap,mouse,human,total_gap,shapley,share")
    md = tm.to_markdown()
    assert md.count("\n| ") == 3 and md.count("\n|---") == 1  # one row per metric, one separator
    assert "| cmax | mg/L | 100 | 2.56 |" in md


def test_figures(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import carkinetics.plot as ckplot

    tm = ck.translation_map(_metrics, MOUSE, HUMAN, GROUPS, units=UNITS, n_samples=4, key=jax.random.key(0),
                            batch_size=BATCH)
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
    # a shifted lower bound gives a normal spread relative to the value (sd 0.3 x 70 d), not log(x + 1e4)
    assert np.std(t) == pytest.approx(0.3 * 70.0, rel=0.05) and np.median(t) == pytest.approx(70.0, abs=1.5)
    f = np.asarray(s["frac"])
    logit = np.log(f / (1.0 - f))
    assert np.all((f > 0.0) & (f < 1.0))
    assert np.std(logit) == pytest.approx(0.5, rel=0.05) and np.median(logit) == pytest.approx(np.log(4.0), abs=0.05)
