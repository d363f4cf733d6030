"""Single-mechanism checks: drug PK, lymphodepletion alone (kill depth, IL-7/IL-15 surge), CRS index thresholds,
parameter documentation of every mechanism module."""

import importlib
import math

import jax.numpy as jnp
import numpy as np
import pytest

import carkinetics as ck
from carkinetics.models.sle import CyclophosphamidePK, SLECarTModel, erlangen_regimen
from carkinetics.models.sle.cytokines import MyeloidParams, crs_grade

MODULES = ("lymphodepletion", "car_t", "bcells", "autoantibodies", "cytokines", "disease", "model", "presets",
           "translation")


def test_cyclophosphamide_half_life_and_mass_balance():
    pk = CyclophosphamidePK()
    ts = jnp.linspace(0.0, 2.0, 49)
    sol = ck.simulate(pk, ck.Bolus(0.0, 1820.0, "cy_central"), ts, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(np.asarray(sol.ys.cy_central + sol.ys.cy_eliminated), 1820.0, rtol=1e-8)
    c = np.asarray(sol.observables.cy_conc)
    k = (math.log(c[0]) - math.log(c[-1])) / 2.0
    assert 24.0 * math.log(2.0) / k == pytest.approx(0.693 * 46.5 / 5.41, rel=1e-3)  # t1/2 ~6.0 h (Ahmed 2020)


@pytest.fixture(scope="module")
def ld_only():
    model = SLECarTModel()
    reg = erlangen_regimen(model, car_t_per_kg=0.0)  # same structure, no cells
    ts = jnp.concatenate([jnp.arange(-6.0, 30.0, 0.25), jnp.arange(30.0, 401.0, 1.0)])
    return model, np.asarray(ts), ck.simulate(model, reg, ts)  # the model class's solver and tolerances


def test_lymphodepletion_depth(ld_only):
    model, ts, sol = ld_only
    t = np.asarray(sol.observables.t_blood) / float(model.tcell.t_blood0)
    b = np.asarray(sol.observables.b_blood) / float(model.bcell.b_blood0)
    assert 0.05 <= t.min() <= 0.2  # ~90 % lymphocyte nadir after Flu/Cy [M]
    assert 0.05 <= b.min() <= 0.2
    alc = np.asarray(sol.observables.lymphocytes)
    assert -3.0 <= ts[np.argmin(alc)] <= 5.0, ts[np.argmin(alc)]  # ALC nadir ~day 0 to +3 (kinetics.md 3.4 [M])
    # without CAR-T, B cells recover (no CAR-T killing): above 50 % of baseline within 400 days
    assert b[-1] > 0.5


def test_homeostatic_cytokine_surge_emerges_from_depletion(ld_only):
    model, ts, sol = ld_only
    il15 = np.asarray(sol.observables.il15) / float(model.tcell.il15_0)
    il7 = np.asarray(sol.observables.il7) / float(model.tcell.il7_0)
    assert 3.0 <= il15.max() <= 1.0 / (1.0 - float(model.tcell.c_il15))  # ~5x (De Bock 2013 [R]); below ceiling
    assert 1.5 <= il7.max() <= 1.0 / (1.0 - float(model.tcell.c_il7))  # ~2-3x [M]
    assert 1.0 <= ts[np.argmax(il15)] <= 3.5, ts[np.argmax(il15)]  # day ~2 (Kochenderfer 2017 [R])
    assert il15[-1] == pytest.approx(1.0, abs=0.1)  # returns to baseline as lymphocytes recover


def test_crs_index_thresholds():
    p = MyeloidParams()
    vals = [float(crs_grade(p, x)) for x in (1.0, 10.0, 40.0, 200.0, 1000.0, 5000.0, 1e5)]
    np.testing.assert_allclose(vals, [0.0, 0.0, 1.0, 2.0, 3.0, 4.0, 4.0], atol=1e-12)
    mid = float(crs_grade(p, math.sqrt(10.0 * 40.0)))  # geometric midpoint of the first segment
    assert mid == pytest.approx(0.5, abs=1e-12)


def test_parameter_table_is_complete():
    table = SLECarTModel().parameter_table()
    groups = {p.name.split(".")[0] for p in table}
    assert groups == {"body", "humoral", "bcell", "tcell", "ld", "car", "myeloid", "disease"}
    for p in table:
        assert p.info.unit and p.info.source.strip() and p.info.description.strip(), p.name
        if "tuned" in p.info.source.lower():
            assert p.info.tag in ("A", "F"), p.name
    md = table.to_markdown()
    assert md.count("\n") == len(table) + 1


@pytest.mark.parametrize("name", MODULES)
def test_module_docstrings(name):
    mod = importlib.import_module(f"carkinetics.models.sle.{name}")
    doc = mod.__doc__ or ""
    assert len(doc) > 400, name
    if name not in ("presets", "model", "translation"):
        assert "| parameter" in doc and "References" in doc, name  # parameter table with sources


def test_model_validation_errors():
    from carkinetics.models.sle import mouse_regimen

    with pytest.raises(ValueError, match="tbi_fraction"):
        mouse_regimen(None, tbi_fraction=1.5)
    with pytest.raises(ValueError, match="tbi_day"):
        mouse_regimen(None, tbi_day=2.0)
    with pytest.raises(ValueError, match="weight_kg"):
        erlangen_regimen(weight_kg=-70.0)
    with pytest.raises(ValueError, match="outside its declared bounds"):
        SLECarTModel().replace({"bcell.f_blood": 1.5})
