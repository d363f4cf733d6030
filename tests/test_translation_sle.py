"""The SLE translation map on the shipped (calibrated) presets: G1 half-life swap, a reduced map with samples, the
horizon-censored metrics, the A/M flags, the sample spreads of fitted values, and the scenario knobs.

Every map and scenario call shares one experiment (`ArmExperiment`, 730-day horizon) and one chunk size, so the
module compiles the SLE batch once.
"""

import logging

import jax
import numpy as np
import pytest

import carkinetics as ck
from carkinetics.models import sle
from carkinetics.models.sle import translation as tr

T_END = 730.0  # the human horizon of the map: two years
BATCH = 8  # every call pads to this chunk size


@pytest.fixture(scope="module")
def experiment():
    return sle.ArmExperiment(T_END)


@pytest.fixture(scope="module")
def arms():
    mouse, tags_m, gaps_m = tr.load_arm("mouse_nzbw")
    human, tags_h, gaps_h = tr.load_arm("human")
    return mouse, human, sle.gap_groups(gaps_m, gaps_h), tags_m, tags_h


@pytest.fixture(scope="module")
def reduced_map(experiment):
    """One reduced map (G1, G4 and the rest ungrouped) with two parameter samples, shared by several tests."""
    return sle.sle_translation_map(
        "mouse_nzbw",
        "human",
        gaps=("G1", "G4"),
        n_samples=2,
        key=jax.random.key(0),
        experiment=experiment,
        batch_size=BATCH,
    )


def _group(groups, gap):
    return next(g for g in groups if g.gap == gap)


def test_arms_are_the_calibrated_presets(arms):
    mouse, human, _, tags_m, tags_h = arms
    fitted = ck.load_fit(sle.fit_path("human_sle.json"))
    for name, value in fitted.items():
        assert float(human.model.get(name)) == value  # the human arm is the calibrated default
        assert tags_h[f"model.{name}"] == "F"
        if name not in sle.preset_records("mouse_nzbw", calibrated=False):
            assert float(mouse.model.get(name)) == value and tags_m[f"model.{name}"] == "F"


def test_igg_clearance_swap_changes_half_life_by_preset_ratio(arms, experiment):
    mouse, human, groups, _, _ = arms
    g1 = _group(groups, "G1")
    assert "model.humoral.k_igg" in g1.parameters
    ratio = float(mouse.model.humoral.k_igg / human.model.humoral.k_igg)
    assert ratio == pytest.approx(3.0, rel=0.05)  # the presets' IgG t1/2: ~7 d vs ~21 d
    sw = ck.one_group_swaps(experiment, mouse, human, [g1], batch_size=BATCH)
    t_mouse = float(sw.base["anti-dsDNA t1/2"])
    t_mouse_g1 = t_mouse + float(sw.forward["anti-dsDNA t1/2"][0])  # mouse with the human IgG-clearance group
    t_human = float(sw.target["anti-dsDNA t1/2"])
    t_human_g1 = t_human - float(sw.reverse["anti-dsDNA t1/2"][0])  # human with the mouse IgG-clearance group
    # swapping only G1 changes the autoantibody half-life by the preset ratio (~3x), in both directions; the rest is
    # the FcRn-saturation term of the same group (clearance depends on the total IgG level)
    assert t_mouse_g1 / t_mouse == pytest.approx(ratio, rel=0.15)
    assert t_human / t_human_g1 == pytest.approx(ratio, rel=0.15)
    assert t_human == pytest.approx(np.log(2.0) / float(human.model.humoral.k_igg), rel=0.15)


def test_reduced_map_reproducible_efficient_and_flagged(reduced_map, experiment):
    tm = reduced_map
    assert tm.group_names == ("G1 IgG clearance", "G4 rejection", "ungrouped")
    assert tm.metric_names == tuple(sle.SLE_METRICS)
    assert not set(tr.SLE_CENSORING.values()) & set(tm.metric_names)  # flags are read, not attributed
    assert np.isfinite(tm.total).all() and tm.n_failed == 0
    rel = np.abs(tm.shapley.sum(0) - tm.total) / np.maximum(np.abs(tm.total), 1e-300)
    assert np.max(rel[np.abs(tm.total) > 1e-9]) <= 1e-8  # Shapley efficiency on the SLE model
    tm2 = sle.sle_translation_map(
        "mouse_nzbw",
        "human",
        gaps=("G1", "G4"),
        n_samples=2,
        key=jax.random.key(0),
        experiment=experiment,
        batch_size=BATCH,
    )
    np.testing.assert_array_equal(tm.shapley, tm2.shapley)  # fixed key and presets: identical map
    np.testing.assert_array_equal(tm.sample_shapley, tm2.sample_shapley)
    # the IgG-clearance group carries the autoantibody half-life gap (mouse ~7 d -> human ~21 d)
    k = tm.metric_names.index("anti-dsDNA t1/2")
    assert tm.shapley[0, k] / tm.total[k] == pytest.approx(1.0, abs=0.15)
    # rejection exists only in the human: it shortens CAR persistence
    k = tm.metric_names.index("CAR persistence")
    assert tm.shapley[1, k] < 0
    # attributions resting on assumptions are flagged as well as those resting on recalled values
    assert "A" in tm.group_unverified_tags[1]  # the anti-CAR response is an assumption in its structure values
    assert tm.unverified_flags()[1, k]
    assert "*A" in tm.to_markdown()


def test_horizon_censored_metrics_are_marked(reduced_map):
    tm = reduced_map
    # the syngeneic all-murine CAR meets no anti-CAR response: CAR-T stay detectable for the whole two years (Kansal
    # 2019: active for 1 year), a lower bound ">= 7xx d"; the human CAR-T are rejected before the horizon
    k = tm.metric_names.index("CAR persistence")
    assert tm.censored_a[k] and not tm.censored_b[k]
    assert tm.value_text(k, "a").startswith(">= ") and tm.gap_text(k).startswith("<= ")
    # B cells of the mouse come back after its 1-year depletion (Kansal 2019's bound), inside the horizon
    k = tm.metric_names.index("B aplasia")
    assert not tm.censored_a[k] and tm.value_a[k] >= 365.0


def test_remission_outlasting_the_horizon_is_marked_censored(reduced_map):
    # the calibrated human stays in remission through month 24 (Mueller 2024): a lower bound, ">= 7xx d"
    tm = reduced_map
    k = tm.metric_names.index("remission days")
    assert tm.censored_b[k] and tm.value_text(k, "b").startswith(">= 7")
    assert ">= 7" in tm.to_markdown() and "censored at the horizon" in tm.narrative()


def test_fitted_values_are_sampled_with_their_posterior_sd():
    scales = tr.fit_scales("human")
    doc = ck.read_fit_provenance(sle.fit_path("human_sle.json"))
    assert set(scales) == {f"model.{n}" for n, e in doc["parameters"].items() if e.get("sd")}
    assert all(0.0 < s < 5.0 for s in scales.values())
    # the other values are spread by their tags, with the calibration priors (assumptions widest)
    assert ck.DEFAULT_SPREAD is ck.PRIOR_SD


def test_knobs_set_the_protocols(arms):
    mouse, human, _, _, _ = arms
    assert float(mouse.protocol.tbi_fraction) == 0.9 and float(mouse.protocol.flu_mg_per_m2) == 0.0
    assert float(mouse.protocol.car_cells_per_kg) == pytest.approx(1e6 / 0.025)
    a, b = tr.apply_knobs(mouse, human, dose_basis="per_kg")
    assert float(a.protocol.car_cells_per_kg) == float(b.protocol.car_cells_per_kg) == 1e6
    a, b = tr.apply_knobs(mouse, human, dose_basis="per_target")
    assert float(a.protocol.per_target_dosing) == float(b.protocol.per_target_dosing) == 1.0
    assert float(a.protocol.car_cells_per_target) == float(b.protocol.car_cells_per_target)
    # per-target dosing gives the human its per-kg dose back: cells = per_target x CD19 pool = 1e6/kg x 70 kg
    cells = float(tr.arm_regimen(b).doses[-1].amount)
    assert cells == pytest.approx(1e6 * float(human.model.body.weight_kg), rel=1e-10)
    a, b = tr.apply_knobs(mouse, human, conditioning="flu_cy")
    assert float(a.protocol.tbi_fraction) == 0.0 and float(a.protocol.cy_mg_per_m2) == 1000.0
    a, b = tr.apply_knobs(mouse, human, ld_alone=True, damage0=0.0)
    assert float(tr.arm_regimen(a).doses[-1].amount) == 0.0 and float(b.model.disease.damage0) == 0.0
    with pytest.raises(ValueError, match="dose_basis"):
        tr.apply_knobs(mouse, human, dose_basis="per_m2")


def test_every_scenario_knob_changes_an_outcome(experiment, caplog):
    rows = sle.sle_scenarios("mouse_nzbw", "human", experiment=experiment, batch_size=BATCH)
    assert len(rows) == len(tr.SCENARIOS) * len(sle.SLE_METRICS)
    gap = {(r["scenario"], r["metric"]): r["gap"] for r in rows}
    base = next(iter(tr.SCENARIOS))
    for scen in list(tr.SCENARIOS)[1:]:
        moved = [
            m for m in sle.SLE_METRICS if abs(gap[(scen, m)] - gap[(base, m)]) > 1e-6 * max(1.0, abs(gap[(base, m)]))
        ]
        assert moved, f"scenario {scen!r} leaves every metric gap at the base row: drop or fix the knob"
    # the disease-stage knobs act through the irreversible damage on the renal outcome
    early = next(s for s in tr.SCENARIOS if s.startswith("early"))
    late = next(s for s in tr.SCENARIOS if s.startswith("late"))
    by = {(r["scenario"], r["metric"]): r for r in rows}
    assert by[(late, "UPCR d180")]["human"] > by[(early, "UPCR d180")]["human"]
    # without CAR-T there are no CAR-T cells: log10 Cmax is the floor log10(1e-12) in both arms
    ld = next(s for s in tr.SCENARIOS if s.startswith("lymphodepletion"))
    assert by[(ld, "CAR Cmax")]["mouse_nzbw"] == pytest.approx(-12.0)
    assert by[(base, "B aplasia")]["human"] > by[(ld, "B aplasia")]["human"] + 30.0
    md = tr.scenarios_markdown(rows)
    assert "<= " in md  # the mouse's censored aplasia makes the gap an upper bound
    with caplog.at_level(logging.WARNING), jax.log_compiles():
        sle.sle_scenarios("mouse_mrl_lpr", "human", scenarios={"presets": {}}, experiment=experiment, batch_size=BATCH)
    assert not [r for r in caplog.records if "_evaluate_batch" in r.getMessage()]  # new values: no recompilation


@pytest.mark.slow
def test_full_shipped_map_reproducible(tmp_path):
    paths = sle.write_translation_report(str(tmp_path / "a"), key=jax.random.key(0), n_samples=0, scenarios=False)
    paths2 = sle.write_translation_report(str(tmp_path / "b"), key=jax.random.key(0), n_samples=0, scenarios=False)
    with open(paths["csv"]) as fa, open(paths2["csv"]) as fb:
        assert fa.read() == fb.read()  # fixed presets and key: the same map, to the digit
