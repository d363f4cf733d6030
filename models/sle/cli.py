"""The SLE application's plugins for the `carkinetics` command line (declared as entry points in `pyproject.toml`).

- `PRESETS` (group `carkinetics.presets`): the species presets `human`, `mouse_nzbw`, `mouse_mrl_lpr` with their
  standard regimens (Erlangen Flu/Cy + CAR-T for the patient, irradiation + CAR-T for the mice) and the SLE save
  grid, the named regimens `erlangen` and `mouse`, preset files, and the default run (`human`).
- `TranslateCommand` (`carkinetics translate`), `DemoCommand` (`carkinetics demo`) and `TrialCommand`
  (`carkinetics trial`, model-linked dose-escalation trials), group `carkinetics.commands`.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import itertools
import math
import os
import shutil
import sys
import tempfile
from typing import Any

from carkinetics.cli import (
    EXIT_INTERNAL,
    EXIT_OK,
    MAX_MEMBERS,
    Command,
    Context,
    Preset,
    PresetTable,
    StepProgress,
    UserError,
    add_checkpoint_arg,
    add_devices_arg,
    add_distributed_args,
    add_engine_arg,
    finite_number,
    join_processes,
    seed_arg,
    whole_number,
)
from carkinetics.models.sle.demo import DEMO_FILES
from carkinetics.models.sle.metrics import save_times
from carkinetics.models.sle.presets import load_preset, preset_names
from carkinetics.models.sle.regimens import erlangen_regimen, mouse_regimen

#: Most parameter samples of `translate --samples` (each sample solves every coalition again).
MAX_SAMPLES = 100_000

_DESCRIPTIONS = {
    "human": "SLE patient (70 kg, 170 cm), the calibrated default (fits/human_sle.json), under the Erlangen regimen: "
    "Flu/Cy + 1e6 CAR-T cells/kg",
    "mouse_nzbw": "NZB/W F1 lupus mouse: total-body irradiation + 1e6 CAR-T cells",
    "mouse_mrl_lpr": "MRL/lpr lupus mouse: total-body irradiation + 1e6 CAR-T cells",
}


def _preset(name: str) -> Preset:
    """A preset name or file, with the regimen of its species (names starting with "mouse" are mice, as for the
    arms of the translation map)."""
    mouse = os.path.basename(name).startswith("mouse")
    return Preset(
        name=name,
        load=functools.partial(load_preset, name),
        regimen=mouse_regimen if mouse else erlangen_regimen,
        save_times=save_times,
        description=_DESCRIPTIONS.get(name, "preset file"),
    )


PRESETS = PresetTable(
    presets=tuple(_preset(n) for n in preset_names()),
    default="human",
    regimens={"erlangen": erlangen_regimen, "mouse": mouse_regimen},
    from_file=_preset,
)


# ------------------------------------------------------------------------------------------------------------------
# carkinetics translate


class TranslateCommand(Command):
    name = "translate"
    help = "mouse -> human translation map (which mechanisms explain the gap)"
    description = (
        "Swap mechanism groups (the presets' gap ids, gap_groups) between the mouse and human presets, "
        "solve every coalition with the SLE metric set on the SLE save grid (ArmExperiment) and "
        "attribute the difference of each metric to mechanisms (exact Shapley values); then the "
        "scenario knobs. Writes translation_heatmap.png, translation_waterfalls.png, "
        "translation_map.csv/.md, translation_narrative.md and translation_scenarios.csv/.md (each file "
        "written completely or not at all)."
    )
    outputs = (
        "translation_heatmap.png",
        "translation_waterfalls.png",
        "translation_map.csv",
        "translation_map.md",
        "translation_narrative.md",
        "translation_scenarios.csv",
        "translation_scenarios.md",
    )

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument(
            "--mouse", default="mouse_nzbw", help="first (mouse) preset or preset file (default mouse_nzbw)"
        )
        parser.add_argument("--human", default="human", help="second preset or preset file (default human)")
        parser.add_argument(
            "--gaps",
            default=None,
            help="comma-separated gap ids used as mechanism groups, e.g. G1,G3,G4,G6 (default: all; "
            "other differing parameters form 'ungrouped'; cost grows as 2^groups simulations)",
        )
        parser.add_argument(
            "--samples",
            type=whole_number(0, MAX_SAMPLES),
            default=0,
            help="parameter samples for uncertainty intervals (default 0: point estimate)",
        )
        parser.add_argument(
            "--seed",
            type=seed_arg,
            default=0,
            help="seed of the parameter samples, as jax.random.key(seed) (default 0)",
        )
        parser.add_argument(
            "--t-end",
            type=finite_number,
            default=730.0,
            help="horizon of the metrics, days, at least 120 (default 730)",
        )
        parser.add_argument(
            "--batch-size",
            type=whole_number(1, MAX_MEMBERS),
            default=256,
            help="simulations per compiled chunk (default 256; tens on a CPU, more on a GPU)",
        )
        add_engine_arg(parser)
        add_checkpoint_arg(parser)
        parser.add_argument("--no-scenarios", action="store_true", help="skip the scenario-knob table")

    def run(self, args: argparse.Namespace, ctx: Context) -> int:
        import jax

        import carkinetics as ck
        from carkinetics.models.sle.translation import (
            SCENARIOS,
            gap_groups,
            load_arm,
            preset_label,
            sle_scenarios,
            write_scenario_tables,
            write_translation_report,
        )

        for flag, name in (("--mouse", args.mouse), ("--human", args.human)):
            if not name.endswith(".toml") and name not in preset_names():
                raise UserError(
                    f"{flag}: unknown preset {name!r}; built-in presets are {list(preset_names())} "
                    "(or give a .toml path)."
                )
        if preset_label(args.mouse) == preset_label(args.human):
            raise UserError(
                f"--mouse {args.mouse!r} and --human {args.human!r} have the same name "
                f"{preset_label(args.human)!r}, which would head both value columns of the map; compare "
                "two different presets (rename one of the files)."
            )
        if args.t_end < 120.0:
            raise UserError(f"--t-end must be at least 120 days (the metrics read day 90), got {args.t_end}.")
        gaps = None if args.gaps is None else [g.strip() for g in args.gaps.split(",") if g.strip()]
        if gaps is not None and not gaps:
            raise UserError(
                f"--gaps {args.gaps!r} names no gap id; give comma-separated ids such as G1,G3 (or leave "
                "--gaps out for all of them)."
            )
        if gaps is not None and len(set(gaps)) != len(gaps):
            raise UserError(f"--gaps {args.gaps!r} names a gap id more than once.")
        try:  # the groups of the map, as sle_translation_map forms them (checks --gaps before any solve)
            arm_a, _, gaps_a = load_arm(args.mouse)
            arm_b, _, gaps_b = load_arm(args.human)
            groups = gap_groups(gaps_a, gaps_b, only=gaps)
        except ValueError as err:
            raise UserError(f"--gaps/--mouse/--human: {err}") from None
        grouped = {p for g in groups for p in g.parameters}
        n_groups = len(groups) + bool(set(ck.differing_parameters(arm_a, arm_b)) - grouped)
        bs = args.batch_size

        def padded(n: int) -> int:  # chunks are padded to the batch size
            return -(-n // bs) * bs

        n_map = padded(2**n_groups) + (padded(2**n_groups * args.samples) if args.samples else 0)
        n_scen = 2 * len(SCENARIOS)
        # ETA weights in simulations; one compilation costs about as much as ~2,000 SLE simulations on a CPU core
        # (the scenarios reuse the map's compiled chunk except for the per-target-dose arms).
        weights = [n_map + 2000] + ([padded(n_scen) + 2000] if not args.no_scenarios else [])
        out = ctx.out_dir()
        key = jax.random.key(args.seed)
        solver = type(ck.default_solver(arm_a.model, args.engine)).__name__
        prog = ctx.progress(weights)
        prog.step(
            f"translation map {args.mouse} -> {args.human}: {n_groups} mechanism groups, 2^{n_groups} "
            f"coalitions x {1 + args.samples} = {2**n_groups * (1 + args.samples)} simulations "
            f"({args.engine} engine, {solver})"
        )
        try:
            with _staging(out) as stage:  # each file is written there, then renamed into place: never half written
                paths = write_translation_report(
                    stage,
                    a=args.mouse,
                    b=args.human,
                    key=key,
                    n_samples=args.samples,
                    gaps=gaps,
                    t_end=args.t_end,
                    batch_size=bs,
                    scenarios=False,
                    engine=args.engine,
                    progress=not ctx.quiet,
                    checkpoint=args.checkpoint,
                )
                paths = _publish(paths, out)
                prog.advance()
                if not args.no_scenarios:
                    prog.step(f"scenario knobs: {len(SCENARIOS)} scenarios x 2 arms = {n_scen} simulations")
                    rows = sle_scenarios(args.mouse, args.human, t_end=args.t_end, batch_size=bs, engine=args.engine)
                    paths.update(_publish(write_scenario_tables(stage, rows), out))
                    prog.advance()
        except ValueError as err:
            raise UserError(str(err)) from None
        except ck.Interrupted as err:  # resume with the folder given, not the part of it the stopped stage used
            raise ck.Interrupted(err.signum, err.done, err.total, args.checkpoint) from None
        prog.close()
        print(
            f"engine: {args.engine} ({solver}); {n_groups} mechanism groups, {args.samples} parameter samples, "
            f"horizon {args.t_end:g} d"
        )
        for path in paths.values():
            print(f"wrote {path}")
        print(f"output folder: {out}")
        return EXIT_OK


@contextlib.contextmanager
def _staging(out: str):
    """A temporary folder inside `out` (same file system, so a rename is atomic), removed afterwards."""
    stage = tempfile.mkdtemp(prefix=".staging-", dir=out)
    try:
        yield stage
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def _publish(paths: dict[str, str], out: str) -> dict[str, str]:
    """Rename the staged files into `out`; returns their final paths."""
    final = {}
    for kind, path in paths.items():
        final[kind] = os.path.join(out, os.path.basename(path))
        os.replace(path, final[kind])
    return final


# ------------------------------------------------------------------------------------------------------------------
# carkinetics demo


class DemoCommand(Command):
    name = "demo"
    help = "the main job on built-in defaults: figures + self-contained HTML report"
    description = (
        "Simulate the human SLE course under the Erlangen regimen and its mouse counterpart, run a small "
        "Sobol sensitivity sweep and the mouse-to-human translation map, and write figures (PNG), tidy "
        "tables (CSV) and report.html into the output folder. --quick is a smoke run: a 120-day horizon, "
        "no Sobol sweep and a translation map over four mechanism groups."
    )
    default_out = "carkinetics_output"
    outputs = DEMO_FILES

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument(
            "--quick",
            action="store_true",
            help="smoke run: 120-day horizon, no Sobol sweep, four mechanism groups in the map",
        )
        add_engine_arg(parser)

    def run(self, args: argparse.Namespace, ctx: Context) -> int:
        from carkinetics.models.sle.demo import run_demo

        out = ctx.out_dir()
        path, skipped, failed = run_demo(
            out, quick=args.quick, engine=args.engine, progress=None if ctx.quiet else ctx.progress
        )
        for msg in skipped:
            print(f"note: {msg}")
        for msg in failed:
            print(f"error: {msg}", file=sys.stderr)
        print(f"report: {path}")
        print(f"output folder: {out}")
        return EXIT_INTERNAL if failed else EXIT_OK


# ------------------------------------------------------------------------------------------------------------------
# carkinetics trial


def _float_list(flag: str, text: str, example: str = "1e5,3e5,1e6") -> list[float]:
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise UserError(f"{flag}: expected comma-separated numbers such as {example}; got {text!r}.") from None
    if not values:
        raise UserError(f"{flag}: expected at least one number; got {text!r}.")
    return values


class TrialCommand(Command):
    name = "trial"
    help = "model-linked dose-escalation trials (3+3, BOIN, CRM) on virtual SLE patients"
    description = (
        "Draw virtual SLE patients (between-patient variability of baseline activity, B-cell, plasmablast "
        "and anti-dsDNA burden, eGFR, CAR-T expansion, myeloid responsiveness), simulate each patient "
        "once at every dose in one batched solve (Flu/Cy of --flu/--cy, default Erlangen; CAR-T on day 0), "
        "read out DLT (CRS grade >= 3), month-6 remission, B-cell aplasia and seroconversion, then run the design on "
        "patients resampled from that pool. Then (unless --no-analyses) the four review analyses at the dose the "
        "design selects most often: eligibility by baseline severity and burden, Flu/Cy conditioning intensity, "
        "the power of a randomised comparator arm for month-6 remission, and the monitoring schedule. Writes "
        "report.html (key findings, tables and figures), operating_characteristics.csv/.json, dose_outcomes.csv, "
        "patients.csv, selected_dose.png, dose_response.png and, with the analyses, eligibility.png, "
        "conditioning.png, power.png and monitoring.png."
    )
    default_out = "carkinetics_trial"
    outputs = (
        "report.html",
        "operating_characteristics.csv",
        "operating_characteristics.json",
        "dose_outcomes.csv",
        "patients.csv",
        "selected_dose.png",
        "dose_response.png",
        "eligibility.png",
        "conditioning.png",
        "power.png",
        "monitoring.png",
    )

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--preset", default="human", help="SLE preset or preset file (default human)")
        parser.add_argument(
            "--product",
            default=None,
            help="CAR-T product name (see carkinetics.models.sle.PRODUCTS; default: the preset's)",
        )
        parser.add_argument(
            "--doses",
            default="1e5,3e5,1e6,3e6",
            help="strictly increasing CAR-T doses, cells/kg, comma-separated (default 1e5,3e5,1e6,3e6)",
        )
        parser.add_argument("--design", choices=("boin", "crm", "3+3"), default="boin", help="design (default boin)")
        parser.add_argument("--target", type=float, default=0.3, help="target DLT rate in (0, 1) (default 0.3)")
        parser.add_argument(
            "--skeleton",
            default=None,
            help="CRM skeleton: comma-separated prior DLT probabilities in (0, 1), strictly increasing, one per "
            "dose (required for crm, e.g. 0.05,0.12,0.25,0.4 for four doses)",
        )
        parser.add_argument(
            "--flu",
            type=finite_number,
            default=25.0,
            metavar="MG_M2_PER_DAY",
            help="fludarabine of the conditioning, mg/m² per day on days -5, -4, -3 (default 25, Erlangen; 0: none)",
        )
        parser.add_argument(
            "--cy",
            type=finite_number,
            default=1000.0,
            metavar="MG_M2",
            help="cyclophosphamide of the conditioning, mg/m² on day -3 (default 1000, Erlangen; 0: none)",
        )
        parser.add_argument("--trials", type=int, default=1000, help="virtual trials (default 1000)")
        parser.add_argument("--cohort-size", type=int, default=3, help="patients per cohort (default 3)")
        parser.add_argument("--cohorts", type=int, default=10, help="maximum cohorts per trial (default 10)")
        parser.add_argument(
            "--patients-per-dose",
            type=int,
            default=100,
            help="virtual patients simulated at every dose (the resampled pool; default 100)",
        )
        parser.add_argument("--key", type=int, default=0, help="seed, as jax.random.key(KEY) (default 0)")
        parser.add_argument("--t-end", type=float, default=200.0, help="horizon, days, at least 181 (default 200)")
        parser.add_argument(
            "--analyses",
            action=argparse.BooleanOptionalAction,
            default=True,
            help="run the four review analyses (eligibility, conditioning, comparator arm, monitoring) for the "
            "report (default: on; --no-analyses for the trial alone)",
        )
        parser.add_argument(
            "--monitoring-days",
            type=finite_number,
            default=365.0,
            help="horizon of the monitoring analysis, days, at least 181 (default 365)",
        )
        add_engine_arg(parser)
        parser.add_argument(
            "--chunk-size",
            type=whole_number(1, MAX_MEMBERS),
            default=None,
            help="courses per compiled chunk, split over the devices; each finished chunk goes to --checkpoint "
            "(default: every course in one chunk)",
        )
        add_devices_arg(parser, what="each chunk of courses")
        add_checkpoint_arg(parser)
        add_distributed_args(parser)

    def host_devices(self, args: argparse.Namespace) -> str | int | None:
        return args.devices

    def _design(self, args: argparse.Namespace, n_doses: int) -> Any:
        import numpy as np

        import carkinetics.trials as ct

        if not (math.isfinite(args.target) and 0.0 < args.target < 1.0):
            raise UserError(f"--target must be a probability strictly between 0 and 1, got {args.target}.")
        if args.skeleton is not None and args.design != "crm":
            raise UserError(f"--skeleton is used only by --design crm, got --design {args.design}.")
        if args.design == "3+3":
            if args.cohort_size != 3:
                raise UserError(f"--design 3+3 needs --cohort-size 3, got {args.cohort_size}.")
            return ct.ThreePlusThree()
        if args.design == "boin":
            return ct.BOIN(target=args.target)
        if args.skeleton is None:
            raise UserError("--design crm needs --skeleton (one prior DLT probability per dose).")
        skeleton = _float_list("--skeleton", args.skeleton, "0.05,0.12,0.25,0.4")
        if len(skeleton) != n_doses or any(not 0.0 < s < 1.0 for s in skeleton):
            raise UserError(
                f"--skeleton must give {n_doses} probabilities strictly between 0 and 1 (one per dose), got {skeleton}."
            )
        if any(b <= a for a, b in itertools.pairwise(skeleton)):
            raise UserError(
                f"--skeleton must increase strictly (prior DLT probability rises with dose), got {skeleton}."
            )
        try:
            return ct.CRM(target=args.target, skeleton=np.asarray(skeleton))
        except ValueError as err:
            raise UserError(f"--skeleton: {err}") from None

    def run(self, args: argparse.Namespace, ctx: Context) -> int:
        import csv
        import json

        import jax
        import numpy as np

        from carkinetics.models.sle.products import PRODUCTS
        from carkinetics.models.sle.trial_report import modal_dose_index, review_analyses, write_trial_report
        from carkinetics.models.sle.trials import (
            DEFAULT_CONDITIONING,
            run_model_trial,
            simulate_dose_outcomes,
            trial_population,
        )

        # every process of a multi-process run simulates its share of the pool; only process 0 writes
        setting, devices = join_processes(args, args.devices)
        doses = _float_list("--doses", args.doses)
        if len(doses) < 2:
            raise UserError(f"--doses must give at least two dose levels, got {doses}.")
        if any(not (math.isfinite(d) and d > 0.0) for d in doses):
            raise UserError(f"--doses must be finite positive cells/kg, got {doses}.")
        if any(b <= a for a, b in itertools.pairwise(doses)):
            raise UserError(f"--doses must increase strictly (a monotone dose ladder, lowest first), got {doses}.")
        for flag, value in (
            ("--trials", args.trials),
            ("--cohort-size", args.cohort_size),
            ("--cohorts", args.cohorts),
            ("--patients-per-dose", args.patients_per_dose),
        ):
            if value < 1:
                raise UserError(f"{flag} must be a positive integer, got {value}.")
        if not (math.isfinite(args.t_end) and args.t_end >= 181.0):
            raise UserError(f"--t-end must be at least 181 days (the month-6 read-out is day 180), got {args.t_end}.")
        if args.monitoring_days < 181.0:
            raise UserError(
                f"--monitoring-days must be at least 181 days (the month-6 read-out is day 180), got "
                f"{args.monitoring_days}."
            )
        for flag, value in (("--flu", args.flu), ("--cy", args.cy)):
            if value < 0.0:
                raise UserError(f"{flag} must be a non-negative dose in mg/m² (0: leave the drug out), got {value}.")
        if not args.preset.endswith(".toml") and args.preset not in preset_names():
            raise UserError(
                f"--preset: unknown preset {args.preset!r}; built-in presets are {list(preset_names())} "
                "(or give a .toml path)."
            )
        if args.product is not None and args.product not in PRODUCTS:
            raise UserError(f"--product: unknown product {args.product!r}; products are {sorted(PRODUCTS)}.")
        design = self._design(args, len(doses))

        writer = setting.process_id == 0
        out = ctx.out_dir() if writer else args.out
        key = jax.random.key(args.key)
        k_pop, k_trials = jax.random.split(key)
        k_analyses = jax.random.fold_in(key, 1)  # the pool and trials keep the keys they had without the analyses
        n_sim = args.patients_per_dose * len(doses)
        n_reg = len(DEFAULT_CONDITIONING) + ((args.flu, args.cy) not in DEFAULT_CONDITIONING.values())
        # ETA weights in simulations; one compilation costs about as much as ~2,000 SLE simulations on a CPU core
        weights = [n_sim + 2000, 200]
        if args.analyses:
            weights.append(args.patients_per_dose * (n_reg + 2) + 4000)
        weights.append(50)
        prog = ctx.progress(weights) if writer else StepProgress(weights, ctx.command, enabled=False)
        prog.step(
            f"simulating {args.patients_per_dose} virtual patients x {len(doses)} doses = {n_sim} courses "
            f"(Flu {args.flu:g} mg/m² x 3, Cy {args.cy:g} mg/m²; {args.engine} engine)"
        )
        analyses = None
        try:
            model = load_preset(args.preset)
            pop = trial_population(model, k_pop, args.patients_per_dose)
            pool = simulate_dose_outcomes(
                model,
                doses,
                product=args.product,
                population=pop,
                flu_mg_per_m2=args.flu,
                cy_mg_per_m2=args.cy,
                t_end=args.t_end,
                engine=args.engine,
                devices=devices if devices > 1 else None,
                chunk_size=args.chunk_size,
                checkpoint=args.checkpoint,
            )
            prog.advance()
            prog.step(f"{args.trials} virtual {type(design).name} trials on the resampled pool")
            trial = run_model_trial(
                pool, design, n_trials=args.trials, key=k_trials, cohort_size=args.cohort_size, n_cohorts=args.cohorts
            )
            prog.advance()
            if args.analyses:
                best = modal_dose_index(trial)
                prog.step(
                    f"review analyses at {doses[best]:g} cells/kg: eligibility, conditioning ({n_reg} regimens x "
                    f"{args.patients_per_dose} patients), comparator arm, monitoring ({args.patients_per_dose} "
                    f"patients, {args.monitoring_days:g} days)"
                )
                analyses = review_analyses(
                    model,
                    pool,
                    pop,
                    key=k_analyses,
                    dose_index=best,
                    product=args.product,
                    flu_mg_per_m2=args.flu,
                    cy_mg_per_m2=args.cy,
                    t_end=args.t_end,
                    monitoring_t_end=args.monitoring_days,
                    engine=args.engine,
                )
                prog.advance()
        except ValueError as err:
            raise UserError(str(err)) from None
        if not writer:  # every process ran the sweeps above (their members split over all processes)
            return EXIT_OK
        prog.step("tables and figures")
        oc = trial.oc
        paths = {}
        paths["oc_csv"] = os.path.join(out, "operating_characteristics.csv")
        sel = np.asarray(oc.selection_probability)
        with open(paths["oc_csv"], "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["dose_index", "dose_cells_per_kg", "pool_dlt_rate", "p_selected", "mean_patients", "mean_dlts"])
            for d, dose in enumerate(doses):
                w.writerow(
                    [d, dose, float(oc.true_dlt[d]), float(sel[d]), float(oc.mean_patients[d]), float(oc.mean_dlts[d])]
                )
            w.writerow(["none", "", "", float(sel[-1]), "", ""])
        paths["oc_json"] = os.path.join(out, "operating_characteristics.json")
        with open(paths["oc_json"], "w") as fh:
            json.dump(
                {
                    "design": oc.design,
                    "target": args.target,
                    "n_trials": oc.n_trials,
                    "cohort_size": args.cohort_size,
                    "n_cohorts": args.cohorts,
                    "key": args.key,
                    "preset": args.preset,
                    "product": pool.product,
                    "doses_cells_per_kg": doses,
                    "patients_per_dose": pool.n_patients,
                    "patients_failed": pool.n_failed,
                    "resampling": "patients simulated once per dose; each trial resamples them with replacement",
                    "pool_dlt_rate": np.asarray(oc.true_dlt).tolist(),
                    "selection_probability": sel.tolist(),
                    "mean_patients": np.asarray(oc.mean_patients).tolist(),
                    "mean_dlts": np.asarray(oc.mean_dlts).tolist(),
                    "early_stop_probability": float(oc.early_stop_probability),
                    "mean_total_patients": float(oc.mean_total_patients),
                    "flu_mg_per_m2_per_day": args.flu,
                    "cy_mg_per_m2": args.cy,
                    "remission_at_selected_dose": trial.remission_at_selected,
                    "pool_rates": {k: v.tolist() for k, v in trial.rates.items()},
                },
                fh,
                indent=2,
            )
        rows = pool.table()
        paths["doses_csv"] = os.path.join(out, "dose_outcomes.csv")
        with open(paths["doses_csv"], "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)
        paths["patients_csv"] = os.path.join(out, "patients.csv")
        with open(paths["patients_csv"], "w", newline="") as fh:
            w = csv.writer(fh)
            covs = sorted(pool.covariates)
            ends = list(pool.endpoints)
            w.writerow(["patient", "dose_cells_per_kg", *covs, *ends, "dlt", "remission_m6"])
            for d, dose in enumerate(doses):
                for i in range(pool.n_patients):
                    w.writerow(
                        [
                            i,
                            dose,
                            *(float(pool.covariates[c][i]) for c in covs),
                            *(float(pool.endpoints[e][d, i]) for e in ends),
                            int(pool.dlt[d, i]),
                            int(pool.remission[d, i]),
                        ]
                    )
        settings = {
            "preset": args.preset,
            "product": pool.product,
            "conditioning": f"fludarabine {args.flu:g} mg/m² on days -5, -4, -3; cyclophosphamide {args.cy:g} mg/m² "
            "on day -3",
            "target DLT rate": args.target if args.design != "3+3" else "(3+3 has none)",
            **({"CRM skeleton": args.skeleton} if args.design == "crm" else {}),
            "cohorts x cohort size": f"{args.cohorts} x {args.cohort_size}",
            "horizon (days)": args.t_end,
            "seed": f"jax.random.key({args.key})",
        }
        command = ["carkinetics", "trial", "--preset", args.preset]
        command += [] if args.product is None else ["--product", args.product]
        command += ["--doses", args.doses.replace(" ", ""), "--design", args.design]
        command += [] if args.design == "3+3" else ["--target", f"{args.target:g}"]
        command += [] if args.skeleton is None else ["--skeleton", args.skeleton]
        command += ["--flu", f"{args.flu:g}", "--cy", f"{args.cy:g}", "--trials", str(args.trials)]
        command += ["--cohort-size", str(args.cohort_size), "--cohorts", str(args.cohorts)]
        command += ["--patients-per-dose", str(args.patients_per_dose), "--key", str(args.key)]
        command += ["--t-end", f"{args.t_end:g}", "--monitoring-days", f"{args.monitoring_days:g}"]
        command += [] if args.analyses else ["--no-analyses"]
        paths.update(
            write_trial_report(
                os.path.join(out, "report.html"),
                pool=pool,
                trial=trial,
                fig_dir=out,
                analyses=analyses,
                settings=settings,
                analyses_note="The review analyses were left out of this run (--no-analyses).",
                command=command,
            )
        )
        prog.advance()
        prog.close()
        print(oc.summary())
        print(
            f"pool: {pool.n_patients} virtual patients per dose ({pool.n_failed} failed); remission at the "
            f"selected dose {trial.remission_at_selected:.3f}"
        )
        for path in paths.values():
            print(f"wrote {path}")
        print(f"output folder: {out}")
        return EXIT_OK
