"""CAR products as first-class inputs: what a product is, the registry of named products, and `with_product`.

A [`Product`][] describes a CAR-T product by the facts that change its kinetics: the target antigen(s) (CD19,
BCMA or both), the costimulatory domain (CD28 or 4-1BB), the species of its binder (murine or human scFv), its
origin (autologous, allogeneic = HLA-mismatched donor, hypoimmune = allogeneic with HLA class I/II deleted and
CD47 over-expressed) and its dose convention (cells per kg or a flat number of cells). `with_product(model,
product)` writes these facts into the model's `product` parameter group (`ProductParams`: numbers in [0, 1], so a
product can also be interpolated or swept). The *effects* of each fact are mechanism parameters with their own
sources, in the groups that use them:

- **CD19 / BCMA arm** acts on which cells stimulate and are killed: CD19 on B-lineage cells up to plasmablasts,
  BCMA on plasmablasts and long-lived plasma cells (LLPC). Effect parameters: `car.k_kill`, `car.k_stim`.
- **CD28 vs 4-1BB** acts on proliferation, memory formation, exhaustion and cytokine release per engaged CAR-T
  cell. Effect parameters: `car.cd28_rho_fold`, `car.cd28_memory_fold`, `car.cd28_exhaustion_fold`,
  `car.cd28_cytokine_fold`.
- **scFv foreign to the host** acts on the anti-CAR precursor frequency. Effect parameters:
  `rejection.f_prec_xeno` (vs `rejection.f_prec_self`).
- **HLA mismatch** acts on the alloreactive precursor frequency. Effect parameter: `rejection.f_prec_allo`.
- **hypoimmune edits** act on the fraction of T-cell recognition evaded. Effect parameter: `rejection.hip_escape`.

**A BCMA arm kills plasmablasts and LLPC**, so it removes the LLPC-fed autoantibody floor that CD19 alone spares,
and it lowers protective (vaccine) IgG too, because vaccine IgG is LLPC-made (Hill 2019; Amanna 2007). The CAR
depletes host B cells, so a humoral anti-CAR response is not modelled (the host T-cell response is).

The binder's foreignness depends on the host: a murine scFv is xenogeneic in a human and self in a mouse (the
syngeneic all-murine CARs of the lupus-mouse studies), a human scFv the reverse. `with_product` takes the host
species from `host=` or, by default, from the model's body weight (below 1 kg: mouse).

**Example:**

```python
from carkinetics.models.sle import PRODUCTS, SLECarTModel, with_product
model = with_product(SLECarTModel(), "axi-cel")       # CD28, murine scFv, autologous
float(model.product.cd28), float(model.product.scfv_foreign)   # (1.0, 1.0)
```

**References:** see each product's `source`; Cappell KM, Kochenderfer JN, Nat Rev Clin Oncol 2021;18:715,
doi:10.1038/s41571-021-00530-z; Depil S et al., Nat Rev Drug Discov 2020;19:185, doi:10.1038/s41573-019-0051-2.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import equinox as eqx

import carkinetics as ck
from carkinetics.models.sle._doc import document_params

_MACKENSEN = "Mackensen A et al., Nat Med 2022;28:2124-2132, doi:10.1038/s41591-022-02017-5"


@document_params
class ProductParams(eqx.Module):
    """Parameter group `product`: the product facts (set by `with_product`); defaults: MB-CART19.1 in a human."""

    cd19: float = ck.param(
        1.0,
        unit="1",
        description="CD19-directed arm present (1) or absent (0)",
        source=f"{_MACKENSEN}: CD19 CAR (MB-CART19.1)",
        tag="R",
        upper=1.0,
    )
    bcma: float = ck.param(
        0.0,
        unit="1",
        description="BCMA-directed arm present (1) or absent (0)",
        source=f"{_MACKENSEN}: CD19 only",
        tag="R",
        upper=1.0,
    )
    cd28: float = ck.param(
        0.0,
        unit="1",
        description="costimulatory domain: 0 = 4-1BB, 1 = CD28",
        source=f"{_MACKENSEN}: 4-1BB-CD3zeta CAR",
        tag="R",
        upper=1.0,
    )
    scfv_foreign: float = ck.param(
        1.0,
        unit="1",
        description="binder foreign to the host: 1 = xenogeneic scFv (murine in human), 0 = same species",
        source="MB-CART19.1 binder taken as the murine FMC63 scFv (recalled, not read in Mackensen 2022)",
        tag="M",
        upper=1.0,
    )
    hla_mismatch: float = ck.param(
        0.0,
        unit="1",
        description="HLA mismatch of the product: 0 autologous, 1 allogeneic",
        source=f"{_MACKENSEN}: autologous product",
        tag="R",
        upper=1.0,
    )
    hla_evasion: float = ck.param(
        0.0,
        unit="1",
        description="hypoimmune edits (HLA-I/II deleted, CD47 high): 1 present, 0 absent",
        source=f"{_MACKENSEN}: unedited autologous T cells",
        tag="R",
        upper=1.0,
    )


_TARGETS = ("CD19", "BCMA")
_COSTIM = ("4-1BB", "CD28")
_SCFV = ("murine", "human")
_ORIGIN = ("autologous", "syngeneic", "allogeneic", "hypoimmune")
_BASIS = ("per_kg", "flat")


@dataclasses.dataclass(frozen=True)
class Product:
    """A CAR-T product: the facts that configure the model, its dose convention and its source.

    **Fields:**

    - `name`: short name.
    - `targets`: antigen(s), a subset of `("CD19", "BCMA")` (both: a dual, compound or co-infused product).
    - `costim`: `"4-1BB"` or `"CD28"`.
    - `scfv`: species of the binder, `"murine"` or `"human"`.
    - `origin`: `"autologous"`, `"syngeneic"` (mouse studies), `"allogeneic"` (HLA-mismatched donor) or
      `"hypoimmune"` (allogeneic with HLA class I/II deleted and CD47 over-expressed).
    - `dose_basis`, `dose`: `"per_kg"` (cells per kg body weight) or `"flat"` (cells), and the usual dose.
    - `source`: primary publication(s) of the construct and dose; `note`: caveats.
    """

    name: str
    targets: tuple[str, ...]
    costim: str
    scfv: str
    origin: str
    dose_basis: str
    dose: float
    source: str
    note: str = ""

    def __post_init__(self):
        if not self.targets or any(t not in _TARGETS for t in self.targets):
            raise ValueError(
                f"Product {self.name!r}: `targets` must be a non-empty subset of {_TARGETS}, got {self.targets!r}."
            )
        for field, allowed in (("costim", _COSTIM), ("scfv", _SCFV), ("origin", _ORIGIN), ("dose_basis", _BASIS)):
            if getattr(self, field) not in allowed:
                raise ValueError(
                    f"Product {self.name!r}: `{field}` must be one of {allowed}, got {getattr(self, field)!r}."
                )
        if not (self.dose >= 0.0):
            raise ValueError(f"Product {self.name!r}: `dose` must be non-negative, got {self.dose!r}.")
        if not self.source.strip():
            raise ValueError(f"Product {self.name!r} needs a `source`.")

    def parameters(self, host: str = "human") -> dict[str, float]:
        """The values of the model's `product` group for this product in a `host` (`"human"` or `"mouse"`)."""
        if host not in ("human", "mouse"):
            raise ValueError(f"`host` must be 'human' or 'mouse', got {host!r}.")
        binder_species = "mouse" if self.scfv == "murine" else "human"
        allo = self.origin in ("allogeneic", "hypoimmune")
        return {
            "product.cd19": 1.0 if "CD19" in self.targets else 0.0,
            "product.bcma": 1.0 if "BCMA" in self.targets else 0.0,
            "product.cd28": 1.0 if self.costim == "CD28" else 0.0,
            "product.scfv_foreign": 0.0 if binder_species == host else 1.0,
            "product.hla_mismatch": 1.0 if allo else 0.0,
            "product.hla_evasion": 1.0 if self.origin == "hypoimmune" else 0.0,
        }

    def cells(self, weight_kg: float) -> float:
        """The product's usual dose in cells for a body weight (kg)."""
        if not weight_kg > 0:
            raise ValueError(f"`weight_kg` must be positive, got {weight_kg!r}.")
        return float(self.dose * weight_kg) if self.dose_basis == "per_kg" else float(self.dose)


#: The named products (see each `source`). Human products first, then the syngeneic mouse constructs.
PRODUCTS: dict[str, Product] = {
    p.name: p
    for p in (
        Product(
            "MB-CART19.1",
            ("CD19",),
            "4-1BB",
            "murine",
            "autologous",
            "per_kg",
            1e6,
            f"{_MACKENSEN} (Erlangen SLE; CD19-4-1BB lentiviral, 1e6/kg [R])",
            "FMC63 murine scFv recalled [M]",
        ),
        Product(
            "tisa-cel",
            ("CD19",),
            "4-1BB",
            "murine",
            "autologous",
            "per_kg",
            3.1e6,
            "Maude SL et al., N Engl J Med 2018;378:439-448, doi:10.1056/NEJMoa1709866; dose = median 3.1e6/kg of "
            "Stein AM et al., CPT Pharmacometrics Syst Pharmacol 2019;8:285, doi:10.1002/psp4.12388",
            "FMC63 murine scFv [M]; the reference product of the Stein 2019 multiphasic CK",
        ),
        Product(
            "rese-cel",
            ("CD19",),
            "4-1BB",
            "human",
            "autologous",
            "per_kg",
            1e6,
            "Cabaletta Bio RESET-SLE/SSc, EULAR 2025 abstract 2025OP0338 (CABA-201, fully human CD19-4-1BB, "
            "1e6/kg after Flu/Cy [R])",
            "kinetic data not retrieved",
        ),
        Product(
            "KYV-101",
            ("CD19",),
            "CD28",
            "human",
            "autologous",
            "per_kg",
            1e6,
            "Brudno JN et al., Nat Med 2020;26:270-280, doi:10.1038/s41591-019-0737-3 (Hu19-CD828Z: fully human "
            "scFv, CD28 costimulation)",
            "construct and autoimmune dose recalled [M]",
        ),
        Product(
            "axi-cel",
            ("CD19",),
            "CD28",
            "murine",
            "autologous",
            "per_kg",
            2e6,
            "Neelapu SS et al., N Engl J Med 2017;377:2531-2544, doi:10.1056/NEJMoa1707447 (CD19-CD28-CD3zeta, FMC63)",
            "dose 2e6/kg recalled [M]",
        ),
        Product(
            "UCART19",
            ("CD19",),
            "4-1BB",
            "murine",
            "allogeneic",
            "flat",
            8e7,
            "Benjamin R et al., Lancet 2020;396:1885-1894, doi:10.1016/S0140-6736(20)32334-5 (TALEN TRAC/CD52 "
            "knockout donor CAR-T); Depil S et al., Nat Rev Drug Discov 2020;19:185 (allogeneic CAR-T 'may be "
            "rapidly eliminated by the host immune system' [R])",
            "4G7 murine scFv and flat dose levels 6e6-2.4e8 recalled [M]; HLA-mismatched, not HLA-edited",
        ),
        Product(
            "HIP-CD19",
            ("CD19",),
            "4-1BB",
            "murine",
            "hypoimmune",
            "per_kg",
            1e6,
            "Hu X et al., Nat Commun 2023 (hypoimmune anti-CD19 CAR T cells: B2M, CIITA, TRAC disrupted, CD47 "
            "over-expressed; evade allo-rejection in immunocompetent humanised mice [R abstract])",
            "costimulatory domain, scFv and human dose assumed [A]",
        ),
        Product(
            "BCMA-CD19 cCAR",
            ("CD19", "BCMA"),
            "4-1BB",
            "murine",
            "autologous",
            "per_kg",
            3e6,
            "BCMA-CD19 compound CAR T cells for SLE: phase 1, Ann Rheum Dis 2024;83:1304-1314, "
            "doi:10.1136/ard-2024-225785 (3e6/kg; all autoantibodies incl. LLPC-derived negative at 3 months; B "
            "cells back in 2-6 months [R])",
            "costimulatory domain(s) and scFv origin not read [M]",
        ),
        Product(
            "CD19+BCMA co-infusion",
            ("CD19", "BCMA"),
            "4-1BB",
            "murine",
            "autologous",
            "per_kg",
            1e6,
            "Feng J et al., Nat Med 2025;31:3725-3736, doi:10.1038/s41591-025-03937-8 (co-infused CD19 and BCMA "
            "CAR-T after Flu/Cy; grade 1 CRS 86.7 % [R])",
            "dose escalation; 1e6/kg per arm and 4-1BB assumed [A]",
        ),
        Product(
            "mCD19-CD28z (Kansal 2019)",
            ("CD19",),
            "CD28",
            "murine",
            "syngeneic",
            "flat",
            1e6,
            "Kansal R et al., Sci Transl Med 2019;11:eaav1648, doi:10.1126/scitranslmed.aav1648 (syngeneic CD8+ "
            "anti-mouse-CD19 CAR, murine CD28-CD3zeta; active 1 year [R])",
            "1D3 binder and 1e6 cells/mouse recalled [M]; the binder is treated as self in the mouse",
        ),
        Product(
            "mCD19-41BBz (Jin 2021)",
            ("CD19",),
            "4-1BB",
            "murine",
            "syngeneic",
            "flat",
            1e6,
            "Jin X et al., Cell Mol Immunol 2021;18:1896-1903, doi:10.1038/s41423-020-0472-1 (murine anti-CD19 "
            "CAR with 4-1BB, MRL-lpr [R]; DOI recalled [M])",
            "dose not retrieved; 1e6 cells/mouse assumed [A]",
        ),
    )
}


def host_of(model: Any) -> str:
    """The host species of a model, by body weight: `"mouse"` below 1 kg, else `"human"`."""
    return "mouse" if float(model.body.weight_kg) < 1.0 else "human"


def get_product(name_or_product: str | Product) -> Product:
    """A registered product by name (or the product itself); `ValueError` naming the registry otherwise."""
    if isinstance(name_or_product, Product):
        return name_or_product
    if isinstance(name_or_product, str) and name_or_product in PRODUCTS:
        return PRODUCTS[name_or_product]
    raise ValueError(
        f"Unknown product {name_or_product!r}; registered products are {sorted(PRODUCTS)} (or pass a `Product`)."
    )


def with_product(model: Any, name_or_product: str | Product, *, host: str | None = None) -> Any:
    """`model` with its `product` group set to a product's facts (see the module docstring).

    **Arguments:**

    - `model`: an `SLECarTModel`.
    - `name_or_product`: a key of `PRODUCTS` or a `Product`.
    - `host`: `"human"` or `"mouse"`; default from the body weight (`host_of`).

    **Returns:** a copy of `model`; its dose is given by the regimen (e.g. `erlangen_regimen(model,
    product=...)` takes the product's dose convention).
    """
    product = get_product(name_or_product)
    return model.replace(product.parameters(host or host_of(model)))
