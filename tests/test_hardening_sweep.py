"""Checkpoints never return stale or mixed results, corrupt files get a clear message, and a sweep stopped by
SIGINT resumes to the same result."""

import os
import signal
import subprocess
import sys
import time

import jax.numpy as jnp
import numpy as np
import pytest

import carkinetics as ck
from carkinetics.models import OneCompartmentPK

TS = jnp.linspace(0.0, 1.0, 11)
SAMPLES = {"cl": np.linspace(5.0, 20.0, 12)}


def _sweep(path, dose=100.0, metrics=ck.observable_metrics, **kw):
    return ck.sweep_model(
        OneCompartmentPK(),
        ck.Bolus(0.0, dose, "central"),
        TS,
        SAMPLES,
        metrics=metrics,
        chunk_size=4,
        progress=False,
        checkpoint=path,
        **kw,
    )


def test_checkpoint_resumes_the_same_sweep(tmp_path):
    first = _sweep(tmp_path / "ck")
    again = _sweep(tmp_path / "ck")
    assert (first.n_resumed_chunks, again.n_resumed_chunks) == (0, 3)
    np.testing.assert_array_equal(first.outputs["concentration_auc"], again.outputs["concentration_auc"])


def test_checkpoint_of_another_dose_is_refused(tmp_path):
    _sweep(tmp_path / "ck", dose=100.0)
    with pytest.raises(ValueError, match=r"belongs to a different run: it differs in \['function_sha256'\]"):
        _sweep(tmp_path / "ck", dose=1000.0)


def test_half_finished_checkpoint_is_not_mixed_with_other_settings(tmp_path):
    _sweep(tmp_path / "ck")
    os.remove(tmp_path / "ck" / "chunk_000002.npz")  # as if the first run had stopped after two chunks
    with pytest.raises(ValueError, match="function_sha256"):
        _sweep(tmp_path / "ck", rtol=1e-9)
    with pytest.raises(ValueError, match="function_sha256"):
        _sweep(tmp_path / "ck", metrics=lambda sol: {"last": sol.observables.concentration[-1]})
    resumed = _sweep(tmp_path / "ck")
    assert resumed.n_resumed_chunks == 2


def test_truncated_chunk_and_corrupt_manifest_name_the_file(tmp_path):
    _sweep(tmp_path / "ck")
    chunk = tmp_path / "ck" / "chunk_000001.npz"
    chunk.write_bytes(chunk.read_bytes()[:50])
    with pytest.raises(ValueError, match=r"chunk_000001.npz' is truncated or corrupt .*delete that file"):
        _sweep(tmp_path / "ck")
    (tmp_path / "ck" / "manifest.json").write_text("{ not json")
    with pytest.raises(ValueError, match=r"manifest .*manifest.json' is corrupt .*delete the directory"):
        _sweep(tmp_path / "ck")


_SCRIPT = r"""
import sys, time, hashlib
import numpy as np, jax
jax.config.update("jax_enable_x64", True)
import jax.numpy as jnp, carkinetics as ck

def slow(i, n):  # a chunk takes a while: time to deliver a signal mid-run
    print(f"chunk {i}", flush=True)
    time.sleep(0.3)

try:
    res = ck.sweep(lambda x: {"y": jnp.sin(x) * x}, jnp.linspace(0.0, 10.0, 4000), chunk_size=100,
                   checkpoint=sys.argv[1], progress=False, on_chunk=slow)
except ck.Interrupted as e:
    print(f"interrupted {e.done} {e.total}", flush=True)
    sys.exit(e.exit_code)
print("digest", hashlib.sha256(res.outputs["y"].tobytes()).hexdigest(), res.n_resumed_chunks, flush=True)
"""


def _run(path, interrupt_after=None):
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    lines = []
    with subprocess.Popen(
        [sys.executable, "-c", _SCRIPT, str(path)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    ) as proc:
        deadline = time.time() + 300
        for line in proc.stdout:
            lines.append(line.strip())
            if interrupt_after is not None and line.startswith(f"chunk {interrupt_after}"):
                proc.send_signal(signal.SIGINT)
            if time.time() > deadline:
                proc.kill()
                break
        err = proc.stderr.read()
        proc.wait(timeout=60)
    return proc.returncode, lines, err


@pytest.mark.slow
def test_sigint_stops_cleanly_and_the_sweep_resumes_to_the_same_result(tmp_path):
    rc, lines, err = _run(tmp_path / "a", interrupt_after=3)
    assert rc == 130, err
    assert "Segmentation" not in err and "Traceback" not in err
    done = int(next(x for x in lines if x.startswith("interrupted")).split()[1])
    assert 4 <= done < 40
    assert len(list((tmp_path / "a").glob("chunk_*.npz"))) == done
    rc, resumed, err = _run(tmp_path / "a")
    assert rc == 0, err
    rc, fresh, err = _run(tmp_path / "b")
    assert rc == 0, err
    digest_resumed, n_resumed = resumed[-1].split()[1:]
    digest_fresh, n_fresh = fresh[-1].split()[1:]
    assert digest_resumed == digest_fresh
    assert (int(n_resumed), int(n_fresh)) == (done, 0)
