"""Checkpoints of the multistart fit: every finished chunk of starts is kept, an interrupted fit resumes to the result
of an uninterrupted one, a checkpoint of another fit is refused naming what differs, a corrupt chunk names the file
to delete."""

import os
import signal

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import carkinetics as ck
from carkinetics._inference import _fit
from carkinetics.models import OneCompartmentPK

MODEL = OneCompartmentPK()
BOLUS = ck.Bolus(0.0, 100.0, "central")
T = jnp.array([0.5, 1.0, 2.0])
# One problem structure and one optimiser budget, so that the fits below share one compilation.
FIT = dict(n_starts=4, adam_steps=30, lbfgs_steps=20, key=jax.random.key(1))


def _problem(cl=20.0, sd=0.1):
    y = ck.simulate(OneCompartmentPK(cl=cl), BOLUS, T, rtol=1e-10, atol=1e-12).observables.concentration
    data = ck.TimeCourseData("concentration", T, y, ck.LogNormalError(sd))
    return ck.CalibrationProblem(MODEL, BOLUS, [data], ["cl"], priors=None)


def _same(a, b):
    for f in ("z_final", "losses", "grad_norms", "history", "z_starts"):
        np.testing.assert_array_equal(np.asarray(getattr(a, f)), np.asarray(getattr(b, f)), err_msg=f)
    assert a.best == b.best and a.success == b.success


def _stop_after(monkeypatch, k, signum=signal.SIGINT):
    """Deliver `signum` while the `k`-th chunk of starts runs (as a Ctrl-C during the compiled fit would)."""
    calls = []
    real = _fit._run_multistart_ensemble

    def run(*args, **kwargs):
        calls.append(1)
        if len(calls) == k:
            os.kill(os.getpid(), signum)
        return real(*args, **kwargs)

    monkeypatch.setattr(_fit, "_run_multistart_ensemble", run)
    return calls


def test_an_interrupted_fit_resumes_to_the_uninterrupted_result(tmp_path, monkeypatch):
    problem = _problem()
    whole = ck.fit(problem, checkpoint=tmp_path / "a", **FIT)
    assert sorted(os.listdir(tmp_path / "a")) == [f"chunk_{i:06d}.npz" for i in range(4)] + ["manifest.json"]
    calls = _stop_after(monkeypatch, 2)
    with pytest.raises(ck.Interrupted) as info:
        ck.fit(problem, checkpoint=tmp_path / "b", **FIT)
    err = info.value
    assert (err.done, err.total, err.unit, err.exit_code) == (2, 4, "starts", 130)
    assert str(err) == (
        f"Stopped by SIGINT after 2 of 4 starts; rerun the same command with the same checkpoint "
        f"'{tmp_path / 'b'}' to resume."
    )
    assert len(calls) == 2 and len(list((tmp_path / "b").glob("chunk_*.npz"))) == 2
    assert not [f for f in os.listdir(tmp_path / "b") if ".tmp" in f]
    monkeypatch.undo()
    calls = _stop_after(monkeypatch, 99)
    resumed = ck.fit(problem, checkpoint=tmp_path / "b", **FIT)
    assert len(calls) == 2  # only the two starts that were missing
    _same(resumed, whole)
    # the chunks are independent starts: the same optimum as all starts in one program, to rounding
    plain = ck.fit(problem, **FIT)
    np.testing.assert_allclose(np.asarray(plain.z_final), np.asarray(whole.z_final), rtol=1e-8, atol=1e-10)
    assert resumed.values()["cl"] == pytest.approx(20.0, rel=1e-4)


def test_a_checkpoint_of_another_fit_is_refused_naming_what_differs(tmp_path):
    ck.fit(_problem(), checkpoint=tmp_path, chunk_starts=4, **FIT)
    with pytest.raises(ValueError, match=r"differs in \['targets_sha256'\] \(the targets \(data, times, error"):
        ck.fit(_problem(cl=30.0), checkpoint=tmp_path, chunk_starts=4, **FIT)
    with pytest.raises(ValueError, match=r"differs in \['starts_sha256'\] \(the start values\)"):
        ck.fit(_problem(), checkpoint=tmp_path, chunk_starts=4, **{**FIT, "key": jax.random.key(2)})
    with pytest.raises(ValueError, match=r"differs in \['optimiser'\] \(the optimiser settings\)"):
        ck.fit(_problem(), checkpoint=tmp_path, chunk_starts=4, **{**FIT, "learning_rate": 0.1})
    other_prior = ck.CalibrationProblem(MODEL, BOLUS, list(_problem().targets), ["cl"], priors={"cl": 1.0})
    with pytest.raises(ValueError, match=r"differs in \['priors_sha256'\] \(the priors\)"):
        ck.fit(other_prior, checkpoint=tmp_path, chunk_starts=4, **FIT)


def test_a_corrupt_chunk_or_manifest_names_the_file_to_delete(tmp_path):
    problem = _problem()
    ck.fit(problem, checkpoint=tmp_path, chunk_starts=2, **FIT)
    chunk = tmp_path / "chunk_000001.npz"
    chunk.write_bytes(chunk.read_bytes()[:100])
    with pytest.raises(ValueError, match=rf"The checkpoint chunk '{chunk}' is truncated or corrupt .*delete that file"):
        ck.fit(problem, checkpoint=tmp_path, chunk_starts=2, **FIT)
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(ValueError, match=rf"manifest '{tmp_path / 'manifest.json'}' is corrupt .*delete the directory"):
        ck.fit(problem, checkpoint=tmp_path, chunk_starts=2, **FIT)
