"""Clinical regimen helpers: body surface area, fludarabine/cyclophosphamide lymphodepletion, CAR-T infusion.

Days are relative to CAR-T infusion (day 0); lymphodepletion days are negative. Chemotherapy doses are given in
mg/m²/day and converted to mg with the body surface area; they are modelled as short zero-order infusions.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ._dosing import Bolus, Infusion, Regimen, _check, _is_concrete

#: Plausible human body sizes; values outside are almost always unit mistakes (grams for kg, metres for cm).
_WEIGHT_KG = (0.3, 400.0)
_HEIGHT_CM = (20.0, 260.0)
#: Body surface areas from a mouse (~0.007 m²) to a large adult; outside: a unit mistake (cm² for m²).
_BSA_M2 = (0.003, 3.5)


def _body(name: str, value: Any, bounds: tuple[float, float], unit: str, hints: dict[str, float]) -> float:
    """A positive body-size number within `bounds`; otherwise a ValueError that names the likely unit mistake."""
    v = float(_check(name, value, positive=True))
    lo, hi = bounds
    if lo <= v <= hi:
        return v
    likely = [f"{v:g} {u} = {v * f:g} {unit}" for u, f in hints.items() if lo <= v * f <= hi]
    hint = f" Was it given in another unit ({' or '.join(likely)})?" if likely else ""
    raise ValueError(
        f"`{name}` = {v:g} {unit} is outside the plausible human range [{lo:g}, {hi:g}] {unit}.{hint} "
        "(For animal models give flat doses, e.g. `cells=` per animal.)"
    )


def _weight(weight_kg: Any) -> float:
    return _body("weight_kg", weight_kg, _WEIGHT_KG, "kg", {"g": 1e-3, "lb": 0.4536})


def _height(height_cm: Any) -> float:
    return _body("height_cm", height_cm, _HEIGHT_CM, "cm", {"m": 100.0, "in": 2.54})


def check_body_size(weight_kg: Any = None, height_cm: Any = None) -> tuple[float | None, float | None]:
    """Validate a body weight (kg) and height (cm): positive, finite and humanly plausible (0.3-400 kg,
    20-260 cm), with a message naming the likely unit mistake (grams or pounds for kg, metres or inches for cm).
    For animal models, give body size through the model's own parameters instead."""
    w = None if weight_kg is None else _weight(weight_kg)
    h = None if height_cm is None else _height(height_cm)
    return w, h


def bsa_mosteller(weight_kg: float, height_cm: float) -> float:
    """Body surface area (m²) by Mosteller (N Engl J Med 1987;317:1098): sqrt(height_cm * weight_kg / 3600).

    Weight and height are checked for plausibility (see `check_body_size`): `bsa_mosteller(70, 1.7)` (metres for
    centimetres) raises `ValueError` instead of returning 0.18 m².

    **Example:** `ck.bsa_mosteller(70.0, 170.0)` is about 1.82 m².
    """
    w, h = _weight(weight_kg), _height(height_cm)
    return float(np.sqrt(h * w / 3600.0))


def bsa_dubois(weight_kg: float, height_cm: float) -> float:
    """Body surface area (m²) by Du Bois & Du Bois (Arch Intern Med 1916;17:863): 0.007184 W^0.425 H^0.725.

    Weight and height are checked for plausibility as in [`carkinetics.bsa_mosteller`][].
    """
    w, h = _weight(weight_kg), _height(height_cm)
    return float(0.007184 * w**0.425 * h**0.725)


def _chemo(name: str, dose_mg_per_m2, days: Sequence[float], bsa_m2, state: str, infusion_minutes: float) -> Regimen:
    if isinstance(days, (int, float)):
        days = (days,)
    if len(days) == 0:
        raise ValueError(f"`days` for {name} must list at least one day, got {days!r}.")
    dose = _check("dose_mg_per_m2", dose_mg_per_m2, nonneg=True, what=f" for {name}")
    if bsa_m2 is None:
        raise ValueError(
            f"`bsa_m2` is required for {name}: give the body surface area in m² (e.g. "
            "ck.bsa_mosteller(weight_kg, height_cm)); there is no default body size."
        )
    bsa = _check("bsa_m2", bsa_m2, positive=True, what=f" for {name}")
    if _is_concrete(bsa) and not _BSA_M2[0] <= float(bsa) <= _BSA_M2[1]:
        raise ValueError(
            f"`bsa_m2` = {float(bsa):g} m² for {name} is outside the plausible range "
            f"[{_BSA_M2[0]:g}, {_BSA_M2[1]:g}] m²; it is a body surface area in m² (an adult has ~1.8, "
            "a mouse ~0.007)."
        )
    dur = float(_check("infusion_minutes", infusion_minutes, positive=True, what=f" for {name}")) / (24 * 60)
    return Regimen([Infusion(float(d), state, amount=dose * bsa, duration=dur) for d in days])


def fludarabine(
    dose_mg_per_m2=25.0,
    days: Sequence[float] = (-5.0, -4.0, -3.0),
    *,
    bsa_m2=None,
    state: str = "flu_central",
    infusion_minutes: float = 30.0,
) -> Regimen:
    """Fludarabine as 30-min infusions of `dose_mg_per_m2` × BSA mg on each of `days` (`bsa_m2` required).

    Default: 25 mg/m²/day on days −5, −4, −3 (Erlangen SLE / RESET regimen; Mackensen 2022 Nat Med
    doi:10.1038/s41591-022-02017-5 [R drugs, M doses]; RESET-SSc EULAR 2025 [R]).

    **Example:** `ck.fludarabine(25.0, (-5, -4, -3), bsa_m2=1.8)` gives three 45 mg infusions.
    """
    return _chemo("fludarabine", dose_mg_per_m2, days, bsa_m2, state, infusion_minutes)


def cyclophosphamide(
    dose_mg_per_m2=1000.0,
    days: Sequence[float] = (-3.0,),
    *,
    bsa_m2=None,
    state: str = "cy_central",
    infusion_minutes: float = 60.0,
) -> Regimen:
    """Cyclophosphamide as 60-min infusions of `dose_mg_per_m2` × BSA mg on each of `days` (`bsa_m2` required).

    Default: 1,000 mg/m² on day −3 (Erlangen SLE / RESET regimen, as `fludarabine`).
    """
    return _chemo("cyclophosphamide", dose_mg_per_m2, days, bsa_m2, state, infusion_minutes)


def car_t_infusion(
    *, state: str = "car_effector", cells_per_kg=None, weight_kg=None, cells=None, day: float = 0.0
) -> Bolus:
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
        weight = (
            check_body_size(weight_kg)[0] if _is_concrete(weight_kg) else _check("weight_kg", weight_kg, positive=True)
        )
        cells = _check("cells_per_kg", cells_per_kg, nonneg=True) * weight
    return Bolus(day, cells, state)
