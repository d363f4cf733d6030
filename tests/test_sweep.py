"""`sweep` / `sweep_model`: chunked = unchunked, masking of failed members, checkpoint resume (and refusal of another
run's or a corrupt checkpoint), no retrace, regimen batches on both engines, sharded (4 forced CPU devices, in a
subprocess) = single device."""

import json
import os
import subprocess
import sys
import textwrap

import jax.numpy as jnp
import numpy as np
import pytest

import carkinetics as ck
from carkinetics.models import OneCompartmentPK

TS = jnp.linspace(0.0, 2.0, 21)
DOSE = ck.Regimen([ck.Bolus(0.0, 100.0, "central")])


def _member(x):
    return {"a": jnp.sin(x["p"]) * x["q"], "b": jnp.stack([x["p"], x["q"] ** 2])}


def test_generic_chunked_equals_unchunked():
    rng = np.random.default_rng(0)
    inputs = {"p": rng.normal(size=23), "q": rng.normal(size=23)}
    full = ck.sweep(_member, inputs, chunk_size=23, progress=False)
    chunked = ck.sweep(_member, inputs, chunk_size=5, progress=False)  # 5 chunks, the last padded
    assert chunked.n_chunks == 5 and full.n_chunks == 1
    np.testing.assert_allclose(chunked.outputs["a"], full.outputs["a"], rtol=0, atol=1e-15)
    np.testing.assert_allclose(chunked.outputs["b"], full.outputs["b"], rtol=0, atol=1e-15)
    np.testing.assert_allclose(full.outputs["a"], np.sin(inputs["p"]) * inputs["q"], rtol=1e-14)
    assert chunked.outputs["b"].shape == (23, 2) and chunked.n_failed == 0 and chunked.ok.all()


def test_sweep_model_values_and_chunking():
    cl = np.linspace(40.0, 200.0, 11)
    v = OneCompartmentPK().v
    res = ck.sweep_model(OneCompartmentPK(), DOSE, TS, {"cl": cl}, chunk_size=4, progress=False)
    one = ck.sweep_model(OneCompartmentPK(), DOSE, TS, {"cl": cl}, chunk_size=11, progress=False)
    out = res.outputs
    # Analytic: C(t) = D/V exp(-CL/V t); Cmax at t = 0 (right-continuous bolus); solver rtol 1e-6.
    np.testing.assert_allclose(out["concentration_cmax"], 100.0 / v, rtol=1e-12)
    np.testing.assert_allclose(out["concentration_last"], 100.0 / v * np.exp(-cl / v * 2.0), rtol=1e-5)
    for k in out:
        np.testing.assert_allclose(out[k], one.outputs[k], rtol=1e-13, atol=0)
    assert res.n_failed == 0 and res.n_chunks == 3


def test_failed_members_are_masked_and_counted():
    # Large CL makes the model stiff: Tsit5 needs ~1e3 steps, more than max_steps=60, so those members fail.
    cl = np.array([50.0, 1e5, 60.0, 2e5, 70.0])
    res = ck.sweep_model(OneCompartmentPK(), DOSE, TS, {"cl": cl}, chunk_size=4, progress=False, max_steps=60)
    np.testing.assert_array_equal(res.ok, [True, False, True, False, True])
    assert res.n_failed == 2
    auc = res.outputs["concentration_auc"]
    assert np.all(np.isnan(auc[~res.ok])) and np.all(np.isfinite(auc[res.ok]))


def test_ensemble_engine_matches_vmap():
    cl = np.linspace(40.0, 200.0, 7)
    regs = [ck.Regimen([ck.Bolus(0.0, a, "central")]) for a in np.linspace(50.0, 110.0, 7)]
    args = (OneCompartmentPK(), None, TS, {"cl": cl})
    ref = ck.sweep_model(*args, regimens=regs, chunk_size=4, progress=False, engine="vmap")
    ens = ck.sweep_model(*args, regimens=regs, chunk_size=4, progress=False)  # default: the batched engine
    assert ens.engine == "ensemble" and ref.engine == "vmap"
    assert ens.n_failed == 0 and ref.n_failed == 0
    # Per-member regimens: Cmax = dose_i / V (right-continuous bolus at t = 0).
    np.testing.assert_allclose(
        ref.outputs["concentration_cmax"], np.linspace(50.0, 110.0, 7) / OneCompartmentPK().v, rtol=1e-12
    )
    for k in ("concentration_cmax", "concentration_auc", "concentration_last"):
        np.testing.assert_allclose(ens.outputs[k], ref.outputs[k], rtol=1e-6)
    with pytest.raises(ValueError, match="`engine` = 'vmap'"):
        ck.sweep_model(*args, regimens=regs, progress=False, engine="vmap", solver=ck.EnsembleTsit5())


def test_resume_after_interruption(tmp_path):
    cl = np.linspace(40.0, 200.0, 10)
    # The generic `sweep` below runs the batch function that `sweep_model(engine="vmap")` runs.
    ref = ck.sweep_model(OneCompartmentPK(), DOSE, TS, {"cl": cl}, chunk_size=4, progress=False, engine="vmap")

    class Interrupt(Exception):
        pass

    done = []

    def stop_after_two(i, n):
        done.append(i)
        if len(done) == 2:
            raise Interrupt

    from carkinetics._analysis._sweep import sweep  # the generic entry with on_chunk

    def batch_function(template):
        return ck.ParameterBatch(ck.Experiment(DOSE, TS, ck.observable_metrics), template, ("cl",), "vmap")

    fn = batch_function(OneCompartmentPK())
    inputs = {"cl": cl}
    with pytest.raises(Interrupt):
        sweep(fn, inputs, chunk_size=4, checkpoint=tmp_path, progress=False, has_ok=True, on_chunk=stop_after_two)
    assert sorted(p.name for p in tmp_path.glob("chunk_*.npz")) == ["chunk_000000.npz", "chunk_000001.npz"]
    done.clear()
    res = sweep(
        fn, inputs, chunk_size=4, checkpoint=tmp_path, progress=False, has_ok=True, on_chunk=lambda i, n: done.append(i)
    )
    assert res.n_resumed_chunks == 2 and done == [2]  # only the missing chunk was computed
    for k in ref.outputs:
        np.testing.assert_array_equal(res.outputs[k], ref.outputs[k])
    # A third run computes nothing; a different sweep refuses the directory.
    done.clear()
    again = sweep(
        fn, inputs, chunk_size=4, checkpoint=tmp_path, progress=False, has_ok=True, on_chunk=lambda i, n: done.append(i)
    )
    assert done == [] and again.n_resumed_chunks == 3
    np.testing.assert_array_equal(again.outputs["concentration_auc"], ref.outputs["concentration_auc"])
    with pytest.raises(ValueError, match=r"different run: it differs in \['inputs_sha256'\]"):
        sweep(fn, {"cl": cl * 1.01}, chunk_size=4, checkpoint=tmp_path, progress=False, has_ok=True)
    # The manifest is keyed on the member function too: another template (the same inputs) is refused.
    other = batch_function(OneCompartmentPK(v=30.0))
    with pytest.raises(ValueError, match=r"different run: it differs in \['function_sha256'\]"):
        sweep(other, inputs, chunk_size=4, checkpoint=tmp_path, progress=False, has_ok=True)
    # Corrupt files raise ValueError naming the file, never results.
    chunk = tmp_path / "chunk_000001.npz"
    chunk.write_bytes(chunk.read_bytes()[:50])
    with pytest.raises(ValueError, match=r"chunk_000001\.npz"):
        sweep(fn, inputs, chunk_size=4, checkpoint=tmp_path, progress=False, has_ok=True)
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"manifest\.json"):
        sweep(fn, inputs, chunk_size=4, checkpoint=tmp_path, progress=False, has_ok=True)


def test_no_retrace_on_new_values():
    traces = []

    def metrics(sol):
        traces.append(1)  # runs only while tracing
        return {"auc": ck.metrics.auc(sol.ts, sol.observables.concentration)}

    kw = dict(metrics=metrics, chunk_size=4, progress=False)
    ck.sweep_model(OneCompartmentPK(), DOSE, TS, {"cl": np.linspace(50.0, 100.0, 8)}, **kw)
    n_first = len(traces)
    res = ck.sweep_model(
        OneCompartmentPK(v=30.0),
        ck.Regimen([ck.Bolus(0.0, 7.0, "central")]),
        TS,
        {"cl": np.linspace(20.0, 30.0, 8)},
        **kw,
    )
    assert n_first >= 1 and len(traces) == n_first
    assert res.outputs["auc"][0] == pytest.approx(7.0 / 30.0 * 30.0 / 20.0 * (1 - np.exp(-20.0 / 30.0 * 2.0)), rel=1e-3)


def test_validation_errors():
    with pytest.raises(ValueError, match="Unknown parameter"):
        ck.sweep_model(OneCompartmentPK(), DOSE, TS, {"k": np.ones(3)}, progress=False)
    with pytest.raises(ValueError, match="member 1"):
        ck.sweep_model(OneCompartmentPK(), DOSE, TS, {"cl": np.array([1.0, -1.0])}, progress=False)
    with pytest.raises(ValueError, match="same number"):
        ck.sweep_model(OneCompartmentPK(), DOSE, TS, {"cl": np.ones(3), "v": np.ones(4)}, progress=False)
    with pytest.raises(ValueError, match="chunk_size"):
        ck.sweep(_member, {"p": np.ones(3), "q": np.ones(3)}, chunk_size=0)
    with pytest.raises(ValueError, match="same leading"):
        ck.sweep(_member, {"p": np.ones(3), "q": np.ones(4)})


_SHARDED = textwrap.dedent(
    """
    import json, os, sys
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
    import jax
    jax.config.update("jax_enable_x64", True)
    import numpy as np, jax.numpy as jnp
    import carkinetics as ck
    from carkinetics.models import TwoCompartmentPK
    cl = np.linspace(100.0, 300.0, 13)
    q = np.linspace(150.0, 250.0, 13)[::-1]
    args = (TwoCompartmentPK(), ck.Regimen([ck.Bolus(0.0, 45.0, "central")]), jnp.linspace(0.0, 3.0, 31),
            {"cl": cl, "q": q})
    single = ck.sweep_model(*args, chunk_size=8, progress=False)
    shard = ck.sweep_model(*args, chunk_size=8, progress=False, devices="all")
    rel = lambda a, b: max(float(np.max(np.abs(a.outputs[k] - b.outputs[k]) / np.abs(b.outputs[k])))
                           for k in ("concentration_cmax", "concentration_auc", "concentration_last"))
    diff = rel(shard, single)
    ens_diff = ens_vs_vmap = ens_failed = None
    if sys.argv[-1] == "ensemble":
        ens = ck.sweep_model(*args, chunk_size=8, progress=False, devices="all", engine="ensemble")
        ens1 = ck.sweep_model(*args, chunk_size=8, progress=False, engine="ensemble")
        vm = ck.sweep_model(*args, chunk_size=8, progress=False, devices="all", engine="vmap")
        ens_diff, ens_vs_vmap, ens_failed = rel(ens, ens1), rel(ens, vm), ens.n_failed + vm.n_failed
    print(json.dumps({"n_devices": shard.n_devices, "single_devices": single.n_devices, "max_rel_diff": diff,
                      "ens_diff": ens_diff, "ens_vs_vmap": ens_vs_vmap, "ens_failed": ens_failed,
                      "chunk_size": shard.chunk_size, "failed": shard.n_failed,
                      "device_kinds": sorted({d.platform for d in jax.devices()})}))
    """
)


def _run_sharded(*extra):
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    out = subprocess.run([sys.executable, "-c", _SHARDED, *extra], capture_output=True, text=True, env=env, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_sharded_equals_single_device():
    res = _run_sharded()
    assert res["n_devices"] == 4 and res["single_devices"] == 1 and res["chunk_size"] == 8
    assert res["failed"] == 0
    assert res["max_rel_diff"] <= 1e-12


@pytest.mark.slow
def test_sharded_ensemble_engine():
    res = _run_sharded("ensemble")
    # The batched ensemble solver sharded over 4 devices equals itself on one device, and the (sharded) vmap engine
    # to the solver tolerance.
    assert res["n_devices"] == 4 and res["max_rel_diff"] <= 1e-12
    assert res["ens_failed"] == 0 and res["ens_diff"] <= 1e-12 and res["ens_vs_vmap"] <= 1e-5


def test_progress_reports_failures_and_generic_ok_flag(capsys):
    def member(x):
        return {"y": 2.0 * x}, x < 5.0  # members 5..7 "fail"

    res = ck.sweep(member, np.arange(8.0), chunk_size=3, has_ok=True, progress=True)
    err = capsys.readouterr().err
    # one line after the first chunk, one at the end (with the failure count)
    assert "sweep: 3/8 members (38%)" in err and " elapsed, ETA " in err, err
    assert err.strip().splitlines()[-1].startswith("sweep: 8/8 members (100%)")
    assert err.strip().splitlines()[-1].endswith(", 3 failed"), err
    assert res.n_failed == 3
    np.testing.assert_array_equal(res.outputs["y"][:5], 2.0 * np.arange(5.0))
    assert np.all(np.isnan(res.outputs["y"][5:]))
