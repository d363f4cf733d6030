"""The SLE translation map on the shipped presets: G1 half-life swap, two-group difference, knobs, report."""

import logging
import pathlib

import jax
import numpy as np
import pytest

import carkinetics as ck
from carkinetics.models.sle import (
    ArmExperiment,
    gap_groups,
    sle_scenarios,
    sle_translation_map,
    translation as sle,
    write_translation_report,
)

T_END = 120.0  # short horizon for the default suite (metrics use day 90)
BATCH = 8  # every call pads to this chunk size, so the whole module compiles the SLE batch once


@pytest.fixture(scope="module")
def metrics_fn():
    return ArmExperiment(T_END)


@pytest.fixture(scope="module")
def arms():
    mouse, _, gaps_m = sle.load_arm("mouse_nzbw")
    human, _, gaps_h = sle.load_arm("human")
    return mouse, human, gap_groups(gaps_m, gaps_h)


def _group(groups, gap):
    return next(g for g in groups if g.gap == gap)


def test_igg_clearance_swap_changes_half_life_by_preset_ratio(arms, metrics_fn):
    mouse, human, groups = arms
    g1 = _group(groups, "G1")
    assert "model.humoral.k_igg" in g1.parameters
    ratio = float(mouse.model.humoral.k_igg / human.model.humoral.k_igg)
    assert ratio == pytest.approx(3.0, rel=0.05)  # the presets' IgG t1/2: ~7 d vs ~21 d
    sw = ck.one_group_swaps(metrics_fn, mouse, human, [g1], batch_size=BATCH)
    t_mouse = float(sw.base["anti-dsDNA t1/2"])
    t_mouse_g1 = t_mouse + float(sw.forward["anti-dsDNA t1/2"][0])  # mouse with the human IgG-clearance group
    t_human = float(sw.target["anti-dsDNA t1/2"])
    t_human_g1 = t_human - float(sw.reverse["anti-dsDNA t1/2"][0])  # human with the mouse IgG-clearance group
    # swapping only G1 changes the autoantibody half-life by the preset ratio (~3x), in both directions; the
    # remaining few % are the FcRn-saturation term of the same group (clearance depends on the total IgG level)
    assert t_mouse_g1 / t_mouse == pytest.approx(ratio, rel=0.1)
    assert t_human / t_human_g1 == pytest.approx(ratio, rel=0.1)
    assert t_human == pytest.approx(np.log(2.0) / float(human.model.humoral.k_igg), rel=0.1)
    # and G1 is the only thing that sets it: the other groups leave the half-life unchanged
    assert t_mouse_g1 == pytest.approx(t_human, rel=0.02) and t_human_g1 == pytest.approx(t_mouse, rel=0.02)


def test_two_group_difference_gets_the_whole_gap(arms, metrics_fn):
    mouse, human, groups = arms
    used = [_group(groups, g) for g in ("G1", "G3", "G5", "G7")]
    # a synthetic "preset" that differs from the mouse only in G1 and G3
    other = ck.swap(mouse, human, [used[0], used[1]])
    assert set(ck.differing_parameters(mouse, other)) == {
        p for p in used[0].parameters + used[1].parameters if p in ck.differing_parameters(mouse, human)}
    tm = ck.translation_map(metrics_fn, mouse, other, used, labels=("mouse", "mouse+G1+G3"), batch_size=BATCH)
    assert tm.group_names == tuple(g.name for g in used)  # nothing ungrouped
    scale = np.maximum(np.abs(tm.value_a), np.abs(tm.value_b)) + 1e-12
    np.testing.assert_allclose(tm.shapley[2:] / scale, 0.0, atol=1e-9)  # G5, G7: zero
    np.testing.assert_allclose(tm.shapley[:2].sum(0), tm.total, rtol=1e-8, atol=1e-9 * scale.max())
    assert abs(tm.total[tm.metric_names.index("anti-dsDNA t1/2")]) > 5.0  # there is a real gap to attribute


def test_reduced_shipped_map_reproducible(metrics_fn):
    kw = dict(gaps=("G1", "G4"), n_samples=2, key=jax.random.key(0), experiment=metrics_fn, batch_size=BATCH)
    tm = sle_translation_map("mouse_nzbw", "human", **kw)
    tm2 = sle_translation_map("mouse_nzbw", "human", **kw)
    assert tm.group_names == ("G1 IgG clearance", "G4 rejection", "ungrouped")
    assert tm.metric_names == tuple(sle.SLE_METRICS)
    np.testing.assert_array_equal(tm.shapley, tm2.shapley)  # fixed key and presets: identical map
    np.testing.assert_array_equal(tm.sample_shapley, tm2.sample_shapley)
    ok = np.isfinite(tm.total)
    assert ok.all() and tm.n_failed == 0
    rel = np.abs(tm.shapley.sum(0) - tm.total) / np.maximum(np.abs(tm.total), 1e-300)
    assert np.max(rel[np.abs(tm.total) > 1e-9]) <= 1e-8  # Shapley efficiency on the SLE model
    # the IgG-clearance group carries the autoantibody half-life gap (mouse ~7 d -> human ~21 d); the rest moves
    # the clearance through the total IgG level (FcRn saturation), a few % of the gap
    k = tm.metric_names.index("anti-dsDNA t1/2")
    assert tm.shapley[0, k] / tm.total[k] == pytest.approx(1.0, abs=0.1)
    # rejection exists only in the human preset: it dominates the CAR persistence gap
    k = tm.metric_names.index("CAR persistence")
    assert np.argmax(np.abs(tm.shapley[:, k])) == 1 and tm.total[k] < 0


def test_knobs_set_the_protocols(arms):
    mouse, human, _ = arms
    assert float(mouse.protocol.tbi_fraction) == 0.9 and float(mouse.protocol.flu_mg_per_m2) == 0.0
    assert float(mouse.protocol.car_cells_per_kg) == pytest.approx(1e6 / 0.025)
    a, b = sle.apply_knobs(mouse, human, dose_basis="per_kg")
    assert float(a.protocol.car_cells_per_kg) == float(b.protocol.car_cells_per_kg) == 1e6
    a, b = sle.apply_knobs(mouse, human, dose_basis="per_target")
    assert float(a.protocol.per_target_dosing) == float(b.protocol.per_target_dosing) == 1.0
    assert float(a.protocol.car_cells_per_target) == float(b.protocol.car_cells_per_target)
    # per-target dosing gives the human its per-kg dose back: cells = per_target x CD19 pool = 1e6/kg x 70 kg
    cells = float(sle.arm_regimen(b).doses[-1].amount)
    assert cells == pytest.approx(1e6 * float(human.model.body.weight_kg), rel=1e-10)
    a, b = sle.apply_knobs(mouse, human, conditioning="flu_cy")
    assert float(a.protocol.tbi_fraction) == 0.0 and float(a.protocol.cy_mg_per_m2) == 1000.0
    a, b = sle.apply_knobs(mouse, human, ld_alone=True, damage0=0.0)
    assert float(sle.arm_regimen(a).doses[-1].amount) == 0.0 and float(b.model.disease.damage0) == 0.0
    with pytest.raises(ValueError, match="dose_basis"):
        sle.apply_knobs(mouse, human, dose_basis="per_m2")


def test_scenarios_and_no_retrace(metrics_fn, caplog):
    scen = {"presets": {}, "lymphodepletion alone": {"ld_alone": True}}
    rows = sle_scenarios("mouse_nzbw", "human", scenarios=scen, experiment=metrics_fn, batch_size=BATCH)
    assert len(rows) == 2 * len(sle.SLE_METRICS)
    get = {(r["scenario"], r["metric"]): r for r in rows}
    # without CAR-T there are no CAR-T cells: log10 Cmax is the floor log10(1e-12) in both arms
    assert get[("lymphodepletion alone", "CAR Cmax")]["mouse_nzbw"] == pytest.approx(-12.0)
    assert get[("lymphodepletion alone", "CAR Cmax")]["gap"] == pytest.approx(0.0, abs=1e-12)
    # with CAR-T the human B-cell aplasia is much longer than with lymphodepletion alone
    assert get[("presets", "B aplasia")]["human"] > get[("lymphodepletion alone", "B aplasia")]["human"] + 30.0
    with caplog.at_level(logging.WARNING), jax.log_compiles():
        rows2 = sle_scenarios("mouse_mrl_lpr", "human", scenarios=scen, experiment=metrics_fn, batch_size=BATCH)
    assert not [r for r in caplog.records if "_evaluate_batch" in r.getMessage()]  # new values: no recompilation
    assert rows2[0]["metric"] == rows[0]["metric"]


@pytest.mark.slow
def test_full_shipped_map_reproducible(tmp_path):
    paths = write_translation_report(str(tmp_path / "a"), key=jax.random.key(0), n_samples=0, scenarios=False)
    paths2 = write_translation_report(str(tmp_path / "b"), key=jax.random.key(0), n_samples=0, scenarios=False)
    text = pathlib.Path(paths["csv"]).read_text()
    assert text == pathlib.Path(paths2["csv"]).read_text()  # fixed presets and seed: the same map, to the digit
    rows = text.strip().splitlines()
    assert len(rows) == 1 + 11 * len(sle.SLE_METRICS)  # 11 gap groups, nothing ungrouped
