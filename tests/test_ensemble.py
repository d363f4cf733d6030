"""The batched ensemble solver (`ck.simulate_ensemble`): truth, agreement with `ck.simulate`, events, failures,
derivatives and tracing.

Tolerances: solves use rtol 1e-8 / atol 1e-10 unless stated; a global error of ~100 x rtol is the usual bound
for an adaptive 5th-order method over a few segments, so agreement is asserted at 1e-5 relative (floor noted).
"""

import dataclasses

import diffrax
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg
from helpers import rel_err

import carkinetics as ck
from carkinetics._core import _simulate as _core_simulate
from carkinetics._ensemble import _api, _autodiff, _linalg, _loop
from carkinetics.models import OneCompartmentPK, TwoCompartmentPK
from carkinetics.models.reference_workload import ReferenceWorkload

METHODS = [ck.EnsembleTsit5(), ck.EnsembleRodas5()]
IDS = ["tsit5", "rodas5"]
TS = jnp.linspace(0.0, 3.0, 25)  # every 3 h for 3 days
V = 46.5
CLS = jnp.array([60.0, 130.0, 250.0])  # L/d


def with_slots(method, slots):
    """`method` with `slots` members integrated at once (a static field of the ensemble method; None: default)."""
    return dataclasses.replace(method, slots=slots)


def one_cpt_models(cls=CLS):
    return jax.vmap(lambda cl: OneCompartmentPK(cl=cl, v=V))(cls)


def one_cpt_exact(cl, times, amounts, ts):
    """Superposition of boluses (amounts at times) for the linear one-compartment model, amounts in mg."""
    k = cl / V
    out = np.zeros_like(np.asarray(ts))
    for tb, a in zip(times, amounts):
        out = out + np.where(ts >= tb, a * np.exp(-k * (ts - tb)), 0.0)
    return out


@pytest.mark.parametrize("method", METHODS, ids=IDS)
def test_per_member_boluses_match_analytic(method):
    # Each member has its own second-dose time and amount (a batched regimen); 1.5 d and 2.0 d are save times,
    # so the saved value there must be the post-dose one (right-continuous), as in ck.simulate.
    t2 = jnp.array([1.0, 1.5, 2.0])
    a2 = jnp.array([900.0, 500.0, 1200.0])
    reg = jax.vmap(lambda t, a: ck.Regimen([ck.Bolus(0.0, 1800.0, "central"), ck.Bolus(t, a, "central")]))(t2, a2)
    sol = ck.simulate_ensemble(one_cpt_models(), reg, TS, solver=method, rtol=1e-8, atol=1e-10)
    assert sol.y_array.shape == (3, 25, 1) and sol.obs_array.shape == (3, 25, 1) and sol.ts.shape == (3, 25)
    assert bool(jnp.all(sol.ok))
    for i in range(3):
        exact = one_cpt_exact(float(CLS[i]), [0.0, float(t2[i])], [1800.0, float(a2[i])], np.asarray(TS))
        assert rel_err(sol.ys.central[i], exact, floor=1e-3) < 1e-5
        assert rel_err(sol.observables.concentration[i], exact / V, floor=1e-5) < 1e-5


def test_per_member_start_times():
    # Doses before the first save time: each member starts at its own first dose (default t0), or all start at an
    # explicit t0; the saved values must follow the analytic solution from each member's own dose time.
    t_dose = jnp.array([-0.5, 0.0, -1.0])
    reg = jax.vmap(lambda t: ck.Bolus(t, 1800.0, "central"))(t_dose)
    for t0 in (None, -2.0):
        sol = ck.simulate_ensemble(one_cpt_models(), reg, TS, t0=t0, rtol=1e-8, atol=1e-10)
        assert bool(jnp.all(sol.ok))
        for i in range(3):
            exact = one_cpt_exact(float(CLS[i]), [float(t_dose[i])], [1800.0], np.asarray(TS))
            assert rel_err(sol.ys.central[i], exact, floor=1e-3) < 1e-5


@pytest.mark.parametrize("method", METHODS, ids=IDS)
def test_infusions_and_shared_regimen_agree_with_simulate(method):
    # Bolus + two infusions starting together (a zero-length segment between their starts, which must move
    # nothing) + a repeated bolus, shared by all members; compared with diffrax (ck.simulate) at a tight
    # tolerance, member by member.
    models = jax.vmap(lambda cl, q: TwoCompartmentPK(cl=cl, q=q))(
        jnp.array([100.0, 192.0, 300.0]), jnp.array([150.0, 206.4, 400.0])
    )
    reg = ck.Regimen(
        [
            ck.Bolus(0.0, 100.0, "central"),
            ck.Infusion(0.5, "central", amount=50.0, duration=0.25),
            ck.Infusion(0.5, "peripheral", rate=400.0, duration=0.5),
            ck.Bolus(1.25, 30.0, "peripheral", ii=0.5, addl=2),
        ]
    )
    sol = ck.simulate_ensemble(models, reg, TS, solver=method, rtol=1e-8, atol=1e-10)
    assert bool(jnp.all(sol.ok))
    for i in range(3):
        m = jax.tree.map(lambda x, i=i: x[i], models)
        ref = ck.simulate(m, reg, TS, rtol=1e-11, atol=1e-13, max_steps=20_000)
        assert rel_err(sol.y_array[i], ref.y_array, floor=1e-3) < 1e-5


@pytest.mark.parametrize("method", [METHODS[0], pytest.param(METHODS[1], marks=pytest.mark.slow)], ids=IDS)
def test_reference_workload_agrees_with_diffrax(method):
    # The 9-state timing workload over one year (daily saves), three members with perturbed parameters, at the
    # benchmark tolerances (rtol 1e-6, atol 1e-8) against diffrax Tsit5 at rtol 1e-10: max relative error
    # (floor 1e-6) below 2e-4, i.e. within the accuracy that tolerance buys (diffrax itself: ~1e-5).
    ts = jnp.linspace(0.0, 365.0, 366)
    base = ReferenceWorkload()
    models = jax.vmap(lambda s, k: base.replace(rho=0.9 * s, kk=0.5 * k))(
        jnp.array([1.0, 0.8, 1.2]), jnp.array([1.0, 1.3, 0.7])
    )
    sol = ck.simulate_ensemble(models, None, ts, solver=method)
    assert bool(jnp.all(sol.ok))
    for i in range(3):
        m = jax.tree.map(lambda x, i=i: x[i], models)
        ref = ck.simulate(m, None, ts, rtol=1e-10, atol=1e-12)
        assert rel_err(sol.y_array[i], ref.y_array, floor=1e-6) < 2e-4


def test_rodas5_handles_a_stiff_model_in_few_steps():
    # Two-compartment PK with a 1e6 L/d intercompartmental clearance: eigenvalues ~ -7.5e4 /d and ~ -1.6 /d.
    # Exact solution by the matrix exponential. Rodas5 resolves the fast transient and then takes large steps
    # (< 300 steps in all at rtol 1e-8), while an explicit method is stability-limited (|lambda| dt < ~3.5 gives
    # > 60,000 steps over 3 days): Tsit5 must run out of a 2,000-step budget.
    models = jax.vmap(lambda q: TwoCompartmentPK(q=q))(jnp.array([1e6, 5e5]))
    reg = ck.Bolus(0.0, 100.0, "central")
    sol = ck.simulate_ensemble(models, reg, TS, solver=ck.EnsembleRodas5(), rtol=1e-8, atol=1e-10)
    assert bool(jnp.all(sol.ok))
    assert int(jnp.max(sol.num_steps)) < 300
    for i, q in enumerate([1e6, 5e5]):
        m = TwoCompartmentPK(q=q)
        k10, k12, k21 = m.cl / m.v1, q / m.v1, q / m.v2
        a = np.array([[-(k10 + k12), k21], [k12, -k21]])
        exact = np.stack([scipy.linalg.expm(a * float(t)) @ np.array([100.0, 0.0]) for t in TS])
        assert rel_err(sol.y_array[i], exact, floor=1e-3) < 1e-5
    explicit = ck.simulate_ensemble(
        models, reg, TS, solver=ck.EnsembleTsit5(), rtol=1e-8, atol=1e-10, max_steps=2000, throw=False
    )
    assert not bool(jnp.any(explicit.ok))


@pytest.mark.parametrize("method", METHODS, ids=IDS)
def test_member_queue_gives_identical_results(method):
    # 7 members with their own dose times/amounts (some at save times, one before ts[0]) integrated 2 or 3 at a
    # time (the others wait in the queue and take over finished slots) must give the same solution, step counts
    # and status as all 7 at once: each member's steps do not depend on its neighbours (agreement to 1e-12).
    cls = jnp.array([60.0, 130.0, 250.0, 90.0, 400.0, 75.0, 180.0])
    t2 = jnp.array([1.0, 1.5, 2.0, 0.3, 2.9, 1.25, 0.75])
    a2 = jnp.array([900.0, 500.0, 1200.0, 100.0, 50.0, 700.0, 300.0])
    reg = jax.vmap(lambda t, a: ck.Regimen([ck.Bolus(-0.25, 1800.0, "central"), ck.Bolus(t, a, "central")]))(t2, a2)
    models = one_cpt_models(cls)
    full = ck.simulate_ensemble(models, reg, TS, solver=with_slots(method, 7), rtol=1e-8, atol=1e-10)
    for slots in (2, 3):
        sol = ck.simulate_ensemble(models, reg, TS, solver=with_slots(method, slots), rtol=1e-8, atol=1e-10)
        assert bool(jnp.all(sol.ok))
        assert rel_err(sol.y_array, full.y_array, floor=1e-6) < 1e-12
        assert np.array_equal(np.asarray(sol.num_steps), np.asarray(full.num_steps))
    for i in range(7):
        exact = one_cpt_exact(float(cls[i]), [-0.25, float(t2[i])], [1800.0, float(a2[i])], np.asarray(TS))
        assert rel_err(full.ys.central[i], exact, floor=1e-3) < 1e-5


@pytest.mark.slow  # ~17 s of compiles for lane widths
def test_cpu_lane_counts_avoid_aliasing_widths(monkeypatch):
    # On CPU, lane counts that are multiples of `_CPU_LANE_ALIAS` are moved (fewer slots with a queue, padded members
    # without one). Patched to 4 / 1 here so that small batches take both routes: 8 members without a queue run on
    # 9 lanes (one padded copy), `slots=4` runs 3 lanes. Solutions, step counts and gradients must equal a run whose
    # lane count needs no change (slots=3 gives 3 lanes either way) to 1e-12 / 1e-10.
    if jax.default_backend() != "cpu":
        pytest.skip("the lane rule applies on CPU only")
    lanes = []
    inner = _loop._integrate_lanes

    def spy(model, *args):
        lanes.append(args[-3])  # the lane count `_integrate` chose
        return inner(model, *args)

    monkeypatch.setattr(_loop, "_integrate_lanes", spy)
    monkeypatch.setattr(_loop, "_CPU_LANE_ALIAS", 4)
    monkeypatch.setattr(_loop, "_CPU_LANE_PAD", 1)
    cls = jnp.array([60.0, 130.0, 250.0, 90.0, 400.0, 75.0, 180.0, 110.0])
    t2 = jnp.linspace(0.2, 2.6, 8)
    ts = jnp.linspace(0.0, 3.0, 17)  # a shape used by no other test: traced afresh under the patch

    def solve(c, slots):
        reg = jax.vmap(lambda t: ck.Regimen([ck.Bolus(0.0, 1000.0, "central"), ck.Bolus(t, 400.0, "central")]))(t2)
        return ck.simulate_ensemble(
            one_cpt_models(c), reg, ts, solver=ck.EnsembleTsit5(slots=slots), rtol=1e-9, atol=1e-11
        )

    ref = solve(cls, 3)
    assert lanes == [3]
    for slots, expected_lanes in ((None, 9), (4, 3)):
        sol = solve(cls, slots)
        assert lanes[-1] == expected_lanes
        assert sol.y_array.shape == ref.y_array.shape
        assert rel_err(sol.y_array, ref.y_array, floor=1e-6) < 1e-12
        assert np.array_equal(np.asarray(sol.num_steps), np.asarray(ref.num_steps))
    loss = lambda c, slots: jnp.sum(jnp.log(solve(c, slots).observables.concentration))
    g_ref = jax.grad(lambda c: loss(c, 3))(cls)
    g_pad = jax.grad(lambda c: loss(c, None))(cls)
    assert lanes[-1] == 9
    assert float(jnp.max(jnp.abs(g_pad - g_ref) / jnp.abs(g_ref))) < 1e-10


def test_invalid_traced_parameters_are_reported_per_member():
    # Under jit the parameters are traced: a member with a negative clearance is not integrated and reported as
    # invalid_parameters (outputs NaN) while the others are exact; throw=True turns it into an error.
    reg = ck.Bolus(0.0, 1800.0, "central")
    run = jax.jit(
        lambda cls, throw: ck.simulate_ensemble(
            one_cpt_models(cls), reg, TS, solver=ck.EnsembleTsit5(slots=2), throw=throw
        ),
        static_argnums=1,
    )
    cls = jnp.array([60.0, -5.0, 130.0])
    sol = run(cls, False)
    assert np.asarray(sol.result == ck.RESULTS.invalid_parameters).tolist() == [False, True, False]
    assert bool(jnp.all(jnp.isnan(sol.y_array[1])))
    for i in (0, 2):
        exact = one_cpt_exact(float(cls[i]), [0.0], [1800.0], np.asarray(TS))
        assert rel_err(sol.ys.central[i], exact, floor=1e-3) < 1e-5
    with pytest.raises(Exception, match="outside their declared"):
        run(cls, True).y_array.block_until_ready()


_SHARDED = """
import json, os
os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=3"
import jax
jax.config.update("jax_enable_x64", True)
import jax.numpy as jnp, numpy as np
import carkinetics as ck
from carkinetics.models import OneCompartmentPK
models = jax.vmap(lambda cl: OneCompartmentPK(cl=cl, v=46.5))(jnp.linspace(50.0, 300.0, 8))
reg = jax.vmap(lambda t: ck.Bolus(t, 1800.0, "central"))(jnp.linspace(0.0, 1.5, 8))
ts = jnp.linspace(0.0, 3.0, 25)
one = ck.simulate_ensemble(models, reg, ts, solver=ck.EnsembleTsit5(slots=2))
run = jax.jit(lambda m: ck.simulate_ensemble(m, reg, ts, solver=ck.EnsembleTsit5(slots=2), devices="all",
                                             throw=False))
sharded = run(models)
bad = run(jax.tree.map(lambda x: x.at[5].set(-1.0) if x.shape == (8,) and float(x[0]) == 50.0 else x, models))
def loss(cl, devices):  # reverse mode through the queued solve's custom VJP, inside shard_map when sharded
    m = jax.vmap(lambda c: OneCompartmentPK(cl=c, v=46.5))(cl)
    sol = ck.simulate_ensemble(m, reg, ts, solver=ck.EnsembleTsit5(slots=2), devices=devices)
    return jnp.sum(jnp.log(sol.observables.concentration + 1.0))
cls = jnp.linspace(50.0, 300.0, 8)
g_one, g_sharded = jax.grad(loss)(cls, None), jax.jit(jax.grad(loss), static_argnums=1)(cls, "all")
print(json.dumps({"devices": len(jax.devices()), "shape": list(sharded.y_array.shape),
                  "diff": float(jnp.max(jnp.abs(sharded.y_array - one.y_array))),
                  "steps_equal": bool(jnp.all(sharded.num_steps == one.num_steps)),
                  "invalid": np.asarray(bad.result == ck.RESULTS.invalid_parameters).tolist(),
                  "grad_diff": float(jnp.max(jnp.abs(g_sharded - g_one)) / jnp.max(jnp.abs(g_one))),
                  "grad_nonzero": bool(jnp.all(g_one != 0))}))
"""


def test_sharded_over_host_devices_matches_one_device():
    # 8 members on 3 forced host devices (padded to 9, 2 slots per device, members queued): identical results,
    # step counts and reverse-mode gradients to one device, per-member invalid status preserved (fresh process: the
    # device count is fixed at jax start-up).
    import json
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", _SHARDED], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    res = json.loads(out.stdout.strip().splitlines()[-1])
    assert res["devices"] == 3 and res["shape"] == [8, 25, 1]
    assert res["diff"] <= 1e-9 and res["steps_equal"]
    assert res["invalid"] == [False] * 5 + [True] + [False] * 2
    # reverse mode through the sharded, queued solve equals one device's (1e-9 of the largest component)
    assert res["grad_diff"] <= 1e-9 and res["grad_nonzero"]


_SHARDED_SLE = """
import json, os
os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
import jax
jax.config.update("jax_enable_x64", True)
import jax.numpy as jnp, numpy as np
import carkinetics as ck
from carkinetics.models.sle import erlangen_regimen, load_preset
base = load_preset("human")
reg = erlangen_regimen(base)
ts = jnp.asarray(-4.5 + np.arange(60.0))
rho = float(base.get("car.rho")) * np.exp(np.random.default_rng(0).normal(0.0, 0.2, 40))
models = jax.vmap(lambda r: base.replace({"car.rho": r}))(jnp.asarray(rho))
run = lambda devices: ck.simulate_ensemble(models, reg, ts, solver=ck.EnsembleRodas5(), devices=devices)
one, two = run(None), run("all")
scale = np.max(np.abs(np.asarray(one.y_array)), axis=(0, 1)) + 1e-30
print(json.dumps({"ok": bool(jnp.all(two.ok)), "diff": float(np.max(np.abs(np.asarray(two.y_array - one.y_array))
                                                                / scale))}))
"""


@pytest.mark.slow
def test_sharded_rodas5_lapack_does_not_deadlock():
    # Regression: with 29+ states Rodas5 factorises with LAPACK; XLA's parallel batched LU deadlocked when two host
    # devices called it at once (20 members each). Now chunked: completes, and agrees with one device to the
    # solver tolerance (1e-4 of each state's maximum; the SLE model amplifies round-off between compilations).
    import json
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", _SHARDED_SLE], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    res = json.loads(out.stdout.strip().splitlines()[-1])
    assert res["ok"] and res["diff"] < 1e-4


def test_rodas5_linear_solvers_agree():
    # The LAPACK factorisation (default on CPU from 16 states) and the batch-vectorised elimination are the same
    # LU with partial pivoting: solutions agree to round-off (1e-10), and so do reverse-mode gradients through both.
    reg = ck.Regimen([ck.Bolus(0.0, 100.0, "central"), ck.Infusion(0.5, "peripheral", rate=400.0, duration=0.5)])

    def total(scale, kind):  # d/d(scale of every clearance) of the summed amounts: nonzero
        m = jax.vmap(lambda cl, q: TwoCompartmentPK(cl=cl * scale, q=q))(
            jnp.array([100.0, 192.0, 300.0]), jnp.array([150.0, 206.4, 400.0])
        )
        sol = ck.simulate_ensemble(m, reg, TS, solver=ck.EnsembleRodas5(linear_solver=kind), rtol=1e-8, atol=1e-10)
        return jnp.sum(sol.y_array), sol

    (_, lap), (_, vec) = total(1.0, "lapack"), total(1.0, "vectorized")
    assert bool(jnp.all(lap.ok)) and rel_err(lap.y_array, vec.y_array, floor=1e-6) < 1e-10
    g_lap = jax.grad(lambda s: total(s, "lapack")[0])(1.0)
    g_vec = jax.grad(lambda s: total(s, "vectorized")[0])(1.0)
    assert abs(float(g_vec)) > 1.0 and abs(float(g_lap) - float(g_vec)) <= 1e-8 * abs(float(g_vec))
    with pytest.raises(ValueError, match="linear_solver"):
        ck.EnsembleRodas5(linear_solver="qr")


@pytest.mark.parametrize("slots", [None, 1], ids=["all-slots", "queue"])
def test_failure_is_reported_per_member(slots):
    # Member 1 is very stiff (k = 2e5 /d) for an explicit method, so with max_steps=300 it fails with
    # max_steps_reached, while members 0 and 2 finish correctly; the failed member's unsaved outputs are NaN.
    cls = jnp.array([60.0, V * 2e5, 130.0])
    models = one_cpt_models(cls)
    reg = ck.Bolus(0.0, 1800.0, "central")
    sol = ck.simulate_ensemble(models, reg, TS, solver=ck.EnsembleTsit5(slots=slots), max_steps=300, throw=False)
    assert np.asarray(sol.ok).tolist() == [True, False, True]
    assert np.asarray(sol.result == ck.RESULTS.max_steps_reached).tolist() == [False, True, False]
    assert int(sol.num_steps[1]) == 300
    assert bool(jnp.isnan(sol.y_array[1, -1, 0]))
    for i in (0, 2):
        exact = one_cpt_exact(float(cls[i]), [0.0], [1800.0], np.asarray(TS))
        assert rel_err(sol.ys.central[i], exact, floor=1e-3) < 1e-4
    with pytest.raises(Exception, match="1 of 3 members failed; member 1: the solver stopped"):
        failing = ck.simulate_ensemble(models, reg, TS, solver=ck.EnsembleTsit5(), max_steps=300, throw=True)
        failing.y_array.block_until_ready()


def _total_concentration(cl, adjoint, method, slots=None):
    models = one_cpt_models(cl * jnp.array([0.5, 1.0, 2.0]))
    sol = ck.simulate_ensemble(
        models,
        ck.Bolus(0.0, 1800.0, "central"),
        TS,
        solver=with_slots(method, slots),
        adjoint=adjoint,
        rtol=1e-10,
        atol=1e-12,
    )
    return jnp.sum(sol.observables.concentration)


def _total_concentration_derivative(cl):
    # d/dcl of sum_i sum_t (D/V) exp(-s_i cl t / V) = sum_i sum_t -(s_i t / V) (D/V) exp(-s_i cl t / V)
    t = np.asarray(TS)
    return sum(float(np.sum(-(s * t / V) * 1800.0 / V * np.exp(-s * cl * t / V))) for s in (0.5, 1.0, 2.0))


@pytest.mark.parametrize("slots", [None, 2], ids=["all-slots", "queue"])
@pytest.mark.parametrize("method", METHODS, ids=IDS)
def test_forward_mode_derivative(method, slots):
    # jax.jvp through the forward-mode loop vs the analytic derivative and a central finite difference; with
    # slots=2 the third member waits in the queue and takes over a finished slot (parameters gathered in the loop).
    cl = 130.0
    _, jvp = jax.jvp(lambda c: _total_concentration(c, diffrax.ForwardMode(), method, slots), (cl,), (1.0,))
    exact = _total_concentration_derivative(cl)
    assert abs(float(jvp) - exact) / abs(exact) < 1e-6
    h = 1e-3
    fd = (
        _total_concentration(cl + h, diffrax.ForwardMode(), method)
        - _total_concentration(cl - h, diffrax.ForwardMode(), method)
    ) / (2 * h)
    assert abs(float(jvp) - float(fd)) / abs(exact) < 1e-5


@pytest.mark.parametrize("slots", [None, 2], ids=["all-slots", "queue"])
@pytest.mark.parametrize("method", [METHODS[0], pytest.param(METHODS[1], marks=pytest.mark.slow)], ids=IDS)
def test_reverse_mode_gradient(method, slots):
    # jax.grad through the checkpointed loop (default adjoint) vs the analytic derivative, with and without the
    # member queue (slots=2 for 3 members).
    cl = 130.0
    g = jax.grad(lambda c: _total_concentration(c, None, method, slots))(cl)
    exact = _total_concentration_derivative(cl)
    assert abs(float(g) - exact) / abs(exact) < 1e-6


@pytest.mark.parametrize(
    "reverse_slots, keep_max",
    [
        (4096, 4096),
        pytest.param(3, 4096, marks=pytest.mark.slow),
        pytest.param(3, 4, marks=pytest.mark.slow),
    ],
    ids=["one-chunk", "chunks-kept", "chunks-recomputed"],
)
def test_queued_reverse_mode_matches_forward_mode(monkeypatch, reverse_slots, keep_max):
    # With a member queue (slots=2 for 5 members) reverse mode differentiates a solve without a queue (custom VJP):
    # all members at once, or (at most 3 members at once here) two chunks of 3 (one padding member) whose VJPs are
    # kept, or (more than 4 members) whose backward pass solves each chunk again. The gradient with respect to
    # per-member clearances and per-member dose amounts must equal forward mode (jacfwd) and the no-queue gradient.
    monkeypatch.setattr(_autodiff, "_REVERSE_SLOTS", reverse_slots)
    monkeypatch.setattr(_autodiff, "_REVERSE_KEEP_MAX", keep_max)
    cls = jnp.array([60.0, 90.0, 130.0, 180.0, 250.0])
    ts = jnp.linspace(0.0, 3.0, 13 + reverse_slots % 7 + keep_max % 5)  # a distinct shape per case: no compiled reuse

    def loss(theta, slots, adjoint=None):
        cl, amount = theta[:5], theta[5:]
        reg = jax.vmap(lambda a: ck.Regimen([ck.Bolus(0.0, a, "central"), ck.Bolus(1.3, 0.5 * a, "central")]))(amount)
        sol = ck.simulate_ensemble(
            one_cpt_models(cl), reg, ts, solver=ck.EnsembleTsit5(slots=slots), rtol=1e-10, atol=1e-12, adjoint=adjoint
        )
        w = jnp.arange(1.0, 6.0)[:, None]
        return jnp.sum(w * jnp.log(sol.observables.concentration))

    theta = jnp.concatenate([cls, jnp.array([1800.0, 1500.0, 1200.0, 900.0, 600.0])])
    # Under differentiation the primal comes from the re-solve that is differentiated: the same value as the queue's.
    v_queue, g_queue = jax.value_and_grad(lambda th: loss(th, 2))(theta)
    assert abs(float(v_queue) - float(loss(theta, 2))) < 1e-12 * abs(float(v_queue))
    g_all = jax.grad(lambda th: loss(th, None))(theta)
    g_fwd = jax.jacfwd(lambda th: loss(th, 2, diffrax.ForwardMode()))(theta)
    scale = float(jnp.max(jnp.abs(g_fwd)))
    assert float(jnp.max(jnp.abs(g_queue - g_fwd))) / scale < 1e-8
    assert float(jnp.max(jnp.abs(g_queue - g_all))) / scale < 1e-8
    assert float(jnp.min(jnp.abs(g_queue))) > 0  # every member's parameters reach the loss


def test_derivative_chunks_fit_the_cpu_cache():
    # On CPU a differentiated solve runs in chunks whose step touches about 1 MiB: the SLE model (38 states) with
    # Rodas5 carries 38 * 38 + 380 floats per member (14,592 bytes in float64: 71 members per MiB), so 1000 members
    # go in 15 chunks of 67; the 9-state reference workload with Tsit5 (720 bytes) stays in one chunk, and float32
    # halves the bytes per member. Accelerators use one chunk of up to 4096 members.
    from carkinetics.models.sle import load_preset

    sle, ref = load_preset("human"), ReferenceWorkload()
    if jax.default_backend() == "cpu":
        assert _autodiff._chunking(1000, ck.EnsembleRodas5(), sle, jnp.float64) == (15, 67)
        assert _autodiff._chunking(100, ck.EnsembleRodas5(), sle, jnp.float64) == (2, 50)
        assert _autodiff._chunking(1000, ck.EnsembleRodas5(), sle, jnp.float32) == (7, 143)
        assert _autodiff._chunking(1000, ck.EnsembleTsit5(), ref, jnp.float64) == (1, 1000)
        assert _autodiff._chunking(5000, ck.EnsembleTsit5(), ref, jnp.float64) == (4, 1250)
    else:
        assert _autodiff._chunking(1000, ck.EnsembleRodas5(), sle, jnp.float64) == (1, 1000)
        assert _autodiff._chunking(10000, ck.EnsembleRodas5(), sle, jnp.float64) == (3, 3334)


@pytest.mark.slow
def test_reverse_mode_gradient_through_a_parameter_dependent_breakpoint():
    # Stein 2019's vector field switches at t = tmax (a parameter, declared as a breakpoint): the segment end moves
    # with tmax, so the steps after it shift. The reverse-mode gradient of a loss on the observables (all six
    # log-parameters) must match central finite differences and ck.simulate's gradient (diffrax) to 1e-4 of the
    # largest component (rtol 1e-6 solves). Holding every step size fixed in reverse mode gave ~500x the true
    # d/d tmax here; only the initial step size is not differentiated.
    from carkinetics.models.stein_2019 import Stein2019CK

    base = Stein2019CK()
    names = ["foldx", "tmax", "cmax", "alpha", "fb", "beta"]
    ts = jnp.linspace(0.0, 27.0, 28)

    def values(z):
        return {n: float(getattr(base, n)) * jnp.exp(z[i]) for i, n in enumerate(names)}

    def loss_ens(z):
        m = jax.vmap(lambda d: base.replace(d))({k: v[None] for k, v in values(z).items()})
        sol = ck.simulate_ensemble(m, None, ts, rtol=1e-6, atol=1e-9)
        return jnp.sum(jnp.log(jnp.abs(sol.obs_array[0]) + 1e-3))

    def loss_sim(z):
        sol = ck.simulate(base.replace(values(z)), None, ts, rtol=1e-6, atol=1e-9)
        return jnp.sum(jnp.log(jnp.abs(sol.obs_array) + 1e-3))

    z = jnp.array([0.1, -0.2, 0.05, 0.3, -0.1, 0.2])
    g = np.asarray(jax.grad(loss_ens)(z))
    h = 1e-6
    f = jax.jit(loss_ens)
    fd = np.array([(float(f(z + h * e)) - float(f(z - h * e))) / (2 * h) for e in np.eye(6)])
    g_sim = np.asarray(jax.grad(loss_sim)(z))
    scale = np.max(np.abs(fd))
    assert np.max(np.abs(g - fd)) / scale < 1e-4, (g, fd)
    assert np.max(np.abs(g - g_sim)) / scale < 1e-4, (g, g_sim)
    assert abs(g[1] - fd[1]) < 1e-3 * abs(fd[1]) + 1e-4 * scale  # d/d log tmax itself


def test_no_retrace_on_new_values():
    # New parameter values, dose amounts/times and save-time values (same shapes) must not recompile.
    cache = _api._simulate_ensemble._cached

    def run(scale, amount, t_second):
        reg = ck.Regimen([ck.Bolus(0.0, amount, "central"), ck.Bolus(t_second, 100.0, "central")])
        sol = ck.simulate_ensemble(one_cpt_models(CLS * scale), reg, TS * scale, solver=ck.EnsembleTsit5())
        return sol.y_array.block_until_ready()

    run(1.0, 1800.0, 1.0)
    size = cache._cache_size()
    run(1.1, 900.0, 1.7)
    assert cache._cache_size() == size


def test_no_recompile_on_new_tolerances():
    # rtol/atol are traced: a tolerance change reuses the compiled solve (and still changes the steps taken), in the
    # ensemble solver and in `ck.simulate`.
    models = one_cpt_models(CLS)
    reg = ck.Regimen([ck.Bolus(0.0, 1800.0, "central")])
    ens_cache, sim_cache = _api._simulate_ensemble._cached, _core_simulate.diffrax_solve._cached
    steps = []
    for i, tol in enumerate((1e-4, 1e-9)):
        sol = ck.simulate_ensemble(models, reg, TS, solver=ck.EnsembleTsit5(), rtol=tol, atol=tol * 1e-2)
        one = ck.simulate(OneCompartmentPK(cl=float(CLS[0])), reg, TS, rtol=tol, atol=tol * 1e-2)
        jax.block_until_ready((sol.y_array, one.y_array))
        steps.append((int(sol.num_steps[0]), int(one.num_steps)))
        if i == 0:
            sizes = (ens_cache._cache_size(), sim_cache._cache_size())
    assert (ens_cache._cache_size(), sim_cache._cache_size()) == sizes
    assert steps[1][0] > 2 * steps[0][0] and steps[1][1] > 2 * steps[0][1], steps


@pytest.mark.parametrize("size", [6, 20, 40])
def test_batched_lu_solve(size):
    # All code paths (6: unrolled factor and solves; 20: unrolled factor, looped solves; 40: both looped) against
    # numpy; pivoting is required (random matrices have no dominant diagonal).
    rng = np.random.default_rng(size)
    a = rng.normal(size=(size, size, 5))
    b = rng.normal(size=(size, 5))
    x = jax.jit(lambda a, b: _linalg.batched_lu_solve(*_linalg.batched_lu_factor(a), b))(jnp.asarray(a), jnp.asarray(b))
    ref = np.stack([np.linalg.solve(a[:, :, i], b[:, i]) for i in range(5)], axis=1)
    assert np.max(np.abs(np.asarray(x) - ref)) < 1e-10 * np.max(np.abs(ref))
    # The factors themselves: row i of P a (row perm[i] of a) equals row i of L U, and |L| <= 1 (partial pivoting).
    lu, perm = (np.asarray(v) for v in jax.jit(_linalg.batched_lu_factor)(jnp.asarray(a)))
    for i in range(5):
        low = np.tril(lu[:, :, i], -1) + np.eye(size)
        assert np.max(np.abs(low @ np.triu(lu[:, :, i]) - a[perm[:, i], :, i])) < 1e-12 * np.max(np.abs(a))
        assert np.max(np.abs(low)) <= 1.0 + 1e-15


def test_input_validation():
    single = OneCompartmentPK()
    with pytest.raises(ValueError, match="leading batch axis"):
        ck.simulate_ensemble(single, None, TS)
    models = one_cpt_models()
    with pytest.raises(ValueError, match="`solver` must be a diffrax solver"):
        ck.simulate_ensemble(models, None, TS, solver="rodas5")
    with pytest.raises(ValueError, match="`devices` applies to ensemble methods only"):
        ck.simulate_ensemble(models, None, TS, solver=diffrax.Tsit5(), devices=1)
    with pytest.raises(ValueError, match="`slots` of EnsembleTsit5 must be a positive int"):
        ck.EnsembleTsit5(slots=0)
    bad_reg = jax.vmap(lambda a: ck.Bolus(0.0, a, "central"))(jnp.ones(5))
    with pytest.raises(ValueError, match="leading batch size N = 3"):
        ck.simulate_ensemble(models, bad_reg, TS)
    with pytest.raises(ValueError, match="Unknown state"):
        ck.simulate_ensemble(models, ck.Bolus(0.0, 1.0, "gut"), TS)
    with pytest.raises(ValueError, match="`rtol` must be a positive"):
        ck.simulate_ensemble(models, None, TS, rtol=-1.0)
    with pytest.raises(ValueError, match="`adjoint` must be"):
        ck.simulate_ensemble(models, None, TS, adjoint=diffrax.BacksolveAdjoint())
