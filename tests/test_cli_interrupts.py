"""Commands stopped by SIGINT (Ctrl-C) or SIGTERM: exit 130/143, one line that says what was kept and how to go on,
no traceback, no half-written file; a sweep with --checkpoint resumes to the result of an uninterrupted run.

The fast tests run `cli.main` in this process and send the signal from inside the command; the `slow` ones interrupt
a `carkinetics` process from outside while it computes.
"""

import os
import signal
import subprocess
import sys
import time

import pytest

import carkinetics as ck
from carkinetics import cli


def _signal_self(signum):
    """A stand-in for a solve that receives `signum` while it runs."""

    def solve(*args, **kwargs):
        os.kill(os.getpid(), signum)
        time.sleep(5.0)  # the handler interrupts this sleep
        raise AssertionError(f"{signal.Signals(signum).name} did not stop the command")

    return solve


@pytest.mark.parametrize("signum, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_during_a_command_exits_cleanly_with_one_line(tmp_path, capsys, monkeypatch, signum, code):
    before = signal.getsignal(signal.SIGTERM)
    out = tmp_path / "o"
    out.mkdir()
    (out / "simulation.csv").write_text("from an earlier run")
    monkeypatch.setattr(ck, "simulate", _signal_self(signum))
    rc = cli.main(["simulate", "--model", "OneCompartmentPK", "--regimen", "none", "--out", str(out), "--quiet"])
    err = capsys.readouterr().err
    assert rc == code, err
    last = err.splitlines()[-1]
    assert last == (
        f"carkinetics simulate: stopped by {signal.Signals(signum).name} before it finished; every file "
        f"already in {out} is complete (files are written whole or not at all); rerun the command to "
        "start again."
    )
    assert "Traceback" not in err
    assert not [f for f in os.listdir(out) if ".tmp" in f or f.startswith(".staging")]
    assert signal.getsignal(signal.SIGTERM) == before  # the command's handler is gone again


def test_the_interrupt_line_names_the_checkpoint_to_resume_from(tmp_path, capsys, monkeypatch):
    (tmp_path / "r.toml").write_text("[ranges]\ncl = [50.0, 200.0]\n")
    monkeypatch.setattr(ck, "sweep_model", _signal_self(signal.SIGTERM))
    rc = cli.main(
        [
            "sweep",
            "--model",
            "OneCompartmentPK",
            "--ranges",
            str(tmp_path / "r.toml"),
            "--checkpoint",
            str(tmp_path / "ck"),
            "--out",
            str(tmp_path / "o"),
            "--quiet",
        ]
    )
    err = capsys.readouterr().err
    assert rc == 143
    assert err.rstrip().endswith(
        f"rerun the same command with --checkpoint {tmp_path / 'ck'} to resume from its finished chunks."
    )


def _cli(*argv):
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env["JAX_PLATFORMS"] = "cpu"
    return subprocess.Popen(
        [sys.executable, "-m", "carkinetics.cli", *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def _interrupt_when(proc, path_or_text, signum, timeout=240.0):
    """Send `signum` to `proc` once `path_or_text` (a callable) is true; returns (rc, stdout, stderr)."""
    deadline = time.time() + timeout
    while not path_or_text():
        if proc.poll() is not None or time.time() > deadline:
            proc.kill()
            out, err = proc.communicate()
            pytest.fail(f"the command ended or stalled before the signal: rc {proc.returncode}\n{err[-3000:]}")
        time.sleep(0.2)
    proc.send_signal(signum)
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err


@pytest.mark.slow
def test_sigint_stops_the_sweep_command_and_a_rerun_resumes_to_the_same_table(tmp_path):
    (tmp_path / "bolus.toml").write_text('[[bolus]]\ntime = 0.0\namount = 100.0\nstate = "central"\n')
    (tmp_path / "r.toml").write_text("[sweep]\nn = 4096\nseed = 3\n[ranges]\ncl = [50.0, 200.0]\nv1 = [30.0, 60.0]\n")
    ckpt = tmp_path / "ck"
    argv = [
        "sweep",
        "--model",
        "TwoCompartmentPK",
        "--regimen",
        str(tmp_path / "bolus.toml"),
        "--ranges",
        str(tmp_path / "r.toml"),
        "--chunk-size",
        "16",
        "--t-end",
        "3",
        "--points",
        "31",
        "--quiet",
    ]
    proc = _cli(*argv, "--checkpoint", str(ckpt), "--out", str(tmp_path / "a"))
    rc, _, err = _interrupt_when(proc, lambda: len(list(ckpt.glob("chunk_*.npz"))) >= 3, signal.SIGINT)
    assert rc == 130, err[-3000:]
    assert "Segmentation" not in err and "Traceback" not in err
    assert f"rerun the same command with the same checkpoint '{ckpt}' to resume" in err
    assert not (tmp_path / "a" / "sweep.csv").exists()  # never a partial table
    done = len(list(ckpt.glob("chunk_*.npz")))
    assert 3 <= done < 256
    resumed = subprocess.run(
        [sys.executable, "-m", "carkinetics.cli", *argv, "--checkpoint", str(ckpt), "--out", str(tmp_path / "a")],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    fresh = subprocess.run(
        [sys.executable, "-m", "carkinetics.cli", *argv, "--out", str(tmp_path / "b")],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert fresh.returncode == 0, fresh.stderr[-3000:]
    assert (tmp_path / "a" / "sweep.csv").read_text() == (tmp_path / "b" / "sweep.csv").read_text()


@pytest.mark.slow
@pytest.mark.parametrize("signum, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_stops_calibrate_cleanly(tmp_path, signum, code):
    # The multistart fit runs in compiled code: the signal is acted on when it returns, and the command still leaves
    # with one line and 130/143 (it once segfaulted, or finished with exit 0 as if nothing had happened).
    from test_cli_errors import _calibrate, _petab

    p = _petab(tmp_path / "p")
    argv = [a for a in _calibrate(p) if a != "--quiet"]
    proc = _cli(*argv[: argv.index("--starts") + 1], "64", *argv[argv.index("--starts") + 2 :])
    err_so_far = []

    def fitting():
        # the progress line on stderr is written without newlines; read what is there without blocking
        try:
            chunk = os.read(proc.stderr.fileno(), 1 << 16)
        except BlockingIOError:
            chunk = b""
        err_so_far.append(chunk.decode(errors="replace"))
        return "multistart fit" in "".join(err_so_far)

    os.set_blocking(proc.stderr.fileno(), False)
    rc, out, err = _interrupt_when(proc, fitting, signum)
    err = "".join(err_so_far) + err
    assert rc == code, err[-3000:]
    assert "Segmentation" not in err and "Traceback" not in err
    assert f"stopped by {signal.Signals(signum).name} before it finished" in err
    assert "converged" not in out
    assert not (p / "out" / "fitted_parameters.csv").exists()


def test_a_stopped_translate_names_the_checkpoint_folder_given(tmp_path, capsys, monkeypatch):
    # The map keeps its chunks in subfolders of --checkpoint (point/, samples/); the line says to rerun with the
    # folder the user gave.
    from carkinetics.models.sle import translation

    ckpt = tmp_path / "ck"

    def stopped(*args, **kwargs):
        raise ck.Interrupted(signal.SIGINT, 3, 8, str(ckpt / "point"))

    monkeypatch.setattr(translation, "write_translation_report", stopped)
    rc = cli.main(["translate", "--checkpoint", str(ckpt), "--out", str(tmp_path / "o"), "--quiet"])
    err = capsys.readouterr().err
    assert rc == 130
    assert err == (
        f"carkinetics translate: Stopped by SIGINT after 3 of 8 chunks; rerun the same command with the "
        f"same checkpoint '{ckpt}' to resume.\n"
    )
    assert not [f for f in os.listdir(tmp_path / "o") if f.startswith(".staging")]
