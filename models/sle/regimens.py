"""Regimens of the SLE application: conditioning as an input (any Flu/Cy schedule in mg/m², none, or total-body
irradiation in mice), the CAR-T infusion by product dose convention, tocilizumab and dexamethasone.

Doses are the only explicit times of the model. Conditioning acts through the mechanisms (chemotherapy kill of
lymphocytes → IL-7/IL-15 surge and a free T-cell niche for CAR-T expansion; host T-cell depletion and recovery →
timing of the anti-CAR response), so intensity and schedule change expansion and rejection timing.

**Example:**

```python
from carkinetics.models.sle import SLECarTModel, flu_cy_regimen, no_conditioning_regimen
model = SLECarTModel()
kymriah_all = flu_cy_regimen(model, flu_mg_per_m2=30.0, flu_days=(-6, -5, -4, -3), cy_mg_per_m2=500.0,
                             cy_days=(-6, -5), product="tisa-cel")
car_only = no_conditioning_regimen(model, cells_per_kg=1e6)
```
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, cast

import numpy as np

import carkinetics as ck
from carkinetics.models.sle.model import CAR_DOSE_STATE, SLECarTModel
from carkinetics.models.sle.products import Product, get_product

#: States hit by total-body irradiation in `mouse_regimen`: lymphocytes (LLPC are radio-resistant).
TBI_STATES = (
    "t_cells",
    "nk_cells",
    "anti_car",
    "b_marrow",
    "b_naive",
    "b_memory",
    "b_auto",
    "pb_auto",
    "pb_other",
    "tumour",
)


def _body(model: Any, weight_kg: float | None, height_cm: float | None) -> tuple[float, float]:
    if model is not None:
        if not isinstance(model, SLECarTModel):
            raise ValueError(f"`model` must be an SLECarTModel or None, got {type(model).__name__}.")
        weight_kg = float(model.body.weight_kg) if weight_kg is None else weight_kg
        height_cm = float(model.body.height_cm) if height_cm is None else height_cm
    weight_kg = 70.0 if weight_kg is None else weight_kg
    height_cm = 170.0 if height_cm is None else height_cm
    if not (weight_kg > 0 and height_cm > 0):
        raise ValueError(
            f"`weight_kg` and `height_cm` must be positive, got weight_kg={weight_kg!r}, height_cm={height_cm!r}."
        )
    return float(weight_kg), float(height_cm)


def car_cells(
    weight_kg: float,
    *,
    product: str | Product | None = None,
    cells_per_kg: float | None = None,
    cells: float | None = None,
) -> float:
    """CAR-T cells of an infusion: `cells` (flat), else `cells_per_kg` × weight, else the product's usual dose, else
    1e6/kg (Mackensen 2022)."""
    if cells is not None and cells_per_kg is not None:
        raise ValueError("Give at most one of `cells` and `cells_per_kg`.")
    if cells is not None:
        return float(cells)
    if cells_per_kg is not None:
        return float(cells_per_kg) * weight_kg
    if product is not None:
        return get_product(product).cells(weight_kg)
    return 1e6 * weight_kg


def car_infusion(
    model: SLECarTModel | None = None,
    *,
    product: str | Product | None = None,
    cells_per_kg: float | None = None,
    cells: float | None = None,
    day: float = 0.0,
    weight_kg: float | None = None,
) -> ck.Bolus:
    """The CAR-T infusion as a bolus of cells into `CAR_DOSE_STATE` (dose: see `car_cells`)."""
    w, _ = _body(model, weight_kg, None)
    return ck.car_t_infusion(
        state=CAR_DOSE_STATE, cells=car_cells(w, product=product, cells_per_kg=cells_per_kg, cells=cells), day=day
    )


def _per_day(name: str, dose: float | Sequence[float], days: Sequence[float]) -> list[float]:
    days = list(days)
    if np.ndim(dose) == 0:
        doses = [float(cast(float, dose))] * len(days)
    else:
        doses = [float(d) for d in cast(Sequence[float], dose)]
    if len(doses) != len(days):
        raise ValueError(f"`{name}_mg_per_m2` lists {len(doses)} doses for {len(days)} days {days!r}.")
    if any(not np.isfinite(d) or d < 0 for d in doses):
        raise ValueError(f"`{name}_mg_per_m2` must be finite and non-negative, got {dose!r}.")
    return doses


def conditioning(
    model: SLECarTModel | None = None,
    *,
    flu_mg_per_m2: float | Sequence[float] = 25.0,
    flu_days: Sequence[float] = (-5.0, -4.0, -3.0),
    cy_mg_per_m2: float | Sequence[float] = 1000.0,
    cy_days: Sequence[float] = (-3.0,),
    weight_kg: float | None = None,
    height_cm: float | None = None,
) -> ck.Regimen:
    """A fludarabine/cyclophosphamide conditioning in mg/m² on chosen days (no CAR-T).

    **Arguments:**

    - `model`: its `body` gives the BSA (Mosteller) unless `weight_kg`/`height_cm` are given.
    - `flu_mg_per_m2`, `flu_days`: fludarabine per day (a number, or one per day) on these days (30-min infusions).
    - `cy_mg_per_m2`, `cy_days`: cyclophosphamide likewise (60-min infusions). Empty `*_days` leave a drug out.
    """
    w, h = _body(model, weight_kg, height_cm)
    # the body of a model preset (human or mouse) is checked by its parameter bounds; a user's numbers by the
    # human plausibility check of `bsa_mosteller`
    area = (
        math.sqrt(w * h / 3600.0)
        if model is not None and weight_kg is None and height_cm is None
        else ck.bsa_mosteller(w, h)
    )
    reg = ck.Regimen()
    flu_days, cy_days = tuple(flu_days), tuple(cy_days)
    for d, dose in zip(flu_days, _per_day("flu", flu_mg_per_m2, flu_days)):
        reg = reg + ck.fludarabine(dose, (float(d),), bsa_m2=area)
    for d, dose in zip(cy_days, _per_day("cy", cy_mg_per_m2, cy_days)):
        reg = reg + ck.cyclophosphamide(dose, (float(d),), bsa_m2=area)
    return reg


def flu_cy_regimen(
    model: SLECarTModel | None = None,
    *,
    flu_mg_per_m2: float | Sequence[float] = 25.0,
    flu_days: Sequence[float] = (-5.0, -4.0, -3.0),
    cy_mg_per_m2: float | Sequence[float] = 1000.0,
    cy_days: Sequence[float] = (-3.0,),
    product: str | Product | None = None,
    cells_per_kg: float | None = None,
    cells: float | None = None,
    weight_kg: float | None = None,
    height_cm: float | None = None,
) -> ck.Regimen:
    """Any Flu/Cy conditioning (mg/m² on chosen days, see `conditioning`) followed by CAR-T on day 0.

    The CAR-T dose is `cells`, `cells_per_kg` or the product's usual dose (`car_cells`).

    **Example:** the tisa-cel ALL label regimen, Flu 30 mg/m² × 4 and Cy 500 mg/m² × 2:
    `flu_cy_regimen(model, flu_mg_per_m2=30, flu_days=(-6, -5, -4, -3), cy_mg_per_m2=500, cy_days=(-6, -5))`.
    """
    w, h = _body(model, weight_kg, height_cm)
    return conditioning(
        None,
        flu_mg_per_m2=flu_mg_per_m2,
        flu_days=flu_days,
        cy_mg_per_m2=cy_mg_per_m2,
        cy_days=cy_days,
        weight_kg=w,
        height_cm=h,
    ) + car_infusion(None, product=product, cells_per_kg=cells_per_kg, cells=cells, weight_kg=w)


def erlangen_regimen(
    model: SLECarTModel | None = None,
    *,
    weight_kg: float | None = None,
    height_cm: float | None = None,
    car_t_per_kg: float | None = None,
    product: str | Product | None = None,
) -> ck.Regimen:
    """The Erlangen/RESET regimen: Flu 25 mg/m² on days −5, −4, −3 + Cy 1,000 mg/m² on day −3 + CAR-T on day 0.

    **Arguments:** `model` (its body size, unless `weight_kg`/`height_cm` are given); `car_t_per_kg` (default
    1e6/kg, Mackensen 2022 [R]) or `product` (its usual dose).

    **Example:**

    ```python
    from carkinetics.models.sle import erlangen_regimen
    reg = erlangen_regimen(weight_kg=70.0, height_cm=170.0)   # 3 Flu infusions, 1 Cy infusion, 7e7 CAR-T
    ```
    """
    if car_t_per_kg is None and product is None:
        car_t_per_kg = 1e6
    return flu_cy_regimen(model, product=product, cells_per_kg=car_t_per_kg, weight_kg=weight_kg, height_cm=height_cm)


def no_conditioning_regimen(
    model: SLECarTModel | None = None,
    *,
    product: str | Product | None = None,
    cells_per_kg: float | None = None,
    cells: float | None = None,
    weight_kg: float | None = None,
) -> ck.Regimen:
    """CAR-T on day 0 without conditioning (as hypoimmune allogeneic CAR-T in NZB/W mice, which needed none)."""
    return ck.Regimen(
        [car_infusion(model, product=product, cells_per_kg=cells_per_kg, cells=cells, weight_kg=weight_kg)]
    )


def mouse_regimen(
    model: SLECarTModel | None = None, *, cells: float = 1e6, tbi_fraction: float = 0.9, tbi_day: float = -1.0
) -> ck.Regimen:
    """Mouse protocol: sublethal total-body irradiation (a `ck.FractionalKill` of `TBI_STATES`), CAR-T on day 0.

    **Arguments:** `model` (validated only); `cells` CAR-T per mouse (typical 1e6 [M]); `tbi_fraction` the
    lymphocyte kill fraction of the irradiation (0 = none; the lupus papers' doses were not retrievable [A]);
    `tbi_day` (≤ 0).

    **Example:**

    ```python
    from carkinetics.models.sle import load_preset, mouse_regimen
    reg = mouse_regimen(load_preset("mouse_nzbw"), cells=1e6, tbi_fraction=0.9)
    ```
    """
    if model is not None and not isinstance(model, SLECarTModel):
        raise ValueError(f"`model` must be an SLECarTModel or None, got {type(model).__name__}.")
    if not (0.0 <= tbi_fraction <= 1.0):
        raise ValueError(f"`tbi_fraction` must lie in [0, 1], got {tbi_fraction!r}.")
    if tbi_day > 0.0:
        raise ValueError(f"`tbi_day` must be on or before the infusion (<= 0), got {tbi_day!r}.")
    # the irradiation is always part of the regimen (fraction 0 = none), so regimens of any intensity share one
    # structure and can be batched
    return ck.Regimen(
        [ck.FractionalKill(tbi_day, tbi_fraction, TBI_STATES), ck.car_t_infusion(state=CAR_DOSE_STATE, cells=cells)]
    )


def tocilizumab(day: float, *, weight_kg: float = 70.0, mg_per_kg: float = 8.0) -> ck.Bolus:
    """Tocilizumab IV (8 mg/kg, the label dose for CRS [M]) as a bolus into `toci_central` (mg)."""
    if not (weight_kg > 0 and mg_per_kg >= 0):
        raise ValueError(
            f"`weight_kg` must be positive and `mg_per_kg` non-negative, got {weight_kg!r}, {mg_per_kg!r}."
        )
    return ck.Bolus(day, mg_per_kg * weight_kg, "toci_central")


def dexamethasone(days: float | Sequence[float], *, mg: float = 10.0) -> ck.Regimen:
    """Dexamethasone IV, `mg` on each of `days` (10 mg is a usual CRS dose [M]), as boluses into `dex` (mg)."""
    day_list = (cast(float, days),) if np.ndim(days) == 0 else tuple(cast(Sequence[float], days))
    if not day_list:
        raise ValueError("`days` must list at least one day.")
    if not (np.isfinite(mg) and mg >= 0):
        raise ValueError(f"`mg` must be finite and non-negative, got {mg!r}.")
    return ck.Regimen([ck.Bolus(float(d), mg, "dex") for d in day_list])
