"""The committed human fit and how the shipped default uses it: provenance (tags F, data files and their SHA-256), the
fit file as the single source of the fitted numbers (the presets name it, never copy it), and the script's bindings
of every published row. The fits themselves (many minutes of CPU) run in the `slow` tests and the scripts; every
target within its spread for the calibrated default is tested in `test_sle_v2_directions.py` and
`test_sle_v2_population.py`.
"""

import hashlib
import importlib.util
import json
import os
import sys

import numpy as np
import pytest

import carkinetics as ck
from carkinetics.models import sle

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
CAL = os.path.join(ROOT, "calibration")


def _load_script(name):
    spec = importlib.util.spec_from_file_location(f"_cal_{name}", os.path.join(CAL, f"{name}.py"))
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses in the script look their module up in sys.modules
    spec.loader.exec_module(mod)
    return mod


def _sha(path):
    with open(path, "rb") as fh:
        return hashlib.sha256(fh.read()).hexdigest()


def test_human_fit_file_provenance():
    human = _load_script("fit_human_sle")
    doc = ck.read_fit_provenance(human.FIT_FILE)
    assert doc["model"] == "SLECarTModel"
    assert set(doc["parameters"]) == set(human.ESTIMATE)
    assert set(doc["parameters"]) <= set(ck.parameters(sle.SLECarTModel()))
    for name, e in doc["parameters"].items():
        assert e["tag"] == "F" and e["prior_tag"] in ck.CONFIDENCE_TAGS and e["prior_source"], name
        assert np.isfinite(e["sd"]) and e["sd"] > 0, name  # Laplace sd recorded for every fitted value
    # both target files, with the hashes of the files installed now: a changed target file means "refit"
    data = {os.path.basename(d["path"]): d["sha256"] for d in doc["provenance"]["data"]}
    assert data == {"human_sle_targets.csv": _sha(human.DATA), "oncology_ck_targets.csv": _sha(human.DATA_ONCOLOGY)}
    assert "stage 2" in doc["provenance"]["notes"] and "Profile identifiability" in doc["provenance"]["notes"]
    stage1 = ck.read_fit_provenance(human.STAGE1_FILE)
    assert set(stage1["parameters"]) == set(human.STAGE1)
    # stage 2 starts the product parameters at the stage-1 values (their prior centres)
    for name in human.STAGE1:
        assert doc["parameters"][name]["prior_centre"] == pytest.approx(stage1["parameters"][name]["value"], rel=1e-9)


def test_the_default_is_the_calibrated_model_and_the_fit_file_the_single_source():
    human = _load_script("fit_human_sle")
    fitted = ck.load_fit(human.FIT_FILE)
    assert _sha(sle.fit_path("human_sle.json")) == _sha(human.FIT_FILE)  # the installed file is the committed one
    for preset in sle.preset_names():
        assert sle.preset_fit(preset) == sle.fit_path("human_sle.json"), preset
        own = sle.preset_records(preset, calibrated=False)
        model = sle.load_preset(preset)
        for name, value in fitted.items():
            if name not in own:  # the fitted value, read from the fit file (no copy in any preset)
                assert float(model.get(name)) == value, (preset, name)
    # the human preset lists nothing of its own: it is the class defaults plus the fit
    assert sle.preset_records("human", calibrated=False) == {}
    default = sle.SLECarTModel()
    assert ck.differing_parameters(sle.load_preset("human", calibrated=False), default) == ()
    moved = set(ck.differing_parameters(sle.load_preset("human"), default))
    assert moved <= set(fitted)
    # a fitted value equal to its class default is one the SLE data do not inform (Laplace: posterior sd = prior sd;
    # a parameter left exactly at its start): the notes list it as not informed
    doc = ck.read_fit_provenance(human.FIT_FILE)
    not_informed = doc["provenance"]["notes"].split("not informed by the SLE data:")[1].split(". ")[0]
    for name in set(fitted) - moved:
        assert name in not_informed, name
        assert doc["parameters"][name]["value"] == pytest.approx(doc["parameters"][name]["prior_centre"], rel=1e-12)
    with open(os.path.join(ROOT, "models", "sle", "presets", "human.toml")) as fh:
        text = fh.read()
    assert 'fit = "human_sle.json"' in text and "value =" not in text
    # provenance in the parameter table: tag F, the fit file and its data named; the prior kept
    table = {p.name: p for p in sle.preset_parameter_table("human")}
    for name in fitted:
        src = table[name].info.source
        assert table[name].info.tag == "F" and "calibration/fits/human_sle.json" in src, (name, src)
        assert "human_sle_targets.csv sha256" in src and "prior:" in src
    # besides the fit file, only the population-level calibration of the class defaults is tagged F
    population_level = {
        n for n, p in table.items() if p.info.tag == "F" and "population_report.py --tune" in p.info.source
    }
    assert population_level == {"myeloid.k_damp"}
    assert sum(p.info.tag == "F" for p in table.values()) == len(fitted) + len(population_level)


def test_the_script_binds_every_published_row():
    human = _load_script("fit_human_sle")
    specs = human.targets()
    kinds = {t.kind for t in specs}
    assert kinds == {"sle", "oncology", "check", "population", "input", "not_evaluable"}
    covered = {t.target_id for t in specs if t.kind != "population"} | set(human.POPULATION_ROWS.values())
    assert covered == human.row_ids()
    for t in specs:
        assert t.note, t.target_id
        if t.kind in ("sle", "oncology"):
            assert t.statistic is not None, t.target_id


def test_mouse_fit_values_live_in_the_preset_with_their_data_hash():
    # no mouse fit file is shipped: the NZB/W values fitted to the Kansal 2019 bounds are entries of its preset,
    # tagged F, naming the script and the hash of the target file they were fitted to (which must be the current one)
    assert not [f for f in os.listdir(os.path.join(CAL, "fits")) if f.startswith("mouse")]
    with open(os.path.join(CAL, "data", "mouse_targets.csv"), "rb") as fh:
        sha = hashlib.sha256(fh.read()).hexdigest()[:12]
    human = sle.preset_records("human")  # the human fit's values, inherited by the mouse presets
    rec = sle.preset_records("mouse_nzbw")
    fitted = {n: r for n, r in rec.items() if r.tag == "F" and (n not in human or r.source != human[n].source)}
    assert set(fitted) == {"car.alpha", "bcell.k_mat"}
    for r in fitted.values():
        assert "calibration/fit_mouse.py" in r.source and sha in r.source and "not converged" in r.source
    mrl = sle.preset_records("mouse_mrl_lpr")
    assert not [n for n, r in mrl.items() if r.tag == "F" and (n not in human or r.source != human[n].source)]
    assert "NZB/W preset carries this script's estimates" in _load_script("fit_mouse").__doc__


@pytest.mark.slow
def test_human_fit_quick_run(tmp_path):
    human = _load_script("fit_human_sle")
    rc = human.main(
        [
            "--quick",
            "--no-profiles",
            "--out-dir",
            str(tmp_path),
            "--fit-file",
            str(tmp_path / "fit.json"),
            "--stage1-file",
            str(tmp_path / "stage1.json"),
        ]
    )
    summary = json.loads((tmp_path / "summary.json").read_text())
    print(json.dumps(summary["targets"], indent=1))
    assert rc in (0, 1)
    assert set(ck.load_fit(tmp_path / "fit.json")) == set(human.ESTIMATE)
    assert (tmp_path / "fit_trajectories.png").stat().st_size > 0


@pytest.mark.slow
def test_stein_script_quick(tmp_path):
    stein = _load_script("fit_stein_2019")
    assert stein.main(["--quick", "--out-dir", str(tmp_path)]) == 0
    assert (tmp_path / "profiles.png").stat().st_size > 0 and (tmp_path / "report.md").read_text()


@pytest.mark.slow
def test_mouse_script_quick(tmp_path):
    mouse = _load_script("fit_mouse")
    rc = mouse.main(["--quick", "--strain", "mouse_nzbw", "--out-dir", str(tmp_path), "--fit-dir", str(tmp_path)])
    assert rc == 0
    assert set(ck.load_fit(tmp_path / "mouse_nzbw.json")) == set(mouse.ESTIMATE)
