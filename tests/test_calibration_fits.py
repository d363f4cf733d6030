"""The calibration scripts and their committed fits: human SLE targets hit within their spread, mouse/Stein runs.

The default-suite test re-simulates the committed human fit (`calibration/fits/human_sle.json`) and checks every
SLE target with a reported spread; the fits themselves (minutes of CPU) run in the `slow` tests and the scripts.
"""

import hashlib
import importlib.util
import json
import os

import numpy as np
import pytest

import carkinetics as ck

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
CAL = os.path.join(ROOT, "calibration")


def _load_script(name):
    spec = importlib.util.spec_from_file_location(f"_cal_{name}", os.path.join(CAL, f"{name}.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_human_fit_file_hits_every_sle_target_with_spread():
    human = _load_script("fit_human_sle")
    doc = ck.read_fit_provenance(human.FIT_FILE)
    # the fit was made from the current data file and every fitted value is tagged F
    data = doc["provenance"]["data"][0]
    with open(human.DATA, "rb") as fh:
        assert hashlib.sha256(fh.read()).hexdigest() == data["sha256"], "targets changed since the fit: refit"
    assert all(p["tag"] == "F" for p in doc["parameters"].values())
    assert set(doc["parameters"]) == set(human.ESTIMATE)
    from carkinetics.models.sle import load_preset

    model = ck.apply_fit(load_preset("human"), human.FIT_FILE)
    problem = human.build_problem(model)
    rows, table = human.target_table(problem, problem.z0)  # z0 = the fitted model's values
    print("\n" + table)
    # every shared SLE CAR-T target with a reported spread (population "SLE...") is bound and hit
    sle = ck.load_targets(human.DATA)
    with_spread = {r.target_id for r in sle if r.interval() is not None and r.population.startswith("SLE")
                   and "rituximab" not in r.population}
    assert with_spread == {r[0] for r in rows}
    for tid, pred, value, (lo, hi), hit, unit in rows:
        assert np.isfinite(pred) and lo <= pred <= hi, f"{tid}: model {pred:.4g} {unit} outside [{lo}, {hi}]"


@pytest.mark.slow
def test_human_fit_quick_run(tmp_path):
    human = _load_script("fit_human_sle")
    # warm start from the committed fit: the script must return to the same optimum and hit every target
    rc = human.main(["--quick", "--start-from", human.FIT_FILE, "--lbfgs-steps", "30", "--out-dir", str(tmp_path),
                     "--fit-file", str(tmp_path / "fit.json")])
    summary = json.loads((tmp_path / "summary.json").read_text())
    print(json.dumps(summary, indent=1))
    assert rc == 0 and all(t["hit"] for t in summary["targets"])
    # every profiled parameter the Laplace analysis found uninformed by the data is flagged by its profile
    for name in summary["laplace_not_informed"]:
        if name in summary["profiled"]:
            assert name in summary["profile_not_identifiable"], name
    assert summary["profile_not_identifiable"], "six parameters from seven, partly redundant summary numbers: some must stay open"
    refit, committed = ck.load_fit(tmp_path / "fit.json"), ck.load_fit(human.FIT_FILE)
    assert refit.keys() == set(human.ESTIMATE)
    for name in ("car.rho", "car.k_kill"):  # well-determined (profile / Laplace) values agree with the committed fit
        assert abs(refit[name] / committed[name] - 1) < 0.05, (name, refit[name], committed[name])
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
