"""Cytokine release: myeloid activation by CAR-T activity and target killing, IL-6, a CRS grade index, tocilizumab.

Parameter group `myeloid` (`MyeloidParams`). Structure after Hosseini 2020 (IL-6 produced in proportion to
T-cell activation/killing, cleared with t½ ≈ 20 min) and Santurio 2025 (macrophages activated by DAMPs from
killed cells and by contact with antigen-engaged CAR-T cells produce the IL-6).

**Equations.** u = kill flux density / K_damp + σ·D_E/K_cd40 (D_E: tissue effector density, cells/µL; kill flux in
cells/µL tissue/d), `occ` = tocilizumab IL-6R occupancy:

    d myeloid_act/dt = k_my (uⁿ/(1 + uⁿ) − myeloid_act)                        (activated fraction, 0-1)
    d il6/dt         = k_IL6 (IL6₀ (1 + g_IL6 myeloid_act) − (1 − f_rec occ) il6)     (pg/mL)
    d toci_central/dt = −CL_toci/V_toci toci_central                            (mg; dose with `tocilizumab`)

Tocilizumab blocks IL-6 receptor-mediated clearance (serum IL-6 rises, as observed) and IL-6 signalling. The CRS
index uses the signalling IL-6, `S = il6 (1 − occ)`, through documented thresholds: 0 below `il6_g0`, rising
linearly in log IL-6 to 1 at `il6_g1`, 2 at `il6_g2`, 3 at `il6_g3` and 4 at `il6_g4` (a continuous,
differentiable-almost-everywhere index in [0, 4]).

| parameter | default | unit | tag | source |
|---|---|---|---|---|
| k_il6 | 50 | 1/d | D | IL-6 t½ 20 min (Hosseini 2020 [R]) |
| il6_0 | 3 | pg/mL | M | SLE baseline IL-6 a few pg/mL |
| g_il6, k_my, k_damp, k_cd40, n_my | see class | | A | tuned to grade-1 CRS (kinetics.md §7 #7) |
| il6_g0..il6_g4 | 10, 40, 200, 1000, 5000 | pg/mL | A | carkinetics mapping (severe CRS ~10³ pg/mL [M]) |
| toci_cl, toci_v | 0.3, 6.4 | L/d, L | M | tocilizumab label (linear CL ~12.5 mL/h, Vss ~6.4 L) |

**References:** Hosseini I et al., npj Syst Biol Appl 2020, doi:10.1038/s41540-020-00145-7; Santurio DS et al., PLoS
Comput Biol 2025, doi:10.1371/journal.pcbi.1012908; Giavridis T et al., Nat Med 2018;24:731; Norelli M et al.,
Nat Med 2018;24:739.
"""

from __future__ import annotations

from typing import NamedTuple

import equinox as eqx
import jax.numpy as jnp

import carkinetics as ck


class MyeloidParams(eqx.Module):
    """Parameter group `myeloid`: myeloid activation, IL-6 kinetics, CRS thresholds, tocilizumab PK/PD."""

    il6_0: float = ck.param(3.0, unit="pg/mL", description="baseline plasma IL-6 in SLE",
                            source="SLE baseline IL-6 of a few pg/mL", tag="M")
    k_il6: float = ck.param(50.0, unit="1/d", description="IL-6 clearance rate",
                            source="Hosseini 2020 npj Syst Biol Appl: IL-6 t1/2 20 min (ln2/(20/1440) = 49.9/d)", tag="D")
    g_il6: float = ck.param(25.0, unit="1", description="fold increase of IL-6 production per unit activated myeloid fraction",
                            source="tuned to grade-1 CRS in SLE (Mueller 2024 NEJM 10/15 grade 1 [R])", tag="A")
    k_my: float = ck.param(1.0, unit="1/d", description="rate of myeloid activation/deactivation",
                           source="assumption (macrophage activation over ~1 day)", tag="A")
    k_damp: float = ck.param(2000.0, unit="cells/(uL*d)", description="kill flux density giving half-maximal DAMP drive",
                             source="assumption (Santurio 2025 structure)", tag="A")
    k_cd40: float = ck.param(5000.0, unit="cells/uL", description="antigen-engaged effector density giving half-maximal contact drive",
                             source="assumption (Santurio 2025 CD40-CD40L structure)", tag="A")
    n_my: float = ck.param(2.0, unit="1", description="Hill coefficient of myeloid activation in its drive",
                           source="assumption (threshold-like activation: steady low-level killing of new B cells "
                                  "does not activate macrophages)", tag="A")
    f_rec: float = ck.param(0.5, unit="1", description="fraction of IL-6 clearance through the IL-6 receptor",
                            source="assumption (tocilizumab raises serum IL-6 [M])", tag="A", upper=1.0)
    toci_cl: float = ck.param(0.3, unit="L/d", description="tocilizumab linear clearance per 70 kg",
                              source="tocilizumab label (~12.5 mL/h)", tag="M")
    toci_v: float = ck.param(6.4, unit="L", description="tocilizumab volume per 70 kg",
                             source="tocilizumab label (Vss ~6.4 L)", tag="M")
    toci_ic50: float = ck.param(1.0, unit="mg/L", description="tocilizumab concentration giving 50% IL-6R occupancy",
                                source="assumption", tag="A")
    il6_g0: float = ck.param(10.0, unit="pg/mL", description="signalling IL-6 at which the CRS index starts to rise",
                             source="carkinetics mapping (assumption)", tag="A")
    il6_g1: float = ck.param(40.0, unit="pg/mL", description="signalling IL-6 at CRS index 1",
                             source="carkinetics mapping (assumption)", tag="A")
    il6_g2: float = ck.param(200.0, unit="pg/mL", description="signalling IL-6 at CRS index 2",
                             source="carkinetics mapping (assumption)", tag="A")
    il6_g3: float = ck.param(1000.0, unit="pg/mL", description="signalling IL-6 at CRS index 3",
                             source="carkinetics mapping (severe CRS IL-6 ~1e3 pg/mL [M])", tag="A")
    il6_g4: float = ck.param(5000.0, unit="pg/mL", description="signalling IL-6 at CRS index 4",
                             source="carkinetics mapping (assumption)", tag="A")


class MyeloidDerivs(NamedTuple):
    """Derivatives of myeloid activation (1/d), IL-6 (pg/mL/d) and tocilizumab (mg/d)."""

    d_myeloid_act: object
    d_il6: object
    d_toci: object


def toci_conc_occupancy(myeloid: MyeloidParams, toci_central, weight_kg):
    """Tocilizumab concentration (mg/L) and IL-6R occupancy (0-1)."""
    conc = toci_central / (myeloid.toci_v * weight_kg / 70.0)
    return conc, conc / (myeloid.toci_ic50 + conc)


def myeloid_derivatives(myeloid: MyeloidParams, *, myeloid_act, il6, toci_central, weight_kg, kill_flux_density,
                        engaged_effector_density) -> MyeloidDerivs:
    """Myeloid activation, IL-6 and tocilizumab derivatives (see module docstring)."""
    u = kill_flux_density / myeloid.k_damp + engaged_effector_density / myeloid.k_cd40
    _, occ = toci_conc_occupancy(myeloid, toci_central, weight_kg)
    w = weight_kg / 70.0
    un = u**myeloid.n_my
    d_act = myeloid.k_my * (un / (1.0 + un) - myeloid_act)
    d_il6 = myeloid.k_il6 * (myeloid.il6_0 * (1.0 + myeloid.g_il6 * myeloid_act) - (1.0 - myeloid.f_rec * occ) * il6)
    d_toci = -(myeloid.toci_cl * w**0.75) / (myeloid.toci_v * w) * toci_central
    return MyeloidDerivs(d_act, d_il6, d_toci)


def crs_grade(myeloid: MyeloidParams, il6_signal):
    """Continuous CRS index in [0, 4] from the signalling IL-6 (pg/mL), piecewise linear in log IL-6."""
    x = jnp.log(jnp.maximum(il6_signal, 1e-12))
    thr = [myeloid.il6_g0, myeloid.il6_g1, myeloid.il6_g2, myeloid.il6_g3, myeloid.il6_g4]
    grade = 0.0
    for lo, hi in zip(thr[:-1], thr[1:]):  # four fixed segments (static unroll, not a data loop)
        llo, lhi = jnp.log(lo), jnp.log(hi)
        grade = grade + jnp.clip((x - llo) / (lhi - llo), 0.0, 1.0)
    return grade
