"""The command line: outputs match the library, user mistakes give one-line errors and exit code 2."""

import csv
import importlib
import importlib.metadata
import os

import jax.numpy as jnp
import numpy as np
import pytest

import carkinetics as ck
from carkinetics import cli
from carkinetics.cli import _bench, _calibrate, _common, _inputs, _main, _plugins
from carkinetics.models import OneCompartmentPK, TwoCompartmentPK
from carkinetics.models.sle import demo

REGIMEN_TOML = """
[[bolus]]
time = 0.0
amount = 100.0
state = "central"
ii = 1.0
addl = 2

[[infusion]]
start = 0.5
state = "peripheral"
amount = 20.0
duration = 0.25
"""


def _regimen():
    return ck.Regimen(
        [ck.Bolus(0.0, 100.0, "central", ii=1.0, addl=2), ck.Infusion(0.5, "peripheral", amount=20.0, duration=0.25)]
    )


def _read_tidy(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.fixture
def files(tmp_path):
    (tmp_path / "reg.toml").write_text(REGIMEN_TOML)
    (tmp_path / "params.toml").write_text("[parameters]\ncl = 150.0\n")
    return tmp_path


def test_simulate_writes_tidy_csv_matching_the_library(files, capsys):
    out = files / "out"
    rc = cli.main(
        [
            "simulate",
            "--model",
            "TwoCompartmentPK",
            "--regimen",
            str(files / "reg.toml"),
            "--params",
            str(files / "params.toml"),
            "--t-end",
            "3",
            "--points",
            "31",
            "--out",
            str(out),
            "--quiet",
        ]
    )
    assert rc == cli.EXIT_OK
    assert f"output folder: {out}" in capsys.readouterr().out
    rows = _read_tidy(out / "simulation.csv")
    ref = ck.simulate(TwoCompartmentPK(cl=150.0), _regimen(), jnp.linspace(0.0, 3.0, 31))
    conc = [r for r in rows if r["name"] == "concentration"]
    assert len(conc) == 31 and {r["unit"] for r in conc} == {"mg/L"} and {r["kind"] for r in conc} == {"observable"}
    np.testing.assert_allclose([float(r["value"]) for r in conc], np.asarray(ref.observables.concentration), rtol=1e-12)
    assert len(rows) == 31 * 3  # two states + one observable, long format
    with open(out / "simulation.png", "rb") as fh:
        assert fh.read(4) == b"\x89PNG"
    params = _read_tidy(out / "parameters.csv")
    assert float(next(p for p in params if p["parameter"] == "cl")["value"]) == 150.0


def test_events_csv_gives_the_same_result_as_toml(files):
    ck.write_nonmem_events(_regimen(), str(files / "ev.csv"), TwoCompartmentPK.state_names())
    for flag, src, out in (("--events", "ev.csv", "a"), ("--regimen", "reg.toml", "b")):
        assert (
            cli.main(
                [
                    "simulate",
                    "--model",
                    "TwoCompartmentPK",
                    flag,
                    str(files / src),
                    "--t-end",
                    "2",
                    "--points",
                    "21",
                    "--out",
                    str(files / out),
                    "--quiet",
                ]
            )
            == 0
        )
    a = [float(r["value"]) for r in _read_tidy(files / "a" / "simulation.csv")]
    b = [float(r["value"]) for r in _read_tidy(files / "b" / "simulation.csv")]
    np.testing.assert_allclose(a, b, rtol=1e-12)


@pytest.mark.parametrize(
    "argv, message",
    [
        (
            ["--model", "Nope"],
            "--model 'Nope' is not an installed model; choose one of ['OneCompartmentOralPK', 'OneCompartmentPK'",
        ),
        (["--regimen", "nope"], "--regimen 'nope' is neither a TOML file nor a regimen of the installed plugins"),
        (["--params", "{dir}/bad_params.toml"], "Parameter 'cl' = -1.0 L/d is outside its declared bounds"),
        (["--params", "{dir}/missing.toml"], "does not exist"),
        (["--regimen", "{dir}/bad_key.toml"], "unknown key(s) ['amout']"),
        (["--regimen", "{dir}/bad_state.toml"], "unknown state(s) ['blood']"),
        (["--regimen", "{dir}/broken.toml"], "is not valid TOML"),
        (["--t-end", "-1"], "--t-end (-1.0) must be later than --t-start (0.0)"),
        (["--outputs", "concentration,nope"], "--outputs: unknown name(s) ['nope']"),
    ],
)
def test_user_mistakes_exit_2_without_traceback(files, capsys, argv, message):
    (files / "bad_params.toml").write_text("[parameters]\ncl = -1\n")
    (files / "bad_key.toml").write_text('[[bolus]]\ntime = 0\namout = 1\nstate = "central"\n')
    (files / "bad_state.toml").write_text('[[bolus]]\ntime = 0\namount = 1\nstate = "blood"\n')
    (files / "broken.toml").write_text("[[bolus]\n")
    argv = [a.format(dir=files) for a in argv]
    rc = cli.main(["simulate", "--model", "TwoCompartmentPK", *argv, "--out", str(files / "o"), "--quiet"])
    err = capsys.readouterr().err
    assert rc == cli.EXIT_USAGE
    assert message in err and "Traceback" not in err
    assert err.startswith("carkinetics simulate: error: ") and err.count("\n") == 1  # one line


@pytest.mark.parametrize(
    "argv, message",
    [
        (
            ["simulate", "--points", "many"],
            "argument --points: must be a whole number between 2 and 1000000, got 'many'",
        ),
        (["sweep", "--model", "OneCompartmentPK"], "the following arguments are required: --ranges"),
        (["sweep", "--ranges", "r.toml", "--engine", "jit"], "argument --engine: invalid choice: 'jit'"),
        (["nope"], "argument command: invalid choice: 'nope'"),
    ],
)
def test_usage_errors_return_2_with_one_line(capsys, argv, message):
    assert cli.main(argv) == cli.EXIT_USAGE  # returned, not raised: main([...]) is safe to call in-process
    captured = capsys.readouterr()
    assert captured.out == ""
    assert message in captured.err and "Traceback" not in captured.err
    assert captured.err.count("\n") == 1 and captured.err.startswith("carkinetics")


def test_help_lists_every_command(capsys):
    assert cli.main(["--help"]) == 0
    out = capsys.readouterr().out
    for cmd in ("demo", "simulate", "sweep", "calibrate", "translate", "bench"):
        assert cmd in out
    assert "exit codes: 0 success; 2 bad arguments" in " ".join(out.split())


def _with_entry_points(monkeypatch, extra):
    """Add entry points (group, name, value) to what the command line discovers."""
    real = importlib.metadata.entry_points

    def entry_points(*, group):
        added = [importlib.metadata.EntryPoint(n, v, g) for g, n, v in extra if g == group]
        return list(real(group=group)) + added

    monkeypatch.setattr(importlib.metadata, "entry_points", entry_points)


def test_plugin_discovery_lists_the_sle_commands_models_and_presets():
    plugins = cli.Plugins()
    assert {"OneCompartmentPK", "TwoCompartmentPK", "Stein2019CK", "ReferenceWorkload", "SLECarTModel"} <= set(
        plugins.model_names()
    )
    assert plugins.model_class("SLECarTModel").__name__ == "SLECarTModel"
    commands = {c.name: c for c in cli.Plugins.commands()}
    assert {"demo", "translate", "trial"} <= set(commands)
    assert not any(isinstance(c, _plugins.UnavailableCommand) for c in commands.values())
    assert {"human", "mouse_nzbw", "mouse_mrl_lpr"} <= set(plugins.presets())
    assert plugins.default_preset().name == "human"
    assert {"erlangen", "mouse"} <= set(plugins.regimen_names())
    assert [c.name for c in _main.commands()][:5] == ["simulate", "sweep", "calibrate", "fit-population", "bench"]


def test_broken_plugins_exit_3_and_leave_the_rest_working(files, capsys, monkeypatch):
    _with_entry_points(
        monkeypatch,
        [
            ("carkinetics.commands", "broken", "no_such_module_xyz:Command"),
            ("carkinetics.models", "Broken", "no_such_module_xyz:Model"),
        ],
    )
    assert cli.main(["broken", "--whatever", "1"]) == cli.EXIT_UNAVAILABLE
    err = capsys.readouterr().err
    assert err.startswith("carkinetics broken: not available: ") and "no_such_module_xyz" in err
    assert "Traceback" not in err and err.count("\n") == 1
    rc = cli.main(["simulate", "--model", "Broken", "--out", str(files / "o"), "--quiet"])
    assert rc == cli.EXIT_UNAVAILABLE
    assert "no_such_module_xyz:Model" in capsys.readouterr().err
    # the built-in commands and the working plugins still run
    assert (
        cli.main(["simulate", "--model", "OneCompartmentPK", "--points", "3", "--out", str(files / "o"), "--quiet"])
        == cli.EXIT_OK
    )


def test_solver_failure_exits_4(files, capsys, monkeypatch):
    real = ck.simulate
    monkeypatch.setattr(ck, "simulate", lambda *a, **k: real(*a, **{**k, "max_steps": 2}))
    rc = cli.main(
        [
            "simulate",
            "--model",
            "TwoCompartmentPK",
            "--regimen",
            str(files / "reg.toml"),
            "--out",
            str(files / "o"),
            "--quiet",
        ]
    )
    assert rc == cli.EXIT_NUMERICAL
    assert "max steps reached" in capsys.readouterr().err


def test_sweep_auc_matches_closed_form(files):
    (files / "bolus.toml").write_text('[[bolus]]\ntime = 0.0\namount = 100.0\nstate = "central"\n')
    (files / "ranges.toml").write_text(
        '[sweep]\nn = 6\nseed = 1\nmetrics = ["concentration_auc"]\n[ranges]\ncl = [50.0, 200.0]\n'
    )
    rc = cli.main(
        [
            "sweep",
            "--model",
            "OneCompartmentPK",
            "--regimen",
            str(files / "bolus.toml"),
            "--ranges",
            str(files / "ranges.toml"),
            "--t-end",
            "2",
            "--points",
            "801",
            "--out",
            str(files / "sw"),
            "--quiet",
        ]
    )
    assert rc == 0
    rows = _read_tidy(files / "sw" / "sweep.csv")
    assert len(rows) == 6 and list(rows[0]) == ["member", "cl", "concentration_auc"]
    v = float(OneCompartmentPK().v)
    for r in rows:
        cl = float(r["cl"])
        assert 50.0 <= cl <= 200.0
        exact = 100.0 / cl * (1.0 - np.exp(-cl / v * 2.0))  # mg*d/L, AUC over days 0..2
        assert float(r["concentration_auc"]) == pytest.approx(exact, rel=1e-4)  # trapezoid rule on 801 points
    assert os.path.getsize(files / "sw" / "sweep.png") > 1000


def test_sweep_devices_split_the_members_and_do_not_change_results(files, tmp_path):
    # A fresh `carkinetics sweep --devices 2` process creates two CPU devices (XLA_FLAGS set before JAX starts) and
    # splits the members over them; its metrics equal the one-device sweep of this (already started) process to 1e-12.
    import subprocess
    import sys

    (files / "bolus.toml").write_text('[[bolus]]\ntime = 0.0\namount = 100.0\nstate = "central"\n')
    (files / "ranges.toml").write_text(
        '[sweep]\nn = 10\nseed = 3\nmetrics = ["concentration_auc"]\n[ranges]\ncl = [50.0, 200.0]\n'
    )
    common = [
        "sweep",
        "--model",
        "OneCompartmentPK",
        "--regimen",
        str(files / "bolus.toml"),
        "--ranges",
        str(files / "ranges.toml"),
        "--t-end",
        "2",
        "--points",
        "201",
        "--quiet",
    ]
    assert cli.main(common + ["--devices", "1", "--out", str(files / "one")]) == 0
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env["JAX_PLATFORMS"] = "cpu"
    proc = subprocess.run(
        [sys.executable, "-m", "carkinetics.cli", *common, "--devices", "2", "--out", str(files / "two")],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "10 members on 2 cpu device(s) in 1 process(es); 0 failed" in proc.stdout
    one, two = _read_tidy(files / "one" / "sweep.csv"), _read_tidy(files / "two" / "sweep.csv")
    assert [r["cl"] for r in one] == [r["cl"] for r in two]
    for a, b in zip(one, two):
        assert float(b["concentration_auc"]) == pytest.approx(float(a["concentration_auc"]), rel=1e-12)


def test_sweep_devices_argument_errors(files, capsys):
    (files / "ranges.toml").write_text("[ranges]\ncl = [50.0, 200.0]\n")
    common = [
        "sweep",
        "--model",
        "OneCompartmentPK",
        "--ranges",
        str(files / "ranges.toml"),
        "--quiet",
        "--out",
        str(files / "sw"),
    ]
    assert (
        cli.main(
            [
                "bench",
                "--model",
                "OneCompartmentPK",
                "--ensemble",
                "4",
                "--devices",
                "3",
                "--repeats",
                "1",
                "--out",
                str(files / "b3"),
                "--quiet",
            ]
        )
        == 2
    )
    assert "--devices 3: only 1 cpu device(s)" in capsys.readouterr().err
    for bad in ("0", "two"):
        assert cli.main(common + ["--devices", bad]) == 2
        assert "must be 'all' or a positive integer" in capsys.readouterr().err
    # This process started JAX with one CPU device: asking for more is a one-line usage error.
    assert cli.main(common + ["--devices", "64"]) == 2
    assert "only 1 cpu device(s) are available" in capsys.readouterr().err


def test_setup_host_devices_sets_the_flag_only_before_jax_starts(monkeypatch):
    from jax._src import xla_bridge

    monkeypatch.setattr(_common, "available_cores", lambda: 6)
    monkeypatch.setattr(xla_bridge, "backends_are_initialized", lambda: False)
    monkeypatch.delenv("XLA_FLAGS", raising=False)
    _common.setup_host_devices("all")
    assert os.environ["XLA_FLAGS"] == "--xla_force_host_platform_device_count=6"
    monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=3")  # the user's choice wins
    _common.setup_host_devices(2)
    assert os.environ["XLA_FLAGS"] == "--xla_force_host_platform_device_count=3"
    monkeypatch.setenv("XLA_FLAGS", "--xla_cpu_enable_fast_math=false")
    _common.setup_host_devices(1)  # one device: nothing to add
    assert os.environ["XLA_FLAGS"] == "--xla_cpu_enable_fast_math=false"
    _common.setup_host_devices(4)
    assert os.environ["XLA_FLAGS"] == "--xla_cpu_enable_fast_math=false --xla_force_host_platform_device_count=4"
    monkeypatch.setattr(xla_bridge, "backends_are_initialized", lambda: True)  # too late: JAX has started
    monkeypatch.delenv("XLA_FLAGS")
    _common.setup_host_devices(4)
    assert "XLA_FLAGS" not in os.environ


def test_bench_reports_steps_of_the_library(files):
    rc = cli.main(
        [
            "bench",
            "--model",
            "TwoCompartmentPK",
            "--regimen",
            str(files / "reg.toml"),
            "--repeats",
            "2",
            "--t-end",
            "3",
            "--out",
            str(files / "b"),
            "--quiet",
        ]
    )
    assert rc == 0
    row = _read_tidy(files / "b" / "bench.csv")[0]
    assert row["engine"] == "vmap" and row["solver"] == "Tsit5"  # ck.simulate's default for this model class
    ref = ck.simulate(TwoCompartmentPK(), _regimen(), jnp.linspace(0.0, 3.0, 281))
    assert int(row["num_steps"]) == int(ref.num_steps) and row["all_ok"] == "True"
    assert row["device"] == "cpu" and row["dtype"] == "float64"
    assert 0.0 < float(row["best_s"]) <= float(row["median_s"])


def test_bench_ensemble_times_members(files):
    rc = cli.main(
        [
            "bench",
            "--model",
            "TwoCompartmentPK",
            "--regimen",
            str(files / "reg.toml"),
            "--repeats",
            "1",
            "--t-end",
            "3",
            "--ensemble",
            "8",
            "--out",
            str(files / "be"),
            "--quiet",
        ]
    )
    assert rc == 0
    row = _read_tidy(files / "be" / "bench_ensemble.csv")[0]
    assert row["engine"] == "ensemble" and row["method"] == "EnsembleTsit5"
    assert int(row["members"]) == 8 and int(row["n_failed"]) == 0
    assert int(row["devices"]) == 1  # this process started JAX with one CPU device ("all" = 1 here)
    assert float(row["per_member_s"]) == pytest.approx(float(row["best_batch_s"]) / 8, rel=1e-3)
    assert float(row["mean_steps"]) > 0
    assert (
        cli.main(
            [
                "bench",
                "--model",
                "TwoCompartmentPK",
                "--regimen",
                str(files / "reg.toml"),
                "--ensemble",
                "0",
                "--repeats",
                "1",
                "--t-end",
                "1",
                "--out",
                str(files / "be0"),
                "--quiet",
            ]
        )
        == 0
    )
    assert not os.path.exists(files / "be0" / "bench_ensemble.csv")


def test_bench_perturbations_stay_inside_the_declared_bounds():
    # `bench --ensemble` perturbs every scalar parameter by a log-normal factor (sigma 0.1): unclipped, fractions such
    # as humoral.f_pb_dsdna = 0.8 leave [0, 1] in some of 240 members (invalid members, not solver work); clipped to
    # the declared bounds every member is valid and the other values are untouched.
    from carkinetics.models.sle import load_preset

    model = load_preset("human")
    space = ck.ParameterSpace(model)
    base = np.asarray(space.values(model))
    fac = np.exp(0.1 * np.random.default_rng(0).standard_normal((240, base.shape[0])))
    lower, upper = np.asarray(space.lower), np.asarray(space.upper)
    raw = base[None, :] * fac
    assert np.any((raw < lower) | (raw > upper))
    vals = _bench.perturbed(space, base[None, :], fac)
    assert np.all((vals >= lower) & (vals <= upper))
    inside = (raw >= lower) & (raw <= upper)
    assert np.array_equal(vals[inside], raw[inside])


def _expected_skipped():
    skipped = []
    done = set()
    for step in demo.DEMO_STEPS:
        ok = True
        for m, a in step.requires:
            try:
                ok &= hasattr(importlib.import_module(m), a)
            except ImportError:
                ok = False
        ok &= all(d in done for d in step.depends_on)
        if ok:
            done.add(step.title)
        else:
            skipped.append(step.title)
    return skipped


def _boom(ctx):
    raise RuntimeError("broken feature")


def test_demo_framework_skips_missing_features_and_reports_failures(tmp_path):
    steps = (
        demo.DEMO_STEPS[0],  # lymphodepletion PK: always available
        demo.DemoStep("Future feature", (("carkinetics", "no_such_feature_yet"),), _boom),
        demo.DemoStep("Depends on the future", (), _boom, depends_on=("Future feature",)),
        demo.DemoStep("Broken step", (), _boom),
    )
    path, skipped, failed = demo.run_demo(str(tmp_path), quick=True, steps=steps, progress=None)
    assert skipped == [
        "Step 'Future feature' is left out of this demo: carkinetics.no_such_feature_yet is not in this installation.",
        "Step 'Depends on the future' is left out of this demo: it needs the step 'Future feature', which did not run.",
    ]
    assert failed == ["Step 'Broken step' failed: RuntimeError: broken feature"]
    with open(path, encoding="utf-8") as fh:
        html = fh.read()
    assert html.count('class="note skipped"') == 2 and html.count('class="note warning"') == 1
    assert html.count("data:image/png;base64,") == 1 and 'src="http' not in html
    with open(tmp_path / "lymphodepletion_fludarabine.csv", newline="") as fh:
        conc = [float(r["value"]) for r in csv.DictReader(fh) if r["name"] == "concentration"]
    # three 45.4 mg infusions (25 mg/m2 x 1.82 m2): the peak lies between 1 and 2 mg/L for V1 = 39 L
    assert 1.0 < max(conc) < 2.0


@pytest.mark.slow
def test_demo_quick_cli(tmp_path, capsys):
    rc = cli.main(["demo", "--quick", "--out", str(tmp_path), "--quiet"])
    out = capsys.readouterr().out
    assert rc == cli.EXIT_OK
    assert out.strip().endswith(f"output folder: {tmp_path}")
    with open(tmp_path / "report.html", encoding="utf-8") as fh:
        html = fh.read()
    expected = _expected_skipped()
    for title in expected:
        assert f"note: Step '{title}' is left out" in out
    assert html.count("is left out of this demo") == len(expected)
    # the quick run leaves the Sobol sweep out, and says so
    assert "note: Step 'Sensitivity sweep (Sobol indices)' is left out of the quick run" in out
    assert not (tmp_path / "sensitivity_sobol.csv").exists()
    if not expected:  # figures: PK, human, population bands, human vs mouse, translation heatmap and waterfalls
        assert html.count("data:image/png;base64,") == 6
        assert "Published targets on the course" in html and "Virtual population: percentile bands" in html
        assert (tmp_path / "population_bands.png").stat().st_size > 0
        # key findings at the top (human course, translation); the narrative wraps (no <pre> block)
        assert html.index("Key findings") < html.index("Lymphodepletion pharmacokinetics")
        assert html.count("<li>Human SLE under the Erlangen regimen") == 1 and "<pre>" not in html
        assert "Largest relative mouse-to-human gap" in html and "a smoke run" in html


@pytest.mark.slow
def test_demo_full(tmp_path):
    assert cli.main(["demo", "--out", str(tmp_path), "--quiet"]) == cli.EXIT_OK
    assert (tmp_path / "report.html").stat().st_size > 10_000
    if "Sensitivity sweep (Sobol indices)" not in _expected_skipped():
        with open(tmp_path / "sensitivity_sobol.csv", newline="") as fh:
            rows = list(csv.DictReader(fh))
        assert len(rows) == len(demo.SOBOL_METRICS) * len(demo.SOBOL_PARAMETERS)
        assert {r["metric"] for r in rows} == set(demo.SOBOL_METRICS)
        assert all(np.isfinite(float(r["ST"])) for r in rows)


def _write_petab_problem(folder, conditions=("c0",)):
    import carkinetics.io as cio

    true = OneCompartmentPK(cl=100.0)
    ts = np.array([0.1, 0.25, 0.5, 1.0, 1.5])
    sol = ck.simulate(true, ck.Bolus(0.0, 100.0, "central"), ts)
    meas = tuple(
        cio.PetabMeasurement("conc", conditions[i % len(conditions)], float(t), float(v))
        for i, (t, v) in enumerate(zip(ts, np.asarray(sol.observables.concentration)))
    )
    prob = cio.PetabProblem(
        meas,
        cio.petab_parameters_from_model(OneCompartmentPK(), estimate=["cl"]),
        tuple(cio.PetabCondition(c, "", {}) for c in conditions),
        (cio.PetabObservable("conc", "plasma", "concentration", "log10", "0.05", "normal"),),
    )
    cio.write_petab(prob, folder, model=OneCompartmentPK())
    return prob


def test_petab_targets_map_noise_and_transform(tmp_path):
    prob = _write_petab_problem(tmp_path)
    (tg,) = _calibrate.petab_targets(prob, OneCompartmentPK(), "c0")
    assert tg.observable == "concentration" and isinstance(tg.error, ck.LogNormalError)
    assert float(tg.error.sigma) == pytest.approx(0.05 * np.log(10.0), rel=1e-15)  # log10 sd -> natural-log sd
    np.testing.assert_array_equal(np.asarray(tg.times), [0.1, 0.25, 0.5, 1.0, 1.5])


def test_calibrate_rejects_several_conditions(tmp_path, capsys):
    _write_petab_problem(tmp_path / "p", conditions=("a", "b"))
    rc = cli.main(
        [
            "calibrate",
            "--model",
            "OneCompartmentPK",
            "--petab",
            str(tmp_path / "p"),
            "--out",
            str(tmp_path / "o"),
            "--quiet",
        ]
    )
    assert rc == cli.EXIT_USAGE
    assert "fits one simulation condition at a time; the measurements use ['a', 'b']" in capsys.readouterr().err


@pytest.mark.slow
def test_calibrate_recovers_clearance(tmp_path):
    _write_petab_problem(tmp_path / "p")
    (tmp_path / "b.toml").write_text('[[bolus]]\ntime = 0.0\namount = 100.0\nstate = "central"\n')
    rc = cli.main(
        [
            "calibrate",
            "--model",
            "OneCompartmentPK",
            "--petab",
            str(tmp_path / "p"),
            "--regimen",
            str(tmp_path / "b.toml"),
            "--starts",
            "2",
            "--out",
            str(tmp_path / "o"),
            "--quiet",
        ]
    )
    assert rc == 0
    row = _read_tidy(tmp_path / "o" / "fitted_parameters.csv")[0]
    assert row["parameter"] == "cl" and row["tag"] == "F"
    assert float(row["fitted_value"]) == pytest.approx(100.0, rel=1e-4)  # noise-free data generated with cl = 100
    for name in ("fit.png", "fit_obs_vs_pred.png", "fit_residuals.png", "convergence.md"):
        assert (tmp_path / "o" / name).stat().st_size > 0


def test_translate_rejects_unknown_preset(tmp_path, capsys):
    rc = cli.main(["translate", "--mouse", "rat", "--out", str(tmp_path), "--quiet"])
    err = capsys.readouterr().err
    assert rc == cli.EXIT_USAGE and "--mouse: unknown preset 'rat'" in err and "Traceback" not in err
    assert cli.main(["translate", "--gaps", "G99", "--out", str(tmp_path), "--quiet"]) == cli.EXIT_USAGE
    assert "Gap id(s) ['G99'] have no parameters" in capsys.readouterr().err
    assert cli.main(["translate", "--t-end", "90", "--out", str(tmp_path), "--quiet"]) == cli.EXIT_USAGE
    assert "--t-end must be at least 120 days" in capsys.readouterr().err


@pytest.mark.parametrize("kind", ["tidy", "nonmem"])
def test_simulate_reads_data_to_overlay(files, kind):
    if kind == "tidy":
        (files / "data.csv").write_text("time,name,value\n0.5,concentration,1.1\n1.0,concentration,0.4\n")
    else:
        (files / "data.csv").write_text(
            "ID,TIME,AMT,CMT,EVID,DV,MDV\n1,0,100,1,1,.,1\n1,0.5,.,1,0,1.1,0\n1,1.0,.,1,0,0.4,0\n"
        )
    data = _inputs.read_data(str(files / "data.csv"), TwoCompartmentPK())
    t, v = data.select("concentration")
    np.testing.assert_array_equal(t, [0.5, 1.0])
    np.testing.assert_array_equal(v, [1.1, 0.4])
    (files / "bad.csv").write_text("when,what\n1,2\n")
    with pytest.raises(cli.UserError, match=r"expected NONMEM-style columns \(TIME, DV, CMT\) or tidy columns"):
        _inputs.read_data(str(files / "bad.csv"), TwoCompartmentPK())


def test_preset_selects_the_sle_model():
    plugins = cli.Plugins()
    model, preset = _inputs.resolve_model(plugins, None, "mouse_nzbw")
    assert type(model).__name__ == "SLECarTModel" and preset.name == "mouse_nzbw"
    assert float(model.body.weight_kg) < 1.0  # a mouse, in kg
    with pytest.raises(cli.UserError, match="gives a SLECarTModel, not the --model 'TwoCompartmentPK'"):
        _inputs.resolve_model(plugins, "TwoCompartmentPK", "human")
    with pytest.raises(cli.UserError, match="--preset 'nope' is not an installed preset"):
        _inputs.resolve_model(plugins, None, "nope")
    # a model class alone: default parameters, no preset (no standard regimen, the default grid)
    model, preset = _inputs.resolve_model(plugins, "SLECarTModel", None)
    assert type(model).__name__ == "SLECarTModel" and preset is None


def test_simulate_without_arguments_runs_the_sle_human_preset_with_its_regimen(tmp_path, capsys):
    # The default run comes from the presets plugin: the SLE human preset under the Erlangen regimen on the SLE
    # save grid (not an undosed model).
    from carkinetics.models.sle import save_times

    rc = cli.main(["simulate", "--out", str(tmp_path), "--quiet"])
    assert rc == cli.EXIT_OK
    assert "SLECarTModel (preset human)" in capsys.readouterr().out
    rows = _read_tidy(tmp_path / "simulation.csv")
    names = {r["name"] for r in rows if r["kind"] == "observable"}
    assert {"car_blood", "b_blood", "anti_dsdna", "il6", "sledai", "crs_grade"} <= names

    def series(name):
        sel = [r for r in rows if r["name"] == name and r["kind"] == "observable"]
        return np.array([float(r["time"]) for r in sel]), np.array([float(r["value"]) for r in sel])

    t, b = series("b_blood")
    np.testing.assert_array_equal(t, np.asarray(save_times()))  # the preset's save grid, days -6..365
    assert b[0] > 50.0  # cells/uL before treatment
    assert b[t >= 0.0].min() < 0.05 * b[0]  # B-cell aplasia: the Flu/Cy and CAR-T doses were applied
    t, car = series("car_blood")
    assert car[t < 0.0].max() == 0.0 and car.max() > 1.0  # CAR-T cells/uL appear only after the day-0 infusion


def test_sweep_engines_agree_to_the_solver_tolerance(files, capsys):
    (files / "bolus.toml").write_text('[[bolus]]\ntime = 0.0\namount = 100.0\nstate = "central"\n')
    (files / "ranges.toml").write_text("[sweep]\nn = 4\nseed = 2\n[ranges]\ncl = [50.0, 200.0]\nv = [30.0, 60.0]\n")
    common = [
        "sweep",
        "--model",
        "OneCompartmentPK",
        "--regimen",
        str(files / "bolus.toml"),
        "--ranges",
        str(files / "ranges.toml"),
        "--t-end",
        "2",
        "--points",
        "41",
        "--devices",
        "1",
        "--quiet",
    ]
    assert cli.main(common + ["--out", str(files / "ens")]) == 0
    assert "engine: ensemble (EnsembleTsit5)" in capsys.readouterr().out
    assert cli.main(common + ["--engine", "vmap", "--out", str(files / "vmap")]) == 0
    assert "engine: vmap (Tsit5)" in capsys.readouterr().out
    ens, vm = _read_tidy(files / "ens" / "sweep.csv"), _read_tidy(files / "vmap" / "sweep.csv")
    assert [r["cl"] for r in ens] == [r["cl"] for r in vm] and len(ens) == 4
    for name in ("concentration_cmax", "concentration_auc", "concentration_last"):
        # two solvers at the model class's default rtol = 1e-6, atol = 1e-8: they agree to the tolerance, not bitwise
        np.testing.assert_allclose([float(r[name]) for r in vm], [float(r[name]) for r in ens], rtol=1e-5, atol=1e-8)


def test_translate_writes_the_report(tmp_path, capsys):
    # (was `python -m carkinetics.translate_map`, now folded into the command)
    from carkinetics.models.sle import SLE_METRICS

    argv = [
        "translate",
        "--out",
        str(tmp_path),
        "--gaps",
        "G1",
        "--t-end",
        "120",
        "--no-scenarios",
        "--seed",
        "0",
        "--batch-size",
        "2",
        "--checkpoint",
        str(tmp_path / "ckpt"),
    ]
    rc = cli.main(argv)
    captured = capsys.readouterr()
    assert rc == cli.EXIT_OK, captured.err
    for name in (
        "translation_heatmap.png",
        "translation_waterfalls.png",
        "translation_map.csv",
        "translation_map.md",
        "translation_narrative.md",
    ):
        assert (tmp_path / name).stat().st_size > 200, name
    csv_lines = (tmp_path / "translation_map.csv").read_text().strip().splitlines()
    assert len(csv_lines) == 1 + len(SLE_METRICS) * 2  # G1 + ungrouped
    assert "anti-dsDNA t1/2" in (tmp_path / "translation_narrative.md").read_text()
    assert "engine: ensemble (EnsembleRodas5); 2 mechanism groups, 0 parameter samples" in captured.out
    # the progress lines name the stage and its size, and count the simulations with an ETA
    assert "translation map mouse_nzbw -> human: 2 mechanism groups, 2^2 coalitions x 1 = 4 simulations" in captured.err
    assert "sweep: 2/4 members (50%)" in captured.err and "ETA" in captured.err
    assert "translate: 1/1 done in" in captured.err
    assert not [f for f in os.listdir(tmp_path) if f.startswith(".staging") or ".tmp" in f]
    # --checkpoint: a rerun resumes every chunk (nothing solved again) and writes the same map
    first = (tmp_path / "translation_map.csv").read_text()
    assert cli.main(argv) == cli.EXIT_OK
    captured = capsys.readouterr()
    assert "sweep: 4/4 members (100%)" in captured.err and "4 resumed" in captured.err
    assert (tmp_path / "translation_map.csv").read_text() == first
    assert "removed 5 file(s) of an earlier run" in captured.err


def test_step_progress_estimates_the_rest_from_the_weights(monkeypatch):
    import io

    clock = iter([0.0, 0.0, 10.0, 12.0])  # start, step 1 shown, step 2 shown (10 s later), close
    monkeypatch.setattr(_common.time, "perf_counter", lambda: next(clock))
    stream = io.StringIO()
    prog = cli.StepProgress([100.0, 50.0], "translate", stream=stream)
    prog.step("map")
    prog.advance()
    prog.step("scenarios")
    prog.advance()
    prog.close()
    lines = stream.getvalue().splitlines()
    assert lines[0].startswith("translate [") and lines[0].endswith("0/2 0s  map") and "ETA" not in lines[0]
    assert lines[1].endswith("1/2 10s, ETA ~5s  scenarios")  # 10 s for weight 100: about 5 s for weight 50
    assert lines[2] == "translate: 2/2 done in 12.0s"


def test_the_toml_examples_of_docs_cli_are_accepted(tmp_path, capsys):
    # Every TOML block of docs/cli.md is a valid regimen file, sweep spec or parameter file for one of the models it
    # is written for (TwoCompartmentPK, the SLE human preset), so the documented schema is the implemented one.
    import re

    from carkinetics.cli import _sweep
    from carkinetics.models.sle import load_preset

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    with open(os.path.join(root, "docs", "cli.md"), encoding="utf-8") as fh:
        blocks = re.findall(r"^```toml\n(.*?)^```", fh.read(), re.DOTALL | re.MULTILINE)
    assert len(blocks) >= 8
    models = [TwoCompartmentPK(), load_preset("human")]
    tables = set()
    for i, text in enumerate(blocks):
        path = tmp_path / f"block{i}.toml"
        path.write_text(text)
        if "[ranges]" in text:
            samples, metrics = _sweep.sweep_spec(str(path), OneCompartmentPK(), 64)
            assert len(samples["cl"]) == 64 and metrics == ["concentration_auc"]
            continue
        if "[parameters" in text:
            assert float(_inputs.apply_parameters(models[1], str(path)).get("body.weight_kg")) == 60.0
            continue
        errors = []
        for model in models:
            try:
                regimen = _inputs.regimen_from_toml(str(path), model)
                break
            except cli.UserError as err:
                errors.append(str(err))
        else:
            raise AssertionError(f"docs/cli.md TOML block {i + 1} is refused: {errors}")
        assert regimen.doses, i
        tables |= set(re.findall(r"^\[\[(\w+)\]\]", text, re.MULTILINE))
    capsys.readouterr()
    assert tables == set(_inputs.REGIMEN_TABLES)  # an example for every table the regimen reader knows
