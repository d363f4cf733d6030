"""Reverse-mode gradients of the SLE v2 endpoints (the calibration of issue 21 item 7 differentiates through them):
finite and equal to central differences (slow: compiles the reverse pass of the 38-state model)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import carkinetics as ck
from carkinetics.models import sle


@pytest.mark.slow
def test_endpoint_gradients_are_finite_and_match_central_differences():
    model = sle.SLECarTModel()
    regimen = sle.erlangen_regimen(model)
    ts = sle.save_times(180.0)
    names = ["car.rho", "rejection.r_exp", "rejection.n_help", "myeloid.k_cd40", "myeloid.n_my"]

    def loss(logv):
        m = model.replace({n: jnp.exp(v) for n, v in zip(names, logv)})
        met = sle.sle_metrics(ck.simulate(m, regimen, ts, solver=ck.EnsembleRodas5()))
        return met["B aplasia"] + met["CRS grade"] + 0.01 * met["IL-6 peak"] + met["SLEDAI d90"]

    v0 = jnp.log(jnp.array([float(model.get(n)) for n in names]))
    g = np.asarray(jax.grad(loss)(v0))
    assert np.all(np.isfinite(g)) and np.all(g != 0.0)
    h = 1e-4
    fd = np.array([(loss(v0.at[i].add(h)) - loss(v0.at[i].add(-h))) / (2 * h) for i in range(len(names))])
    np.testing.assert_allclose(g, fd, rtol=1e-3, atol=1e-4)
