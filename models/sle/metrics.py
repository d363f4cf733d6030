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

#: Metric name -> (unit, definition).
SLE_METRICS: dict[str, tuple[str, str]] = {
    "B aplasia": ("d", "days after infusion with blood B cells below 5 % of baseline (total)"),
    "B nadir": ("% of baseline", "lowest blood B-cell count after infusion"),
    "anti-dsDNA d90": ("% of baseline", "anti-dsDNA at day 90"),
    "anti-dsDNA positive days": ("d", "days after infusion with anti-dsDNA at or above its positivity cutoff "
                                 "(censored at the horizon)"),
    "anti-dsDNA floor": ("% of baseline", "lowest anti-dsDNA after infusion (LLPC-fed floor)"),
    "anti-dsDNA t1/2": ("d", "IgG elimination half-life along the trajectory, days 14-60 (ln 2 over the mean "
                        "elimination rate constant; FcRn saturation included)"),
    "vaccine IgG nadir": ("% of baseline", "lowest protective (vaccine) IgG after infusion (LLPC-made)"),
    "CAR Cmax": ("log10 cells/uL", "log10 of the peak blood CAR-T count"),
    "CAR Tmax": ("d", "day of the blood CAR-T peak"),
    "CAR persistence": ("d", "days after infusion with blood CAR-T >= 1 cell/uL"),
    "IL-6 peak": ("pg/mL", "peak plasma IL-6 after infusion"),
    "CRS grade": ("0-4", "peak of the continuous ASTCT-like CRS index (integer part = grade)"),
    "SLEDAI d90": ("1", "SLEDAI-2K-like activity index at day 90 (remission depth)"),
    "remission days": ("d", "days after infusion with the activity index below 4 (remission durability)"),
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


def sle_metrics(sol: ck.Solution) -> dict[str, Any]:
    """The SLE metric set (`SLE_METRICS`: names, units, definitions) of one solution on a grid starting at day -6.

    Failed simulations give NaN (the engines mask failed members).

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
    return {
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
    }
