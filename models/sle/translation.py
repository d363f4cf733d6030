"""The SLE mouse-to-human translation map (the report is written by `carkinetics translate`).

This module applies the model-agnostic translation map ([`carkinetics.translation_map`][]) to the composed SLE
CAR-T model (`carkinetics.models.SLECarTModel`) and its species presets.

**How the regimen enters the attribution.** Mouse and human protocols differ in kind (total-body irradiation vs
fludarabine/cyclophosphamide) and in dose (cells per mouse vs cells per kg). A regimen with a different structure
cannot be swapped parameter by parameter, so both species are given the *same* regimen structure, built inside
the batch from protocol parameters ([`carkinetics.SLEProtocol`][]): fludarabine (mg/m² on days -5, -4, -3) and
cyclophosphamide (mg/m² on day -3) with the body surface area of the model's own `body` group, a total-body
irradiation kill fraction on day -1 (states `TBI_STATES`), and a CAR-T dose at day 0 per kg of the model's own
body weight (or, with `per_target_dosing = 1`, per CD19⁺ target cell of the model's own untreated B-cell pool).
The human protocol has TBI fraction 0; the mouse protocol has Flu/Cy doses 0. The protocol's conditioning
parameters join the gap group **G5** (lymphodepletion) and its dose joins **G6** (dose and E:T scaling), so the
effect of "TBI instead of Flu/Cy" and of "cells per mouse instead of cells per kg" is attributed like any other
mechanism, together with the model parameters the presets tag with the same gap id. The arm (model + protocol) is
a [`carkinetics.SLEArm`][]; its parameters read `"model.humoral.k_igg"` or `"protocol.tbi_fraction"`.

**Metrics** (`carkinetics.models.sle.sle_metrics`, on the SLE save grid, run by `ArmExperiment`): B-cell aplasia
duration and nadir; anti-dsDNA at day 90, its positive days, its floor and the half-life of its plasmablast-fed
part; CAR-T Cmax (log10), Tmax and persistence; IL-6 peak and CRS grade; SLEDAI at day 90 (remission depth), days in
remission (durability) and the urine protein/creatinine at day 180 (renal outcome). Definitions and units are in
`SLE_METRICS`. The horizon is 730 days by default (two years: the human remission and B-cell return are on that
scale); the four duration metrics (`SLE_CENSORING`: B aplasia, anti-dsDNA positive days, CAR persistence,
remission days) are marked censored, `>= x`, when their state still holds at the horizon (e.g. B cells still
depleted in a mouse with a syngeneic CAR).

**Presets.** Both arms are built with `load_preset`, i.e. from the calibrated human default (`human_sle.json`) plus
each preset's own values; the groups come from the presets' gap ids.

**Uncertainty.** Parameter samples (`n_samples`) spread each value by its confidence tag with the calibration
priors (`ck.PRIOR_SD`: assumptions `A` widest, then recalled `M`, then read `R`); fitted values (`F`) use their
posterior sd from the fit file instead. Material attributions that rest on unverified (`A`- or `M`-tagged) values
are flagged (`*A`, `*M` in the tables).

**Scenario knobs** ([`carkinetics.sle_translation_map`][] arguments, and [`carkinetics.sle_scenarios`][] for the
gap under each knob): `dose_basis` (per kg vs per target cell), `conditioning` (each species' own, both Flu/Cy,
both TBI, none), `ld_alone` (lymphodepletion without CAR-T: how much of the remission is the conditioning itself),
and `damage0` (disease stage at treatment: accumulated irreversible damage, which moves the renal outcome
`UPCR d180`). Each knob in `SCENARIOS` changes at least one metric gap (a test checks it).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

import carkinetics as ck
from carkinetics import Bolus, FractionalKill, Infusion, MechanismGroup, Regimen, TranslationMap, param, parameters
from carkinetics.models.sle.metrics import SLE_CENSORING, SLE_METRICS, save_times, sle_metrics
from carkinetics.models.sle.model import CAR_DOSE_STATE
from carkinetics.models.sle.regimens import TBI_STATES

#: Short labels of the gap mechanisms of `shared/references/translation.md`.
GAP_LABELS: dict[str, str] = {
    "G1": "IgG clearance",
    "G2": "LLPC reservoir",
    "G3": "CAR persistence",
    "G4": "rejection",
    "G5": "lymphodepletion",
    "G6": "dose & E:T scaling",
    "G7": "myeloid CRS",
    "G8": "T-cell homeostasis",
    "G9": "B-cell reconstitution",
    "G10": "disease driver",
    "G11": "damage & timing",
    "G12": "mAb comparator",
}


#: The metrics of the SLE map: name -> (unit, definition).
class SLEProtocol(eqx.Module):
    """The treatment protocol of one species arm, as swappable parameters (see the module docstring).

    **Fields:** `flu_mg_per_m2` (fludarabine per day on days -5, -4, -3), `cy_mg_per_m2` (cyclophosphamide on day
    -3), `tbi_fraction` (lymphocyte kill fraction of total-body irradiation on day -1), `car_cells_per_kg`
    (CAR-T cells per kg body weight), `car_cells_per_target` (CAR-T cells per untreated CD19⁺ target cell),
    `per_target_dosing` (1: the dose is `car_cells_per_target` per target cell, 0: `car_cells_per_kg` per kg; a
    number rather than a flag, so that arms dosed either way share one compiled batch).

    **Example:** `SLEProtocol()` is the Erlangen protocol (Flu 25 mg/m² x 3, Cy 1,000 mg/m², 1e6 CAR-T/kg).
    """

    flu_mg_per_m2: float = param(
        25.0,
        unit="mg/m^2",
        description="fludarabine dose per day (days -5, -4, -3)",
        source="Erlangen/RESET regimen; Mackensen 2022 (drugs [R], doses recalled)",
        tag="M",
    )
    cy_mg_per_m2: float = param(
        1000.0,
        unit="mg/m^2",
        description="cyclophosphamide dose (day -3)",
        source="Erlangen/RESET regimen; RESET-SSc EULAR 2025 abstract",
        tag="R",
    )
    tbi_fraction: float = param(
        0.0,
        unit="1",
        description="lymphocyte kill fraction of total-body irradiation",
        source="none in the human protocol",
        tag="R",
        upper=1.0,
    )
    car_cells_per_kg: float = param(
        1e6,
        unit="cells/kg",
        description="CAR-T dose per kg body weight",
        source="Mackensen A et al., Nat Med 2022;28:2124",
        tag="R",
    )
    car_cells_per_target: float = param(
        1e-3,
        unit="cells/cell",
        description="CAR-T cells per untreated CD19+ target cell (per-target dosing)",
        source="assumption: set from a reference arm by `per_target_protocol`",
        tag="A",
    )
    per_target_dosing: float = param(
        0.0,
        unit="1",
        description="1: dose per CD19+ target cell; 0: dose per kg",
        source="scenario switch of the translation map (not a biological value)",
        tag="A",
        upper=1.0,
    )


def mouse_protocol(model: Any, *, cells: float = 1e6, tbi_fraction: float = 0.9) -> SLEProtocol:
    """The mouse protocol as an [`carkinetics.SLEProtocol`][]: no Flu/Cy, sublethal TBI, `cells` CAR-T per mouse.

    The per-kg dose is `cells / body.weight_kg` of the (mouse) `model` (1e6 cells per 25 g mouse = 4e7/kg, 40x the
    human SLE dose per kg; translation.md a5). `tbi_fraction` 0.9 is an assumption (the lupus papers' irradiation
    doses were not retrievable).
    """
    w = float(model.body.weight_kg)
    return eqx.tree_at(
        lambda p: (p.flu_mg_per_m2, p.cy_mg_per_m2, p.tbi_fraction, p.car_cells_per_kg),
        SLEProtocol(),
        (0.0, 0.0, float(tbi_fraction), float(cells) / w),
    )


class SLEArm(eqx.Module):
    """One species arm of the translation map: a model (e.g. a preset `SLECarTModel`) and its protocol."""

    model: Any
    protocol: SLEProtocol


def _bsa(model: Any):
    return jnp.sqrt(model.body.weight_kg * model.body.height_cm / 3600.0)


def _untreated_cd19(model: Any):
    """Total CD19+ target cells (cells) of the untreated model."""
    return model.observe(0.0, model.initial_state()).cd19_total


def arm_regimen(arm: SLEArm) -> Regimen:
    """The regimen of an arm, built from its (possibly traced) parameters; same structure for every arm."""
    m, p = arm.model, arm.protocol
    area = _bsa(m)
    flu = [Infusion(d, "flu_central", amount=p.flu_mg_per_m2 * area, duration=0.5 / 24) for d in (-5.0, -4.0, -3.0)]
    cy = Infusion(-3.0, "cy_central", amount=p.cy_mg_per_m2 * area, duration=1.0 / 24)
    tbi = FractionalKill(-1.0, p.tbi_fraction, TBI_STATES)
    w = p.per_target_dosing
    cells = (1.0 - w) * p.car_cells_per_kg * m.body.weight_kg + w * p.car_cells_per_target * _untreated_cd19(m)
    return Regimen([*flu, cy, tbi, Bolus(0.0, cells, CAR_DOSE_STATE)])


def per_target_protocol(protocol: SLEProtocol, arm_ref: SLEArm) -> SLEProtocol:
    """`protocol` switched to per-target dosing with the cells per CD19⁺ target cell of the reference arm."""
    ref = arm_ref.protocol
    if float(ref.per_target_dosing) == 0.0:
        per_target = float(ref.car_cells_per_kg * arm_ref.model.body.weight_kg / _untreated_cd19(arm_ref.model))
    else:
        per_target = float(ref.car_cells_per_target)
    return eqx.tree_at(lambda q: (q.car_cells_per_target, q.per_target_dosing), protocol, (per_target, 1.0))


class ArmExperiment(ck.AbstractExperiment):
    """The experiment of the SLE map: each member is an [`SLEArm`][]; its regimen is built from the arm's protocol
    (`arm_regimen`) and its solution read out as the SLE metric set (`sle_metrics`) on the SLE save grid.

    The outputs also hold the censoring flags of the duration metrics (`SLE_CENSORING`). A module (not a
    closure), so that the compiled batch is reused across calls with the same horizon.
    """

    ts: Any
    solver: Any = None
    rtol: float | None = eqx.field(static=True, default=None)
    atol: float | None = eqx.field(static=True, default=None)
    max_steps: int = eqx.field(static=True, default=100_000)
    t0: float | None = eqx.field(static=True, default=None)

    def __init__(
        self, t_end: float = 730.0, *, solver: Any = None, rtol: float | None = None, atol: float | None = None
    ):
        self.ts = save_times(t_end)
        self.solver, self.rtol, self.atol = solver, rtol, atol
        self.max_steps, self.t0 = 100_000, None

    def model(self, arm: SLEArm) -> Any:
        return arm.model

    def regimen(self, arm: SLEArm) -> Regimen:
        return arm_regimen(arm)

    def outputs(self, arm: SLEArm, solution: ck.Solution) -> dict[str, Any]:
        del arm  # the read-out depends on the solution only
        return sle_metrics(solution, censoring=True)


# ------------------------------------------------------------------------------------------------------------------
# Presets: values, tags and gap ids


def preset_metadata(name: str) -> dict[str, dict[str, str]]:
    """Per-parameter `tag` and `gap` of a preset: `{dotted name: {"tag": ..., "gap": ...}}` (`gap` may be `""`)."""
    from carkinetics.models.sle.presets import preset_records

    return {n: {"tag": r.tag, "gap": r.gap or ""} for n, r in preset_records(name, complete=True).items()}


def fit_scales(name: str) -> dict[str, float]:
    """Posterior sds (unconstrained scale) of the fitted (`F`) values of a preset, from its fit file, by arm-level
    name (`"model.car.rho"`): the sample spread of those values in the translation map (instead of a tag's spread).
    Fitted values the preset overrides with its own value are left out."""
    from carkinetics.models.sle.presets import load_preset, preset_fit, preset_records

    path = preset_fit(name)
    if path is None:
        return {}
    own = preset_records(name, calibrated=False)
    model = load_preset(name)
    doc = ck.read_fit_provenance(path)
    out = {}
    for n, entry in doc["parameters"].items():
        sd = entry.get("sd")
        if n in own or sd is None or not np.isfinite(sd) or sd <= 0:
            continue
        space = ck.ParameterSpace(model, [n])
        v = float(np.asarray(model.get(n)))
        h = 1e-6 * max(abs(v), 1e-12)
        dz = (
            float(np.asarray(space.to_vector(model.replace({n: v + h})))[0] - np.asarray(space.to_vector(model))[0]) / h
        )
        out[f"model.{n}"] = abs(dz) * float(sd)
    return out


def load_arm(name: str, *, protocol: SLEProtocol | None = None) -> tuple[SLEArm, dict[str, str], dict[str, str]]:
    """A preset as an arm with its default protocol, plus its per-parameter tags and gap ids (arm-level names).

    Presets whose name starts with `"mouse"` get [`carkinetics.mouse_protocol`][], others the Erlangen protocol.
    """
    from carkinetics.models.sle.presets import load_preset

    model = load_preset(name)  # the calibrated default plus the preset's own values
    if protocol is None:
        protocol = mouse_protocol(model) if os.path.basename(name).startswith("mouse") else SLEProtocol()
    meta = preset_metadata(name)
    known = parameters(model)
    tags = {f"model.{n}": m["tag"] for n, m in meta.items() if n in known and m["tag"]}
    gaps = {f"model.{n}": m["gap"] for n, m in meta.items() if n in known and m["gap"]}
    if os.path.basename(name).startswith("mouse"):
        tags.update(
            {
                "protocol.car_cells_per_kg": "M",
                "protocol.tbi_fraction": "A",
                "protocol.flu_mg_per_m2": "A",
                "protocol.cy_mg_per_m2": "A",
            }
        )
    gaps.update(
        {
            "protocol.flu_mg_per_m2": "G5",
            "protocol.cy_mg_per_m2": "G5",
            "protocol.tbi_fraction": "G5",
            "protocol.car_cells_per_kg": "G6",
            "protocol.car_cells_per_target": "G6",
            "protocol.per_target_dosing": "G6",
        }
    )
    return SLEArm(model, protocol), tags, gaps


def gap_groups(
    gaps_a: Mapping[str, str], gaps_b: Mapping[str, str] | None = None, only: Sequence[str] | None = None
) -> list[MechanismGroup]:
    """Mechanism groups from per-parameter gap ids (union of both presets; a conflict raises `ValueError`).

    `only`: keep these gap ids (e.g. `("G1", "G3")`); the others' parameters are left out of every group.
    """
    merged: dict[str, str] = dict(gaps_a)
    for n, g in (gaps_b or {}).items():
        if n in merged and merged[n] != g:
            raise ValueError(f"Parameter {n!r} has gap {merged[n]!r} in one preset and {g!r} in the other.")
        merged[n] = g
    by_gap: dict[str, list[str]] = {}
    for n, g in merged.items():
        by_gap.setdefault(g, []).append(n)
    ids = sorted(by_gap, key=lambda g: (int(g[1:]) if g[1:].isdigit() else 99, g))
    if only is not None:
        unknown = sorted(set(only) - set(by_gap))
        if unknown:
            raise ValueError(f"Gap id(s) {unknown} have no parameters; available: {ids}.")
        ids = [g for g in ids if g in only]
    return [
        MechanismGroup(
            f"{g} {GAP_LABELS.get(g, '')}".strip(), tuple(sorted(by_gap[g])), description=GAP_LABELS.get(g, ""), gap=g
        )
        for g in ids
    ]


def _with_conditioning(arm: SLEArm, conditioning: str, ref_human: SLEProtocol) -> SLEArm:
    p = arm.protocol
    if conditioning == "preset":
        return arm
    values = {
        "flu_cy": (ref_human.flu_mg_per_m2, ref_human.cy_mg_per_m2, 0.0),
        "tbi": (0.0, 0.0, 0.9),
        "none": (0.0, 0.0, 0.0),
    }[conditioning]
    p = eqx.tree_at(lambda q: (q.flu_mg_per_m2, q.cy_mg_per_m2, q.tbi_fraction), p, tuple(map(float, values)))
    return SLEArm(arm.model, p)


def sle_translation_map(
    a: str = "mouse_nzbw",
    b: str = "human",
    *,
    gaps: Sequence[str] | None = None,
    dose_basis: str = "preset",
    conditioning: str = "preset",
    ld_alone: bool = False,
    damage0: float | None = None,
    n_samples: int = 0,
    key: Any = None,
    t_end: float = 730.0,
    batch_size: int | None = 256,
    experiment: ArmExperiment | None = None,
    engine: Literal["ensemble", "vmap"] | None = None,
    progress: bool = False,
    checkpoint: str | None = None,
) -> TranslationMap:
    """The SLE translation map between two presets (default: NZB/W mouse -> human), groups from the gap tags.

    **Arguments:**

    - `a`, `b`: preset names (or TOML paths) of `carkinetics.models.load_preset`; the gap is `b - a`.
    - `gaps`: gap ids to use as groups (default: all ids present in the presets, plus G5/G6 from the protocol);
      parameters of other ids stay at `a`'s values unless they differ, in which case they form `"ungrouped"`.
    - `dose_basis`: `"preset"` (each species its own dose: cells per mouse vs 1e6/kg), `"per_kg"` (both the
      human cells/kg), `"per_target"` (both the human cells per untreated CD19⁺ target cell).
    - `conditioning`: `"preset"` (mouse TBI, human Flu/Cy), `"flu_cy"` (both Flu/Cy at the human mg/m²),
      `"tbi"` (both TBI, fraction 0.9), `"none"`.
    - `ld_alone`: no CAR-T in either arm (the lymphodepletion-alone arm).
    - `damage0`: damage index at treatment for both arms (disease stage), default each preset's value.
    - `n_samples`, `key`: parameter samples for the uncertainty analysis and their `jax.random` key (see
      [`carkinetics.translation_map`][]; spreads: the calibration priors by tag, the fit's posterior sd for fitted
      values).
    - `t_end`: horizon (days) of the metrics.
    - `batch_size`: simulations per engine call.
    - `experiment`: an `ArmExperiment` (default `ArmExperiment(t_end)`).
    - `engine`: `"ensemble"` (default, the batched solver) or `"vmap"`.
    - `progress`, `checkpoint`: progress lines with an ETA, and a folder to resume from (see
      [`carkinetics.translation_map`][]).

    **Returns:** a [`carkinetics.TranslationMap`][] with metrics `SLE_METRICS`, the duration metrics marked
    censored at the horizon where their state still holds (`SLE_CENSORING`).
    """
    arm_a, tags_a, gaps_a = load_arm(a)
    arm_b, tags_b, gaps_b = load_arm(b)
    arm_a, arm_b = apply_knobs(
        arm_a, arm_b, dose_basis=dose_basis, conditioning=conditioning, ld_alone=ld_alone, damage0=damage0
    )
    groups = gap_groups(gaps_a, gaps_b, only=gaps)
    f = experiment if experiment is not None else ArmExperiment(t_end)
    return ck.translation_map(
        f,
        arm_a,
        arm_b,
        groups,
        units={k: u for k, (u, _) in SLE_METRICS.items()},
        labels=(preset_label(a), preset_label(b)),
        n_samples=n_samples,
        key=key,
        batch_size=batch_size,
        tags_a=tags_a,
        tags_b=tags_b,
        scales_a=fit_scales(a) if n_samples else None,
        scales_b=fit_scales(b) if n_samples else None,
        censored=SLE_CENSORING,
        engine=engine,
        progress=progress,
        checkpoint=checkpoint,
    )


def preset_label(name: str) -> str:
    """The name of a preset (or preset file) in a map's tables: the preset name, or the file name without `.toml`."""
    return os.path.basename(name).removesuffix(".toml")


def apply_knobs(
    arm_a: SLEArm,
    arm_b: SLEArm,
    *,
    dose_basis: str = "preset",
    conditioning: str = "preset",
    ld_alone: bool = False,
    damage0: float | None = None,
) -> tuple[SLEArm, SLEArm]:
    """Apply the scenario knobs of [`carkinetics.sle_translation_map`][] to a pair of arms (`b` is the reference)."""
    if dose_basis not in ("preset", "per_kg", "per_target"):
        raise ValueError(f"`dose_basis` must be 'preset', 'per_kg' or 'per_target', got {dose_basis!r}.")
    if conditioning not in ("preset", "flu_cy", "tbi", "none"):
        raise ValueError(f"`conditioning` must be 'preset', 'flu_cy', 'tbi' or 'none', got {conditioning!r}.")
    if dose_basis == "per_kg":
        pa = eqx.tree_at(lambda q: q.car_cells_per_kg, arm_a.protocol, float(arm_b.protocol.car_cells_per_kg))
        arm_a = SLEArm(arm_a.model, pa)
    elif dose_basis == "per_target":
        arm_a = SLEArm(arm_a.model, per_target_protocol(arm_a.protocol, arm_b))
        arm_b = SLEArm(arm_b.model, per_target_protocol(arm_b.protocol, arm_b))
    ref = arm_b.protocol
    arm_a, arm_b = _with_conditioning(arm_a, conditioning, ref), _with_conditioning(arm_b, conditioning, ref)
    if ld_alone:
        arm_a = SLEArm(
            arm_a.model, eqx.tree_at(lambda q: (q.car_cells_per_kg, q.car_cells_per_target), arm_a.protocol, (0.0, 0.0))
        )
        arm_b = SLEArm(
            arm_b.model, eqx.tree_at(lambda q: (q.car_cells_per_kg, q.car_cells_per_target), arm_b.protocol, (0.0, 0.0))
        )
    if damage0 is not None:
        arm_a = SLEArm(arm_a.model.replace({"disease.damage0": float(damage0)}), arm_a.protocol)
        arm_b = SLEArm(arm_b.model.replace({"disease.damage0": float(damage0)}), arm_b.protocol)
    return arm_a, arm_b


#: The scenario knobs evaluated by `sle_scenarios`: label -> keyword arguments of `apply_knobs`.
SCENARIOS: dict[str, dict[str, Any]] = {
    "presets (mouse TBI + cells/mouse; human Flu/Cy + 1e6/kg)": {},
    "dose per kg (mouse gets the human cells/kg)": {"dose_basis": "per_kg"},
    "dose per target cell (human cells per CD19+ cell)": {"dose_basis": "per_target"},
    "both Flu/Cy": {"conditioning": "flu_cy"},
    "both TBI": {"conditioning": "tbi"},
    "lymphodepletion alone (no CAR-T)": {"ld_alone": True},
    "early stage (damage 0 at treatment)": {"damage0": 0.0},
    "late stage (damage 3 at treatment)": {"damage0": 3.0},
}


def sle_scenarios(
    a: str = "mouse_nzbw",
    b: str = "human",
    *,
    t_end: float = 730.0,
    scenarios: Mapping[str, Mapping[str, Any]] | None = None,
    experiment: ArmExperiment | None = None,
    batch_size: int | None = None,
    engine: Literal["ensemble", "vmap"] | None = None,
) -> list[dict[str, Any]]:
    """The two arms' metrics and their gap under each scenario knob (one vectorised batch of simulations).

    `batch_size`: simulations per vectorised call (`None`: all arms of one structure in one call).

    **Returns:** rows `{"scenario", "metric", "unit", a, b, "gap", "censored"}` (one per scenario and metric;
    `censored` names the arm(s) whose value is censored at the horizon: `""`, `a`, `b` or both, comma-separated).
    """
    scenarios = dict(SCENARIOS if scenarios is None else scenarios)
    arm_a, _, _ = load_arm(a)
    arm_b, _, _ = load_arm(b)
    pairs = [apply_knobs(arm_a, arm_b, **kw) for kw in scenarios.values()]
    f = experiment if experiment is not None else ArmExperiment(t_end)
    la, lb = os.path.basename(a).removesuffix(".toml"), os.path.basename(b).removesuffix(".toml")
    # one vectorised call per model structure (per-target dosing changes a static field of the protocol)
    arms = [arm for pair in pairs for arm in pair]
    by_structure: dict[Any, list[int]] = {}
    for i, arm in enumerate(arms):
        by_structure.setdefault(jax.tree_util.tree_structure(arm), []).append(i)
    results: list[Any] = [None] * len(arms)
    for idx in by_structure.values():
        for i, r in zip(idx, _eval_arms(f, [arms[i] for i in idx], batch_size, engine)):
            results[i] = r
    rows = []
    for j, label in enumerate(scenarios):
        va, vb = results[2 * j], results[2 * j + 1]
        for name, (unit, _) in SLE_METRICS.items():
            flag = SLE_CENSORING.get(name)
            cens = [lab for lab, v in ((la, va), (lb, vb)) if flag is not None and float(v[flag]) > 0.5]
            rows.append(
                {
                    "scenario": label,
                    "metric": name,
                    "unit": unit,
                    la: float(va[name]),
                    lb: float(vb[name]),
                    "gap": float(vb[name] - va[name]),
                    "censored": ",".join(cens),
                }
            )
    return rows


def _eval_arms(f, arms, batch_size=None, engine=None):
    """Metrics of several arms of one structure, in one vectorised call (chunked like the maps)."""
    names = tuple(parameters(arms[0]))
    values = {n: np.stack([np.asarray(parameters(arm)[n].value, dtype=float) for arm in arms]) for n in names}
    out = ck.evaluate_models(f, arms[0], values, batch_size=batch_size, engine=engine)
    return [{k: v[i] for k, v in out.items()} for i in range(len(arms))]


def scenarios_markdown(rows: Sequence[Mapping[str, Any]]) -> str:
    """Scenario rows of [`carkinetics.sle_scenarios`][] as a Markdown table (scenarios x metric gaps)."""
    scen = list(dict.fromkeys(r["scenario"] for r in rows))
    mets = list(dict.fromkeys(r["metric"] for r in rows))
    labels = [k for k in rows[0] if k not in ("scenario", "metric", "unit", "gap", "censored")]

    def cell(r):
        cens = set(filter(None, r.get("censored", "").split(",")))
        g = f"{r['gap']:.3g}"
        if len(cens) == 2:
            return g + " (both >=)"
        if labels and labels[-1] in cens:
            return ">= " + g
        if labels and labels[0] in cens:
            return "<= " + g
        return g

    val = {(r["scenario"], r["metric"]): cell(r) for r in rows}
    head = "| scenario | " + " | ".join(mets) + " |\n" + "|---" * (len(mets) + 1) + "|"
    lines = [head] + [f"| {s} | " + " | ".join(val[(s, m)] for m in mets) + " |" for s in scen]
    return (
        "\n".join(lines) + "\n\nGap = second arm minus first arm, per metric (units as in the map). `>= x` / "
        "`<= x`: the second / first arm's value is censored at the horizon (its state lasted the whole horizon), "
        "so the gap is a bound."
    )


def write_scenario_tables(out_dir: str, rows: Sequence[Mapping[str, Any]]) -> dict[str, str]:
    """Write scenario rows of [`carkinetics.sle_scenarios`][] as `translation_scenarios.csv` and `.md` into `out_dir`.

    **Returns:** a dict from kind (`"scenarios_csv"`, `"scenarios_markdown"`) to the written path.
    """
    import csv

    os.makedirs(out_dir, exist_ok=True)
    paths = {
        "scenarios_csv": os.path.join(out_dir, "translation_scenarios.csv"),
        "scenarios_markdown": os.path.join(out_dir, "translation_scenarios.md"),
    }
    with open(paths["scenarios_csv"], "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    with open(paths["scenarios_markdown"], "w") as fh:
        fh.write("# Scenario knobs\n\n" + scenarios_markdown(rows) + "\n")
    return paths


def write_translation_report(
    out_dir: str,
    *,
    a: str = "mouse_nzbw",
    b: str = "human",
    key: Any = None,
    n_samples: int = 0,
    gaps: Sequence[str] | None = None,
    t_end: float = 730.0,
    batch_size: int | None = 256,
    scenarios: bool = True,
    engine: Literal["ensemble", "vmap"] | None = None,
    progress: bool = False,
    checkpoint: str | None = None,
) -> dict[str, str]:
    """Compute the SLE translation map and write its figure, tables and narrative into `out_dir`.

    Writes `translation_heatmap.png`, `translation_waterfalls.png`, `translation_map.csv`, `translation_map.md`,
    `translation_narrative.md` and (with `scenarios`) `translation_scenarios.csv`/`.md` (the scenarios are solved
    in chunks of `batch_size` too, so that they reuse the map's compiled batch). `progress`, `checkpoint`: see
    `sle_translation_map`.

    **Returns:** a dict from kind to the written path.
    """
    import matplotlib

    matplotlib.use("Agg")
    from carkinetics.plot import attribution_waterfalls, translation_heatmap

    os.makedirs(out_dir, exist_ok=True)
    tm = sle_translation_map(
        a,
        b,
        gaps=gaps,
        n_samples=n_samples,
        key=key,
        t_end=t_end,
        batch_size=batch_size,
        engine=engine,
        progress=progress,
        checkpoint=checkpoint,
    )
    paths = {
        k: os.path.join(out_dir, v)
        for k, v in {
            "heatmap": "translation_heatmap.png",
            "waterfalls": "translation_waterfalls.png",
            "csv": "translation_map.csv",
            "markdown": "translation_map.md",
            "narrative": "translation_narrative.md",
        }.items()
    }
    fig = translation_heatmap(tm)
    fig.savefig(paths["heatmap"], dpi=150)
    fig = attribution_waterfalls(tm, ncols=4)
    fig.savefig(paths["waterfalls"], dpi=120)
    tm.to_csv(paths["csv"])
    with open(paths["markdown"], "w") as fh:
        fh.write(f"# Translation map {tm.labels[0]} -> {tm.labels[1]}\n\n" + tm.to_markdown() + "\n")
    with open(paths["narrative"], "w") as fh:
        fh.write(tm.narrative() + "\n")
    if scenarios:
        rows = sle_scenarios(a, b, t_end=t_end, batch_size=batch_size, engine=engine)
        paths.update(write_scenario_tables(out_dir, rows))
    return paths
