"""Stein 2019 CK model: ODE vs closed form, derived quantities, breakpoints."""

import jax.numpy as jnp
import numpy as np
import pytest
from helpers import rel_err

import carkinetics as ck
from carkinetics.models import Stein2019CK, stein_closed_form

TS = jnp.array(
    [0.0, 0.5, 1.0, 3.0, 5.0, 7.0, 9.0, 9.3, 9.5, 12.0, 14.0, 21.0, 28.0, 42.0, 60.0, 90.0, 180.0, 365.0, 730.0]
)


def test_ode_matches_closed_form_table1():
    model = Stein2019CK()
    sol = ck.simulate(model, None, TS, rtol=1e-10, atol=1e-12)
    ref = stein_closed_form(model, TS)
    err = rel_err(sol.observables.transgene, ref)
    print(f"max relative error ODE vs closed form: {err:.2e}")
    assert err <= 1e-6


def test_ode_matches_closed_form_with_tocilizumab():
    model = Stein2019CK().replace(t_toci=5.7)  # median first tocilizumab day in Stein 2019
    sol = ck.simulate(model, None, TS, rtol=1e-10, atol=1e-12)
    ref = stein_closed_form(model, TS)
    assert rel_err(sol.observables.transgene, ref) <= 1e-6
    # F_toci = 1.2 raises the peak above Cmax: exp(0.2 * rho * (9.3 - 5.7))
    expected_peak = 24000.0 * np.exp(0.2 * np.log(3900.0) / 9.3 * 3.6)
    assert abs(float(stein_closed_form(model, 9.3)) / expected_peak - 1) < 1e-12


def test_derived_quantities_match_table1():
    m = Stein2019CK()
    # rho = ln(3900)/9.3 = 0.889/d; doubling time 0.78 d (abstract); contraction t1/2 4.3 d; terminal 217 d
    assert abs(float(m.rho) - 0.889) < 5e-4
    assert abs(np.log(2) / float(m.rho) - 0.78) < 5e-3
    assert abs(np.log(2) / m.alpha - 4.33) < 5e-3
    assert abs(np.log(2) / m.beta - 216.6) < 0.1
    assert float(stein_closed_form(m, 9.3)) == pytest.approx(24000.0, rel=1e-12)
    assert float(m.r0) == pytest.approx(24000.0 / 3900.0, rel=1e-12)


def test_closed_form_mapping_and_errors():
    m = Stein2019CK()
    d = {k: getattr(m, k) for k in ("foldx", "tmax", "cmax", "alpha", "fb", "beta")}
    np.testing.assert_allclose(stein_closed_form(d, TS), stein_closed_form(m.replace(f_toci=1.0), TS), rtol=1e-12)
    with pytest.raises(ValueError, match="lacks the Stein parameters"):
        stein_closed_form({"foldx": 10.0}, TS)
    assert Stein2019CK.breakpoint_parameters[0] == "tmax"
