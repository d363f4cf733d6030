"""Checkpoints of population fits: FOCEi keeps its state after every outer iteration and SAEM every few
iterations; a fit stopped by a signal resumes to the uninterrupted result; a checkpoint of another fit is refused
naming what differs; a corrupt state file names the file to delete."""

import math
import os
import signal

import jax
import numpy as np
import pytest
from helpers import signal_on_call

import carkinetics as ck
from carkinetics._inference import _focei, _saem
from carkinetics.models import OneCompartmentOralPK


@pytest.fixture(scope="module")
def problem():
    model = OneCompartmentOralPK(ka=math.exp(0.45) * 24, cl=math.exp(1.0) * 24, v=math.exp(3.45))
    data = ck.read_population_data(ck.example_data("theophylline"), model, time_unit="h")
    return ck.PopulationProblem(model, data, {"ka": 0.6, "cl": 0.3, "v": 0.1}, error=ck.AdditiveError(0.7))


def _signal_on_call(monkeypatch, module, name, k, signum=signal.SIGINT):
    return signal_on_call(monkeypatch, module, name, k, signum)


def _same_fit(a, b):
    np.testing.assert_allclose(a.psi, b.psi, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(a.ofv, b.ofv, rtol=1e-10)
    assert a.converged == b.converged and a.iterations == b.iterations
    np.testing.assert_allclose(a.ofv_history, b.ofv_history, rtol=1e-10)


FOCEI = dict(covariance=False)


def test_focei_stopped_after_an_iteration_resumes_to_the_same_fit(problem, tmp_path, monkeypatch):
    whole = ck.fit_population(problem, "focei", **FOCEI)
    assert whole.converged and whole.iterations > 4
    _signal_on_call(monkeypatch, _focei, "expansion", 3, signal.SIGTERM)
    with pytest.raises(ck.Interrupted) as info:
        ck.fit_population(problem, "focei", checkpoint=tmp_path, **FOCEI)
    err = info.value
    assert (err.done, err.total, err.unit, err.exit_code) == (3, 100, "iterations", 143)
    assert str(err).startswith("Stopped by SIGTERM after 3 of 100 iterations; rerun the same command")
    assert sorted(os.listdir(tmp_path)) == ["manifest.json", "state.npz"]
    monkeypatch.undo()
    calls = _signal_on_call(monkeypatch, _focei, "expansion", 10**6)
    resumed = ck.fit_population(problem, "focei", checkpoint=tmp_path, **FOCEI)
    assert len(calls) == whole.iterations - 3  # the three finished iterations are not repeated
    _same_fit(resumed, whole)
    with pytest.raises(ValueError, match=r"differs in \['settings'\] \(the estimation settings\)"):
        ck.fit_population(problem, "focei", checkpoint=tmp_path, max_iter=50, **FOCEI)
    (tmp_path / "state.npz").write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(ValueError, match=rf"checkpoint file '{tmp_path / 'state.npz'}' is truncated or corrupt"):
        ck.fit_population(problem, "focei", checkpoint=tmp_path, **FOCEI)


SAEM = dict(saem_iterations=(12, 8), chains=2, importance_samples=0, covariance=False)


def test_saem_stopped_mid_run_resumes_to_the_same_chains(problem, tmp_path, monkeypatch):
    key = jax.random.key(3)
    whole = ck.fit_population(problem, "saem", key=key, **SAEM)
    _signal_on_call(monkeypatch, _saem, "_mh_steps", 13)  # in the first iteration of the convergence phase
    with pytest.raises(ck.Interrupted) as info:
        ck.fit_population(problem, "saem", key=key, checkpoint=tmp_path, **SAEM)
    assert (info.value.done, info.value.total, info.value.unit) == (13, 20, "iterations")
    monkeypatch.undo()
    calls = _signal_on_call(monkeypatch, _saem, "_mh_steps", 10**6)
    resumed = ck.fit_population(problem, "saem", key=key, checkpoint=tmp_path, **SAEM)
    assert len(calls) == 7
    np.testing.assert_array_equal(resumed.psi, whole.psi)
    np.testing.assert_array_equal(resumed.eta, whole.eta)
    assert resumed.ofv_history == whole.ofv_history
    with pytest.raises(ValueError, match=r"differs in \['key_sha256'\] \(the random key \(--seed\)\)"):
        ck.fit_population(problem, "saem", key=jax.random.key(4), checkpoint=tmp_path, **SAEM)
    with pytest.raises(ValueError, match=r"differs in \['key_sha256', 'method', 'settings'\]"):
        ck.fit_population(problem, "focei", checkpoint=tmp_path, **FOCEI)


@pytest.mark.slow
def test_nuts_stopped_after_a_chain_resumes_with_the_missing_chains(problem, tmp_path):
    key = jax.random.key(5)
    run = dict(num_warmup=30, num_samples=20, chains=2)
    whole = ck.sample_population_posterior(problem, key, **run)
    lines = []

    def stop_after_first_chain(line):
        lines.append(line)
        if len(lines) == 1:
            os.kill(os.getpid(), signal.SIGINT)

    with pytest.raises(ck.Interrupted) as info:
        ck.sample_population_posterior(problem, key, checkpoint=tmp_path, progress=stop_after_first_chain, **run)
    assert (info.value.done, info.value.total, info.value.unit) == (1, 2, "chains")
    assert sorted(os.listdir(tmp_path)) == ["chunk_000000.npz", "manifest.json"]
    resumed = ck.sample_population_posterior(problem, key, checkpoint=tmp_path, **run)
    np.testing.assert_array_equal(resumed.positions, whole.positions)
    with pytest.raises(ValueError, match=r"differs in \['settings'\]"):
        ck.sample_population_posterior(problem, key, checkpoint=tmp_path, **{**run, "num_samples": 21})
