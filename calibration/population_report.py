"""Calibration report of the shipped human SLE default: typical-patient targets, the Stein 2019 shape of the product,
and a virtual population (inter-individual variability `SLE_IIV`) against the published between-patient figures.

What it does (all on the batched engine, `ck.EnsembleRodas5`):

1. The typical patient of each setting (`fit_human_sle.TARGETS`, calibrated presets): every row with its model
   value, accepted interval and hit, plus the model inputs and the rows the model cannot produce, with reasons.
2. The Stein 2019 multiphasic shape of the 4-1BB murine-scFv product in the oncology-like setting (Tmax, fold
   expansion, contraction and persistence half-lives, F_B) against the typical values and the between-patient
   ranges (typical x/÷ exp(1.96 ω)).
3. A virtual population (`--n`, default 2,000) of the Erlangen regimen: B-cell reappearance (mean ± SD) and
   aplasia, the CRS grade distribution, anti-dsDNA negative and DORIS-like remission at month 3, remission through
   month 24; the same patients with the CD19+BCMA co-infusion product for the Feng 2025 CRS figure. Proportions are
   compared with the 95 % Clopper-Pearson interval of the published k/n.
4. Figures: percentile bands (5-95, 25-75, median) of blood CAR-T, B cells, CRS index, SLEDAI and anti-dsDNA over
   the target data; histograms of B-cell reappearance and CRS grade against the published figures.

5. What sets the tails apart (early B-cell return, no CRS, CRS grade >= 2, relapse): the mean standardised random effect
   of the patients in each subgroup; and the typical patient's responses to CAR-T dose and conditioning.

Outputs: `--out-dir` (default `calibration/results/population/`, not committed): `report.md`, `summary.json`,
`vp_bands.png`, `vp_distributions.png`; and `--summary` (default `calibration/fits/human_sle_report.md`, committed):
the Markdown summary of the numbers with its two figures next to it (`human_sle_report_bands.png`,
`human_sle_report_distributions.png`). `--tune` instead prints the B-reappearance SD over a grid of ω of
`rejection.r_exp` and the CRS grade distribution over a grid of the typical value and ω of `myeloid.k_damp`.

Run: `python calibration/population_report.py` (a few minutes of CPU), `--n 256` for a quick look.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
SUMMARY = os.path.join(HERE, "fits", "human_sle_report.md")
T_END = 730.0
#: Published between-patient figures (rows of human_sle_targets.csv): (target id, k, n).
PROPORTIONS = {
    "mackensen2022_crs_grade1": (3, 5),
    "muller2024_crs_grade1": (10, 15),
    "muller2024_crs_grade2": (1, 15),
    "feng2025_crs_grade1": (13, 15),
    "mackensen2022_dsdna_seroconversion": (5, 5),
    "mackensen2022_doris_3mo": (5, 5),
}
#: Stein 2019 typical values and IIV (omega^2, log scale), Table 1 [R], as half-lives (ln 2 / rate: same omega).
STEIN = {
    "tmax": (9.3, 0.38),
    "fold_expansion": (3900.0, 2.4),
    "contraction_half_life": (math.log(2) / 0.16, 0.91),
    "persistence_half_life": (math.log(2) / 0.0032, 0.86),
    "slow_fraction": (0.0079, 0.80),
}


def _fit_script():
    spec = importlib.util.spec_from_file_location("_fit_human_sle", os.path.join(HERE, "fit_human_sle.py"))
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up while the script is being executed
    spec.loader.exec_module(mod)
    return mod


def clopper_pearson(k: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """Exact binomial (Clopper-Pearson) interval of a proportion k/n."""
    from scipy.stats import beta

    a = 1.0 - level
    lo = 0.0 if k == 0 else float(beta.ppf(a / 2, k, n - k + 1))
    hi = 1.0 if k == n else float(beta.ppf(1 - a / 2, k + 1, n - k))
    return lo, hi


def stein_range(key: str) -> tuple[float, float, float]:
    """Typical value and the between-patient 95 % range (typical x/÷ exp(1.96 ω)) of a Stein 2019 quantity."""
    typ, om2 = STEIN[key]
    f = math.exp(1.96 * math.sqrt(om2))
    return typ, typ / f, typ * f


def typical_tables():
    """Rows (setting, target_id, model, published, interval, hit, unit, note) of the typical-patient readings."""
    import numpy as np

    fh = _fit_script()
    rows = []
    notes = {t.target_id: t.note for t in fh.targets()}
    for kind in ("sle", "oncology"):
        model, _, _ = fh.setting(kind, calibrated=True)
        problem = fh.build_problem(kind, model)
        for tid, pred, value, iv, hit, unit in fh.target_table(problem, problem.z0)[0]:
            rows.append((kind, tid, pred, value, iv, hit, unit, notes[tid]))
    model, _, _ = fh.setting("sle", calibrated=True)
    from carkinetics.models.sle import load_sle_targets

    table = load_sle_targets("human")
    r = table["macallan2005_b_turnover_naive"]
    v = float(model.bcell.d_naive)
    rows.append(
        ("input", r.target_id, v, r.value, (r.value, r.value), bool(np.isclose(v, r.value)), r.unit, notes[r.target_id])
    )
    r = table["macallan2005_b_turnover_total"]
    v = fh.untreated_b_turnover(model)
    lo, hi = r.interval()
    rows.append(("input", r.target_id, v, r.value, (lo, hi), lo <= v <= hi, r.unit, notes[r.target_id]))
    return (
        rows,
        [(t.target_id, t.note) for t in fh.targets() if t.kind == "not_evaluable"],
        [(t.target_id, t.note) for t in fh.targets() if t.kind == "check"],
    )


def stein_numbers():
    """The Stein shape of the calibrated product in the oncology-like setting."""
    import numpy as np

    import carkinetics as ck
    from carkinetics.models.sle import save_times
    from carkinetics.models.sle.metrics import stein_shape

    fh = _fit_script()
    model, regimen, _ = fh.setting("oncology", calibrated=True)
    ts = save_times(400.0)
    sol = ck.simulate(model, regimen, ts, solver=ck.EnsembleRodas5())
    s = {k: float(v) for k, v in stein_shape(sol.ts, sol.observables.car_blood).items()}
    out = {
        "tmax": s["tmax"],
        "fold_expansion": s["fold_expansion"],
        "contraction_half_life": math.log(2.0) / s["contraction_rate"],
        "persistence_half_life": math.log(2.0) / s["persistence_rate"],
        "slow_fraction": s["slow_fraction"],
        "cmax": s["cmax"],
    }
    out["in_range"] = {k: bool(stein_range(k)[1] <= out[k] <= stein_range(k)[2]) for k in STEIN}
    del np
    return out


def _metrics_with_bands(idx):
    """Population read-outs plus trajectories at the save indices `idx` (a coarse grid for the percentile bands)."""
    from carkinetics.models.sle.population import population_metrics

    def metrics(sol):
        out = dict(population_metrics(sol))
        o = sol.observables
        for name in ("car_blood", "b_blood", "crs_grade", "sledai", "anti_dsdna_index"):
            out[f"traj {name}"] = getattr(o, name)[idx]
        return out

    return metrics


def band_index():
    """Indices of the band grid in the save grid `save_times(T_END)`: every save to day 30, then every 5 days."""
    import numpy as np

    from carkinetics.models.sle import save_times

    ts = np.asarray(save_times(T_END))
    return np.flatnonzero((ts <= 30.0) | (np.abs(ts - np.round(ts / 5.0) * 5.0) < 1e-9))


def run_population(model, key, n, *, omega=None, product=None, bands=True):
    import numpy as np

    from carkinetics.models.sle.population import (
        population_metrics,
        simulate_sle_population,
        sle_virtual_population,
    )

    pop = sle_virtual_population(model, key, n, omega=omega)
    res = simulate_sle_population(
        model,
        pop,
        product=product,
        t_end=T_END,
        metrics=_metrics_with_bands(band_index()) if bands else population_metrics,
    )
    out = {k: np.asarray(v) for k, v in res.outputs.items()}
    out["ok"] = np.asarray(res.ok)
    out.update({f"param {k}": np.asarray(v) for k, v in pop.samples.items()})
    return out, res.n_failed


#: Subgroups of the virtual population whose drivers the report names: label -> predicate on the outputs.
SUBGROUPS = {
    "B cells back before day 70": lambda o: (o["B returned"] > 0.5) & (o["B return"] < 70.0),
    "no CRS (grade 0)": lambda o: o["CRS index"] < 1.0,
    "CRS grade >= 2": lambda o: o["CRS index"] >= 2.0,
    "relapse (SLEDAI >= 4) between month 3 and 24": lambda o: o["SLEDAI max d91-730"] >= 4.0,
}


def drivers(out):
    """Which random effects set each subgroup apart: the mean standardised log parameter (z) of the patients in the
    subgroup, per random effect (0 = typical; |z| > 0.5 marks a driver), and the subgroup's size."""
    import numpy as np

    ok = np.isfinite(out["B return"]) & np.isfinite(out["CRS index"])
    names = [k[len("param ") :] for k in out if k.startswith("param ")]
    z = {}
    for n in names:
        x = np.log(out[f"param {n}"][ok])
        z[n] = (x - x.mean()) / x.std()
    sub = {key: v[ok] for key, v in out.items() if np.ndim(v) == 1 and v.shape[0] == ok.shape[0]}
    rows = []
    for label, pred in SUBGROUPS.items():
        mask = pred(sub)
        means = {n: float(z[n][mask].mean()) if mask.any() else float("nan") for n in names}
        rows.append((label, float(mask.mean()), means))
    return names, rows


#: Typical-patient scenarios of the response table: label -> regimen keywords of `flu_cy_regimen`.
RESPONSES = {
    "Flu/Cy + 1e5/kg": {"cells_per_kg": 1e5},
    "Flu/Cy + 1e6/kg (Erlangen)": {"cells_per_kg": 1e6},
    "Flu/Cy + 1e7/kg": {"cells_per_kg": 1e7},
    "Cy 1000 only + 1e6/kg": {"cells_per_kg": 1e6, "flu_mg_per_m2": 0.0},
    "no conditioning + 1e6/kg": {"cells_per_kg": 1e6, "flu_mg_per_m2": 0.0, "cy_mg_per_m2": 0.0},
}


def typical_responses(model):
    """The typical patient's responses to dose and conditioning: CAR-T peak, B aplasia, CRS index, SLEDAI."""
    import numpy as np

    import carkinetics as ck
    from carkinetics.models.sle import flu_cy_regimen, save_times, sle_metrics

    rows = []
    ts = save_times(T_END)
    for label, kw in RESPONSES.items():
        sol = ck.simulate(model, flu_cy_regimen(model, **kw), ts, solver=ck.EnsembleRodas5())
        m = {k: float(v) for k, v in sle_metrics(sol).items()}
        t, s = np.asarray(sol.ts), np.asarray(sol.observables.sledai)
        rows.append(
            {
                "scenario": label,
                "car_peak": 10 ** m["CAR Cmax"],
                "b_aplasia": m["B aplasia"],
                "crs": m["CRS grade"],
                "il6_peak": m["IL-6 peak"],
                "sledai_m6": float(np.interp(180.0, t, s)),
                "sledai_m24": float(np.interp(730.0, t, s)),
            }
        )
    return rows


def population_numbers(out):
    import numpy as np

    ok = np.isfinite(out["B return"]) & np.isfinite(out["CRS index"])
    returned = ok & (out["B returned"] > 0.5)
    ret = out["B return"][returned]
    grade = np.floor(out["CRS index"][ok] + 1e-9).astype(int)
    counts = np.bincount(np.clip(grade, 0, 4), minlength=5)
    n = int(ok.sum())
    return {
        "n": n,
        "n_failed": int((~ok).sum()),
        "b_return_mean": float(np.mean(ret)),
        "b_return_sd": float(np.std(ret, ddof=1)),
        "b_return_median": float(np.median(ret)),
        "b_returned_fraction": float(returned.sum() / n),
        "b_depleted_fraction": float(np.mean(out["B depleted"][ok] > 0.5)),
        "b_aplasia_mean": float(np.mean(out["B aplasia"][ok])),
        "b_aplasia_sd": float(np.std(out["B aplasia"][ok], ddof=1)),
        "crs_grade_fractions": [float(c / n) for c in counts],
        "dsdna_negative_d91": float(np.mean(out["anti-dsDNA index d91"][ok] < 1.0)),
        "doris_d91": float(np.mean(out["SLEDAI d91"][ok] < 1.0)),
        "remission_to_24_months": float(np.mean(out["SLEDAI max d91-730"][ok] < 4.0)),
        "sledai_le2_to_24_months": float(np.mean(out["SLEDAI max d91-730"][ok] <= 2.0)),
        "car_cmax_median": float(np.median(out["CAR Cmax"][ok])),
        "car_cmax_p5_p95": [float(x) for x in np.percentile(out["CAR Cmax"][ok], [5, 95])],
        "car_tmax_median": float(np.median(out["CAR Tmax"][ok])),
    }


def tune(model, key, n):
    """The grids that chose the tuned values: B-reappearance mean/SD over ω of `rejection.r_exp`; the CRS grade
    distribution over the typical value and ω of `myeloid.k_damp` (the DAMP term dominates the CRS drive). The two
    read-outs depend on separate parameters, so the grids are scanned separately."""
    from carkinetics.models.sle.population import iiv_omega

    print("| omega r_exp | B return mean | SD | returned |")
    print("|---|---|---|---|")
    for w_rej in (0.1, 0.25, 0.4, 0.6):
        out, _ = run_population(model, key, n, omega=iiv_omega(rejection__r_exp=w_rej), bands=False)
        s = population_numbers(out)
        print(
            f"| {w_rej} | {s['b_return_mean']:.0f} | {s['b_return_sd']:.0f} | {s['b_returned_fraction']:.2f} |",
            flush=True,
        )
    print("\n| k_damp (cells/(uL*d)) | omega k_damp | CRS 0 | 1 | 2 | >=3 |")
    print("|---|---|---|---|---|---|")
    for k_damp in (9e5, 1.5e6, 2.4e6):
        m = model.replace({"myeloid.k_damp": k_damp})
        for w_damp in (0.3, 0.6, 1.0):
            out, _ = run_population(m, key, n, omega=iiv_omega(myeloid__k_damp=w_damp), bands=False)
            g = population_numbers(out)["crs_grade_fractions"]
            print(
                f"| {k_damp:.3g} | {w_damp} | {g[0]:.2f} | {g[1]:.2f} | {g[2]:.2f} | {sum(g[3:]):.2f} |",
                flush=True,
            )


def plot_bands(out, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    import carkinetics as ck
    from carkinetics.models.sle import save_times
    from carkinetics.models.sle.metrics import B_RETURN_PER_UL

    ts = np.asarray(save_times(T_END))[band_index()]
    ok = np.isfinite(out["B return"])
    fig, axes = plt.subplots(1, 5, figsize=(24, 4.2))
    spec = [
        ("car_blood", "CAR-T (cells/uL)", True, (0, 120)),
        ("b_blood", "B cells (cells/uL)", True, (0, T_END)),
        ("crs_grade", "CRS index (ASTCT-like)", False, (0, 20)),
        ("sledai", "SLEDAI-2K", False, (0, T_END)),
        ("anti_dsdna_index", "anti-dsDNA / cutoff", True, (0, 180)),
    ]
    for ax, (name, label, log, xlim) in zip(axes, spec):
        v = out[f"traj {name}"][ok]
        p = ck.percentile_bands(v, (5, 25, 50, 75, 95))
        floor = 1e-3 if log else -np.inf
        p = np.maximum(p, floor)
        ax.fill_between(ts, p[0], p[4], color="C0", alpha=0.2, label="5-95 %")
        ax.fill_between(ts, p[1], p[3], color="C0", alpha=0.35, label="25-75 %")
        ax.plot(ts, p[2], "C0", lw=1.5, label="median")
        if log:
            ax.set_yscale("log")
        ax.set_xlim(*xlim)
        ax.set_xlabel("days after CAR-T infusion")
        ax.set_title(label, fontsize=10)
        if name == "car_blood":
            ax.add_patch(
                plt.Rectangle(
                    (7.0, 15.0), 7.0, 83.0, fill=False, ec="C3", lw=1.5, label="SLE peak 15-98/uL at day 7-14"
                )
            )
        if name == "b_blood":
            ax.axhline(B_RETURN_PER_UL, color="0.4", ls=":", lw=1)
            ax.errorbar(
                [110.0],
                [B_RETURN_PER_UL],
                xerr=[[32.0], [32.0]],
                fmt="s",
                color="C3",
                label="B reappearance 110 +/- 32 d",
            )
            ax.axhspan(100.0, 500.0, color="C2", alpha=0.1, label="normal range 100-500/uL")
        if name == "crs_grade":
            for g in (1, 2):
                ax.axhline(g, color="0.5", ls=":", lw=1)
        if name == "sledai":
            ax.errorbar([91.0], [1.0], yerr=[[1.0], [1.0]], fmt="s", color="C3", label="3 months: median 0 (0-2)")
            ax.errorbar([0.0], [16.0], yerr=[[8.0], [0.0]], fmt="o", color="C3", label="baseline 16 (8-16)")
        if name == "anti_dsdna_index":
            ax.axhline(1.0, color="C3", ls="--", lw=1, label="positivity cutoff")
            ax.axvline(91.0, color="0.5", ls=":", lw=1)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_distributions(out, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    ok = np.isfinite(out["B return"])
    ret = out["B return"][ok & (out["B returned"] > 0.5)]
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    ax = axes[0]
    ax.hist(ret, bins=40, density=True, color="C0", alpha=0.6, label=f"virtual population (n = {ret.size})")
    x = np.linspace(0, max(300.0, float(np.percentile(ret, 99))), 200)
    ax.plot(
        x,
        np.exp(-0.5 * ((x - 110.0) / 32.0) ** 2) / (32.0 * math.sqrt(2 * math.pi)),
        "C3",
        label="Mackensen 2022: 110 +/- 32 d (normal)",
    )
    ax.set_xlabel("B-cell reappearance (days after infusion)")
    ax.legend(fontsize=8)
    ax = axes[1]
    grade = np.clip(np.floor(out["CRS index"][ok] + 1e-9).astype(int), 0, 4)
    vp = np.bincount(grade, minlength=5) / grade.size
    pub = np.array([4, 10, 1, 0, 0]) / 15.0
    ax.bar(np.arange(5) - 0.2, vp, 0.4, label="virtual population")
    ax.bar(np.arange(5) + 0.2, pub, 0.4, label="Mueller 2024 (n = 15)")
    ax.set_xticks(range(5))
    ax.set_xticklabels(["none", "1", "2", "3", "4"])
    ax.set_xlabel("maximum CRS grade (ASTCT-like)")
    ax.set_ylabel("fraction of patients")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def markdown(typical, not_eval, checks, stein, vp, vp_feng, fit_doc, fit_summary, driver_rows=None, responses=None):
    """The committed summary (Markdown)."""
    lines = [
        '# Human SLE calibration: the shipped default (`load_preset("human")`)',
        "",
        "Written by `calibration/population_report.py` from `fits/human_sle.json` (do not edit by hand). "
        "Fit: `calibration/fit_human_sle.py`; the full report with figures: `calibration/results/` "
        "(not committed).",
        "",
        f"Fit date {fit_doc['provenance'].get('date')}, "
        f"carkinetics {fit_doc['provenance'].get('carkinetics_version')}; "
        "data: "
        + ", ".join(
            f"`{os.path.basename(d['path'])}` (sha256 {d['sha256'][:12]})" for d in fit_doc["provenance"]["data"]
        )
        + ".",
        "",
        "## Estimated parameters (tag F)",
        "",
        "| parameter | fitted | sd (Laplace) | prior centre | tag of the prior | unit |",
        "|---|---|---|---|---|---|",
    ]
    for n, e in fit_doc["parameters"].items():
        lines.append(
            f"| {n} | {e['value']:.4g} | {e.get('sd', float('nan')):.3g} | {e['prior_centre']:.4g} | "
            f"{e['prior_tag']} | {e['unit']} |"
        )
    lines += [
        "",
        "Prior centres of the CAR-T parameters are the stage-1 (oncology-like setting) values; see "
        "`fits/human_oncology_ck.json` for stage 1.",
        "",
        "Identifiability (fit notes): " + fit_doc["provenance"].get("notes", ""),
        "",
    ]
    if fit_summary:
        lines += ["Profiles (stage 2, data objective):", ""] + [f"- {p}" for p in fit_summary["stage2"]["profiles"]]
        lines += ["", "Profiles (stage 1, data objective):", ""] + [f"- {p}" for p in fit_summary["stage1"]["profiles"]]
        lines += [""]
    lines += [
        "## Every human target: typical patient",
        "",
        "| setting | target | model | published | accepted interval | hit | unit |",
        "|---|---|---|---|---|---|---|",
    ]
    for kind, tid, pred, value, (lo, hi), hit, unit, _ in typical:
        lines.append(
            f"| {kind} | {tid} | {pred:.4g} | {value:.4g} | [{lo:.4g}, {hi:.4g}] | {'yes' if hit else 'NO'} | {unit} |"
        )
    lines += ["", "Not evaluable (the reason):", ""] + [f"- `{t}`: {why}" for t, why in not_eval]
    lines += ["", "Algebraic duplicates (checked through the rows they derive from):", ""] + [
        f"- `{t}`: {why}" for t, why in checks
    ]
    lines += [
        "",
        "## Stein 2019 shape of the 4-1BB murine-scFv product (oncology-like setting)",
        "",
        "| quantity | model | Stein typical | between-patient 95 % range | within |",
        "|---|---|---|---|---|",
    ]
    for k in STEIN:
        typ, lo, hi = stein_range(k)
        lines.append(
            f"| {k} | {stein[k]:.4g} | {typ:.4g} | [{lo:.3g}, {hi:.3g}] | {'yes' if stein['in_range'][k] else 'NO'} |"
        )
    lines += [
        "",
        "## Virtual population (Erlangen regimen, MB-CART19.1 1e6/kg; random effects `SLE_IIV`)",
        "",
        f"{vp['n']} patients ({vp['n_failed']} failed solves).",
        "",
        "| figure | virtual population | published |",
        "|---|---|---|",
        f"| B-cell reappearance, mean +/- SD (d) | {vp['b_return_mean']:.0f} +/- {vp['b_return_sd']:.0f} "
        f"(median {vp['b_return_median']:.0f}; {100 * vp['b_returned_fraction']:.1f} % returned by day 730) | "
        "110 +/- 32 (Mackensen 2022, n = 5) |",
        f"| B-cell aplasia, mean +/- SD (d) | {vp['b_aplasia_mean']:.0f} +/- {vp['b_aplasia_sd']:.0f} | "
        "112 +/- 47 (Mueller 2024, n = 15) |",
    ]
    g = vp["crs_grade_fractions"]
    lines.append(
        f"| CRS none / grade 1 / 2 / >=3 | {g[0]:.2f} / {g[1]:.2f} / {g[2]:.2f} / {sum(g[3:]):.2f} | "
        "0.27 / 0.67 / 0.07 / 0 (Mueller 2024, n = 15); 0.40 / 0.60 / 0 / 0 (Mackensen 2022, n = 5) |"
    )
    if vp_feng is not None:
        gf = vp_feng["crs_grade_fractions"]
        lines.append(
            f"| CRS grade 1, CD19+BCMA co-infusion | {gf[1]:.2f} (none {gf[0]:.2f}, >=2 {sum(gf[2:]):.2f}) | "
            "0.867 (Feng 2025, n = 15) |"
        )
    lines += [
        f"| anti-dsDNA negative at month 3 | {vp['dsdna_negative_d91']:.3f} | 5/5 (Mackensen 2022) |",
        f"| DORIS-like remission (SLEDAI < 1) at month 3 | {vp['doris_d91']:.3f} | 5/5 (Mackensen 2022) |",
        f"| remission (SLEDAI < 4) from month 3 through 24 | {vp['remission_to_24_months']:.3f} | 8/8 SLE "
        "(Mueller 2024) |",
        f"| CAR-T peak, median (5-95 %) (cells/uL) | {vp['car_cmax_median']:.0f} ({vp['car_cmax_p5_p95'][0]:.0f}-"
        f"{vp['car_cmax_p5_p95'][1]:.0f}) | 15-98 (B-NHL medians, Kochenderfer 2017) |",
        f"| CAR-T Tmax, median (d) | {vp['car_tmax_median']:.1f} | 7-14 (recalled [M]) |",
        "",
        "Proportions against the 95 % Clopper-Pearson interval of the published k/n:",
        "",
        "| row | published k/n | interval | virtual population | within |",
        "|---|---|---|---|---|",
    ]
    vp_prop = {
        "mackensen2022_crs_grade1": g[1],
        "muller2024_crs_grade1": g[1],
        "muller2024_crs_grade2": g[2],
        "feng2025_crs_grade1": None if vp_feng is None else vp_feng["crs_grade_fractions"][1],
        "mackensen2022_dsdna_seroconversion": vp["dsdna_negative_d91"],
        "mackensen2022_doris_3mo": vp["doris_d91"],
    }
    for tid, (k, n) in PROPORTIONS.items():
        lo, hi = clopper_pearson(k, n)
        v = vp_prop[tid]
        if v is None:
            continue
        lines.append(f"| {tid} | {k}/{n} | [{lo:.3f}, {hi:.3f}] | {v:.3f} | {'yes' if lo <= v <= hi else 'NO'} |")
    if driver_rows is not None:
        names, rows = driver_rows
        lines += [
            "",
            "What sets the tails apart: mean standardised log parameter (z) of the patients in each subgroup, per "
            "random effect (0 = typical; |z| >= 0.5 in bold marks a driver).",
            "",
            "| subgroup | share | " + " | ".join(names) + " |",
            "|---|---|" + "---|" * len(names),
        ]
        for label, share, means in rows:
            if share == 0.0:  # an empty subgroup has no drivers
                lines.append(f"| {label} | 0 | " + " | ".join("no patient" for _ in names) + " |")
                continue
            cells = [f"**{means[n]:+.2f}**" if abs(means[n]) >= 0.5 else f"{means[n]:+.2f}" for n in names]
            lines.append(f"| {label} | {share:.3f} | " + " | ".join(cells) + " |")
    if responses is not None:
        lines += [
            "",
            "## Typical patient: responses to dose and conditioning",
            "",
            "Flu 25 mg/m2 on days -5, -4, -3 and Cy 1,000 mg/m2 on day -3 unless stated; CAR-T on day 0.",
            "",
            "| scenario | CAR-T peak (cells/uL) | B aplasia (d) | CRS index (0-4) | IL-6 peak (pg/mL) | SLEDAI m6 | "
            "SLEDAI m24 |",
            "|---|---|---|---|---|---|---|",
        ]
        for r in responses:
            lines.append(
                f"| {r['scenario']} | {r['car_peak']:.3g} | {r['b_aplasia']:.0f} | {r['crs']:.2f} | "
                f"{r['il6_peak']:.3g} | {r['sledai_m6']:.2f} | {r['sledai_m24']:.2f} |"
            )
    lines += [
        "",
        "Random effects (`carkinetics.models.sle.population.SLE_IIV`):",
        "",
        "| parameter | omega | tag | source |",
        "|---|---|---|---|",
    ]
    from carkinetics.models.sle.population import SLE_IIV

    for r in SLE_IIV:
        lines.append(f"| {r.parameter} | {r.omega:g} | {r.tag} | {r.source} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=2000, help="virtual patients (default 2000)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out-dir", default=os.path.join(HERE, "results", "population"))
    parser.add_argument("--summary", default=SUMMARY, help="the committed Markdown summary ('' to skip)")
    parser.add_argument("--tune", action="store_true", help="print the VP figures over a grid of the tuned omegas")
    args = parser.parse_args(argv)

    import jax

    jax.config.update("jax_enable_x64", True)
    import carkinetics as ck
    from carkinetics.models.sle import fit_path, load_preset

    model = load_preset("human")
    key = jax.random.key(args.seed)
    if args.tune:
        tune(model, key, args.n)
        return 0
    os.makedirs(args.out_dir, exist_ok=True)
    t0 = time.time()
    typical, not_eval, checks = typical_tables()
    print(f"typical-patient tables: {time.time() - t0:.0f} s", flush=True)
    t0 = time.time()
    stein = stein_numbers()
    print(f"Stein shape: {time.time() - t0:.0f} s: {stein}", flush=True)
    t0 = time.time()
    out, _ = run_population(model, key, args.n)
    vp = population_numbers(out)
    print(f"virtual population ({args.n}): {time.time() - t0:.0f} s: {vp}", flush=True)
    t0 = time.time()
    out_f, _ = run_population(model, key, args.n, product="CD19+BCMA co-infusion", bands=False)
    vp_feng = population_numbers(out_f)
    print(f"co-infusion population: {time.time() - t0:.0f} s: {vp_feng['crs_grade_fractions']}", flush=True)
    t0 = time.time()
    responses = typical_responses(model)
    print(f"typical-patient responses: {time.time() - t0:.0f} s", flush=True)
    driver_rows = drivers(out)
    plot_bands(out, os.path.join(args.out_dir, "vp_bands.png"))
    plot_distributions(out, os.path.join(args.out_dir, "vp_distributions.png"))
    if args.summary:  # the committed summary carries its figures next to it
        stem = os.path.splitext(args.summary)[0]
        plot_bands(out, f"{stem}_bands.png")
        plot_distributions(out, f"{stem}_distributions.png")
    fit_doc = ck.read_fit_provenance(fit_path("human_sle.json"))
    summary_path = os.path.join(HERE, "results", "human_sle", "summary.json")
    fit_summary = None
    if os.path.isfile(summary_path):
        with open(summary_path) as fh:
            fit_summary = json.load(fh)
    md = markdown(typical, not_eval, checks, stein, vp, vp_feng, fit_doc, fit_summary, driver_rows, responses)
    with open(os.path.join(args.out_dir, "report.md"), "w") as fh:
        fh.write(md + "\n![bands](vp_bands.png)\n\n![distributions](vp_distributions.png)\n")
    with open(os.path.join(args.out_dir, "summary.json"), "w") as fh:
        json.dump(
            {
                "stein": stein,
                "vp": vp,
                "vp_coinfusion": vp_feng,
                "typical": [
                    {
                        "setting": r[0],
                        "target_id": r[1],
                        "model": r[2],
                        "published": r[3],
                        "interval": list(r[4]),
                        "hit": bool(r[5]),
                        "unit": r[6],
                    }
                    for r in typical
                ],
            },
            fh,
            indent=2,
        )
    if args.summary:
        stem = os.path.basename(os.path.splitext(args.summary)[0])
        with open(args.summary, "w") as fh:
            fh.write(md + f"\n![percentile bands]({stem}_bands.png)\n\n![distributions]({stem}_distributions.png)\n")
        print(f"wrote {args.summary}")
    print(f"wrote {args.out_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
