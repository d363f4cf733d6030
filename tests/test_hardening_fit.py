"""Failed fits are reported as failed: unfittable data is rejected up front with the reason, and a start that never
left the failure penalty, got worse, ran off its range or stalled with a large gradient is not converged."""

import jax.numpy as jnp
import pytest

import carkinetics as ck
from carkinetics.models import OneCompartmentPK

MODEL = OneCompartmentPK()
BOLUS = ck.Bolus(0.0, 100.0, "central")
T = jnp.array([0.5, 1.0, 2.0])


def test_nan_and_non_positive_log_scale_data_are_rejected_at_construction():
    with pytest.raises(ValueError, match=r"must be finite; positions \[1\] are NaN"):
        ck.TimeCourseData("concentration", T, jnp.array([1.0, jnp.nan, 0.5]), ck.NormalError(0.1))
    with pytest.raises(ValueError, match=r"must be positive for a log-scale error model .*positions \[2\]"):
        ck.TimeCourseData("concentration", T, jnp.array([1.0, 0.5, 0.0]), ck.LogNormalError(0.1))
    with pytest.raises(ValueError, match="positive for a log-scale"):
        ck.TimeCourseData(
            "concentration", T, jnp.array([1.0, -0.5, 0.2]), ck.CensoredError(ck.LogNormalError(0.1), lloq=0.1)
        )


def test_data_no_dose_reaches_is_rejected_with_the_reason():
    data = ck.TimeCourseData("concentration", T, jnp.array([1.0, 0.8, 0.5]), ck.LogNormalError(0.1))
    problem = ck.CalibrationProblem(MODEL, None, [data], ["cl"])  # no regimen: the concentration stays 0
    with pytest.raises(
        ValueError,
        match=r"cannot be fitted: every start gives the failure penalty.*"
        r"does any dose reach this observable",
    ):
        ck.fit(problem, n_starts=2, adam_steps=2, lbfgs_steps=2)


# One problem structure and one optimiser budget for the fits below, so that they share one compilation.
FIT = dict(n_starts=2, adam_steps=60, lbfgs_steps=40)


def _problem(values):
    data = ck.TimeCourseData("concentration", T, jnp.asarray(values), ck.LogNormalError(0.1))
    return ck.CalibrationProblem(MODEL, BOLUS, [data], ["cl"], priors=None)


def test_good_fit_succeeds_and_recovers_the_truth():
    y = ck.simulate(OneCompartmentPK(cl=20.0), BOLUS, T, rtol=1e-10, atol=1e-12).observables.concentration
    res = ck.fit(_problem(y), **FIT)
    assert res.success and res.at_bounds() == []
    assert res.values()["cl"] == pytest.approx(20.0, rel=1e-4)
    assert "FIT FAILED" not in res.convergence_report()


def test_stalled_start_with_a_large_gradient_is_not_converged():
    # Data far below anything the solver resolves: the loss is dominated by integration noise and the optimiser
    # stalls with a gradient of ~1e6; it must not be reported as converged.
    res = ck.fit(_problem([1e-100, 1e-200, 1e-300]), **FIT)
    assert float(res.grad_norms[res.best]) > 1e3
    assert not res.success
    assert "THE FIT FAILED" in res.convergence_report()


def _write(path, doc):
    import json

    path.write_text(json.dumps(doc))
    return path


GOOD = {
    "format": "carkinetics-fit/1",
    "model": "OneCompartmentPK",
    "parameters": {"cl": {"value": 12.0, "unit": "L/d", "tag": "F"}},
}


def test_fit_files_are_read_strictly(tmp_path):
    assert ck.load_fit(_write(tmp_path / "ok.json", GOOD)) == {"cl": 12.0}
    assert float(ck.apply_fit(MODEL, tmp_path / "ok.json").cl) == 12.0
    cases = [
        ({**GOOD, "model": "Stein2019CK"}, r"was fitted to Stein2019CK, not OneCompartmentPK"),
        ({**GOOD, "parameters": {"cl": {"value": 12.0, "unit": "L/h"}}}, r"'cl' is in 'L/h' but the model declares"),
        ({**GOOD, "parameters": {"cl": 12.0}}, r"parameter 'cl' must be an object with 'value' and 'unit'"),
        ({**GOOD, "parameters": {"cl": {"unit": "L/d"}}}, r"parameter 'cl' lacks its 'value'"),
        ({**GOOD, "parameters": {"cl": {"value": "12", "unit": "L/d"}}}, r"has the value '12'; a finite number"),
        ({"format": "carkinetics-fit/1", "parameters": {}}, r"does not name the model class"),
        ({"format": "other"}, r"is not a 'carkinetics-fit/1' file"),
    ]
    for i, (doc, msg) in enumerate(cases):
        with pytest.raises(ValueError, match=msg):
            ck.apply_fit(MODEL, _write(tmp_path / f"bad{i}.json", doc))
    (tmp_path / "latin1.json").write_bytes(b'{"format": "\xe9"}')
    with pytest.raises(ValueError, match="is not valid UTF-8 JSON"):
        ck.load_fit(tmp_path / "latin1.json")
