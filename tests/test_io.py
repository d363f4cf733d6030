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
        assert "measurement_files: [measurements.tsv]" in fh.read()
    back = cio.read_petab(yaml_path, model=model)
    assert back == prob
    # parameter rows come from the metadata: estimated cl on log10 scale within 100-fold of its value
    cl = next(p for p in back.parameters if p.parameter_id == "cl")
    assert (cl.scale, cl.estimate) == ("log10", True)
    assert cl.lower == pytest.approx(5.41 * 24 / 100, rel=1e-12) and cl.upper == pytest.approx(5.41 * 24 * 100, rel=1e-12)
    t, y = back.measurement_arrays("low", "conc")
    np.testing.assert_array_equal(t, [0.25, 0.5])
    np.testing.assert_array_equal(y, [1.3, 0.9])
    m = back.apply(model, "high")
    assert float(m.v) == 20.0 and float(m.cl) == pytest.approx(5.41 * 24, rel=1e-12)


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda p: p.replace("\tlow\t0.5\t", "\tnowhere\t0.5\t", 1), "simulationConditionId 'nowhere'"),
        (lambda p: p.replace("\t0.9\t", "\tabc\t", 1), "line 2, column measurement"),
        (lambda p: p.replace("\t0.9\t", "\t-1.0\t", 1), "must be positive for the log-transformed"),
    ],
)
def test_petab_measurement_errors_name_the_problem(tmp_path, edit, message):
    cio.write_petab(_problem(OneCompartmentPK()), tmp_path)
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
        cio.PetabProblem(prob.measurements, prob.parameters,
                         (cio.PetabCondition("low", "", {"k_unknown": 1.0}), prob.conditions[1]),
                         prob.observables).validate(model)
    bad_par = prob.parameters[0]._replace(lower=-1.0)
    with pytest.raises(ValueError, match="log10-scaled parameter 'cl' needs lowerBound > 0"):
        cio.PetabProblem(prob.measurements, (bad_par, *prob.parameters[1:]), prob.conditions,
                         prob.observables).validate()
    with pytest.raises(ValueError, match="Unknown parameter 'nope'"):
        cio.petab_parameters_from_model(model, estimate=["nope"])
    with pytest.raises(ValueError, match="does not exist"):
        cio.read_petab("/nonexistent/petab")


def test_nonmem_dataset_round_trip():
    model = TwoCompartmentPK()
    regimen = ck.Regimen([ck.Bolus(0.0, 100.0, "central", ii=1.0, addl=2), ck.Infusion(0.5, "peripheral", rate=40.0, duration=0.25)])
    ts = jnp.array([0.0, 0.5, 1.0, 2.5])
    sol = ck.simulate(model, regimen, ts)
    obs = cio.observations_from_solution(sol)
    buf = io.StringIO()
    cio.write_nonmem_dataset(buf, regimen=regimen, compartments=model.state_names(), observations=obs,
                             observables=model.observable_names())
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
        cio.write_nonmem_dataset(io.StringIO(), regimen=ck.Regimen([ck.FractionalKill(0.0, 0.5, ["a"])]),
                                 compartments=["a"])
    obs = cio.read_nonmem_observations(
        io.StringIO("ID,TIME,CMT,DV,MDV,EVID\n1,1,a,2.0,0,0\n1,2,1,3.0,1,0\n2,1,1,5.0,0,0\n"), ["a"], subject_id="2")
    assert obs.value.tolist() == [5.0] and obs.subject == ("2",) and math.isclose(obs.time[0], 1.0)
