"""Regression tests for silent wrong results and unclear errors in the core: doses shorter than the clock's
resolution, implausible tolerances and body sizes."""

import os
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest

import carkinetics as ck
from carkinetics.models import OneCompartmentPK

SLOW_CL = OneCompartmentPK(cl=1e-9, v=1.0)  # essentially no elimination: the state is the delivered amount


@pytest.mark.parametrize("solver", [None, ck.EnsembleTsit5()], ids=["diffrax", "ensemble"])
def test_infusion_below_float64_resolution_is_delivered_as_a_bolus_with_a_warning(solver):
    # float64 resolves ~1e-13 d at day 1000; a 1e-9 s infusion rounds to zero length.
    reg = ck.Regimen([ck.Infusion(1000.0, "central", amount=10.0, duration=1e-9 / 86400)])
    with pytest.warns(UserWarning, match="shorter than the time resolution of float64"):
        sol = ck.simulate(SLOW_CL, reg, jnp.array([999.0, 1001.0]), solver=solver, rtol=1e-8)
    assert float(sol.ys.central[-1]) == pytest.approx(10.0, rel=1e-8)


_FLOAT32_SCRIPT = r"""
import warnings, json
import jax
jax.config.update("jax_enable_x64", False)
import jax.numpy as jnp, carkinetics as ck
from carkinetics.models import OneCompartmentPK
m = OneCompartmentPK(cl=1e-9, v=1.0)
out = []
for t0, seconds in ((1000.0, 1.0), (-5.0, 0.1), (730.0, 60.0)):
    reg = ck.Regimen([ck.Infusion(t0, "central", amount=10.0, duration=seconds / 86400)])
    for solver in (None, ck.EnsembleTsit5()):
        with warnings.catch_warnings(record=True) as w:
            warnings.simplefilter("always")
            sol = ck.simulate(m, reg, jnp.array([t0 - 1.0, t0 + 1.0]), solver=solver, rtol=1e-5)
        out.append([t0, seconds, solver is None, float(sol.ys.central[-1]), bool(sol.ok),
                    any("time resolution" in str(x.message) for x in w)])
print(json.dumps(out))
"""


def test_short_infusions_deliver_their_amount_in_float32():
    env = dict(os.environ, JAX_ENABLE_X64="0", JAX_PLATFORMS="cpu")
    res = subprocess.run([sys.executable, "-c", _FLOAT32_SCRIPT], capture_output=True, text=True, env=env, timeout=600)
    assert res.returncode == 0, res.stderr
    import json

    rows = json.loads(res.stdout.strip().splitlines()[-1])
    assert len(rows) == 6
    for t0, seconds, _, delivered, ok, warned in rows:
        assert ok
        # float32 keeps ~7 digits: the full 10 mg arrives (it used to be 0 mg, 8.24 mg and 9.67 mg)
        assert delivered == pytest.approx(10.0, rel=1e-5), (t0, seconds)
        # only a window below the clock's resolution at its day warns: 1 s at day 1000 (float32 resolves ~5 s
        # there); 0.1 s at day -5 (resolution ~0.04 s) and 60 s at day 730 are resolved, if coarsely
        assert warned == (t0 == 1000.0), (t0, seconds)


@pytest.mark.parametrize(
    "kw, msg",
    [
        (dict(rtol=1.5), r"`rtol` = 1.5 must be below 1"),
        (dict(atol=0.0), r"`atol` must be a positive finite number"),
    ],
)
def test_implausible_tolerances_are_rejected(kw, msg):
    for solver in (None, ck.EnsembleTsit5()):
        with pytest.raises(ValueError, match=msg):
            ck.simulate(OneCompartmentPK(), None, jnp.linspace(0.0, 1.0, 3), solver=solver, **kw)


@pytest.mark.parametrize(
    "call, msg",
    [
        (lambda: ck.bsa_mosteller(70.0, 1.7), r"`height_cm` = 1.7 cm is outside .*1.7 m = 170 cm"),
        (lambda: ck.bsa_dubois(70_000.0, 170.0), r"`weight_kg` = 70000 kg is outside .*70000 g = 70 kg"),
        (lambda: ck.car_t_infusion(cells_per_kg=1e6, weight_kg=154.0 * 1000), r"`weight_kg` = 154000 kg"),
        (lambda: ck.fludarabine(25.0), r"`bsa_m2` is required for fludarabine"),
        (lambda: ck.cyclophosphamide(1000.0, bsa_m2=18.0), r"`bsa_m2` = 18 m² for cyclophosphamide is outside"),
    ],
)
def test_body_size_mistakes_name_the_likely_unit(call, msg):
    with pytest.raises(ValueError, match=msg):
        call()


def test_rtol_below_dtype_resolution_warns():
    with pytest.warns(UserWarning, match=r"`rtol` = 1e-17 is below the resolution of float64"):
        ck.simulate(
            OneCompartmentPK(),
            ck.Bolus(0.0, 1.0, "central"),
            jnp.linspace(0.0, 0.1, 3),
            rtol=1e-17,
            max_steps=2_000,
            throw=False,
        )


def test_plausible_body_sizes_pass():
    assert ck.bsa_mosteller(70.0, 170.0) == pytest.approx(np.sqrt(170.0 * 70.0 / 3600.0), rel=1e-12)
    assert ck.car_t_infusion(cells_per_kg=1e6, weight_kg=70.0).amount == pytest.approx(7e7)


@pytest.mark.parametrize("solver", [None, ck.EnsembleTsit5()], ids=["diffrax", "ensemble"])
def test_failed_solve_is_diagnosed(solver):
    bolus = ck.Bolus(0.0, 100.0, "central")
    # v = 0 is allowed by the declared bounds but divides by zero: the message says so instead of "max_steps"
    with pytest.raises(ck.SimulationError, match=r"vector field is not finite at t = 0 d .*v = 0 L \(its bound\)"):
        ck.simulate(OneCompartmentPK(v=0.0), bolus, jnp.linspace(0.0, 1.0, 3), solver=solver)
    with pytest.raises(ck.SimulationError, match=r"may be stiff for this solver .*max_steps = 20"):
        ck.simulate(OneCompartmentPK(cl=1e5), bolus, jnp.linspace(0.0, 1.0, 3), solver=solver, max_steps=20)


def test_ensemble_failure_names_the_member():
    models = ck.batch_models(OneCompartmentPK(), {"v": np.array([10.0, 0.0, 5.0])})
    with pytest.raises(ck.SimulationError, match=r"1 of 3 members failed; member 1: .*not finite"):
        ck.simulate_ensemble(models, ck.Bolus(0.0, 100.0, "central"), jnp.linspace(0.0, 1.0, 3))
    sol = ck.simulate_ensemble(models, ck.Bolus(0.0, 100.0, "central"), jnp.linspace(0.0, 1.0, 3), throw=False)
    assert sol.message[0] == "successful" and sol.message[1] != "successful"


def test_sweep_model_rejects_bad_save_times_with_a_value_error():
    with pytest.raises(ValueError, match="sorted in non-decreasing order"):
        ck.sweep_model(
            OneCompartmentPK(), None, jnp.array([0.0, 2.0, 1.0]), {"cl": np.array([1.0, 2.0])}, progress=False
        )
