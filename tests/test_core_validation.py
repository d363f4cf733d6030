"""Every bad input raises a ValueError whose message names the argument (and the offending value)."""

import io
import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import carkinetics as ck
from carkinetics.models import OneCompartmentPK

TS = jnp.linspace(0.0, 1.0, 5)


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: ck.Bolus(0.0, -1.0, "central"), r"`amount` must be non-negative, got -1\.0"),
        (lambda: ck.Bolus(float("nan"), 1.0, "central"), r"`time` must be finite"),
        (lambda: ck.Infusion(0.0, "central", duration=-0.1, amount=1.0), r"`duration` must be positive, got -0\.1"),
        (lambda: ck.Infusion(0.0, "central", duration=0.0, amount=1.0), r"`duration` must be positive, got 0\.0"),
        (lambda: ck.Infusion(0.0, "central", duration=1.0, rate=-5.0), r"`rate` must be non-negative, got -5\.0"),
        (lambda: ck.Infusion(0.0, "central", duration=1.0), r"exactly one of `rate` and `amount`"),
        (lambda: ck.Bolus(0.0, 1.0, "central", addl=2), r"`ii` must be positive, got 0\.0"),
        (lambda: ck.Bolus(0.0, 1.0, "central", ii=1.0, addl=-1), r"`addl` .* got -1"),
        (lambda: ck.FractionalKill(0.0, 1.5, ["central"]), r"`fraction` must be at most 1, got 1\.5"),
        (lambda: ck.car_t_infusion(cells_per_kg=1e6), r"`cells_per_kg` and `weight_kg` are both required"),
        (lambda: ck.fludarabine(-25.0), r"`dose_mg_per_m2` must be non-negative, got -25\.0"),
        (lambda: ck.bsa_mosteller(-70.0, 170.0), r"`weight_kg` must be positive, got -70\.0"),
    ],
)
def test_bad_dose_arguments_raise(make, match):
    with pytest.raises(ValueError, match=match):
        make()


@pytest.mark.parametrize(
    "ts, match",
    [
        (jnp.array([0.0, 2.0, 1.0]), r"`ts` must be sorted .* ts\[1\] = 2\.0 > ts\[2\] = 1\.0"),
        (jnp.array([0.0, jnp.nan]), r"`ts` must be finite"),
        (jnp.array([0.0, jnp.inf]), r"`ts` must be finite"),
        (jnp.zeros((0,)), r"`ts` must be a non-empty 1-D array"),
        (jnp.zeros((2, 2)), r"`ts` must be a non-empty 1-D array"),
    ],
)
def test_bad_save_times_raise(ts, match):
    with pytest.raises(ValueError, match=match):
        ck.simulate(OneCompartmentPK(), None, ts)


def test_ts_before_explicit_start_raises():
    with pytest.raises(ValueError, match=r"`t0` = 0\.5 is later than the first save time ts\[0\] = 0\.0"):
        ck.simulate(OneCompartmentPK(), ck.Bolus(1.0, 1.0, "central"), TS, t0=0.5)


def test_dose_before_explicit_start_raises():
    with pytest.raises(ValueError, match=r"`t0` = 0\.0 is later than the first dose event at t = -1\.0"):
        ck.simulate(OneCompartmentPK(), ck.Bolus(-1.0, 1.0, "central"), TS, t0=0.0)


def test_unknown_state_name_raises_with_valid_names():
    with pytest.raises(ValueError, match=r"Unknown state\(s\) \['centrall'\] .* valid states .* \['central'\]"):
        ck.simulate(OneCompartmentPK(), ck.Bolus(0.0, 1.0, "centrall"), TS)


@pytest.mark.parametrize(
    "value, match", [(-1.0, r"'cl' = -1\.0 L/d is outside its declared bounds"), (float("nan"), r"'cl' must be finite")]
)
def test_bad_parameter_values_raise(value, match):
    with pytest.raises(ValueError, match=match):
        OneCompartmentPK().replace(cl=value)
    # also when constructed directly and passed to simulate
    with pytest.raises(ValueError, match=match):
        ck.simulate(OneCompartmentPK(cl=value), None, TS)


def test_bad_parameter_inside_jit_raises_via_error_if():
    @eqx.filter_jit
    def f(cl):
        return ck.simulate(OneCompartmentPK(cl=cl), ck.Bolus(0.0, 1.0, "central"), TS).ys.central

    assert float(f(jnp.asarray(100.0))[0]) == pytest.approx(1.0)
    with pytest.raises(eqx.EquinoxRuntimeError, match=r"Parameter 'cl' is non-finite or outside"):
        f(jnp.asarray(-1.0)).block_until_ready()


def test_negative_traced_dose_raises_via_error_if():
    @eqx.filter_jit
    def f(a):
        return ck.simulate(OneCompartmentPK(), ck.Bolus(0.0, a, "central"), TS).ys.central

    with pytest.raises(eqx.EquinoxRuntimeError, match=r"`amount` is non-finite or out of range"):
        f(jnp.asarray(-3.0)).block_until_ready()


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(rtol=0.0), r"`rtol` must be a positive finite number, got 0\.0"),
        (dict(atol=-1.0), r"`atol` must be a positive finite number, got -1\.0"),
        (dict(max_steps=0), r"`max_steps` must be a positive int \(steps per member over the whole horizon\), got 0"),
        (dict(adjoint="forward"), r"`adjoint` must be None or a diffrax adjoint"),
        (dict(solver="tsit5"), r"`solver` must be a diffrax solver such as diffrax\.Tsit5\(\) or an ensemble method"),
    ],
)
def test_bad_solver_options_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ck.simulate(OneCompartmentPK(), None, TS, **kwargs)


@pytest.mark.parametrize("engine", ["simulate", "simulate_ensemble"])
def test_tolerances_may_be_traced(engine):
    # Tolerances as arguments of a jitted function: one trace serves every value, the result is the one the same
    # tolerance gives as a Python number, a tighter tolerance changes it, and a bad traced value fails at run time.
    regimen = ck.Bolus(0.0, 100.0, "central")
    traces = []

    def solve(rtol, atol):
        traces.append(1)
        if engine == "simulate":
            return ck.simulate(OneCompartmentPK(), regimen, TS, rtol=rtol, atol=atol).y_array
        models = jax.vmap(lambda _: OneCompartmentPK())(jnp.arange(2))
        return ck.simulate_ensemble(models, regimen, TS, rtol=rtol, atol=atol).y_array

    jitted = jax.jit(solve)
    loose, tight = jitted(1e-3, 1e-5), jitted(1e-10, 1e-12)
    assert len(traces) == 1
    np.testing.assert_allclose(tight, solve(1e-10, 1e-12), rtol=1e-12, atol=0.0)
    np.testing.assert_allclose(loose, solve(np.float64(1e-3), jnp.asarray(1e-5)), rtol=1e-12, atol=0.0)
    assert 1e-7 < float(jnp.max(jnp.abs(loose - tight))) < 1e-1  # the tolerance is used, not baked in
    with pytest.raises(Exception, match=r"`atol` must be a positive finite number"):
        jax.block_until_ready(jitted(1e-6, -1.0))
    with pytest.raises(ValueError, match=r"`rtol` must be a positive finite number or a floating-point scalar"):
        jax.jit(lambda r: solve(r, 1e-8))(jnp.ones(2) * 1e-6)
    with pytest.raises(ValueError, match=r"`rtol` must be a positive finite number, got Array\(\[1"):
        solve(jnp.ones(1), 1e-8)


def test_bad_model_and_regimen_types_raise():
    with pytest.raises(ValueError, match=r"`model` must be a carkinetics AbstractKineticModel, got dict"):
        ck.simulate({}, None, TS)
    with pytest.raises(ValueError, match=r"`regimen` must be a Regimen, a dose or None, got list"):
        ck.simulate(OneCompartmentPK(), [ck.Bolus(0.0, 1.0, "central")], TS)


# ---- NONMEM-style tables --------------------------------------------------------------------------------------------


def _read(text, comps=("depot", "central")):
    return ck.read_nonmem_events(io.StringIO(text), comps)


def test_nonmem_reader_builds_bolus_infusion_and_repeats():
    text = (
        "ID,TIME,AMT,CMT,EVID,RATE,II,ADDL,DV\n"
        "1,-5,45,2,1,90,1,2,.\n"  # 45 mg at 90 mg/d (0.5 d) on days -5,-4,-3
        "1,0,100,central,1,0,0,0,.\n"  # bolus by name
        "1,1,.,2,0,.,.,.,3.2\n"  # observation: skipped
    )
    reg = _read(text)
    assert len(reg) == 2
    inf, bol = reg.doses
    assert isinstance(inf, ck.Infusion) and inf.state == "central" and inf.addl == 2
    assert float(inf.duration) == pytest.approx(0.5) and float(inf.ii) == 1.0
    assert isinstance(bol, ck.Bolus) and float(bol.amount) == 100.0
    # round trip through the writer
    buf = io.StringIO()
    ck.write_nonmem_events(reg, buf, ("depot", "central"))
    again = _read(buf.getvalue())
    assert float(again.doses[0].rate) == pytest.approx(90.0) and again.doses[1].state == "central"


@pytest.mark.parametrize(
    "row, match",
    [
        ("0,100,3,1", r"Line 2: unknown dose compartment CMT = '3'; valid values are 1\.\.2 \(1=depot, 2=central\)"),
        (
            "0,100,blood,1",
            r"Line 2: unknown dose compartment CMT = 'blood'; valid values are 1\.\.2 \(1=depot, "
            r"2=central\) or one of these names",
        ),
        ("0,-5,1,1", r"Line 2: AMT = -5\.0 is negative"),
        ("zero,5,1,1", r"Line 2: column TIME = 'zero' is not a number"),
        ("0,5,1,4", r"Line 2: EVID = 4 is not supported"),
        ("0,5,,1", r"Line 2: CMT is empty"),
    ],
)
def test_nonmem_reader_rejects_malformed_rows(row, match):
    with pytest.raises(ValueError, match=match):
        _read("TIME,AMT,CMT,EVID\n" + row + "\n")


def test_nonmem_reader_rejects_missing_columns_and_multiple_subjects():
    with pytest.raises(ValueError, match=r"lacks required column\(s\) \['CMT'\]"):
        _read("TIME,AMT\n0,1\n")
    with pytest.raises(ValueError, match=r"several subjects \['1', '2'\]; choose one with `subject_id`"):
        _read("ID,TIME,AMT,CMT\n1,0,1,1\n2,0,1,1\n")
    reg = ck.read_nonmem_events(io.StringIO("ID,TIME,AMT,CMT\n1,0,1,1\n2,0,7,1\n"), ["central"], subject_id="2")
    assert float(reg.doses[0].amount) == 7.0
    with pytest.raises(ValueError, match=r"RATE = -2\.0 \(modelled rate/duration\) is not supported"):
        _read("TIME,AMT,CMT,RATE\n0,1,1,-2\n")


def test_nonmem_table_simulates_like_the_equivalent_regimen():
    text = "TIME,AMT,CMT,EVID,RATE,II,ADDL\n0,100,1,1,0,1,3\n"
    reg = ck.read_nonmem_events(io.StringIO(text), OneCompartmentPK.state_names())
    ts = jnp.linspace(0.0, 4.0, 17)
    a = ck.simulate(OneCompartmentPK(), reg, ts).ys.central
    b = ck.simulate(OneCompartmentPK(), ck.Bolus(0.0, 100.0, "central", ii=1.0, addl=3), ts).ys.central
    assert float(jnp.max(jnp.abs(a - b))) <= 1e-12


# ---- clinical regimen helpers ---------------------------------------------------------------------------------------


def test_clinical_regimen_helpers_compute_amounts_and_days():
    bsa = ck.bsa_mosteller(70.0, 170.0)
    assert bsa == pytest.approx(math.sqrt(170 * 70 / 3600), rel=1e-12)
    assert ck.bsa_dubois(70.0, 170.0) == pytest.approx(0.007184 * 70**0.425 * 170**0.725, rel=1e-12)
    flu = ck.fludarabine(25.0, (-5, -4, -3), bsa_m2=bsa)
    assert [float(d.start) for d in flu.doses] == [-5.0, -4.0, -3.0]
    assert all(float(d.amount) == pytest.approx(25.0 * bsa, rel=1e-12) for d in flu.doses)
    assert float(flu.doses[0].duration) == pytest.approx(30 / 1440)
    cy = ck.cyclophosphamide(1000.0, (-3,), bsa_m2=bsa)
    assert float(cy.doses[0].amount) == pytest.approx(1000.0 * bsa, rel=1e-12)
    car = ck.car_t_infusion(cells_per_kg=1e6, weight_kg=70.0)
    assert float(car.amount) == pytest.approx(7e7) and float(car.time) == 0.0
    assert float(ck.car_t_infusion(cells=5e7, day=1.0).amount) == 5e7
    reg = flu + cy + car
    assert len(reg) == 5 and reg.state_names() == {"flu_central", "cy_central", "car_effector"}
    assert float(reg.first_time()) == -5.0
    np.testing.assert_allclose(np.asarray(ck.Bolus(1.0, 1.0, "x", ii=2.0, addl=2).times()), [1.0, 3.0, 5.0])
