"""Lymphodepletion: fludarabine and cyclophosphamide PK, delayed chemotherapy kill, lymphocyte homeostasis, IL-7/IL-15.

Two parameter groups live here: `LymphodepletionParams` (group `ld`: drug PK, kill potency) and `TCellParams`
(group `tcell`: endogenous T and NK cells, the homeostatic cytokines IL-7 and IL-15). Time is in days.

**Drug PK** (amounts in mg; concentrations in mg/L; clearances scaled allometrically, CL × (W/70)^0.75,
V × W/70, as in Langenhorst 2019):

    d flu_central/dt = -(CL_nr + CL_r)/V1·A1 - Q2/V1·A1 + Q2/V2·A2 - Q3/V1·A1 + Q3/V3·A3
    d flu_p2/dt      =  Q2/V1·A1 - Q2/V2·A2
    d flu_p3/dt      =  Q3/V1·A1 - Q3/V3·A3
    d cy_central/dt  = -CL_cy/V_cy·A_cy
    d flu_auc/dt = A1/V1,   d cy_auc/dt = A_cy/V_cy        (mg·d/L; so dose = CL·AUC + amount left)

with CL_r = f_renal · eGFR (fludarabine renal clearance proportional to GFR).

**Kill.** The chemotherapy kill signal is `drive = k_flu·C_flu + k_cy·C_cy` (1/d). Endogenous lymphocytes die at
the rate `sens_x · ld_effect`, where `ld_effect` follows the drive with first-order delay `k_e0`
(d ld_effect/dt = k_e0 (drive − ld_effect)): apoptosis of cells damaged during exposure is executed over the
following days, which puts the lymphocyte nadir, and hence the IL-15 peak, after infusion. The delay preserves
the area, so the log-kill of a regimen is `sens_x (k_flu·AUC_flu + k_cy·AUC_cy)`. CAR-T cells feel the undelayed
drive (they are infused after the drugs are cleared).

**T and NK cells** (total-body cell numbers; a fixed fraction is in blood):

    dT/dt  = s_T + r_T·h7·T − d_T·T − sens_t·ld_effect·T        h7 = 1 + g7 (IL7/IL7₀ − 1)
    dNK/dt = s_NK + r_NK·(IL15/IL15₀)·NK − d_NK·NK − sens_nk·ld_effect·NK

with the baseline split of production into thymic/marrow output `s = f_out·d·X₀` and homeostatic division
`r = (1 − f_out)·d`, so the untreated state is a steady state.

**Homeostatic cytokines** (pg/mL), consumption proportional to the lymphocyte mass that carries the receptor:

    dIL7/dt  = k7·IL7₀ − k7·((1 − c7) + c7·L7)·IL7          L7  = (T + CAR)/T₀
    dIL15/dt = k15·IL15₀ − k15·((1 − c15) + c15·L15)·IL15   L15 = w_nk·NK/NK₀ + (1 − w_nk)(T + CAR)/T₀

so depletion raises the level towards `IL₀/(1 − c)` (the surge emerges from depletion) and the expansion of
CAR-T cells and NK cells consumes it again.

The parameter tables (values, units, tags, sources) are in the docstrings of `LymphodepletionParams` and
`TCellParams`, generated from the fields. Every parameter with its full source is in `parameter_table()` of the model.

**References:** Langenhorst JB et al., Clin Pharmacokinet 2019, doi:10.1007/s40262-018-0715-9; Ahmed JH et al.,
Front Pharmacol 2020;11:406; Kochenderfer JN et al., J Clin Oncol 2017;35:1803; De Bock M et al., PLoS One
2013;8:e55876; den Braber I et al., Immunity 2012;36:288.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import equinox as eqx
import jax.numpy as jnp

import carkinetics as ck
from carkinetics.models.sle._doc import document_params

#: litres per day per mL/min (1 mL/min × 1440 min/d / 1000 mL/L).
_ML_MIN_TO_L_D = 1.44


@document_params
class LymphodepletionParams(eqx.Module):
    """Parameter group `ld`: fludarabine/cyclophosphamide PK and the chemotherapy kill."""

    flu_cl_nonrenal: float = ck.param(
        3.24 * 24,
        unit="L/d",
        description="fludarabine non-renal clearance per 70 kg (3.24 L/h x 24)",
        source="Langenhorst JB et al., Clin Pharmacokinet 2019, doi:10.1007/s40262-018-0715-9",
        tag="D",
    )
    flu_renal_gfr_fraction: float = ck.param(
        0.782,
        unit="1",
        description="fludarabine renal clearance as a fraction of eGFR",
        source="Langenhorst 2019 (CL_renal = eGFR x 0.782; units not checked against the paper)",
        tag="M",
    )
    flu_v1: float = ck.param(
        39.0,
        unit="L",
        description="fludarabine central volume per 70 kg",
        source="Langenhorst 2019, doi:10.1007/s40262-018-0715-9",
        tag="R",
    )
    flu_v2: float = ck.param(
        20.0,
        unit="L",
        description="fludarabine first peripheral volume per 70 kg",
        source="Langenhorst 2019, doi:10.1007/s40262-018-0715-9",
        tag="R",
    )
    flu_v3: float = ck.param(
        50.0,
        unit="L",
        description="fludarabine second peripheral volume per 70 kg",
        source="Langenhorst 2019, doi:10.1007/s40262-018-0715-9",
        tag="R",
    )
    flu_q2: float = ck.param(
        8.6 * 24,
        unit="L/d",
        description="fludarabine intercompartmental clearance Q2 (8.6 L/h x 24)",
        source="Langenhorst 2019, doi:10.1007/s40262-018-0715-9",
        tag="D",
    )
    flu_q3: float = ck.param(
        3.8 * 24,
        unit="L/d",
        description="fludarabine intercompartmental clearance Q3 (3.8 L/h x 24)",
        source="Langenhorst 2019, doi:10.1007/s40262-018-0715-9",
        tag="D",
    )
    cy_cl: float = ck.param(
        5.41 * 24,
        unit="L/d",
        description="cyclophosphamide clearance per 70 kg (5.41 L/h x 24)",
        source="Ahmed JH et al., Front Pharmacol 2020;11:406",
        tag="D",
    )
    cy_v: float = ck.param(
        46.5,
        unit="L",
        description="cyclophosphamide volume per 70 kg (BSA^0.861 scaling replaced by W/70)",
        source="Ahmed JH et al., Front Pharmacol 2020;11:406",
        tag="R",
    )
    k_flu: float = ck.param(
        1.6,
        unit="L/(mg*d)",
        description="lymphocyte kill rate per mg/L of fludarabine",
        source="hand-set: Erlangen Flu AUC ~0.72 mg*d/L gives log-kill ~1.15 (half of a ~90% lymphocyte nadir [M])",
        tag="A",
    )
    k_cy: float = ck.param(
        0.08,
        unit="L/(mg*d)",
        description="lymphocyte kill rate per mg/L of cyclophosphamide",
        source="hand-set: Cy 1,000 mg/m2 AUC ~14 mg*d/L gives log-kill ~1.1 (other half of a ~90% nadir [M])",
        tag="A",
    )
    k_e0: float = ck.param(
        0.5,
        unit="1/d",
        description="rate of the delayed execution of chemotherapy-induced lymphocyte death",
        source="hand-set to put the IL-15 peak near day 2 after infusion (Kochenderfer JN et al., J Clin Oncol "
        "2017;35:1803 [R])",
        tag="A",
    )
    sens_b: float = ck.param(
        1.0,
        unit="1",
        description="chemotherapy sensitivity of B-lineage cells relative to T cells",
        source="assumption (B and T equally sensitive)",
        tag="A",
    )
    sens_t: float = ck.param(
        1.0,
        unit="1",
        description="chemotherapy sensitivity of T cells (reference)",
        source="reference population (=1 by definition)",
        tag="A",
    )
    sens_nk: float = ck.param(
        1.0,
        unit="1",
        description="chemotherapy sensitivity of NK cells relative to T cells",
        source="assumption (NK as sensitive as T cells)",
        tag="A",
    )


@document_params
class TCellParams(eqx.Module):
    """Parameter group `tcell`: endogenous T and NK cells and the homeostatic cytokines IL-7 and IL-15."""

    t_blood0: float = ck.param(
        1000.0,
        unit="cells/uL",
        description="untreated blood CD3+ T-cell count",
        source="chosen inside the normal range 700-2,100/uL (Synnovis/CDLI lab reference ranges "
        "[R]); SLE is often lymphopenic [M]",
        tag="A",
    )
    f_blood_t: float = ck.param(
        0.033,
        unit="1",
        description="fraction of T cells in blood",
        source="Hosseini 2020 partitions (spleen 200, LN 190, BM 60; volumes 210/400/500 mL; PB 5,000 mL): "
        "5000/(5000+42000+76000+30000) = 0.033",
        tag="D",
        upper=1.0,
    )
    d_t: float = ck.param(
        0.003,
        unit="1/d",
        description="T-cell loss rate (mixed naive/memory pool)",
        source="assumption informed by half naive (t1/2 4-6.5 y) and half memory (0.4-0.7 y) T cells (Vrisekoop 2008, "
        "den Braber 2012 [R]): 0.5*ln2/(5*365) + 0.5*ln2/(0.55*365) = 0.0019/d, raised to 0.003/d for "
        "effector turnover",
        tag="A",
    )
    f_thymic: float = ck.param(
        0.15,
        unit="1",
        description="fraction of T-cell production from the thymus (rest: peripheral division)",
        source="den Braber I et al., Immunity 2012;36:288 (thymus 10-20% of naive T production in adults)",
        tag="R",
        upper=1.0,
    )
    g_il7: float = ck.param(
        5.0,
        unit="1",
        description="gain of homeostatic T-cell division on the relative IL-7 excess",
        source="hand-set so blood T cells recover over months after Flu/Cy (Erlangen SLE vs B-NHL, Blood 2025, "
        "doi:10.1182/blood.2025028375 [R qualitative])",
        tag="A",
    )
    nk_blood0: float = ck.param(
        200.0,
        unit="cells/uL",
        description="untreated blood NK-cell count",
        source="textbook normal range 90-600/uL",
        tag="M",
    )
    f_blood_nk: float = ck.param(
        0.1, unit="1", description="fraction of NK cells in blood", source="assumption", tag="A", upper=1.0
    )
    d_nk: float = ck.param(
        0.07,
        unit="1/d",
        description="NK-cell loss rate (lifespan ~2 weeks)",
        source="deuterium labelling of human NK cells (~2 week lifespan)",
        tag="M",
    )
    f_nk_marrow: float = ck.param(
        0.5,
        unit="1",
        description="fraction of NK production from marrow (rest: IL-15-driven division)",
        source="assumption",
        tag="A",
        upper=1.0,
    )
    il7_0: float = ck.param(
        3.8,
        unit="pg/mL",
        description="baseline plasma IL-7",
        source="De Bock M et al., PLoS One 2013;8:e55876 (baseline plasma levels)",
        tag="R",
    )
    il15_0: float = ck.param(
        2.4,
        unit="pg/mL",
        description="baseline plasma IL-15",
        source="De Bock M et al., PLoS One 2013;8:e55876 (baseline plasma levels)",
        tag="R",
    )
    k_il7: float = ck.param(
        2.0,
        unit="1/d",
        description="IL-7 total clearance rate at baseline",
        source="rhIL-7 terminal t1/2 ~6-9 h",
        tag="M",
    )
    k_il15: float = ck.param(
        10.0,
        unit="1/d",
        description="IL-15 total clearance rate at baseline",
        source="IL-15 plasma t1/2 ~1-2 h",
        tag="M",
    )
    c_il7: float = ck.param(
        0.6,
        unit="1",
        description="fraction of IL-7 clearance due to lymphocyte consumption at baseline",
        source="chosen so the maximal surge 1/(1-c) is 2.5x (IL-7 rises ~2-3x after lymphodepletion [M])",
        tag="A",
        upper=1.0,
    )
    c_il15: float = ck.param(
        0.85,
        unit="1",
        description="fraction of IL-15 clearance due to lymphocyte consumption at baseline",
        source="maximal surge 1/(1-c) = 6.7x, above the ~5x after conditioning (De Bock 2013 [R]; 5-10x [M])",
        tag="D",
        upper=1.0,
    )
    w_nk_il15: float = ck.param(
        0.5,
        unit="1",
        description="share of NK cells in the IL-15 sink at baseline",
        source="assumption",
        tag="A",
        upper=1.0,
    )


# ------------------------------------------------------------------------------------------------------------------
# Pure functions (used by the composed model; every argument is a named quantity)


def flu_clearance(ld: LymphodepletionParams, weight_kg, egfr_ml_min):
    """Total fludarabine clearance (L/d) for a body weight (kg) and eGFR (mL/min), allometric exponent 0.75."""
    scale = (weight_kg / 70.0) ** 0.75
    return (ld.flu_cl_nonrenal + ld.flu_renal_gfr_fraction * egfr_ml_min * _ML_MIN_TO_L_D) * scale


class FluPK(NamedTuple):
    """Derivatives (mg/d) of the fludarabine states and the central concentration (mg/L)."""

    d_central: Any
    d_p2: Any
    d_p3: Any
    conc: Any


def flu_pk(ld: LymphodepletionParams, weight_kg, egfr_ml_min, central, p2, p3) -> FluPK:
    """Three-compartment fludarabine PK (amounts in mg) with allometric scaling."""
    w = weight_kg / 70.0
    v1, v2, v3 = ld.flu_v1 * w, ld.flu_v2 * w, ld.flu_v3 * w
    q2, q3 = ld.flu_q2 * w**0.75, ld.flu_q3 * w**0.75
    cl = flu_clearance(ld, weight_kg, egfr_ml_min)
    c1, c2, c3 = central / v1, p2 / v2, p3 / v3
    return FluPK(
        d_central=-cl * c1 - q2 * (c1 - c2) - q3 * (c1 - c3),
        d_p2=q2 * (c1 - c2),
        d_p3=q3 * (c1 - c3),
        conc=c1,
    )


def cy_clearance_volume(ld: LymphodepletionParams, weight_kg):
    """Cyclophosphamide clearance (L/d) and volume (L) for a body weight (kg)."""
    w = weight_kg / 70.0
    return ld.cy_cl * w**0.75, ld.cy_v * w


def chemo_drive(ld: LymphodepletionParams, flu_conc, cy_conc):
    """Instantaneous chemotherapy kill signal (1/d) from the plasma concentrations (mg/L)."""
    return ld.k_flu * flu_conc + ld.k_cy * cy_conc


class HomeostasisDerivs(NamedTuple):
    """Derivatives of the endogenous T/NK cells (cells/d) and IL-7/IL-15 (pg/mL/d)."""

    d_t_cells: Any
    d_nk_cells: Any
    d_il7: Any
    d_il15: Any


def baseline_t_nk(tcell: TCellParams, blood_ul):
    """Untreated total-body T and NK numbers (cells) for a blood volume in µL."""
    return tcell.t_blood0 * blood_ul / tcell.f_blood_t, tcell.nk_blood0 * blood_ul / tcell.f_blood_nk


def homeostasis(
    tcell: TCellParams,
    ld: LymphodepletionParams,
    *,
    t_cells,
    nk_cells,
    il7,
    il15,
    car_total,
    ld_effect,
    t0_cells,
    nk0_cells,
) -> HomeostasisDerivs:
    """T/NK homeostasis with chemotherapy kill, and IL-7/IL-15 production and consumption (see module docstring)."""
    rel7 = il7 / tcell.il7_0
    rel15 = il15 / tcell.il15_0
    h7 = jnp.maximum(1.0 + tcell.g_il7 * (rel7 - 1.0), 0.0)
    d_t = (
        tcell.f_thymic * tcell.d_t * t0_cells
        + (1.0 - tcell.f_thymic) * tcell.d_t * h7 * t_cells
        - tcell.d_t * t_cells
        - ld.sens_t * ld_effect * t_cells
    )
    d_nk = (
        tcell.f_nk_marrow * tcell.d_nk * nk0_cells
        + (1.0 - tcell.f_nk_marrow) * tcell.d_nk * rel15 * nk_cells
        - tcell.d_nk * nk_cells
        - ld.sens_nk * ld_effect * nk_cells
    )
    l7 = (t_cells + car_total) / t0_cells
    l15 = tcell.w_nk_il15 * nk_cells / nk0_cells + (1.0 - tcell.w_nk_il15) * l7
    d_il7 = tcell.k_il7 * (tcell.il7_0 - ((1.0 - tcell.c_il7) + tcell.c_il7 * l7) * il7)
    d_il15 = tcell.k_il15 * (tcell.il15_0 - ((1.0 - tcell.c_il15) + tcell.c_il15 * l15) * il15)
    return HomeostasisDerivs(d_t, d_nk, d_il7, d_il15)


# ------------------------------------------------------------------------------------------------------------------
# Standalone PK models (useful on their own and for mass-balance checks)


class FludarabinePK(ck.AbstractKineticModel):
    """Three-compartment fludarabine PK (Langenhorst 2019) with an eliminated-amount state (mass balance).

    States (mg): `flu_central`, `flu_p2`, `flu_p3`, `flu_eliminated`. Observable: `flu_conc` (mg/L), `flu_auc`
    is not tracked here (use `flu_eliminated / CL`).

    **Example:**

    ```python
    import jax.numpy as jnp, carkinetics as ck
    from carkinetics.models.sle import FludarabinePK
    pk = FludarabinePK()
    sol = ck.simulate(pk, ck.fludarabine(25.0, (0.0,), bsa_m2=1.8), jnp.linspace(0.0, 3.0, 13))
    ```
    """

    class State(NamedTuple):
        flu_central: Any
        flu_p2: Any
        flu_p3: Any
        flu_eliminated: Any

    class Observables(NamedTuple):
        flu_conc: Any

    state_units = {"flu_central": "mg", "flu_p2": "mg", "flu_p3": "mg", "flu_eliminated": "mg"}
    observable_units = {"flu_conc": "mg/L"}

    ld: LymphodepletionParams = LymphodepletionParams()
    weight_kg: float = ck.param(70.0, unit="kg", description="body weight", source="standard adult", tag="M")
    egfr_ml_min: float = ck.param(
        100.0,
        unit="mL/min",
        description="estimated glomerular filtration rate",
        source="assumption: normal renal function",
        tag="A",
    )

    def initial_state(self):
        return self.State(0.0, 0.0, 0.0, 0.0)

    def __call__(self, t, y, args):
        del t, args  # autonomous linear model
        pk = flu_pk(self.ld, self.weight_kg, self.egfr_ml_min, y.flu_central, y.flu_p2, y.flu_p3)
        return self.State(
            pk.d_central, pk.d_p2, pk.d_p3, flu_clearance(self.ld, self.weight_kg, self.egfr_ml_min) * pk.conc
        )

    def observe(self, t, y):
        del t
        return self.Observables(y.flu_central / (self.ld.flu_v1 * self.weight_kg / 70.0))


class CyclophosphamidePK(ck.AbstractKineticModel):
    """One-compartment cyclophosphamide PK (Ahmed 2020) with an eliminated-amount state (mass balance).

    **Example:**

    ```python
    import jax.numpy as jnp, carkinetics as ck
    from carkinetics.models.sle import CyclophosphamidePK
    sol = ck.simulate(CyclophosphamidePK(), ck.cyclophosphamide(1000.0, (0.0,)), jnp.linspace(0.0, 2.0, 9))
    ```
    """

    class State(NamedTuple):
        cy_central: Any
        cy_eliminated: Any

    class Observables(NamedTuple):
        cy_conc: Any

    state_units = {"cy_central": "mg", "cy_eliminated": "mg"}
    observable_units = {"cy_conc": "mg/L"}

    ld: LymphodepletionParams = LymphodepletionParams()
    weight_kg: float = ck.param(70.0, unit="kg", description="body weight", source="standard adult", tag="M")

    def initial_state(self):
        return self.State(0.0, 0.0)

    def __call__(self, t, y, args):
        del t, args
        cl, v = cy_clearance_volume(self.ld, self.weight_kg)
        return self.State(-cl / v * y.cy_central, cl / v * y.cy_central)

    def observe(self, t, y):
        del t
        _, v = cy_clearance_volume(self.ld, self.weight_kg)
        return self.Observables(y.cy_central / v)
