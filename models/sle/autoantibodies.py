"""Autoantibodies (anti-dsDNA) and a protective vaccine IgG, fed by plasmablasts and long-lived plasma cells.

Parameter group `humoral` (`HumoralParams`). Both antibody states are **relative to their pre-treatment level**
(1 = baseline; multiply by a patient's baseline titre, e.g. in IU/mL, to get absolute values). Production is
split between the CD19⁺ plasmablast pool (PB, depleted by CAR-T) and the CD19⁻ LLPC pool (spared):

    k_eff            = k_IgG (1 + s_FcRn (total_igg − 1))                     (FcRn saturation, G1)
    d anti_dsdna/dt  = k_IgG (f_pb PB/PB₀ + (1 − f_pb) LLPC) − k_eff anti_dsdna
    d vaccine_igg/dt = k_IgG (f_vac PB/PB₀ + (1 − f_vac) LLPC) − k_eff vaccine_igg
    d total_igg/dt   = k_IgG (f_igg PB/PB₀ + (1 − f_igg) LLPC) − k_eff total_igg

so the untreated state is a steady state, and after complete PB depletion anti-dsDNA decays with the IgG
half-life towards the LLPC-fed floor `1 − f_pb` (G1, G2 of translation.md). Total IgG falling (hypo-
gammaglobulinaemia) lengthens the IgG half-life through the FcRn term. LLPC decline with `d_llpc`
(their input from plasmablasts stops; `bcells.py`).

| parameter | default | unit | tag | source |
|---|---|---|---|---|
| k_igg | 0.033 | 1/d | D | IgG t½ ≈ 21 d (kinetics.md §4) |
| f_pb_dsdna | 0.8 | 1 | A | tuned: anti-dsDNA seroconversion by ~3 months (Mackensen 2022 [R]) |
| f_pb_vaccine | 0.03 | 1 | A | vaccine IgG preserved (measles IgG +1.2 %, Hill 2019 [R]) |
| f_pb_igg | 0.2 | 1 | D | total IgG −17.5 % in ~1 y after CD19 CAR-T (Hill 2019 [R]) |
| fcrn_sat | 0.3 | 1 | M | IgG concentration-catabolism (Waldmann & Strober 1969) |
| d_llpc | 1.73e-4 | 1/d | D | tetanus IgG t½ 11 y as LLPC lifespan (Amanna 2007 [R]) |

**References:** Amanna IJ et al., NEJM 2007;357:1903; Hill JA et al., Blood Adv 2019;3:3590; Cambridge G et al.,
Arthritis Rheum 2006; Mackensen A et al., Nat Med 2022;28:2124; Vieira P, Rajewsky K, Eur J Immunol 1988;18:313.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import equinox as eqx

import carkinetics as ck


class HumoralParams(eqx.Module):
    """Parameter group `humoral`: IgG clearance, plasmablast vs LLPC shares of production, LLPC lifespan."""

    k_igg: float = ck.param(math.log(2.0) / 21.0, unit="1/d", description="IgG elimination rate",
                            source="human IgG t1/2 ~21 d (immunodeficiencyuk.org; kinetics.md 4): ln2/21", tag="D")
    f_pb_dsdna: float = ck.param(
        0.8, unit="1", description="fraction of anti-dsDNA made by CD19+ plasmablasts (rest: LLPC)",
        source="tuned: anti-dsDNA negative by ~3 months after CD19 CAR-T (Mackensen 2022 [R]); rituximab floor "
               "38% at 6-8 months (Cambridge 2006 [R]) bounds it from below", tag="A", upper=1.0)
    f_pb_vaccine: float = ck.param(
        0.03, unit="1", description="fraction of vaccine IgG made by plasmablasts (rest: LLPC)",
        source="vaccine/measles IgG unchanged after CD19 CAR-T (Hill 2019 Blood Adv [R]): small by assumption",
        tag="A", upper=1.0)
    f_pb_igg: float = ck.param(
        0.2, unit="1", description="fraction of total IgG made by plasmablasts (rest: LLPC)",
        source="total IgG -17.5% over ~1 y after CD19 CAR-T with LLPC spared (Hill 2019 Blood Adv [R]): ~0.2",
        tag="D", upper=1.0)
    fcrn_sat: float = ck.param(
        0.3, unit="1", description="FcRn saturation: relative change of IgG clearance per relative change of total IgG",
        source="concentration-catabolism of IgG (clearance rises with IgG level; Waldmann & Strober 1969)", tag="M",
        upper=1.0)
    d_llpc: float = ck.param(math.log(2.0) / (11.0 * 365.0), unit="1/d",
                             description="LLPC loss rate (CD19- long-lived plasma cells)",
                             source="tetanus IgG t1/2 11 y taken as LLPC lifespan (Amanna 2007 NEJM [R]): ln2/4015 d",
                             tag="D")


class HumoralDerivs(NamedTuple):
    """Derivatives (1/d) of the relative antibody levels."""

    d_anti_dsdna: object
    d_vaccine_igg: object
    d_total_igg: object


def igg_clearance(humoral: HumoralParams, total_igg):
    """Effective IgG elimination rate (1/d) at a relative total IgG level (FcRn saturation)."""
    return humoral.k_igg * (1.0 + humoral.fcrn_sat * (total_igg - 1.0))


def humoral_derivatives(humoral: HumoralParams, *, pb_rel, llpc, anti_dsdna, vaccine_igg,
                        total_igg) -> HumoralDerivs:
    """Antibody derivatives from the relative plasmablast pool `pb_rel` = PB/PB₀ and relative LLPC."""
    k = igg_clearance(humoral, total_igg)
    prod_ds = humoral.f_pb_dsdna * pb_rel + (1.0 - humoral.f_pb_dsdna) * llpc
    prod_vac = humoral.f_pb_vaccine * pb_rel + (1.0 - humoral.f_pb_vaccine) * llpc
    prod_tot = humoral.f_pb_igg * pb_rel + (1.0 - humoral.f_pb_igg) * llpc
    # production is scaled by the baseline clearance k_igg so that the untreated state (all = 1) is steady
    return HumoralDerivs(humoral.k_igg * prod_ds - k * anti_dsdna, humoral.k_igg * prod_vac - k * vaccine_igg,
                         humoral.k_igg * prod_tot - k * total_igg)
