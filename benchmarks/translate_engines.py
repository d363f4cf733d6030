"""End-to-end engine comparison of the CLI: `carkinetics translate --engine ensemble` vs `--engine vmap`.

Runs the command-line translation map (mouse -> human mechanism attribution, `carkinetics translate`) twice per
repeat with identical arguments, once with `--engine ensemble` (the batched solver) and once with `--engine vmap`
(`jax.vmap` of the per-member diffrax engine), each in a fresh process and its own `--out` folder. It records the
wall time of each command (`time.perf_counter` around `subprocess.run`: process start, imports, compilation,
solves and the written report, i.e. what a user waits for), the minimum over `--repeats` (the engines alternate
order between repeats), the ratio vmap / ensemble, and checks that the two translation tables
(`translation_map.csv` in each `--out` folder) agree:

- the same rows (metric, group) and the same non-numeric cells (unit, gap ids, flags, parameter lists);
- every numeric cell within `--tol` (default 1e-3) of the metric's scale, max(|value in the first preset|,
  |value in the second preset|, |total gap|) of its row; the `share` column (a fraction) within `--tol` absolutely.

The engines agree to the solver tolerance (rtol 1e-6 on each trajectory), so 1e-3 of a metric's scale leaves room for
metrics read off a grid (crossing times, peaks) without hiding a real disagreement.

The `--engine` flag belongs to the rebuilt CLI. If the installed `carkinetics translate` does not offer it, the
script stops with exit status 2 and says so (the benchmark is pending until the CLI has it). Exit status 1: the
tables disagree or a command failed.

Examples:

    python benchmarks/translate_engines.py                      # default translation (all gap groups)
    python benchmarks/translate_engines.py --quick              # no scenario table, horizon 180 d
    python benchmarks/translate_engines.py --repeats 3 --json benchmarks/results/translate_engines.json \\
        -- --mouse mouse_nzbw --human human --gaps G1,G3,G4,G6
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time

ENGINES = ("ensemble", "vmap")
DEFAULT_ARGS = ["--mouse", "mouse_nzbw", "--human", "human", "--samples", "0", "--quiet"]
QUICK_ARGS = ["--no-scenarios", "--t-end", "180"]
#: Columns of `TranslationMap.rows()` that are not the two presets' metric values.
KNOWN_COLUMNS = {
    "metric",
    "unit",
    "group",
    "gap",
    "total_gap",
    "shapley",
    "share",
    "forward_swap",
    "reverse_swap",
    "lo",
    "hi",
    "rests_on_unverified",
    "unverified_tags",
    "unverified_parameters",
}
EXIT_PENDING = 2


def cli_command() -> list[str]:
    """The `carkinetics` console script of this Python environment (else on PATH, else `python -c`)."""
    here = os.path.join(os.path.dirname(sys.executable), "carkinetics")
    if os.path.isfile(here) and os.access(here, os.X_OK):
        return [here]
    found = shutil.which("carkinetics")
    if found:
        return [found]
    return [sys.executable, "-c", "import sys; from carkinetics.cli import main; sys.exit(main())"]


def check_engine_flag(cmd: list[str]) -> None:
    """Stop with a clear message (exit 2) unless `carkinetics translate` offers `--engine`."""
    try:
        r = subprocess.run([*cmd, "translate", "--help"], capture_output=True, text=True, timeout=300, check=False)
    except (OSError, subprocess.TimeoutExpired) as e:
        _pending(f"could not run `{shlex.join([*cmd, 'translate', '--help'])}`: {type(e).__name__}: {e}")
    text = r.stdout + r.stderr
    if r.returncode != 0:
        _pending(f"`{shlex.join([*cmd, 'translate', '--help'])}` failed (exit {r.returncode}):\n{text[-2000:]}")
    if "--engine" not in text:
        _pending(
            "the installed `carkinetics translate` has no `--engine` option (the CLI is being rebuilt and will "
            "add `--engine ensemble|vmap`); this benchmark is pending until it does."
        )


def _pending(message: str) -> None:
    print(f"translate_engines: PENDING: {message}", file=sys.stderr)
    raise SystemExit(EXIT_PENDING)


def run_translate(cmd: list[str], engine: str, out: str, extra: list[str]) -> tuple[float, subprocess.CompletedProcess]:
    argv = [*cmd, "translate", *extra, "--engine", engine, "--out", out]
    print(f"$ {shlex.join(argv)}", flush=True)
    t = time.perf_counter()
    r = subprocess.run(argv, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - t
    if r.returncode != 0:
        print(r.stdout[-3000:] + r.stderr[-3000:], file=sys.stderr)
        raise SystemExit(
            f"translate_engines: `carkinetics translate --engine {engine}` failed with exit status "
            f"{r.returncode} after {wall:.1f} s (output above)."
        )
    print(f"  {engine}: {wall:.1f} s", flush=True)
    return wall, r


def _number(x: str) -> float | None:
    try:
        return float(x)
    except (TypeError, ValueError):
        return None


def read_table(path: str) -> dict[tuple[str, str], dict[str, str]]:
    if not os.path.isfile(path):
        raise SystemExit(f"translate_engines: {path} was not written.")
    with open(path, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    table = {}
    for row in rows:
        key = (row.get("metric", ""), row.get("group", ""))
        if key in table:
            raise SystemExit(f"translate_engines: {path} has the row {key} twice.")
        table[key] = row
    return table


def compare(a: dict, b: dict, tol: float) -> tuple[bool, list[str], dict[str, float]]:
    """Whether tables `a` (ensemble) and `b` (vmap) agree; the problems found; the largest scaled difference per
    numeric column."""
    problems = []
    if set(a) != set(b):
        problems.append(f"different rows: only ensemble {sorted(set(a) - set(b))}, only vmap {sorted(set(b) - set(a))}")
    worst: dict[str, float] = {}
    for key in sorted(set(a) & set(b)):
        ra, rb = a[key], b[key]
        if set(ra) != set(rb):
            problems.append(f"{key}: different columns {sorted(set(ra) ^ set(rb))}")
            continue
        value_cols = [c for c in ra if c not in KNOWN_COLUMNS and _number(ra[c]) is not None]
        scale = max(
            [abs(_number(r[c]) or 0.0) for r in (ra, rb) for c in [*value_cols, "total_gap"] if c in r] + [1e-300]
        )
        for col in ra:
            xa, xb = _number(ra[col]), _number(rb[col])
            if xa is None or xb is None or ra[col].strip().lower() in ("true", "false"):
                if ra[col] != rb[col]:
                    problems.append(f"{key} {col}: {ra[col]!r} (ensemble) != {rb[col]!r} (vmap)")
                continue
            if math.isnan(xa) or math.isnan(xb):
                if not (math.isnan(xa) and math.isnan(xb)):
                    problems.append(f"{key} {col}: {xa} (ensemble) vs {xb} (vmap): NaN in one table only")
                continue
            d = abs(xa - xb) / (1.0 if col == "share" else scale)
            worst[col] = max(worst.get(col, 0.0), d)
            if not d <= tol:
                problems.append(
                    f"{key} {col}: {xa:.6g} (ensemble) vs {xb:.6g} (vmap), difference {d:.2e} of "
                    f"{'1 (share)' if col == 'share' else f'the metric scale {scale:.3g}'} > {tol:g}"
                )
    return not problems, problems, worst


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n")[0],
        epilog="Arguments after `--` replace the default translate arguments "
        f"({shlex.join(DEFAULT_ARGS)}); never pass --engine or --out there.",
    )
    p.add_argument("--repeats", type=int, default=1, help="runs per engine (minimum wall time reported)")
    p.add_argument("--tol", type=float, default=1e-3, help="agreement tolerance (relative to each metric's scale)")
    p.add_argument("--quick", action="store_true", help=f"add {shlex.join(QUICK_ARGS)} to the translate arguments")
    p.add_argument("--out-root", default=None, help="folder for the --out folders (default: a temporary folder)")
    p.add_argument("--json", default=None, help="write times, ratio and comparison to this JSON file")
    p.add_argument("translate_args", nargs="*", help="arguments for `carkinetics translate` (after `--`)")
    args = p.parse_args(argv)
    extra = list(args.translate_args) or list(DEFAULT_ARGS)
    if any(a in ("--engine", "--out") or a.startswith(("--engine=", "--out=")) for a in extra):
        p.error("--engine and --out are set by this script")
    if args.quick:
        extra += QUICK_ARGS
    if args.repeats < 1 or not args.tol > 0:
        p.error("--repeats must be >= 1 and --tol positive")

    cmd = cli_command()
    check_engine_flag(cmd)
    root = args.out_root or tempfile.mkdtemp(prefix="translate_engines_")
    os.makedirs(root, exist_ok=True)
    times: dict[str, list[float]] = {e: [] for e in ENGINES}
    outs = {}
    for k in range(args.repeats):
        for engine in ENGINES if k % 2 == 0 else ENGINES[::-1]:
            out = os.path.join(root, f"{engine}_{k}")
            wall, _ = run_translate(cmd, engine, out, extra)
            times[engine].append(wall)
            outs.setdefault(engine, out)
    tables = {e: read_table(os.path.join(outs[e], "translation_map.csv")) for e in ENGINES}
    ok, problems, worst = compare(tables["ensemble"], tables["vmap"], args.tol)
    best = {e: min(t) for e, t in times.items()}
    ratio = best["vmap"] / best["ensemble"]
    print(f"\ncarkinetics translate {shlex.join(extra)}")
    print(f"| engine | wall time (s), min of {args.repeats} | all runs (s) |\n|---|---|---|")
    for e in ENGINES:
        print(f"| {e} | {best[e]:.1f} | {', '.join(f'{t:.1f}' for t in times[e])} |")
    print(f"vmap / ensemble: {ratio:.2f}x")
    print(
        f"translation_map.csv: {len(tables['ensemble'])} rows; largest difference per numeric column "
        f"(relative to the metric's scale; share absolute): "
        + ", ".join(f"{c} {d:.1e}" for c, d in sorted(worst.items()))
    )
    if ok:
        print(f"tables agree to {args.tol:g}")
    else:
        print(
            f"tables DISAGREE (tolerance {args.tol:g}):\n  "
            + "\n  ".join(problems[:30])
            + (f"\n  ... {len(problems) - 30} more" if len(problems) > 30 else "")
        )
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(
                {
                    "date": time.strftime("%Y-%m-%d"),
                    "command": [*cmd, "translate", *extra],
                    "wall_s": times,
                    "best_s": best,
                    "ratio_vmap_over_ensemble": ratio,
                    "tol": args.tol,
                    "agree": ok,
                    "max_scaled_diff": worst,
                    "problems": problems,
                    "out": outs,
                },
                fh,
                indent=1,
            )
        print(f"wrote {args.json}")
    print(f"outputs in {root}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
