"""Cytokine release without a cap: myeloid activation by CAR-T activation and target killing, IL-6 up to the
physiological maximum of the activated myeloid compartment, fever and an endothelial (vascular-leak) state, a CRS
grade after the ASTCT criteria, tocilizumab and dexamethasone.

Parameter group `myeloid` (`MyeloidParams`, table in its docstring). Structure after Hosseini 2020 (IL-6 made in
proportion to T-cell activation/killing, cleared with t½ ≈ 20 min) and Santurio 2025 / Giavridis 2018 / Norelli 2018
(the IL-6 comes from host macrophages/monocytes activated by DAMPs of killed cells and by contact with
antigen-engaged CAR-T cells).

**Equations.** Drive `u = J/K_damp + c28·σ·C_act/K_cd40`, with J the kill flux density (cells killed per µL
lymphoid tissue per day: target burden × E:T), C_act the density of activated and effector CAR-T cells, σ their
stimulation and c28 = `car.cd28_cytokine_fold` for a CD28 product; `occ` tocilizumab IL-6R occupancy; `i` the
dexamethasone effect:

    d myeloid_act/dt = k_my (uⁿ/(1 + uⁿ)·(1 − i) − myeloid_act)                 (activated fraction, 0-1)
    d il6/dt         = k_IL6 (IL6₀ + IL6_max·myeloid_act − (1 − f_rec·occ) il6)  (pg/mL)
    S                = il6 (1 − occ)                                            (signalling IL-6)
    d endothelial/dt = k_endo (S^m/(K_v^m + S^m) − endothelial)                 (0-1)
    temperature      = 37 + ΔT_max·(S(1 − i))²/(K_f² + (S(1 − i))²)            (°C)
    d toci_central/dt = −CL_toci/V_toci·toci_central;  d dex/dt = −ln2/t½_dex·dex

IL-6 is bounded only by `IL6_max` (all myeloid cells activated: the physiological maximum, ~10⁴-10⁵ pg/mL in
fatal CRS), not by a fold of baseline: dose, antigen burden (through the kill flux) and CD28 raise it, so every CRS
grade is reachable.

**CRS grade (ASTCT 2019, Lee et al.), as far as the states allow.** Grade 1 = fever ≥ 38 °C; grade 2 = hypotension
without vasopressors and/or low-flow oxygen; grade 3 = one vasopressor and/or high-flow oxygen; grade 4 =
several vasopressors and/or positive pressure. The model has no blood pressure or oxygenation: hypotension/hypoxia
are approximated by the endothelial-activation state, with thresholds `endo_g2 < endo_g3 < endo_g4`. The
continuous index is

    crs_grade = ramp(temperature; 37.5 → 38.0 °C) + Σ_k ramp(endothelial; endo_gk/2 → endo_gk),  k = 2, 3, 4

in [0, 4]; its integer part is the ASTCT grade. Approximations: organ toxicity (grade-4 features beyond
ventilation) and neurotoxicity (ICANS) are not represented; after tocilizumab ASTCT keeps grading by hypotension/
hypoxia without fever, which the endothelial ramps do; a grade needs the fever ramp only at grade 1.

**References:** Hosseini I et al., npj Syst Biol Appl 2020, doi:10.1038/s41540-020-00145-7; Santurio DS et al., PLoS
Comput Biol 2025, doi:10.1371/journal.pcbi.1012908; Giavridis T et al., Nat Med 2018;24:731; Norelli M et al., Nat
Med 2018;24:739; Lee DW et al., Biol Blood Marrow Transplant 2019;25:625 (ASTCT consensus grading); Teachey DT et
al., Cancer Discov 2016;6:664 (IL-6 in severe CRS); Turtle CJ et al., J Clin Invest 2016;126:2123 (dose and burden
raise CRS).
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import equinox as eqx
import jax.numpy as jnp

import carkinetics as ck
from carkinetics.models.sle._doc import document_params
from carkinetics.models.sle._math import power


@document_params
class MyeloidParams(eqx.Module):
    """Parameter group `myeloid`: myeloid activation, IL-6, fever, endothelium, ASTCT thresholds, tocilizumab,
    steroid."""

    il6_0: float = ck.param(3.0, unit="pg/mL", description="baseline plasma IL-6", source="a few pg/mL [M]", tag="M")
    k_il6: float = ck.param(
        50.0,
        unit="1/d",
        description="IL-6 clearance rate",
        source="Hosseini I et al., npj Syst Biol Appl 2020: IL-6 t1/2 20 min (ln2/(20/1440) = 49.9/d)",
        tag="D",
    )
    il6_max: float = ck.param(
        3e4,
        unit="pg/mL",
        description="IL-6 above baseline with the whole myeloid compartment activated (physiological maximum)",
        source="IL-6 peaks of 1e3-1e5 pg/mL in severe CRS (Teachey DT et al., Cancer Discov 2016;6:664 [M])",
        tag="M",
    )
    k_my: float = ck.param(
        1.0,
        unit="1/d",
        description="rate of myeloid activation/deactivation",
        source="assumption (macrophage activation over ~1 day)",
        tag="A",
    )
    k_damp: float = ck.param(
        1.5e6,
        unit="cells/(uL*d)",
        description="kill flux density giving unit DAMP drive (half-maximal myeloid activation)",
        source="chosen so that the virtual SLE population (calibrated default, SLE_IIV) has the published CRS grade "
        "distribution (Mueller F et al., N Engl J Med 2024;390:687: none 4/15, grade 1 10/15, grade 2 1/15; "
        "Mackensen 2022 3/5 grade 1; Feng 2025 13/15 grade 1), by calibration/population_report.py --tune; the "
        "typical SLE course then activates ~0.1 % of the myeloid compartment (IL-6 peak ~40 pg/mL, fever)",
        tag="F",
    )
    k_cd40: float = ck.param(
        1.5e6,
        unit="cells/uL",
        description="activated CAR-T density giving unit contact drive",
        source="assumption (Santurio 2025 CD40-CD40L structure); equal to k_damp",
        tag="A",
    )
    n_my: float = ck.param(
        1.0,
        unit="1",
        description="Hill coefficient of myeloid activation in its drive",
        source="assumption: graded activation (no dose-response data for the drive, so the neutral exponent). "
        "With 2 here and in the endothelial step the CRS grade grew as ~the 4th power of the drive and grade >= 3 "
        "fell inside the healthy range of B-cell counts (500/uL), against SLE series with CRS essentially all "
        "grade 1-2 (Mueller 2024 [R]) and oncology, where severe CRS goes with a high tumour burden (26 % severe CRS "
        "in adult B-ALL, more with >= 5 % marrow blasts: Park JH et al., N Engl J Med 2018;378:449, "
        "doi:10.1056/NEJMoa1709919 [R])",
        tag="A",
    )
    f_rec: float = ck.param(
        0.5,
        unit="1",
        description="fraction of IL-6 clearance through the IL-6 receptor",
        source="assumption (tocilizumab raises serum IL-6 [M])",
        tag="A",
        upper=1.0,
    )
    temp_rise_max: float = ck.param(
        3.0,
        unit="degC",
        description="maximal rise of body temperature by pyrogenic cytokines",
        source="fevers up to ~40 degC in CRS [M]",
        tag="M",
    )
    k_fever: float = ck.param(
        30.0,
        unit="pg/mL",
        description="signalling IL-6 giving half the maximal temperature rise",
        source="assumption (fever at IL-6 of tens of pg/mL)",
        tag="A",
    )
    k_endo: float = ck.param(
        1.0, unit="1/d", description="rate of endothelial activation/recovery", source="assumption", tag="A"
    )
    k_vasc: float = ck.param(
        5e3,
        unit="pg/mL",
        description="signalling IL-6 giving half-maximal endothelial activation",
        source="assumption: hypotension/hypoxia with IL-6 in the 1e3-1e4 pg/mL range (Teachey DT et al., Cancer "
        "Discov 2016;6:664 [M]); with the ASTCT thresholds below, grade 2 from ~250, grade 3 from ~1,250 and grade 4 "
        "from ~5,000 pg/mL of signalling IL-6",
        tag="A",
    )
    n_vasc: float = ck.param(
        1.0,
        unit="1",
        description="Hill coefficient of endothelial activation",
        source="assumption: graded (see n_my)",
        tag="A",
    )
    endo_g2: float = ck.param(
        0.05,
        unit="1",
        description="endothelial activation at ASTCT grade 2",
        source="assumption (carkinetics mapping)",
        tag="A",
        upper=1.0,
    )
    endo_g3: float = ck.param(
        0.2,
        unit="1",
        description="endothelial activation at ASTCT grade 3",
        source="assumption (carkinetics mapping)",
        tag="A",
        upper=1.0,
    )
    endo_g4: float = ck.param(
        0.5,
        unit="1",
        description="endothelial activation at ASTCT grade 4",
        source="assumption (carkinetics mapping)",
        tag="A",
        upper=1.0,
    )
    toci_cl: float = ck.param(
        0.3,
        unit="L/d",
        description="tocilizumab linear clearance per 70 kg",
        source="tocilizumab label (~12.5 mL/h) [M]",
        tag="M",
    )
    toci_v: float = ck.param(
        6.4, unit="L", description="tocilizumab volume per 70 kg", source="tocilizumab label (Vss ~6.4 L) [M]", tag="M"
    )
    toci_ic50: float = ck.param(
        1.0,
        unit="mg/L",
        description="tocilizumab concentration giving 50 % IL-6R occupancy",
        source="assumption",
        tag="A",
    )
    t_half_dex: float = ck.param(
        2.0,
        unit="d",
        description="half-life of the dexamethasone effect (biological half-life)",
        source="dexamethasone biological half-life 36-54 h [M]",
        tag="M",
    )
    dex_ec50: float = ck.param(
        10.0,
        unit="mg",
        description="dexamethasone in the body giving half the maximal effect",
        source="assumption (10 mg dexamethasone is a standard CRS dose [M])",
        tag="A",
    )
    dex_emax: float = ck.param(
        0.9,
        unit="1",
        description="maximal inhibition of myeloid activation and fever by steroid",
        source="assumption",
        tag="A",
        upper=1.0,
    )


class CytState(NamedTuple):
    """Myeloid activation (0-1), IL-6 (pg/mL), endothelial activation (0-1), tocilizumab (mg), dexamethasone (mg)."""

    myeloid_act: Any
    il6: Any
    endothelial: Any
    toci: Any
    dex: Any


def toci_conc_occupancy(m: MyeloidParams, toci, weight_kg):
    """Tocilizumab concentration (mg/L) and IL-6R occupancy (0-1)."""
    conc = toci / (m.toci_v * weight_kg / 70.0)
    return conc, conc / (m.toci_ic50 + conc)


def steroid_effect(m: MyeloidParams, dex):
    """Dexamethasone effect (0-dex_emax) from the amount in the body (mg)."""
    return m.dex_emax * dex / (m.dex_ec50 + dex)


def cytokine_derivatives(m: MyeloidParams, c: CytState, *, drive, weight_kg) -> CytState:
    """Derivatives of the cytokine states from the myeloid drive `u` (see the module docstring)."""
    _, occ = toci_conc_occupancy(m, c.toci, weight_kg)
    inh = steroid_effect(m, c.dex)
    un = power(drive, m.n_my)
    s = c.il6 * (1.0 - occ)
    sv = power(s, m.n_vasc)
    kv = m.k_vasc**m.n_vasc
    w = weight_kg / 70.0
    return CytState(
        myeloid_act=m.k_my * (un / (1.0 + un) * (1.0 - inh) - c.myeloid_act),
        il6=m.k_il6 * (m.il6_0 + m.il6_max * c.myeloid_act - (1.0 - m.f_rec * occ) * c.il6),
        endothelial=m.k_endo * (sv / (kv + sv) - c.endothelial),
        toci=-(m.toci_cl * w**0.75) / (m.toci_v * w) * c.toci,
        dex=-math.log(2.0) / m.t_half_dex * c.dex,
    )


def temperature(m: MyeloidParams, c: CytState, weight_kg):
    """Body temperature (°C) from the signalling IL-6, lowered by the steroid effect."""
    _, occ = toci_conc_occupancy(m, c.toci, weight_kg)
    s = c.il6 * (1.0 - occ) * (1.0 - steroid_effect(m, c.dex))
    return 37.0 + m.temp_rise_max * s**2 / (m.k_fever**2 + s**2)


def _ramp(x, lo, hi):
    return jnp.clip((x - lo) / (hi - lo), 0.0, 1.0)


def crs_grade(m: MyeloidParams, temp, endothelial):
    """Continuous ASTCT-like CRS index in [0, 4] (module docstring)."""
    return (
        _ramp(temp, 37.5, 38.0)
        + _ramp(endothelial, 0.5 * m.endo_g2, m.endo_g2)
        + _ramp(endothelial, 0.5 * m.endo_g3, m.endo_g3)
        + _ramp(endothelial, 0.5 * m.endo_g4, m.endo_g4)
    )
