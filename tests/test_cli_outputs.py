"""What the command line and the library write and print: tidy CSV names, atomic files, readable results, the
version, and install hints for optional features."""

import csv
import os
import re

import jax.numpy as jnp
import numpy as np
import pytest

import carkinetics as ck
import carkinetics.io as cio
from carkinetics import cli
from carkinetics.models import OneCompartmentPK
from carkinetics.models.sle import demo


def _rows(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_tidy_csv_names_one_quantity_each(tmp_path):
    # The SLE model has a state and an observable both named flu_auc (mg*d/L and mg*h/L): `name` must tell them
    # apart, and every row keeps its own unit.
    from carkinetics.models.sle import SLECarTModel

    states, observables = SLECarTModel.state_names(), SLECarTModel.observable_names()
    clash = sorted(set(states) & set(observables))
    assert "flu_auc" in clash
    state_names, observable_names = cio._tidy.tidy_names(states, observables)
    assert "state:flu_auc" in state_names and "flu_auc" in observable_names and "flu_auc" not in state_names
    assert len(set(state_names) | set(observable_names)) == len(states) + len(observables)
    # a written table: one unit per name, the clashing state qualified, the others unchanged
    sol = ck.simulate(OneCompartmentPK(), ck.Bolus(0.0, 100.0, "central"), jnp.linspace(0.0, 1.0, 3))
    path = cio.write_tidy_csv(tmp_path / "sim.csv", sol)
    rows = _rows(path)
    assert {(r["kind"], r["name"], r["unit"]) for r in rows} == {
        ("state", "central", "mg"),
        ("observable", "concentration", "mg/L"),
    }
    names = {r["name"]: {r2["unit"] for r2 in rows if r2["name"] == r["name"]} for r in rows}
    assert all(len(units) == 1 for units in names.values())


def test_tidy_csv_of_the_sle_model_has_unique_names(tmp_path):
    # The written form for a model with clashing names, without solving it: a stand-in solution of the right shape.
    import types

    from carkinetics.models.sle import SLECarTModel

    cls = SLECarTModel
    ts = np.array([0.0, 1.0])
    sol = types.SimpleNamespace(
        ts=ts,
        model_class=cls,
        y_array=np.ones((2, len(cls.state_names()))),
        obs_array=2.0 * np.ones((2, len(cls.observable_names()))),
    )
    rows = _rows(cio.write_tidy_csv(tmp_path / "sle.csv", sol))
    units = {}
    for r in rows:
        units.setdefault(r["name"], set()).add((r["kind"], r["unit"]))
    assert all(len(u) == 1 for u in units.values()), {k: v for k, v in units.items() if len(v) > 1}
    assert units["state:flu_auc"] == {("state", cls.state_units["flu_auc"])}
    assert units["flu_auc"] == {("observable", cls.observable_units["flu_auc"])}
    assert cls.state_units["flu_auc"] != cls.observable_units["flu_auc"]


def test_writers_are_atomic(tmp_path, monkeypatch):
    # A writer that fails half way leaves the previous file untouched and no temporary file behind.
    from carkinetics._core import _files

    path = tmp_path / "t.csv"
    path.write_text("old")

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(_files.os, "fsync", boom)
    sol = ck.simulate(OneCompartmentPK(), ck.Bolus(0.0, 100.0, "central"), jnp.linspace(0.0, 1.0, 3))
    with pytest.raises(OSError, match="disk full"):
        cio.write_tidy_csv(path, sol)
    import matplotlib.pyplot as plt

    from carkinetics.plot import save_figure

    (tmp_path / "f.png").write_text("old")
    with pytest.raises(OSError, match="disk full"):
        save_figure(plt.figure(), str(tmp_path / "f.png"))
    assert path.read_text() == "old" and (tmp_path / "f.png").read_text() == "old"
    assert sorted(os.listdir(tmp_path)) == ["f.png", "t.csv"]
    monkeypatch.undo()
    cio.atomic_write_bytes(tmp_path / "b.bin", b"\x00\x01")
    assert (tmp_path / "b.bin").read_bytes() == b"\x00\x01"


def test_solution_and_results_print_readably():
    sol = ck.simulate(OneCompartmentPK(), ck.Bolus(0.0, 100.0, "central"), jnp.linspace(0.0, 1.0, 5))
    assert repr(sol.result) == str(sol.result) == "carkinetics.RESULTS<successful>"
    assert sol.message == "successful"
    assert (
        repr(sol)
        == str(sol)
        == (
            f"Solution(OneCompartmentPK: 5 save times 0 to 1 d, 1 state, 1 observable; "
            f"successful, {int(sol.num_steps)} steps)"
        )
    )
    bad = ck.simulate(
        OneCompartmentPK(), ck.Bolus(0.0, 100.0, "central"), jnp.linspace(0.0, 1.0, 5), max_steps=1, throw=False
    )
    assert "max_steps_reached" in repr(bad) and bad.message.startswith("The maximum number of solver steps")
    models = ck.batch_models(OneCompartmentPK(), {"cl": jnp.array([50.0, 100.0, 200.0])}, 3)
    batch = ck.simulate_ensemble(models, ck.Bolus(0.0, 100.0, "central"), jnp.linspace(0.0, 1.0, 5))
    assert repr(batch).startswith(
        "Solution(OneCompartmentPK, batch (3,): 5 save times 0 to 1 d, 1 state, 1 observable; 3 of 3 successful"
    )
    assert ck.RESULTS.successful == ck.RESULTS.successful  # still an equinox enumeration
    import diffrax

    assert diffrax.RESULTS._index_to_message[0] == ""  # diffrax's own table is untouched


def test_version(capsys):
    assert cli.main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"carkinetics {ck.__version__}"


def test_demo_names_the_extra_of_a_missing_feature(tmp_path):
    steps = (demo.DemoStep("SBML", (("no_such_module_xyz", "load"),), lambda ctx: None, extra="sbml"),)
    _, skipped, failed = demo.run_demo(str(tmp_path), quick=True, steps=steps, progress=None)
    assert not failed
    assert 'install it with the [sbml] extra: pip install "carkinetics[sbml]"' in skipped[0]
    sbml = next(s for s in demo.DEMO_STEPS if s.title == "Export to SBML")
    assert sbml.extra == "sbml" and ("antimony", "loadAntimonyString") in sbml.requires


def test_demo_declares_every_file_it_writes(tmp_path):
    ctx = demo.DemoContext(out=str(tmp_path), quick=True, report=None)
    with pytest.raises(ValueError, match="not in DEMO_FILES"):
        ctx.path("undeclared.csv")
    commands = {c.name: c for c in cli.Plugins.commands()}
    assert commands["demo"].outputs == demo.DEMO_FILES


def test_bench_without_arguments_times_the_sle_course_under_its_regimen():
    # `carkinetics bench` with no arguments times the default preset (the SLE human course under the Erlangen regimen
    # on its save grid), not an undosed model whose solve takes a handful of steps.
    from carkinetics.cli import _inputs, _main
    from carkinetics.models.sle import save_times

    parser = _main.build_parser([c for c in _main.commands() if c.name == "bench"])
    run = _inputs.resolve_run(parser.parse_args(["bench"]), cli.Plugins())
    assert type(run.model).__name__ == "SLECarTModel" and "preset human" in run.label
    states = {d.state for d in run.regimen.doses}
    assert {"car_resting", "flu_central", "cy_central"} <= states, states  # CAR-T, fludarabine, cyclophosphamide
    np.testing.assert_array_equal(np.asarray(run.ts), np.asarray(save_times()))


def test_demo_and_translate_attribute_to_the_same_groups(tmp_path, monkeypatch):
    # The full demo's translation step and `carkinetics translate` (defaults) form the groups from the same gap ids, so
    # that they blame the same mechanisms for the same gap; the quick demo keeps a few of those same ids.
    from carkinetics.models.sle import translation

    seen = {}

    def capture(name, result=None):
        def fake(*args, **kwargs):
            seen[name] = kwargs.get("gaps")
            if result is None:
                raise RuntimeError("stop after the arguments")
            return result

        return fake

    monkeypatch.setattr(translation, "sle_translation_map", capture("demo"))
    step = next(s for s in demo.DEMO_STEPS if s.title.startswith("Translation map"))
    with pytest.raises(RuntimeError, match="stop after"):
        step.run(demo.DemoContext(out=str(tmp_path), quick=False, report=None))
    monkeypatch.setattr(translation, "write_translation_report", capture("translate", {}))
    assert cli.main(["translate", "--no-scenarios", "--out", str(tmp_path / "t"), "--quiet"]) == cli.EXIT_OK
    assert seen == {"demo": None, "translate": None}  # both: every gap id the presets tag
    _, _, gaps_a = translation.load_arm("mouse_nzbw")
    _, _, gaps_b = translation.load_arm("human")
    assert len(translation.gap_groups(gaps_a, gaps_b)) >= 6
    with pytest.raises(RuntimeError, match="stop after"):
        step.run(demo.DemoContext(out=str(tmp_path), quick=True, report=None))
    assert seen["demo"] == demo.QUICK_GAPS
    assert [g.gap for g in translation.gap_groups(gaps_a, gaps_b, only=demo.QUICK_GAPS)] == list(demo.QUICK_GAPS)


@pytest.mark.parametrize(
    "labels, message",
    [
        (("human", "human"), "`labels` must be two different names"),
        (("gap", "human"), "`labels` ['gap'] would repeat a column name of the table"),
        (("", "human"), "`labels` must be two non-empty strings"),
    ],
)
def test_translation_table_columns_are_unique(labels, message):
    # The two labels head the value columns of translation_map.csv: equal labels, or a label equal to a fixed column,
    # would silently drop a column (a dict key written twice). Refused before anything is solved.
    from carkinetics.models import TwoCompartmentPK

    a, b = TwoCompartmentPK(cl=5.0), TwoCompartmentPK(cl=192.0)
    groups = [ck.MechanismGroup("G1 clearance", ("cl",), gap="G1")]
    with pytest.raises(ValueError, match=re.escape(message)):
        ck.translation_map(lambda m: pytest.fail("solved"), a, b, groups, units={"x": "1"}, labels=labels)


def test_translate_refuses_two_presets_of_the_same_name(tmp_path, capsys, monkeypatch):
    from carkinetics.models.sle import translation

    monkeypatch.setattr(translation, "write_translation_report", lambda *a, **k: pytest.fail("computed"))
    (tmp_path / "human.toml").write_text("")
    rc = cli.main(["translate", "--mouse", str(tmp_path / "human.toml"), "--out", str(tmp_path / "o"), "--quiet"])
    err = capsys.readouterr().err
    assert rc == cli.EXIT_USAGE and err.count("\n") == 1
    assert f"--mouse '{tmp_path / 'human.toml'}' and --human 'human' have the same name 'human'" in err


def test_the_quick_demo_leaves_out_the_full_only_steps_and_says_so(tmp_path):
    # `demo --quick` is meaningfully quicker: it leaves out what needs its own compiled batch (the Sobol sweep), maps
    # four mechanism groups and solves the human and mouse courses with one compiled program; the report says what
    # was left out.
    def boom(ctx):
        raise RuntimeError("ran")

    steps = (demo.DemoStep("Heavy", (), boom, full_only="too slow for a smoke run"),)
    _, skipped, failed = demo.run_demo(str(tmp_path), quick=True, steps=steps, progress=None)
    assert skipped == ["Step 'Heavy' is left out of the quick run: too slow for a smoke run."] and failed == []
    _, skipped, failed = demo.run_demo(str(tmp_path), quick=False, steps=steps, progress=None)
    assert skipped == [] and failed == ["Step 'Heavy' failed: RuntimeError: ran"]
    sobol = next(s for s in demo.DEMO_STEPS if s.title.startswith("Sensitivity"))
    trial = next(s for s in demo.DEMO_STEPS if s.title.startswith("Virtual dose-escalation trial"))
    assert sobol.full_only and trial.full_only
    assert [s.title for s in demo.DEMO_STEPS if s.full_only] == [sobol.title, trial.title]
    assert len(demo.QUICK_GAPS) == 4


def test_the_demo_courses_share_one_regimen_structure():
    # The human and mouse courses are arms of the translation map: the same dose structure (the other species'
    # doses are zero), hence one compiled solve for both; the doses are those of the Erlangen and mouse regimens.
    from carkinetics.models.sle import erlangen_regimen, mouse_regimen
    from carkinetics.models.sle.translation import arm_regimen, load_arm

    human, _, _ = load_arm("human")
    mouse, _, _ = load_arm("mouse_nzbw")
    rh, rm = arm_regimen(human), arm_regimen(mouse)
    assert [type(d) for d in rh.doses] == [type(d) for d in rm.doses]

    def given(reg):  # the doses that deliver something, as (kind, time, amount or fraction)
        out = []
        for d in reg.doses:
            size = float(getattr(d, "amount", None) if hasattr(d, "amount") else d.fraction)
            if size:
                out.append((type(d).__name__, float(d.time if hasattr(d, "time") else d.start), size))
        return sorted(out)

    assert (len(given(rh)), len(given(rm))) == (5, 2)  # Flu x3, Cy, CAR-T; irradiation, CAR-T
    np.testing.assert_allclose(
        [x[1:] for x in given(rh)], [x[1:] for x in given(erlangen_regimen(human.model))], rtol=1e-12
    )
    np.testing.assert_allclose(
        [x[1:] for x in given(rm)], [x[1:] for x in given(mouse_regimen(mouse.model))], rtol=1e-12
    )
