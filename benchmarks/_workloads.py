"""Workloads and timing helpers shared by the benchmark scripts (not a benchmark itself).

- `reference_workload()`: the 9-state timing model (`carkinetics.models.ReferenceWorkload`, identical to the shared
  reference `/work/shared/bench/reference_workload.py`), days 0..365, 366 daily saves, rtol 1e-6, atol 1e-8, every
  parameter varied (log-normal sigma 0.3).
- `sle_workload()`: the current SLE CAR-T model, built only through the application's public entry points
  (`load_preset("human")`, `erlangen_regimen(model)`, `save_times(365)`), so it follows the model as it changes;
  the model class's tolerances; a few rate parameters varied (log-normal sigma 0.2). The simulation starts at the
  first dose (day -5 for the Erlangen regimen: the save times before it are dropped), which is also where the SBML
  clock of the libroadrunner peer starts (`to_sbml`'s default): with the clock started earlier, CVODE at atol
  <= 1e-10 fails at the first infusion start (error test failures at |h| = hmin; libroadrunner 2.10).
- `perturbed_batch(...)`: member 0 nominal, the others with the varied parameters times log-normal factors (seed 0),
  as `ck.batch_models`.
- `first_and_best(...)`: compile (first call) separately from the minimum of repeated, blocked-on calls.

Import after `jax` is configured (x64, host devices): this module imports jax at call time only.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Any

#: SLE parameters perturbed in the ensemble benchmarks when the current model has them (rates of CAR-T expansion,
#: killing and exhaustion, IgG elimination and IL-6 release); topped up with other rate parameters (unit 1/d) if
#: the model has been rewritten and some of these names are gone.
SLE_VARIED = ("car.rho", "car.k_kill", "car.k_exh", "humoral.k_igg", "myeloid.k_il6")
#: SLE population parameters of the gradient benchmark (same rule).
SLE_POPULATION = ("car.rho", "car.k_kill", "humoral.k_igg")


@dataclass
class Workload:
    name: str
    model: Any
    regimen: Any
    ts: Any  # NumPy float64 save times (days)
    t0: float
    rtol: float
    atol: float
    varied: tuple[str, ...]
    sigma: float


def force_host_devices(k: int) -> None:
    """Ask XLA for `k` CPU host devices (must run before jax is imported)."""
    if k > 1 and "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
        os.environ["XLA_FLAGS"] = (
            os.environ.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={k}"
        ).strip()


def reference_workload() -> Workload:
    import numpy as np

    from carkinetics.models.reference_workload import SHARED_ORDER, ReferenceWorkload

    m = ReferenceWorkload()
    return Workload("reference", m, None, np.linspace(0.0, 365.0, 366), 0.0, 1e-6, 1e-8, tuple(SHARED_ORDER), 0.3)


def pick_parameters(model: Any, preferred: tuple[str, ...], k: int) -> tuple[str, ...]:
    """`preferred` names the model has, topped up to `k` with its other positive rate parameters (unit 1/d)."""
    import numpy as np

    import carkinetics as ck

    params = ck.parameters(model)
    out = [n for n in preferred if n in params]
    for name, p in sorted(params.items()):
        if len(out) >= k:
            break
        v = np.asarray(p.value)
        if name not in out and p.info.unit == "1/d" and v.ndim == 0 and float(v) > 0:
            out.append(name)
    return tuple(out[:k])


def sle_workload(t_end: float = 365.0) -> Workload:
    import numpy as np

    from carkinetics.models.sle import erlangen_regimen, load_preset, save_times

    m = load_preset("human")
    regimen = erlangen_regimen(m)
    t0 = float(regimen.first_time())
    ts = np.asarray(save_times(t_end), dtype=float)
    ts = ts[ts >= t0]
    cls = type(m)
    return Workload(
        "sle",
        m,
        regimen,
        ts,
        t0,
        cls.default_rtol,
        cls.default_atol,
        pick_parameters(m, SLE_VARIED, len(SLE_VARIED)),
        0.2,
    )


def workload(name: str) -> Workload:
    return {"reference": reference_workload, "sle": sle_workload}[name]()


def factors(n: int, k: int, sigma: float, seed: int = 0):
    """(n, k) log-normal factors, row 0 = 1 (the nominal member)."""
    import numpy as np

    fac = np.exp(np.random.default_rng(seed).normal(0.0, sigma, (n, k)))
    fac[0] = 1.0
    return fac


def member_values(w: Workload, n: int) -> list[dict[str, float]]:
    """The first `n` members' perturbed values (for the one-at-a-time peers)."""
    fac = factors(n, len(w.varied), w.sigma)
    return [{v: float(w.model.get(v)) * f for v, f in zip(w.varied, row)} for row in fac]


def perturbed_batch(w: Workload, n: int):
    """`ck.batch_models` of `n` members: member 0 nominal, the others perturbed (seed 0)."""
    import carkinetics as ck

    fac = factors(n, len(w.varied), w.sigma)
    return ck.batch_models(w.model, {v: float(w.model.get(v)) * fac[:, i] for i, v in enumerate(w.varied)})


def reference_rhs(t, y, p, xp):
    """The reference workload's right-hand side written out (`p` in `SHARED_ORDER`; `xp` = numpy or jax.numpy)."""
    del t
    (rho, kb, rh, k7, de, kem, dm, sb, db, kk, kkill, kdiff, dpb, ppb, pll, dll, kab, kil6, dil6, kcy, s7, d7, c7) = (
        p[i] for i in range(23)
    )
    ce, cm, b, pb, ll, ab, il6, cy, il7 = (y[i] for i in range(9))
    kill = kk * ce * b / (b + kkill)
    grow = rho * b / (b + kb) + rh * il7 / (il7 + k7)
    return xp.stack(
        [
            grow * ce - de * ce - kem * ce,
            kem * ce - dm * cm,
            sb - db * b - kill - kdiff * b - 0.02 * cy * b,
            kdiff * b * 100 - dpb * pb - kk * ce * pb / (pb + kkill),
            -dll * ll,
            ppb * pb + pll * ll - kab * ab,
            kil6 * kill - dil6 * il6,
            -kcy * cy,
            s7 - d7 * il7 - c7 * (b + ce + cm) * il7,
        ]
    )


def first_and_best(fn, *args, repeats: int = 3):
    """`(compile_s, best_s, out)`: the first call (compile + run) minus the best of `repeats` blocked-on calls, the
    best call, and the first call's output."""
    import jax

    t = time.perf_counter()
    out = jax.block_until_ready(fn(*args))
    first = time.perf_counter() - t
    best = float("inf")
    for _ in range(max(1, repeats)):
        t = time.perf_counter()
        jax.block_until_ready(fn(*args))
        best = min(best, time.perf_counter() - t)
    return max(first - best, 0.0), best, out


def error_floor(ref):
    """Per-state floor of the relative error: 1e-6 x the state's maximum over the reference; for a state that is
    identically zero in the reference (a drug that is never given), 1e-6 in the state's unit (absolute), as in
    `tests/test_sbml.py`, so that round-off of 1e-25 in a peer is not a "relative error" of 1e7."""
    import numpy as np

    m = np.max(np.abs(np.asarray(ref)), axis=0)
    return np.where(m > 0.0, 1e-6 * m, 1e-6)


def max_rel_err(y, ref, floor, where: bool = False):
    """max |y - ref| / (|ref| + floor) (floor: per state, see `error_floor`); a non-finite `y` counts as an infinite
    error. With `where`, also the (time index, state index) of the maximum."""
    import numpy as np

    y, ref = np.asarray(y), np.asarray(ref)
    r = np.abs(y - ref) / (np.abs(ref) + floor)
    r = np.where(np.isfinite(r), r, np.inf)
    if not where:
        return float(np.max(r))
    i = np.unravel_index(int(np.argmax(r)), r.shape)
    return float(r[i]), (int(i[0]), int(i[1]))


def machine() -> str:
    """Device, backend, jax and carkinetics versions, CPU cores and git commit, for the logs."""
    import subprocess

    import jax

    import carkinetics as ck

    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            cwd=os.path.dirname(os.path.abspath(__file__)),
            check=False,
        ).stdout.strip()
    except OSError:
        commit = "?"
    dev = jax.devices()
    dtype = "float64" if jax.config.jax_enable_x64 else "float32"
    return (
        f"jax {jax.__version__}, carkinetics {ck.__version__} (commit {commit or '?'}), {dtype}, "
        f"{len(dev)} x {dev[0].device_kind} ({jax.default_backend()}), {os.cpu_count()} visible CPU cores, "
        f"{time.strftime('%Y-%m-%d')}"
    )
