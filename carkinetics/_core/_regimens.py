"""Clinical regimen helpers: body surface area, fludarabine/cyclophosphamide lymphodepletion, CAR-T infusion.

Days are relative to CAR-T infusion (day 0); lymphodepletion days are negative. Chemotherapy doses are given in
mg/m²/day and converted to mg with the body surface area; they are modelled as short zero-order infusions.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ._dosing import Bolus, Infusion, Regimen, _check


def bsa_mosteller(weight_kg: float, height_cm: float) -> float:
    """Body surface area (m²) by Mosteller (N Engl J Med 1987;317:1098): sqrt(height_cm * weight_kg / 3600).

    **Example:** `ck.bsa_mosteller(70.0, 170.0)` is about 1.82 m².
    """
    w = float(_check("weight_kg", weight_kg, positive=True))
    h = float(_check("height_cm", height_cm, positive=True))
    return float(np.sqrt(h * w / 3600.0))


def bsa_dubois(weight_kg: float, height_cm: float) -> float:
    """Body surface area (m²) by Du Bois & Du Bois (Arch Intern Med 1916;17:863): 0.007184 W^0.425 H^0.725."""
    w = float(_check("weight_kg", weight_kg, positive=True))
    h = float(_check("height_cm", height_cm, positive=True))
    return float(0.007184 * w**0.425 * h**0.725)


def _chemo(name: str, dose_mg_per_m2, days: Sequence[float], bsa_m2, state: str, infusion_minutes: float) -> Regimen:
    if isinstance(days, (int, float)):
        days = (days,)
    if len(days) == 0:
        raise ValueError(f"`days` for {name} must list at least one day, got {days!r}.")
    dose = _check("dose_mg_per_m2", dose_mg_per_m2, nonneg=True, what=f" for {name}")
    bsa = _check("bsa_m2", bsa_m2, positive=True, what=f" for {name}")
    dur = float(_check("infusion_minutes", infusion_minutes, positive=True, what=f" for {name}")) / (24 * 60)
    return Regimen([Infusion(float(d), state, amount=dose * bsa, duration=dur) for d in days])


def fludarabine(dose_mg_per_m2=25.0, days: Sequence[float] = (-5.0, -4.0, -3.0), *, bsa_m2=1.8,
                state: str = "flu_central", infusion_minutes: float = 30.0) -> Regimen:
    """Fludarabine as 30-min infusions of `dose_mg_per_m2` × BSA mg on each of `days`.

    Default: 25 mg/m²/day on days −5, −4, −3 (Erlangen SLE / RESET regimen; Mackensen 2022 Nat Med
    doi:10.1038/s41591-022-02017-5 [R drugs, M doses]; RESET-SSc EULAR 2025 [R]).

    **Example:** `ck.fludarabine(25.0, (-5, -4, -3), bsa_m2=1.8)` gives three 45 mg infusions.
    """
    return _chemo("fludarabine", dose_mg_per_m2, days, bsa_m2, state, infusion_minutes)


def cyclophosphamide(dose_mg_per_m2=1000.0, days: Sequence[float] = (-3.0,), *, bsa_m2=1.8,
                     state: str = "cy_central", infusion_minutes: float = 60.0) -> Regimen:
    """Cyclophosphamide as 60-min infusions of `dose_mg_per_m2` × BSA mg on each of `days`.

    Default: 1,000 mg/m² on day −3 (Erlangen SLE / RESET regimen, as `fludarabine`).
    """
    return _chemo("cyclophosphamide", dose_mg_per_m2, days, bsa_m2, state, infusion_minutes)


def car_t_infusion(*, state: str = "car_effector", cells_per_kg=None, weight_kg=None, cells=None,
                   day: float = 0.0) -> Bolus:
    """CAR-T cell infusion as a bolus of viable CAR+ cells into `state` (unit: cells).

    Give either `cells_per_kg` with `weight_kg` (e.g. 1e6/kg × 70 kg, Mackensen 2022 [R]) or a flat `cells`.

    **Example:** `ck.car_t_infusion(cells_per_kg=1e6, weight_kg=70.0)` is a bolus of 7e7 cells at day 0.
    """
    if cells is not None and (cells_per_kg is not None or weight_kg is not None):
        raise ValueError("Give either `cells` or (`cells_per_kg` and `weight_kg`), not both.")
    if cells is None:
        if cells_per_kg is None or weight_kg is None:
            raise ValueError(
                f"`cells_per_kg` and `weight_kg` are both required when `cells` is not given; got "
                f"cells_per_kg={cells_per_kg!r}, weight_kg={weight_kg!r}."
            )
        cells = _check("cells_per_kg", cells_per_kg, nonneg=True) * _check("weight_kg", weight_kg, positive=True)
    return Bolus(day, cells, state)
