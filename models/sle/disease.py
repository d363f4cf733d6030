"""Disease activity, irreversible damage and survival, read out in human units (SLEDAI-2K, urine protein/creatinine)
and mouse units (proteinuria dipstick score, survival), with an explicit bridge between them.

Parameter group `disease` (`DiseaseParams`, table in its docstring). `activity` is relative (1 = untreated) and
reversible; `damage` (SDI-like units) only accrues; `cum_hazard` is the integrated mortality hazard. Immune
complexes are taken proportional to anti-dsDNA relative to its untreated level; a share `1 − φ_B` of the drive is
B-cell independent (T cells/IFN), represented by the endogenous T-cell pool relative to baseline (the translation
gaps G10, G11 of the project's mouse-to-human notes):

    drive          = φ_B · IC + (1 − φ_B) · T/T₀,        IC = anti_dsdna/anti_dsdna₀
    d activity/dt  = k_act (drive^h − activity)
    d damage/dt    = k_dmg · activity
    d cum_hazard/dt = h_dmg · activity · damage              (active nephritis on a damaged kidney)

**Read-outs.** `proteinuria` (g/g) = `up_active·activity + up_damage·damage`; the urine protein concentration
`proteinuria · creat_urine` (mg/dL) gives the **dipstick score** 0-4 (Albustix-type cut points 30, 100, 300, 2000
mg/dL for 1+ ... 4+; continuous, log-linear between them) — the mouse studies' proteinuria readout, and valid in
humans too. `survival` = exp(−cum_hazard).

**Bridge to the human scale.** `sledai = sledai0 · activity` is the SLEDAI-2K of a human patient. In the mouse
presets the same observable is a *bridge*, not a mouse measurement: the human-equivalent SLEDAI of a mouse whose
relative activity is `activity` (untreated = the human baseline `sledai0`). Compare mice with humans on relative
activity or on this bridge, and say so; mice are scored in their own units by `proteinuria_score`, the anti-dsDNA
titre (`anti_dsdna`, ELISA units/mL) and `survival`.

**References:** Mackensen A et al., Nat Med 2022;28:2124; Müller F et al., N Engl J Med 2024;390:687; Richard ML,
Gilkeson G, Lupus Sci Med 2018;5:e000199; Kansal R et al., Sci Transl Med 2019;11:eaav1648.
"""

from __future__ import annotations

import itertools
from typing import Any, NamedTuple

import equinox as eqx
import jax.numpy as jnp

import carkinetics as ck
from carkinetics.models.sle._doc import document_params

#: Dipstick cut points (mg/dL) for scores 1+ to 4+, and the level below which the score is 0.
DIPSTICK_MG_DL = (10.0, 30.0, 100.0, 300.0, 2000.0)


@document_params
class DiseaseParams(eqx.Module):
    """Parameter group `disease`: activity drive, resolution, damage, mortality hazard and read-out scales."""

    sledai0: float = ck.param(
        16.0,
        unit="1",
        description="SLEDAI-2K before treatment",
        source="Mackensen A et al., Nat Med 2022;28:2124 (median 16, range 8-16)",
        tag="R",
    )
    phi_b: float = ck.param(
        0.85,
        unit="1",
        description="share of the disease drive from immune complexes (B-cell dependent)",
        source="assumption (B-cell-dependent share of SLE activity; run over a range in the translation map)",
        tag="A",
        upper=1.0,
    )
    hill: float = ck.param(
        2.0,
        unit="1",
        description="steepness of activity in the drive",
        source="assumption (SLEDAI 0-2 at 3 months, Mackensen 2022 [R], with an LLPC-fed floor)",
        tag="A",
    )
    k_act: float = ck.param(
        0.08,
        unit="1/d",
        description="rate at which activity follows its drive",
        source="assumption (SLEDAI 16 -> 0-2 within 3 months, Mackensen 2022 [R])",
        tag="A",
    )
    k_dmg: float = ck.param(
        0.5 / 365.0,
        unit="1/d",
        description="damage accrual per day at untreated activity (SDI/d)",
        source="~0.5 SDI units per year of active disease [M]",
        tag="M",
    )
    damage0: float = ck.param(
        1.0,
        unit="1",
        description="damage index (SDI) at treatment",
        source="assumption: refractory SLE after years of disease",
        tag="A",
    )
    h_dmg: float = ck.param(
        1e-6,
        unit="1/d",
        description="mortality hazard per unit damage at untreated activity",
        source="assumption (negligible over the human horizon)",
        tag="A",
    )
    up_active: float = ck.param(
        1.5,
        unit="g/g",
        description="urine protein/creatinine at untreated activity",
        source="assumption (active lupus nephritis; UPCR > 1 in the CASTLE inclusion criteria)",
        tag="A",
    )
    up_damage: float = ck.param(
        0.2, unit="g/g", description="urine protein/creatinine per unit damage", source="assumption", tag="A"
    )
    creat_urine: float = ck.param(
        100.0,
        unit="mg/dL",
        description="urine creatinine concentration (for the dipstick score)",
        source="typical adult spot-urine creatinine ~100 mg/dL [M]",
        tag="M",
    )


class DiseaseState(NamedTuple):
    """Activity (relative), damage (SDI), cumulative mortality hazard."""

    activity: Any
    damage: Any
    cum_hazard: Any


def disease_derivatives(d: DiseaseParams, s: DiseaseState, *, ic_rel, t_rel) -> DiseaseState:
    """Activity, damage and hazard derivatives from relative immune complexes and relative endogenous T cells."""
    drive = d.phi_b * jnp.maximum(ic_rel, 0.0) + (1.0 - d.phi_b) * jnp.maximum(t_rel, 0.0)
    drive = jnp.maximum(drive, 1e-12)  # keeps d(drive**hill)/d hill finite
    return DiseaseState(d.k_act * (drive**d.hill - s.activity), d.k_dmg * s.activity, d.h_dmg * s.activity * s.damage)


def proteinuria(d: DiseaseParams, s: DiseaseState):
    """Urine protein/creatinine (g/g)."""
    return d.up_active * s.activity + d.up_damage * s.damage


def dipstick_score(d: DiseaseParams, upcr):
    """Continuous proteinuria dipstick score 0-4 from the urine protein/creatinine (g/g)."""
    mg_dl = jnp.log(jnp.maximum(upcr * d.creat_urine, 1e-12))
    cuts = [jnp.log(c) for c in DIPSTICK_MG_DL]
    score = 0.0
    for lo, hi in itertools.pairwise(cuts):  # four fixed segments (static unroll)
        score = score + jnp.clip((mg_dl - lo) / (hi - lo), 0.0, 1.0)
    return score
