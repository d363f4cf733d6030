"""GPUODEBenchmarks' Lorenz ensemble (adaptive Tsit5, float32): ck.simulate_ensemble vs jax.vmap(diffrax.diffeqsolve).

The public benchmark. Utkarsh U, Churavy V, Ma Y, Besard T, Srisuma P, Gymnich T, Gerlach AR, Edelman A,
Barbastathis G, Braatz RD, Rackauckas C. "Automated translation and accelerated solving of differential equations
on multiple GPU platforms." Comput Methods Appl Mech Eng 2024;419:116591, arXiv:2304.06835. Abstract: DiffEqGPU's
kernel solvers perform "20-100x faster than the vectorized-map (vmap) approach implemented in JAX and PyTorch".
Code and data: github.com/utkarsh530/GPUODEBenchmarks (read at commit 1a90256, 2024-01-03; the paper's timing files
were committed with the scripts of f58c512, 2023-04-19). The setting, read in that code:

- Lorenz: dx = 10 (y - x), dy = rho x - y - x z, dz = x y - beta z; beta = 8/3 in the diffrax script
  (`GPU_ODE_JAX/bench_diffrax.py`) and in `GPU_ODE_Julia/bin/ode_problems/lorenz.jl`; the DiffEqGPU timing script
  `GPU_ODE_Julia/bench_lorenz_gpu.jl` writes `2.666f0` (beta differs from 8/3 by 2.5e-4).
- u0 = [1, 0, 0], t in [0, 1], float32 (Julia `Float32` literals; JAX with its default `jax_enable_x64 = False`).
- Per trajectory only rho varies: `parameterList = range(0.0f0, stop = 21.0f0, length = N)` (Julia) /
  `jnp.linspace(0.0, 21.0, N)` (JAX); trajectory i gets rho = parameterList[i] (`prob_func = (prob, i, repeat) ->
  remake(prob, p = @SArray [parameterList[i]])`). Not `p .* rand(3)` (that is the DiffEqGPU documentation example).
  rho <= 21 lies below the onset of the chaotic attractor (rho ~ 24.06): every trajectory is a smooth transient.
- Adaptive run: Tsit5 (`GPUTsit5()` / `diffrax.Tsit5()`), rtol = atol = 1e-8, initial dt = 0.001. Julia:
  `DiffEqGPU.vectorized_asolve(probs, prob, GPUTsit5(); dt = 0.001f0, reltol = 1.0f-8, abstol = 1.0f-8)` (the
  kernel behind `EnsembleGPUKernel`; problems built and moved to the GPU outside the timing), timed with
  BenchmarkTools `@benchmark CUDA.@sync ...`, minimum. diffrax: `diffeqsolve(ODETerm(Lorenz(k1)), Tsit5(), 0.0, 1.0,
  0.001, y0, stepsize_controller=PIDController(rtol=1e-8, atol=1e-8))` (default `max_steps` 4096, `throw=True`),
  `timeit.repeat(..., repeat=100, number=1)`, minimum, without `block_until_ready`; jax 0.4.6, diffrax 0.3.1. The
  timing files were committed with the f58c512 script, which calls `jax.vmap(main)(parameterList)` on a `@jax.jit`
  `main` (vmap outside jit); the current script is `@jax.jit @jax.vmap def main` (its README: the order made no
  noticeable difference).
- Saves: the endpoint only. diffrax: the `saveat` argument is commented out, so the default `SaveAt(t1=True)`;
  DiffEqGPU's `vectorized_asolve` defaults to `save_everystep = false` and stores t0 and t1 (2 saves).
- N = 8 * 4^k, k = 0..10: 8, 32, 128, ..., 8,388,608 (`runner_scripts/gpu/run_ode_*.sh`: a = 8, a *= 4 while
  a <= 2^24). A fixed-step run (dt = 0.001, 1000 steps) is also in the paper; this script reproduces the adaptive one.

Published timings of the adaptive run, `paper_artifacts/data/Tesla_V100/{Julia,JAX}/*_times_adaptive.txt` (ms;
`PUBLISHED` below, also the RTX 5000 files): DiffEqGPU 0.301 ms (N = 8) ... 69.45 ms (N = 8,388,608), diffrax vmap
12.4 ms ... 2,611 ms, i.e. diffrax / DiffEqGPU = 30-47x over the grid and 37.6x at N = 8,388,608 (the "~38x").

This script runs, in one process and side by side for each N (compiled first, then `--repeats` interleaved timed
calls, minimum, `jax.block_until_ready`):

- `ours`: `ck.simulate_ensemble(batch_models(Lorenz(), {"rho": rho}), None, ts=[1.0], t0=0.0,
  solver=ck.EnsembleTsit5(), rtol=1e-8, atol=1e-8)` under `jax.jit` (rho traced), the model below;
- `vmap_diffrax`: the published diffrax program in its fastest idiomatic form, `jax.jit(jax.vmap(solve))` with the RHS
  as a plain function, Tsit5, `PIDController(rtol=1e-8, atol=1e-8)`, dt0 = 0.001, `SaveAt(t1=True)`;
- optionally (`--host-devices K > 1`, CPU only) `ours_xK`: the ensemble sharded over K host devices (`devices="all"`).

float32 throughout: `jax_enable_x64` stays off (as in the published runs), rho = `jnp.linspace(0, 21, N,
dtype=float32)`, and the script checks that both tools return float32 states. The ensemble engine computes in the
dtype of its save times, which is float32 here. It reports compile time (first call minus the best timed call),
the step counts (mean, max, rejected), and the accuracy at t = 1 on up to `--ref-members` trajectories spread over
the batch against a float64 reference (diffrax Dopri8, rtol = atol = 1e-12, computed with `jax.enable_x64(True)`
on the same float32 parameter values). Error = max over those members of max_i |y_i - ref_i| / max(1, max_i
|ref_i|) (relative where the state is larger than 1, absolute below: the weighting rtol = atol asks for; the rho = 0
member decays to x(1) = 4.5e-5, y = z = 0, where a relative error would only measure atol).
float32 cannot deliver 1e-8 (its unit round-off is 6e-8 and |y| reaches ~20), so the table reports what it does
reach. A float64 control (both tools at the same tolerances on the reference members, untimed) shows the step
counts and error the tolerance buys without float32 round-off.

The published columns are V100 GPU timings. On a CPU the run is a smoke test of the setting, not the GPU
comparison: "pub DiffEqGPU / ours" then compares a V100 with this CPU and is context only. Results: rows in
`benchmarks/results/lorenz_<device>_<date>.json` and the printed output in the `.log` next to it.

    python benchmarks/gpu_lorenz.py --quick                    # smoke test (< 1 min on 2 CPU cores)
    python benchmarks/gpu_lorenz.py                            # CPU: N = 8 ... 32,768; GPU: N = 8 ... 8,388,608
    python benchmarks/gpu_lorenz.py --n 8,512,32768 --repeats 5
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import subprocess
import sys
import time
from typing import NamedTuple


def _early_host_devices(argv) -> int:
    """`--host-devices K` must reach XLA_FLAGS before jax is imported."""
    for i, a in enumerate(argv):
        if a == "--host-devices" and i + 1 < len(argv):
            return int(argv[i + 1])
        if a.startswith("--host-devices="):
            return int(a.split("=", 1)[1])
    return 1


if __name__ == "__main__":
    _k = _early_host_devices(sys.argv[1:])
    if _k > 1 and "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
        os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={_k}"

import diffrax  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import carkinetics as ck  # noqa: E402

_PAPER = "Utkarsh et al., Comput Methods Appl Mech Eng 2024;419:116591 (arXiv:2304.06835)"
_CODE = "github.com/utkarsh530/GPUODEBenchmarks"


class Lorenz(ck.AbstractKineticModel):
    """The Lorenz (1963) system as GPUODEBenchmarks times it: a benchmark workload, not a kinetic model.

    dx/dt = sigma (y - x), dy/dt = rho x - y - x z, dz/dt = x y - beta z; x(0) = 1, y(0) = z(0) = 0. Time is in the
    package's unit (days) only formally; the states are dimensionless.
    """

    class State(NamedTuple):
        x: object
        y: object
        z: object

    class Observables(NamedTuple):
        x: object
        y: object
        z: object

    state_units = {"x": "1", "y": "1", "z": "1"}
    observable_units = {"x": "1", "y": "1", "z": "1"}

    sigma: float = ck.param(
        10.0,
        unit="1/d",
        description="Prandtl number sigma (a rate here: time is formally days)",
        source=f"{_PAPER}; {_CODE} GPU_ODE_JAX/bench_diffrax.py (10.0) and GPU_ODE_Julia/bench_lorenz_gpu.jl (10.0f0)",
        tag="R",
    )
    rho: float = ck.param(
        28.0,
        unit="1",
        description="Rayleigh-number ratio rho; the benchmark sweeps rho = linspace(0, 21, N) over the trajectories",
        source=f"{_CODE} GPU_ODE_Julia/bin/ode_problems/lorenz.jl (p = 28.0, replaced per "
        "trajectory by parameterList = range(0, 21, length = N))",
        tag="R",
    )
    beta: float = ck.param(
        8.0 / 3.0,
        unit="1/d",
        description="geometric factor beta (a rate here)",
        source=f"{_PAPER}; {_CODE} GPU_ODE_JAX/bench_diffrax.py (8/3); the DiffEqGPU timing "
        "script bench_lorenz_gpu.jl writes 2.666f0",
        tag="R",
    )

    def initial_state(self):
        return self.State(x=1.0, y=0.0, z=0.0)

    def __call__(self, t, y, args):
        del t, args
        return self.State(x=self.sigma * (y.y - y.x), y=self.rho * y.x - y.y - y.x * y.z, z=y.x * y.y - self.beta * y.z)

    def observe(self, t, y):
        del t
        return self.Observables(x=y.x, y=y.y, z=y.z)


#: Published adaptive-run timings (ms), `paper_artifacts/data/<gpu>/{Julia,JAX}/*_times_adaptive.txt` of
#: github.com/utkarsh530/GPUODEBenchmarks (committed in f58c512, 2023-04-19); rounded to 4 significant digits.
PUBLISHED = {
    "Tesla_V100": {
        "diffeqgpu_ms": {
            8: 0.3013,
            32: 0.3015,
            128: 0.3045,
            512: 0.3302,
            2048: 0.3493,
            8192: 0.3683,
            32768: 0.6170,
            131072: 1.583,
            524288: 4.656,
            2097152: 17.84,
            8388608: 69.45,
        },
        "diffrax_ms": {
            8: 12.42,
            32: 13.53,
            128: 14.26,
            512: 14.48,
            2048: 15.89,
            8192: 15.42,
            32768: 19.16,
            131072: 47.80,
            524288: 190.3,
            2097152: 680.2,
            8388608: 2611.0,
        },
    },
    "RTX_5000": {
        "diffeqgpu_ms": {
            8: 0.2529,
            32: 0.2592,
            128: 0.2616,
            512: 0.2726,
            2048: 0.2948,
            8192: 0.3708,
            32768: 0.7543,
            131072: 1.666,
            524288: 5.511,
            2097152: 20.72,
            8388608: 83.49,
        },
        "diffrax_ms": {
            8: 11.40,
            32: 11.75,
            128: 12.41,
            512: 12.65,
            2048: 12.49,
            8192: 14.12,
            32768: 21.17,
            131072: 206.5,
            524288: 454.2,
            2097152: 1770.0,
            8388608: 7068.0,
        },
    },
}

RTOL = ATOL = 1e-8
DT0 = 0.001
T1 = 1.0
U0 = (1.0, 0.0, 0.0)
SIGMA, BETA = 10.0, 8.0 / 3.0


def lorenz_rhs(t, u, rho):
    """The published diffrax RHS (`Lorenz.__call__` of bench_diffrax.py), with rho as the argument."""
    del t
    return jnp.stack([SIGMA * (u[1] - u[0]), rho * u[0] - u[1] - u[0] * u[2], u[0] * u[1] - BETA * u[2]])


def _parse():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument(
        "--n", default=None, help="comma-separated N (default: 8*4^k up to 32,768 on CPU, 8,388,608 on an accelerator)"
    )
    p.add_argument("--quick", action="store_true", help="smoke test: N = 8, 2048, 2 repeats, 64 reference members")
    p.add_argument("--repeats", type=int, default=None, help="timed calls per tool and N (default 5; quick 2)")
    p.add_argument(
        "--ref-members",
        type=int,
        default=None,
        help="members checked against the float64 reference (default 1000; quick 64)",
    )
    p.add_argument(
        "--host-devices",
        type=int,
        default=1,
        help="CPU only: also run the ensemble sharded over K host devices (tool ours_xK)",
    )
    p.add_argument("--published-gpu", choices=sorted(PUBLISHED), default="Tesla_V100")
    p.add_argument("--suffix", default="", help="appended to the result files' names (e.g. b for a second run)")
    p.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results"))
    return p.parse_args()


class _Tee:
    def __init__(self, stream):
        self.stream, self.lines = stream, []

    def write(self, s):
        self.stream.write(s)
        self.lines.append(s)

    def flush(self):
        self.stream.flush()


def _device_tag(dev) -> str:
    if dev.platform == "cpu":
        return "cpu"
    m = re.search(r"\b([A-Z]{1,2}\d{2,4})\b", dev.device_kind)
    return (m.group(1) if m else re.sub(r"[^A-Za-z0-9]+", "_", dev.device_kind)).lower()


def _git_commit() -> str:
    try:
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
            cwd=os.path.dirname(os.path.abspath(__file__)),
        ).stdout.strip()
    except Exception:
        return "unknown"


def _ref_indices(n, m):
    return np.unique(np.round(np.linspace(0, n - 1, min(n, m))).astype(int))


def main():
    args = _parse()
    tee = _Tee(sys.stdout)
    sys.stdout = tee
    dev = jax.devices()[0]
    on_cpu = dev.platform == "cpu"
    if args.n:
        ns = [int(float(x)) for x in args.n.split(",")]
    elif args.quick:
        ns = [8, 2048]
    else:
        ns = [8 * 4**k for k in range(7 if on_cpu else 11)]
    repeats = args.repeats or (2 if args.quick else 5)
    ref_m = args.ref_members or (64 if args.quick else 1000)
    pub = PUBLISHED[args.published_gpu]
    start = time.perf_counter()
    stamp = datetime.datetime.now()
    cmd = "python benchmarks/gpu_lorenz.py " + " ".join(sys.argv[1:])
    print(f"## {stamp:%Y-%m-%d %H:%M}, carkinetics {ck.__version__} at {_git_commit()}; {cmd}")
    print(
        f"jax {jax.__version__}, diffrax {diffrax.__version__}; device {dev.device_kind} ({dev.platform}); "
        f"{os.cpu_count()} visible CPU cores; load average {os.getloadavg()[0]:.2f}; "
        f"jax_enable_x64 = {jax.config.jax_enable_x64}"
    )
    if on_cpu:
        print(
            "CPU SMOKE RUN: the GPUODEBenchmarks setting on a CPU, not the paper's GPU comparison; the published "
            f"columns are {args.published_gpu} GPU timings (context only)."
        )
    print(
        f"setting: Lorenz sigma = 10, beta = 8/3, rho = linspace(0, 21, N); u0 = [1, 0, 0]; t in [0, 1], endpoint "
        f"saved; Tsit5, rtol = atol = {RTOL:g}; float32; N = {ns}; {repeats} interleaved repeats (min)"
    )

    # ---- the two tools ----------------------------------------------------------------------------------------
    def ours_fn(devices):
        @jax.jit
        def run(rho):
            models = ck.batch_models(Lorenz(), {"rho": rho})
            # A fresh NumPy array per trace: jnp.asarray caches the conversion of one NumPy object, so an array
            # converted once with x64 off stays float32 inside `jax.enable_x64(True)` (the float64 control below).
            ts = np.asarray([T1])
            return ck.simulate_ensemble(
                models, None, ts, t0=0.0, solver=ck.EnsembleTsit5(), rtol=RTOL, atol=ATOL, devices=devices
            )

        return run

    def diffrax_solve(rho, solver=None, rtol=RTOL, atol=ATOL, dt0=DT0, max_steps=4096):
        return diffrax.diffeqsolve(
            diffrax.ODETerm(lorenz_rhs),
            solver or diffrax.Tsit5(),
            0.0,
            T1,
            dt0,
            jnp.asarray(U0, dtype=jnp.result_type(rho)),
            args=rho,
            saveat=diffrax.SaveAt(t1=True),
            stepsize_controller=diffrax.PIDController(rtol=rtol, atol=atol),
            max_steps=max_steps,
        )

    vmap_diffrax = jax.jit(jax.vmap(diffrax_solve))

    tools = {"ours": ours_fn(None), "vmap_diffrax": vmap_diffrax}
    k_host = len(jax.devices())
    if on_cpu and args.host_devices > 1 and k_host > 1:
        tools[f"ours_x{k_host}"] = ours_fn("all")

    def extract(tool, sol):
        """(y at t = 1 (N, 3), accepted (N,), rejected (N,), failed members)."""
        if tool == "vmap_diffrax":
            st = sol.stats
            return (
                sol.ys[:, -1],
                st["num_accepted_steps"],
                st["num_rejected_steps"],
                int(np.sum(~np.asarray(sol.result == diffrax.RESULTS.successful))),
            )
        return sol.y_array[:, -1], sol.num_accepted_steps, sol.num_rejected_steps, int(np.sum(~np.asarray(sol.ok)))

    # ---- float64 reference (on the float32 parameter values) --------------------------------------------------
    ref_fn = jax.jit(jax.vmap(lambda r: diffrax_solve(r, diffrax.Dopri8(), 1e-12, 1e-12, None, 1_000_000)))
    check_fn = jax.jit(jax.vmap(lambda r: diffrax_solve(r, diffrax.Tsit5(), 1e-12, 1e-12, None, 1_000_000)))

    def reference(rho32):
        """Dopri8 rtol = atol = 1e-12 in float64 at the float32 rho values; padded to `ref_m` members (one compile)."""
        r64 = np.asarray(rho32, dtype=np.float64)
        pad = np.resize(r64, ref_m) if r64.size < ref_m else r64
        with jax.enable_x64(True):
            sol = ref_fn(jnp.asarray(pad, jnp.float64))
            y = np.asarray(sol.ys[:, -1], dtype=np.float64)
        return y[: r64.size]

    def rel_err(y, ref):
        """Per member max_i |y_i - ref_i| / max(1, max_i |ref_i|) (relative, absolute below 1: the weighting of
        rtol = atol; the rho = 0 member decays to x(1) = 4.5e-5, y = z = 0); max and median over members."""
        e = np.max(np.abs(np.asarray(y, np.float64) - ref), axis=1) / np.maximum(1.0, np.max(np.abs(ref), axis=1))
        return float(np.max(e)), float(np.median(e))

    t = time.perf_counter()
    rho_chk = np.linspace(0.0, 21.0, min(ref_m, 100), dtype=np.float32).astype(np.float64)
    y_ref_chk = reference(rho_chk)
    with jax.enable_x64(True):
        y_chk = np.asarray(check_fn(jnp.asarray(rho_chk)).ys[:, -1])
    ref_self = rel_err(y_chk, y_ref_chk)[0]
    print(
        f"reference: diffrax Dopri8 rtol = atol = 1e-12, float64, on <= {ref_m} members per N; its agreement with "
        f"float64 Tsit5 at 1e-12 on {rho_chk.size} members: {ref_self:.1e} ({time.perf_counter() - t:.1f} s)",
        flush=True,
    )

    # ---- timing -----------------------------------------------------------------------------------------------
    rows = []
    for n in ns:
        rho = jnp.linspace(0.0, 21.0, n, dtype=jnp.float32)
        idx = _ref_indices(n, ref_m)
        ref = reference(np.asarray(rho)[idx])
        first, sols = {}, {}
        for name, fn in tools.items():
            try:
                t = time.perf_counter()
                sols[name] = jax.block_until_ready(fn(rho))
                first[name] = time.perf_counter() - t
            except Exception as e:  # e.g. out of memory at the largest N: report and go on
                print(f"{name} N={n}: failed ({type(e).__name__}: {str(e)[:300]})", flush=True)
        times = {name: [] for name in sols}
        for _ in range(repeats):  # interleaved, so that a noisy machine affects the tools alike
            for name in sols:
                t = time.perf_counter()
                jax.block_until_ready(tools[name](rho))
                times[name].append(time.perf_counter() - t)
        for name, sol in sols.items():
            y, acc, rej, failed = extract(name, sol)
            y = np.asarray(y)
            if y.dtype != np.float32:
                raise SystemExit(f"{name} returned {y.dtype} states, expected float32")
            acc, rej = np.asarray(acc), np.asarray(rej)
            steps = acc + rej
            best = min(times[name])
            e_max, e_med = rel_err(y[idx], ref)
            row = dict(
                tool=name,
                n=n,
                dtype=str(y.dtype),
                compile_s=max(first[name] - best, 0.0),
                best_s=best,
                times_s=times[name],
                per_solve_us=1e6 * best / n,
                steps_mean=float(np.mean(steps)),
                steps_max=int(np.max(steps)),
                steps_first=int(steps[0]),
                steps_last=int(steps[-1]),
                rejected_mean=float(np.mean(rej)),
                failed=failed,
                ref_members=int(idx.size),
                err_max=e_max,
                err_median=e_med,
            )
            rows.append(row)
            print(
                f"{name:13s} N={n:>8,d}  compile {row['compile_s']:6.2f} s  best {best:9.5f} s "
                f"({row['per_solve_us']:9.3f} us/solve)  steps mean {row['steps_mean']:6.1f} max "
                f"{row['steps_max']:4d} (rejected {row['rejected_mean']:4.1f})  failed {failed}  err max "
                f"{e_max:.1e} median {e_med:.1e} ({idx.size} members)  {row['dtype']}",
                flush=True,
            )

    # ---- float64 control: the same tolerances without float32 round-off (untimed) -----------------------------
    control = {}
    rho_c = np.asarray(jnp.linspace(0.0, 21.0, max(ns), dtype=jnp.float32))[_ref_indices(max(ns), ref_m)]
    ref_c = reference(rho_c)
    with jax.enable_x64(True):
        r64 = jnp.asarray(rho_c.astype(np.float64))
        for name, fn in (("ours", ours_fn(None)), ("vmap_diffrax", jax.jit(jax.vmap(diffrax_solve)))):
            y, acc, rej, failed = extract(name, fn(r64))
            y = np.asarray(y)
            steps = np.asarray(acc) + np.asarray(rej)
            control[name] = dict(
                dtype=str(y.dtype),
                steps_mean=float(np.mean(steps)),
                rejected_mean=float(np.mean(np.asarray(rej))),
                failed=failed,
                err_max=rel_err(y, ref_c)[0],
                members=int(rho_c.size),
            )
    print(
        "float64 control (rtol = atol = 1e-8, the rho values of the largest N's reference members, untimed): "
        + "; ".join(
            f"{k} steps mean {v['steps_mean']:.1f} (rejected {v['rejected_mean']:.1f}), err max "
            f"{v['err_max']:.1e} ({v['dtype']})"
            for k, v in control.items()
        )
    )

    # ---- summary ----------------------------------------------------------------------------------------------
    by = {(r["tool"], r["n"]): r for r in rows}
    g = args.published_gpu
    extra = [k for k in tools if k.startswith("ours_x")]
    print(
        f"\n{'CPU smoke run' if on_cpu else dev.device_kind}: seconds per batch (min of {repeats}), float32; "
        f"published = {g} adaptive run ({_CODE} paper_artifacts, ms -> s)\n"
    )
    head = (
        ["N", "ours (s)"]
        + [f"{k} (s)" for k in extra]
        + [
            "vmap diffrax (s)",
            "vmap / ours",
            f"pub. DiffEqGPU {g} (s)",
            f"pub. diffrax {g} (s)",
            "pub. diffrax / DiffEqGPU",
            "pub. DiffEqGPU / ours",
        ]
    )
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for n in ns:
        o, v = by.get(("ours", n)), by.get(("vmap_diffrax", n))
        cells = [f"{n:,}", f"{o['best_s']:.4g}" if o else "-"]
        cells += [f"{by[(k, n)]['best_s']:.4g}" if (k, n) in by else "-" for k in extra]
        cells += [f"{v['best_s']:.4g}" if v else "-", f"{v['best_s'] / o['best_s']:.1f}x" if o and v else "-"]
        pj, pd = pub["diffeqgpu_ms"].get(n), pub["diffrax_ms"].get(n)
        cells += [
            f"{pj / 1e3:.3g}" if pj else "-",
            f"{pd / 1e3:.3g}" if pd else "-",
            f"{pd / pj:.1f}x" if pj and pd else "-",
            f"{pj / 1e3 / o['best_s']:.2g}" if pj and o else "-",
        ]
        print("| " + " | ".join(cells) + " |")
    print("\n| N | tool | compile (s) | steps mean / max (rejected) | failed | max err at t = 1 (median) |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['n']:,} | {r['tool']} | {r['compile_s']:.2f} | {r['steps_mean']:.1f} / {r['steps_max']} "
            f"({r['rejected_mean']:.1f}) | {r['failed']} | {r['err_max']:.1e} ({r['err_median']:.1e}) |"
        )
    wall = time.perf_counter() - start
    print(f"\ntotal wall time {wall:.0f} s; load average {os.getloadavg()[0]:.2f}")

    os.makedirs(args.out, exist_ok=True)
    name = f"lorenz_{_device_tag(dev)}_{stamp:%Y-%m-%d}{'_quick' if args.quick else ''}{args.suffix}"
    base = os.path.join(args.out, name)
    with open(base + ".json", "w") as fh:
        json.dump(
            dict(
                benchmark="GPUODEBenchmarks Lorenz, adaptive Tsit5, float32",
                paper=_PAPER,
                code=_CODE + " @ 1a90256",
                command=cmd,
                date=stamp.isoformat(timespec="minutes"),
                device=dev.device_kind,
                platform=dev.platform,
                jax=jax.__version__,
                diffrax=diffrax.__version__,
                carkinetics=ck.__version__,
                commit=_git_commit(),
                setting=dict(
                    sigma=SIGMA,
                    beta=BETA,
                    rho="linspace(0, 21, N) float32",
                    u0=U0,
                    t=[0.0, T1],
                    rtol=RTOL,
                    atol=ATOL,
                    dt0_diffrax=DT0,
                    saves="t = 1 only",
                    dtype="float32",
                ),
                reference=dict(
                    solver="diffrax Dopri8",
                    rtol=1e-12,
                    atol=1e-12,
                    dtype="float64",
                    agreement_with_tsit5_at_1e12=ref_self,
                    error="max over members of max_i |y_i - ref_i| / max(1, max_i |ref_i|) at t = 1",
                ),
                repeats=repeats,
                published_gpu=g,
                published_ms=pub,
                rows=rows,
                float64_control=control,
                wall_s=wall,
            ),
            fh,
            indent=1,
        )
    sys.stdout = tee.stream
    with open(base + ".log", "w") as fh:
        fh.write("".join(tee.lines))
    print(f"wrote {base}.json and {base}.log")


if __name__ == "__main__":
    main()
