"""Disease activity: immune-complex-driven activity (SLEDAI-like index, proteinuria) and irreversible damage.

Parameter group `disease` (`DiseaseParams`). The activity state is relative (1 = untreated activity) and reversible;
damage (SDI-like units) only accrues. Immune complexes are taken proportional to anti-dsDNA (relative to baseline,
antigen load constant); a share `1 − φ_B` of the drive is B-cell independent (T cells/IFN), represented by the
endogenous T-cell pool relative to baseline (translation.md G10, G11):

    drive            = φ_B · anti_dsdna + (1 − φ_B) · T/T₀
    d activity/dt    = k_act (drive^h − activity)
    d damage/dt      = k_dmg · activity

Observables: `sledai = sledai0 · activity`, `proteinuria = up_active · activity + up_damage · damage` (g/g).

| parameter | default | unit | tag | source |
|---|---|---|---|---|
| sledai0 | 16 | 1 | R | Mackensen 2022: median SLEDAI-2K 16 at baseline |
| phi_b | 0.85 | 1 | A | B/immune-complex-driven share (G10) |
| hill | 2 | 1 | A | tuned: SLEDAI 0-2 at 3 months with an LLPC-fed anti-dsDNA floor |
| k_act | 0.08 | 1/d | A | tuned: SLEDAI 16 → 0 within ~5-6 weeks to 3 months (Mougiakakos 2021 [M], Mackensen 2022 [R]) |
| k_dmg | 0.0014 | SDI/d | A | ~0.5 SDI/y at full activity [M] |
| damage0 | 1 | SDI | A | damage at treatment after years of disease |
| up_active, up_damage | 1.5, 0.2 | g/g | A | lupus nephritis scale |

**References:** Mackensen A et al., Nat Med 2022;28:2124; Müller F et al., NEJM 2024;390:687; Richard ML, Gilkeson
G, Lupus Sci Med 2018;5:e000199.
"""

from __future__ import annotations

from typing import NamedTuple

import equinox as eqx
import jax.numpy as jnp

import carkinetics as ck


class DiseaseParams(eqx.Module):
    """Parameter group `disease`: activity drive, resolution, damage accrual, index scales."""

    sledai0: float = ck.param(16.0, unit="1", description="SLEDAI-2K before treatment",
                              source="Mackensen A et al., Nat Med 2022;28:2124 (median 16, range 8-16)", tag="R")
    phi_b: float = ck.param(0.85, unit="1", description="share of disease drive from immune complexes (B-cell dependent)",
                            source="assumption (translation.md G10: run over a range)", tag="A", upper=1.0)
    hill: float = ck.param(2.0, unit="1", description="steepness of activity in the drive",
                           source="tuned: SLEDAI 0-2 at 3 months (Mackensen 2022 [R]) with an LLPC-fed anti-dsDNA floor",
                           tag="A")
    k_act: float = ck.param(0.08, unit="1/d", description="rate at which activity follows its drive",
                            source="tuned: SLEDAI falls to ~0 within weeks to 3 months (Mackensen 2022 [R])", tag="A")
    k_dmg: float = ck.param(0.5 / 365.0, unit="1/d", description="damage accrual per day at untreated activity (SDI/d)",
                            source="~0.5 SDI units per year of active disease", tag="M")
    damage0: float = ck.param(1.0, unit="1", description="damage index (SDI) at treatment",
                              source="assumption: refractory SLE after years of disease", tag="A")
    up_active: float = ck.param(1.5, unit="g/g", description="urine protein/creatinine at untreated activity",
                                source="assumption (active lupus nephritis)", tag="A")
    up_damage: float = ck.param(0.2, unit="g/g", description="urine protein/creatinine per unit damage",
                                source="assumption", tag="A")


class DiseaseDerivs(NamedTuple):
    """Derivatives of activity (1/d) and damage (SDI/d)."""

    d_activity: object
    d_damage: object


def disease_derivatives(disease: DiseaseParams, *, anti_dsdna, t_rel, activity) -> DiseaseDerivs:
    """Activity and damage derivatives from relative anti-dsDNA and relative endogenous T cells."""
    drive = disease.phi_b * jnp.maximum(anti_dsdna, 0.0) + (1.0 - disease.phi_b) * jnp.maximum(t_rel, 0.0)
    drive = jnp.maximum(drive, 1e-12)  # keeps d(drive**hill)/d hill finite
    return DiseaseDerivs(disease.k_act * (drive**disease.hill - activity), disease.k_dmg * activity)


def disease_observables(disease: DiseaseParams, *, activity, damage):
    """SLEDAI-like index and proteinuria (g/g)."""
    return disease.sledai0 * activity, disease.up_active * activity + disease.up_damage * damage
