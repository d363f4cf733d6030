"""Products, regimens and presets of the SLE model v2 (no simulation): the product registry and `with_product`, the
conditioning builders, the CRS and dipstick read-outs, and partial presets with validation."""

import math

import jax.numpy as jnp
import numpy as np
import pytest

import carkinetics as ck
from carkinetics.models import sle
from carkinetics.models.sle.cytokines import MyeloidParams, crs_grade
from carkinetics.models.sle.disease import DiseaseParams, dipstick_score

# ---- products -----------------------------------------------------------------------------------------------------


def test_registry_covers_the_products_of_the_field():
    p = sle.PRODUCTS
    erlangen = p["MB-CART19.1"]
    assert (erlangen.targets, erlangen.costim, erlangen.scfv, erlangen.origin) == (
        ("CD19",),
        "4-1BB",
        "murine",
        "autologous",
    )
    assert any(x.targets == ("CD19",) and x.scfv == "human" for x in p.values())
    assert any(x.targets == ("CD19",) and x.costim == "CD28" for x in p.values())
    assert any(x.origin == "allogeneic" for x in p.values())
    assert any(x.origin == "hypoimmune" for x in p.values())
    assert any(set(x.targets) == {"CD19", "BCMA"} for x in p.values())
    for x in p.values():
        assert x.source.strip() and ("doi:" in x.source or "abstract" in x.source), x.name


def test_class_defaults_are_the_erlangen_product():
    model = sle.SLECarTModel()
    assert sle.with_product(model, "MB-CART19.1").product == model.product


@pytest.mark.parametrize(
    "name, expected",
    [
        ("axi-cel", dict(cd19=1.0, bcma=0.0, cd28=1.0, scfv_foreign=1.0, hla_mismatch=0.0, hla_evasion=0.0)),
        ("rese-cel", dict(cd19=1.0, bcma=0.0, cd28=0.0, scfv_foreign=0.0, hla_mismatch=0.0, hla_evasion=0.0)),
        ("UCART19", dict(cd19=1.0, bcma=0.0, cd28=0.0, scfv_foreign=1.0, hla_mismatch=1.0, hla_evasion=0.0)),
        ("HIP-CD19", dict(cd19=1.0, bcma=0.0, cd28=0.0, scfv_foreign=1.0, hla_mismatch=1.0, hla_evasion=1.0)),
        ("BCMA-CD19 cCAR", dict(cd19=1.0, bcma=1.0, cd28=0.0, scfv_foreign=1.0, hla_mismatch=0.0, hla_evasion=0.0)),
    ],
)
def test_with_product_sets_the_product_facts(name, expected):
    model = sle.with_product(sle.SLECarTModel(), name)
    assert {k: float(getattr(model.product, k)) for k in expected} == expected


def test_binder_foreignness_depends_on_the_host():
    mouse = sle.load_preset("mouse_nzbw")
    assert sle.host_of(mouse) == "mouse" and sle.host_of(sle.SLECarTModel()) == "human"
    # a murine scFv is self in a mouse and foreign in a human; a human scFv the reverse
    assert float(sle.with_product(mouse, "mCD19-CD28z (Kansal 2019)").product.scfv_foreign) == 0.0
    assert float(sle.with_product(mouse, "rese-cel").product.scfv_foreign) == 1.0
    assert float(sle.with_product(sle.SLECarTModel(), "rese-cel", host="mouse").product.scfv_foreign) == 1.0


def test_product_validation_and_dose_convention():
    with pytest.raises(ValueError, match="Unknown product"):
        sle.with_product(sle.SLECarTModel(), "no-such-car")
    with pytest.raises(ValueError, match="costim"):
        sle.Product("x", ("CD19",), "CD3", "murine", "autologous", "per_kg", 1e6, "a source")
    with pytest.raises(ValueError, match="targets"):
        sle.Product("x", ("CD20",), "CD28", "murine", "autologous", "per_kg", 1e6, "a source")
    assert sle.PRODUCTS["tisa-cel"].cells(40.0) == pytest.approx(3.1e6 * 40.0)
    assert sle.PRODUCTS["UCART19"].cells(70.0) == pytest.approx(8e7)  # flat dose


# ---- regimens -----------------------------------------------------------------------------------------------------


def _amounts(regimen, state):
    out = []
    for d in regimen.doses:
        if getattr(d, "state", None) == state:
            out.append(float(d.amount))
    return out


def test_flu_cy_builder_in_mg_per_m2_on_chosen_days():
    model = sle.SLECarTModel()
    area = ck.bsa_mosteller(70.0, 170.0)
    reg = sle.flu_cy_regimen(
        model,
        flu_mg_per_m2=30.0,
        flu_days=(-6, -5, -4, -3),
        cy_mg_per_m2=[500.0, 250.0],
        cy_days=(-6, -5),
        product="tisa-cel",
    )
    np.testing.assert_allclose(_amounts(reg, "flu_central"), [30.0 * area] * 4, rtol=1e-12)
    np.testing.assert_allclose(_amounts(reg, "cy_central"), [500.0 * area, 250.0 * area], rtol=1e-12)
    np.testing.assert_allclose(_amounts(reg, sle.CAR_DOSE_STATE), [3.1e6 * 70.0], rtol=1e-12)
    erl = sle.erlangen_regimen(model)
    np.testing.assert_allclose(_amounts(erl, "flu_central"), [25.0 * area] * 3, rtol=1e-12)
    np.testing.assert_allclose(_amounts(erl, "cy_central"), [1000.0 * area], rtol=1e-12)
    np.testing.assert_allclose(_amounts(erl, sle.CAR_DOSE_STATE), [7e7], rtol=1e-12)
    none = sle.no_conditioning_regimen(model, cells_per_kg=1e6)
    assert len(none) == 1 and _amounts(none, sle.CAR_DOSE_STATE) == [7e7]
    with pytest.raises(ValueError, match="lists 2 doses for 3 days"):
        sle.flu_cy_regimen(model, flu_mg_per_m2=[25.0, 25.0])


def test_mouse_and_intervention_regimens():
    reg = sle.mouse_regimen(sle.load_preset("mouse_nzbw"), cells=1e6, tbi_fraction=0.0)
    assert len(reg) == 2  # the irradiation stays in the regimen at fraction 0: one structure for any intensity
    with pytest.raises(ValueError, match="tbi_fraction"):
        sle.mouse_regimen(None, tbi_fraction=1.5)
    with pytest.raises(ValueError, match="tbi_day"):
        sle.mouse_regimen(None, tbi_day=2.0)
    assert float(sle.tocilizumab(4.0, weight_kg=70.0).amount) == pytest.approx(560.0)
    assert _amounts(sle.dexamethasone([3.0, 4.0], mg=10.0), "dex") == [10.0, 10.0]
    with pytest.raises(ValueError, match="weight_kg"):
        sle.erlangen_regimen(weight_kg=-70.0)


# ---- read-outs ----------------------------------------------------------------------------------------------------


def test_crs_index_follows_astct_thresholds():
    p = MyeloidParams()
    assert float(crs_grade(p, 37.0, 0.0)) == 0.0
    assert float(crs_grade(p, 38.5, 0.0)) == 1.0  # fever only: grade 1
    assert float(crs_grade(p, 38.5, p.endo_g2)) == 2.0
    assert float(crs_grade(p, 38.5, p.endo_g3)) == 3.0
    assert float(crs_grade(p, 38.5, 1.0)) == 4.0
    assert float(crs_grade(p, 37.75, 0.0)) == pytest.approx(0.5)


def test_dipstick_score_cut_points():
    d = DiseaseParams()
    creat = float(d.creat_urine)
    for mg_dl, score in [(5.0, 0.0), (30.0, 1.0), (100.0, 2.0), (300.0, 3.0), (2000.0, 4.0), (1e5, 4.0)]:
        assert float(dipstick_score(d, mg_dl / creat)) == pytest.approx(score, abs=1e-12)


# ---- presets ------------------------------------------------------------------------------------------------------


def test_preset_names_and_structure():
    assert sle.preset_names() == ("human", "human_oncology", "mouse_nzbw", "mouse_mrl_lpr")
    import equinox as eqx
    import jax

    human = sle.load_preset("human")
    for name in sle.preset_names():
        other = sle.load_preset(name)
        assert jax.tree_util.tree_structure(eqx.filter(other, eqx.is_array_like)) == jax.tree_util.tree_structure(
            eqx.filter(human, eqx.is_array_like)
        )
    # without its fit, the human preset is the class defaults (the fitted values: tests/test_calibration_fits.py)
    uncalibrated = sle.load_preset("human", calibrated=False)
    for name, p in ck.parameters(sle.SLECarTModel()).items():
        assert float(uncalibrated.get(name)) == float(p.value), name


def test_preset_records_complete_and_table():
    rec = sle.preset_records("mouse_nzbw", complete=True)
    assert len(rec) == len(ck.parameters(sle.SLECarTModel()))
    assert rec["humoral.k_igg"].gap == "G1" and rec["humoral.k_igg"].value == pytest.approx(math.log(2) / 7.0)
    beta = ck.parameters(sle.SLECarTModel())["car.beta"]
    assert (rec["car.beta"].source, rec["car.beta"].gap) == (beta.info.source, None)  # class provenance
    assert rec["car.alpha"].tag == "F" and rec["car.alpha"].gap == "G3"  # the preset's own (fitted) value
    table = {p.name: p for p in sle.preset_parameter_table("mouse_nzbw")}
    assert "[G1]" in table["humoral.k_igg"].info.description
    assert sle.preset_meta("mouse_nzbw")["product"] == "mCD19-CD28z (Kansal 2019)"


def _write(tmp_path, text):
    p = tmp_path / "p.toml"
    p.write_text(text, encoding="utf-8")
    return p


ENTRY = '[humoral.k_igg]\nvalue = 0.1\nunit = "1/d"\ntag = "A"\nsource = "x"\n'


@pytest.mark.parametrize(
    "text, match",
    [
        ('[car.not_a_param]\nvalue = 1.0\nunit = "1"\ntag = "A"\nsource = "x"\n', "unknown parameter"),
        ('[spleen.size]\nvalue = 1.0\nunit = "1"\ntag = "A"\nsource = "x"\n', "unknown parameter group"),
        (ENTRY.replace('unit = "1/d"\n', ""), "has no 'unit'"),
        (ENTRY.replace('source = "x"\n', ""), "has no 'source'"),
        (ENTRY.replace('tag = "A"', 'tag = "Z"'), "confidence tag"),
        (ENTRY.replace("value = 0.1", "value = -1.0"), "outside the declared bounds"),
        (ENTRY.replace('"1/d"', '"1/h"'), "declares '1/d'"),
        (ENTRY + 'gap = "G99"\n', "gap"),
        (ENTRY + "extra = 1\n", "unknown key"),
        (ENTRY.replace("value = 0.1", 'value = "fast"'), "finite numeric value"),
        ("[broken", "not valid TOML"),
    ],
)
def test_preset_validation_errors(tmp_path, text, match):
    with pytest.raises(ValueError, match=match):
        sle.load_preset(_write(tmp_path, text))


def test_partial_preset_from_path_and_dump_roundtrip(tmp_path):
    model = sle.load_preset(_write(tmp_path, ENTRY))
    assert float(model.humoral.k_igg) == 0.1 and float(model.car.rho) == float(sle.SLECarTModel().car.rho)
    fitted = sle.load_preset("mouse_nzbw").replace({"car.rho": 0.45})
    path = tmp_path / "fit.toml"
    sle.dump_preset(fitted, path, name="fit", description="roundtrip", records=sle.preset_records("mouse_nzbw"))
    back = sle.load_preset(path)
    for name, p in ck.parameters(fitted).items():
        assert float(back.get(name)) == pytest.approx(float(p.value), rel=1e-15), name
    assert set(sle.preset_records(path)) == set(sle.preset_records("mouse_nzbw"))  # only differing values written
    assert sle.preset_records(path)["humoral.k_igg"].gap == "G1"


def test_unknown_preset_name():
    with pytest.raises(ValueError, match="Unknown preset 'rat'"):
        sle.load_preset("rat")


def test_hill_power_is_exact_for_positive_drive_and_has_finite_higher_derivatives_at_zero():
    import jax

    from carkinetics.models.sle._math import power as _power

    x = jnp.array([1e-9, 0.3, 2.0, 5e3])
    for n in (1.0, 2.0, 1.5):
        np.testing.assert_allclose(_power(x, n), x**n, rtol=1e-14)
        assert float(_power(0.0, n)) == 0.0
        # the stiff solvers differentiate the right-hand side's Jacobian: the second derivative at 0 must be finite
        # (plain 0.0**(n - 2) * n * (n - 1) is NaN at n = 1)
        d2 = jax.grad(jax.grad(lambda v, n=n: _power(v, n)))(0.0)
        assert np.isfinite(float(d2)), n
    # away from zero the first derivative is the analytic n x^(n-1)
    np.testing.assert_allclose(jax.grad(lambda v: _power(v, 1.0))(0.7), 1.0, rtol=1e-14)
