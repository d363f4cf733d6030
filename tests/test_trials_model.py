"""Model-linked virtual trials on the SLE model (`carkinetics.models.sle.trials`): outcomes per dose from one batched
solve, designs on resampled patients, the four review analyses and the `carkinetics trial` command.

Every default test shares one compiled ensemble solve: each batch has 24 members (6 patients x 4 doses, 6 patients x
4 regimens, 24 patients x 1 dose) on the same 200-day save grid.
"""

import csv
import json
import math

import jax
import numpy as np
import pytest
import scipy.stats

import carkinetics.trials as ct
from carkinetics import cli
from carkinetics.models.sle import trials as st

DOSES = [1e5, 1e6, 3e6, 1e7]
T_END = 200.0
N_PATIENTS = 6
N_TRIALS = 4000  # one compiled trial simulation shared by the tests and the CLI run


@pytest.fixture(scope="module")
def pool():
    return st.simulate_dose_outcomes("human", DOSES, n_patients=N_PATIENTS, key=jax.random.key(0), t_end=T_END)


# ---- outcomes per dose ---------------------------------------------------------------------------------------------


def test_every_course_solves_and_endpoints_have_one_row_per_dose(pool):
    assert pool.n_failed == 0 and pool.n_patients == N_PATIENTS
    for name in ("CRS grade", "IL-6 peak", "CAR Cmax", "SLEDAI m6", "B cells d28", "lymphocytes d28"):
        assert pool.endpoints[name].shape == (len(DOSES), N_PATIENTS)
        assert np.isfinite(pool.endpoints[name]).all(), name
    # the covariates are the patients' own: identical at every dose (same patients), baseline titre included
    assert np.array_equal(
        pool.endpoints["anti-dsDNA index 0"],
        np.broadcast_to(pool.endpoints["anti-dsDNA index 0"][0], (len(DOSES), N_PATIENTS)),
    )
    # baseline index = anti_dsdna0 / cutoff (15 U/mL), to the solver tolerance
    np.testing.assert_allclose(
        pool.endpoints["anti-dsDNA index 0"][0], pool.covariates["humoral.anti_dsdna0"] / 15.0, rtol=1e-9
    )
    np.testing.assert_allclose(pool.endpoints["SLEDAI 0"][0], pool.covariates["disease.sledai0"], rtol=1e-12)


def test_dlt_probability_rises_with_dose_over_four_levels(pool):
    grade, il6 = pool.endpoints["CRS grade"], pool.endpoints["IL-6 peak"]
    # each patient's cytokine release rises from the lowest to the highest dose (the model's mechanism: more
    # effectors, more kill flux); between neighbouring low doses a patient with little antigen may dip by < 1 %
    # (saturating expansion of the calibrated model: 0.35 % in this pool) ...
    assert np.all(il6[-1] > il6[0] * (1.0 + 1e-3)), il6
    assert np.all(il6[1:] >= il6[:-1] * (1.0 - 1e-2)), il6
    # ... their CRS index (a step function of IL-6: fever, then the hypotension ramps) does not fall by more than a
    # few hundredths with dose, the mean index does not fall, and no patient's DLT flag ever falls ...
    assert np.all(grade[1:] >= grade[:-1] - 0.05), grade
    assert grade[-1].mean() >= grade[0].mean(), grade
    assert not np.any(pool.dlt[:-1] & ~pool.dlt[1:])
    # ... so the pool's DLT rate (CRS grade >= 3) is non-decreasing with dose (zero at every dose in the 250-patient
    # slow test, as in the SLE dose-escalation cohorts)
    dlt = pool.rates()["DLT"]
    assert np.all(np.diff(dlt) >= 0.0), dlt
    np.testing.assert_array_equal(dlt, (grade >= 3.0).mean(axis=1))


def test_boin_on_resampled_patients_matches_bernoulli_patients_with_the_pool_rates(pool, getkey):
    # Each enrolment draws a new pool member, so a patient at dose d has a DLT with probability equal to the pool's
    # fraction at d, independently of other enrolments: resampling has the operating characteristics of Bernoulli
    # patients with those probabilities (within Monte Carlo error, 4 standard errors).
    n = N_TRIALS
    trial = st.run_model_trial(pool, ct.BOIN(target=0.3), n_trials=n, key=getkey())
    np.testing.assert_allclose(trial.oc.true_dlt, pool.rates()["DLT"], atol=1e-12)
    ref = ct.operating_characteristics(
        ct.BOIN(target=0.3), true_dlt=pool.rates()["DLT"], n_trials=n, cohort_size=3, n_cohorts=10, key=getkey()
    )
    p, q = np.asarray(trial.oc.selection_probability), np.asarray(ref.selection_probability)
    se = np.sqrt((p * (1 - p) + q * (1 - q)) / n)
    assert np.all(np.abs(p - q) <= 4.0 * se + 1e-12), (p, q)
    # mean sample size: a trial enrols 3-30 patients (sd <= 13.5), so 4 standard errors of the difference of two
    # means over n trials are at most 4 x 13.5 x sqrt(2 / n)
    assert abs(float(trial.oc.mean_total_patients) - float(ref.mean_total_patients)) <= 4 * 13.5 * math.sqrt(2 / n)
    sel = p[:-1]
    expected = float(np.dot(sel, pool.rates()["remission m6"]) / sel.sum())
    assert math.isclose(trial.remission_at_selected, expected, rel_tol=1e-12)
    # reproducible from the key
    again = st.run_model_trial(pool, ct.BOIN(target=0.3), n_trials=n, key=jax.random.key(0))
    first = st.run_model_trial(pool, ct.BOIN(target=0.3), n_trials=n, key=jax.random.key(0))
    np.testing.assert_array_equal(again.oc.selection_probability, first.oc.selection_probability)


# ---- review analysis 1: eligibility ----------------------------------------------------------------------------------


def test_eligibility_groups_partition_the_pool_and_average_to_its_rates(pool):
    res = st.eligibility_analysis(pool, n_groups=2)
    assert res.covariates == tuple(st.COVARIATES)
    assert res.dlt.shape == res.remission.shape == (len(st.COVARIATES), 2, len(DOSES))
    np.testing.assert_array_equal(res.n.sum(axis=1), N_PATIENTS)
    w = res.n[:, :, None] / N_PATIENTS
    np.testing.assert_allclose(
        (w * res.dlt).sum(axis=1), np.broadcast_to(pool.rates()["DLT"], (4, len(DOSES))), atol=1e-12
    )
    np.testing.assert_allclose(
        (w * res.remission).sum(axis=1), np.broadcast_to(pool.rates()["remission m6"], (4, len(DOSES))), atol=1e-12
    )
    # CRS rises with antigen burden: the higher-B-cell half has at least the DLT rate of the lower half at every dose
    b = res.covariates.index("bcell.b_blood0")
    assert np.all(res.dlt[b, 1] >= res.dlt[b, 0]), res.dlt[b]


# ---- review analysis 3: comparator arm ------------------------------------------------------------------------------


def test_fisher_rejection_table_equals_scipy():
    n, alpha = 7, 0.05
    table = st.fisher_exact_reject(n, alpha)
    for x1 in range(n + 1):
        for x2 in range(n + 1):
            p = scipy.stats.fisher_exact([[x1, n - x1], [x2, n - x2]]).pvalue
            if abs(p - alpha) > 1e-9:
                assert table[x1, x2] == (p <= alpha), (x1, x2, p)


def test_comparator_power_within_monte_carlo_error_of_the_exact_binomial_power(pool, getkey):
    soc = st.StandardOfCare(plateau=0.2, omega=0.5)  # an effective comparator, so the power is not trivially 1
    sizes, n_trials = (3, 6), 4000
    res = st.comparator_power(pool, dose_index=1, soc=soc, sample_sizes=sizes, n_trials=n_trials, key=getkey())
    assert 0.0 < res.p_soc < 1.0
    for k, n in enumerate(sizes):
        reject = st.fisher_exact_reject(n, 0.05)
        pmf1 = scipy.stats.binom.pmf(np.arange(n + 1), n, res.p_car)
        pmf2 = scipy.stats.binom.pmf(np.arange(n + 1), n, res.p_soc)
        exact = float(pmf1 @ reject @ pmf2)
        se = math.sqrt(max(exact * (1 - exact), 1e-12) / n_trials)
        assert abs(res.power[k] - exact) <= 4.0 * se + 1e-12, (n, res.power[k], exact)


# ---- review analyses 2 and 4: conditioning, monitoring (same compiled solve: 24 members) -----------------------------


def test_conditioning_sets_expansion_fludarabine_exposure_and_lymphopenia(getkey):
    pop = st.trial_population("human", getkey(), N_PATIENTS)
    regimens = {"none": (0.0, 0.0), "Flu 25x3": (25.0, 0.0), "Cy 1000": (0.0, 1000.0), "Erlangen": (25.0, 1000.0)}
    res = st.conditioning_analysis("human", population=pop, regimens=regimens, t_end=T_END)
    cmax = res.endpoints["CAR Cmax"]
    # without the IL-7/IL-15 surge and free niche the CAR-T peak is lower in every patient, tenfold in the median
    assert np.all(cmax[0] < cmax[3]) and np.median(cmax[3] - cmax[0]) > 1.0, cmax
    auc = res.endpoints["fludarabine AUC"]
    np.testing.assert_allclose(auc[[0, 2]], 0.0, atol=1e-9)
    np.testing.assert_allclose(auc[1], auc[3], rtol=1e-9)  # Cy does not change fludarabine PK
    # renal clearance: exposure falls with eGFR (same body size: strictly, patient by patient)
    order = np.argsort(res.egfr)
    assert np.all(np.diff(auc[3][order]) < 0.0), (res.egfr[order], auc[3][order])
    days = res.endpoints["lymphopenia days"]
    np.testing.assert_allclose(days[0], 0.0, atol=1e-9)  # untreated lymphocytes stay above 500/uL
    assert np.all(days[3] > 14.0), days[3]  # Flu/Cy: at least two weeks of grade >= 3 lymphopenia
    assert res.remission_rate()[0] <= res.remission_rate()[3]


def test_monitoring_delay_is_the_wait_for_the_next_visit(getkey):
    intervals = (7.0, 14.0, 28.0, 56.0)
    res = st.monitoring_analysis("human", n_patients=24, key=getkey(), intervals=intervals, max_delay=30.0, t_end=T_END)
    e = res.events.index("B-cell return")
    t = res.event_times[e]
    # B cells return in every patient within the horizon, after months (110 +/- 32 d in Mackensen 2022)
    assert res.event_fraction[e] == 1.0 and np.all((t > 50.0) & (t < T_END)), t
    for k, dt in enumerate(intervals):
        delay = np.ceil(t / dt) * dt - t
        assert np.all((delay >= 0.0) & (delay < dt))
        np.testing.assert_allclose(res.mean_delay[e, k], delay.mean(), rtol=1e-12)
        np.testing.assert_allclose(res.p_within[e, k], np.mean(delay <= 30.0), rtol=1e-12)
    # every interval up to the allowed delay detects every return in time
    np.testing.assert_array_equal(res.p_within[e, :3], 1.0)
    np.testing.assert_allclose(st.detection_delay(np.array([10.0, 28.0, np.nan]), 14.0), [4.0, 0.0, np.nan])


def test_monitoring_follows_the_trial_conditioning(getkey):
    pop = st.trial_population("human", getkey(), 24)
    args = dict(population=pop, intervals=(14.0,), t_end=T_END)
    erlangen = st.monitoring_analysis("human", **args)
    # the default is the Erlangen regimen: the same courses as naming it
    again = st.monitoring_analysis("human", flu_mg_per_m2=25.0, cy_mg_per_m2=1000.0, **args)
    np.testing.assert_array_equal(again.event_times, erlangen.event_times)
    # without conditioning the B cells are not depleted by chemotherapy and the CAR-T expand less: every
    # patient's B-cell return moves
    none = st.monitoring_analysis("human", flu_mg_per_m2=0.0, cy_mg_per_m2=0.0, **args)
    e = erlangen.events.index("B-cell return")
    assert not np.allclose(none.event_times[e], erlangen.event_times[e], equal_nan=True)
    with pytest.raises(ValueError, match="flu_mg_per_m2"):
        st.monitoring_analysis("human", flu_mg_per_m2=-1.0, **args)


def _report_text(path):
    import re
    from pathlib import Path

    html = Path(path).read_text(encoding="utf-8")
    return html, re.sub(r"<[^>]+>", " ", re.sub(r'src="data:image/png;base64,[^"]*"', "", html))


def test_report_holds_the_findings_tables_and_figures_of_the_trial_and_the_analyses(pool, tmp_path, getkey):
    from carkinetics.models.sle.trial_report import ReviewAnalyses, modal_dose_index, write_trial_report

    trial = st.run_model_trial(pool, ct.BOIN(target=0.3), n_trials=N_TRIALS, key=getkey())
    best = modal_dose_index(trial)
    sel = np.asarray(trial.oc.selection_probability)
    assert sel[best] == sel[:-1].max()
    # the analyses on batches of 24 courses over 200 days (the compiled solve of the pool)
    pop = st.trial_population("human", getkey(), N_PATIENTS)
    regimens = {"none": (0.0, 0.0), "Flu 25x3": (25.0, 0.0), "Cy 1000": (0.0, 1000.0), "Erlangen": (25.0, 1000.0)}
    analyses = ReviewAnalyses(
        eligibility=st.eligibility_analysis(pool, n_groups=2),
        conditioning=st.conditioning_analysis(
            "human", dose=float(DOSES[best]), population=pop, regimens=regimens, t_end=T_END
        ),
        power=st.comparator_power(pool, dose_index=best, sample_sizes=(3, 6), n_trials=500, key=getkey()),
        monitoring=st.monitoring_analysis(
            "human", dose=float(DOSES[best]), n_patients=24, key=getkey(), t_end=T_END, intervals=(7.0, 28.0, 91.0)
        ),
        dose_index=best,
    )
    paths = write_trial_report(
        str(tmp_path / "report.html"), pool=pool, trial=trial, fig_dir=str(tmp_path), analyses=analyses
    )
    names = ("selected_dose", "dose_response", "eligibility", "conditioning", "power", "monitoring")
    assert set(paths) == {"report", *names}
    for name in names:
        assert (tmp_path / f"{name}.png").stat().st_size > 0
    html, text = _report_text(paths["report"])
    assert html.count("data:image/png;base64,") == len(names) and 'src="http' not in html
    # key findings first, then the trial, then each analysis in its own section
    order = [
        "Key findings",
        "Operating characteristics",
        "Outcomes per dose",
        "Eligibility by severity and burden",
        "Conditioning: Flu/Cy intensity",
        "Randomised comparator arm",
        "Monitoring schedule",
    ]
    assert [text.index(h) for h in order] == sorted(text.index(h) for h in order)
    assert "DLT = CRS grade &gt;= 3" in html and "no ICANS proxy" in html
    # the numbers are the library's: selection probabilities (4 significant digits) and the modal dose
    for p in sel:
        assert f">{p:.4g}<" in html
    assert f"{100 * sel[best]:.0f} % of {N_TRIALS:,} virtual trials" in text
    for finding in ("Eligibility:", "Conditioning: median CAR-T peak", "Comparator arm:", "Monitoring:"):
        assert text.index(finding) < text.index("Operating characteristics"), finding
    assert "(log10 cells/µL)" in text and "(mg*h/L)" in text and "P(seen within 30 d)" in text


# ---- validation ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "doses, match",
    [
        ([1e6, 3e5, 1e7], "increase strictly"),
        ([1e5, -1.0], "finite positive"),
        ([1e6], "at least two"),
        ([1e5, float("nan")], "finite positive"),
    ],
)
def test_bad_dose_ladders_raise(doses, match):
    with pytest.raises(ValueError, match=match):
        st.simulate_dose_outcomes("human", doses, n_patients=2, key=jax.random.key(0))


def test_bad_inputs_raise_before_any_solve(pool):
    with pytest.raises(ValueError, match="t_end"):
        st.simulate_dose_outcomes("human", DOSES, n_patients=2, key=jax.random.key(0), t_end=150.0)
    with pytest.raises(ValueError, match="n_patients"):
        st.simulate_dose_outcomes("human", DOSES, n_patients=0, key=jax.random.key(0))
    with pytest.raises(ValueError, match="population"):
        st.simulate_dose_outcomes("human", DOSES)
    with pytest.raises(ValueError, match="Unknown product"):
        st.simulate_dose_outcomes("human", DOSES, product="no-such-CAR", n_patients=2, key=jax.random.key(0))
    with pytest.raises(ValueError, match="alpha"):
        st.comparator_power(pool, alpha=1.5, key=jax.random.key(0))
    with pytest.raises(ValueError, match="sample_sizes"):
        st.comparator_power(pool, sample_sizes=(0,), key=jax.random.key(0))
    with pytest.raises(ValueError, match="dose_index"):
        st.comparator_power(pool, dose_index=4, key=jax.random.key(0))
    with pytest.raises(ValueError, match="cohort_size"):
        st.run_model_trial(pool, ct.BOIN(target=0.3), n_trials=10, cohort_size=0, key=jax.random.key(0))
    with pytest.raises(ValueError, match="target"):
        ct.BOIN(target=1.2)
    with pytest.raises(ValueError, match="plateau"):
        st.StandardOfCare(plateau=-0.1)


@pytest.mark.parametrize(
    "argv, match",
    [
        (["--doses", "1e6,3e5"], "increase strictly"),
        (["--doses", "1e5,-3e5"], "finite positive"),
        (["--doses", "1e5,abc"], "comma-separated numbers"),
        (["--target", "1.5"], "strictly between 0 and 1"),
        (["--trials", "0"], "--trials must be a positive integer"),
        (["--cohort-size", "0"], "--cohort-size must be a positive integer"),
        (["--patients-per-dose", "-2"], "--patients-per-dose must be a positive integer"),
        (["--design", "crm"], "--skeleton"),
        (["--design", "crm", "--skeleton", "0.1,0.2"], "4 probabilities"),
        (["--product", "no-such-CAR"], "unknown product"),
        (["--preset", "no-such-preset"], "unknown preset"),
        (["--design", "crm", "--skeleton", "0.1,0.3,0.2,0.4"], "--skeleton must increase strictly"),
        (["--design", "crm", "--skeleton", "0.1,0.2,0.3,1.0"], "--skeleton must give 4 probabilities strictly between"),
        (["--design", "crm", "--skeleton", "0,0.2,0.3,0.4"], "--skeleton must give 4 probabilities strictly between"),
        (["--design", "crm", "--skeleton", "low,high"], "--skeleton: expected comma-separated numbers"),
        (["--skeleton", "0.1,0.2,0.3,0.4"], "--skeleton is used only by --design crm"),
        (["--flu", "-5"], "--flu must be a non-negative dose in mg/m²"),
        (["--cy", "-1000"], "--cy must be a non-negative dose in mg/m²"),
        (["--flu", "nan"], "argument --flu: must be a finite number"),
        (["--cy", "lots"], "argument --cy: must be a number"),
        (["--monitoring-days", "120"], "--monitoring-days must be at least 181 days"),
    ],
)
def test_cli_bad_input_exits_2(tmp_path, capsys, argv, match):
    rc = cli.main(["trial", "--doses", "1e5,1e6,3e6,1e7", *argv, "--out", str(tmp_path / "out"), "--quiet"])
    err = capsys.readouterr().err
    assert rc == cli.EXIT_USAGE
    # one line naming the argument, no traceback, nothing written
    assert match in err and err.count("\n") == 1 and "Traceback" not in err, err
    assert not (tmp_path / "out").exists()


def test_cli_writes_the_library_results(tmp_path, capsys):
    out = tmp_path / "out"
    rc = cli.main(
        [
            "trial",
            "--preset",
            "human",
            "--product",
            "MB-CART19.1",
            "--doses",
            ",".join(map(str, DOSES)),
            "--design",
            "boin",
            "--target",
            "0.3",
            "--trials",
            str(N_TRIALS),
            "--patients-per-dose",
            str(N_PATIENTS),
            "--key",
            "7",
            "--t-end",
            str(T_END),
            "--no-analyses",
            "--out",
            str(out),
            "--quiet",
        ]
    )
    assert rc == cli.EXIT_OK
    assert f"output folder: {out}" in capsys.readouterr().out
    for name in (
        "operating_characteristics.csv",
        "operating_characteristics.json",
        "dose_outcomes.csv",
        "patients.csv",
        "selected_dose.png",
        "dose_response.png",
        "report.html",
    ):
        assert (out / name).stat().st_size > 0, name
    assert not (out / "conditioning.png").exists()
    html = (out / "report.html").read_text(encoding="utf-8")
    # the trial's two figures, and a note that says the analyses were left out and how the run is reproduced
    assert html.count("data:image/png;base64,") == 2
    assert "left out of this run (--no-analyses)" in html and "--product MB-CART19.1" in html
    # the same population and pool as the library's, from the same key
    k_pop, k_trials = jax.random.split(jax.random.key(7))
    ref_pool = st.simulate_dose_outcomes(
        "human", DOSES, product="MB-CART19.1", population=st.trial_population("human", k_pop, N_PATIENTS), t_end=T_END
    )
    ref = st.run_model_trial(ref_pool, ct.BOIN(target=0.3), n_trials=N_TRIALS, key=k_trials)
    with open(out / "operating_characteristics.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    np.testing.assert_allclose([float(r["p_selected"]) for r in rows], ref.oc.selection_probability, atol=1e-12)
    np.testing.assert_allclose([float(r["pool_dlt_rate"]) for r in rows[:-1]], ref_pool.rates()["DLT"], atol=1e-12)
    summary = json.loads((out / "operating_characteristics.json").read_text())
    assert math.isclose(sum(summary["selection_probability"]), 1.0, abs_tol=1e-12)
    assert summary["patients_per_dose"] == N_PATIENTS and summary["design"] == "BOIN"
    with open(out / "dose_outcomes.csv", newline="") as fh:
        dose_rows = list(csv.DictReader(fh))
    np.testing.assert_allclose(
        [float(r["P(remission m6)"]) for r in dose_rows], ref_pool.rates()["remission m6"], atol=1e-12
    )


# ---- slow: a larger pool --------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_large_pool_has_no_crs_dlt_and_boin_escalates_to_the_highest_dose():
    # the pool of benchmarks/trials_boin.py: 250 patients x 4 doses (one solve of 1,000 courses)
    pool = st.simulate_dose_outcomes("human", DOSES, n_patients=250, key=jax.random.key(0), t_end=T_END)
    dlt = pool.rates()["DLT"]
    grade, il6 = pool.endpoints["CRS grade"], pool.endpoints["IL-6 peak"]
    # cytokine release rises with dose in the pool (mean IL-6 peak), a patient's CRS index falls by at most 0.1 with
    # dose (saturating expansion), and no patient's DLT flag falls
    assert np.all(np.diff(il6.mean(axis=1)) > 0.0), il6.mean(axis=1)
    assert np.all(grade[1:] >= grade[:-1] - 0.1)
    assert not np.any(pool.dlt[:-1] & ~pool.dlt[1:])
    # CRS grade >= 3 stays below 2 % at every dose over 1e5-1e7/kg, as in the SLE dose-escalation cohorts (no grade
    # >= 3 CRS: Mueller 2024, Feng 2025 [R]); the DLT rate is non-decreasing with dose
    assert np.all(np.diff(dlt) >= 0.0) and np.all(dlt < 0.02), dlt
    trial = st.run_model_trial(pool, ct.BOIN(target=0.3), n_trials=4000, key=jax.random.key(12))
    sel = np.asarray(trial.oc.selection_probability)
    # every dose is far below the target: BOIN escalates and selects the highest dose in nearly every trial
    assert sel[len(DOSES) - 1] > 0.9, sel
    assert math.isclose(float(sel.sum()), 1.0, abs_tol=1e-12)


@pytest.mark.slow
def test_cli_report_with_the_review_analyses_under_custom_conditioning(tmp_path, capsys):
    # CRM with a skeleton, Flu 30 mg/m² x 3 + Cy 500 mg/m²: the pool, the monitoring analysis and an extra regimen
    # of the conditioning analysis use that conditioning
    out = tmp_path / "out"
    argv = ["trial", "--doses", "1e5,1e6,3e6,1e7", "--design", "crm", "--skeleton", "0.1,0.15,0.2,0.3"]
    argv += ["--flu", "30", "--cy", "500", "--patients-per-dose", "6", "--trials", "500", "--key", "3"]
    rc = cli.main([*argv, "--out", str(out), "--quiet"])
    assert rc == cli.EXIT_OK, capsys.readouterr().err
    for name in ("report.html", "eligibility.png", "conditioning.png", "power.png", "monitoring.png"):
        assert (out / name).stat().st_size > 0, name
    html, text = _report_text(out / "report.html")
    assert html.count("data:image/png;base64,") == 6
    assert "trial: Flu 30x3 + Cy 500" in text and "fludarabine 30 mg/m² on days -5, -4, -3" in text
    assert "--skeleton 0.1,0.15,0.2,0.3" in text and "CRM" in text
    summary = json.loads((out / "operating_characteristics.json").read_text())
    assert summary["flu_mg_per_m2_per_day"] == 30.0 and summary["cy_mg_per_m2"] == 500.0
    # the pool is the library's under that conditioning
    k_pop, _ = jax.random.split(jax.random.key(3))
    ref = st.simulate_dose_outcomes(
        "human",
        DOSES,
        population=st.trial_population("human", k_pop, 6),
        flu_mg_per_m2=30.0,
        cy_mg_per_m2=500.0,
        t_end=T_END,
    )
    with open(out / "operating_characteristics.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    np.testing.assert_allclose([float(r["pool_dlt_rate"]) for r in rows[:-1]], ref.rates()["DLT"], atol=1e-12)


@pytest.mark.slow
def test_full_demo_has_a_trial_section_with_its_figures(tmp_path):
    from carkinetics.models.sle import demo

    step = next(s for s in demo.DEMO_STEPS if s.title == "Virtual dose-escalation trial")
    path, skipped, failed = demo.run_demo(str(tmp_path), quick=False, steps=(step,), progress=None)
    assert skipped == [] and failed == []
    html, text = _report_text(path)
    assert html.count("data:image/png;base64,") == 2  # selected dose, dose response
    assert "Virtual trial: BOIN selects" in text and "<h3>Operating characteristics</h3>" in html
    assert "in the report of `carkinetics trial`" in text
    assert not list(tmp_path.glob("*.png"))  # embedded only: the demo declares every file it writes
