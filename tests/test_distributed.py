"""Multi-process sweeps on jax.distributed: two local CPU processes (gloo collectives, loopback only) against one.

The workers (`tests/distributed_worker.py`) run a seeded Sobol analysis of the two-compartment PK reference model, a
seeded virtual population of it, or a seeded SLE trial pool; the reference is the same computation in this process.
Each multi-process test bounds its waits with timeouts.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

import carkinetics as ck
from carkinetics import cli
from carkinetics._analysis._distributed import _resolve, _slurm_first_host

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import distributed_worker  # noqa: E402

WORKER = os.path.join(HERE, "distributed_worker.py")
HEARTBEAT = 5  # seconds: how long the survivors take to call a killed process dead
CHUNK = 16  # 1536 members in 96 chunks: slow enough to kill a process mid-run


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env() -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "JAX_", "XLA_FLAGS"))}
    env.update(JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1")
    return env


def _launch(n: int, *extra: str, per_process: dict | None = None) -> list[subprocess.Popen]:
    port = _free_port()
    procs = []
    for i in range(n):
        args = [
            sys.executable,
            WORKER,
            "--coordinator",
            f"127.0.0.1:{port}",
            "--num-processes",
            str(n),
            "--process-id",
            str(i),
            "--heartbeat-timeout",
            str(HEARTBEAT),
            *extra,
            *(per_process or {}).get(i, []),
        ]
        procs.append(subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env()))
    return procs


def _finish(procs: list[subprocess.Popen], timeout: float) -> list[tuple[int, str, str]]:
    deadline = time.monotonic() + timeout
    out = []
    try:
        for p in procs:
            stdout, stderr = p.communicate(timeout=max(1.0, deadline - time.monotonic()))
            out.append((p.returncode, stdout, stderr))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.communicate()
    return out


def _single(*extra: str, timeout: float = 120, devices: int = 1) -> dict:
    """The worker as one process (the checkpoint's member function is keyed on its module, `__main__`), with
    `devices` host devices."""
    env = _env()
    if devices > 1:
        env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    run = subprocess.run([sys.executable, WORKER, *extra], capture_output=True, text=True, env=env, timeout=timeout)
    assert run.returncode == 0, run.stderr[-3000:]
    return _result(run.stdout)


def _result(stdout: str) -> dict:
    return json.loads([line for line in stdout.splitlines() if line.startswith("{")][-1])


def _indices(res: dict) -> np.ndarray:
    return np.array([res[k] for k in sorted(res) if k.endswith(("_S1", "_ST", "_S1_conf", "_ST_conf"))])


def _wait_for_chunks(path, count: int, procs, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if os.path.isdir(path) and sum(f.startswith("chunk_") for f in os.listdir(path)) >= count:
            return
        if any(p.poll() is not None for p in procs):
            break
        time.sleep(0.05)
    for p in procs:
        p.kill()
    pytest.fail(f"no {count} checkpointed chunks within {timeout} s: {[p.communicate()[1][-2000:] for p in procs]}")


def _interrupt_mid_run(ckpt: str, victim: int, sig: int) -> list[subprocess.Popen]:
    """Two processes checkpointing into `ckpt`; `sig` sent to process `victim` once 3 chunks are written."""
    procs = _launch(2, *_ckpt_args(ckpt))
    _wait_for_chunks(ckpt, 3, procs, timeout=120)
    procs[victim].send_signal(sig)
    return procs


def _ckpt_args(ckpt: str) -> list[str]:
    return ["--checkpoint", ckpt, "--chunk-size", str(CHUNK), "--n", "384"]


def _assert_resumed(res: dict, ref: dict) -> None:
    assert 0 < res["n_resumed_chunks"] < res["n_chunks"]  # stopped mid-run, resumed from the checkpoint
    np.testing.assert_allclose(_indices(res), _indices(ref), rtol=0, atol=1e-12)


@pytest.fixture(scope="module")
def reference():
    """The one-process analysis (this process, one device), per chunk size."""
    cache = {}

    def get(chunk_size: int) -> dict:
        if chunk_size not in cache:
            cache[chunk_size] = distributed_worker.analysis(
                chunk_size=chunk_size, n=384 if chunk_size == CHUNK else 256
            )
        return cache[chunk_size]

    return get


# ----------------------------------------------------------------------------------------------------------------
# settings (no process is started)


def test_settings_from_arguments_and_environment():
    assert ck.distributed_setup(environ={}) == ck.DistributedSetting(0, 1, None)
    assert ck.distributed_setup(num_processes=1, environ={}) == ck.DistributedSetting(0, 1, None)
    jax_env = {"JAX_COORDINATOR_ADDRESS": "10.0.0.1:7777", "JAX_NUM_PROCESSES": "4", "JAX_PROCESS_ID": "2"}
    assert _resolve(None, None, None, jax_env)[:3] == ("10.0.0.1:7777", 4, 2)
    assert _resolve("h:1", 2, 1, jax_env)[:3] == ("h:1", 2, 1)  # arguments win over the environment
    slurm = {
        "SLURM_STEP_NODELIST": "gpu[017-020],cpu3",
        "SLURM_STEP_NUM_TASKS": "8",
        "SLURM_PROCID": "5",
        "SLURM_JOB_ID": "123456",
        "SLURM_NTASKS": "16",
    }
    assert _resolve(None, None, None, slurm)[:3] == (f"gpu017:{123456 % 4096 + 61440}", 8, 5)
    assert _resolve(None, None, None, {**slurm, "JAX_COORDINATOR_PORT": "5555"})[0] == "gpu017:5555"
    assert [_slurm_first_host(s) for s in ("node7", "node7,gpu2", "n[3,9-12]", "a-b[08-10]")] == [
        "node7",
        "node7",
        "n3",
        "a-b08",
    ]


@pytest.mark.parametrize(
    "kwargs, environ, match",
    [
        (
            {},
            {
                "JAX_NUM_PROCESSES": "2",
                "JAX_PROCESS_ID": "0",
                "SLURM_STEP_NODELIST": "n1",
                "SLURM_PROCID": "0",
                "SLURM_STEP_NUM_TASKS": "4",
                "SLURM_JOB_ID": "1",
            },
            "JAX_NUM_PROCESSES says 2 but SLURM_STEP_NUM_TASKS",
        ),
        ({"coordinator": "h:1", "process_id": 1}, {}, "not the number of processes"),
        ({"coordinator": "h:1", "num_processes": 2}, {}, "this process's id is not given"),
        ({"coordinator": "h:1", "num_processes": 2, "process_id": 2}, {}, "between 0 and num_processes - 1 = 1"),
        ({"num_processes": 2, "process_id": 0}, {}, "no coordinator address"),
        ({"coordinator": "h", "num_processes": 2, "process_id": 0}, {}, "'HOST:PORT'"),
        ({"coordinator": "h:99999", "num_processes": 2, "process_id": 0}, {}, "port between 1 and 65535"),
        ({}, {"JAX_NUM_PROCESSES": "two"}, "JAX_NUM_PROCESSES must be an integer"),
        ({"num_processes": 0}, {}, "at least 1"),
        ({"num_processes": 1, "process_id": 1}, {}, "must be 0 for a single process"),
        ({"heartbeat_timeout": 0}, {}, "heartbeat_timeout"),
    ],
)
def test_inconsistent_settings_raise(kwargs, environ, match):
    with pytest.raises(ValueError, match=match):
        ck.distributed_setup(**kwargs, environ=environ)


# ----------------------------------------------------------------------------------------------------------------
# two processes


def test_two_processes_equal_one_process(reference):
    runs = _finish(_launch(2), timeout=150)
    assert all(rc == 0 for rc, _, _ in runs), [err[-3000:] for _, _, err in runs]
    res = [_result(out) for _, out, _ in runs]
    ref = reference(64)
    for r in res:
        assert r["n_processes"] == 2 and r["n_devices"] == 2 and r["n_failed"] == 0
        # every process returns the same indices as one process, to 1e-12
        np.testing.assert_allclose(_indices(r), _indices(ref), rtol=0, atol=1e-12)


def test_mismatched_inputs_are_detected_at_start_up():
    runs = _finish(_launch(2, per_process={1: ["--seed", "8"]}), timeout=120)
    for rc, _, err in runs:
        assert rc == 1
        assert "ValueError: Process 1 of 2 differs from process 0 in the swept inputs" in err


@pytest.mark.slow
def test_killed_process_is_named_and_the_run_resumes(tmp_path, reference):
    ckpt = str(tmp_path / "ckpt")
    procs = _interrupt_mid_run(ckpt, 1, signal.SIGKILL)
    t0 = time.monotonic()
    (rc, _, err), _ = _finish(procs, timeout=60)
    # the survivor stops cleanly within the heartbeat timeout (plus a margin), naming the dead process
    assert time.monotonic() - t0 < HEARTBEAT + 25
    assert rc == 3, err[-3000:]
    assert "process 1 of 2 stopped responding" in err and ckpt in err
    # one process resumes from the chunks process 0 wrote, to the one-process result
    res = _single(*_ckpt_args(ckpt))
    assert res["n_processes"] == 1
    _assert_resumed(res, reference(CHUNK))


@pytest.mark.slow
def test_killed_coordinator_ends_the_others_and_two_processes_resume(tmp_path, reference):
    ckpt = str(tmp_path / "ckpt")
    procs = _interrupt_mid_run(ckpt, 0, signal.SIGKILL)
    t0 = time.monotonic()
    _, (rc, _, err) = _finish(procs, timeout=60)
    # process 0 hosts the coordination service: the JAX runtime ends the other process at once, naming the leader
    assert time.monotonic() - t0 < HEARTBEAT + 25
    assert rc != 0 and "leader task" in err
    runs = _finish(_launch(2, *_ckpt_args(ckpt)), timeout=150)
    assert all(rc == 0 for rc, _, _ in runs), [e[-3000:] for _, _, e in runs]
    for _, out, _ in runs:
        _assert_resumed(_result(out), reference(CHUNK))


@pytest.mark.slow
def test_a_signal_to_one_process_stops_both_after_the_chunk(tmp_path, reference):
    ckpt = str(tmp_path / "ckpt")
    runs = _finish(_interrupt_mid_run(ckpt, 1, signal.SIGTERM), timeout=60)
    for rc, _, err in runs:
        assert rc == 128 + signal.SIGTERM, err[-3000:]
        assert "Stopped by SIGTERM" in err
    _assert_resumed(_single(*_ckpt_args(ckpt)), reference(CHUNK))


# ----------------------------------------------------------------------------------------------------------------
# virtual populations and trial pools


def _outputs(res: dict, prefix: str) -> dict[str, np.ndarray]:
    return {k: np.asarray(v, dtype=float) for k, v in res.items() if k.startswith(prefix)}


def _assert_same_outputs(res: dict, ref: dict, prefix: str, rtol: float = 0.0) -> None:
    got, want = _outputs(res, prefix), _outputs(ref, prefix)
    assert sorted(got) == sorted(want) and want
    for k in want:
        np.testing.assert_allclose(got[k], want[k], rtol=rtol, atol=1e-12, err_msg=k)


@pytest.mark.slow  # ~20-45 s; the Sobol analysis across two processes stays in the default suite
def test_two_processes_build_the_one_process_virtual_population_and_one_process_resumes_it(tmp_path):
    ckpt = str(tmp_path / "ckpt")
    runs = _finish(_launch(2, "--analysis", "population", "--checkpoint", ckpt), timeout=150)
    assert all(rc == 0 for rc, _, _ in runs), [err[-3000:] for _, _, err in runs]
    ref = distributed_worker.population()  # one process, one device, no checkpoint
    for r in (_result(out) for _, out, _ in runs):
        assert r["n_processes"] == 2 and r["n_devices"] == 2 and r["n_failed"] == 0 and r["n_chunks"] == 4
        # every process returns each member's metrics of the one-process population, to 1e-12
        _assert_same_outputs(r, ref, "pop_")
    # one process finds every chunk in the checkpoint process 0 wrote and returns the same population
    res = _single("--analysis", "population", "--checkpoint", ckpt)
    assert res["n_processes"] == 1 and res["n_resumed_chunks"] == res["n_chunks"] == 4
    _assert_same_outputs(res, ref, "pop_")


@pytest.mark.slow
def test_two_processes_simulate_the_one_process_trial_pool(tmp_path):
    ckpt = str(tmp_path / "ckpt")
    runs = _finish(_launch(2, "--analysis", "trial_pool", "--checkpoint", ckpt), timeout=400)
    assert all(rc == 0 for rc, _, _ in runs), [err[-3000:] for _, _, err in runs]
    assert sorted(f for f in os.listdir(ckpt) if f.startswith("chunk_")) == ["chunk_000000.npz", "chunk_000001.npz"]
    # one process with the same devices (two host devices, two courses each per chunk), and with one device
    same = _single("--analysis", "trial_pool", devices=2, timeout=300)
    one = distributed_worker.trial_pool()
    assert same["n_failed"] == one["n_failed"] == 0
    for r in (_result(out) for _, out, _ in runs):
        assert r["n_failed"] == 0
        # every course's endpoints (4 patients x 2 doses, 2 chunks) equal the one-process pool's, to 1e-12
        _assert_same_outputs(r, same, "pool_")
        # XLA compiles the stiff batched solve for each device count, so on one device the courses differ in the
        # last digits (about 1e-10 relative), far inside the solver tolerance (1e-6)
        _assert_same_outputs(r, one, "pool_", rtol=1e-8)


@pytest.mark.parametrize(
    "argv, match",
    [
        (["--num-processes", "2", "--process-id", "0"], "no coordinator address"),
        (["--coordinator", "127.0.0.1:1", "--num-processes", "2"], "this process's id is not given"),
        (["--coordinator", "127.0.0.1", "--num-processes", "2", "--process-id", "0"], "'HOST:PORT'"),
    ],
)
def test_trial_command_names_a_bad_multi_process_setting(tmp_path, capsys, monkeypatch, argv, match):
    for name in [k for k in os.environ if k.startswith(("SLURM_", "JAX_COORDINATOR", "JAX_NUM_PROC", "JAX_PROCESS"))]:
        monkeypatch.delenv(name)
    assert cli.main(["trial", *argv, "--out", str(tmp_path / "out"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "carkinetics trial: error:" in err and match in err
    assert not (tmp_path / "out").exists()  # stopped before any work


@pytest.mark.slow
def test_trial_command_across_two_processes_writes_the_one_process_files(tmp_path):
    # the pool in two chunks, then the review analyses (conditioning and monitoring are sweeps too: every process
    # must run them, or process 0 would wait for a partner that left)
    argv = ["trial", "--doses", "1e5,1e6", "--patients-per-dose", "3", "--trials", "50", "--chunk-size", "3"]
    argv += ["--monitoring-days", "200"]  # the monitoring batch (3 courses, 200 days) reuses the pool's compiled chunk
    cli = [sys.executable, "-m", "carkinetics.cli", *argv, "--quiet", "--devices", "1"]
    port = _free_port()
    procs = [
        subprocess.Popen(
            [*cli, "--out", str(tmp_path / f"p{i}"), "--coordinator", f"127.0.0.1:{port}", "--num-processes", "2"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**_env(), "JAX_PROCESS_ID": str(i)},  # the process id from the environment, as on a cluster
        )
        for i in range(2)
    ]
    runs = _finish(procs, timeout=600)
    assert all(rc == 0 for rc, _, _ in runs), [err[-3000:] for _, _, err in runs]
    assert not (tmp_path / "p1").exists()  # only process 0 writes
    # one process with the same devices (two host devices, split by --devices 2)
    env = {**_env(), "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
    one = subprocess.run(
        [*cli[:-1], "2", "--out", str(tmp_path / "one")], capture_output=True, text=True, env=env, timeout=600
    )
    assert one.returncode == 0, one.stderr[-3000:]
    for name in ("patients.csv", "dose_outcomes.csv", "operating_characteristics.csv"):
        assert (tmp_path / "p0" / name).read_text() == (tmp_path / "one" / name).read_text(), name
    assert (tmp_path / "p0" / "report.html").is_file()
