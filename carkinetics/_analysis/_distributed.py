"""Runs across several processes (hosts) on JAX's distributed runtime.

[`carkinetics.distributed_setup`][] starts `jax.distributed` from arguments or from the environment of a cluster
launcher; afterwards `jax.devices()` lists the devices of every process and [`carkinetics.sweep`][] (and everything
built on it) splits the members of each chunk over all of them.

How a multi-process sweep stays consistent and stops cleanly (the coordination service of `jax.distributed`, hosted
by process 0, carries all the bookkeeping; the member outputs travel through JAX collectives):

- **Start-up agreement.** Every process publishes the fingerprint of what it is about to run (package versions, the
  member function, the inputs and the layout) in the service's key-value store; after a barrier each compares them
  with process 0's, and every process raises the same `ValueError` naming the process and the part that differs.
- **One writer.** Only process 0 opens, reads and writes the checkpoint directory (it need not be on a shared file
  system); it tells the others which chunks are finished and broadcasts their outputs, so every process returns the
  same result, and a checkpoint written by N processes resumes with any other number.
- **Death-aware barriers.** Before every collective the processes meet at the service's live-process barrier
  (`get_live_nodes`), which waits for every live process and drops a process whose heartbeats stopped. A process that
  died is therefore never waited for inside a collective (NCCL collectives have no timeout); the survivors raise
  [`carkinetics.ProcessFailed`][] naming it within the heartbeat timeout. A process that fails with an exception, is
  stopped by a signal, or exits early leaves a note in the key-value store before it leaves, so the others name it
  and its error.
- **Synchronised exit.** `distributed_setup` starts the runtime in JAX's recoverable mode (a dead process does not
  take the others down) and registers an exit hook: each process waits at a last live-process barrier, and process 0
  (which hosts the service) leaves only after the others have disconnected.

If process 0 itself dies, the service dies with it and the JAX runtime ends every other process at once with its own
message ("the leader task was preempted/died"); finished chunks are in the checkpoint either way.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import importlib.metadata
import itertools
import json
import math
import os
import platform
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import jax
import numpy as np

_NS = "carkinetics"
_SWEEPS = itertools.count()  # sweeps started by this process: all processes run the same sequence of sweeps
_EXIT_HOOK: list[Callable[[], None]] = []
# Live-process barriers this process has passed. Every process passes the same sequence, so a note "left after
# passing b barriers" tells the others whether it met them at their current barrier (b >= theirs: it is only
# leaving now, after everyone met) or arrived there on its way out (b < theirs: it left the run).
_PASSED = [0]


class DistributedSetting(NamedTuple):
    """What [`carkinetics.distributed_setup`][] resolved: `process_id` (0-based), `num_processes` and
    `coordinator` (`"HOST:PORT"` of process 0, `None` for a single process)."""

    process_id: int
    num_processes: int
    coordinator: str | None


class ProcessFailed(RuntimeError):
    """A process of a multi-process run died, failed or left early; the surviving processes stopped cleanly.

    **Attributes:** `process_ids` (the processes that failed), `reasons` (`{process id: what happened}`), `done` and
    `total` (chunks finished and planned; `None` outside a chunked run) and `checkpoint` (the directory holding the
    finished chunks, or `None`). Relaunching every process with the same command (any process count) resumes from
    the checkpoint.
    """

    def __init__(
        self,
        reasons: Mapping[int, str],
        num_processes: int,
        *,
        done: int | None = None,
        total: int | None = None,
        checkpoint: str | None = None,
    ):
        self.reasons = dict(sorted(reasons.items()))
        self.process_ids = tuple(self.reasons)
        self.done, self.total, self.checkpoint = done, total, checkpoint
        what = "; ".join(f"process {i} of {num_processes} {why}" for i, why in self.reasons.items())
        where = f" after {done} of {total} chunks" if done is not None else ""
        if checkpoint:
            how = (
                f"The finished chunks are in the checkpoint {checkpoint!r}: relaunch all processes with the same "
                "command (any process count) to resume"
            )
        else:
            how = "No checkpoint was given, so a relaunch starts afresh (pass a checkpoint directory to resume)"
        super().__init__(f"The run stopped{where}: {what}. {how}.")


# ----------------------------------------------------------------------------------------------------------------
# set-up


def _env_int(environ: Mapping[str, str], name: str) -> int | None:
    raw = environ.get(name)
    if raw is None or raw.strip() == "":
        return None
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"The environment variable {name} must be an integer, got {raw!r}.") from None


def _slurm_first_host(nodelist: str) -> str:
    """The first host of a Slurm host list: `node[001-004,7],gpu2` -> `node001`."""
    m = re.match(r"([^,\[]+)(?:\[([^\]]*)\])?", nodelist.strip())
    if not m:
        raise ValueError(f"The Slurm node list {nodelist!r} names no host.")
    prefix, ranges = m.group(1), m.group(2)
    if ranges is None:
        return prefix
    return prefix + re.split(r"[,-]", ranges)[0]


def _slurm(environ: Mapping[str, str]) -> dict[str, tuple[Any, str]]:
    """Coordinator, process count and id of an `srun` step (JAX's own port rule), with the variable they came from."""
    nodelist = environ.get("SLURM_STEP_NODELIST")
    if nodelist is None or "SLURM_PROCID" not in environ:
        return {}
    out: dict[str, tuple[Any, str]] = {}
    ntasks_var = "SLURM_STEP_NUM_TASKS" if "SLURM_STEP_NUM_TASKS" in environ else "SLURM_NTASKS"
    if (n := _env_int(environ, ntasks_var)) is not None:
        out["num_processes"] = (n, ntasks_var)
    out["process_id"] = (_env_int(environ, "SLURM_PROCID"), "SLURM_PROCID")
    port = _env_int(environ, "JAX_COORDINATOR_PORT")
    job = _env_int(environ, "SLURM_JOB_ID")
    if port is None and job is not None:
        port = job % 4096 + 61440  # as jax.distributed's Slurm detection, so both agree
    if port is not None:
        out["coordinator"] = (f"{_slurm_first_host(nodelist)}:{port}", "SLURM_STEP_NODELIST and SLURM_JOB_ID")
    return out


def _resolve(
    coordinator: Any, num_processes: Any, process_id: Any, environ: Mapping[str, str]
) -> tuple[str | None, int | None, int | None, dict[str, str]]:
    jax_env = {
        "coordinator": (environ.get("JAX_COORDINATOR_ADDRESS") or None, "JAX_COORDINATOR_ADDRESS"),
        "num_processes": (_env_int(environ, "JAX_NUM_PROCESSES"), "JAX_NUM_PROCESSES"),
        "process_id": (_env_int(environ, "JAX_PROCESS_ID"), "JAX_PROCESS_ID"),
    }
    slurm = _slurm(environ)
    given = {"coordinator": coordinator, "num_processes": num_processes, "process_id": process_id}
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for key, value in given.items():
        if value is not None:
            values[key], sources[key] = value, f"the argument `{key}`"
            continue
        jv, jname = jax_env[key]
        sv, sname = slurm.get(key, (None, ""))
        if jv is not None and sv is not None and jv != sv:
            raise ValueError(
                f"Inconsistent settings for `{key}`: {jname} says {jv!r} but {sname} (Slurm) says "
                f"{sv!r}; unset one of them or pass `{key}` explicitly."
            )
        if jv is not None:
            values[key], sources[key] = jv, jname
        elif sv is not None:
            values[key], sources[key] = sv, sname
    return values.get("coordinator"), values.get("num_processes"), values.get("process_id"), sources


def _check_coordinator(coordinator: Any, source: str) -> str:
    if not isinstance(coordinator, str) or ":" not in coordinator:
        raise ValueError(
            f"`coordinator` must be 'HOST:PORT' (the address of process 0), got {coordinator!r} from {source}."
        )
    host, port = coordinator.rsplit(":", 1)
    if not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ValueError(
            f"`coordinator` must be 'HOST:PORT' with a port between 1 and 65535, got {coordinator!r} from {source}."
        )
    return coordinator


def _check_timeout(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)) or not value > 0:
        raise ValueError(f"`{name}` must be a positive number of seconds, got {value!r}.")
    if not math.isfinite(value):
        raise ValueError(f"`{name}` must be finite, got {value!r}.")
    return max(1, math.ceil(value))


def distributed_setup(
    coordinator: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    *,
    local_device_ids: Sequence[int] | None = None,
    heartbeat_timeout: float = 100.0,
    initialization_timeout: float = 300.0,
    environ: Mapping[str, str] | None = None,
) -> DistributedSetting:
    """Join a multi-process run: start `jax.distributed` so that sweeps use the devices of every process.

    Call it once per process, first thing, before any other JAX call (JAX cannot add processes once its devices are
    initialised). Each setting comes from the argument if given, else from `JAX_COORDINATOR_ADDRESS`,
    `JAX_NUM_PROCESSES` and `JAX_PROCESS_ID`, else from an `srun` step of Slurm (`SLURM_STEP_NODELIST`,
    `SLURM_STEP_NUM_TASKS`/`SLURM_NTASKS`, `SLURM_PROCID`; the coordinator is the step's first node on the port
    `JAX_COORDINATOR_PORT` or JAX's port for the job). With no setting at all, or one process, nothing is started
    and a single-process setting is returned, so a script can call it unconditionally.

    The runtime starts in JAX's recoverable mode and an exit hook synchronises the processes' exits, so a process
    that dies is reported by the others with its id ([`carkinetics.ProcessFailed`][]) instead of ending them
    (`docs/distributed.md` describes the protocol). Sweeps also run after a plain `jax.distributed.initialize`, but
    then a dead process ends the others after JAX's heartbeat timeout.

    **Arguments:**

    - `coordinator`: `"HOST:PORT"` of process 0, reachable from every process; process 0 listens on that port.
    - `num_processes`: the number of processes N.
    - `process_id`: this process's id, `0 .. N - 1`.
    - `local_device_ids`: the local devices this process uses (default: JAX's choice; under Slurm, one GPU per
      task, the task's `SLURM_LOCALID`).
    - `heartbeat_timeout`: seconds without a heartbeat after which a process counts as dead: the time the survivors
      take to report a killed process.
    - `initialization_timeout`: seconds to wait for every process to connect.
    - `environ`: the environment to read (default `os.environ`).

    **Returns:** a [`carkinetics.DistributedSetting`][].

    **Raises:** `ValueError` for a missing, malformed or inconsistent setting (e.g. a process id without a process
    count, `JAX_NUM_PROCESSES` disagreeing with Slurm's task count, or a second call with other settings);
    `RuntimeError` (from JAX) if JAX computations already ran in this process.

    **Example:**

    ```python
    import carkinetics as ck
    ck.distributed_setup(environ={})   # no setting: DistributedSetting(process_id=0, num_processes=1, ...)
    ```

    On two processes (one per terminal or host):
    `ck.distributed_setup("10.0.0.1:7777", 2, 0)` and `ck.distributed_setup("10.0.0.1:7777", 2, 1)`.
    """
    environ = os.environ if environ is None else environ
    heartbeat = _check_timeout("heartbeat_timeout", heartbeat_timeout)
    init_timeout = _check_timeout("initialization_timeout", initialization_timeout)
    coord, n, pid, sources = _resolve(coordinator, num_processes, process_id, environ)
    for name, value in (("num_processes", n), ("process_id", pid)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, np.integer))):
            raise ValueError(f"`{name}` must be an int, got {value!r} from {sources[name]}.")
    if n is not None and n < 1:
        raise ValueError(f"`num_processes` must be at least 1, got {n} from {sources['num_processes']}.")
    if n is None and pid is None and coord is None:
        return DistributedSetting(0, 1, None)
    if n is None:
        have = " and ".join(f"`{k}` ({s})" for k, s in sources.items())
        raise ValueError(
            f"{have} given but not the number of processes: pass `num_processes` or set "
            "JAX_NUM_PROCESSES (or launch with srun)."
        )
    n = int(n)
    if n == 1:
        if pid not in (None, 0):
            raise ValueError(f"`process_id` must be 0 for a single process, got {pid} from {sources['process_id']}.")
        return DistributedSetting(0, 1, None)
    if pid is None:
        raise ValueError(
            f"`num_processes` is {n} (from {sources['num_processes']}) but this process's id is not "
            "given: pass `process_id` or set JAX_PROCESS_ID (or launch with srun)."
        )
    pid = int(pid)
    if not 0 <= pid < n:
        raise ValueError(
            f"`process_id` must be between 0 and num_processes - 1 = {n - 1}, got {pid} from {sources['process_id']}."
        )
    if coord is None:
        raise ValueError(
            f"`num_processes` is {n} but no coordinator address is given: pass `coordinator` "
            "'HOST:PORT' (process 0's address) or set JAX_COORDINATOR_ADDRESS."
        )
    coord = _check_coordinator(coord, sources["coordinator"])

    from jax._src import distributed as jd  # the runtime's state: who is connected, as whom

    if jax.distributed.is_initialized():
        have = (jd.global_state.process_id, jd.global_state.num_processes, jd.global_state.coordinator_address)
        if have != (pid, n, coord):
            raise ValueError(
                f"jax.distributed is already initialised as process {have[0]} of {have[1]} with "
                f"coordinator {have[2]!r}, not as process {pid} of {n} with {coord!r}."
            )
        return DistributedSetting(pid, n, coord)

    previous = jax.config.values["jax_enable_recoverability"]
    jax.config.update("jax_enable_recoverability", True)  # read once, when process 0 starts the service
    try:
        jax.distributed.initialize(
            coord,
            n,
            pid,
            local_device_ids=local_device_ids,
            initialization_timeout=init_timeout,
            heartbeat_timeout_seconds=heartbeat,
            shutdown_timeout_seconds=heartbeat,
        )
    finally:
        jax.config.update("jax_enable_recoverability", previous)
    if not _EXIT_HOOK:
        _EXIT_HOOK.append(_synchronised_exit)
        atexit.register(_synchronised_exit)  # runs before JAX's own exit hook (registered earlier)
    return DistributedSetting(pid, n, coord)


def _client() -> Any:
    from jax._src import distributed as jd

    return jd.global_state.client


def _synchronised_exit() -> None:
    """Leave together: announce the exit, wait for the live processes, and let process 0 (the coordination service)
    go last, so that no process loses the service while it is still finishing."""
    from jax._src import distributed as jd

    client = jd.global_state.client
    if client is None:
        return
    pid, ids = jd.global_state.process_id, list(range(jd.global_state.num_processes))
    try:
        client.key_value_set(f"{_NS}/exited/{pid}", f"{_PASSED[0]} exited", allow_overwrite=True)
        live = client.get_live_nodes(ids)
        while pid == 0 and len(live) > 1:  # until the others have disconnected (each calls it once more at most)
            live = client.get_live_nodes(ids)
    except Exception:  # the service is gone (process 0 died): nothing left to synchronise with
        pass
    jax.distributed.shutdown()


# ----------------------------------------------------------------------------------------------------------------
# the process group of one run


def versions() -> dict[str, str]:
    """Versions of the packages that determine a result, compared across processes at start-up."""
    out = {"python": platform.python_version()}
    for pkg in ("carkinetics", "jax", "jaxlib", "equinox", "diffrax", "numpy"):
        try:
            out[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            out[pkg] = "absent"
    return out


_PART = {
    "versions": "package versions",
    "function": "the member function (model, regimen, save times, tolerances, metrics or other settings)",
    "inputs": "the swept inputs",
    "layout": "the layout (members, chunk size, devices)",
    "checkpoint": "the checkpoint directory",
}


class ProcessGroup:
    """The processes of one multi-process run (`jax.process_count() > 1`): agreement, barriers and notes through
    the coordination service, and broadcasts and gathers through JAX collectives."""

    def __init__(self, label: str):
        client = _client()
        if client is None:
            raise ValueError("A multi-process run needs jax.distributed; call carkinetics.distributed_setup first.")
        self.client = client
        self.pid, self.n = jax.process_index(), jax.process_count()
        self.ids = list(range(self.n))
        self.ns = f"{_NS}/{label}/{next(_SWEEPS)}"
        self.stop_published = False
        self.done: int | None = None
        self.total: int | None = None
        self.checkpoint: str | None = None

    # -- barriers ------------------------------------------------------------------------------------------------

    def _notes(self, kind: str, before: int) -> dict[int, str]:
        """Notes `kind` of processes that left after passing fewer than `before` barriers: `{id: text}`."""
        out = {}
        for key, value in self.client.key_value_dir_get(f"{_NS}/{kind}/"):
            passed, _, text = value.partition(" ")
            if int(passed) < before:
                out[int(key.rsplit("/", 1)[1])] = text
        return out

    def barrier(self) -> None:
        """Wait for every live process; raise `ProcessFailed` if one died, failed or left."""
        live = self.client.get_live_nodes(self.ids)
        _PASSED[0] += 1
        dead = [i for i in self.ids if i not in live]
        reasons = {
            i: "stopped responding (no heartbeat within the heartbeat timeout: it was killed, crashed or lost its host)"
            for i in dead
        }
        for i, why in self._notes("failed", _PASSED[0]).items():
            reasons.setdefault(i, f"failed with {why}")
        for i in self._notes("exited", _PASSED[0]):
            reasons.setdefault(i, "left the run early (it exited)")
        reasons.pop(self.pid, None)
        if reasons:
            raise ProcessFailed(reasons, self.n, done=self.done, total=self.total, checkpoint=self.checkpoint)

    def agree(self, record: Mapping[str, Any]) -> None:
        """Every process raises the same `ValueError` unless all `record`s equal process 0's."""
        self.client.key_value_set(f"{self.ns}/start/{self.pid}", json.dumps(record, sort_keys=True))
        self.barrier()
        records = {
            int(k.rsplit("/", 1)[1]): json.loads(v) for k, v in self.client.key_value_dir_get(f"{self.ns}/start/")
        }
        ref = records[0] if 0 in records else dict(record)
        for i in self.ids:
            other = records.get(i)
            if other is None:
                raise ValueError(
                    f"Process {i} of {self.n} did not start the same run as process 0 (it is running a "
                    "different program or a different sequence of runs); every process must run the "
                    "same command."
                )
            diff = [k for k in ref if other.get(k) != ref[k]]
            if diff:
                parts = []
                for k in diff:
                    if isinstance(ref[k], dict):
                        sub = [
                            f"{s} {other[k].get(s)!r} vs {ref[k].get(s)!r}"
                            for s in ref[k]
                            if other[k].get(s) != ref[k].get(s)
                        ]
                        parts.append(f"{_PART.get(k, k)} ({', '.join(sub)})")
                    else:
                        parts.append(_PART.get(k, k))
                raise ValueError(
                    f"Process {i} of {self.n} differs from process 0 in {'; '.join(parts)}. Every "
                    "process must run the same code and package versions on the same inputs; the "
                    "run was not started."
                )

    def share(self, key: str, value: str) -> str:
        """Process 0's `value` on every process."""
        if self.pid == 0:
            self.client.key_value_set(f"{self.ns}/{key}", value)
        self.barrier()
        return value if self.pid == 0 else str(self.client.key_value_try_get(f"{self.ns}/{key}"))

    def sync(self, signum: int | None) -> int | None:
        """The barrier between chunks: also agrees on a stop request (a signal received by any process)."""
        if signum is not None and not self.stop_published:
            self.client.key_value_set(f"{self.ns}/stop/{self.pid}", str(int(signum)))
            self.stop_published = True
        self.barrier()
        stops = dict(self.client.key_value_dir_get(f"{self.ns}/stop/"))
        return int(stops[min(stops)]) if stops else None

    def note_failure(self, err: BaseException) -> None:
        """Leave a note for the other processes before this one leaves with `err`."""
        text = f"{type(err).__name__}: {err}".strip()
        with contextlib.suppress(Exception):  # the service is gone: the others learn of the exit from the runtime
            self.client.key_value_set(f"{_NS}/failed/{self.pid}", f"{_PASSED[0]} {text[:2000]}", allow_overwrite=True)

    # -- collectives ---------------------------------------------------------------------------------------------

    def collective(self, f: Callable[[], Any]) -> Any:
        """`f()` (a collective); if it fails because a peer died, raise `ProcessFailed` naming it."""
        try:
            return f()
        except ProcessFailed:
            raise
        except Exception as e:  # e.g. gloo: "Connection closed by peer"
            try:
                self.barrier()
            except ProcessFailed as failed:
                raise failed from e
            raise

    def broadcast(self, data: np.ndarray) -> np.ndarray:
        """Process 0's bytes `data` (`uint8`, the same length everywhere) on every process."""
        from jax.experimental import multihost_utils

        return self.collective(lambda: np.asarray(multihost_utils.broadcast_one_to_all(data)))


def gather(tree: Any, mesh: Any) -> list[np.ndarray]:
    """The leaves of `tree` (arrays whose leading member axis is sharded over `mesh`), whole, as NumPy arrays on
    every process: one all-gather of the leaves' bytes packed into one `(members, bytes per member)` array."""
    from jax.sharding import NamedSharding, PartitionSpec

    leaves = jax.tree_util.tree_leaves(tree)
    packed = _pack_jit(NamedSharding(mesh, PartitionSpec()))(leaves)
    rows = np.asarray(packed.addressable_data(0))
    out, pos = [], 0
    for x in leaves:
        width = int(np.prod(x.shape[1:], dtype=np.int64)) * x.dtype.itemsize
        out.append(np.ascontiguousarray(rows[:, pos : pos + width]).view(x.dtype).reshape(x.shape))
        pos += width
    return out


def _pack(leaves: list[jax.Array]) -> jax.Array:
    import jax.numpy as jnp

    def as_bytes(x):
        x = x.reshape(x.shape[0], -1)
        if x.dtype == jnp.bool_:
            return x.astype(jnp.uint8)
        if x.dtype.itemsize == 1:
            return jax.lax.bitcast_convert_type(x, jnp.uint8)
        return jax.lax.bitcast_convert_type(x, jnp.uint8).reshape(x.shape[0], -1)

    return jnp.concatenate([as_bytes(x) for x in leaves], axis=1)


@functools.lru_cache(maxsize=8)
def _pack_jit(sharding: Any) -> Any:
    return jax.jit(_pack, out_shardings=sharding)
