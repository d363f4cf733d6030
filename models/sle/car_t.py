"""CAR-T cellular kinetics by mechanism: antigen-triggered activation with a lag, cytokine- and costimulation-
supported proliferation, contraction on antigen loss with conversion of a fraction to memory, persistence from
memory, and exhaustion under chronic stimulation.

Parameter group `car` (`CarTParams`, table in its docstring). States are total-body cell numbers (cells); the
infusion is a bolus of cells into `car_resting` (the infused product, not yet triggered). Densities are cells per
µL of lymphoid tissue (spleen + lymph nodes + marrow, volume from the `body` group), where CAR-T cells meet their
targets; a fixed fraction `f_blood` of CAR-T cells is in blood.

**Antigen.** With the product's arms `c19`, `cB` (group `product`, 0/1) and the target densities `D19` (CD19⁺
B-lineage cells up to plasmablasts) and `DB` (BCMA⁺ plasmablasts and long-lived plasma cells) in lymphoid tissue:

    D  = c19·D19 + cB·DB                       (antigen density seen by the CAR)
    σ  = D/(K_stim + D)                        (stimulation, 0-1)
    λ  = k_kill·E_d/(K_kill + E_d + D/q_kill)  (kill rate per target of an armed antigen, 1/d; E_d effector density)

**Kinetics** (R resting infused cells, A1, A2 activation transit, E proliferating effectors, M memory, X exhausted;
κ = host rejection rate, `rejection.py`; χ = chemotherapy drive; k_tr = 2/τ_lag):

    dR/dt  = −(k_on σ + d_rest + κ + χ) R
    dA1/dt = k_on σ R + k_re σ M − (k_tr + κ + χ) A1
    dA2/dt = k_tr A1 − (k_tr + κ + χ) A2
    dE/dt  = k_tr A2 + ρ_eff E⁺ − (α(1 − σ) + k_mem' + k_exh' σ + κ + χ) E     (E⁺ = E²/(E + 1 cell))
    dM/dt  = k_mem' E − (k_re σ + β + κ + χ) M
    dX/dt  = k_exh' σ E − (d_X + κ + χ) X

    ρ_eff  = ρ · c28(ρ) · σ · Bcyt · ν · (1 + (F_toci − 1)·occ_toci) · (1 + (F_ster − 1)·i_ster)
    Bcyt   = max(1 + b7 (IL7/IL7₀ − 1) + b15 (IL15/IL15₀ − 1), 0)          (IL-7/IL-15 support)
    ν      = max(1 − (T + CAR)/(cap·T₀), 0)                                   (shared T-cell niche)
    c28(p) = 1 + cd28 (p_fold − 1)                                           (costimulation: CD28 vs 4-1BB)

Pools below about one cell do not divide (`E⁺`): a deterministic model would otherwise regrow an extinct pool from
round-off. Expansion therefore needs antigen and stops when targets are cleared (which sets Tmax); the lag phase is the
duration `tau_lag` of the activation programme (two transit compartments, as the lag of popCK models of liso-cel);
without antigen effectors die at `alpha` (the Stein 2019 contraction) while a fraction `k_mem/(alpha + k_mem)` of
them becomes memory, which declines at `beta` (the Stein 2019 persistence phase: F_B = k_mem/(alpha − beta)).
Memory cells re-enter the activation programme when antigen returns (returning B cells). Chronic antigen drives
effectors into exhaustion (no proliferation, no killing). The multiplicative Stein covariates `F_toci` (1.2 after
tocilizumab) and `F_ster` (1.0 after steroids) act through tocilizumab IL-6R occupancy and the steroid effect.

**CD28 vs 4-1BB.** CD28-costimulated CARs expand faster and release more cytokine, 4-1BB-costimulated CARs form
more memory, resist exhaustion and persist longer (Cappell & Kochenderfer 2021 [R abstract]; Majzner 2020 [R
abstract]; Kawalekar 2016, Long 2015 [M]); the four `cd28_*_fold` parameters carry these effects.

Observables: CAR-T cells per µL blood `(f_rest·(R + A1 + A2) + f_blood·(E + M + X))/V_blood`: infused cells
distribute to tissues before they divide (the distribution phase), dividing and memory cells recirculate like
endogenous T cells.

**References:** Stein AM et al., CPT Pharmacometrics Syst Pharmacol 2019;8:285, doi:10.1002/psp4.12388; Kirouac DC
et al., Nat Biotechnol 2023, doi:10.1038/s41587-023-01687-x; Paixão EA et al., Cancers 2022;14:5576; Kimmel GJ et
al., Proc R Soc B 2021;288:20210229; Cappell KM, Kochenderfer JN, Nat Rev Clin Oncol 2021;18:715,
doi:10.1038/s41571-021-00530-z; Majzner RG et al., Cancer Discov 2020;10:702; Kochenderfer JN et al., J Clin Oncol
2017;35:1803, doi:10.1200/JCO.2016.71.3024; Gett AV, Hodgkin PD, Nat Immunol 2000;1:239.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import equinox as eqx
import jax.numpy as jnp

import carkinetics as ck
from carkinetics.models.sle._doc import document_params

_STEIN = "Stein AM et al., CPT Pharmacometrics Syst Pharmacol 2019;8:285, doi:10.1002/psp4.12388 (Table 1)"
_CAPPELL = "Cappell KM, Kochenderfer JN, Nat Rev Clin Oncol 2021;18:715, doi:10.1038/s41571-021-00530-z"


@document_params
class CarTParams(eqx.Module):
    """Parameter group `car`: activation, proliferation, contraction, memory, exhaustion, killing, costimulation."""

    k_on: float = ck.param(
        2.0,
        unit="1/d",
        description="antigen-triggered activation rate of resting infused CAR-T cells",
        source="assumption: infused cells meet antigen within about a day",
        tag="A",
    )
    tau_lag: float = ck.param(
        1.5,
        unit="d",
        description="duration of the activation programme from antigen encounter to first division",
        source="time to first division of stimulated T cells ~30-40 h (Gett AV, Hodgkin PD, Nat Immunol 2000;1:239 "
        "[M]); lag phase of the liso-cel popCK structure",
        tag="A",
    )
    d_rest: float = ck.param(
        0.1,
        unit="1/d",
        description="loss rate of infused CAR-T cells that never meet antigen",
        source="assumption",
        tag="A",
    )
    rho: float = ck.param(
        1.0,
        unit="1/d",
        description="maximal proliferation rate of effector CAR-T cells (full antigen, baseline cytokines)",
        source="hand-set so that after Flu/Cy the net expansion rate is near Stein's 0.889/d "
        "(doubling 0.78 d, Stein 2019 [R])",
        tag="A",
    )
    k_stim: float = ck.param(
        1e4,
        unit="cells/uL",
        description="antigen density (lymphoid tissue) giving half-maximal stimulation",
        source="assumption",
        tag="A",
    )
    b_il7: float = ck.param(
        1.0,
        unit="1",
        description="proliferation support per unit relative IL-7 excess",
        source="assumption; IL-7 after Flu/Cy favours CAR-T expansion (Hirayama AV et al., Blood "
        "2019;133:1876 [R qualitative])",
        tag="A",
    )
    b_il15: float = ck.param(
        1.0,
        unit="1",
        description="proliferation support per unit relative IL-15 excess",
        source="assumption; higher IL-15 with higher CAR-T peak (Kochenderfer JN et al., J Clin "
        "Oncol 2017;35:1803 [R qualitative])",
        tag="A",
    )
    cap: float = ck.param(
        1.5,
        unit="1",
        description="T-cell niche capacity (endogenous T + CAR-T) as a multiple of the untreated T pool",
        source="assumption: CAR-T compete with host T cells for a shared niche (Kimmel GJ et al., Proc R Soc B "
        "2021;288:20210229 [R qualitative])",
        tag="A",
        lower=1.0,
    )
    alpha: float = ck.param(
        0.16, unit="1/d", description="effector death rate without antigen (contraction)", source=_STEIN, tag="R"
    )
    k_mem: float = ck.param(
        0.0079 * (0.16 - 0.0032),
        unit="1/d",
        description="effector-to-memory conversion rate",
        source="F_B (alpha - beta) = 0.0079 x 0.1568 from " + _STEIN,
        tag="D",
    )
    beta: float = ck.param(
        0.0032, unit="1/d", description="memory CAR-T loss rate (persistence phase)", source=_STEIN, tag="R"
    )
    k_react: float = ck.param(
        0.3,
        unit="1/d",
        description="antigen-driven re-activation rate of memory CAR-T cells",
        source="assumption (memory re-activation of the Kirouac 2023 structure [R]; value not published)",
        tag="A",
    )
    k_exh: float = ck.param(
        0.05,
        unit="1/d",
        description="antigen-driven exhaustion rate of effectors",
        source="assumption (Paixao 2022 / Kirouac 2023 structure; value not published)",
        tag="A",
    )
    d_exh: float = ck.param(
        0.2, unit="1/d", description="death rate of exhausted CAR-T cells", source="assumption", tag="A"
    )
    k_kill: float = ck.param(
        0.8,
        unit="1/d",
        description="maximal kill rate per target cell",
        source="assumption; clinical KKillMax 0.343/d for bb2121 (Singh AP et al., CPT "
        "Pharmacometrics Syst Pharmacol 2021;10:362 [R2])",
        tag="A",
    )
    kd_kill: float = ck.param(
        50.0, unit="cells/uL", description="effector density giving half-maximal killing", source="assumption", tag="A"
    )
    q_kill: float = ck.param(
        2.0,
        unit="1",
        description="targets per effector at which killing saturates (serial killing)",
        source="assumption (a few kills per effector per day [M])",
        tag="A",
    )
    f_blood: float = ck.param(
        0.033,
        unit="1",
        description="fraction of CAR-T cells in blood",
        source="as endogenous T cells (Hosseini I et al., npj Syst Biol Appl 2020 partitions: 5000/153000 = 0.033)",
        tag="A",
        upper=1.0,
    )
    f_blood_resting: float = ck.param(
        0.003,
        unit="1",
        description="fraction of resting and activating (not yet dividing) CAR-T cells in blood",
        source="assumption: infused cells leave blood for tissues within hours (the distribution phase of the "
        "four-phase CK of Liu C et al., Clin Pharmacol Ther 2021;109:716 [R qualitative])",
        tag="A",
        upper=1.0,
    )
    f_toci: float = ck.param(
        1.2,
        unit="1",
        description="multiplier on proliferation under full tocilizumab IL-6R occupancy",
        source=_STEIN + " (F_toci)",
        tag="R",
    )
    f_ster: float = ck.param(
        1.0,
        unit="1",
        description="multiplier on proliferation under full steroid effect",
        source=_STEIN + " (F_ster)",
        tag="R",
    )
    cd28_rho_fold: float = ck.param(
        1.3,
        unit="1",
        description="CD28 vs 4-1BB: fold proliferation rate",
        source="assumption; CD28 CARs expand faster and peak earlier (" + _CAPPELL + " [R abstract, qualitative])",
        tag="A",
    )
    cd28_memory_fold: float = ck.param(
        0.3,
        unit="1",
        description="CD28 vs 4-1BB: fold memory conversion",
        source="assumption; 4-1BB favours central-memory differentiation and persistence (Kawalekar OU et al., "
        "Immunity 2016;44:380 [M]; Majzner RG et al., Cancer Discov 2020;10:702 [R abstract])",
        tag="A",
    )
    cd28_exhaustion_fold: float = ck.param(
        2.0,
        unit="1",
        description="CD28 vs 4-1BB: fold exhaustion rate",
        source="assumption; 4-1BB ameliorates exhaustion (Long AH et al., Nat Med 2015;21:581 [M])",
        tag="A",
    )
    cd28_cytokine_fold: float = ck.param(
        2.5,
        unit="1",
        description="CD28 vs 4-1BB: fold myeloid-activating signal per engaged CAR-T cell",
        source="assumption; cytokine release greater with CD28 CARs (" + _CAPPELL + " [R abstract])",
        tag="A",
    )


class CarState(NamedTuple):
    """CAR-T pools (cells)."""

    resting: Any
    act1: Any
    act2: Any
    effector: Any
    memory: Any
    exhausted: Any


#: Cells (per pool) below which a population does not divide: a pool under one cell is extinct. Without it,
#: round-off in a pool that is exactly 0 (no dose, or after rejection) grows exponentially wherever the per-cell
#: growth rate is positive.
ONE_CELL = 1.0


def dividing(x):
    """`x` with its division switched off below about one cell: `x·x/(x + ONE_CELL)` (≈ x above 100 cells)."""
    return x * x / (x + ONE_CELL)


def total(s: CarState):
    """All CAR-T cells (cells)."""
    return s.resting + s.act1 + s.act2 + s.effector + s.memory + s.exhausted


def blood_count(car: CarTParams, s: CarState, blood_ul):
    """CAR-T cells per µL blood."""
    return (
        car.f_blood_resting * (s.resting + s.act1 + s.act2) + car.f_blood * (s.effector + s.memory + s.exhausted)
    ) / blood_ul


def stimulation(car: CarTParams, antigen_density):
    """Antigen stimulation σ in [0, 1) from the armed antigen density (cells/µL lymphoid tissue)."""
    return antigen_density / (car.k_stim + antigen_density)


def kill_rate(car: CarTParams, effector_density, antigen_density):
    """Kill rate per target cell of an armed antigen (1/d) from the effector and antigen densities (cells/µL)."""
    return car.k_kill * effector_density / (car.kd_kill + effector_density + antigen_density / car.q_kill)


def cytokine_support(car: CarTParams, il7_rel, il15_rel):
    """Proliferation multiplier from IL-7 and IL-15 relative to baseline (1 at baseline)."""
    return jnp.maximum(1.0 + car.b_il7 * (il7_rel - 1.0) + car.b_il15 * (il15_rel - 1.0), 0.0)


def niche_fraction(car: CarTParams, *, t_cells, car_total, t0_cells):
    """Free fraction of the T-cell niche, `max(1 − (T + CAR)/(cap·T₀), 0)`."""
    return jnp.maximum(1.0 - (t_cells + car_total) / (car.cap * t0_cells), 0.0)


def costim(cd28, fold):
    """Multiplier of a costimulation-dependent rate: 1 for 4-1BB (`cd28` = 0), `fold` for CD28 (`cd28` = 1)."""
    return 1.0 + cd28 * (fold - 1.0)


def car_derivatives(
    car: CarTParams, s: CarState, *, sigma, support, niche, cd28, rejection, chemo, toci_occ, steroid
) -> CarState:
    """CAR-T derivatives (cells/d); see the module docstring."""
    k_tr = 2.0 / car.tau_lag
    loss = rejection + chemo
    rho = (
        car.rho
        * costim(cd28, car.cd28_rho_fold)
        * sigma
        * support
        * niche
        * (1.0 + (car.f_toci - 1.0) * toci_occ)
        * (1.0 + (car.f_ster - 1.0) * steroid)
    )
    k_mem = car.k_mem * costim(cd28, car.cd28_memory_fold)
    k_exh = car.k_exh * costim(cd28, car.cd28_exhaustion_fold)
    trigger = car.k_on * sigma * s.resting
    react = car.k_react * sigma * s.memory
    return CarState(
        resting=-trigger - (car.d_rest + loss) * s.resting,
        act1=trigger + react - (k_tr + loss) * s.act1,
        act2=k_tr * s.act1 - (k_tr + loss) * s.act2,
        effector=(
            k_tr * s.act2
            + rho * dividing(s.effector)
            - (car.alpha * (1.0 - sigma) + k_mem + k_exh * sigma + loss) * s.effector
        ),
        memory=k_mem * s.effector - react - (car.beta + loss) * s.memory,
        exhausted=k_exh * sigma * s.effector - (car.d_exh + loss) * s.exhausted,
    )
