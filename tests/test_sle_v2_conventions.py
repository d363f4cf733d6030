"""SLE model v2 conventions: no calendar parameter, one fact in one place (generated docstring tables, presets that
hold only differing values), provenance of every parameter, an untreated steady state, the structure the batched
engine reads from the jaxpr."""

import collections
import dataclasses
import importlib
import math
import tomllib
from importlib.resources import files

import jax
import jax.numpy as jnp
import pytest

import carkinetics as ck
from carkinetics.models import sle
from carkinetics.models.sle import _doc

GROUPS = ("body", "product", "car", "rejection", "bcell", "humoral", "tcell", "ld", "myeloid", "disease")
MODULES = (
    "car_t",
    "rejection",
    "bcells",
    "autoantibodies",
    "cytokines",
    "disease",
    "lymphodepletion",
    "products",
    "model",
    "regimens",
)


def test_parameter_groups():
    table = sle.SLECarTModel().parameter_table()
    assert {p.name.split(".")[0] for p in table} == set(GROUPS)


def test_every_unit_day_parameter_is_a_duration_or_half_life():
    # The convention (models/sle/_doc.py): unit "d" means a duration (prefix tau_) or a half-life (prefix t_half_),
    # and the description says so. No parameter may be a calendar time at which an endpoint happens.
    offenders = []
    days = []
    for p in sle.SLECarTModel().parameter_table():
        if p.info.unit != "d":
            continue
        leaf = p.name.split(".")[-1]
        days.append(p.name)
        ok_name = leaf.startswith(_doc.DURATION_PREFIXES)
        ok_desc = any(w in p.info.description.lower() for w in _doc.DURATION_WORDS)
        if not (ok_name and ok_desc):
            offenders.append(p.name)
    assert not offenders, offenders
    assert "car.tau_lag" in days and "myeloid.t_half_dex" in days
    # the removed calendar switch stays removed
    names = {p.name.split(".")[-1] for p in sle.SLECarTModel().parameter_table()}
    assert not names & {"t_rej", "w_rej", "k_rej", "t_onset", "t_switch"}


def test_unit_day_convention_also_covers_presets_and_protocol():
    from carkinetics.models.sle.translation import SLEProtocol

    assert all(p.info.unit != "d" for p in ck.parameter_table(SLEProtocol()))


@pytest.mark.parametrize("group", GROUPS)
def test_docstring_parameter_tables_are_generated_from_the_fields(group):
    cls = type(getattr(sle.SLECarTModel(), group))
    doc = cls.__doc__ or ""
    assert "(generated from the fields)" in doc
    rows = _doc.param_rows(cls)
    assert len(rows) == len([f for f in dataclasses.fields(cls) if "carkinetics_param" in f.metadata])
    for name, default, unit, tag, *_ in rows:
        assert f"| {name} | {default} | {unit} | {tag} |" in doc, (group, name)


@pytest.mark.parametrize("name", MODULES)
def test_module_docstrings_state_equations_and_references_not_values(name):
    mod = importlib.import_module(f"carkinetics.models.sle.{name}")
    doc = mod.__doc__ or ""
    assert len(doc) > 300, name
    # parameter values live in the generated tables only (no hand-written "| parameter | default |" table)
    assert "| parameter | default" not in doc, name


def test_every_parameter_has_provenance():
    for p in sle.SLECarTModel().parameter_table():
        assert p.info.unit and p.info.source.strip() and p.info.description.strip(), p.name
        assert p.info.tag in ck.CONFIDENCE_TAGS, p.name
        src = p.info.source.lower()
        # cite publications, never notes outside the repository
        assert "kinetics.md" not in src and "translation.md" not in src, p.name
        if "tuned" in src or "hand-set" in src:
            assert p.info.tag in ("A", "F"), p.name
        if p.info.tag in ("A", "F"):
            continue
        # a non-assumption cites something: a year, a DOI or an explicit derivation/recall marker
        assert any(ch.isdigit() for ch in src) or "[m]" in src or "by definition" in src, p.name


def test_tag_counts_are_reported():
    counts = collections.Counter(p.info.tag for p in sle.SLECarTModel().parameter_table())
    # the class defaults are the hand-set priors of the calibration: assumptions dominate; the fitted values of the
    # typical patient live in the fit file that the presets apply (tag F there). A class default tagged F is a
    # population-level calibration (the virtual population against between-patient data), named in its source.
    table = sle.SLECarTModel().parameter_table()
    assert [p.name for p in table if p.info.tag == "F"] == ["myeloid.k_damp"]
    assert all("population_report.py --tune" in p.info.source for p in table if p.info.tag == "F")
    assert counts["A"] > counts["R"] > 0
    assert set(counts) <= set(ck.CONFIDENCE_TAGS)
    fitted = collections.Counter(p.info.tag for p in sle.preset_parameter_table("human"))
    assert fitted["F"] == len(ck.load_fit(sle.fit_path("human_sle.json"))) + counts["F"] > counts["F"]
    assert fitted["A"] == counts["A"] - sum(
        1 for n in ck.load_fit(sle.fit_path("human_sle.json")) if ck.parameters(sle.SLECarTModel())[n].info.tag == "A"
    )


@pytest.mark.parametrize("name", sle.preset_names())
def test_presets_hold_only_values_that_differ_from_the_class_defaults(name):
    default = ck.parameters(sle.SLECarTModel())
    records = sle.preset_records(name)
    for pname, rec in records.items():
        assert not math.isclose(rec.value, float(default[pname].value), rel_tol=1e-12), (name, pname)
        assert rec.source.strip() and rec.tag in ck.CONFIDENCE_TAGS
        assert "kinetics.md" not in rec.source and "translation.md" not in rec.source, (name, pname)
    if name == "human":  # the class defaults plus the fitted values: the preset lists nothing of its own
        assert sle.preset_records(name, calibrated=False) == {}
        assert set(records) == set(ck.load_fit(sle.fit_path("human_sle.json")))
        assert all(r.tag == "F" for r in records.values())


def test_untreated_human_and_mouse_are_steady_states():
    for model in (sle.SLECarTModel(), sle.load_preset("mouse_nzbw"), sle.load_preset("human_oncology")):
        y0 = model.initial_state()
        dy = model(0.0, y0, None)
        for name, d, v in zip(model.state_names(), dy, y0):
            if name in ("damage", "cum_hazard"):  # untreated disease accrues damage and mortality hazard
                assert float(d) >= 0.0
                continue
            if name == "tumour" and float(v) > 0.0:  # a leukaemia grows
                assert float(d) > 0.0
                continue
            assert abs(float(d)) <= 1e-12 * max(abs(float(v)), 1.0), (name, float(d), float(v))
    obs = sle.SLECarTModel().observe(0.0, sle.SLECarTModel().initial_state())
    assert float(obs.b_blood) == pytest.approx(250.0, rel=1e-12)
    assert float(obs.t_blood) == pytest.approx(1000.0, rel=1e-12)
    assert float(obs.anti_dsdna) == pytest.approx(100.0, rel=1e-12)
    assert float(obs.crs_grade) == 0.0 and float(obs.survival) == 1.0


def test_vector_field_has_no_data_dependent_control_flow_and_a_sparse_jacobian():
    # the batched engine reads the structural Jacobian pattern from the jaxpr; the composed model must trace
    # under vmap (no Python branching on state values) and stay sparse enough for the block-LU solver
    from carkinetics._ensemble._sparsity import block_triangular, jacobian_pattern

    model = sle.SLECarTModel()
    s = len(model.state_names())
    y = jnp.tile(model.initial_state_flat()[:, None], (1, 3))
    f = jax.vmap(lambda t, yy: model.vector_field_flat(t, yy, None), in_axes=(0, 1), out_axes=1)
    pattern = jacobian_pattern(f, jnp.zeros(3), y)
    assert pattern.shape == (s, s)
    assert pattern.sum() < 0.35 * s * s
    order, blocks = block_triangular(pattern)
    assert sorted(order.tolist()) == list(range(s))
    assert max(e - a for a, e in blocks) < s  # not one dense block


def test_preset_toml_files_are_readable_data():
    for name in sle.preset_names():
        text = files("carkinetics.models.sle").joinpath("presets", f"{name}.toml").read_text(encoding="utf-8")
        data = tomllib.loads(text)
        assert data["meta"]["name"] == name
        assert data["meta"]["description"].strip()
