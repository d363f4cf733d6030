"""The SLE virtual population on the calibrated default: the IIV table and the published between-patient figures.

One batched sweep (`ck.sweep_model`, `EnsembleRodas5`) of N virtual patients under the Erlangen regimen and the same
patients with the CD19+BCMA co-infusion product (the Feng 2025 CRS figure). Published proportions k/n are checked
against their exact 95 % binomial (Clopper-Pearson) intervals, the B-cell reappearance mean against the published
mean +/- SD and its SD against the 95 % chi-square interval of an SD from n = 5 patients. The report with 2,000
patients and figures is `calibration/population_report.py` (summary: `calibration/fits/human_sle_report.md`).
"""

import importlib.util
import math
import os
import sys

import jax
import pytest

import carkinetics as ck
from carkinetics.models import sle
from carkinetics.models.sle.population import SLE_IIV, iiv_omega

N = 256  # members per product (one compiled chunk)


def _report_script():
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "calibration", "population_report.py")
    spec = importlib.util.spec_from_file_location("_population_report", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses in the script look their module up in sys.modules
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def vp():
    rep = _report_script()
    model = sle.load_preset("human")
    key = jax.random.key(0)
    out, _ = rep.run_population(model, key, N, bands=False)
    out_f, _ = rep.run_population(model, key, N, product="CD19+BCMA co-infusion", bands=False)
    return rep, rep.population_numbers(out), rep.population_numbers(out_f)


def test_iiv_table_is_complete_and_sourced():
    model = sle.load_preset("human")
    names = ck.parameters(model)
    assert len({r.parameter for r in SLE_IIV}) == len(SLE_IIV)
    for r in SLE_IIV:
        assert r.parameter in names and r.omega > 0 and r.tag in ck.CONFIDENCE_TAGS and len(r.source) > 30, r
    # published between-patient spreads where they exist (Stein 2019 IIV, reference ranges), else tuned (F) to a
    # published between-patient figure, else an assumption
    tags = {r.parameter: r.tag for r in SLE_IIV}
    assert tags["car.alpha"] == tags["car.beta"] == "R" and tags["rejection.r_exp"] == "F"
    assert iiv_omega(rejection__r_exp=0.5)["rejection.r_exp"] == 0.5
    with pytest.raises(ValueError, match="no random effect"):
        iiv_omega(car__nope=1.0)


def test_b_cell_reappearance_mean_and_sd(vp):
    _, s, _ = vp
    print(s)
    assert s["n_failed"] == 0
    assert s["b_returned_fraction"] > 0.95  # B cells come back in SLE (Mackensen 2022: all 5, ~110 d)
    assert 110.0 - 32.0 <= s["b_return_mean"] <= 110.0 + 32.0  # Mackensen 2022: 110 +/- 32 d (n = 5)
    lo, hi = 32.0 * math.sqrt(4 / 11.143), 32.0 * math.sqrt(4 / 0.4844)  # 95 % CI of an SD from 5 patients
    assert lo <= s["b_return_sd"] <= hi, (s["b_return_sd"], lo, hi)
    assert 112.0 - 47.0 <= s["b_aplasia_mean"] <= 112.0 + 47.0  # Mueller 2024: 112 +/- 47 d (n = 15)


def test_crs_grade_distribution(vp):
    rep, s, s_f = vp
    g, gf = s["crs_grade_fractions"], s_f["crs_grade_fractions"]
    checks = {
        "mackensen2022_crs_grade1": g[1],
        "muller2024_crs_grade1": g[1],
        "muller2024_crs_grade2": g[2],
        "feng2025_crs_grade1": gf[1],
    }
    for tid, v in checks.items():
        k, n = rep.PROPORTIONS[tid]
        lo, hi = rep.clopper_pearson(k, n)
        assert lo <= v <= hi, (tid, v, (lo, hi))


def test_no_severe_crs_in_the_sle_population(vp):
    # none of the 35 patients of Mackensen 2022, Mueller 2024 and Feng 2025 had grade >= 3 (Clopper-Pearson upper
    # bound 10 %); pooled SLE series report grade >= 3 as very rare (references/kinetics.md §7): below 2 %
    _, s, _ = vp
    assert sum(s["crs_grade_fractions"][3:]) < 0.02, s["crs_grade_fractions"]


def test_serology_and_remission(vp):
    rep, s, _ = vp
    for tid, v in (
        ("mackensen2022_dsdna_seroconversion", s["dsdna_negative_d91"]),
        ("mackensen2022_doris_3mo", s["doris_d91"]),
    ):
        k, n = rep.PROPORTIONS[tid]
        lo, hi = rep.clopper_pearson(k, n)
        assert lo <= v <= hi, (tid, v, (lo, hi))
    lo, _ = rep.clopper_pearson(8, 8)  # Mueller 2024: all 8 SLE patients in remission to 24 months
    assert s["remission_to_24_months"] >= lo
