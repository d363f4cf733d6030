"""Regimens of the SLE application: the Erlangen Flu/Cy + CAR-T protocol, the mouse irradiation protocol and
tocilizumab."""

from __future__ import annotations

import carkinetics as ck

from carkinetics.models.sle.model import SLECarTModel


def erlangen_regimen(model: SLECarTModel | None = None, *, weight_kg: float = 70.0, height_cm: float = 170.0,
                     car_t_per_kg: float = 1e6) -> ck.Regimen:
    """The Erlangen/RESET regimen: Flu 25 mg/m² on days −5, −4, −3 + Cy 1,000 mg/m² on day −3 + CAR-T on day 0.

    **Arguments:**

    - `model`: if given, its `body.weight_kg`/`body.height_cm` override `weight_kg`/`height_cm`.
    - `weight_kg`, `height_cm`: body size for BSA (Mosteller) and the per-kg CAR-T dose.
    - `car_t_per_kg`: CAR-T cells per kg (Mackensen 2022: 1e6/kg [R]).

    **Returns:** a `ck.Regimen` dosing `flu_central`, `cy_central` (mg) and `car_effector` (cells).

    **Example:**

    ```python
    from carkinetics.models.sle import erlangen_regimen
    reg = erlangen_regimen(weight_kg=70.0, height_cm=170.0)   # 3 Flu infusions, 1 Cy infusion, 7e7 CAR-T
    ```
    """
    if model is not None:
        weight_kg, height_cm = float(model.body.weight_kg), float(model.body.height_cm)
    if not (weight_kg > 0 and height_cm > 0):
        raise ValueError(f"`weight_kg` and `height_cm` must be positive, got weight_kg={weight_kg!r}, "
                         f"height_cm={height_cm!r}.")
    area = ck.bsa_mosteller(weight_kg, height_cm)
    return (ck.fludarabine(25.0, (-5.0, -4.0, -3.0), bsa_m2=area)
            + ck.cyclophosphamide(1000.0, (-3.0,), bsa_m2=area)
            + ck.car_t_infusion(cells_per_kg=car_t_per_kg, weight_kg=weight_kg))


#: States hit by total-body irradiation in `mouse_regimen` (lymphocytes; CD19⁻ LLPC are radio-resistant).
TBI_STATES = ("t_cells", "nk_cells", "b_marrow", "b_blood", "b_tissue", "b_memory", "plasmablasts")


def mouse_regimen(model: SLECarTModel | None = None, *, cells: float = 1e6, tbi_fraction: float = 0.9,
                  tbi_day: float = -1.0) -> ck.Regimen:
    """Mouse protocol: total-body irradiation as a `ck.FractionalKill` on the lymphocyte states, then CAR-T on day 0.

    **Arguments:**

    - `model`: unused except for validation (kept for symmetry with `erlangen_regimen`).
    - `cells`: CAR-T cells per mouse (typical 1e6; translation.md a5 [M]).
    - `tbi_fraction`: fraction of lymphocytes killed by sublethal irradiation (0 = no conditioning) [A].
    - `tbi_day`: day of irradiation (before infusion).

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
    doses = [ck.car_t_infusion(cells=cells)]
    if tbi_fraction > 0.0:
        doses.insert(0, ck.FractionalKill(tbi_day, tbi_fraction, TBI_STATES))
    return ck.Regimen(doses)


def tocilizumab(day: float, *, weight_kg: float = 70.0, mg_per_kg: float = 8.0) -> ck.Bolus:
    """Tocilizumab IV dose (8 mg/kg by default, label dose for CRS) as a bolus into `toci_central` (mg)."""
    if not (weight_kg > 0 and mg_per_kg >= 0):
        raise ValueError(f"`weight_kg` must be positive and `mg_per_kg` non-negative, got {weight_kg!r}, {mg_per_kg!r}.")
    return ck.Bolus(day, mg_per_kg * weight_kg, "toci_central")
