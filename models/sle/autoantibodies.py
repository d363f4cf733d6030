"""Antibodies in absolute units: anti-dsDNA (U/mL, with a positivity cutoff), a protective vaccine IgG and total IgG,
made by short-lived plasmablasts (CD19⁺) and long-lived plasma cells (CD19⁻ BCMA⁺).

Parameter group `humoral` (`HumoralParams`, table in its docstring). States: `anti_dsdna` (U/mL: IU/mL for the
WHO-standardised human assays, ELISA units/mL in the mouse presets), `vaccine_igg` (relative to its pre-treatment
level), `total_igg` (g/L). Each antibody is made by plasmablasts and LLPC of its specificity (`bcells.py`; subscript
0: untreated values), with production shares fixed by the untreated steady state:

    k_eff         = k_IgG (1 + s_FcRn (total_igg/IgG₀ − 1))                         (FcRn saturation)
    d anti/dt     = k_IgG anti₀ [(1 − f_ll) PB_a/PB_a0 + f_ll LL_a/LL_a0] − k_eff anti
    d vaccine/dt  = k_IgG [f_vpb PB_o/PB_o0 + (1 − f_vpb) LL_o/LL_o0] − k_eff vaccine
    d total/dt    = k_IgG IgG₀ [f_tpb (PB_a + PB_o)/PB₀ + (1 − f_tpb)(LL_a + LL_o)/LL₀] − k_eff total

After CD19 CAR-T the plasmablast-fed part decays with the IgG half-life and anti-dsDNA falls towards its LLPC-fed
floor `f_ll·anti₀`; with a BCMA arm the LLPC go too, so the floor and the (LLPC-made) vaccine IgG fall. "Negative"
means below `anti_dsdna_cutoff`.

**References:** Amanna IJ et al., N Engl J Med 2007;357:1903; Hill JA et al., Blood Adv 2019;3:3590; Cambridge G et
al., Arthritis Rheum 2006; Mackensen A et al., Nat Med 2022;28:2124; Waldmann TA, Strober W, Prog Allergy 1969;13:1.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import equinox as eqx

import carkinetics as ck
from carkinetics.models.sle._doc import document_params


@document_params
class HumoralParams(eqx.Module):
    """Parameter group `humoral`: IgG clearance, antibody levels and the plasmablast vs LLPC shares of production."""

    k_igg: float = ck.param(
        math.log(2.0) / 21.0,
        unit="1/d",
        description="IgG elimination rate",
        source="human IgG t1/2 ~21 d (lay/textbook sources [R]): ln2/21",
        tag="D",
    )
    fcrn_sat: float = ck.param(
        0.3,
        unit="1",
        description="FcRn saturation: relative change of IgG clearance per relative change of total IgG",
        source="concentration-catabolism of IgG (Waldmann TA, Strober W, Prog Allergy 1969;13:1 [M])",
        tag="M",
        upper=1.0,
    )
    anti_dsdna0: float = ck.param(
        100.0,
        unit="U/mL",
        description="anti-dsDNA before treatment",
        source="assumption: high-positive titre of refractory SLE",
        tag="A",
    )
    anti_dsdna_cutoff: float = ck.param(
        15.0,
        unit="U/mL",
        description="anti-dsDNA positivity cutoff",
        source="EliA dsDNA: > 15 IU/mL positive, 10-15 equivocal (assay labelling [M])",
        tag="M",
    )
    f_ll_dsdna: float = ck.param(
        0.05,
        unit="1",
        description="share of anti-dsDNA made by long-lived plasma cells before treatment",
        source="assumption: anti-dsDNA negative by ~3 months after CD19 CAR-T (Mackensen 2022 [R]); the RTX floor "
        "38 % at 6-8 months (Cambridge 2006 [R]) reflects incomplete depletion",
        tag="A",
        upper=1.0,
    )
    f_pb_vaccine: float = ck.param(
        0.03,
        unit="1",
        description="share of vaccine IgG made by plasmablasts (rest: LLPC)",
        source="vaccine/measles IgG unchanged after CD19 CAR-T (Hill JA et al., Blood Adv 2019;3:3590 [R]): small",
        tag="A",
        upper=1.0,
    )
    f_pb_igg: float = ck.param(
        0.2,
        unit="1",
        description="share of total IgG made by plasmablasts (rest: LLPC)",
        source="total IgG -17.5 % over ~1 y after CD19 CAR-T with LLPC spared (Hill JA et al., Blood Adv "
        "2019;3:3590 [R]): ~0.2",
        tag="D",
        upper=1.0,
    )
    igg0: float = ck.param(
        10.0,
        unit="g/L",
        description="total IgG before treatment",
        source="normal adult serum IgG ~7-16 g/L [M]",
        tag="M",
    )


class AbState(NamedTuple):
    """Antibody states: anti-dsDNA (U/mL), vaccine IgG (relative), total IgG (g/L)."""

    anti_dsdna: Any
    vaccine_igg: Any
    total_igg: Any


def igg_clearance(h: HumoralParams, total_igg):
    """Effective IgG elimination rate (1/d) at a total IgG (g/L), FcRn saturation included."""
    return h.k_igg * (1.0 + h.fcrn_sat * (total_igg / h.igg0 - 1.0))


def antibody_derivatives(
    h: HumoralParams, ab: AbState, *, pb_auto_rel, pb_other_rel, pb_rel, llpc_auto_rel, llpc_other_rel, llpc_rel
) -> AbState:
    """Antibody derivatives from the plasmablast and LLPC pools relative to their untreated sizes."""
    k = igg_clearance(h, ab.total_igg)
    prod_ds = h.anti_dsdna0 * ((1.0 - h.f_ll_dsdna) * pb_auto_rel + h.f_ll_dsdna * llpc_auto_rel)
    prod_vac = h.f_pb_vaccine * pb_other_rel + (1.0 - h.f_pb_vaccine) * llpc_other_rel
    prod_tot = h.igg0 * (h.f_pb_igg * pb_rel + (1.0 - h.f_pb_igg) * llpc_rel)
    return AbState(
        h.k_igg * prod_ds - k * ab.anti_dsdna,
        h.k_igg * prod_vac - k * ab.vaccine_igg,
        h.k_igg * prod_tot - k * ab.total_igg,
    )
