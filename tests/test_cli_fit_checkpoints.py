"""`calibrate --checkpoint` and `fit-population --checkpoint`: a signal stops the fit with exit 130/143 and one line
naming the checkpoint; a rerun resumes to the files of an uninterrupted run; a checkpoint of another fit is refused
(exit 2) naming what differs."""

import signal

import pytest
from helpers import signal_on_call
from test_cli_errors import _calibrate, _petab

from carkinetics import cli
from carkinetics._inference import _fit


@pytest.mark.slow  # three fits through the command line; the library's resume is tested in the default suite
@pytest.mark.parametrize("signum, code", [(signal.SIGTERM, 143)])
def test_calibrate_stops_after_a_start_and_resumes_to_the_same_fit(tmp_path, capsys, monkeypatch, signum, code):
    p = _petab(tmp_path / "p")
    ckpt = tmp_path / "ck"
    argv = [a if a != "2" else "3" for a in _calibrate(p)]  # three starts
    calls = signal_on_call(monkeypatch, _fit, "_run_multistart_ensemble", 2, signum)
    rc = cli.main([*argv, "--checkpoint", str(ckpt)])
    err = capsys.readouterr().err
    assert rc == code, err
    assert err.splitlines()[-1] == (
        f"carkinetics calibrate: Stopped by {signal.Signals(signum).name} after 2 of 3 starts; rerun the same "
        f"command with the same checkpoint '{ckpt}' to resume."
    )
    assert "Traceback" not in err and not (p / "out" / "fitted_parameters.csv").exists()
    assert len(list(ckpt.glob("chunk_*.npz"))) == 2
    monkeypatch.undo()
    calls = signal_on_call(monkeypatch, _fit, "_run_multistart_ensemble", 99, signum)
    assert cli.main([*argv, "--checkpoint", str(ckpt)]) == 0
    assert len(calls) == 1  # only the missing start
    resumed = (p / "out" / "fitted_parameters.csv").read_text()
    assert cli.main([*argv, "--checkpoint", str(tmp_path / "fresh")]) == 0
    assert (p / "out" / "fitted_parameters.csv").read_text() == resumed
    capsys.readouterr()
    rc = cli.main([*argv, "--checkpoint", str(ckpt), "--seed", "5"])
    err = capsys.readouterr().err
    assert rc == 2
    assert f"--checkpoint {ckpt}: The checkpoint directory '{ckpt}' belongs to a different run" in err
    assert "['starts_sha256'] (the start values)" in err


@pytest.mark.slow  # two FOCEi fits through the command line; the library's resume is tested in the default suite
def test_fit_population_stops_after_an_iteration_and_resumes_to_the_same_estimates(tmp_path, capsys, monkeypatch):
    import json

    import numpy as np

    import carkinetics as ck
    from carkinetics._inference import _focei

    ckpt = tmp_path / "ck"
    argv = [
        "fit-population",
        *["--data", ck.example_data("theophylline"), "--model", "OneCompartmentOralPK", "--time-unit", "h"],
        *["--random", "ka=0.6,cl=0.3,v=0.1", "--error", "additive:0.7", "--init", "ka=37.8,cl=65.2,v=31.5"],
        *["--no-plots", "--no-covariance", "--quiet"],
    ]
    signal_on_call(monkeypatch, _focei, "expansion", 2, signal.SIGINT)
    rc = cli.main([*argv, "--checkpoint", str(ckpt), "--out", str(tmp_path / "a")])
    err = capsys.readouterr().err
    assert rc == 130, err
    assert err.splitlines()[-1] == (
        f"carkinetics fit-population: Stopped by SIGINT after 2 of 100 iterations; rerun the same command with the "
        f"same checkpoint '{ckpt}' to resume."
    )
    assert not (tmp_path / "a" / "estimates.json").exists()
    monkeypatch.undo()
    assert cli.main([*argv, "--checkpoint", str(ckpt), "--out", str(tmp_path / "a")]) == 0
    assert cli.main([*argv, "--out", str(tmp_path / "b")]) == 0
    a, b = (json.loads((tmp_path / d / "estimates.json").read_text()) for d in "ab")
    for k in ("theta", "omega", "sigma"):
        for name in a[k]:
            np.testing.assert_allclose(a[k][name], b[k][name], rtol=1e-9, err_msg=f"{k}.{name}")
    assert a["ofv"] == pytest.approx(b["ofv"], rel=1e-10) and a["iterations"] == b["iterations"]
    capsys.readouterr()
    other = [x if x != "ka=37.8,cl=65.2,v=31.5" else "ka=30,cl=65.2,v=31.5" for x in argv]
    rc = cli.main([*other, "--checkpoint", str(ckpt), "--out", str(tmp_path / "c")])
    err = capsys.readouterr().err
    assert rc == 2 and "belongs to a different run: it differs in ['model_sha256', 'problem_sha256']" in err
