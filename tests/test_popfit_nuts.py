"""NUTS posteriors of population models: the transforms (fast) and theophylline with 4 chains (slow)."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import carkinetics as ck
from carkinetics._inference import _posterior
from carkinetics.models import OneCompartmentOralPK


def test_correlation_cholesky_transform_and_its_jacobian():
    """The canonical-partial-correlation map gives a valid correlation factor, and its log-Jacobian is the log
    determinant of the derivative of the map onto the free entries (below the diagonal)."""
    m = 3
    y = jnp.array([0.3, -0.7, 1.1])
    low, log_jac = _posterior._corr_cholesky(y, m)
    corr = low @ low.T
    np.testing.assert_allclose(np.diag(corr), 1.0, rtol=0, atol=1e-14)
    assert np.all(np.linalg.eigvalsh(np.asarray(corr)) > 0)
    below = lambda v: _posterior._corr_cholesky(v, m)[0][jnp.tril_indices(m, -1)]
    jac = jax.jacfwd(below)(y)
    np.testing.assert_allclose(float(log_jac), float(jnp.linalg.slogdet(jac)[1]), rtol=1e-12)


def test_positions_round_trip_and_priors_from_tags():
    model = OneCompartmentOralPK()
    data = ck.read_population_data(ck.example_data("theophylline"), model, time_unit="h")
    omega = np.array([[0.4, 0.05, 0.0], [0.05, 0.1, 0.0], [0.0, 0.0, 0.02]])
    problem = ck.PopulationProblem(
        model, data, ["ka", "cl", "v"], omega=omega, blocks=[["ka", "cl"], ["v"]], error=ck.AdditiveError(0.7)
    )
    for centered in (True, False):
        lay = _posterior._layout(problem, centered)
        x = _posterior._initial_position(problem, lay, None)
        assert x.shape == (lay.size,) == (3 + 3 + 1 + 1 + 12 * 3,)
        params, eta, _, _ = _posterior._unpack(problem, lay, x)
        np.testing.assert_allclose(np.asarray(params.omega), omega, rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(np.asarray(eta), 0.0, atol=0)
    mean, sd = _posterior._prior_centre(problem, _posterior._layout(problem))
    # OneCompartmentOralPK's typical values are tagged M (recalled): prior sd 1.0 on the log scale
    assert sd[:3].tolist() == [ck.PRIOR_SD["M"]] * 3 == [1.0] * 3
    np.testing.assert_allclose(mean[:3], np.log([36.0, 66.0, 31.5]), rtol=1e-12)


@pytest.mark.slow
def test_nuts_theophylline_four_chains_agrees_with_focei():
    model = OneCompartmentOralPK(ka=math.exp(0.45) * 24, cl=math.exp(1.0) * 24, v=math.exp(3.45))
    data = ck.read_population_data(ck.example_data("theophylline"), model, time_unit="h")
    problem = ck.PopulationProblem(
        model, data, {"ka": 0.6, "cl": 0.3, "v": 0.1}, error=ck.AdditiveError(0.7), rtol=1e-6, atol=1e-6
    )
    fit = ck.fit_population(problem, "focei")
    # 1,000 draws per chain: with 500, theta.ka's R-hat came out 1.011 (its own Monte Carlo error at that length
    # is of that order), so the R-hat <= 1.01 criterion was decided by noise
    post = ck.sample_population_posterior(
        problem, jax.random.key(11), init=fit, num_warmup=500, num_samples=1000, progress=True
    )
    print(post.summary())
    assert post.omega.shape[:2] == (4, 1000)
    assert int(post.divergences.sum()) == 0
    assert max(post.rhat.values()) <= 1.01, post.rhat
    assert min(post.ess_bulk.values()) >= 100, post.ess_bulk
    for name in ("ka", "cl", "v"):
        assert abs(np.mean(post.theta[name]) - fit.theta[name]) < 2 * fit.se["theta"][name], name
    assert abs(np.mean(post.sigma["sd"]) - fit.sigma["sd"]) < 2 * fit.se["sigma"]["sd"]
    coverage = post.ppc_coverage(jax.random.key(3), n_draws=200)
    assert 0.8 <= coverage <= 0.99, coverage
    pop = post.virtual_population(jax.random.key(4), 500)
    assert pop.samples["cl"].shape == (500,) and np.all(pop.samples["cl"] > 0)
    # the virtual population's median clearance is the posterior typical value (log-normal IIV)
    assert abs(math.log(np.median(pop.samples["cl"]) / np.mean(post.theta["cl"]))) < 0.1
