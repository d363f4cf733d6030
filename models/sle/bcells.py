"""B lineage: marrow precursors, naive B, memory B, autoreactive memory/germinal-centre B, plasmablasts and long-lived
plasma cells, with the tolerance mechanism that keeps a remission after B cells return.

Parameter group `bcell` (`BCellParams`, table in its docstring). States are total-body cell numbers (cells):
`b_marrow` (P, CD19⁺ precursors), `b_naive` (N), `b_memory` (M, memory B of ordinary specificities, e.g. vaccine
responses), `b_auto` (A, autoreactive memory/germinal-centre B), `pb_auto`, `pb_other` (CD19⁺ plasmablasts made from
A and M) and `llpc_auto`, `llpc` (CD19⁻ BCMA⁺ long-lived plasma cells seeded by the plasmablasts); `tumour` (CD19⁺
malignant B cells: 0 in SLE, used by the oncology-like preset that reproduces the oncology cellular kinetics).

**Killing.** λ19 and λB are the CAR kill rates per CD19⁺ and per BCMA⁺ target (`car_t.py`; 0 without that arm), `e`
the chemotherapy kill (`ld.sens_b · ld_effect`). CD19 is on P, N, M, A and plasmablasts; BCMA on plasmablasts and
LLPC; LLPC are CD19⁻ and resist Flu/Cy (Mei 2015; Bhoj 2016).

**Equations** (F(IC) is the tolerance breach, below):

    dP/dt    = k_mat (P₀ − P) − (λ19 + e) P                       (CD19⁻ pro-B input is constant)
    dN/dt    = k_mat P − (d_n + k_nm + k_na F) N − (λ19 + e) N
    dM/dt    = k_nm N − (1 − s_m) d_m M − (λ19 + e) M
    dA/dt    = k_na F N − (1 − s_a) d_a A − (λ19 + e) A
    dPB_a/dt = k_apb A − d_pb PB_a − (λ19 + λB + e) PB_a            (PB_o likewise from M with k_mpb)
    dLL_a/dt = k_ll PB_a − d_ll LL_a − λB LL_a                       (LL_o likewise from PB_o)
    dTu/dt   = r_tu Tu (1 − Tu/Tu_max) − (λ19 + e) Tu                  (malignant B cells; Tu(0) = tumour0)

The untreated state is a steady state; `k_nm`, `k_na`, `k_apb`, `k_mpb`, `k_ll` and `P₀` follow from the baseline
pool sizes (`baseline`). B-cell return after CAR-T therefore *emerges*: marrow output continues throughout, and
blood B cells reappear when the functional CAR-T activity falls below what that output outpaces.

**Remission durability (tolerance / germinal-centre re-entry).** Naive B cells enter the autoreactive memory/GC
pool only in the autoimmune milieu that immune complexes sustain (TLR7/9 engagement by chromatin/RNA-containing
complexes, type-I IFN, BAFF; Leadbetter 2002, Christensen 2006):

    F(IC) = ε + (1 − ε)·Φ(IC),   Φ(x) = x^h (1 + K^h)/(K^h + x^h),   Φ(1) = 1

with IC = anti-dsDNA relative to baseline (`autoantibodies.py`). Before treatment the loop A → PB_a → anti-dsDNA →
F → A sustains itself (F = 1). CAR-T removes A and PB_a, anti-dsDNA falls, and the *returning naive B cells* see a
low F: they re-seed autoreactive memory at a small fraction of the pre-treatment rate, so the returning repertoire
is naive and the remission is a second, stable state of the same loop. `auto_breach` (ε) is the residual,
milieu-independent breach rate: the slow, parameterised relapse risk. Below a critical ε the remission is stable;
above it the loop re-ignites after a delay that grows as ε approaches the critical value, so relapse becomes a
population-level probability once ε varies between patients (the virtual population). At the hand-set
defaults (Erlangen regimen, MB-CART19.1) the critical ε lies between 0.003 and 0.01: ε ≤ 0.003 keeps SLEDAI < 1 for
10 years, the default 0.01 relapses (SLEDAI > 4) after ~4.3 years, 0.02 after ~2.2 years. Flu/Cy alone spares
enough autoreactive B cells for the loop to re-ignite within a year.

**References:** Macallan DC et al., Blood 2005;105:3633; Hosseini I et al., npj Syst Biol Appl 2020; Mei HE et al.,
Blood 2015;125:1739; Bhoj VG et al., Blood 2016;128:360; Hoyer BF et al., J Exp Med 2004;199:1577; Mackensen A et
al., Nat Med 2022;28:2124; Leadbetter EA et al., Nature 2002;416:603; Christensen SR et al., Immunity
2006;25:417; Amanna IJ et al., N Engl J Med 2007;357:1903.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import equinox as eqx
import jax.numpy as jnp

import carkinetics as ck
from carkinetics.models.sle._doc import document_params


@document_params
class BCellParams(eqx.Module):
    """Parameter group `bcell`: B-lineage pool sizes, turnover, plasma-cell output and the tolerance loop."""

    b_blood0: float = ck.param(
        250.0,
        unit="cells/uL",
        description="untreated blood CD19+ B-cell count",
        source="chosen inside the normal range 100-500/uL (Synnovis/CDLI lab reference ranges "
        "[R]); SLE counts are often lower [M]",
        tag="A",
    )
    f_blood: float = ck.param(
        0.026,
        unit="1",
        description="fraction of B cells in blood",
        source="Hosseini I et al., npj Syst Biol Appl 2020 partitions (spleen 333, LN 190, BM 80; volumes 210/400/500 "
        "mL; PB 5,000 mL): 5000/(5000+69930+76000+40000) = 0.026",
        tag="D",
        upper=1.0,
    )
    d_naive: float = ck.param(
        0.0046,
        unit="1/d",
        description="naive B-cell turnover (loss) rate",
        source="Macallan DC et al., Blood 2005;105:3633 (naive B 0.46 %/d)",
        tag="R",
    )
    d_mem: float = ck.param(
        0.0266,
        unit="1/d",
        description="memory B-cell turnover rate",
        source="Macallan DC et al., Blood 2005;105:3633 (memory B 2.66 %/d)",
        tag="R",
    )
    mem_self: float = ck.param(
        0.95,
        unit="1",
        description="fraction of memory B turnover replaced by self-renewal",
        source="assumption: memory B stays low for > 1 y after CAR-T (returning cells naive, Mackensen 2022 [R])",
        tag="A",
        upper=1.0,
    )
    mem_frac0: float = ck.param(
        0.3,
        unit="1",
        description="memory fraction of B cells before treatment",
        source="typical adult memory B fraction 20-40 % [M]",
        tag="M",
        upper=1.0,
    )
    auto_frac0: float = ck.param(
        0.05,
        unit="1",
        description="autoreactive memory/germinal-centre fraction of B cells before treatment",
        source="assumption (active SLE)",
        tag="A",
        upper=1.0,
    )
    d_auto: float = ck.param(
        0.05,
        unit="1/d",
        description="turnover rate of autoreactive memory/GC B cells",
        source="assumption (activated, GC-cycling cells turn over in weeks)",
        tag="A",
    )
    auto_self: float = ck.param(
        0.5,
        unit="1",
        description="fraction of autoreactive B turnover replaced by self-renewal",
        source="assumption",
        tag="A",
        upper=1.0,
    )
    auto_breach: float = ck.param(
        0.01,
        unit="1",
        description="milieu-independent tolerance breach (relapse risk) relative to the pre-treatment rate",
        source="assumption: remission to 24 months in the Erlangen series (Mueller F et al., N Engl J Med "
        "2024;390:687 [R])",
        tag="A",
        upper=1.0,
    )
    ic_half: float = ck.param(
        0.3,
        unit="1",
        description="immune-complex level (relative) giving half the breach drive",
        source="assumption",
        tag="A",
    )
    ic_hill: float = ck.param(
        3.0,
        unit="1",
        description="steepness of the breach drive in the immune-complex level",
        source="assumption (cooperative TLR-dependent activation)",
        tag="A",
    )
    k_mat: float = ck.param(
        0.1,
        unit="1/d",
        description="exit rate of CD19+ marrow precursors as naive B",
        source="CD19+ B-lineage residence in marrow of ~1-2 weeks [M]",
        tag="M",
    )
    pb_blood0: float = ck.param(
        5.0,
        unit="cells/uL",
        description="untreated blood plasmablast count (active SLE)",
        source="assumption: plasmablasts expanded in active SLE (~2 % of B cells)",
        tag="A",
    )
    f_blood_pb: float = ck.param(
        0.1,
        unit="1",
        description="fraction of plasmablasts in blood",
        source="assumption (migratory plasmablasts)",
        tag="A",
        upper=1.0,
    )
    f_auto_pb: float = ck.param(
        0.3,
        unit="1",
        description="autoreactive share of plasmablasts before treatment",
        source="assumption (active SLE)",
        tag="A",
        upper=1.0,
    )
    d_pb: float = ck.param(
        0.25,
        unit="1/d",
        description="plasmablast loss rate (lifespan ~3-5 d)",
        source="plasmablast lifespan ~3-5 days [M]",
        tag="M",
    )
    llpc0: float = ck.param(
        1e9,
        unit="cells",
        description="long-lived plasma cells (body total) before treatment",
        source="order of magnitude: plasma cells ~0.1-1 % of marrow cells [M]",
        tag="M",
    )
    f_auto_llpc: float = ck.param(
        0.05,
        unit="1",
        description="autoreactive share of long-lived plasma cells",
        source="assumption",
        tag="A",
        upper=1.0,
    )
    d_llpc: float = ck.param(
        math.log(2.0) / (11.0 * 365.0),
        unit="1/d",
        description="LLPC loss rate",
        source="tetanus IgG t1/2 11 y taken as LLPC lifespan (Amanna IJ et al., N Engl J Med "
        "2007;357:1903 [R]): ln2/4015 d",
        tag="D",
    )
    tumour0: float = ck.param(
        0.0,
        unit="cells",
        description="CD19+ malignant B cells at treatment (0 in SLE)",
        source="by definition: SLE has no malignant B cells (set in the oncology-like preset)",
        tag="D",
    )
    r_tumour: float = ck.param(
        0.03,
        unit="1/d",
        description="net growth rate of malignant B cells",
        source="assumption (B-ALL blast doubling of weeks)",
        tag="A",
    )
    tumour_max: float = ck.param(
        1e12,
        unit="cells",
        description="carrying capacity of malignant B cells",
        source="order of magnitude of the marrow cellularity (~1 kg of cells) [M]",
        tag="M",
    )


class BState(NamedTuple):
    """B-lineage pools (cells)."""

    marrow: Any
    naive: Any
    memory: Any
    auto: Any
    pb_auto: Any
    pb_other: Any
    llpc_auto: Any
    llpc: Any
    tumour: Any


class BBaseline(NamedTuple):
    """Untreated steady state (cells) and the rate constants it implies."""

    state: BState
    k_nm: Any
    k_na: Any
    k_mpb: Any
    k_apb: Any
    k_ll_auto: Any
    k_ll: Any


def baseline(b: BCellParams, blood_ul) -> BBaseline:
    """Untreated steady state and derived rate constants for a blood volume `blood_ul` (µL)."""
    b0 = b.b_blood0 * blood_ul / b.f_blood
    m0 = b.mem_frac0 * b0
    a0 = b.auto_frac0 * b0
    n0 = b0 - m0 - a0
    k_nm = (1.0 - b.mem_self) * b.d_mem * m0 / n0
    k_na = (1.0 - b.auto_self) * b.d_auto * a0 / n0
    p0 = (b.d_naive + k_nm + k_na) * n0 / b.k_mat
    pb0 = b.pb_blood0 * blood_ul / b.f_blood_pb
    pba0, pbo0 = b.f_auto_pb * pb0, (1.0 - b.f_auto_pb) * pb0
    lla0, llo0 = b.f_auto_llpc * b.llpc0, (1.0 - b.f_auto_llpc) * b.llpc0
    state = BState(p0, n0, m0, a0, pba0, pbo0, lla0, llo0, b.tumour0)
    return BBaseline(
        state, k_nm, k_na, b.d_pb * pbo0 / m0, b.d_pb * pba0 / a0, b.d_llpc * lla0 / pba0, b.d_llpc * llo0 / pbo0
    )


def breach(b: BCellParams, ic_rel):
    """Tolerance breach F(IC) (1 before treatment): milieu-independent ε plus the immune-complex-driven part."""
    x = jnp.maximum(ic_rel, 1e-12) ** b.ic_hill  # ic_rel >= 0 up to round-off
    kh = b.ic_half**b.ic_hill
    return b.auto_breach + (1.0 - b.auto_breach) * x * (1.0 + kh) / (kh + x)


def cd19_cells(s: BState):
    """CD19⁺ cells (cells): precursors, naive, memory, autoreactive memory/GC, plasmablasts, malignant B cells."""
    return s.marrow + s.naive + s.memory + s.auto + s.pb_auto + s.pb_other + s.tumour


def bcma_cells(s: BState):
    """BCMA⁺ cells (cells): plasmablasts and long-lived plasma cells."""
    return s.pb_auto + s.pb_other + s.llpc_auto + s.llpc


def bcell_derivatives(b: BCellParams, base: BBaseline, s: BState, *, kill19, kill_bcma, chemo, ic_rel) -> BState:
    """B-lineage derivatives (cells/d); see the module docstring."""
    p0 = base.state.marrow
    l19 = kill19 + chemo
    seed_auto = base.k_na * breach(b, ic_rel) * s.naive
    return BState(
        marrow=b.k_mat * (p0 - s.marrow) - l19 * s.marrow,
        naive=b.k_mat * s.marrow - (b.d_naive + base.k_nm) * s.naive - seed_auto - l19 * s.naive,
        memory=base.k_nm * s.naive - (1.0 - b.mem_self) * b.d_mem * s.memory - l19 * s.memory,
        auto=seed_auto - (1.0 - b.auto_self) * b.d_auto * s.auto - l19 * s.auto,
        pb_auto=base.k_apb * s.auto - (b.d_pb + l19 + kill_bcma) * s.pb_auto,
        pb_other=base.k_mpb * s.memory - (b.d_pb + l19 + kill_bcma) * s.pb_other,
        llpc_auto=base.k_ll_auto * s.pb_auto - (b.d_llpc + kill_bcma) * s.llpc_auto,
        llpc=base.k_ll * s.pb_other - (b.d_llpc + kill_bcma) * s.llpc,
        tumour=(b.r_tumour * s.tumour * s.tumour / (s.tumour + 1.0) * (1.0 - s.tumour / b.tumour_max) - l19 * s.tumour),
    )


def blood_counts(b: BCellParams, s: BState, blood_ul):
    """Blood B cells (naive + memory + autoreactive) and plasmablasts, per µL."""
    return (b.f_blood * (s.naive + s.memory + s.auto) / blood_ul, b.f_blood_pb * (s.pb_auto + s.pb_other) / blood_ul)
