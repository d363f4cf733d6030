"""Host rejection of CAR-T cells as a mechanism: a host anti-CAR T-cell response primed by CAR antigen and expanding
with the host T-cell pool as it reconstitutes after conditioning.

Parameter group `rejection` (`RejectionParams`, table in its docstring). State `anti_car` (cells, total body): host
T cells primed against the CAR product (epitopes of a foreign scFv, the CAR junctions, or allo-HLA). Nothing here is
a time: when rejection happens emerges from the precursor frequency (product immunogenicity), the depletion of host
T cells by conditioning and their recovery, the amount of CAR antigen, and the expansion rate of the response.

**Equations** (T: host T cells; T_b host blood T cells per µL; C_d CAR-T density in lymphoid tissue; H_d anti-CAR
T-cell density in lymphoid tissue; product facts from group `product`):

    f_prec = (1 − hip_escape·hla_evasion)·(f_self + scfv_foreign·f_xeno + hla_mismatch·f_allo)
    π      = C_d/(K_ag + C_d)                           (CAR antigen presented)
    help   = (T_b/K_help)^n/(1 + (T_b/K_help)^n)        (CD4 help / space from the reconstituting host T pool)
    dH/dt  = (k_prime·f_prec·T + r_exp·H⁺)·π·help − (d_anti + sens_t·e)·H      (H⁺ = H²/(H + 1 cell))
    κ      = κ_max·H_d/(K_H + H_d)                      (rejection rate of every CAR-T pool, 1/d)

with `e` the delayed chemotherapy kill (`lymphodepletion.py`), so Flu/Cy depletes the precursors and the response
they have made, and the response grows back as host T cells recover: conditioning intensity delays rejection, an
allogeneic (HLA-mismatched) product meets ~10³-fold more precursors and is rejected within weeks, a hypoimmune
product escapes most T-cell recognition, and a human scFv presents fewer foreign epitopes than a murine one.
In a mouse given a syngeneic all-murine CAR, `scfv_foreign = 0` and only `f_self` remains.

Not modelled: anti-CAR antibodies (the CD19 CAR depletes the host B cells that would make them), NK-cell
"missing-self" rejection of HLA-deleted cells (part of `hip_escape`).

**References:** Turtle CJ et al., J Clin Invest 2016;126:2123, doi:10.1172/JCI85309 (CD8⁺ anti-CAR transgene
responses limited persistence [R abstract]); Wagner DL et al., Nat Rev Clin Oncol 2021;18:379 (immunogenicity of
CAR-T [R2]); Depil S et al., Nat Rev Drug Discov 2020;19:185, doi:10.1038/s41573-019-0051-2; Hu X et al., Nat
Commun 2023 (hypoimmune CD19 CAR-T); Suchin EJ et al., J Immunol 2001;166:973 (alloreactive T-cell frequency);
Jenkins MK, Moon JJ, J Immunol 2012;188:4135 (naive precursor frequencies).
"""

from __future__ import annotations

import equinox as eqx

import carkinetics as ck
from carkinetics.models.sle._doc import document_params
from carkinetics.models.sle._math import power


@document_params
class RejectionParams(eqx.Module):
    """Parameter group `rejection`: host anti-CAR T-cell response (precursors, priming, expansion, killing)."""

    f_prec_xeno: float = ck.param(
        1e-5,
        unit="1",
        description="anti-CAR precursor frequency among host T cells for a xenogeneic binder",
        source="assumption; naive precursor frequencies ~1e-6-1e-5 per epitope (Jenkins MK, Moon JJ, J Immunol "
        "2012;188:4135 [M]) for a murine scFv with several epitopes",
        tag="A",
        upper=1.0,
    )
    f_prec_self: float = ck.param(
        2e-6,
        unit="1",
        description="anti-CAR precursor frequency for a same-species binder (junction and idiotype epitopes)",
        source="assumption; anti-CAR responses also reported with human scFv CARs (Wagner DL et al., Nat Rev Clin "
        "Oncol 2021;18:379 [R2])",
        tag="A",
        upper=1.0,
    )
    f_prec_allo: float = ck.param(
        1e-3,
        unit="1",
        description="alloreactive precursor frequency among host T cells for HLA-mismatched cells",
        source="assumption: below the 1-10 % of T cells that are alloreactive in vitro (Suchin EJ et al., J Immunol "
        "2001;166:973 [M]), for the share that meets donor HLA in vivo",
        tag="A",
        upper=1.0,
    )
    hip_escape: float = ck.param(
        0.999,
        unit="1",
        description="fraction of T-cell recognition evaded by hypoimmune edits (HLA-I/II KO, CD47 high)",
        source="assumption; hypoimmune CD19 CAR-T evade allo-rejection in immunocompetent humanised mice (Hu X et al., "
        "Nat Commun 2023 [R abstract])",
        tag="A",
        upper=1.0,
    )
    k_prime: float = ck.param(
        0.1,
        unit="1/d",
        description="recruitment rate of precursors into the response (full antigen and help)",
        source="assumption",
        tag="A",
    )
    r_exp: float = ck.param(
        0.27,
        unit="1/d",
        description="maximal expansion rate of anti-CAR T cells (full antigen and help)",
        source="assumption; primary human CD8 responses expand ~1e3-1e4-fold over ~2 weeks (Miller JD et al., "
        "Immunity 2008;28:710 [M])",
        tag="A",
    )
    k_ag: float = ck.param(
        5.0,
        unit="cells/uL",
        description="CAR-T density (lymphoid tissue) giving half-maximal priming",
        source="assumption",
        tag="A",
    )
    k_help: float = ck.param(
        600.0,
        unit="cells/uL",
        description="host blood T-cell count giving half-maximal help to the anti-CAR response",
        source="assumption; B-cell return after CAR-T tracked CD4 recovery (Erlangen SLE vs B-NHL, Blood 2025, "
        "doi:10.1182/blood.2025028375 [R qualitative])",
        tag="A",
    )
    n_help: float = ck.param(
        2.0,
        unit="1",
        description="steepness of the help in the host T-cell count",
        source="assumption: CD4 help and antigen-presenting-cell licensing both recover with the host lymphocyte pool",
        tag="A",
    )
    d_anti: float = ck.param(
        0.005,
        unit="1/d",
        description="loss rate of anti-CAR T cells without antigen",
        source="assumption: the response leaves long-lived memory (re-infused CAR-T failed to "
        "expand with anti-CAR T cells present: Nat Med 2025, "
        "doi:10.1038/s41591-025-03718-3 [R2])",
        tag="A",
    )
    kappa_max: float = ck.param(
        2.0,
        unit="1/d",
        description="maximal rejection rate of CAR-T cells",
        source="assumption (a few CTL kills per day)",
        tag="A",
    )
    k_h: float = ck.param(
        50.0,
        unit="cells/uL",
        description="anti-CAR T-cell density (lymphoid tissue) giving half-maximal rejection",
        source="assumption",
        tag="A",
    )


def precursor_frequency(rej: RejectionParams, *, scfv_foreign, hla_mismatch, hla_evasion):
    """Anti-CAR precursor frequency among host T cells for a product (see the module docstring)."""
    return (1.0 - rej.hip_escape * hla_evasion) * (
        rej.f_prec_self + scfv_foreign * rej.f_prec_xeno + hla_mismatch * rej.f_prec_allo
    )


def anti_car_derivative(rej: RejectionParams, *, anti_car, t_cells, t_blood, car_density, f_prec, chemo_kill):
    """d anti_car/dt (cells/d); `chemo_kill` is `sens_t · ld_effect` (1/d)."""
    pi = car_density / (rej.k_ag + car_density)
    x = power(t_blood / rej.k_help, rej.n_help)
    help_ = x / (1.0 + x)
    expanding = anti_car * anti_car / (anti_car + 1.0)  # no division below ~one cell (see car_t.dividing)
    return (rej.k_prime * f_prec * t_cells + rej.r_exp * expanding) * pi * help_ - (rej.d_anti + chemo_kill) * anti_car


def rejection_rate(rej: RejectionParams, anti_car_density):
    """Rejection rate of CAR-T cells (1/d) from the anti-CAR T-cell density in lymphoid tissue (cells/µL)."""
    return rej.kappa_max * anti_car_density / (rej.k_h + anti_car_density)
