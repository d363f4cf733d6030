"""Parameter recovery: populations simulated from known values are recovered within their standard errors.

Each test fixes its PRNG key, simulates a data set on a real design, fits from a perturbed start and checks every
reported quantity (typical values, Omega entries, residual parameters) against the truth in units of its standard
error (`z = (estimate - truth) / SE`).
"""

import math

import jax
import numpy as np
import pytest

import carkinetics as ck
from carkinetics.models import OneCompartmentOralPK, Stein2019CK

TRUTH = OneCompartmentOralPK(ka=1.5 * 24, cl=2.75 * 24, v=31.5)


def _design(n):
    data = ck.read_population_data(ck.example_data("theophylline"), TRUTH, time_unit="h")
    return data.take(np.arange(n) % 12)


def _z_scores(fit, theta, omega, sigma):
    z = {f"theta.{k}": (fit.theta[k] - v) / fit.se["theta"][k] for k, v in theta.items()}
    names = fit.random
    for i, a in enumerate(names):
        for j in range(i + 1):
            key = a if i == j else f"{a},{names[j]}"
            if key in fit.se["omega"]:
                z[f"omega.{key}"] = (fit.omega[i, j] - omega[i, j]) / fit.se["omega"][key]
    z.update({f"sigma.{k}": (fit.sigma[k] - v) / fit.se["sigma"][k] for k, v in sigma.items()})
    return z


# slow: a 96-subject full-Omega FOCEi fit with its own compilations (~40 s) would put the default suite of the
# population tests over 90 s on 2 cores
@pytest.mark.slow
def test_oral_full_omega_combined_error():
    """96 subjects on the theophylline design, correlated IIV on ka, CL, V (full Omega), combined error."""
    omega = np.array([[0.40, 0.02, 0.03], [0.02, 0.07, 0.02], [0.03, 0.02, 0.02]])
    truth = ck.PopulationProblem(
        TRUTH, _design(96), ["ka", "cl", "v"], omega=omega, blocks="full", error=ck.CombinedError(sd=0.3, cv=0.08)
    )
    data, _ = truth.simulate(jax.random.key(1))
    start = OneCompartmentOralPK(ka=1.0 * 24, cl=3.5 * 24, v=25.0)
    problem = ck.PopulationProblem(
        start, data, {"ka": 0.3, "cl": 0.2, "v": 0.1}, blocks="full", error=ck.CombinedError(sd=0.5, cv=0.2)
    )
    fit = ck.fit_population(problem, "focei")
    assert fit.converged, fit.message
    z = _z_scores(fit, {"ka": 36.0, "cl": 66.0, "v": 31.5}, omega, {"sd": 0.3, "cv": 0.08})
    assert len(z) == 11
    bad = {k: round(v, 2) for k, v in z.items() if abs(v) > 2.5}
    assert not bad, bad  # every estimate within 2.5 standard errors of the truth


@pytest.mark.slow
def test_m3_recovers_what_dropping_blq_biases():
    """120 subjects, additive error, 29 % of the samples below an LLOQ of 3.5 mg/L. The M3 likelihood recovers
    every parameter within 1 SE; dropping the BLQ records biases clearance low by more than 2 SE."""
    truth = ck.PopulationProblem(TRUTH, _design(120), {"ka": 0.4, "cl": 0.07, "v": 0.02}, error=ck.AdditiveError(0.5))
    data, _ = truth.simulate(jax.random.key(6))
    censored = data.censor_below(3.5)
    assert 0.25 < censored.n_censored / censored.n_observations < 0.33
    start = OneCompartmentOralPK(ka=1.0 * 24, cl=3.5 * 24, v=25.0)
    fits = {}
    for label, d in (("m3", censored), ("drop", censored.without_censored())):
        problem = ck.PopulationProblem(start, d, {"ka": 0.3, "cl": 0.2, "v": 0.1}, error=ck.AdditiveError(0.8))
        fits[label] = ck.fit_population(problem, "focei")
        assert fits[label].converged, fits[label].message
    omega = np.diag([0.4, 0.07, 0.02])
    theta = {"ka": 36.0, "cl": 66.0, "v": 31.5}
    z_m3 = _z_scores(fits["m3"], theta, omega, {"sd": 0.5})
    z_drop = _z_scores(fits["drop"], theta, omega, {"sd": 0.5})
    assert max(abs(v) for v in z_m3.values()) < 1.0, z_m3
    assert z_drop["theta.cl"] < -2.0, z_drop


STEIN_OMEGA = {"foldx": 2.4, "tmax": 0.38, "cmax": 0.65, "alpha": 0.91, "fb": 0.80, "beta": 0.86}


@pytest.mark.slow
@pytest.mark.xfail(
    strict=False,
    reason="known gap: on 90 simulated Stein 2019 patients SAEM recovers the typical "
    "values but overestimates the variances of cmax and fb and the residual error, and Louis' "
    "information is not positive definite (docs/population_fitting.md, 'Known limits')",
)
def test_stein_2019_published_variability_90_patients():
    """90 virtual patients from the Stein 2019 typical values and between-patient variances (Table 1), 12 qPCR
    samples each over a year, log-normal residual error 0.56: SAEM (the model is piecewise in tmax, so FOCEi's
    second-order expansion does not apply) recovers typical values, variances and residual error within 2.5 SE."""
    import io

    days = [1, 4, 7, 9, 11, 14, 21, 28, 56, 91, 182, 365]
    table = "ID,TIME,DV\n" + "".join(f"{i},{t},1\n" for i in range(1, 91) for t in days)
    model = Stein2019CK()
    data = ck.read_population_data(io.StringIO(table), model)
    truth = ck.PopulationProblem(model, data, STEIN_OMEGA, error=ck.LogAdditiveError(0.56))
    sim, _ = truth.simulate(jax.random.key(2019))
    start = ck.replace(model, {"foldx": 2000.0, "tmax": 8.0, "cmax": 15000.0, "alpha": 0.2, "fb": 0.012, "beta": 0.004})
    problem = ck.PopulationProblem(start, sim, {k: 0.5 for k in STEIN_OMEGA}, error=ck.LogAdditiveError(0.8))
    fit = ck.fit_population(problem, "saem", key=jax.random.key(0), chains=2, importance_samples=0)
    theta = {n: float(ck.get_parameter(model, n)) for n in STEIN_OMEGA}
    z = _z_scores(fit, theta, np.diag(list(STEIN_OMEGA.values())), {"sd": 0.56})
    bad = {k: round(v, 2) for k, v in z.items() if not abs(v) <= 2.5}
    assert not bad, bad
    assert math.isfinite(fit.ofv)


@pytest.mark.slow
def test_indometacin_two_compartment_beats_one_compartment():
    """R's Indometh (6 subjects, IV): the biexponential decline needs two compartments; both fits converge and the
    two-compartment OFV is lower by far more than the 3.84 x 2 of two extra parameters with variability."""
    from carkinetics.models import OneCompartmentPK, TwoCompartmentPK

    fits = {}
    for name, model, random in (
        ("one", OneCompartmentPK(cl=200.0, v=20.0), {"cl": 0.1, "v": 0.1}),
        ("two", TwoCompartmentPK(cl=200.0, v1=8.0, q=150.0, v2=20.0), {"cl": 0.1, "v1": 0.1, "q": 0.1, "v2": 0.1}),
    ):
        data = ck.read_population_data(ck.example_data("indometacin"), model, time_unit="h")
        problem = ck.PopulationProblem(model, data, random, error=ck.CombinedError(0.05, 0.1))
        fits[name] = ck.fit_population(problem, "focei")
        assert fits[name].converged, fits[name].message
    assert fits["one"].ofv - fits["two"].ofv > 20.0
