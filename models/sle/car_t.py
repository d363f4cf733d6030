"""Mechanistic CAR-T cellular kinetics: effector (blood, tissue), memory and exhausted pools.

Parameter group `car` (`CarTParams`). States are total-body cell numbers (cells), so an infusion of N cells is a
bolus of N into `car_effector` (effectors in blood). Densities are cells per µL of the compartment volume
(blood, or lymphoid tissue = spleen + lymph nodes + marrow, from the `body` group).

**Equations** (σ = antigen stimulation, B = IL-7/IL-15 boost, κ(t) = rejection, χ = chemotherapy drive):

    σ  = D_T/(K_stim + D_T)             D_T: CD19⁺ cells per µL lymphoid tissue
    B  = max(1 + b7 (IL7/IL7₀ − 1) + b15 (IL15/IL15₀ − 1), 0)
    κ(t) = k_rej · ½ (1 + tanh((t − t_rej)/w_rej))
    ν  = max(1 − (T + CAR)/(cap T₀), 0)   (free T-cell niche; T: endogenous T cells, T₀ untreated)

    dE_b/dt = −k_out E_b + k_in E_t − (α + k_mem + κ + χ) E_b
    dE_t/dt =  k_out E_b − k_in E_t + (ρ σ B ν − α − k_mem − k_exh σ − κ − χ) E_t + k_act σ M
    dM/dt   =  k_mem (E_b + E_t) − k_act σ M − (β + κ) M
    dX/dt   =  k_exh σ E_t − (d_X + κ) X

with `k_in = k_out f/(1 − f)` so that a fraction `f` of effectors is in blood at trafficking equilibrium.
Expansion is antigen-driven and saturable; it stops when the targets are depleted, which sets Tmax. Without
antigen, effectors contract at α (+ k_mem) and a fraction k_mem/(α + k_mem) of them becomes memory (the Stein
2019 structure: k_mem = F_B (α − β)). Memory cells re-activate into effectors on antigen (returning B cells).

**Killing** of CD19⁺ targets in a compartment with effector density D_E and target density D_T (Beddington-
DeAngelis form: saturable in effectors, at most `k_kill·q_kill` kills per effector per day):

    λ = k_kill D_E / (K_kill + D_E + D_T/q_kill)        (per target cell, 1/d)

Observable: CAR-T cells per µL blood = (E_b + f (M + X)) / V_blood.

| parameter | default | unit | tag | source |
|---|---|---|---|---|
| alpha | 0.16 | 1/d | R | Stein 2019 contraction α |
| beta | 0.0032 | 1/d | R | Stein 2019 slow decline β |
| k_mem | 0.00124 | 1/d | D | F_B (α − β) = 0.0079 × 0.1568 (Stein 2019) |
| rho, K_stim, b7, b15, k_kill, K_kill, q_kill, k_act, k_exh, d_exh, k_out | see class | | A | tuned to SLE targets |
| f_blood | 0.033 | 1 | A | as Hosseini 2020 T-cell partitions |
| cap | 2 | 1 | A | shared T-cell niche (Kimmel 2021 [R qualitative]) |
| k_rej, t_rej, w_rej | 1.3, 70, 10 | 1/d, d, d | A | tuned to B-cell return at ~110 d (Mackensen 2022 [R]) |

**References:** Stein AM et al., CPT Pharmacometrics Syst Pharmacol 2019;8:285; Kirouac DC et al., Nat Biotechnol
2023; Hosseini I et al., npj Syst Biol Appl 2020; Mackensen A et al., Nat Med 2022;28:2124.
"""

from __future__ import annotations

from typing import NamedTuple

import equinox as eqx
import jax.numpy as jnp

import carkinetics as ck


class CarTParams(eqx.Module):
    """Parameter group `car`: CAR-T expansion, contraction, memory, exhaustion, trafficking, killing, rejection."""

    rho: float = ck.param(
        1.0, unit="1/d", description="maximal antigen-driven proliferation rate of effector CAR-T cells",
        source="tuned to CAR-T peak day 7-14 (Stein 2019 net rho 0.889/d [R]; Kochenderfer 2017 peak d8.5 [R])",
        tag="A")
    k_stim: float = ck.param(
        3000.0, unit="cells/uL", description="CD19+ target density (lymphoid tissue) giving half-maximal stimulation",
        source="assumption (tuned with rho)", tag="A")
    b_il7: float = ck.param(0.4, unit="1", description="proliferation boost per unit relative IL-7 excess",
                            source="assumption (IL-7/IL-15 boost CAR-T expansion; Hirayama 2019, Kochenderfer 2017 [R qualitative])",
                            tag="A")
    b_il15: float = ck.param(0.4, unit="1", description="proliferation boost per unit relative IL-15 excess",
                             source="assumption (higher IL-15 -> higher CAR peak, Kochenderfer 2017 JCO [R qualitative])",
                             tag="A")
    cap: float = ck.param(
        2.0, unit="1", description="T-cell niche capacity (endogenous T + CAR-T) as a multiple of the untreated T pool",
        source="assumption: competition of CAR-T and endogenous T cells for a shared niche (Kimmel 2021 Proc R Soc B "
               "[R qualitative]); limits CAR-T numbers under chronic antigen", tag="A", lower=1.0)
    alpha: float = ck.param(0.16, unit="1/d", description="effector contraction (death) rate",
                            source="Stein AM et al., CPT Pharmacometrics Syst Pharmacol 2019;8:285 (Table 1)", tag="R")
    k_mem: float = ck.param(
        0.0079 * (0.16 - 0.0032), unit="1/d", description="effector-to-memory conversion rate",
        source="k = F_B (alpha - beta) = 0.0079 x 0.1568 (Stein 2019 Table 1; kinetics.md 2.1)", tag="D")
    beta: float = ck.param(0.0032, unit="1/d", description="memory CAR-T loss rate",
                           source="Stein AM et al., CPT Pharmacometrics Syst Pharmacol 2019;8:285 (Table 1)", tag="R")
    k_act: float = ck.param(0.3, unit="1/d", description="antigen-driven re-activation rate of memory into effectors",
                            source="assumption (Kirouac 2023 toggle structure [R]; value not published)", tag="A")
    k_exh: float = ck.param(0.05, unit="1/d", description="antigen-driven exhaustion rate of effectors",
                            source="assumption (Paixao 2022 / Kirouac 2023 structure; value not published)", tag="A")
    d_exh: float = ck.param(0.2, unit="1/d", description="death rate of exhausted CAR-T cells",
                            source="assumption", tag="A")
    k_kill: float = ck.param(0.6, unit="1/d", description="maximal CAR-T kill rate per CD19+ target cell",
                             source="tuned to blood B cells < 1% of baseline by day ~12 (Mackensen 2022 [R]); clinical KKillMax 0.343/d (Singh 2020 [R2])",
                             tag="A")
    kd_kill: float = ck.param(50.0, unit="cells/uL", description="effector density giving half-maximal killing",
                              source="assumption", tag="A")
    q_kill: float = ck.param(2.0, unit="1", description="targets per effector at which killing saturates (serial killing)",
                             source="assumption (a few kills per effector per day [M])", tag="A")
    k_out: float = ck.param(2.0, unit="1/d", description="rate at which effector CAR-T cells leave blood for tissue",
                            source="assumption (blood residence of lymphocytes ~hours [M])", tag="A")
    f_blood: float = ck.param(
        0.033, unit="1", description="fraction of CAR-T cells in blood at trafficking equilibrium",
        source="assumed as endogenous T cells (Hosseini 2020 partitions, 5000/153000 = 0.033)", tag="A", upper=1.0)
    k_rej: float = ck.param(
        1.3, unit="1/d", description="maximal rate of immune rejection of CAR-T cells (all pools)",
        source="tuned so blood B cells return near day 90-110 (Mackensen 2022 [R]); stands for anti-CAR immunity "
               "and other causes of the short persistence in SLE (translation.md G4 [R]); must exceed rho - alpha "
               "to end the CAR/B predator-prey equilibrium", tag="A")
    t_rej: float = ck.param(70.0, unit="d", description="onset time (midpoint) of anti-CAR rejection after infusion",
                            source="tuned with k_rej to the B-cell return at 110 +/- 32 d (Mackensen 2022 [R])", tag="A", lower=-1e4)
    w_rej: float = ck.param(10.0, unit="d", description="width of the rejection onset (tanh ramp)",
                            source="assumption", tag="A")


class CarDerivs(NamedTuple):
    """CAR-T derivatives (cells/d)."""

    d_effector: object
    d_tissue: object
    d_memory: object
    d_exhausted: object


def stimulation(car: CarTParams, target_density_tissue):
    """Antigen stimulation σ in [0, 1) from the CD19⁺ density in lymphoid tissue (cells/µL)."""
    return target_density_tissue / (car.k_stim + target_density_tissue)


def cytokine_boost(car: CarTParams, il7_rel, il15_rel):
    """Proliferation multiplier from IL-7 and IL-15 relative to baseline (1 at baseline)."""
    return jnp.maximum(1.0 + car.b_il7 * (il7_rel - 1.0) + car.b_il15 * (il15_rel - 1.0), 0.0)


def rejection_rate(car: CarTParams, t):
    """Time-dependent rejection rate κ(t) (1/d), t in days after infusion."""
    return car.k_rej * 0.5 * (1.0 + jnp.tanh((t - car.t_rej) / car.w_rej))


def kill_rate(car: CarTParams, effector_density, target_density):
    """Per-target CAR-T kill rate λ (1/d) from effector and target densities (cells/µL) in one compartment."""
    return car.k_kill * effector_density / (car.kd_kill + effector_density + target_density / car.q_kill)


def car_derivatives(car: CarTParams, t, *, effector, tissue, memory, exhausted, sigma, boost, chemo,
                    niche) -> CarDerivs:
    """CAR-T derivatives (see module docstring); `chemo` is the undelayed chemotherapy kill drive (1/d) and
    `niche` the free fraction of the T-cell niche, `max(1 − (T + CAR)/(cap·T₀), 0)`."""
    kap = rejection_rate(car, t)
    k_in = car.k_out * car.f_blood / (1.0 - car.f_blood)
    act = car.k_act * sigma * memory
    d_e = -car.k_out * effector + k_in * tissue - (car.alpha + car.k_mem + kap + chemo) * effector
    d_t = (car.k_out * effector - k_in * tissue
           + (car.rho * sigma * boost * niche - car.alpha - car.k_mem - car.k_exh * sigma - kap - chemo) * tissue + act)
    d_m = car.k_mem * (effector + tissue) - act - (car.beta + kap) * memory
    d_x = car.k_exh * sigma * tissue - (car.d_exh + kap) * exhausted
    return CarDerivs(d_e, d_t, d_m, d_x)


def car_blood_count(car: CarTParams, *, effector, memory, exhausted, blood_ul):
    """CAR-T cells per µL blood."""
    return (effector + car.f_blood * (memory + exhausted)) / blood_ul


def niche_fraction(car: CarTParams, *, t_cells, car_total, t0_cells):
    """Free fraction of the T-cell niche, `max(1 − (T + CAR)/(cap·T₀), 0)`."""
    return jnp.maximum(1.0 - (t_cells + car_total) / (car.cap * t0_cells), 0.0)
