"""Species presets: loading, equality with the class defaults, same structure across species, validation errors."""

import math
import re

import equinox as eqx
import jax
import numpy as np
import pytest

import carkinetics as ck
from carkinetics.models.sle import SLECarTModel, dump_preset, load_preset, preset_names, preset_parameter_table, preset_records

GROUPS = ("body", "humoral", "bcell", "tcell", "ld", "car", "myeloid", "disease")


def test_preset_names():
    assert preset_names() == ("human", "mouse_nzbw", "mouse_mrl_lpr")


def test_human_preset_equals_class_defaults():
    model = load_preset("human")
    default = SLECarTModel()
    for name, p in ck.parameters(default).items():
        assert float(model.get(name)) == pytest.approx(float(p.value), rel=1e-12), name
    # the TOML provenance matches the class metadata for the human preset
    rec = preset_records("human")
    for name, p in ck.parameters(default).items():
        assert (rec[name].unit, rec[name].tag, rec[name].source) == (p.info.unit, p.info.tag, p.info.source), name


@pytest.mark.parametrize("name", ["human", "mouse_nzbw", "mouse_mrl_lpr"])
def test_every_entry_has_provenance_and_gap(name):
    rec = preset_records(name)
    assert len(rec) == len(ck.parameters(SLECarTModel()))
    assert {k.split(".")[0] for k in rec} == set(GROUPS)
    for k, r in rec.items():
        assert r.unit and r.source.strip() and r.tag in ck.CONFIDENCE_TAGS, k
        assert r.gap is not None and re.fullmatch(r"G([1-9]|1[0-2])", r.gap), k
        assert math.isfinite(r.value)
    # no tuned value is presented as read in a paper: every 'tuned' source carries tag A or F
    for k, r in rec.items():
        if "tuned" in r.source.lower():
            assert r.tag in ("A", "F"), (k, r.tag)


def test_mouse_presets_differ_only_in_values():
    human = load_preset("human")
    for name in ("mouse_nzbw", "mouse_mrl_lpr"):
        mouse = load_preset(name)
        assert type(mouse) is type(human)
        s_h = jax.tree_util.tree_structure(eqx.filter(human, eqx.is_array_like))
        s_m = jax.tree_util.tree_structure(eqx.filter(mouse, eqx.is_array_like))
        assert s_h == s_m
        # groups can be swapped between species
        swapped = eqx.tree_at(lambda m: m.humoral, human, mouse.humoral)
        assert float(swapped.humoral.k_igg) == pytest.approx(float(mouse.humoral.k_igg), rel=1e-12)
        assert float(swapped.car.rho) == pytest.approx(float(human.car.rho), rel=1e-12)


def test_mouse_values_from_translation_notes():
    nzbw = load_preset("mouse_nzbw")
    mrl = load_preset("mouse_mrl_lpr")
    assert float(nzbw.body.weight_kg) == pytest.approx(0.025)
    assert float(nzbw.humoral.k_igg) == pytest.approx(math.log(2) / 7.0, rel=1e-9)  # IgG t1/2 ~7 d
    assert float(nzbw.car.k_rej) == 0.0  # syngeneic: no rejection (G4)
    assert float(mrl.bcell.b_blood0) > float(nzbw.bcell.b_blood0)  # lymphoproliferation (G6)
    assert preset_records("mouse_nzbw")["humoral.k_igg"].gap == "G1"


def _write(tmp_path, text):
    p = tmp_path / "p.toml"
    p.write_text(text, encoding="utf-8")
    return p


@pytest.fixture
def human_text():
    from importlib.resources import files

    return files("carkinetics.models.sle").joinpath("presets", "human.toml").read_text(encoding="utf-8")


def test_load_from_path(tmp_path, human_text):
    model = load_preset(_write(tmp_path, human_text))
    assert float(model.humoral.k_igg) == pytest.approx(float(SLECarTModel().humoral.k_igg))


@pytest.mark.parametrize(
    "edit, match",
    [
        (lambda t: t + '\n[car.not_a_param]\nvalue = 1.0\nunit = "1"\ntag = "A"\nsource = "x"\n', "unknown parameter"),
        (lambda t: t + '\n[spleen.size]\nvalue = 1.0\nunit = "1"\ntag = "A"\nsource = "x"\n', "unknown parameter group"),
        (lambda t: _drop_table(t, "humoral.k_igg"), "missing parameter"),
        (lambda t: t.replace('[humoral.k_igg]\nvalue', '[humoral.k_igg]\nextra = 1\nvalue', 1), "unknown key"),
        (lambda t: _drop_line(t, "humoral.k_igg", "unit"), "has no 'unit'"),
        (lambda t: _drop_line(t, "humoral.k_igg", "source"), "has no 'source'"),
        (lambda t: _drop_line(t, "humoral.k_igg", "tag"), "has no 'tag'"),
        (lambda t: _set_line(t, "humoral.k_igg", "tag", '"Z"'), "confidence tag"),
        (lambda t: _set_line(t, "humoral.k_igg", "value", "-1.0"), "outside the declared bounds"),
        (lambda t: _set_line(t, "humoral.k_igg", "unit", '"1/h"'), "declares '1/d'"),
        (lambda t: _set_line(t, "humoral.k_igg", "gap", '"G99"'), "gap"),
        (lambda t: _set_line(t, "humoral.k_igg", "value", '"fast"'), "finite numeric value"),
        (lambda t: t + "\n[broken", "not valid TOML"),
    ],
)
def test_validation_errors(tmp_path, human_text, edit, match):
    with pytest.raises(ValueError, match=match):
        load_preset(_write(tmp_path, edit(human_text)))


def test_unknown_preset_name():
    with pytest.raises(ValueError, match="Unknown preset 'rat'"):
        load_preset("rat")
    with pytest.raises(ValueError, match="does not exist"):
        load_preset("/nonexistent/preset.toml")


def test_dump_roundtrip(tmp_path):
    model = load_preset("mouse_nzbw").replace({"car.rho": 0.9})
    rec = preset_records("mouse_nzbw")
    path = tmp_path / "fit.toml"
    dump_preset(model, path, name="fit", description="roundtrip", records=rec)
    back = load_preset(path)
    for name, p in ck.parameters(model).items():
        assert float(back.get(name)) == pytest.approx(float(p.value), rel=1e-15), name
    assert preset_records(path)["humoral.k_igg"].gap == "G1"
    np.testing.assert_equal(preset_records(path)["car.rho"].value, 0.9)


# ---- helpers editing one parameter table of the TOML text -------------------------------------------------------


def _table_span(text, name):
    start = text.index(f"[{name}]\n")
    end = text.find("\n[", start + 1)
    return start, (len(text) if end < 0 else end + 1)


def _drop_table(text, name):
    s, e = _table_span(text, name)
    return text[:s] + text[e:]


def _drop_line(text, name, key):
    s, e = _table_span(text, name)
    block = "\n".join(line for line in text[s:e].split("\n") if not line.startswith(f"{key} ="))
    return text[:s] + block + text[e:]


def _set_line(text, name, key, value):
    s, e = _table_span(text, name)
    lines = [line for line in text[s:e].split("\n") if not line.startswith(f"{key} =")]
    lines.insert(1, f"{key} = {value}")
    return text[:s] + "\n".join(lines) + text[e:]


def test_preset_parameter_table_carries_preset_provenance():
    table = preset_parameter_table("mouse_nzbw")
    rows = {p.name: p for p in table}
    assert len(rows) == len(ck.parameters(SLECarTModel()))
    assert rows["humoral.k_igg"].info.source.startswith("mouse IgG t1/2")
    assert rows["car.k_rej"].value == 0.0 and rows["car.k_rej"].info.tag == "A"
    assert "[G4]" in rows["car.k_rej"].info.description
    md = table.to_markdown()
    assert "| humoral.k_igg | 0.099021 | 1/d |" in md
