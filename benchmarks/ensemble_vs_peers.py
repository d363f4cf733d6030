"""Forward ensemble solves: `ck.simulate_ensemble` against scipy LSODA, libroadrunner CVODE and vmapped diffrax.

Workloads (`--model`, see `_workloads.py`):

- `reference`: the 9-state timing model (`carkinetics.models.ReferenceWorkload`, identical to
  `/work/shared/bench/reference_workload.py`), days 0..365, 366 daily saves, rtol 1e-6, atol 1e-8; every parameter
  of members 1.. multiplied by a log-normal factor (sigma 0.3, seed 0).
- `sle`: the current SLE CAR-T model (`load_preset("human")`, `erlangen_regimen(model)`, the application's save
  grid `save_times(365)` from the first dose on), the model class's tolerances; five rate parameters perturbed
  (sigma 0.2).

Tools (`--tools`):

- `lsoda` (reference workload only): scipy `solve_ivp(method="LSODA")` on the NumPy right-hand side;
- `cvode`: libroadrunner CVODE on the project's SBML export (`carkinetics.io.to_sbml`) in the modes of `--cvode-modes`
  (tools `roadrunner_cvode_bdf`: `integrator.stiff = True`, the default; `roadrunner_cvode_adams`: `stiff = False`);
  a member whose solve raises is a counted failure, never a silent NaN;
- `vmap_diffrax` (reference workload only): the peer in its fastest idiomatic form,
  `jax.jit(jax.vmap(diffrax.diffeqsolve))` with the right-hand side written directly, Tsit5, `PIDController`,
  `SaveAt(ts=...)`;
- `vmap_tsit5`, `vmap_kvaerno5`: `ck.simulate_ensemble` with a diffrax solver (`jax.vmap` of the per-member
  diffrax engine, which splits the horizon at the dose events);
- `ens_tsit5`, `ens_rodas5`: `ck.simulate_ensemble` with `ck.EnsembleTsit5()` / `ck.EnsembleRodas5()` (the batched
  engine) on one device (one core: the like-for-like comparison with the single-threaded peers) and, with
  `--host-devices K` (default 2; CPU only), sharded over K host devices (`devices="all"`, tools `ens_*_xK`).

For each tool the script compiles first (reported separately), blocks on results, takes the minimum of `--repeats`
runs and reports seconds per solve = batch time / N, the step count of member 0 and the maximum relative error of
member 0 against a tight reference (floor: 1e-6 x the state's maximum, 1e-6 absolute for a state that is identically
zero in the reference): scipy LSODA at rtol 1e-10, atol 1e-12 (reference workload) or diffrax Kvaerno5 at rtol 1e-11,
atol 1e-13 (SLE, `--ref-rtol`; cross-checked against libroadrunner CVODE Adams and BDF at rtol 1e-10, atol 1e-12 when
libroadrunner is installed, the agreement printed). scipy and libroadrunner solve one patient at a time: the first
`--peer-members` members of the same perturbed batch (their mean time per solve). `max_steps` (100,000) bounds the
steps over the whole horizon in every JAX tool; failures are counted (`throw=False`).

`--work-precision` adds a sweep over rtol x atol (N = `--wp-n`, the same grid for every tool), saves a
work-precision plot (error against seconds per solve) and prints the matched-accuracy table: for each error target
the fastest (rtol, atol) of each tool that reaches it. Each JAX tool is compiled once with the tolerances as traced
arguments, so later grid points report a compile time of ~0. `--wp-retime K` times the picks again with K repeats
(the table takes the minimum over all runs of a setting); `--retime-from` merges saved sweeps instead of sweeping.

Examples:

    python benchmarks/ensemble_vs_peers.py --quick                  # smoke run (every tool once, N = 20)
    python benchmarks/ensemble_vs_peers.py --model reference --n 1,100,1000,10000,100000 --vmap-max-n 1000
    python benchmarks/ensemble_vs_peers.py --model sle --n 1,100,1000 --tools cvode,vmap_tsit5,ens_tsit5,ens_rodas5 \
        --vmap-max-n 100
    python benchmarks/ensemble_vs_peers.py --model reference --n 1000 --work-precision
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import tempfile
import time
from typing import Any, NamedTuple

import _workloads as W

ALL_TOOLS = "lsoda,cvode,vmap_diffrax,vmap_tsit5,vmap_kvaerno5,ens_tsit5,ens_rodas5"


def _parse():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", choices=["reference", "sle"], default="reference")
    p.add_argument(
        "--quick",
        action="store_true",
        help="smoke run: N = 20, one repeat, 4 peer members, SLE reference at rtol 1e-8, results to a temporary folder",
    )
    p.add_argument("--n", default="1,100,1000", help="comma-separated ensemble sizes (up to 1e5 on CPU)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--vmap-max-n", type=int, default=10_000, help="largest N for the vmapped diffrax tools (slow)")
    p.add_argument("--tools", default=ALL_TOOLS)
    p.add_argument("--work-precision", action="store_true")
    p.add_argument("--wp-n", type=int, default=1000)
    p.add_argument(
        "--wp-retime",
        type=int,
        default=0,
        help="with --work-precision: time the matched-accuracy picks again with this many repeats",
    )
    p.add_argument(
        "--retime-from",
        default=None,
        help="comma-separated JSON files of saved sweeps instead of a new sweep: merged for the tables, and "
        "with --wp-retime their picks timed again",
    )
    p.add_argument(
        "--wp-only",
        action="store_true",
        help="with --work-precision: skip the fixed-tolerance runs over --n (the sweep alone)",
    )
    p.add_argument(
        "--wp-rtols",
        default="1e-3,3e-4,1e-4,3e-5,1e-5,3e-6,1e-6,3e-7,1e-7,1e-8,1e-9",
        help="rtol values of the work-precision sweep; the same for every tool",
    )
    p.add_argument(
        "--wp-atols",
        default="scaled,1e-10,1e-12",
        help="atol values of the work-precision sweep, each run with every rtol: 'scaled' = rtol x the "
        "workload's atol/rtol (1 for the SLE model, 1e-2 for the reference workload) or a number",
    )
    p.add_argument(
        "--out",
        default=None,
        help="folder for the JSON rows and plots (default: benchmarks/results; --quick: a temporary folder)",
    )
    p.add_argument("--tag", default="", help="suffix of the JSON and plot names (e.g. _2026-12-05)")
    p.add_argument("--peer-members", type=int, default=20, help="members solved one by one by LSODA / CVODE")
    p.add_argument("--host-devices", type=int, default=2, help="CPU host devices for the sharded ensemble runs")
    p.add_argument(
        "--cvode-modes",
        default="bdf,adams",
        help="libroadrunner CVODE modes timed (tools roadrunner_cvode_bdf / _adams): bdf (stiff, the default), adams",
    )
    p.add_argument(
        "--ref-cache",
        default=None,
        help="SLE: .npz file holding the reference (read if present, else written): the same model and --ref-rtol only",
    )
    p.add_argument(
        "--ref-rtol",
        type=float,
        default=1e-11,
        help="rtol of the SLE reference (diffrax Kvaerno5; atol = 1e-2 x rtol)",
    )
    args = p.parse_args()
    if args.quick:
        args.n, args.repeats, args.peer_members = "20", 1, 4
        args.wp_n, args.wp_rtols, args.wp_atols = 20, "1e-4,1e-6", "scaled"
        args.ref_rtol = max(args.ref_rtol, 1e-8)  # a smoke run's SLE reference (rtol 1e-11 takes minutes)
    if args.out is None:
        args.out = (
            os.path.join(tempfile.gettempdir(), "carkinetics_bench")
            if args.quick
            else os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
        )
    return args


def main():
    args = _parse()
    W.force_host_devices(args.host_devices)
    import jax

    jax.config.update("jax_enable_x64", True)
    import diffrax
    import jax.numpy as jnp
    import numpy as np

    import carkinetics as ck

    tools = args.tools.split(",")
    unknown = set(tools) - set(ALL_TOOLS.split(","))
    if unknown:
        raise SystemExit(f"unknown tools {sorted(unknown)}; known: {ALL_TOOLS}")
    ns = [int(float(x)) for x in args.n.split(",")]
    print(W.machine(), flush=True)

    w = W.workload(args.model)
    base, regimen, ts_np = w.model, w.regimen, w.ts
    ts = jnp.asarray(ts_np)
    names = base.state_names()
    print(
        f"workload {w.name}: {len(names)} states, {ts_np.size} saves on days {ts_np[0]:g}..{ts_np[-1]:g}, "
        f"rtol {w.rtol:g}, atol {w.atol:g}; varied {list(w.varied)} (sigma {w.sigma})",
        flush=True,
    )
    n_peer = max(1, min(args.peer_members, max(ns)))
    peer_vals = W.member_values(w, n_peer)

    # ---- tight reference ------------------------------------------------------------------------------------
    t = time.perf_counter()
    rr_text = None
    ref_check = {}
    peer_out = {}  # member n_peer - 1 solved by a peer: the same-problem check of the batched tools
    if args.model == "reference":
        from scipy.integrate import solve_ivp

        from carkinetics.models.reference_workload import SHARED_ORDER

        def numpy_rhs(values):
            p = np.array([float(values.get(k, base.get(k))) for k in SHARED_ORDER])
            return lambda t_, y: W.reference_rhs(t_, y, p, np)

        y0 = np.asarray(base.initial_state_flat())
        ref = solve_ivp(numpy_rhs({}), (0.0, 365.0), y0, method="LSODA", t_eval=ts_np, rtol=1e-10, atol=1e-12).y.T
        ref_name = "scipy LSODA rtol 1e-10 atol 1e-12"
    else:
        # diffrax Kvaerno5 at rtol 1e-11 (per member, `ck.simulate`): independent of every timed tool's settings and
        # of libroadrunner; cross-checked below against CVODE (Adams and BDF) on the SBML export.
        if args.ref_cache and os.path.exists(args.ref_cache):
            cached = np.load(args.ref_cache)
            ref, ref_name = cached["ref"], str(cached["name"]) + f" (cached in {args.ref_cache})"
        else:
            sol = ck.simulate(
                base,
                regimen,
                ts,
                t0=w.t0,
                solver=diffrax.Kvaerno5(),
                rtol=args.ref_rtol,
                atol=1e-2 * args.ref_rtol,
                max_steps=2_000_000,
            )
            ref = np.asarray(sol.y_array)
            steps = int(sol.num_steps)
            ref_name = f"diffrax Kvaerno5 rtol {args.ref_rtol:g} atol {1e-2 * args.ref_rtol:g} ({steps} steps)"
            if args.ref_cache:
                np.savez(args.ref_cache, ref=ref, name=ref_name)
    print(f"reference: {ref_name} ({time.perf_counter() - t:.1f} s)", flush=True)
    floor = W.error_floor(ref)
    zero = [n for n, m in zip(names, np.max(np.abs(ref), axis=0)) if m == 0.0]
    if zero:
        print(f"states identically zero in the reference (absolute floor 1e-6): {zero}")

    worst = {}

    def err(y):
        e, (i, j) = W.max_rel_err(y, ref, floor, where=True)
        worst["at"] = f"{names[j]} day {ts_np[i]:g}"  # where the error peaks (in the JSON rows)
        return e

    if args.model == "sle":
        try:
            import carkinetics.io as cio

            rr_text = cio.to_sbml(base, regimen, t0=w.t0)
            for stiff in (False, True):
                mode = "BDF" if stiff else "Adams"
                try:
                    y = _roadrunner_solve(rr_text, names, ts_np, w.t0, 1e-10, 1e-12, stiff)
                    e, where = W.max_rel_err(y, ref, floor, where=True)
                    ref_check[f"cvode_{mode.lower()}_1e-10"] = e
                    print(
                        f"cross-check: libroadrunner CVODE {mode} rtol 1e-10 atol 1e-12 vs the reference: max rel "
                        f"err {e:.2e} ({names[where[1]]} on day {ts_np[where[0]]:g})",
                        flush=True,
                    )
                except Exception as ex:  # a failed solve is reported, never silently used
                    ref_check[f"cvode_{mode.lower()}_1e-10"] = None
                    print(f"cross-check: libroadrunner CVODE {mode} rtol 1e-10 failed ({type(ex).__name__}: {ex})")
            # the last peer member at tight tolerance (Adams): the check that every tool solves the same members
            peer_out[n_peer - 1] = _roadrunner_solve(
                rr_text, names, ts_np, w.t0, 1e-10, 1e-12, False, peer_vals[n_peer - 1]
            )
        except Exception as ex:  # libroadrunner missing or export failure
            print(f"cross-check with libroadrunner unavailable ({type(ex).__name__}: {ex})")

    rows = []
    tol = {"rtol": w.rtol, "atol": w.atol}

    def record(tool, n, compile_s, batch_s, steps, e, extra=None):
        row = dict(
            model=args.model,
            tool=tool,
            n=n,
            compile_s=compile_s,
            per_solve_s=batch_s / n,
            steps=steps,
            max_rel_err=e,
            rtol=tol["rtol"],
            atol=tol["atol"],
            worst_at=worst.pop("at", None),
        )
        row.update(extra or {})
        rows.append(row)
        more = "".join(f"  {k} {v:.3g}" for k, v in (extra or {}).items() if isinstance(v, (int, float)))
        print(
            f"{tool:16s} N={n:>7d}  compile {compile_s:7.2f} s  per solve {1e3 * batch_s / n:9.4f} ms  "
            f"steps {steps!s:>6}  max rel err {e:.2e}{more}  ({row['worst_at']})",
            flush=True,
        )

    def best(f, repeats):
        times = []
        for _ in range(repeats):
            t_ = time.perf_counter()
            jax.block_until_ready(f())
            times.append(time.perf_counter() - t_)
        return min(times)

    # One jitted function per tool (and device setting), with the tolerances as traced arguments: a new point of the
    # work-precision grid reuses the compiled solve (the "compile" column is then ~0 after each tool's first run).
    jitted = {}

    def jitted_tool(tool, devices):
        if (tool, devices) in jitted:
            return jitted[tool, devices]
        if tool == "vmap_diffrax":
            from carkinetics.models.reference_workload import SHARED_ORDER

            term = diffrax.ODETerm(lambda t_, y, p: W.reference_rhs(t_, y, p, jnp))
            y0 = jnp.asarray(base.initial_state_flat())

            def one(p, rt, at):
                return diffrax.diffeqsolve(
                    term,
                    diffrax.Tsit5(),
                    ts[0],
                    ts[-1],
                    None,
                    y0,
                    args=p,
                    saveat=diffrax.SaveAt(ts=ts),
                    stepsize_controller=diffrax.PIDController(rtol=rt, atol=at),
                    max_steps=100_000,
                    throw=False,
                )

            vm = jax.jit(jax.vmap(one, in_axes=(0, None, None)))

            def fn(models, rt, at):
                p = jnp.stack([getattr(models, k) for k in SHARED_ORDER], axis=1)
                s = vm(p, rt, at)
                return _Out(s.ys, s.stats["num_steps"], s.result == diffrax.RESULTS.successful)
        elif tool.startswith("vmap_"):
            solver = diffrax.Tsit5() if tool == "vmap_tsit5" else diffrax.Kvaerno5()
            sim = jax.jit(
                lambda m, rt, at: ck.simulate_ensemble(
                    m, regimen, ts, t0=w.t0, solver=solver, rtol=rt, atol=at, max_steps=100_000, throw=False
                )
            )

            def fn(models, rt, at, sim=sim):
                s = sim(models, rt, at)
                return _Out(s.y_array, s.num_steps, s.ok)
        else:
            method = ck.EnsembleTsit5() if tool == "ens_tsit5" else ck.EnsembleRodas5()
            sim = jax.jit(
                lambda m, rt, at: ck.simulate_ensemble(
                    m,
                    regimen,
                    ts,
                    t0=w.t0,
                    solver=method,
                    rtol=rt,
                    atol=at,
                    max_steps=100_000,
                    throw=False,
                    devices=devices,
                )
            )

            def fn(models, rt, at, sim=sim):
                s = sim(models, rt, at)
                return _Out(s.y_array, s.num_steps, s.ok)

        jitted[tool, devices] = fn
        return fn

    def time_jax(tool, fn, models, n, repeats):
        rt, at = jnp.asarray(tol["rtol"]), jnp.asarray(tol["atol"])
        compile_s, bt, full = W.first_and_best(lambda m: fn(m, rt, at), models, repeats=repeats)
        n_fail = int(np.sum(~np.asarray(full.ok)))
        extra = {"failed_members": n_fail, "mean_steps": float(np.mean(np.asarray(full.steps)))}
        if n_peer - 1 in peer_out and n >= n_peer:  # sanity: the same perturbed member as the peers
            yk, pk = np.asarray(full.y[n_peer - 1]), peer_out[n_peer - 1]
            extra["peer_member_rel_diff"] = float(np.max(np.abs(yk - pk) / (np.abs(pk) + floor)))
        e = err(full.y[0]) if bool(np.asarray(full.ok)[0]) else float("inf")
        record(tool, n, compile_s, bt, int(full.steps[0]), e, extra)

    def time_cvode(roadrunner, text, mode, repeats):
        """libroadrunner CVODE in one mode (`bdf`: `integrator.stiff = True`, the default; `adams`: `stiff = False`)
        on the first `n_peer` members, one at a time. A member whose solve raises is a failure: counted, left out
        of the time, and its error is infinite if it is member 0."""
        rr = roadrunner.RoadRunner(text)
        rr.integrator.stiff = mode == "bdf"
        rr.integrator.relative_tolerance = tol["rtol"]
        rr.integrator.absolute_tolerance = tol["atol"]
        rr.integrator.maximum_num_steps = 100_000  # as max_steps of the JAX tools
        rr.timeCourseSelections = ["time", *names]
        times = _rr_times(ts_np, w.t0)
        messages = []

        def f(i):
            rr.resetAll()
            for v, x in peer_vals[i].items():
                rr.setValue(v.replace(".", "_"), x)
            rr.reset()  # re-applies initial assignments with the member's parameters
            try:
                return np.asarray(rr.simulate(times=times))[:, 1:][-len(ts_np) :]
            except Exception as e:  # CVODE failure (error test, convergence, too many steps)
                messages.append(f"{type(e).__name__}: {str(e).strip()[:200]}")
                return None

        outs = [f(i) for i in range(n_peer)]
        failed = sum(o is None for o in outs)
        extra = {"failed_members": failed}
        if outs[-1] is not None and n_peer - 1 in peer_out:
            pk = peer_out[n_peer - 1]
            extra["peer_member_rel_diff"] = float(np.max(np.abs(outs[-1] - pk) / (np.abs(pk) + floor)))
        elif outs[-1] is not None:
            peer_out[n_peer - 1] = outs[-1]
        e = err(outs[0]) if outs[0] is not None else float("inf")
        ok_members = [i for i, o in enumerate(outs) if o is not None]
        if ok_members:
            bt = best(lambda: [f(i) for i in ok_members], repeats) * n_peer / len(ok_members)
        else:
            bt = float("nan")
        record(f"roadrunner_cvode_{mode}", n_peer, 0.0, bt, "-", e, extra)
        if messages:
            print(f"  CVODE {mode}: {failed} of {n_peer} members failed; first: {messages[0]}")

    def run_all(ns, tools, repeats, only=None):
        # only: the row names (e.g. ens_rodas5_x2, roadrunner_cvode_adams) to run; None = every tool
        if "lsoda" in tools and args.model == "reference":
            from scipy.integrate import solve_ivp

            y0 = np.asarray(base.initial_state_flat())
            m_lsoda = max(1, n_peer // 4)  # LSODA is slow: a quarter of the peer members

            def f(i):
                return solve_ivp(
                    numpy_rhs(peer_vals[i]),
                    (0.0, 365.0),
                    y0,
                    method="LSODA",
                    t_eval=ts_np,
                    rtol=tol["rtol"],
                    atol=tol["atol"],
                )

            s = f(0)
            record(
                "scipy_lsoda",
                m_lsoda,
                0.0,
                best(lambda: [f(i).y for i in range(m_lsoda)], repeats),
                int(s.nfev),
                err(s.y.T),
                {"steps_kind": "nfev"},
            )
        if "cvode" in tools:
            try:
                import roadrunner

                import carkinetics.io as cio

                text = rr_text or cio.to_sbml(base, regimen, t0=w.t0)
            except Exception as e:
                print(f"libroadrunner CVODE skipped: {type(e).__name__}: {e}")
            else:
                for mode in args.cvode_modes.split(","):
                    if only is None or f"roadrunner_cvode_{mode}" in only:
                        time_cvode(roadrunner, text, mode, repeats)
        for n in ns:
            models = W.perturbed_batch(w, n)
            for tool in tools:
                if tool == "vmap_diffrax" and args.model != "reference":
                    continue  # the hand-written peer exists for the reference workload only
                if tool.startswith("vmap_") and n <= args.vmap_max_n:
                    if (tool == "vmap_kvaerno5" and n > max(1000, ns[0])) or (only is not None and tool not in only):
                        continue
                    time_jax(tool, jitted_tool(tool, None), models, n, repeats)
                elif tool.startswith("ens_"):
                    for devices in (None, "all") if len(jax.devices()) > 1 else (None,):
                        name = tool if devices is None else f"{tool}_x{len(jax.devices())}"
                        if only is not None and name not in only:
                            continue
                        time_jax(name, jitted_tool(tool, devices), models, n, repeats)

    if not (args.work_precision and args.wp_only):
        run_all(ns, tools, args.repeats)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak host RSS {peak:.0f} MiB")

    os.makedirs(args.out, exist_ok=True)
    if args.work_precision:
        n0 = len(rows)
        if args.retime_from:
            for src in args.retime_from.split(","):  # saved sweeps (--wp-only): merged; only picks timed again
                with open(src) as fh:
                    rows.extend(json.load(fh)["rows"])
                print(f"sweep rows from {src}")
        else:
            for at_spec in args.wp_atols.split(","):
                for rt in [float(x) for x in args.wp_rtols.split(",")]:
                    at = rt * (w.atol / w.rtol) if at_spec == "scaled" else float(at_spec)
                    if at_spec != "scaled" and at >= rt * (w.atol / w.rtol):
                        continue  # no tighter than the scaled atol: that run is already in the sweep
                    print(f"-- work-precision: rtol {rt:g}, atol {at:g}")
                    tol.update(rtol=rt, atol=at)
                    run_all([args.wp_n], tools, max(1, args.repeats - 1))
        if args.wp_retime:
            # the matched-accuracy picks again with more repeats (one sweep point is the best of one call, noisy
            # on a shared machine); the tables take the minimum over all runs of a (tool, rtol, atol)
            picks = {(r["rtol"], r["atol"], r["tool"]) for r in _picks(rows[n0:]).values() if r}
            for rt, at in sorted({(rt, at) for rt, at, _ in picks}, reverse=True):
                names_ = {t for rt_, at_, t in picks if (rt_, at_) == (rt, at)}
                print(f"-- retime ({args.wp_retime} repeats): rtol {rt:g}, atol {at:g}: {sorted(names_)}")
                tol.update(rtol=rt, atol=at)
                n1 = len(rows)
                run_all([args.wp_n], tools, args.wp_retime, only=names_)
                for r in rows[n1:]:
                    r["retimed"] = True
        wp_rows = _min_per_setting(rows[n0:])
        _plot(wp_rows, os.path.join(args.out, f"work_precision_{args.model}{args.tag}.png"), args.model, args.wp_n)
        _matched_accuracy(wp_rows)
    stem = f"ensemble_vs_peers_{args.model}{'_wp' if args.work_precision else ''}{args.tag}"
    path = os.path.join(args.out, f"{stem}.json")
    with open(path, "w") as fh:
        json.dump(
            dict(
                machine=W.machine(),
                device=jax.devices()[0].device_kind,
                backend=jax.default_backend(),
                reference=ref_name,
                reference_cross_check=ref_check,
                rows=rows,
                peak_rss_mib=peak,
            ),
            fh,
            indent=1,
        )
    print(f"wrote {path}")


class _Out(NamedTuple):
    """What every JAX tool returns: saved states (N, T, S), steps (N,), success flags (N,)."""

    y: Any
    steps: Any
    ok: Any


def _rr_times(ts_np, t0):
    """libroadrunner output times on the SBML clock (time 0 = day `t0`), starting at 0."""
    rel = [float(x) for x in ts_np - t0]
    return rel if rel[0] == 0.0 else [0.0, *rel]


def _roadrunner_solve(sbml, names, ts_np, t0, rtol, atol, stiff, values=None):
    import numpy as np
    import roadrunner

    rr = roadrunner.RoadRunner(sbml)
    for v, x in (values or {}).items():
        rr.setValue(v.replace(".", "_"), x)
    rr.reset()  # initial assignments with these parameters
    rr.integrator.stiff = stiff
    rr.integrator.relative_tolerance = rtol
    rr.integrator.absolute_tolerance = atol
    rr.integrator.maximum_num_steps = 1_000_000
    rr.timeCourseSelections = ["time", *names]
    out = np.asarray(rr.simulate(times=_rr_times(ts_np, t0)))[:, 1:]
    return out[-len(ts_np) :]


TARGETS = (1e-3, 1e-4, 1e-5, 1e-6)


def _min_per_setting(rows):
    """One row per (tool, rtol, atol): the fastest of its runs (the sweep and any retimes)."""
    out = {}
    for r in rows:
        k = (r["tool"], r["rtol"], r["atol"])
        if k not in out or r["per_solve_s"] < out[k]["per_solve_s"]:
            out[k] = r
    return list(out.values())


def _picks(rows):
    """{(tool, target): the fastest row of the tool with max rel err <= target and no failed member, or None}."""
    best = {}
    for tool in sorted({r["tool"] for r in rows}):
        for target in TARGETS:
            ok = [
                r for r in rows if r["tool"] == tool and r["max_rel_err"] <= target and not r.get("failed_members", 0)
            ]
            best[tool, target] = min(ok, key=lambda r: r["per_solve_s"]) if ok else None
    return best


def _fastest(best, tools):
    """The fastest of `best[tool]` (rows or None) over `tools`, or None."""
    cands = [best[k] for k in tools if best.get(k)]
    return min(cands, key=lambda r: r["per_solve_s"]) if cands else None


def _matched_accuracy(rows):
    """Speed at matched accuracy: for each error target, the fastest run of each tool whose error is at or below it
    with no failed member (over the whole (rtol, atol) grid), its tolerances, and its speed-up over the faster
    libroadrunner CVODE mode (BDF or Adams) and the faster vmapped diffrax peer (plain `vmap_diffrax` where it ran,
    else `vmap_tsit5` / `vmap_kvaerno5`) for that target."""
    tools = sorted({r["tool"] for r in rows})
    print(
        "\nmatched accuracy (fastest run with max rel err <= target and no failed member; ms per solve (speed-up vs "
        "the faster CVODE mode / the faster vmap peer) at rtol / atol):"
    )
    print("| target error | " + " | ".join(tools) + " | CVODE peer | vmap peer |")
    print("|---|" + "---|" * (len(tools) + 2))
    picks = _picks(rows)
    for target in TARGETS:
        best = {tool: picks[tool, target] for tool in tools}

        cvode = _fastest(best, [k for k in tools if k.startswith("roadrunner_cvode")])
        vmap = _fastest(best, ["vmap_diffrax"] if best.get("vmap_diffrax") else ["vmap_tsit5", "vmap_kvaerno5"])
        cells = []
        for tool in tools:
            r = best[tool]
            if r is None:
                cells.append("not reached")
                continue
            t = r["per_solve_s"]
            ratios = [f"{ref['per_solve_s'] / t:.1f}x" if ref else "-" for ref in (cvode, vmap)]
            cells.append(f"{1e3 * t:.3f} ({' / '.join(ratios)}) at {r['rtol']:.0e} / {r['atol']:.0e}")
        cells += [r["tool"] if r else "-" for r in (cvode, vmap)]
        print(f"| {target:.0e} | " + " | ".join(cells) + " |")


def _plot(rows, path, model, n):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4.5))
    for tool in sorted({r["tool"] for r in rows}):
        # every (rtol, atol) run as a point, the tool's Pareto front (fastest for its error) as a line
        rs = [r for r in rows if r["tool"] == tool and math.isfinite(r["max_rel_err"] * r["per_solve_s"])]
        rs = sorted(rs, key=lambda r: r["per_solve_s"])  # failed runs (infinite error, no time) are not drawn
        front, best_err = [], float("inf")
        for r in rs:
            if r["max_rel_err"] < best_err:
                front.append(r)
                best_err = r["max_rel_err"]
        (line,) = ax.loglog([r["per_solve_s"] * 1e3 for r in front], [r["max_rel_err"] for r in front], "-", label=tool)
        ax.loglog(
            [r["per_solve_s"] * 1e3 for r in rs],
            [r["max_rel_err"] for r in rs],
            "o",
            color=line.get_color(),
            ms=3,
            alpha=0.6,
        )
    ax.set_xlabel("time per solve (ms)")
    ax.set_ylabel("max relative error vs tight reference")
    ax.set_title(
        f"work-precision, {model} workload (batched tools: N = {n})\n"
        "points: every (rtol, atol) run; lines: each tool's fastest for its error",
        fontsize=9,
    )
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
