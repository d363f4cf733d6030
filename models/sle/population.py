"""Inter-individual variability of the SLE application: the one table of random effects (`SLE_IIV`), the virtual
SLE population built from it (`sle_virtual_population`) and the per-patient read-outs compared with the published
between-patient figures (`population_metrics`).

**Random effects** act on the unconstrained scale of each parameter (`ck.virtual_population`): for a positive
parameter `θ_i = θ_typ·exp(η_i)`, `η_i ~ N(0, ω²)`; for a fraction the scaled logit. The typical values are those
of the model passed in (the calibrated default, `load_preset("human")`). Where a published between-patient spread
exists it sets ω (Stein 2019 IIV of the cellular kinetics; laboratory reference ranges of the untreated blood
counts); where it does not, ω is chosen so that the virtual population reproduces a published between-patient
number (tag `F`, the number and the script that chose it named in the source); the rest are assumptions (`A`).
Correlations between random effects are not known and are set to zero.

**Caveat.** The Stein 2019 ω come from paediatric/young-adult B-ALL treated with tisa-cel; they are applied to the
SLE population unchanged (the SLE cellular-kinetic spread has not been published).

**Example:**

```python
import jax
from carkinetics.models.sle import load_preset
from carkinetics.models.sle.population import sle_virtual_population
pop = sle_virtual_population(load_preset("human"), jax.random.key(0), 100)
pop.samples["rejection.r_exp"].shape      # (100,)
```
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp

import carkinetics as ck
from carkinetics.models.sle.metrics import B_RETURN_PER_UL, DORIS_SLEDAI, REMISSION_SLEDAI, save_times
from carkinetics.models.sle.products import with_product
from carkinetics.models.sle.regimens import erlangen_regimen

_STEIN = "Stein AM et al., CPT Pharmacometrics Syst Pharmacol 2019;8:285, doi:10.1002/psp4.12388 (Table 1 IIV)"


@dataclasses.dataclass(frozen=True)
class RandomEffect:
    """One random effect: the parameter (dotted name), ω (sd on the unconstrained scale), source and tag."""

    parameter: str
    omega: float
    source: str
    tag: str


#: The inter-individual variability of the SLE virtual population (the only place these numbers live).
SLE_IIV: tuple[RandomEffect, ...] = (
    RandomEffect(
        "car.rho",
        0.19,
        f"{_STEIN}: omega^2 2.4 on log fold expansion; ln foldx = rho*Tmax, so sd(ln rho) = 1.55/ln(3900) "
        "= 0.19 at the typical Tmax",
        "D",
    ),
    RandomEffect("car.alpha", 0.95, f"{_STEIN}: alpha omega^2 0.91", "R"),
    RandomEffect("car.k_mem", 0.89, f"{_STEIN}: F_B omega^2 0.80 (F_B = k_mem/(alpha - beta))", "R"),
    RandomEffect("car.beta", 0.93, f"{_STEIN}: beta omega^2 0.86", "R"),
    RandomEffect(
        "bcell.b_blood0",
        0.41,
        "normal blood CD19+ B cells 100-500/uL (Synnovis/CDLI laboratory reference ranges [R]) read as a "
        "95 % range: ln(500/100)/3.92",
        "D",
    ),
    RandomEffect(
        "tcell.t_blood0",
        0.28,
        "normal blood CD3+ T cells 700-2,100/uL (Synnovis/CDLI laboratory reference ranges [R]) read as a "
        "95 % range: ln(2100/700)/3.92",
        "D",
    ),
    RandomEffect(
        "rejection.r_exp",
        0.25,
        "chosen so that the SD of B-cell reappearance in the virtual population is near the published 32 d "
        "(Mackensen A et al., Nat Med 2022;28:2124: 110 +/- 32 d, n = 5), by calibration/"
        "population_report.py --tune",
        "F",
    ),
    RandomEffect(
        "myeloid.k_damp",
        1.0,
        "myeloid (IL-6) responsiveness to the DAMPs of killed cells, the term that dominates the CRS drive: chosen "
        "so that the CRS grade distribution of the virtual population is near the published one (Mueller F et al., "
        "N Engl J Med 2024;390:687: none 4/15, grade 1 10/15, grade 2 1/15), by calibration/population_report.py "
        "--tune",
        "F",
    ),
    RandomEffect(
        "bcell.auto_breach",
        1.0,
        "assumption: the residual tolerance breach (relapse risk) varies between patients by a factor ~e "
        "(no between-patient data; remission to 24 months in all 8 SLE patients of Mueller 2024 [R])",
        "A",
    ),
)


def iiv_omega(iiv: tuple[RandomEffect, ...] = SLE_IIV, **overrides: float) -> dict[str, float]:
    """`{parameter: ω}` of an IIV table, with `overrides` (keyword = parameter with `.` replaced by `__`)."""
    omega = {r.parameter: float(r.omega) for r in iiv}
    for k, v in overrides.items():
        name = k.replace("__", ".")
        if name not in omega:
            raise ValueError(f"Override {k!r} names no random effect; the table has {sorted(omega)}.")
        omega[name] = float(v)
    return omega


def sle_virtual_population(
    model: Any, key: jax.Array, n: int, *, omega: dict[str, float] | None = None
) -> ck.Population:
    """`n` virtual SLE patients around the typical values of `model` with the random effects of `SLE_IIV`.

    **Arguments:** `model` (typical values, e.g. `load_preset("human")`); `key` a `jax.random` key; `n` members;
    `omega` to replace the table's ω (e.g. `iiv_omega(rejection__r_exp=0.3)`).

    **Returns:** a [`carkinetics.Population`][], simulated by `simulate_sle_population` (or
    [`carkinetics.sweep_model`][]).
    """
    return ck.virtual_population(model, key, n, omega=omega if omega is not None else iiv_omega())


#: The per-patient read-outs of `population_metrics`: name -> (unit, definition).
POPULATION_METRICS: dict[str, tuple[str, str]] = {
    "B depleted": ("1", f"1 if blood B cells fell below {B_RETURN_PER_UL:g}/uL after the infusion"),
    "B return": (
        "d",
        f"first day blood B cells rise above {B_RETURN_PER_UL:g}/uL after their depletion (the horizon if never)",
    ),
    "B returned": ("1", "1 if B cells were depleted and reappeared before the horizon"),
    "B aplasia": ("d", f"days from day 0 with blood B cells below {B_RETURN_PER_UL:g}/uL"),
    "CRS index": ("0-4", "peak of the continuous ASTCT-like CRS index (integer part = grade)"),
    "anti-dsDNA index d91": ("1", "anti-dsDNA relative to its positivity cutoff at day 91 (< 1 negative)"),
    "SLEDAI d91": ("1", "SLEDAI-2K-like index at day 91"),
    "SLEDAI max d91-730": ("1", "highest SLEDAI-2K-like index from month 3 to month 24"),
    "CAR Cmax": ("cells/uL", "peak blood CAR-T after day 1"),
    "CAR Tmax": ("d", "day of the blood CAR-T peak after day 1"),
}


def population_metrics(sol: ck.Solution) -> dict[str, Any]:
    """The per-patient read-outs (`POPULATION_METRICS`) of one solution on a grid from day -6 to >= 730."""
    m = ck.metrics
    o, ts = sol.observables, sol.ts
    t_down = m.first_crossing(ts, o.b_blood, B_RETURN_PER_UL, "down", t_start=0.0)
    depleted = jnp.isfinite(t_down)
    ret = m.first_crossing(ts, o.b_blood, B_RETURN_PER_UL, "up", t_start=jnp.where(depleted, t_down, ts[-1]))
    car = jnp.where(ts >= 1.0, o.car_blood, 0.0)
    return {
        "B depleted": depleted.astype(ts.dtype),
        "B return": jnp.where(jnp.isfinite(ret), ret, ts[-1]),
        "B returned": jnp.isfinite(ret).astype(ts.dtype),
        "B aplasia": m.time_below(ts, o.b_blood, B_RETURN_PER_UL, t_start=0.0),
        "CRS index": m.cmax(ts, o.crs_grade, t_start=0.0),
        "anti-dsDNA index d91": m.value_at(ts, o.anti_dsdna_index, 91.0),
        "SLEDAI d91": m.value_at(ts, o.sledai, 91.0),
        "SLEDAI max d91-730": m.cmax(ts, o.sledai, t_start=91.0, t_end=730.0),
        "CAR Cmax": m.cmax(ts, car),
        "CAR Tmax": m.tmax(ts, car),
    }


def simulate_sle_population(
    model: Any,
    population: ck.Population,
    *,
    product: str | None = None,
    t_end: float = 730.0,
    metrics: Callable[[ck.Solution], Mapping[str, Any]] = population_metrics,
    chunk_size: int = 512,
    devices: Any = None,
    checkpoint: str | os.PathLike | None = None,
    progress: bool = False,
) -> ck.SweepResult:
    """Simulate every virtual patient of `population` under the Erlangen regimen and read out `metrics`.

    One [`carkinetics.sweep_model`][] over the population: chunks of `chunk_size` patients, each integrated with
    one ensemble call. After [`carkinetics.distributed_setup`][], `devices="all"` splits every chunk over the
    devices of every process and every process returns the same result; process 0 alone writes the `checkpoint`
    directory, which a rerun (with any process count) resumes from.

    **Arguments:**

    - `model`: the typical patient the population was drawn around (e.g. `load_preset("human")`).
    - `population`: from `sle_virtual_population`.
    - `product`: a product name of `PRODUCTS` (`with_product`) infused instead of the model's own.
    - `t_end`: horizon (days, at least 730: `population_metrics` reads months 3 to 24); the save grid is
      `save_times(t_end)`.
    - `metrics`: per-patient read-outs of a solution (default `population_metrics`).
    - `chunk_size`, `devices`, `checkpoint`, `progress`: as for [`carkinetics.sweep`][].

    **Returns:** a [`carkinetics.SweepResult`][] whose `outputs` are the metrics, one row per patient (failed
    patients NaN, `ok` False).

    **Example:**

    ```python
    import jax
    from carkinetics.models.sle import load_preset
    from carkinetics.models.sle.population import simulate_sle_population, sle_virtual_population
    model = load_preset("human")
    res = simulate_sle_population(model, sle_virtual_population(model, jax.random.key(0), 4))
    res.outputs["B return"]                   # day of B-cell reappearance of each patient
    ```
    """
    if not isinstance(population, ck.Population):
        raise ValueError(
            "simulate_sle_population: `population` must be a carkinetics Population (from "
            f"`sle_virtual_population`); got {type(population).__name__}."
        )
    if not (isinstance(t_end, (int, float)) and math.isfinite(t_end) and t_end >= 730.0):
        raise ValueError(
            f"simulate_sle_population: `t_end` must be at least 730 days (the read-outs span months 3 to 24); "
            f"got {t_end!r}."
        )
    patient = model if product is None else with_product(model, product)
    regimen = erlangen_regimen(patient) if product is None else erlangen_regimen(patient, product=product)
    return ck.sweep_model(
        patient,
        regimen,
        save_times(float(t_end)),
        population,
        metrics=metrics,
        chunk_size=chunk_size,
        devices=devices,
        checkpoint=checkpoint,
        progress=progress,
    )


__all__ = [
    "DORIS_SLEDAI",
    "POPULATION_METRICS",
    "REMISSION_SLEDAI",
    "SLE_IIV",
    "RandomEffect",
    "iiv_omega",
    "population_metrics",
    "simulate_sle_population",
    "sle_virtual_population",
]
