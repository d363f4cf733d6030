"""PEtab-style tables and NONMEM-style observation records: round trips, validation messages."""

import io
import math

import jax.numpy as jnp
import numpy as np
import pytest

import carkinetics as ck
import carkinetics.io as cio
from carkinetics.models import OneCompartmentPK, TwoCompartmentPK


def _problem(model):
    return cio.PetabProblem(
        measurements=(
            cio.PetabMeasurement("conc", "low", 0.5, 0.9),
            cio.PetabMeasurement("conc", "low", 0.25, 1.3, replicate_id="r1"),
            cio.PetabMeasurement("conc", "high", 1.0, 2.5),
        ),
        parameters=cio.petab_parameters_from_model(model, estimate=["cl"]),
        conditions=(cio.PetabCondition("low", "100 mg", {}), cio.PetabCondition("high", "small V", {"v": 20.0})),
        observables=(cio.PetabObservable("conc", "plasma conc.", "concentration", "log", "0.1", "normal"),),
    )


def test_petab_round_trip(tmp_path):
    model = OneCompartmentPK()
    prob = _problem(model)
    yaml_path = cio.write_petab(prob, tmp_path, model=model)
    assert (tmp_path / "model.xml").read_text().count("<sbml") == 1
    with open(yaml_path) as fh:
        text = fh.read()
    assert "measurement_files: [measurements.tsv]" in text and "sbml_files: [model.xml]" in text
    back = cio.read_petab(yaml_path, model=model)
    # PEtab form: `v`, which a condition sets, leaves the parameter table, and the condition that did not set it
    # gets its nominal value; every condition still gives the same model
    assert back.measurements == prob.measurements and back.observables == prob.observables
    assert back.parameters == tuple(p for p in prob.parameters if p.parameter_id != "v")
    assert back.conditions == (
        cio.PetabCondition("low", "100 mg", {"v": 46.5}),
        cio.PetabCondition("high", "small V", {"v": 20.0}),
    )
    for c in ("low", "high"):
        assert (float(back.apply(model, c).v), float(back.apply(model, c).cl)) == (
            float(prob.apply(model, c).v),
            float(prob.apply(model, c).cl),
        )
    # ... and the PEtab form is written and read back unchanged
    assert cio.read_petab(cio.write_petab(back, tmp_path / "again", model=model), model=model) == back
    # parameter rows come from the metadata: estimated cl on log10 scale within 100-fold of its value
    cl = next(p for p in back.parameters if p.parameter_id == "cl")
    assert (cl.scale, cl.estimate) == ("log10", True)
    assert cl.lower == pytest.approx(5.41 * 24 / 100, rel=1e-12)
    assert cl.upper == pytest.approx(5.41 * 24 * 100, rel=1e-12)
    t, y = back.measurement_arrays("low", "conc")
    np.testing.assert_array_equal(t, [0.25, 0.5])
    np.testing.assert_array_equal(y, [1.3, 0.9])
    m = back.apply(model, "high")
    assert float(m.v) == 20.0 and float(m.cl) == pytest.approx(5.41 * 24, rel=1e-12)


# petab 0.8 calls pandas APIs that pandas 3 deprecates (`float_precision`, `inplace`): its warnings, not ours.
@pytest.mark.filterwarnings("ignore::DeprecationWarning:petab.*")
def test_written_petab_problem_passes_the_petab_linter_and_carries_the_regimen(tmp_path):
    # The official PEtab (v1) linter finds no error in a written problem; its model.xml holds the regimen as SBML
    # events, so libroadrunner simulating it reproduces ck.simulate at the measurement times (1e-6 relative).
    petab = pytest.importorskip("petab.v1")
    from petab.v1.lint import lint_problem

    roadrunner = pytest.importorskip("roadrunner")
    model = OneCompartmentPK()
    regimen = ck.Regimen(
        [ck.Bolus(0.0, 100.0, "central", ii=1.0, addl=1), ck.Infusion(1.5, "central", rate=80.0, duration=0.25)]
    )
    yaml_path = cio.write_petab(_problem(model), tmp_path, model=model, regimen=regimen)
    assert lint_problem(petab.Problem.from_yaml(yaml_path)) is False  # True means errors were reported
    rr = roadrunner.RoadRunner(str(tmp_path / "model.xml"))
    rr.integrator.relative_tolerance = 1e-10
    rr.integrator.absolute_tolerance = 1e-12
    ts = np.array([0.0, 0.25, 0.5, 1.0, 1.6, 2.5])
    rr.timeCourseSelections = ["time", "concentration"]
    res = rr.simulate(times=list(map(float, ts)))
    ref = np.asarray(ck.simulate(model, regimen, ts, rtol=1e-10, atol=1e-12).observables.concentration)
    np.testing.assert_allclose(np.asarray(res["concentration"]), ref, rtol=1e-6, atol=0)


def test_write_petab_rejects_what_petab_cannot_express(tmp_path):
    model = OneCompartmentPK()
    prob = _problem(model)
    with pytest.raises(ValueError, match=r"doses on day -1, before day 0; PEtab simulates from time 0"):
        cio.write_petab(prob, tmp_path, model=model, regimen=ck.Bolus(-1.0, 10.0, "central"))
    estimated_and_set = cio.PetabProblem(
        prob.measurements,
        prob.parameters,
        (prob.conditions[0], cio.PetabCondition("high", "", {"cl": 50.0})),
        prob.observables,
    )
    with pytest.raises(
        ValueError,
        match=r"Parameter 'cl' is estimated in the parameters table and set by "
        r"condition\(s\) \['high'\]",
    ):
        cio.write_petab(estimated_and_set, tmp_path, model=model)
    with pytest.raises(ValueError, match=r"`model` must be a carkinetics AbstractKineticModel, got NoneType"):
        cio.write_petab(prob, tmp_path, model=None)
    assert not (tmp_path / "problem.yaml").exists()  # nothing is written before the checks pass


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda p: p.replace("\tlow\t0.5\t", "\tnowhere\t0.5\t", 1), "simulationConditionId 'nowhere'"),
        (lambda p: p.replace("\t0.9\t", "\tabc\t", 1), "line 2, column measurement"),
        (lambda p: p.replace("\t0.9\t", "\t-1.0\t", 1), "must be positive for the log-transformed"),
    ],
)
def test_petab_measurement_errors_name_the_problem(tmp_path, edit, message):
    cio.write_petab(_problem(OneCompartmentPK()), tmp_path, model=OneCompartmentPK())
    f = tmp_path / "measurements.tsv"
    f.write_text(edit(f.read_text()))
    with pytest.raises(ValueError, match=message):
        cio.read_petab(tmp_path)


def test_petab_validation_against_model():
    model = OneCompartmentPK()
    prob = _problem(model)
    bad_obs = prob.observables[0]._replace(formula="not_an_output")
    with pytest.raises(ValueError, match="observableFormula 'not_an_output'"):
        cio.PetabProblem(prob.measurements, prob.parameters, prob.conditions, (bad_obs,)).validate(model)
    with pytest.raises(ValueError, match="column 'k_unknown' is not a parameter id"):
        cio.PetabProblem(
            prob.measurements,
            prob.parameters,
            (cio.PetabCondition("low", "", {"k_unknown": 1.0}), prob.conditions[1]),
            prob.observables,
        ).validate(model)
    bad_par = prob.parameters[0]._replace(lower=-1.0)
    with pytest.raises(ValueError, match="log10-scaled parameter 'cl' needs lowerBound > 0"):
        cio.PetabProblem(
            prob.measurements, (bad_par, *prob.parameters[1:]), prob.conditions, prob.observables
        ).validate()
    with pytest.raises(ValueError, match="Unknown parameter 'nope'"):
        cio.petab_parameters_from_model(model, estimate=["nope"])
    with pytest.raises(ValueError, match="does not exist"):
        cio.read_petab("/nonexistent/petab")


def test_nonmem_dataset_round_trip():
    model = TwoCompartmentPK()
    regimen = ck.Regimen(
        [ck.Bolus(0.0, 100.0, "central", ii=1.0, addl=2), ck.Infusion(0.5, "peripheral", rate=40.0, duration=0.25)]
    )
    ts = jnp.array([0.0, 0.5, 1.0, 2.5])
    sol = ck.simulate(model, regimen, ts)
    obs = cio.observations_from_solution(sol)
    buf = io.StringIO()
    cio.write_nonmem_dataset(
        buf, regimen=regimen, compartments=model.state_names(), observations=obs, observables=model.observable_names()
    )
    text = buf.getvalue()
    lines = text.splitlines()
    assert lines[0] == "ID,TIME,AMT,CMT,EVID,RATE,II,ADDL,DV,MDV"
    assert lines[1].startswith("1,0.0,100.0,1,1,") and lines[2].startswith("1,0.0,.,1,0,")  # dose before obs at t=0
    back_obs = cio.read_nonmem_observations(io.StringIO(text), model.observable_names())
    np.testing.assert_allclose(back_obs.time, [0.0, 0.5, 1.0, 2.5], rtol=0, atol=0)
    np.testing.assert_allclose(back_obs.value, np.asarray(sol.observables.concentration), rtol=1e-15)
    # the core reader takes the dose rows of the same file and reproduces the trajectory
    back_reg = ck.read_nonmem_events(io.StringIO(text), model.state_names())
    sol2 = ck.simulate(model, back_reg, ts)
    np.testing.assert_allclose(np.asarray(sol2.y_array), np.asarray(sol.y_array), rtol=1e-12)


def test_nonmem_observation_errors():
    with pytest.raises(ValueError, match="Line 2: unknown observation compartment CMT = '3'"):
        cio.read_nonmem_observations(io.StringIO("TIME,CMT,DV,EVID\n1,3,2.0,0\n"), ["a", "b"])
    with pytest.raises(ValueError, match="Line 3: column DV = 'x' is not a number"):
        cio.read_nonmem_observations(io.StringIO("TIME,CMT,DV,EVID\n1,1,2.0,0\n2,b,x,0\n"), ["a", "b"])
    with pytest.raises(ValueError, match=r"lacks required column\(s\) \['DV'\]"):
        cio.read_nonmem_observations(io.StringIO("TIME,CMT\n1,1\n"), ["a"])
    with pytest.raises(ValueError, match="FractionalKill events cannot be written"):
        cio.write_nonmem_dataset(
            io.StringIO(), regimen=ck.Regimen([ck.FractionalKill(0.0, 0.5, ["a"])]), compartments=["a"]
        )
    obs = cio.read_nonmem_observations(
        io.StringIO("ID,TIME,CMT,DV,MDV,EVID\n1,1,a,2.0,0,0\n1,2,1,3.0,1,0\n2,1,1,5.0,0,0\n"), ["a"], subject_id="2"
    )
    assert obs.value.tolist() == [5.0] and obs.subject == ("2",) and math.isclose(obs.time[0], 1.0)


# ---- NONMEM-style tables: one strict parser for every reader ------------------------------------------------------

_HEADER = "ID,TIME,AMT,CMT,EVID,MDV,DV\n"


def _both_readers(text):
    """Both readers on the same text (each gets a fresh stream)."""
    return (
        lambda: ck.read_nonmem_events(io.StringIO(text), ["central"]),
        lambda: cio.read_nonmem_observations(io.StringIO(text), ["conc"]),
    )


@pytest.mark.parametrize(
    "body, match",
    [
        ("1,0,1,1,1.5,0,.\n", r"Line 2: column EVID = '1\.5' is not an integer\."),
        (
            "1,0,1,1,7,0,.\n",
            (
                r"Line 2: EVID = 7 is not supported \(not a NONMEM event type\); carkinetics reads EVID "
                r"0 \(observation\), 1 \(dose\), 2 \(other\), and NONMEM defines 0 to 4\."
            ),
        ),
        ("1,0,1,1,3,0,.\n", r"Line 2: EVID = 3 is not supported \(NONMEM's reset\); carkinetics reads EVID 0"),
        ("1,0,.,1,0,0.5,2\n", r"Line 2: column MDV = '0\.5' is not an integer\."),
        ("1,0,.,1,0,2,2\n", r"Line 2: column MDV = '2' must be 0 or 1\."),
        (
            "1,0,1,1,1,0,.,9\n",
            (
                r"Line 2 has 8 field\(s\) but the header has 7 columns \(ID, TIME, AMT, CMT, EVID, "
                r"MDV, DV\)"
            ),
        ),
        ("1,0,.,1,0,0,1.0\n1,1,.,1,0\n", r"Line 3 has 5 field\(s\) but the header has 7 columns"),
        ("1,0,1e999,1,1,0,.\n", r"Line 2: column AMT = '1e999' is not finite\."),
        (
            "1,0,.,1,0,0,1.0\n2,0,.,1,0,0,2.0\n1,1,.,1,0,0,3.0\n",
            (
                r"Line 4: ID 1 appears again after ID 2 \(its rows start on line 2\); the rows of each subject must be "
                r"contiguous"
            ),
        ),
    ],
)
def test_nonmem_readers_reject_malformed_rows(body, match):
    # Each check is the shared parser's, so both readers reject the row with the same message, including rows the
    # reader itself would skip (a dose row for the observation reader, an observation row for the event reader).
    for read in _both_readers(_HEADER + body):
        with pytest.raises(ValueError, match=match):
            read()


def test_nonmem_readers_name_the_line_of_a_non_numeric_amount_without_evid():
    # Without an EVID column, AMT decides dose or observation; a non-number there is reported with its line.
    for read in _both_readers("TIME,AMT,CMT,DV\n0,100,1,.\n1,ten,1,.\n"):
        with pytest.raises(ValueError, match=r"Line 3: column AMT = 'ten' is not a number\."):
            read()


def test_nonmem_readers_accept_a_byte_order_mark_and_reject_latin1(tmp_path):
    text = "ID,TIME,AMT,CMT,EVID,DV,MDV\n1,0,100,1,1,.,1\n1,0.5,.,1,0,1.8,0\n"
    bom = tmp_path / "bom.csv"
    bom.write_bytes(b"\xef\xbb\xbf" + text.encode("utf-8"))
    regimen = ck.read_nonmem_events(bom, ["central"])
    assert len(regimen) == 1 and float(regimen.doses[0].amount) == 100.0
    obs = cio.read_nonmem_observations(str(bom), ["conc"])
    assert obs.value.tolist() == [1.8] and obs.subject == ("1",)
    # the same through a text stream that kept the mark (opened with encoding="utf-8")
    with open(bom, encoding="utf-8", newline="") as fh:
        assert cio.read_nonmem_observations(fh, ["conc"]).value.tolist() == [1.8]
    # a Latin-1 file (a micro sign in a covariate) is not UTF-8: a ValueError naming the encoding and the line
    latin = tmp_path / "latin1.csv"
    latin.write_bytes(
        "ID,TIME,AMT,CMT,EVID,DV,MDV,UNIT\n1,0,100,1,1,.,1,mg\n1,0.5,.,1,0,1.8,0,\u00b5g/L\n".encode("latin-1")
    )
    match = r"latin1\.csv' is not UTF-8 text: byte 0xb5 on line 3, character 19 .*Save the file as UTF-8"
    for read in (
        lambda: ck.read_nonmem_events(latin, ["central"]),
        lambda: cio.read_nonmem_observations(latin, ["conc"]),
    ):
        with pytest.raises(ValueError, match=match):
            read()
    with (
        open(latin, encoding="utf-8") as fh,
        pytest.raises(
            ValueError,
            match=r"is not UTF-8 text: byte 0xb5 on "
            r"line 3",
        ),
    ):
        cio.read_nonmem_observations(fh, ["conc"])


def test_nonmem_readers_check_compartments_and_subjects():
    table = "ID,TIME,AMT,CMT,EVID,DV,MDV\n1,0,100,1,1,.,1\n1,0.5,.,2,0,1.8,0\n"
    with pytest.raises(
        ValueError,
        match=r"Line 3: unknown observation compartment CMT = '2'; valid values are "
        r"1\.\.1 \(1=conc\) or one of these names\.",
    ):
        cio.read_nonmem_observations(io.StringIO(table), ["conc"])
    with pytest.raises(ValueError, match=r"Line 2: unknown dose compartment CMT = '1\.5'"):
        ck.read_nonmem_events(io.StringIO("TIME,AMT,CMT\n0,1,1.5\n"), ["central"])
    with pytest.raises(ValueError, match=r"`subject_id` '7' is not in the table's IDs \['1'\]"):
        cio.read_nonmem_observations(io.StringIO(table), ["conc", "other"], subject_id="7")
    with pytest.raises(ValueError, match=r"`subject_id` 1 was given but the table has no ID column"):
        ck.read_nonmem_events(io.StringIO("TIME,AMT,CMT\n0,1,1\n"), ["central"], subject_id=1)
    with pytest.raises(ValueError, match=r"Line 2: column DV is empty; it is required for an observation record"):
        cio.read_nonmem_observations(io.StringIO("TIME,CMT,DV,EVID\n0,1,.,0\n"), ["conc"])
    with pytest.raises(ValueError, match=r"Line 2: SS = 1 \(steady-state dosing\) is not supported"):
        ck.read_nonmem_events(io.StringIO("TIME,AMT,CMT,SS,II\n0,1,1,1,1\n"), ["central"])
    with pytest.raises(ValueError, match=r"column TIME appears twice in the header"):
        ck.read_nonmem_events(io.StringIO("TIME,AMT,CMT,time\n0,1,1,0\n"), ["central"])
    # EVID 2 rows and MDV 1 observations are skipped; EVID written as 1.0 is the integer 1; blank lines are ignored
    text = "TIME,AMT,CMT,EVID,MDV,DV\n0,5,1,1.0,1,.\n\n0.5,.,1,2,1,.\n1,.,1,0,1,.\n2,.,1,0,0,0.25\n"
    assert [float(d.amount) for d in ck.read_nonmem_events(io.StringIO(text), ["central"]).doses] == [5.0]
    assert cio.read_nonmem_observations(io.StringIO(text), ["conc"]).time.tolist() == [2.0]
