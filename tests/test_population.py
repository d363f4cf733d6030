"""Virtual populations: IIV moments and correlation, covariate power models, bounded (logit) parameters,
posterior draws, percentile bands, and the hand-off to sweep_model."""

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import carkinetics as ck
from carkinetics.models import OneCompartmentPK

N = 20_000  # sampling error of a mean of N(0, s^2): s / sqrt(N) = 0.007 s


class _Fraction(ck.AbstractKineticModel):
    """Test-only model with a parameter bounded on both sides."""

    class State(NamedTuple):
        x: object

    class Observables(NamedTuple):
        x: object

    state_units = {"x": "1"}
    observable_units = {"x": "1"}
    f: float = ck.param(0.8, unit="1", description="a fraction", source="test value", tag="A", upper=1.0)

    def initial_state(self):
        return self.State(x=1.0)

    def __call__(self, t, y, args):
        return self.State(x=-self.f * y.x)

    def observe(self, t, y):
        return self.Observables(x=y.x)


def test_lognormal_iiv_moments_and_correlation():
    m = OneCompartmentPK()
    pop = ck.virtual_population(
        m, jax.random.key(0), N, omega={"cl": 0.3, "v": 0.2}, correlation=[[1.0, 0.5], [0.5, 1.0]]
    )
    lcl = np.log(pop.samples["cl"] / m.cl)
    lv = np.log(pop.samples["v"] / m.v)
    # 4-5 standard errors as tolerances (fixed key): mean 0, SD omega, correlation 0.5.
    assert abs(lcl.mean()) < 0.01 and abs(lv.mean()) < 0.007
    assert np.std(lcl) == pytest.approx(0.3, rel=0.03) and np.std(lv) == pytest.approx(0.2, rel=0.03)
    assert np.corrcoef(lcl, lv)[0, 1] == pytest.approx(0.5, abs=0.03)
    np.testing.assert_allclose(lcl, pop.eta[:, 0], atol=1e-10)  # eta is exactly log(theta / theta_typ)
    assert pop.names == ("cl", "v")


def test_covariance_form_equals_omega_form():
    m = OneCompartmentPK()
    a = ck.virtual_population(
        m, jax.random.key(3), 50, omega={"cl": 0.3, "v": 0.2}, correlation=[[1.0, -0.4], [-0.4, 1.0]]
    )
    b = ck.virtual_population(m, jax.random.key(3), 50, covariance=[[0.09, -0.024], [-0.024, 0.04]], names=["cl", "v"])
    np.testing.assert_allclose(a.samples["cl"], b.samples["cl"], rtol=1e-12)
    np.testing.assert_allclose(a.samples["v"], b.samples["v"], rtol=1e-12)


def test_covariate_power_model_exact():
    cov = ck.sample_covariates(jax.random.key(1), 200)
    m = OneCompartmentPK()
    pop = ck.virtual_population(
        m,
        jax.random.key(2),
        200,
        covariates=cov,
        effects=[ck.CovariateEffect("cl", "weight_kg", 0.75, 70.0), ck.CovariateEffect("v", "weight_kg", 1.0, 70.0)],
    )
    np.testing.assert_allclose(pop.samples["cl"], m.cl * (cov["weight_kg"] / 70.0) ** 0.75, rtol=1e-12)
    np.testing.assert_allclose(pop.samples["v"], m.v * cov["weight_kg"] / 70.0, rtol=1e-12)
    np.testing.assert_allclose(cov["bsa_m2"], np.sqrt(cov["weight_kg"] * cov["height_cm"] / 3600.0), rtol=1e-14)
    assert ck.bsa_mosteller(float(cov["weight_kg"][0]), float(cov["height_cm"][0])) == pytest.approx(
        float(cov["bsa_m2"][0]), rel=1e-12
    )


def test_covariate_distribution():
    cov = ck.sample_covariates(jax.random.key(4), N, weight_kg=(80.0, 0.25), height_cm=(165.0, 0.04), correlation=0.3)
    assert np.median(cov["weight_kg"]) == pytest.approx(80.0, rel=0.01)
    assert np.std(np.log(cov["height_cm"])) == pytest.approx(0.04, rel=0.03)
    assert np.corrcoef(np.log(cov["weight_kg"]), np.log(cov["height_cm"]))[0, 1] == pytest.approx(0.3, abs=0.03)


def test_bounded_parameter_stays_in_bounds_logit_normal():
    pop = ck.virtual_population(_Fraction(), jax.random.key(5), N, omega={"f": 1.0})
    f = pop.samples["f"]
    assert np.all((f > 0) & (f < 1))
    logit = np.log(f / (1 - f))
    assert logit.mean() == pytest.approx(np.log(0.8 / 0.2), abs=0.03)
    assert np.std(logit) == pytest.approx(1.0, rel=0.03)


def test_sample_posterior_recovers_mean_and_covariance():
    m = OneCompartmentPK()
    space = ck.ParameterSpace(m, ["cl", "v"])
    mean = np.log([100.0, 40.0])
    cov = np.array([[0.04, 0.01], [0.01, 0.09]])
    pop = ck.sample_posterior(m, jax.random.key(6), N, mean, cov, space=space)
    z = np.log(np.stack([pop.samples["cl"], pop.samples["v"]], axis=1))
    np.testing.assert_allclose(z.mean(axis=0), mean, atol=0.01)
    np.testing.assert_allclose(np.cov(z.T), cov, atol=0.004)
    same = ck.sample_posterior(m, jax.random.key(6), N, mean, cov, names=["cl", "v"])
    np.testing.assert_allclose(same.samples["cl"], pop.samples["cl"], rtol=1e-12)


def test_population_into_sweep_model_and_bands():
    m = OneCompartmentPK()
    pop = ck.virtual_population(m, jax.random.key(7), 12, omega={"v": 0.3})
    ts = jnp.linspace(0.0, 1.0, 6)
    # the Population itself is swept (its samples)
    res = ck.sweep_model(
        m, ck.Bolus(0.0, 100.0, "central"), ts, pop, chunk_size=8, progress=False, keep_trajectories=True
    )
    assert res.n_members == 12 and res.n_chunks == 2
    np.testing.assert_allclose(res.outputs["concentration_cmax"], 100.0 / pop.samples["v"], rtol=1e-12)
    bands = ck.percentile_bands(res.outputs["observables"][:, :, 0], (5, 50, 95), ok=res.ok)
    assert bands.shape == (3, 6)
    np.testing.assert_allclose(bands[1, 0], np.median(100.0 / pop.samples["v"]), rtol=1e-12)
    np.testing.assert_allclose(ck.percentile_bands(np.arange(12.0).reshape(4, 3), (50,)), [[4.5, 5.5, 6.5]])
    np.testing.assert_allclose(
        ck.percentile_bands(np.arange(12.0).reshape(4, 3), (0, 100), ok=[True, False, True, False]),
        [[0.0, 1.0, 2.0], [6.0, 7.0, 8.0]],
    )


def test_validation_errors():
    m = OneCompartmentPK()
    with pytest.raises(ValueError, match="Unknown parameter"):
        ck.virtual_population(m, jax.random.key(0), 5, omega={"k": 0.1})
    with pytest.raises(ValueError, match="positive semi-definite"):
        ck.virtual_population(m, jax.random.key(0), 5, omega={"cl": 0.1, "v": 0.1}, correlation=[[1, 2], [2, 1]])
    with pytest.raises(ValueError, match="not in `covariates`"):
        ck.virtual_population(m, jax.random.key(0), 5, effects=[ck.CovariateEffect("cl", "weight_kg", 0.75, 70.0)])
    with pytest.raises(ValueError, match="Nothing varies"):
        ck.virtual_population(m, jax.random.key(0), 5)
    with pytest.raises(ValueError, match="mean"):
        ck.sample_posterior(m, jax.random.key(0), 5, np.zeros(3), np.eye(2), names=["cl", "v"])
