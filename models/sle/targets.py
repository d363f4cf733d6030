"""The published calibration targets of the SLE application: their vocabulary and their files.

The tidy CSV files live in the repository's `calibration/data/` and are installed as package data
(`carkinetics.models.sle.data`), so the library, the docs and the fits read the same files from any folder.
"""

from __future__ import annotations

import importlib.resources
from collections.abc import Sequence

import carkinetics as ck

#: The vocabulary of the SLE targets: quantity name -> physical dimension (a dimension of `carkinetics.UNITS`);
#: a target row's unit must have its quantity's dimension.
QUANTITIES: dict[str, str] = {
    # CAR-T cellular kinetics
    "car_blood": "cell_concentration",
    "car_transgene": "transgene_level",
    "car_peak_blood": "cell_concentration",
    "car_peak_transgene": "transgene_level",
    "car_tmax": "time",
    "car_doubling_time": "time",
    "car_fold_expansion": "dimensionless",
    "car_contraction_rate": "rate",
    "car_contraction_half_life": "time",
    "car_persistence_rate": "rate",
    "car_persistence_half_life": "time",
    "car_memory_fraction": "dimensionless",
    "car_persistence_duration": "time",
    # B and T cells
    "b_blood": "cell_concentration",
    "t_blood": "cell_concentration",
    "wbc_blood": "cell_concentration",
    "b_cell_reappearance_time": "time",
    "b_cell_aplasia_duration": "time",
    "b_turnover_rate": "rate",
    "naive_b_turnover_rate": "rate",
    "naive_b_half_life": "time",
    # antibodies and disease
    "anti_dsdna_negative_fraction": "dimensionless",
    "anti_dsdna_fraction_of_baseline": "dimensionless",
    "total_igg_change": "dimensionless",
    "vaccine_igg_change": "dimensionless",
    "igg_half_life": "time",
    "llpc_fraction_of_asc": "dimensionless",
    "sledai": "dimensionless",
    "doris_remission_fraction": "dimensionless",
    "untreated_mean_survival_age": "time",
    # CRS and cytokines
    "crs_grade1_fraction": "dimensionless",
    "crs_grade2_fraction": "dimensionless",
    "crs_any_fraction": "dimensionless",
    "crs_max_grade": "dimensionless",
    "il15_tmax": "time",
    "il6_half_life": "time",
}


def target_file(name: str) -> str:
    """Path of an installed target file: `"human"` (SLE CAR-T outcomes and B-cell/IgG biology), `"oncology_ck"`
    (oncology CAR-T cellular kinetics) or `"mouse"` (murine lupus and syngeneic CAR-T)."""
    files = {"human": "human_sle_targets.csv", "oncology_ck": "oncology_ck_targets.csv", "mouse": "mouse_targets.csv"}
    if name not in files:
        raise ValueError(f"Unknown target file {name!r}; known files are {sorted(files)}.")
    return str(importlib.resources.files("carkinetics.models.sle.data").joinpath(files[name]))


def load_sle_targets(names: str | Sequence[str] = ("human",)) -> ck.TargetTable:
    """The named installed target files, validated against `QUANTITIES` (see [`carkinetics.load_targets`][]).

    **Example:**

    ```python
    from carkinetics.models.sle import load_sle_targets
    t = load_sle_targets("human")
    t["mackensen2022_b_reappearance"].interval()      # (78.0, 142.0) days
    ```
    """
    if isinstance(names, str):
        names = [names]
    return ck.load_targets([target_file(n) for n in names], quantities=QUANTITIES)
