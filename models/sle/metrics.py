"""The clinical read-outs of the SLE application: one save grid and one metric set, used by the demo, sweeps, the
translation map and the command line.

Baselines are the values at the first save time, so the grid starts before lymphodepletion (day -6); "after
infusion" means `t >= 0`.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

import carkinetics as ck

#: The first save time (days): before the first fludarabine infusion on day -5.
T_START = -6.0
#: Save spacing (days) through the first month (expansion, CRS) and after it (reconstitution, relapse).
DT_EARLY, DT_LATE = 0.25, 1.0
#: End of the fine early grid (days).
T_EARLY_END = 30.0
#: Blood B cells below this fraction of baseline count as aplasia.
B_APLASIA_FRACTION = 0.05
#: Blood CAR-T cells per µL at or above which CAR-T are counted as detectable (flow-cytometry limit).
CAR_DETECTION_PER_UL = 1.0
#: SLEDAI-2K-like activity below this value counts as remission (DORIS-like low activity).
REMISSION_SLEDAI = 4.0
#: Blood B cells per µL below which B cells count as depleted and above which they have "reappeared": the
#: depletion definition of rituximab trials in SLE (< 5 CD19+ cells/µL, Albert D et al., Ann Rheum Dis 2008),
#: used for the published B-cell reappearance/aplasia targets (a modelling choice [A]).
B_RETURN_PER_UL = 5.0
#: The continuous SLEDAI index below which a patient counts as in DORIS-like remission: clinical SLEDAI-2K 0 (the
#: smallest SLEDAI item scores 1, so an integer score below 1 is 0) [A: approximation of DORIS 2021, which also
#: needs a physician global assessment < 0.5 and prednisolone <= 5 mg/d, not modelled].
DORIS_SLEDAI = 1.0
#: Windows (days) of the Stein 2019 multiphasic shape read from a blood CAR-T trajectory: the contraction slope
#: from 3 to 14 days after Tmax, the persistence slope from day 90 to day 365.
STEIN_CONTRACTION_WINDOW = (3.0, 14.0)
STEIN_PERSISTENCE_WINDOW = (90.0, 365.0)

#: Metric name -> (unit, definition).
SLE_METRICS: dict[str, tuple[str, str]] = {
    "B aplasia": ("d", "days after infusion with blood B cells below 5 % of baseline (total)"),
    "B nadir": ("% of baseline", "lowest blood B-cell count after infusion"),
    "anti-dsDNA d90": ("% of baseline", "anti-dsDNA at day 90"),
    "anti-dsDNA positive days": (
        "d",
        "days after infusion with anti-dsDNA at or above its positivity cutoff (censored at the horizon)",
    ),
    "anti-dsDNA floor": ("% of baseline", "lowest anti-dsDNA after infusion (LLPC-fed floor)"),
    "anti-dsDNA t1/2": (
        "d",
        "IgG elimination half-life along the trajectory, days 14-60 (ln 2 over the mean "
        "elimination rate constant; FcRn saturation included)",
    ),
    "vaccine IgG nadir": ("% of baseline", "lowest protective (vaccine) IgG after infusion (LLPC-made)"),
    "CAR Cmax": ("log10 cells/uL", "log10 of the peak blood CAR-T count"),
    "CAR Tmax": ("d", "day of the blood CAR-T peak"),
    "CAR persistence": ("d", "days after infusion with blood CAR-T >= 1 cell/uL"),
    "IL-6 peak": ("pg/mL", "peak plasma IL-6 after infusion"),
    "CRS grade": ("0-4", "peak of the continuous ASTCT-like CRS index (integer part = grade)"),
    "SLEDAI d90": ("1", "SLEDAI-2K-like activity index at day 90 (remission depth)"),
    "remission days": ("d", "days after infusion with the activity index below 4 (remission durability)"),
    "UPCR d180": (
        "g/g",
        "urine protein/creatinine at day 180 (renal outcome: active nephritis plus irreversible damage)",
    ),
}

#: Metrics that can be censored at the horizon (they measure how long a state lasts) -> the name of the output of
#: `sle_metrics(..., censoring=True)` that is 1 when the state still holds at the last save time, so the value is
#: a lower bound ("at least the horizon").
SLE_CENSORING: dict[str, str] = {
    "B aplasia": "B aplasia censored",
    "anti-dsDNA positive days": "anti-dsDNA positive days censored",
    "CAR persistence": "CAR persistence censored",
    "remission days": "remission days censored",
}


def save_times(t_end: float = 365.0) -> jax.Array:
    """The SLE save grid: every 0.25 d from day -6 to day 30, then daily to `t_end` (days).

    **Example:**

    ```python
    from carkinetics.models.sle import save_times
    ts = save_times(365.0)    # 144 + 336 save times
    ```
    """
    t_end = float(t_end)
    if not t_end >= 120.0:
        raise ValueError(f"`t_end` must be at least 120 days (the metrics read day 90), got {t_end!r}.")
    early = np.arange(T_START, T_EARLY_END, DT_EARLY)
    late = np.arange(T_EARLY_END, t_end + 0.5 * DT_LATE, DT_LATE)
    return jnp.asarray(np.concatenate([early, late]))


def sle_metrics(sol: ck.Solution, *, censoring: bool = False) -> dict[str, Any]:
    """The SLE metric set (`SLE_METRICS`: names, units, definitions) of one solution on a grid starting at day -6.

    With `censoring=True` the outputs also hold the censoring flags of `SLE_CENSORING` (1.0 when the state a
    duration metric measures still holds at the horizon, e.g. B cells still depleted). Failed simulations give NaN
    (the engines mask failed members).

    **Example:**

    ```python
    import carkinetics as ck
    from carkinetics.models.sle import erlangen_regimen, load_preset, save_times, sle_metrics
    model = load_preset("human")
    out = sle_metrics(ck.simulate(model, erlangen_regimen(model), save_times(180.0)))
    float(out["B aplasia"])    # days
    ```
    """
    m = ck.metrics
    o, ts = sol.observables, sol.ts
    t_end = ts[-1]
    b = o.b_blood / o.b_blood[0]
    window = ((ts >= 14.0) & (ts <= 60.0)).astype(ts.dtype)
    k_el = jnp.sum(window * o.igg_k_el) / jnp.sum(window)
    out = {
        "B aplasia": m.time_below(ts, b, B_APLASIA_FRACTION, t_start=0.0, t_end=t_end),
        "B nadir": 100.0 * m.nadir(ts, b, t_start=0.0),
        "anti-dsDNA d90": 100.0 * m.value_at(ts, o.anti_dsdna_rel, 90.0),
        "anti-dsDNA positive days": t_end - m.time_below(ts, o.anti_dsdna_index, 1.0, t_start=0.0, t_end=t_end),
        "anti-dsDNA floor": 100.0 * m.nadir(ts, o.anti_dsdna_rel, t_start=0.0),
        "anti-dsDNA t1/2": jnp.log(2.0) / k_el,
        "vaccine IgG nadir": 100.0 * m.nadir(ts, o.vaccine_igg, t_start=0.0),
        "CAR Cmax": jnp.log10(jnp.maximum(m.cmax(ts, o.car_blood), 1e-12)),
        "CAR Tmax": m.tmax(ts, o.car_blood),
        "CAR persistence": t_end - m.time_below(ts, o.car_blood, CAR_DETECTION_PER_UL, t_start=0.0, t_end=t_end),
        "IL-6 peak": m.cmax(ts, o.il6, t_start=0.0),
        "CRS grade": m.cmax(ts, o.crs_grade, t_start=0.0),
        "SLEDAI d90": m.value_at(ts, o.sledai, 90.0),
        "remission days": m.time_below(ts, o.sledai, REMISSION_SLEDAI, t_start=0.0, t_end=t_end),
        "UPCR d180": m.value_at(ts, o.proteinuria, 180.0),
    }
    if censoring:
        one = jnp.asarray(1.0, ts.dtype)
        out.update(
            {
                "B aplasia censored": jnp.where(b[-1] < B_APLASIA_FRACTION, one, 0.0),
                "anti-dsDNA positive days censored": jnp.where(o.anti_dsdna_index[-1] >= 1.0, one, 0.0),
                "CAR persistence censored": jnp.where(o.car_blood[-1] >= CAR_DETECTION_PER_UL, one, 0.0),
                "remission days censored": jnp.where(o.sledai[-1] < REMISSION_SLEDAI, one, 0.0),
            }
        )
    return out


#: Width (days) of the smooth edges of the windows that follow the peak: the shape then moves continuously with the
#: peak time instead of jumping when the peak passes a grid point (smooth objective for the calibration).
_EDGE = 0.25


def _soft_before(ts, t):
    return jax.nn.sigmoid((t - ts) / _EDGE)


def _soft_after(ts, t):
    return jax.nn.sigmoid((ts - t) / _EDGE)


def _loglinear(ts, values, mask):
    """Weighted least-squares line through `log(values)` with weights `mask` (0-1): (slope, intercept)."""
    w = jnp.asarray(mask, ts.dtype)
    ly = jnp.log(jnp.maximum(values, 1e-300))
    n = jnp.maximum(jnp.sum(w), 1.0)
    mt, my = jnp.sum(w * ts) / n, jnp.sum(w * ly) / n
    slope = jnp.sum(w * (ts - mt) * (ly - my)) / jnp.maximum(jnp.sum(w * (ts - mt) ** 2), 1e-300)
    return slope, my - slope * mt


def stein_shape(ts: jax.Array, car_blood: jax.Array) -> dict[str, jax.Array]:
    """The Stein 2019 multiphasic shape of a blood CAR-T trajectory (days after infusion, cells/µL), read as the
    popCK model reads a patient: exponential growth `R0·exp(ρt)` up to Tmax, then `(1 − F_B)·Cmax·exp(−α(t − Tmax))
    + F_B·Cmax·exp(−β(t − Tmax))`.

    - `tmax` (d): time of the peak after day 0 (parabola-interpolated); `cmax` (cells/µL): the peak.
    - `fold_expansion` (1): `Cmax/R0`, with `R0` the day-0 value of the log-linear fit over `[0, Tmax]`.
    - `contraction_rate` α (1/d): minus the log-linear slope over `Tmax + STEIN_CONTRACTION_WINDOW`.
    - `persistence_rate` β (1/d): minus the log-linear slope over `STEIN_PERSISTENCE_WINDOW` (needs a horizon of
      at least 365 d).
    - `slow_fraction` F_B (1): the persistence line extrapolated back to Tmax, over Cmax.

    Differentiable in `car_blood`: the windows that follow the peak have smooth edges (0.25 d), so the shape moves
    continuously with the (parabola-interpolated) peak time. Blood
    cells/µL stand in for the transgene copies/µg gDNA of Stein 2019 (a proxy [A]: the two differ by the
    changing leukocyte count).

    **Example:**

    ```python
    import jax.numpy as jnp
    from carkinetics.models.sle.metrics import stein_shape
    ts = jnp.linspace(0.0, 400.0, 1601)
    c = jnp.where(ts < 9.0, jnp.exp(0.9 * ts), jnp.exp(8.1) * (0.99 * jnp.exp(-0.16 * (ts - 9.0))
                  + 0.01 * jnp.exp(-0.0032 * (ts - 9.0))))
    float(stein_shape(ts, c)["persistence_rate"])     # ~0.0032 /d
    ```
    """
    c = jnp.where(ts >= 0.0, car_blood, 0.0)
    t_peak = ck.metrics.tmax(ts, c)
    cmax = ck.metrics.cmax(ts, c)
    pos = (c > 1e-12).astype(ts.dtype)
    a, b = STEIN_CONTRACTION_WINDOW
    p0, p1 = STEIN_PERSISTENCE_WINDOW
    g_slope, g_int = _loglinear(ts, c, (ts >= 0.0) * _soft_before(ts, t_peak - 2.0 * _EDGE) * pos)
    c_slope, _ = _loglinear(ts, c, _soft_after(ts, t_peak + a) * _soft_before(ts, t_peak + b) * pos)
    p_slope, p_int = _loglinear(ts, c, ((ts >= p0) & (ts <= p1)) * pos)
    del g_slope
    return {
        "tmax": t_peak,
        "cmax": cmax,
        "fold_expansion": cmax / jnp.exp(g_int),
        "contraction_rate": -c_slope,
        "persistence_rate": -p_slope,
        "slow_fraction": jnp.exp(p_int + p_slope * t_peak) / cmax,
    }
