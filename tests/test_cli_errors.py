"""Mistakes on the command line and in its input files: exit code 2, ONE line on stderr that names the argument, file
or key, no traceback, and nothing computed. Also the choices the command line makes for the user (body size taken
from the model, files of an earlier run), which it must say in a note.

Every case runs in-process (`cli.main([...])` returns the exit code) on tiny models, except `--devices` above the
core count, which needs a fresh `carkinetics` process (the device count is fixed when JAX starts).
"""

import argparse
import os
import subprocess
import sys

import numpy as np
import pytest

import carkinetics as ck
import carkinetics.io as cio
from carkinetics import cli
from carkinetics.cli import _common, _inputs, _main
from carkinetics.models import OneCompartmentPK

BOLUS = '[[bolus]]\ntime = 0.0\namount = 100.0\nstate = "central"\n'


def _usage_error(capsys, argv, *fragments):
    """Run `argv`; assert exit 2 and one line on stderr holding every fragment, no traceback, nothing on stdout."""
    rc = cli.main(argv)
    captured = capsys.readouterr()
    assert rc == cli.EXIT_USAGE, (rc, captured.err)
    err = captured.err
    assert err.count("\n") == 1 and err.startswith("carkinetics"), err
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in err, (fragment, err)
    return err


@pytest.fixture
def no_solve(monkeypatch):
    """Fail the test if a command starts computing: mistakes must be found before any solve."""

    def refuse(*args, **kwargs):
        raise AssertionError("a mistake in the inputs must be reported before any computation")

    for name in ("simulate", "sweep_model", "fit", "CalibrationProblem"):
        monkeypatch.setattr(ck, name, refuse)


# ---------------------------------------------------------------------------------------------------------------
# sweep specs


@pytest.mark.parametrize(
    "spec, fragments",
    [
        (
            '[sweep]\nn = 4\nmetrics = "concentration_auc"\n',
            ["[sweep] metrics must be a non-empty array of strings", 'got "concentration_auc"'],
        ),
        ("[sweep]\nn = 8.7\n", ["[sweep] n must be a whole number, got 8.7"]),
        ('[sweep]\nn = "many"\n', ['[sweep] n must be a whole number, got "many"']),
        ('[sweep]\nseed = "abc"\n', ['[sweep] seed must be a whole number, got "abc"']),
        ("[sweep]\nseed = -1\n", ["[sweep] seed must be between 0 and 4294967295, got -1"]),
        ('[sweep]\nlog = "no"\n', ['[sweep] log must be true or false, got "no"']),
        ("sweep = 5\n", ["sweep (the [sweep] table) must be a table, got 5"]),
        ("[sweep]\nn = 1\n", ["[sweep] n must be at least 2, got 1"]),
        ("[sweep]\nn = 1e9\n", ["[sweep] n must be at most 100,000,000, got 1,000,000,000"]),
        ("[sweep]\nn = 1_000_000_000\n", ["[sweep] n must be at most 100,000,000, got 1,000,000,000"]),
        (
            '[sweep]\nmetrics = ["concentration_auc", "nope"]\n',
            ["[sweep] metrics names unknown metric(s) ['nope']", "'concentration_cmax'"],
        ),
        ("[sweep]\nnn = 4\n", ["[sweep]: unknown key(s) ['nn']"]),
        (
            '[sweep]\nmetrics = ["concentration_auc", "concentration_auc"]\n',
            ["[sweep] metrics names ['concentration_auc'] more than once"],
        ),
    ],
)
def test_sweep_spec_mistakes(tmp_path, capsys, no_solve, spec, fragments):
    ranges = tmp_path / "spec.toml"
    ranges.write_text(spec + ("" if "[ranges]" in spec else "[ranges]\ncl = [50.0, 200.0]\n"))
    _usage_error(
        capsys,
        [
            "sweep",
            "--model",
            "OneCompartmentPK",
            "--regimen",
            "none",
            "--ranges",
            str(ranges),
            "--out",
            str(tmp_path / "o"),
            "--quiet",
        ],
        str(ranges),
        *fragments,
    )


@pytest.mark.parametrize(
    "ranges, fragment",
    [
        ('cl = [50.0, "200"]', "range of 'cl' must be [lower, upper] with lower < upper, got [50.0, \"200\"]"),
        ("cl = [200.0, 50.0]", "range of 'cl' must be [lower, upper] with lower < upper"),
        ("nope = [1.0, 2.0]", "unknown parameter 'nope'"),
        ("cl = [-5.0, 2.0]", "range [-5.0, 2.0] of 'cl' leaves its declared bounds"),
    ],
)
def test_sweep_range_mistakes(tmp_path, capsys, no_solve, ranges, fragment):
    (tmp_path / "r.toml").write_text(f"[ranges]\n{ranges}\n")
    _usage_error(
        capsys,
        [
            "sweep",
            "--model",
            "OneCompartmentPK",
            "--ranges",
            str(tmp_path / "r.toml"),
            "--out",
            str(tmp_path / "o"),
            "--quiet",
        ],
        fragment,
    )


@pytest.mark.parametrize(
    "argv, fragment",
    [
        (["--n", "1"], "argument --n: must be between 2 and 100000000, got 1"),
        (["--n", "8.7"], "argument --n: must be a whole number between 2 and 100000000, got '8.7'"),
        (["--chunk-size", "0"], "argument --chunk-size: must be between 1 and 100000000, got 0"),
        (["--devices", "64"], "--devices 64: only 1 cpu device(s) are available"),
        (["--num-processes", "0"], "argument --num-processes: must be at least 1, got 0"),
        (["--t-end", "nan"], "argument --t-end: must be a finite number, got 'nan'"),
        (["--points", "1e8"], "argument --points: must be between 2 and 1000000, got 100000000"),
        (["--points", "100000000"], "argument --points: must be between 2 and 1000000, got 100000000"),
        (["--n", "1e9"], "argument --n: must be between 2 and 100000000, got 1000000000"),
        (["--chunk-size", "1e9"], "argument --chunk-size: must be between 1 and 100000000, got 1000000000"),
    ],
)
def test_sweep_argument_mistakes(tmp_path, capsys, no_solve, argv, fragment):
    (tmp_path / "r.toml").write_text("[ranges]\ncl = [50.0, 200.0]\n")
    _usage_error(
        capsys,
        [
            "sweep",
            "--model",
            "OneCompartmentPK",
            "--ranges",
            str(tmp_path / "r.toml"),
            *argv,
            "--out",
            str(tmp_path / "o"),
            "--quiet",
        ],
        fragment,
    )


@pytest.mark.parametrize(
    "argv, fragment",
    [
        (["--ensemble", "1e7"], "argument --ensemble: must be between 0 and 1000000, got 10000000"),
        (["--repeats", "0"], "argument --repeats: must be between 1 and 10000, got 0"),
        (["--repeats", "1e5"], "argument --repeats: must be between 1 and 10000, got 100000"),
        (["--points", "1e8"], "argument --points: must be between 2 and 1000000, got 100000000"),
    ],
)
def test_bench_argument_mistakes(tmp_path, capsys, no_solve, argv, fragment):
    _usage_error(
        capsys, ["bench", "--model", "OneCompartmentPK", *argv, "--out", str(tmp_path / "o"), "--quiet"], fragment
    )


@pytest.mark.parametrize(
    "error", [MemoryError(), "RESOURCE_EXHAUSTED: Out of memory while trying to allocate 8e10 bytes.\nmore detail"]
)
def test_running_out_of_memory_names_the_arguments_to_lower(tmp_path, capsys, monkeypatch, error):
    # Memory the inputs ask for and the machine does not have: one line naming the arguments that size it, exit 2
    # (not a traceback of the XLA allocator).
    import jax

    def allocate(*args, **kwargs):
        raise error if isinstance(error, MemoryError) else jax.errors.JaxRuntimeError(error)

    monkeypatch.setattr(ck, "simulate", allocate)
    monkeypatch.setattr(ck, "sweep_model", allocate)
    (tmp_path / "r.toml").write_text("[ranges]\ncl = [50.0, 200.0]\n")
    err = _usage_error(
        capsys,
        [
            "sweep",
            "--model",
            "OneCompartmentPK",
            "--ranges",
            str(tmp_path / "r.toml"),
            "--out",
            str(tmp_path / "o"),
            "--quiet",
        ],
        "carkinetics sweep: error: out of memory (",
        "lower --chunk-size, --points, --n, --devices (what is held in memory at once).",
    )
    if not isinstance(error, MemoryError):
        assert "RESOURCE_EXHAUSTED: Out of memory while trying to allocate 8e10 bytes.)" in err
    _usage_error(
        capsys,
        ["simulate", "--model", "OneCompartmentPK", "--regimen", "none", "--out", str(tmp_path / "o"), "--quiet"],
        "lower --points (what is held",
    )
    # any other runtime error is not a user mistake: it still reaches the user as a traceback (exit 1 from Python)
    monkeypatch.setattr(ck, "simulate", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("a bug")))
    with pytest.raises(RuntimeError, match="a bug"):
        cli.main(
            ["simulate", "--model", "OneCompartmentPK", "--regimen", "none", "--out", str(tmp_path / "o"), "--quiet"]
        )


def test_points_accepts_whole_numbers_in_exponent_form():
    parse = _common.whole_number(2, _common.MAX_POINTS)
    assert parse("1e4") == 10_000 and parse("281") == 281
    for bad in ("1e8", "2.5", "many", "inf", "1"):
        with pytest.raises(argparse.ArgumentTypeError):
            parse(bad)


def test_devices_above_the_core_count_are_refused_in_a_fresh_process(tmp_path):
    # The `carkinetics` process creates at most one CPU device per core (64 host devices on 2 cores would only
    # compete for them) and `--devices 64` is then a one-line usage error naming the core count, before any solve.
    (tmp_path / "r.toml").write_text("[ranges]\ncl = [50.0, 200.0]\n")
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env["JAX_PLATFORMS"] = "cpu"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "carkinetics.cli",
            "sweep",
            "--model",
            "OneCompartmentPK",
            "--ranges",
            str(tmp_path / "r.toml"),
            "--devices",
            "64",
            "--out",
            str(tmp_path / "o"),
            "--quiet",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    cores = _common.available_cores()
    assert proc.returncode == cli.EXIT_USAGE, proc.stderr[-2000:]
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    assert f"--devices 64: only {cores} cpu device(s) are available" in proc.stderr
    assert f"this machine has {cores} CPU core(s)" in proc.stderr
    assert not (tmp_path / "o" / "sweep.csv").exists()


def test_host_devices_never_exceed_the_cores(monkeypatch):
    from jax._src import xla_bridge

    monkeypatch.setattr(_common, "available_cores", lambda: 2)
    monkeypatch.setattr(xla_bridge, "backends_are_initialized", lambda: False)
    monkeypatch.delenv("XLA_FLAGS", raising=False)
    _common.setup_host_devices(64)
    assert os.environ["XLA_FLAGS"] == "--xla_force_host_platform_device_count=2"


# ---------------------------------------------------------------------------------------------------------------
# regimen files


@pytest.mark.parametrize(
    "text, fragments",
    [
        ("bolus = [1, 2]\n", ["bolus must be an array of tables, each written [[bolus]]", "got bolus = [1, 2]"]),
        ("[bolus]\ntime = 0\n", ["bolus must be an array of tables"]),
        (
            '[[bolus]]\ntime = "0"\namount = 1\nstate = "central"\n',
            ['[[bolus]] #1: time must be a finite number, got "0"'],
        ),
        ("[[bolus]]\ntime = 0\namount = 1\nstate = 3\n", ["[[bolus]] #1: state must be a non-empty string"]),
        (
            '[[bolus]]\ntime = 0\namount = true\nstate = "central"\n',
            ["[[bolus]] #1: amount must be a finite number, got true"],
        ),
        ('[[bolus]]\ntime = 0\namount = inf\nstate = "central"\n', ["amount must be a finite number, got inf"]),
        (
            '[[bolus]]\ntime = 0\namount = 1\nstate = "central"\naddl = 2.5\nii = 1\n',
            ["[[bolus]] #1: addl must be a whole number, got 2.5"],
        ),
        ('[[bolus]]\ntime = 0\nstate = "central"\n', ["[[bolus]] #1: missing required key(s) ['amount']"]),
        (
            '[[infusion]]\nstart = 0\nstate = "central"\namount = 1\n',
            ["[[infusion]] #1: missing required key(s) ['duration']"],
        ),
        (
            '[[fractional_kill]]\ntime = 0\nfraction = 0.5\nstates = "central"\n',
            ['[[fractional_kill]] #1: states must be a non-empty array of strings, e.g. ["a", "b"], got "central"'],
        ),
        (
            '[[fludarabine]]\ndays = 5\nbsa_m2 = 1.8\nstate = "central"\n',
            ["[[fludarabine]] #1: days must be a non-empty array of finite numbers, e.g. [-5, -4, -3], got 5"],
        ),
        (
            '[[fludarabine]]\nstate = "central"\n',
            [
                "[[fludarabine]] #1: give bsa_m2 (m²), or weight_kg and height_cm: "
                "OneCompartmentPK declares no body size"
            ],
        ),
        (
            '[[fludarabine]]\nstate = "central"\nweight_kg = 70\n',
            ["give bsa_m2 (m²), or weight_kg and height_cm (weight_kg given)"],
        ),
        (
            '[[fludarabine]]\nstate = "central"\nbsa_m2 = 1.8\nweight_kg = 70\n',
            ["give either bsa_m2 or weight_kg and height_cm, not both"],
        ),
        ('[[fludarabine]]\nstate = "central"\nweight_kg = 70\nheight_cm = 1.7\n', ["height_cm"]),
        (
            '[[car_t]]\ncells_per_kg = 1e6\nstate = "central"\n',
            ["[[car_t]] #1: cells_per_kg needs weight_kg (kg): OneCompartmentPK declares no body weight"],
        ),
        ('[[car_t]]\nstate = "central"\n', ["[[car_t]] #1: give cells (a flat number of CAR-T cells) or cells_per_kg"]),
        ("[[car_t]]\ncells = 1e6\n", ["unknown state(s) ['car_effector'] for OneCompartmentPK"]),
        ("[[kill]]\ntime = 0\n", ["unknown key(s) ['kill']"]),
    ],
)
def test_regimen_file_mistakes(tmp_path, capsys, no_solve, text, fragments):
    (tmp_path / "reg.toml").write_text(text)
    _usage_error(
        capsys,
        [
            "simulate",
            "--model",
            "OneCompartmentPK",
            "--regimen",
            str(tmp_path / "reg.toml"),
            "--out",
            str(tmp_path / "o"),
            "--quiet",
        ],
        str(tmp_path / "reg.toml"),
        *fragments,
    )


def test_named_regimen_of_another_model(tmp_path, capsys, no_solve):
    _usage_error(
        capsys,
        ["simulate", "--model", "TwoCompartmentPK", "--regimen", "erlangen", "--out", str(tmp_path / "o"), "--quiet"],
        "--regimen erlangen: does not apply to TwoCompartmentPK",
    )


def _resolve(argv):
    """The run (model, regimen, save times) `simulate argv` would solve, without solving it."""
    parser = _main.build_parser([c for c in _main.commands() if c.name == "simulate"])
    args = parser.parse_args(["simulate", *argv])
    return _inputs.resolve_run(args, cli.Plugins())


def test_body_size_comes_from_the_model_and_is_said(tmp_path, capsys):
    # `[[car_t]] cells_per_kg` and `[[fludarabine]]`/`[[cyclophosphamide]]` without BSA take the body size from the
    # model (the human preset: body.weight_kg 70 kg, body.height_cm 170 cm) and say so; never a silent 1.8 m².
    (tmp_path / "reg.toml").write_text(
        "[[car_t]]\ncells_per_kg = 1e6\n\n[[fludarabine]]\n\n"
        "[[cyclophosphamide]]\ndose_mg_per_m2 = 500.0\ndays = [-4]\n"
    )
    run = _resolve(["--preset", "human", "--regimen", str(tmp_path / "reg.toml")])
    err = capsys.readouterr().err
    w = float(run.model.body.weight_kg)
    bsa = ck.bsa_mosteller(w, float(run.model.body.height_cm))
    amounts = sorted(float(d.amount) for d in run.regimen.doses if isinstance(d, (ck.Bolus, ck.Infusion)))
    expected = sorted([1e6 * w, *[25.0 * bsa] * 3, 500.0 * bsa])
    np.testing.assert_allclose(amounts, expected, rtol=1e-12)
    assert f"[[car_t]] #1: no weight_kg given: using the model's body.weight_kg = {w:g} kg" in err
    assert (
        f"[[fludarabine]] #1: no bsa_m2 given: using {bsa:.3g} m² (Mosteller) from the model's "
        f"body.weight_kg = {w:g} kg and body.height_cm = 170 cm"
    ) in err
    assert "[[fludarabine]] #1: using the default dose_mg_per_m2 = 25 and days = [-5.0, -4.0, -3.0]" in err
    assert "[[cyclophosphamide]] #1: no bsa_m2 given" in err and "[[cyclophosphamide]] #1: using the default" not in err
    assert all(line.startswith("note: ") for line in err.splitlines())
    # given values win, without a note
    (tmp_path / "given.toml").write_text(
        "[[car_t]]\ncells_per_kg = 1e6\nweight_kg = 50.0\n\n"
        "[[fludarabine]]\nbsa_m2 = 1.5\ndose_mg_per_m2 = 30.0\ndays = [-5]\n"
    )
    run = _resolve(["--preset", "human", "--regimen", str(tmp_path / "given.toml")])
    assert sorted(float(d.amount) for d in run.regimen.doses) == pytest.approx([45.0, 5e7])
    assert capsys.readouterr().err == ""


# ---------------------------------------------------------------------------------------------------------------
# data, outputs and other arguments


@pytest.mark.parametrize(
    "text, fragments",
    [
        (
            "time,name,value\n0.5,concentration,1.1\n1.0,conc,0.4\n",
            [
                "line 3: name 'conc' is neither an observable nor a state of OneCompartmentPK",
                "observables are ['concentration']",
            ],
        ),
        ("time,name,value\n0.5,concentration,x\n", ["line 2: time and value must be numbers, got '0.5' and 'x'"]),
        ("time,name,value\nnan,concentration,1\n", ["line 2: time and value must be finite"]),
        ("time,name,value\n", ["no data rows below the header"]),
        ("ID,TIME,AMT,CMT,EVID,DV,MDV\n1,0.5,.,2,0,1.1,0\n", ["CMT"]),
    ],
)
def test_data_mistakes(tmp_path, capsys, no_solve, text, fragments):
    (tmp_path / "data.csv").write_text(text)
    _usage_error(
        capsys,
        [
            "simulate",
            "--model",
            "OneCompartmentPK",
            "--data",
            str(tmp_path / "data.csv"),
            "--out",
            str(tmp_path / "o"),
            "--quiet",
        ],
        str(tmp_path / "data.csv"),
        *fragments,
    )


def test_data_in_latin1_is_a_usage_error(tmp_path, capsys, no_solve):
    (tmp_path / "data.csv").write_bytes("time,name,value\n0.5,concentration,1.1 # µ\n".encode("latin-1"))
    _usage_error(
        capsys,
        [
            "simulate",
            "--model",
            "OneCompartmentPK",
            "--data",
            str(tmp_path / "data.csv"),
            "--out",
            str(tmp_path / "o"),
            "--quiet",
        ],
        "is not UTF-8 text",
    )


@pytest.mark.parametrize(
    "argv, fragment",
    [
        (["--outputs", ","], "--outputs ',' names no output"),
        (
            ["--outputs", "concentration, concentration"],
            "--outputs 'concentration, concentration' names ['concentration'] more than once",
        ),
        (["--t-start", "inf"], "argument --t-start: must be a finite number, got 'inf'"),
        (["--points", "1"], "argument --points: must be between 2 and 1000000, got 1"),
        (["--params", "{dir}/latin1.toml"], "latin1.toml is not UTF-8 text"),
    ],
)
def test_simulate_argument_mistakes(tmp_path, capsys, no_solve, argv, fragment):
    (tmp_path / "latin1.toml").write_bytes("[parameters]\n# µ\ncl = 1.0\n".encode("latin-1"))
    argv = [a.format(dir=tmp_path) for a in argv]
    _usage_error(
        capsys, ["simulate", "--model", "OneCompartmentPK", *argv, "--out", str(tmp_path / "o"), "--quiet"], fragment
    )


@pytest.mark.parametrize(
    "argv, fragment",
    [
        (["--params", "{dir}/none.toml"], "--params '{dir}/none.toml': the TOML file does not exist"),
        (["--params", "{dir}"], "--params '{dir}' is a folder; give the TOML file"),
        (["--regimen", "{dir}/none.toml"], "--regimen '{dir}/none.toml': the TOML file does not exist"),
        (["--events", "{dir}"], "--events '{dir}' is a folder; give the event table (CSV) file"),
        (["--data", "{dir}"], "--data '{dir}' is a folder; give the data (CSV) file"),
        (["--data", "{dir}/none.csv"], "--data '{dir}/none.csv': the data (CSV) file does not exist"),
        (["--params", "{dir}/bad.toml"], "--params {dir}/bad.toml is not valid TOML"),
    ],
)
def test_input_file_mistakes_name_the_argument(tmp_path, capsys, no_solve, argv, fragment):
    (tmp_path / "bad.toml").write_text("[parameters\n")
    argv = [a.format(dir=tmp_path) for a in argv]
    if "--events" not in argv and "--regimen" not in argv:
        argv = ["--regimen", "none", *argv]
    _usage_error(
        capsys,
        ["simulate", "--model", "OneCompartmentPK", *argv, "--out", str(tmp_path / "o"), "--quiet"],
        fragment.format(dir=tmp_path),
    )
    _usage_error(
        capsys,
        ["sweep", "--model", "OneCompartmentPK", "--ranges", str(tmp_path), "--out", str(tmp_path / "o"), "--quiet"],
        f"--ranges '{tmp_path}' is a folder; give the TOML file",
    )


def test_unwritable_out_is_found_before_any_computation(tmp_path, capsys, no_solve):
    (tmp_path / "r.toml").write_text("[ranges]\ncl = [50.0, 200.0]\n")
    (tmp_path / "file.txt").write_text("not a folder")
    sweep = ["sweep", "--model", "OneCompartmentPK", "--ranges", str(tmp_path / "r.toml"), "--quiet", "--out"]
    _usage_error(
        capsys, [*sweep, str(tmp_path / "file.txt")], f"--out '{tmp_path / 'file.txt'}' is a file, not a folder"
    )
    _usage_error(
        capsys,
        [*sweep, str(tmp_path / "file.txt" / "sub")],
        f"cannot be created: {tmp_path / 'file.txt'} is a file, not a folder",
    )
    # a folder where no file can be created (/proc refuses new files even to root)
    _usage_error(capsys, [*sweep, "/proc"], "--out '/proc': cannot write files there")
    _usage_error(
        capsys, [*sweep, "/proc/carkinetics_out"], "--out '/proc/carkinetics_out': cannot write files there (in /proc)"
    )
    for command in (["translate"], ["calibrate", "--petab", str(tmp_path)], ["bench"], ["demo"]):
        _usage_error(capsys, [*command, "--quiet", "--out", "/proc"], "--out '/proc': cannot write files there")


def test_files_of_an_earlier_run_are_removed_and_said(tmp_path, capsys):
    # Choice (documented in docs/cli.md and the carkinetics.cli docstring): a command removes, before it computes,
    # the files it writes (Command.outputs) that an earlier run left in --out, with a note; other files stay.
    out = tmp_path / "o"
    out.mkdir()
    for name in ("model.xml", "simulation.png", "notes.txt", "sweep.csv"):
        (out / name).write_text("from an earlier run")
    rc = cli.main(
        ["simulate", "--model", "OneCompartmentPK", "--regimen", "none", "--points", "3", "--out", str(out), "--quiet"]
    )
    err = capsys.readouterr().err
    assert rc == 0
    assert not (out / "model.xml").exists()  # --sbml not given this time: a stale model.xml would mislead
    assert (out / "simulation.png").read_bytes()[:4] == b"\x89PNG"
    assert (out / "notes.txt").read_text() == "from an earlier run"  # not a file simulate writes
    assert (out / "sweep.csv").read_text() == "from an earlier run"  # written by another command
    assert err == (
        f"note: removed 2 file(s) of an earlier run from {out} (this command writes them): model.xml, simulation.png\n"
    )
    assert not [f for f in os.listdir(out) if ".tmp" in f or f.startswith(".staging")]


def test_every_builtin_command_declares_its_outputs():
    for cmd in _main.commands():
        if isinstance(cmd, cli.Command) and cmd.name in (
            "simulate",
            "sweep",
            "calibrate",
            "bench",
            "translate",
            "demo",
            "fit-population",
            "trial",
        ):
            assert cmd.outputs, cmd.name


# ---------------------------------------------------------------------------------------------------------------
# translate


@pytest.mark.parametrize(
    "argv, fragment",
    [
        (["--gaps", ",,,"], "--gaps ',,,' names no gap id"),
        (["--gaps", "G1,G1"], "--gaps 'G1,G1' names a gap id more than once"),
        (["--samples", "-1"], "argument --samples: must be between 0 and 100000, got -1"),
        (["--samples", "1e6"], "argument --samples: must be between 0 and 100000, got 1000000"),
        (["--batch-size", "1e9"], "argument --batch-size: must be between 1 and 100000000, got 1000000000"),
        (["--batch-size", "0"], "argument --batch-size: must be between 1 and 100000000, got 0"),
        (["--seed", "abc"], "argument --seed: must be a whole number between 0 and 4294967295, got 'abc'"),
        (["--t-end", "inf"], "argument --t-end: must be a finite number, got 'inf'"),
    ],
)
def test_translate_argument_mistakes(tmp_path, capsys, no_solve, monkeypatch, argv, fragment):
    from carkinetics.models.sle import translation

    monkeypatch.setattr(translation, "write_translation_report", lambda *a, **k: pytest.fail("computed"))
    _usage_error(capsys, ["translate", *argv, "--out", str(tmp_path / "o"), "--quiet"], fragment)


# ---------------------------------------------------------------------------------------------------------------
# calibrate (PEtab)


def _petab(folder, *, conditions=None):
    """A one-condition PEtab problem: noise-free concentrations of OneCompartmentPK(cl=100) after 100 mg at day 0."""
    ts = np.array([0.1, 0.25, 0.5, 1.0, 1.5])
    sol = ck.simulate(OneCompartmentPK(cl=100.0), ck.Bolus(0.0, 100.0, "central"), ts)
    meas = tuple(
        cio.PetabMeasurement("conc", "c0", float(t), float(v))
        for t, v in zip(ts, np.asarray(sol.observables.concentration))
    )
    prob = cio.PetabProblem(
        meas,
        cio.petab_parameters_from_model(OneCompartmentPK(), estimate=["cl"]),
        (cio.PetabCondition("c0", "", dict(conditions or {})),),
        (cio.PetabObservable("conc", "plasma", "concentration", "log10", "0.05", "normal"),),
    )
    cio.write_petab(prob, folder, model=OneCompartmentPK())
    (folder / "bolus.toml").write_text(BOLUS)
    return folder


def _edit_tsv(path, row_id, **values):
    lines = path.read_text().splitlines()
    header = lines[0].split("\t")
    for i, line in enumerate(lines[1:], 1):
        cells = line.split("\t")
        if cells[0] == row_id:
            for k, v in values.items():
                cells[header.index(k)] = str(v)
            lines[i] = "\t".join(cells)
    path.write_text("\n".join(lines) + "\n")


def _calibrate(folder, *extra):
    return [
        "calibrate",
        "--model",
        "OneCompartmentPK",
        "--petab",
        str(folder),
        "--regimen",
        str(folder / "bolus.toml"),
        "--starts",
        "2",
        "--out",
        str(folder / "out"),
        "--quiet",
        *extra,
    ]


def test_petab_values_outside_the_model_bounds(tmp_path, capsys, no_solve, monkeypatch):
    monkeypatch.undo()  # the problem is written with ck.simulate; solves are refused again below
    p = _petab(tmp_path / "nominal")
    _edit_tsv(p / "parameters.tsv", "v", lowerBound=-10, nominalValue=-1)  # a volume of -1 L
    q = _petab(tmp_path / "condition", conditions={"v": 10.0})
    (q / "conditions.tsv").write_text((q / "conditions.tsv").read_text().replace("10.0", "-5.0"))
    r = _petab(tmp_path / "bounds")
    _edit_tsv(r / "parameters.tsv", "cl", parameterScale="lin", lowerBound=-1)
    s = _petab(tmp_path / "start")
    _edit_tsv(s / "parameters.tsv", "cl", lowerBound=129.84)  # the nominal value on the lower bound
    for name in ("simulate", "fit", "CalibrationProblem"):
        monkeypatch.setattr(ck, name, lambda *a, **k: pytest.fail("computed"))
    _usage_error(
        capsys, _calibrate(p), "parameters.tsv nominalValue / conditions.tsv 'c0'", "'v'", "outside its declared bounds"
    )
    _usage_error(capsys, _calibrate(q), "conditions.tsv 'c0'", "-5.0", "outside its declared bounds")
    _usage_error(capsys, _calibrate(r), "parameters.tsv: bounds [-1, 12984] of 'cl' leave the declared bounds of cl")
    _usage_error(
        capsys,
        _calibrate(s),
        "parameters.tsv: the start value 129.84 L/d of 'cl'",
        "must lie strictly inside its bounds [129.84, 12984]",
    )


def test_petab_duplicate_columns_are_named(tmp_path, capsys, no_solve, monkeypatch):
    monkeypatch.undo()
    p = _petab(tmp_path / "p")
    lines = (p / "measurements.tsv").read_text().splitlines()
    lines = [line + "\t" + line.split("\t")[2] for line in lines]  # a second "time" column
    (p / "measurements.tsv").write_text("\n".join(lines) + "\n")
    _usage_error(capsys, _calibrate(p), "measurements.tsv has duplicate column(s) ['time'] in its header")


def test_a_fit_that_cannot_start_exits_4_with_the_reason(tmp_path, capsys, monkeypatch):
    # The command's side of a fit that cannot start (the library's side, with the real problem, is tested in
    # test_hardening_fit.py and end to end by the slow test below): one line, exit 4, nothing reported as converged.
    p = _petab(tmp_path / "p")

    def cannot_start(*args, **kwargs):
        raise ValueError(
            "The data cannot be fitted: every start gives the failure penalty. At the first start "
            "'conc' is not positive at some data time (does any dose reach this observable?)."
        )

    monkeypatch.setattr(ck, "fit", cannot_start)
    rc = cli.main(_calibrate(p))
    captured = capsys.readouterr()
    assert rc == cli.EXIT_NUMERICAL
    assert captured.err == (
        "carkinetics calibrate: the fit FAILED: it could not start: The data cannot be fitted: "
        "every start gives the failure penalty. At the first start 'conc' is not positive at "
        "some data time (does any dose reach this observable?).\n"
    )
    assert "converged" not in captured.out and not (p / "out" / "fitted_parameters.csv").exists()


@pytest.mark.slow
def test_a_fit_no_dose_reaches_fails_with_exit_4(tmp_path, capsys):
    # Log-scale data of an observable that no dose reaches (--regimen none): every start gives the failure penalty;
    # the command says the fit failed and why, exit 4 (never "converged" with exit 0).
    p = _petab(tmp_path / "p")
    argv = _calibrate(p)
    argv[argv.index("--regimen") + 1] = "none"
    rc = cli.main(argv)
    captured = capsys.readouterr()
    assert rc == cli.EXIT_NUMERICAL
    assert captured.err.startswith(
        "carkinetics calibrate: the fit FAILED: it could not start: The data cannot be fitted"
    )
    assert "does any dose reach this observable?" in captured.err and captured.err.count("\n") == 1
    assert "converged" not in captured.out


def test_petab_bounds_bound_the_fit_and_a_failed_fit_exits_4(tmp_path, capsys, monkeypatch):
    # The data were made with cl = 100 L/d; lowerBound = 170 must keep the fit at or above 170 (the bound was
    # ignored, and 150 was "fitted"). The best value then sits on the bound: the command says so in a note.
    p = _petab(tmp_path / "p")
    _edit_tsv(p / "parameters.tsv", "cl", lowerBound=170, nominalValue=300)
    real_fit, results = ck.fit, []

    def keep(*args, **kwargs):
        results.append(real_fit(*args, **kwargs))
        return results[-1]

    monkeypatch.setattr(ck, "fit", keep)
    rc = cli.main(_calibrate(p))
    captured = capsys.readouterr()
    assert rc == cli.EXIT_OK, captured.err
    row = next(r for r in _read_csv(p / "out" / "fitted_parameters.csv") if r["parameter"] == "cl")
    assert 170.0 <= float(row["fitted_value"]) <= 170.1
    assert row["within_petab_bounds"] == "True" and row["at_petab_bound"] == "lower" and row["fit_succeeded"] == "True"
    assert "note: cl = 170 L/d lies on its lower bound (lowerBound 170 in parameters.tsv)" in captured.err

    # A fit whose best start did not converge still writes its files, but says that it failed: exit 4.
    def not_converged(*args, **kwargs):  # the same fit (not run again), its starts marked not converged
        import equinox as eqx
        import jax.numpy as jnp

        res = results[0]
        return eqx.tree_at(lambda r: r.converged, res, jnp.zeros_like(res.converged))

    monkeypatch.setattr(ck, "fit", not_converged)
    rc = cli.main(_calibrate(p))
    captured = capsys.readouterr()
    assert rc == cli.EXIT_NUMERICAL
    assert captured.err.splitlines()[-1].startswith(
        "carkinetics calibrate: the fit FAILED: its best start did not converge; the values above are not estimates"
    )
    assert "0 converged" in captured.out and "THE FIT FAILED" in (p / "out" / "convergence.md").read_text()
    row = next(r for r in _read_csv(p / "out" / "fitted_parameters.csv") if r["parameter"] == "cl")
    assert row["fit_succeeded"] == "False"


def _read_csv(path):
    import csv

    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))
