"""B-cell compartment: marrow precursors, naive B in blood and lymphoid tissue, memory B, plasmablasts, LLPC.

Parameter group `bcell` (`BCellParams`). States are total-body cell numbers except `llpc` (relative to baseline).
CD19⁺ populations (precursors P, naive blood N_b and tissue N_t, memory M, plasmablasts PB) are killed by CAR-T
cells (λ_b in blood, λ_t in lymphoid tissue incl. marrow) and by chemotherapy (`sens_b · ld_effect`); CD19⁻
long-lived plasma cells (LLPC) are untouched.

**Equations** (λ: CAR-T kill rate per target; e: delayed chemotherapy kill):

    dP/dt    = k_mat P₀ − k_mat P − (λ_t + e) P                                 (CD19⁻ pro-B input constant)
    dN_b/dt  = k_mat P − k_bout N_b + k_bin N_t − d_n N_b − (λ_b + e) N_b
    dN_t/dt  = k_bout N_b − k_bin N_t − (d_n + k_nm) N_t − (λ_t + e) N_t
    dM/dt    = k_nm N_t + s_m d_m M − d_m M − (λ_t + e) M
    dPB/dt   = k_mpb M − d_pb PB − (λ_t + e) PB
    dLLPC/dt = d_llpc (PB/PB₀ − LLPC)                                          (relative units)

The baseline is a steady state: with B₀ = b_blood0·V_blood/f_blood total B cells, M₀ = m₀ B₀, N₀ = B₀ − M₀,
N_b0 = f_blood N₀, N_t0 = N₀ − N_b0:

    k_nm  = (1 − s_m) d_m M₀ / N_t0            (memory input from naive B balances the non-self-renewed loss)
    P₀    = (d_n N₀ + k_nm N_t0) / k_mat       (marrow output balances naive loss)
    k_bin = k_bout N_b0/N_t0 − (d_n + k_nm)    (net blood → tissue flux at baseline)
    PB₀   = pb_blood0 V_blood / f_blood_pb;    k_mpb = d_pb PB₀ / M₀

Returning cells are naive: memory B recovers only through the slow naive → memory input (time constant
1/((1 − s_m) d_m) ≈ 2 y with the human values), so plasmablasts (made from memory B) and anti-dsDNA stay low after B cells return.
Blood B count = (N_b + f_blood M)/V_blood; plasmablasts per µL = f_blood_pb PB/V_blood.

| parameter | default | unit | tag | source |
|---|---|---|---|---|
| b_blood0 | 250 | cells/µL | A | inside the normal range 100-500/µL (kinetics.md §4 [R]) |
| f_blood | 0.026 | 1 | D | Hosseini 2020 partitions (only ~2 % of B cells in blood) |
| d_naive | 0.0046 | 1/d | R | Macallan 2005: naive B 0.46 %/d |
| d_mem | 0.0266 | 1/d | R | Macallan 2005: memory B 2.66 %/d |
| other | see class | | M/A | see `parameter_table()` |

**References:** Macallan DC et al., Blood 2005;105:3633; Hosseini I et al., npj Syst Biol Appl 2020; Mei HE et al.,
Blood 2015;125:1739; Mackensen A et al., Nat Med 2022;28:2124; Amanna IJ et al., NEJM 2007;357:1903.
"""

from __future__ import annotations

from typing import NamedTuple

import equinox as eqx

import carkinetics as ck


class BCellParams(eqx.Module):
    """Parameter group `bcell`: B-lineage pool sizes, turnover, trafficking and plasmablast output."""

    b_blood0: float = ck.param(250.0, unit="cells/uL", description="untreated blood CD19+ B-cell count",
                               source="chosen inside the normal range 100-500/uL (Synnovis; kinetics.md 4 [R]); "
                                      "SLE B counts are lower than healthy [M]", tag="A")
    f_blood: float = ck.param(
        0.026, unit="1", description="fraction of B cells in blood",
        source="Hosseini 2020 partitions (spleen 333, LN 190, BM 80; volumes 210/400/500 mL; PB 5,000 mL): "
               "5000/(5000+69930+76000+40000) = 0.026", tag="D", upper=1.0)
    d_naive: float = ck.param(0.0046, unit="1/d", description="naive B-cell turnover (loss) rate",
                              source="Macallan DC et al., Blood 2005;105:3633 (naive B 0.46%/d)", tag="R")
    d_mem: float = ck.param(0.0266, unit="1/d", description="memory B-cell turnover rate",
                            source="Macallan DC et al., Blood 2005;105:3633 (memory B 2.66%/d)", tag="R")
    mem_self: float = ck.param(
        0.95, unit="1", description="fraction of memory B turnover replaced by self-renewal at baseline",
        source="tuned: memory B stays depleted > 1 y after CAR-T (returning cells naive, Mackensen 2022 [R])",
        tag="A", upper=1.0)
    mem_frac0: float = ck.param(0.3, unit="1", description="memory fraction of B cells before treatment",
                                source="typical adult memory B fraction 20-40%", tag="M", upper=1.0)
    k_mat: float = ck.param(0.1, unit="1/d", description="exit rate of CD19+ marrow precursors (pro-B to immature B) as naive B",
                            source="CD19+ B-lineage residence in marrow of ~1-2 weeks (pro-B to immature B)", tag="M")
    k_bout: float = ck.param(5.0, unit="1/d", description="rate at which naive B cells leave blood for lymphoid tissue",
                             source="blood residence of recirculating lymphocytes ~hours", tag="M")
    pb_blood0: float = ck.param(5.0, unit="cells/uL", description="untreated blood plasmablast count (active SLE)",
                                source="assumption: plasmablasts expanded in active SLE (~2% of B cells)", tag="A")
    f_blood_pb: float = ck.param(0.1, unit="1", description="fraction of plasmablasts in blood",
                                 source="assumption (migratory plasmablasts)", tag="A", upper=1.0)
    d_pb: float = ck.param(0.25, unit="1/d", description="plasmablast loss rate (lifespan ~3-5 d)",
                           source="kinetics.md 4: plasmablast lifespan ~3-5 days", tag="M")


class BCellDerivs(NamedTuple):
    """B-lineage derivatives (cells/d; `d_llpc` in 1/d of the relative LLPC pool)."""

    d_bm: object
    d_blood: object
    d_tissue: object
    d_memory: object
    d_pb: object
    d_llpc: object


class BCellBaseline(NamedTuple):
    """Untreated steady state (cells) and the derived rates of the B compartment."""

    p0: object
    nb0: object
    nt0: object
    m0: object
    pb0: object
    k_nm: object
    k_bin: object
    k_mpb: object


def baseline(bcell: BCellParams, blood_ul) -> BCellBaseline:
    """Untreated steady state and derived rate constants for a blood volume `blood_ul` (µL)."""
    b0 = bcell.b_blood0 * blood_ul / bcell.f_blood
    m0 = bcell.mem_frac0 * b0
    n0 = b0 - m0
    nb0 = bcell.f_blood * n0
    nt0 = n0 - nb0
    k_nm = (1.0 - bcell.mem_self) * bcell.d_mem * m0 / nt0
    p0 = (bcell.d_naive * n0 + k_nm * nt0) / bcell.k_mat
    k_bin = bcell.k_bout * nb0 / nt0 - (bcell.d_naive + k_nm)
    pb0 = bcell.pb_blood0 * blood_ul / bcell.f_blood_pb
    k_mpb = bcell.d_pb * pb0 / m0
    return BCellBaseline(p0, nb0, nt0, m0, pb0, k_nm, k_bin, k_mpb)


def bcell_derivatives(bcell: BCellParams, base: BCellBaseline, *, d_llpc, bm, blood, tissue, memory, pb, llpc,
                      kill_blood, kill_tissue, ld_kill) -> BCellDerivs:
    """B-lineage derivatives; `kill_*` are CAR-T kill rates per target (1/d), `ld_kill` the chemotherapy rate."""
    lt = kill_tissue + ld_kill
    d_bm = bcell.k_mat * (base.p0 - bm) - lt * bm
    d_blood = (bcell.k_mat * bm - bcell.k_bout * blood + base.k_bin * tissue - bcell.d_naive * blood
               - (kill_blood + ld_kill) * blood)
    d_tissue = bcell.k_bout * blood - base.k_bin * tissue - (bcell.d_naive + base.k_nm) * tissue - lt * tissue
    d_memory = base.k_nm * tissue - (1.0 - bcell.mem_self) * bcell.d_mem * memory - lt * memory
    d_pb = base.k_mpb * memory - bcell.d_pb * pb - lt * pb
    d_ll = d_llpc * (pb / base.pb0 - llpc)
    return BCellDerivs(d_bm, d_blood, d_tissue, d_memory, d_pb, d_ll)


def cd19_tissue(*, bm, tissue, memory, pb, f_blood, f_blood_pb):
    """CD19⁺ cells in lymphoid tissue and marrow (cells): precursors, tissue naive, tissue memory, tissue PB."""
    return bm + tissue + (1.0 - f_blood) * memory + (1.0 - f_blood_pb) * pb


def cd19_blood(*, blood, memory, pb, f_blood, f_blood_pb):
    """CD19⁺ cells in blood (cells)."""
    return blood + f_blood * memory + f_blood_pb * pb


def blood_counts(bcell: BCellParams, *, blood, memory, pb, blood_ul):
    """Blood B cells and plasmablasts per µL."""
    return (blood + bcell.f_blood * memory) / blood_ul, bcell.f_blood_pb * pb / blood_ul
