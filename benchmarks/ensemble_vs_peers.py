"""Forward ensemble solves: `ck.simulate_ensemble` against scipy LSODA, libroadrunner CVODE and `vmap(ck.simulate)`.

Workloads (`--model`):

- `reference`: the 9-state timing model of issue 8 (`carkinetics.models.reference_workload.ReferenceWorkload`,
  identical to `/work/shared/bench/reference_workload.py`), days 0..365, 366 daily saves, rtol 1e-6, atol 1e-8.
- `sle`: the full SLE CAR-T model (`load_preset("human")`, `erlangen_regimen`), days -5..365 with saves at
  half days (-4.5, -3.5, ..., 364.5, so no save time coincides with a dose), the model's tolerances
  (rtol 1e-6, atol 1e-6).

Members: member 0 has the nominal parameters; the others have every parameter of the reference workload (or
five rate parameters of the SLE model) multiplied by a log-normal factor (sigma 0.3 / 0.2, seed 0).

For each tool the script compiles first (reported separately), blocks on results, takes the minimum of
`--repeats` runs and reports seconds per solve (per patient) = batch time / N, the step count of member 0 and
the maximum relative error of member 0 against a tight reference (floor: 1e-6 x the state's maximum), so that
speed is compared at the accuracy each tool actually delivered:

- reference: scipy LSODA at rtol 1e-10, atol 1e-12 (the shared reference's own choice);
- sle: libroadrunner CVODE at rtol 1e-10, atol 1e-12 on the project's SBML export (`carkinetics.io.to_sbml`),
  or, if libroadrunner is missing, `ck.simulate` with Kvaerno5 at rtol 1e-10.

scipy and libroadrunner solve one patient at a time: they solve the first `--peer-members` members of the same
perturbed batch (default 20; their per-solve time is the mean over those members, so stiffer members weigh as they
do in the batch); the JAX tools solve the batch at once. The ensemble solver runs on one device (one core: the
like-for-like comparison with the single-threaded peers) and, with `--host-devices K` (default 2; CPU only),
sharded over K host devices (`devices="all"`, tools `ens_*_xK`: the whole machine). `--work-precision` adds a sweep
over rtol and atol (N = `--wp-n`; `--wp-rtols` x `--wp-atols`, the same grid for every tool), saves a work-precision
plot (error against seconds per solve) to `benchmarks/results/` and prints the matched-accuracy table: for each error
target the fastest (rtol, atol) of each tool that reaches it. The atol grid matters for a fair comparison: the SLE
model's states span 1e-8 ... 1e11, and CVODE reaches an error of 1e-3 at rtol 1e-5 with atol 1e-12 faster than at
rtol = atol = 1e-8 (the only setting of a sweep with atol tied to rtol). The JAX tools are compiled once each, with
the tolerances as traced arguments, so later grid points report a compile time of ~0.

Examples:

    python benchmarks/ensemble_vs_peers.py --model reference --n 1,100,1000,10000
    python benchmarks/ensemble_vs_peers.py --model sle --n 1,100 --repeats 2
    python benchmarks/ensemble_vs_peers.py --model reference --n 1000 --work-precision
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time


def _parse():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", choices=["reference", "sle"], default="reference")
    p.add_argument("--n", default="1,100,1000", help="comma-separated ensemble sizes (up to 1e5 on CPU)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--vmap-max-n", type=int, default=10_000, help="largest N for vmap(ck.simulate) (slow)")
    p.add_argument("--tools", default="lsoda,cvode,vmap_tsit5,vmap_kvaerno5,ens_tsit5,ens_rodas5")
    p.add_argument("--work-precision", action="store_true")
    p.add_argument("--wp-n", type=int, default=1000)
    p.add_argument("--wp-rtols", default="1e-3,3e-4,1e-4,3e-5,1e-5,3e-6,1e-6,3e-7,1e-7,1e-8,1e-9",
                   help="rtol values of the work-precision sweep; the same for every tool, so each gets the same "
                        "chance to land just under an error target")
    p.add_argument("--wp-atols", default="scaled,1e-10,1e-12",
                   help="atol values of the work-precision sweep, each run with every rtol: 'scaled' = rtol x the "
                        "workload's atol/rtol (1 for the SLE model, 1e-2 for the reference workload) or a number")
    p.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results"))
    p.add_argument("--peer-members", type=int, default=20, help="members solved one by one by LSODA / CVODE")
    p.add_argument("--host-devices", type=int, default=2, help="CPU host devices for the sharded ensemble runs")
    return p.parse_args()


def main():
    args = _parse()
    if args.host_devices > 1 and "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                                   f" --xla_force_host_platform_device_count={args.host_devices}")
    import jax

    jax.config.update("jax_enable_x64", True)
    import diffrax
    import jax.numpy as jnp
    import numpy as np

    import carkinetics as ck

    tools = args.tools.split(",")
    ns = [int(float(x)) for x in args.n.split(",")]
    print(f"jax {jax.__version__}, dtype float64, device {jax.devices()[0].device_kind} ({jax.default_backend()}), "
          f"{os.cpu_count()} visible CPU cores")

    # ---- workload -------------------------------------------------------------------------------------------
    if args.model == "reference":
        from carkinetics.models.reference_workload import SHARED_ORDER, ReferenceWorkload

        base = ReferenceWorkload()
        regimen = None
        ts_np = np.linspace(0.0, 365.0, 366)
        rtol, atol = 1e-6, 1e-8
        varied = list(SHARED_ORDER)
        sigma = 0.3
    else:
        from carkinetics.models.sle import erlangen_regimen, load_preset

        base = load_preset("human")
        regimen = erlangen_regimen(base)
        ts_np = -5.0 + 0.5 + np.arange(370.0)
        rtol, atol = 1e-6, 1e-6
        varied = ["car.rho", "car.k_kill", "car.k_exh", "humoral.k_igg", "myeloid.k_il6"]
        varied = [v for v in varied if _has(ck, base, v)]
        sigma = 0.2
    ts = jnp.asarray(ts_np)
    names = base.state_names()

    def factors(n):
        rng = np.random.default_rng(0)
        fac = np.exp(rng.normal(0.0, sigma, (n, len(varied))))
        fac[0] = 1.0
        return fac

    def batch(n):
        fac = factors(n)
        vals = {v: jnp.asarray(float(base.get(v)) * fac[:, i]) for i, v in enumerate(varied)}
        return jax.vmap(lambda d: base.replace(d))(vals)

    n_peer = max(1, min(args.peer_members, max(ns)))
    peer_vals = [{v: float(base.get(v)) * f for v, f in zip(varied, row)} for row in factors(max(ns))[:n_peer]]

    # ---- tight reference ------------------------------------------------------------------------------------
    t = time.perf_counter()
    rr_text = None
    if args.model == "reference":
        from scipy.integrate import solve_ivp

        y0 = np.asarray(base.initial_state_flat())
        rhs = _numpy_rhs(base)
        ref = solve_ivp(rhs, (0.0, 365.0), y0, method="LSODA", t_eval=ts_np, rtol=1e-10, atol=1e-12).y.T
        ref_name = "scipy LSODA rtol 1e-10 atol 1e-12"
    else:
        ref = None
        try:
            import carkinetics.io as cio

            rr_text = cio.to_sbml(base, regimen)
            ref = _roadrunner_solve(rr_text, names, ts_np, -5.0, 1e-10, 1e-12)
            ref_name = "libroadrunner CVODE rtol 1e-10 atol 1e-12 (project SBML export)"
        except Exception as e:  # libroadrunner missing or export failure: say so, fall back
            print(f"CVODE reference unavailable ({type(e).__name__}: {e}); using diffrax Kvaerno5 rtol 1e-10.")
            sol = ck.simulate(base, regimen, ts, solver=diffrax.Kvaerno5(), rtol=1e-10, atol=1e-12, max_steps=500_000)
            ref = np.asarray(sol.y_array)
            ref_name = "diffrax Kvaerno5 rtol 1e-10 atol 1e-12"
    print(f"reference: {ref_name} ({time.perf_counter() - t:.1f} s)")
    floor = 1e-6 * np.max(np.abs(ref), axis=0) + 1e-30

    def err(y):
        y = np.asarray(y)
        return float(np.max(np.abs(y - ref) / (np.abs(ref) + floor)))

    rows = []
    peer_out = {}

    def record(tool, n, compile_s, batch_s, steps, e, extra=None):
        row = dict(model=args.model, tool=tool, n=n, compile_s=compile_s, per_solve_s=batch_s / n, steps=steps,
                   max_rel_err=e, rtol=rtol_now, atol=atol_now)
        row.update(extra or {})
        rows.append(row)
        more = "".join(f"  {k} {v:.3g}" for k, v in (extra or {}).items() if isinstance(v, float))
        print(f"{tool:16s} N={n:>7d}  compile {compile_s:7.2f} s  per solve {1e3 * batch_s / n:9.4f} ms  "
              f"steps {steps!s:>6}  max rel err {e:.2e}{more}", flush=True)

    def best(f, repeats):
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            jax.block_until_ready(f())
            times.append(time.perf_counter() - t)
        return min(times)

    def run_all(ns, tools, rtol_, atol_, repeats):
        nonlocal rtol_now, atol_now
        rtol_now, atol_now = rtol_, atol_
        # one-patient-at-a-time peers (independent of N)
        if "lsoda" in tools and args.model == "reference":
            from scipy.integrate import solve_ivp

            y0 = np.asarray(base.initial_state_flat())
            m_lsoda = max(1, n_peer // 4)  # LSODA is slow: a quarter of the peer members

            def f(i):
                rhs = _numpy_rhs(base.replace(peer_vals[i]))
                return solve_ivp(rhs, (0.0, 365.0), y0, method="LSODA", t_eval=ts_np, rtol=rtol_, atol=atol_)

            s = f(0)
            record("scipy_lsoda", m_lsoda, 0.0, best(lambda: [f(i).y for i in range(m_lsoda)], repeats),
                   int(s.nfev), err(s.y.T), {"steps_kind": "nfev"})
        if "cvode" in tools:
            try:
                import carkinetics.io as cio
                import roadrunner

                text = rr_text or cio.to_sbml(base, regimen)
                rr = roadrunner.RoadRunner(text)
                t0 = 0.0 if args.model == "reference" else -5.0
                rr.integrator.relative_tolerance = rtol_
                rr.integrator.absolute_tolerance = atol_
                rr.timeCourseSelections = ["time"] + list(names)
                times = [0.0] + list(ts_np - t0) if ts_np[0] > t0 else list(ts_np - t0)

                def f(i):
                    rr.resetAll()
                    for v, x in peer_vals[i].items():
                        rr.setValue(v.replace(".", "_"), x)
                    rr.reset()  # re-applies initial assignments with the member's parameters
                    return rr.simulate(times=times)

                out = np.asarray(f(0))[:, 1:]
                out = out[-len(ts_np):]
                peer_out[n_peer - 1] = np.asarray(f(n_peer - 1))[:, 1:][-len(ts_np):]
                record("roadrunner_cvode", n_peer, 0.0, best(lambda: [f(i) for i in range(n_peer)], repeats), "-",
                       err(out))
            except Exception as e:
                print(f"libroadrunner CVODE skipped: {type(e).__name__}: {e}")
        for n in ns:
            models = batch(n)
            for tool in tools:
                if tool.startswith("vmap_") and n <= args.vmap_max_n:
                    if tool == "vmap_kvaerno5" and n > max(1000, ns[0]):
                        continue
                    fn = _jitted(tool, None)
                    _time_jax(tool, lambda m, fn=fn: fn(m, rtol_, atol_), models, n)
                elif tool.startswith("ens_"):
                    for devices in (None, "all") if len(jax.devices()) > 1 else (None,):
                        name = tool if devices is None else f"{tool}_x{len(jax.devices())}"
                        fn = _jitted(tool, devices)
                        _time_jax(name, lambda m, fn=fn: fn(m, rtol_, atol_), models, n)

    # One jitted function per tool (and device setting), with the tolerances as traced arguments: a new point of the
    # work-precision grid reuses the compiled solve, as a user changing tolerances would (the "compile" column is
    # then ~0 after each tool's first run; the first run of each tool and N reports the compile time).
    jitted = {}

    def _jitted(tool, devices):
        if (tool, devices) not in jitted:
            if tool.startswith("vmap_"):
                solver = diffrax.Tsit5() if tool == "vmap_tsit5" else diffrax.Kvaerno5()
                jitted[tool, devices] = jax.jit(jax.vmap(lambda m, rt, at: ck.simulate(
                    m, regimen, ts, solver=solver, rtol=rt, atol=at, throw=False, max_steps=100_000),
                    in_axes=(0, None, None)))
            else:
                method = ck.EnsembleTsit5() if tool == "ens_tsit5" else ck.EnsembleRodas5()
                jitted[tool, devices] = jax.jit(lambda m, rt, at: ck.simulate_ensemble(
                    m, regimen, ts, method=method, rtol=rt, atol=at, devices=devices))
        return jitted[tool, devices]

    def _time_jax(tool, fn, models, n):
        t = time.perf_counter()
        sol = jax.block_until_ready(fn(models))
        first = time.perf_counter() - t
        bt = best(lambda: fn(models).y_array, args.repeats)
        n_fail = int(np.sum(~np.asarray(sol.ok)))
        extra = {"failed_members": n_fail, "mean_steps": float(np.mean(np.asarray(sol.num_steps)))}
        if n_peer - 1 in peer_out and n >= n_peer:  # sanity: the same perturbed member as the peers
            yk, pk = np.asarray(sol.y_array[n_peer - 1]), peer_out[n_peer - 1]
            extra["peer_member_rel_diff"] = float(np.max(np.abs(yk - pk) / (np.abs(pk) + floor)))
        record(tool, n, max(first - bt, 0.0), bt, int(sol.num_steps[0]), err(sol.y_array[0]), extra)

    rtol_now, atol_now = rtol, atol
    run_all(ns, tools, rtol, atol, args.repeats)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak host RSS {peak:.0f} MiB")

    os.makedirs(args.out, exist_ok=True)
    wp_rows = []
    if args.work_precision:
        n0 = len(rows)
        for at_spec in args.wp_atols.split(","):
            for rt in [float(x) for x in args.wp_rtols.split(",")]:
                at = rt * (atol / rtol) if at_spec == "scaled" else float(at_spec)
                if at_spec != "scaled" and at >= rt * (atol / rtol):
                    continue  # no tighter than the scaled atol: that run is already in the sweep
                print(f"-- work-precision: rtol {rt:g}, atol {at:g}")
                run_all([args.wp_n], tools, rt, at, max(1, args.repeats - 1))
        wp_rows = rows[n0:]
        _plot(wp_rows, os.path.join(args.out, f"work_precision_{args.model}.png"), args.model, args.wp_n)
        _matched_accuracy(wp_rows)
    path = os.path.join(args.out, f"ensemble_vs_peers_{args.model}{'_wp' if args.work_precision else ''}.json")
    with open(path, "w") as fh:
        json.dump(dict(device=jax.devices()[0].device_kind, backend=jax.default_backend(), reference=ref_name,
                       rows=rows, peak_rss_mib=peak), fh, indent=1)
    print(f"wrote {path}")


def _has(ck, model, name):
    try:
        model.get(name)
        return True
    except (ValueError, AttributeError, KeyError):
        return False


def _numpy_rhs(model):
    """The reference workload's right-hand side in NumPy (from the shared reference, same equations)."""
    sys.path.insert(0, "/work/shared/bench")
    try:
        from reference_workload import P0, rhs_np  # the shared reference equations, if present
    except ImportError:
        P0 = rhs_np = None
    if rhs_np is not None:
        from carkinetics.models.reference_workload import SHARED_ORDER

        # the shared reference's parameter names in SHARED_ORDER, with this member's values
        p = {k: float(model.get(name)) for k, name in zip(P0, SHARED_ORDER)}
        return lambda t, y: rhs_np(t, y, p)
    import jax
    import numpy as np

    f = jax.jit(lambda y: model.vector_field_flat(0.0, y, None))
    return lambda t, y: np.asarray(f(y))


def _roadrunner_solve(sbml, names, ts_np, t0, rtol, atol):
    import numpy as np
    import roadrunner

    rr = roadrunner.RoadRunner(sbml)
    rr.integrator.relative_tolerance = rtol
    rr.integrator.absolute_tolerance = atol
    rr.integrator.maximum_num_steps = 1_000_000
    rr.timeCourseSelections = ["time"] + list(names)
    times = [0.0] + list(ts_np - t0) if ts_np[0] > t0 else list(ts_np - t0)
    out = np.asarray(rr.simulate(times=times))[:, 1:]
    return out[-len(ts_np):]


def _matched_accuracy(rows):
    """Speed at matched accuracy: for each error target, the fastest run of each tool whose error is at or below it
    (over the whole (rtol, atol) grid), its tolerances, and its speed-up over libroadrunner CVODE and
    vmap(ck.simulate) Tsit5."""
    tools = sorted({r["tool"] for r in rows})
    print("\nmatched accuracy (fastest run with max rel err <= target; ms per solve (speed-up vs CVODE / vmap) "
          "at rtol / atol):")
    print("| target error | " + " | ".join(tools) + " |")
    print("|---|" + "---|" * len(tools))
    for target in (1e-3, 1e-4, 1e-5, 1e-6):
        best = {}
        for tool in tools:
            ok = [r for r in rows if r["tool"] == tool and r["max_rel_err"] <= target]
            best[tool] = min(ok, key=lambda r: r["per_solve_s"]) if ok else None
        cells = []
        for tool in tools:
            r = best[tool]
            if r is None:
                cells.append("-")
                continue
            t = r["per_solve_s"]
            ratios = [f"{best[ref]['per_solve_s'] / t:.1f}x" if best.get(ref) else "-"
                      for ref in ("roadrunner_cvode", "vmap_tsit5")]
            cells.append(f"{1e3 * t:.3f} ({' / '.join(ratios)}) at {r['rtol']:.0e} / {r['atol']:.0e}")
        print(f"| {target:.0e} | " + " | ".join(cells) + " |")


def _plot(rows, path, model, n):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4.5))
    for tool in sorted({r["tool"] for r in rows}):
        # every (rtol, atol) run as a point, the tool's Pareto front (fastest for its error) as a line
        rs = sorted([r for r in rows if r["tool"] == tool], key=lambda r: r["per_solve_s"])
        front, best_err = [], float("inf")
        for r in rs:
            if r["max_rel_err"] < best_err:
                front.append(r)
                best_err = r["max_rel_err"]
        line, = ax.loglog([r["per_solve_s"] * 1e3 for r in front], [r["max_rel_err"] for r in front], "-", label=tool)
        ax.loglog([r["per_solve_s"] * 1e3 for r in rs], [r["max_rel_err"] for r in rs], "o", color=line.get_color(),
                  ms=3, alpha=0.6)
    ax.set_xlabel("time per solve (ms)")
    ax.set_ylabel("max relative error vs tight reference")
    ax.set_title(f"work-precision, {model} workload (batched tools: N = {n})\n"
                 "points: every (rtol, atol) run; lines: each tool's fastest for its error", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
