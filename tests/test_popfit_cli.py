"""`carkinetics fit-population`: outputs, exit codes for bad data and for fits that fail."""

import json

import numpy as np
import pytest

import carkinetics as ck
from carkinetics.cli import main

THEOPH = ["--data", ck.example_data("theophylline"), "--model", "OneCompartmentOralPK", "--time-unit", "h"]


@pytest.mark.parametrize("plots", [False, pytest.param(True, marks=pytest.mark.slow)])
def test_fit_population_writes_estimates_tables_and_plots(tmp_path, capsys, plots):
    out = tmp_path / "theoph"
    code = main(
        [
            "fit-population",
            *THEOPH,
            "--random",
            "ka=0.6,cl=0.3,v=0.1",
            "--error",
            "additive:0.7",
            "--init",
            "ka=37.8,cl=65.2,v=31.5",
            "--out",
            str(out),
            "--quiet",
            *([] if plots else ["--no-plots"]),
        ]
    )
    assert code == 0, capsys.readouterr()
    est = json.loads((out / "estimates.json").read_text())
    for key in ("theta", "omega", "sigma", "ofv", "se", "shrinkage", "converged", "n_subjects", "n_observations"):
        assert key in est
    assert est["converged"] is True and est["n_subjects"] == 12 and est["n_observations"] == 132
    assert abs(est["ofv"] - 116.8044) < 0.01  # nlmixr2 FOCEi OBJF
    np.testing.assert_allclose(est["theta"]["cl"] / 24, 2.75, rtol=0.01)  # L/h
    np.testing.assert_allclose(est["omega"]["ka"], 0.402, atol=0.005)
    assert set(est["se"]) == {"theta", "theta_unconstrained", "beta", "omega", "sigma"}
    pngs = ("gof.png", "individual_fits.png", "vpc.png") if plots else ()
    for name in ("summary.txt", "diagnostics.csv", "individual.csv", *pngs):
        assert (out / name).stat().st_size > 0, name
    assert plots or not (out / "gof.png").exists()
    header = (out / "diagnostics.csv").read_text().splitlines()[0].split(",")
    assert header[:4] == ["ID", "TIME", "DV", "CENS"] and "CWRES" in header
    assert len((out / "diagnostics.csv").read_text().splitlines()) == 133


def test_malformed_data_is_a_usage_error_naming_line_and_column(tmp_path, capsys):
    bad = tmp_path / "bad.csv"
    bad.write_text("ID,TIME,AMT,DV,EVID,CMT\n1,0,320,.,1,1\n1,1,.,7..5,0,2\n")
    code = main(["fit-population", "--data", str(bad), "--model", "OneCompartmentOralPK", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2
    assert "Line 3: column DV = '7..5' is not a number" in err
    code = main(["fit-population", *THEOPH, "--random", "ka=0.6,kx=0.1", "--out", str(tmp_path / "o2")])
    assert code == 2 and "Unknown parameter 'kx'" in capsys.readouterr().err
    code = main(["fit-population", *THEOPH, "--error", "exponential:0.1", "--out", str(tmp_path / "o3")])
    assert code == 2 and "--error: the kind must be one of" in capsys.readouterr().err


def test_a_fit_that_fails_is_reported_as_failed(tmp_path, capsys):
    """One outer iteration cannot converge: exit code 4, converged = false in estimates.json, a message."""
    from carkinetics.cli import _fit_population

    out = tmp_path / "short"
    original = ck.fit_population

    def one_iteration(problem, method="focei", **kw):
        return original(problem, method, **dict(kw, max_iter=1))

    assert "ck" not in _fit_population.__dict__  # the command imports carkinetics at run time
    try:
        ck.fit_population = one_iteration
        code = main(
            [
                "fit-population",
                *THEOPH,
                "--random",
                "ka=0.6,cl=0.3,v=0.1",
                "--error",
                "additive:0.7",
                "--no-plots",
                "--no-covariance",
                "--out",
                str(out),
                "--quiet",
            ]
        )
    finally:
        ck.fit_population = original
    captured = capsys.readouterr().out
    assert code == 4
    assert "the fit did NOT converge" in captured
    est = json.loads((out / "estimates.json").read_text())
    assert est["converged"] is False and "without convergence" in est["message"]


def test_help_lists_fit_population(capsys):
    assert main(["--help"]) == 0
    assert "fit-population" in capsys.readouterr().out
    assert main(["fit-population", "--help"]) == 0
    assert "--method {focei,saem,nuts}" in capsys.readouterr().out
