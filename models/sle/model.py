"""The composed SLE CAR-T model: lymphodepletion → CAR-T expansion → B-cell/plasmablast depletion → autoantibody
decay → disease activity, with IL-6/CRS along the way.

`SLECarTModel` couples the mechanisms of `lymphodepletion.py`, `car_t.py`, `bcells.py`, `autoantibodies.py`,
`cytokines.py` and `disease.py` (see each module docstring for its equations and parameter table). Its parameter
groups are the fields `body, humoral, bcell, tcell, ld, car, myeloid, disease`, so dotted names read
`"humoral.k_igg"`. The defaults are the adult human SLE preset (`load_preset("human")` gives the same values from
`presets/human.toml`); mouse presets differ only in values.

Time is days after CAR-T infusion (day 0); lymphodepletion is on negative days.

**States** (unit):

| state | unit | meaning |
|---|---|---|
| flu_central, flu_p2, flu_p3 | mg | fludarabine amounts (central, 2 peripheral) |
| flu_auc | mg·d/L | cumulative fludarabine AUC (dose = CL·AUC + amount left) |
| cy_central | mg | cyclophosphamide amount |
| cy_auc | mg·d/L | cumulative cyclophosphamide AUC |
| ld_effect | 1/d | delayed chemotherapy kill rate |
| t_cells, nk_cells | cells | endogenous T and NK cells (total body) |
| il7, il15 | pg/mL | homeostatic cytokines |
| car_effector | cells | effector CAR-T cells in blood (infusion target) |
| car_tissue | cells | effector CAR-T cells in lymphoid tissue |
| car_memory, car_exhausted | cells | memory and exhausted CAR-T cells (total body) |
| b_marrow | cells | CD19⁺ marrow B precursors |
| b_blood, b_tissue | cells | naive B cells in blood and lymphoid tissue |
| b_memory | cells | memory B cells (total body) |
| plasmablasts | cells | CD19⁺ plasmablasts (total body) |
| llpc | 1 | CD19⁻ long-lived plasma cells relative to baseline |
| anti_dsdna, vaccine_igg, total_igg | 1 | antibody levels relative to baseline |
| myeloid_act | 1 | activated myeloid fraction |
| il6 | pg/mL | plasma IL-6 |
| toci_central | mg | tocilizumab amount |
| activity | 1 | disease activity relative to untreated |
| damage | 1 | irreversible damage (SDI units) |

**Observables** (units in `SLECarTModel.observable_units`): `car_blood`, `b_blood`, `t_blood`, `nk_blood`,
`lymphocytes`, `plasmablasts` (cells/µL blood); `car_total`, `cd19_total` (cells); `anti_dsdna`, `vaccine_igg`,
`total_igg` (relative to baseline); `il6`, `il7`, `il15` (pg/mL); `crs_grade` (0-4); `sledai`; `proteinuria` (g/g);
`damage` (SDI); `flu_conc`, `cy_conc`, `toci_conc` (mg/L); `flu_auc` (mg·h/L); `igg_k_el` (1/d: the IgG
elimination rate constant at the current total IgG, FcRn saturation included).

**Solver.** IL-6 clearance (50/d) and the drug PK (hours) are fast, the B-cell return is slow (months): the model
is stiff (`stiff = True`: `ck.EnsembleRodas5` in batches). One member at a time it is integrated with
`diffrax.Tsit5()` (`diffrax_solver`), which compiles about three times faster than `diffrax.Kvaerno5()` for the same
run time on this model. Default tolerances rtol = atol = 1e-6 (states span O(1e-8) to O(1e11); atol matters only for
the small relative states and for cells near zero).

**Body group** (`BodyParams`):

| parameter | default | unit | tag | source |
|---|---|---|---|---|
| weight_kg | 70 | kg | M | standard adult |
| height_cm | 170 | cm | M | standard adult |
| blood_ml_per_kg | 70 | mL/kg | M | kinetics.md §4 |
| lymphoid_ml_per_kg | 15.9 | mL/kg | D | Hosseini 2020: spleen 210 + LN 400 + BM 500 mL per 70 kg |
| egfr_ml_min | 100 | mL/min | A | normal renal function |
"""

from __future__ import annotations

from typing import NamedTuple

import diffrax
import equinox as eqx

import carkinetics as ck

from carkinetics.models.sle import autoantibodies as _ab, bcells as _b, car_t as _car, cytokines as _cyt, disease as _dis
from carkinetics.models.sle import lymphodepletion as _ld
from carkinetics.models.sle.autoantibodies import HumoralParams
from carkinetics.models.sle.bcells import BCellParams
from carkinetics.models.sle.car_t import CarTParams
from carkinetics.models.sle.cytokines import MyeloidParams
from carkinetics.models.sle.disease import DiseaseParams
from carkinetics.models.sle.lymphodepletion import LymphodepletionParams, TCellParams

class BodyParams(eqx.Module):
    """Parameter group `body`: body size, blood and lymphoid tissue volumes, renal function."""

    weight_kg: float = ck.param(70.0, unit="kg", description="body weight", source="standard adult (kinetics.md 3.2)",
                                tag="M")
    height_cm: float = ck.param(170.0, unit="cm", description="height (for body surface area)",
                                source="standard adult", tag="M")
    blood_ml_per_kg: float = ck.param(70.0, unit="mL/kg", description="blood volume per kg body weight",
                                      source="~70 mL/kg (kinetics.md 4)", tag="M")
    lymphoid_ml_per_kg: float = ck.param(
        1110.0 / 70.0, unit="mL/kg", description="lymphoid tissue volume (spleen + lymph nodes + marrow) per kg",
        source="Hosseini 2020 human volumes: spleen 210 + LN 400 + BM 500 mL per 70 kg = 15.9 mL/kg", tag="D")
    egfr_ml_min: float = ck.param(100.0, unit="mL/min", description="estimated glomerular filtration rate",
                                  source="assumption: normal renal function", tag="A")


def _blood_ul(body: BodyParams):
    return body.blood_ml_per_kg * body.weight_kg * 1000.0


def _lymph_ul(body: BodyParams):
    return body.lymphoid_ml_per_kg * body.weight_kg * 1000.0


class SLECarTModel(ck.AbstractKineticModel):
    """Composed mechanistic model of CD19 CAR-T therapy in SLE (states and equations: module docstring).

    **Parameter groups:** `body`, `humoral`, `bcell`, `tcell`, `ld`, `car`, `myeloid`, `disease`; the defaults are
    the adult human SLE preset.

    **Dose targets:** `flu_central` (mg), `cy_central` (mg), `car_effector` (cells), `toci_central` (mg).

    **Example:**

    ```python
    import jax.numpy as jnp, carkinetics as ck
    from carkinetics.models.sle import SLECarTModel, erlangen_regimen
    model = SLECarTModel()
    sol = ck.simulate(model, erlangen_regimen(model), jnp.linspace(-6.0, 180.0, 187))
    float(sol.observables.b_blood[-1])   # blood B cells/uL at day 180
    ```
    """

    stiff = True
    diffrax_solver = diffrax.Tsit5()
    default_rtol = 1e-6
    default_atol = 1e-6

    class State(NamedTuple):
        flu_central: object
        flu_p2: object
        flu_p3: object
        flu_auc: object
        cy_central: object
        cy_auc: object
        ld_effect: object
        t_cells: object
        nk_cells: object
        il7: object
        il15: object
        car_effector: object
        car_tissue: object
        car_memory: object
        car_exhausted: object
        b_marrow: object
        b_blood: object
        b_tissue: object
        b_memory: object
        plasmablasts: object
        llpc: object
        anti_dsdna: object
        vaccine_igg: object
        total_igg: object
        myeloid_act: object
        il6: object
        toci_central: object
        activity: object
        damage: object

    class Observables(NamedTuple):
        car_blood: object
        car_total: object
        b_blood: object
        t_blood: object
        nk_blood: object
        lymphocytes: object
        plasmablasts: object
        anti_dsdna: object
        vaccine_igg: object
        total_igg: object
        il6: object
        il7: object
        il15: object
        crs_grade: object
        sledai: object
        proteinuria: object
        damage: object
        flu_conc: object
        cy_conc: object
        flu_auc: object
        toci_conc: object
        cd19_total: object
        igg_k_el: object

    state_units = {
        "flu_central": "mg", "flu_p2": "mg", "flu_p3": "mg", "flu_auc": "mg*d/L", "cy_central": "mg",
        "cy_auc": "mg*d/L", "ld_effect": "1/d", "t_cells": "cells", "nk_cells": "cells", "il7": "pg/mL",
        "il15": "pg/mL", "car_effector": "cells", "car_tissue": "cells", "car_memory": "cells",
        "car_exhausted": "cells", "b_marrow": "cells", "b_blood": "cells", "b_tissue": "cells", "b_memory": "cells",
        "plasmablasts": "cells", "llpc": "1", "anti_dsdna": "1", "vaccine_igg": "1", "total_igg": "1",
        "myeloid_act": "1",
        "il6": "pg/mL", "toci_central": "mg", "activity": "1", "damage": "1",
    }
    observable_units = {
        "car_blood": "cells/uL", "car_total": "cells", "b_blood": "cells/uL", "t_blood": "cells/uL",
        "nk_blood": "cells/uL", "lymphocytes": "cells/uL", "plasmablasts": "cells/uL",
        "anti_dsdna": "1 (relative to baseline)", "vaccine_igg": "1 (relative to baseline)",
        "total_igg": "1 (relative to baseline)", "il6": "pg/mL",
        "il7": "pg/mL", "il15": "pg/mL", "crs_grade": "1 (0-4)", "sledai": "1", "proteinuria": "g/g",
        "damage": "1 (SDI)", "flu_conc": "mg/L", "cy_conc": "mg/L", "flu_auc": "mg*h/L", "toci_conc": "mg/L",
        "cd19_total": "cells", "igg_k_el": "1/d",
    }

    body: BodyParams = BodyParams()
    humoral: HumoralParams = HumoralParams()
    bcell: BCellParams = BCellParams()
    tcell: TCellParams = TCellParams()
    ld: LymphodepletionParams = LymphodepletionParams()
    car: CarTParams = CarTParams()
    myeloid: MyeloidParams = MyeloidParams()
    disease: DiseaseParams = DiseaseParams()

    # ---- helpers ---------------------------------------------------------------------------------------------

    def _volumes(self):
        return _blood_ul(self.body), _lymph_ul(self.body)

    def _flu_v1(self):
        return self.ld.flu_v1 * self.body.weight_kg / 70.0

    def initial_state(self):
        blood_ul, _ = self._volumes()
        t0, nk0 = _ld.baseline_t_nk(self.tcell, blood_ul)
        b = _b.baseline(self.bcell, blood_ul)
        return self.State(
            flu_central=0.0, flu_p2=0.0, flu_p3=0.0, flu_auc=0.0, cy_central=0.0, cy_auc=0.0, ld_effect=0.0,
            t_cells=t0, nk_cells=nk0, il7=self.tcell.il7_0, il15=self.tcell.il15_0,
            car_effector=0.0, car_tissue=0.0, car_memory=0.0, car_exhausted=0.0,
            b_marrow=b.p0, b_blood=b.nb0, b_tissue=b.nt0, b_memory=b.m0, plasmablasts=b.pb0, llpc=1.0,
            anti_dsdna=1.0, vaccine_igg=1.0, total_igg=1.0, myeloid_act=0.0, il6=self.myeloid.il6_0,
            toci_central=0.0,
            activity=1.0, damage=self.disease.damage0,
        )

    def __call__(self, t, y, args):
        del args  # no time-varying covariates
        blood_ul, lymph_ul = self._volumes()
        w = self.body.weight_kg
        t0, nk0 = _ld.baseline_t_nk(self.tcell, blood_ul)
        bb = _b.baseline(self.bcell, blood_ul)

        # lymphodepletion PK and kill signal
        flu = _ld.flu_pk(self.ld, w, self.body.egfr_ml_min, y.flu_central, y.flu_p2, y.flu_p3)
        cy_cl, cy_v = _ld.cy_clearance_volume(self.ld, w)
        cy_conc = y.cy_central / cy_v
        drive = _ld.chemo_drive(self.ld, flu.conc, cy_conc)
        ld_e = self.ld.k_e0 * (drive - y.ld_effect)
        kill_ld = y.ld_effect

        # CD19+ targets and CAR-T killing in each compartment
        tgt_t = _b.cd19_tissue(bm=y.b_marrow, tissue=y.b_tissue, memory=y.b_memory, pb=y.plasmablasts,
                               f_blood=self.bcell.f_blood, f_blood_pb=self.bcell.f_blood_pb)
        tgt_b = _b.cd19_blood(blood=y.b_blood, memory=y.b_memory, pb=y.plasmablasts,
                              f_blood=self.bcell.f_blood, f_blood_pb=self.bcell.f_blood_pb)
        dens_t, dens_b = tgt_t / lymph_ul, tgt_b / blood_ul
        eff_t, eff_b = y.car_tissue / lymph_ul, y.car_effector / blood_ul
        lam_t = _car.kill_rate(self.car, eff_t, dens_t)
        lam_b = _car.kill_rate(self.car, eff_b, dens_b)
        sigma = _car.stimulation(self.car, dens_t)
        boost = _car.cytokine_boost(self.car, y.il7 / self.tcell.il7_0, y.il15 / self.tcell.il15_0)
        car_total = y.car_effector + y.car_tissue + y.car_memory + y.car_exhausted

        dcar = _car.car_derivatives(self.car, t, effector=y.car_effector, tissue=y.car_tissue, memory=y.car_memory,
                                    exhausted=y.car_exhausted, sigma=sigma, boost=boost,
                                    chemo=self.ld.sens_t * drive,
                                    niche=_car.niche_fraction(self.car, t_cells=y.t_cells, car_total=car_total,
                                                              t0_cells=t0))
        hom = _ld.homeostasis(self.tcell, self.ld, t_cells=y.t_cells, nk_cells=y.nk_cells, il7=y.il7, il15=y.il15,
                              car_total=car_total, ld_effect=kill_ld, t0_cells=t0, nk0_cells=nk0)
        dbc = _b.bcell_derivatives(self.bcell, bb, d_llpc=self.humoral.d_llpc, bm=y.b_marrow, blood=y.b_blood,
                                   tissue=y.b_tissue, memory=y.b_memory, pb=y.plasmablasts, llpc=y.llpc,
                                   kill_blood=lam_b, kill_tissue=lam_t, ld_kill=self.ld.sens_b * kill_ld)
        dab = _ab.humoral_derivatives(self.humoral, pb_rel=y.plasmablasts / bb.pb0, llpc=y.llpc,
                                      anti_dsdna=y.anti_dsdna, vaccine_igg=y.vaccine_igg, total_igg=y.total_igg)
        kill_flux = (lam_t * tgt_t) / lymph_ul + (lam_b * tgt_b) / lymph_ul
        dmy = _cyt.myeloid_derivatives(self.myeloid, myeloid_act=y.myeloid_act, il6=y.il6,
                                       toci_central=y.toci_central, weight_kg=w, kill_flux_density=kill_flux,
                                       engaged_effector_density=sigma * eff_t)
        ddis = _dis.disease_derivatives(self.disease, anti_dsdna=y.anti_dsdna, t_rel=y.t_cells / t0,
                                        activity=y.activity)
        return self.State(
            flu_central=flu.d_central, flu_p2=flu.d_p2, flu_p3=flu.d_p3, flu_auc=flu.conc,
            cy_central=-cy_cl * cy_conc, cy_auc=cy_conc, ld_effect=ld_e,
            t_cells=hom.d_t_cells, nk_cells=hom.d_nk_cells, il7=hom.d_il7, il15=hom.d_il15,
            car_effector=dcar.d_effector, car_tissue=dcar.d_tissue, car_memory=dcar.d_memory,
            car_exhausted=dcar.d_exhausted,
            b_marrow=dbc.d_bm, b_blood=dbc.d_blood, b_tissue=dbc.d_tissue, b_memory=dbc.d_memory,
            plasmablasts=dbc.d_pb, llpc=dbc.d_llpc,
            anti_dsdna=dab.d_anti_dsdna, vaccine_igg=dab.d_vaccine_igg, total_igg=dab.d_total_igg,
            myeloid_act=dmy.d_myeloid_act, il6=dmy.d_il6, toci_central=dmy.d_toci,
            activity=ddis.d_activity, damage=ddis.d_damage,
        )

    def observe(self, t, y):
        del t
        blood_ul, _ = self._volumes()
        b_blood, pb_blood = _b.blood_counts(self.bcell, blood=y.b_blood, memory=y.b_memory, pb=y.plasmablasts,
                                            blood_ul=blood_ul)
        car_blood = _car.car_blood_count(self.car, effector=y.car_effector, memory=y.car_memory,
                                         exhausted=y.car_exhausted, blood_ul=blood_ul)
        t_blood = self.tcell.f_blood_t * y.t_cells / blood_ul
        nk_blood = self.tcell.f_blood_nk * y.nk_cells / blood_ul
        toci_conc, occ = _cyt.toci_conc_occupancy(self.myeloid, y.toci_central, self.body.weight_kg)
        sledai, prot = _dis.disease_observables(self.disease, activity=y.activity, damage=y.damage)
        _, cy_v = _ld.cy_clearance_volume(self.ld, self.body.weight_kg)
        cd19 = (_b.cd19_tissue(bm=y.b_marrow, tissue=y.b_tissue, memory=y.b_memory, pb=y.plasmablasts,
                               f_blood=self.bcell.f_blood, f_blood_pb=self.bcell.f_blood_pb)
                + _b.cd19_blood(blood=y.b_blood, memory=y.b_memory, pb=y.plasmablasts,
                                f_blood=self.bcell.f_blood, f_blood_pb=self.bcell.f_blood_pb))
        return self.Observables(
            car_blood=car_blood,
            car_total=y.car_effector + y.car_tissue + y.car_memory + y.car_exhausted,
            b_blood=b_blood, t_blood=t_blood, nk_blood=nk_blood,
            lymphocytes=b_blood + t_blood + nk_blood + car_blood,
            plasmablasts=pb_blood, anti_dsdna=y.anti_dsdna, vaccine_igg=y.vaccine_igg, total_igg=y.total_igg,
            il6=y.il6, il7=y.il7, il15=y.il15,
            crs_grade=_cyt.crs_grade(self.myeloid, y.il6 * (1.0 - occ)),
            sledai=sledai, proteinuria=prot, damage=y.damage,
            flu_conc=y.flu_central / self._flu_v1(), cy_conc=y.cy_central / cy_v,
            flu_auc=y.flu_auc * 24.0, toci_conc=toci_conc, cd19_total=cd19,
            igg_k_el=_ab.igg_clearance(self.humoral, y.total_igg),
        )

    def baseline_counts(self) -> dict:
        """Untreated blood counts (cells/µL) implied by the parameters (B, T, NK, plasmablasts)."""
        return {"b_blood": float(self.bcell.b_blood0), "t_blood": float(self.tcell.t_blood0),
                "nk_blood": float(self.tcell.nk_blood0), "plasmablasts": float(self.bcell.pb_blood0)}
