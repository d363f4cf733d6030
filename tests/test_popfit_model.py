"""The population model: residual error likelihoods against scipy, parameter packing, validation."""

import io

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

import carkinetics as ck
from carkinetics._inference._population_model import observation_terms
from carkinetics.models import OneCompartmentOralPK

Y = jnp.array([0.5, 2.0, 7.5, 1.2])
F = jnp.array([0.6, 2.5, 7.0, 0.9])
NO = jnp.zeros(4, bool)

ERRORS = [
    (ck.AdditiveError(0.7), jnp.array([0.7]), lambda y, f: stats.norm.logpdf(y, f, 0.7)),
    (ck.ProportionalError(0.2), jnp.array([0.2]), lambda y, f: stats.norm.logpdf(y, f, 0.2 * f)),
    (
        ck.CombinedError(0.3, 0.1),
        jnp.array([0.3, 0.1]),
        lambda y, f: stats.norm.logpdf(y, f, np.sqrt(0.09 + (0.1 * f) ** 2)),
    ),
    (ck.LogAdditiveError(0.4), jnp.array([0.4]), lambda y, f: stats.lognorm.logpdf(y, 0.4, scale=f)),
]


@pytest.mark.parametrize(("error", "s", "reference"), ERRORS)
def test_minus_two_log_likelihood_and_derivatives_match_scipy(error, s, reference):
    ell, dell, d2ell, _ = observation_terms(error, s, Y, F, NO, Y)
    np.testing.assert_allclose(np.asarray(ell), -2 * reference(np.asarray(Y), np.asarray(F)), rtol=1e-12)
    one = lambda f, y: observation_terms(error, s, y, f, jnp.zeros((), bool), y)[0]
    np.testing.assert_allclose(np.asarray(dell), np.asarray(jax.vmap(jax.grad(one))(F, Y)), rtol=1e-10)
    np.testing.assert_allclose(np.asarray(d2ell), np.asarray(jax.vmap(jax.grad(jax.grad(one)))(F, Y)), rtol=1e-10)
    # w is the Fisher information of f: half the expected second derivative, by quadrature over y
    for f in (0.9, 7.0):
        if error.log_scale:
            sd = float(s[0])
            nodes, weights = np.polynomial.hermite_e.hermegauss(60)
            ys = f * np.exp(sd * nodes)
        else:
            sd = float(np.sqrt(error.variance(jnp.asarray(f), s)))
            nodes, weights = np.polynomial.hermite_e.hermegauss(60)
            ys = f + sd * nodes
        d2 = jax.vmap(jax.grad(jax.grad(one)), in_axes=(None, 0))(jnp.asarray(f), jnp.asarray(ys))
        expected = 0.5 * float(np.sum(weights * np.asarray(d2)) / np.sqrt(2 * np.pi))
        w_f = float(
            observation_terms(error, s, jnp.asarray([f]), jnp.asarray([f]), jnp.zeros(1, bool), jnp.asarray([f]))[3][0]
        )
        np.testing.assert_allclose(w_f, expected, rtol=1e-8)


def test_censored_observations_use_the_normal_cdf():
    err = ck.AdditiveError(0.5)
    cens = jnp.array([True, False, True, False])
    limit = jnp.array([1.0, 2.0, 5.0, 1.2])
    ell, dell, _, w = observation_terms(err, jnp.array([0.5]), Y, F, cens, limit)
    expected = -2 * stats.norm.logcdf((np.asarray(limit) - np.asarray(F)) / 0.5)
    np.testing.assert_allclose(np.asarray(ell)[[0, 2]], expected[[0, 2]], rtol=1e-12)
    grad = jax.grad(lambda f: -2 * jax.scipy.stats.norm.logcdf((1.0 - f) / 0.5))(F[0])
    np.testing.assert_allclose(float(dell[0]), float(grad), rtol=1e-10)
    assert float(w[0]) > 0 and float(w[2]) > 0


def test_parameter_vector_round_trip_and_labels():
    model = OneCompartmentOralPK()
    data = ck.read_population_data(
        io.StringIO("ID,TIME,AMT,DV,EVID,CMT,WT\n1,0,300,.,1,1,70\n1,1,.,5,0,2,70\n2,0,300,.,1,1,80\n2,2,.,6,0,2,80\n"),
        model,
        covariates=["WT"],
    )
    omega = np.array([[0.4, 0.1, 0.0], [0.1, 0.2, 0.0], [0.0, 0.0, 0.05]])
    problem = ck.PopulationProblem(
        model,
        data,
        ["ka", "cl", "v"],
        omega=omega,
        blocks=[["ka", "cl"], ["v"]],
        error=ck.CombinedError(0.1, 0.2),
        covariates=[ck.CovariateEffect("cl", "WT", 0.75, 70.0)],
    )
    assert problem.sizes == (3, 1, 4, 2)
    assert problem.labels == (
        "theta(ka)",
        "theta(cl)",
        "theta(v)",
        "beta(cl~WT)",
        "omega.logdiag(ka)",
        "omega.logdiag(cl)",
        "omega.lower(cl,ka)",
        "omega.logdiag(v)",
        "sigma(sd)",
        "sigma(cv)",
    )
    p = problem.unpack(problem.psi0)
    np.testing.assert_allclose(np.asarray(p.omega), omega, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(np.asarray(p.sigma), [0.1, 0.2], rtol=1e-12)
    np.testing.assert_allclose(np.asarray(problem.theta_values(p.theta)), [36.0, 66.0, 31.5], rtol=1e-12)
    np.testing.assert_allclose(np.asarray(problem.pack(p)), np.asarray(problem.psi0), rtol=1e-12, atol=1e-15)
    # allometric clearance: subject 2 (80 kg) has CL * (80/70)^0.75
    phi = problem.typical_phi(p)
    np.testing.assert_allclose(float(jnp.exp(phi[1, 1] - phi[0, 1])), (80 / 70) ** 0.75, rtol=1e-12)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"random": {"ka": 0.1, "kx": 0.1}}, r"Unknown parameter 'kx'"),
        ({"random": {"ka": 0.1}, "estimate": ["cl"]}, r"have random effects but are not in `estimate`"),
        ({"random": {"ka": -0.1}}, r"must be positive and finite"),
        ({"random": ["ka", "cl"], "omega": [[1.0, 2.0], [2.0, 1.0]], "blocks": "full"}, r"must be positive definite"),
        ({"random": ["ka", "cl"], "blocks": [["ka"]]}, r"must put every parameter of `random`"),
        ({"random": ["ka"], "error": 0.7}, r"`error` must be a residual error model"),
        ({"random": ["ka"], "error": {"conc": ck.AdditiveError(1.0)}}, r"not an observable of the model"),
        (
            {"random": ["ka"], "covariates": [ck.CovariateEffect("cl", "WT", 0.75, 70.0)]},
            r"not a covariate of the data",
        ),
    ],
)
def test_problem_validation(kwargs, match):
    model = OneCompartmentOralPK()
    data = ck.read_population_data(io.StringIO("ID,TIME,AMT,DV,EVID,CMT\n1,0,300,.,1,1\n1,1,.,5,0,2\n"), model)
    kwargs = dict(kwargs)
    kwargs.setdefault("error", ck.AdditiveError(0.5))
    random = kwargs.pop("random")
    with pytest.raises(ValueError, match=match):
        ck.PopulationProblem(model, data, random, **kwargs)
    with pytest.raises(ValueError, match=r"`sd` of AdditiveError must be a positive finite number"):
        ck.AdditiveError(0.0)
    with pytest.raises(ValueError, match=r"`method` must be one of"):
        ck.fit_population(ck.PopulationProblem(model, data, ["ka"], error=ck.AdditiveError(1.0)), "laplace")
    with pytest.raises(ValueError, match=r"SAEM needs a `key`"):
        ck.fit_population(ck.PopulationProblem(model, data, ["ka"], error=ck.AdditiveError(1.0)), "saem")
