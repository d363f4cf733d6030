"""The composed SLE CAR-T model (v2): conditioning → CAR-T activation, expansion, contraction and persistence → host
anti-CAR response → B-lineage and plasma-cell depletion → antibodies → disease activity, with cytokine release along
the way. Every endpoint (B-cell return, CRS grade, remission, relapse) emerges from these mechanisms: the only
explicit times are dose times.

`SLECarTModel` couples `lymphodepletion.py` (drug PK, chemotherapy kill, T/NK homeostasis, IL-7/IL-15),
`car_t.py`, `rejection.py`, `bcells.py`, `autoantibodies.py`, `cytokines.py` and `disease.py`, configured by the
product facts of `products.py`. Each module docstring states its equations; each parameter group's docstring holds
its parameter table, generated from the fields. Parameter groups are the fields `body, product, car, rejection,
bcell, humoral, tcell, ld, myeloid, disease`, so dotted names read `"car.rho"`. The class defaults are the hand-set
human values (tag A where no published value exists): the priors of the calibration. The shipped default is the
calibrated model, `load_preset("human")`: these defaults with the fitted values of `calibration/fits/human_sle.json`
(tag F); the other presets hold only the values that differ from it.

Time is days after CAR-T infusion (day 0); conditioning is on negative days.

**States** (unit): `flu_central, flu_p2, flu_p3` (mg), `flu_auc` (mg·d/L), `cy_central` (mg), `cy_auc` (mg·d/L),
`ld_effect` (1/d); `t_cells, nk_cells` (cells), `il7, il15` (pg/mL), `anti_car` (cells); `car_resting, car_act1,
car_act2, car_effector, car_memory, car_exhausted` (cells); `b_marrow, b_naive, b_memory, b_auto, pb_auto, pb_other,
llpc_auto, llpc, tumour` (cells); `anti_dsdna` (U/mL), `vaccine_igg` (relative), `total_igg` (g/L); `myeloid_act` (0-1),
`il6` (pg/mL), `endothelial` (0-1), `toci_central` (mg), `dex` (mg); `activity` (relative), `damage` (SDI),
`cum_hazard` (1).

**Dose targets:** `flu_central`, `cy_central` (mg), `car_resting` (cells, `CAR_DOSE_STATE`), `toci_central` (mg),
`dex` (mg dexamethasone); total-body irradiation is a `ck.FractionalKill` of `TBI_STATES` (`regimens.py`).

**Observables** (units in `SLECarTModel.observable_units`).

**Solver.** IL-6 clearance (50/d) and the drug PK (hours) are fast, B-cell return and relapse slow (months to
years): the model is stiff (`stiff = True`: `ck.EnsembleRodas5` in batches, `diffrax.Kvaerno5()` one member at a
time). Default tolerances rtol = atol = 1e-6.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import diffrax
import equinox as eqx
import jax.numpy as jnp

import carkinetics as ck
from carkinetics.models.sle import (
    autoantibodies as _ab,
    bcells as _b,
    car_t as _car,
    cytokines as _cyt,
    disease as _dis,
    lymphodepletion as _ld,
    rejection as _rej,
)
from carkinetics.models.sle._doc import document_params
from carkinetics.models.sle.autoantibodies import HumoralParams
from carkinetics.models.sle.bcells import BCellParams
from carkinetics.models.sle.car_t import CarTParams
from carkinetics.models.sle.cytokines import MyeloidParams
from carkinetics.models.sle.disease import DiseaseParams
from carkinetics.models.sle.lymphodepletion import LymphodepletionParams, TCellParams
from carkinetics.models.sle.products import ProductParams
from carkinetics.models.sle.rejection import RejectionParams

#: The state a CAR-T infusion doses (cells): the resting, not yet triggered, infused product.
CAR_DOSE_STATE = "car_resting"


@document_params
class BodyParams(eqx.Module):
    """Parameter group `body`: body size, blood and lymphoid tissue volumes, renal function."""

    weight_kg: float = ck.param(70.0, unit="kg", description="body weight", source="standard adult [M]", tag="M")
    height_cm: float = ck.param(
        170.0, unit="cm", description="height (for body surface area)", source="standard adult [M]", tag="M"
    )
    blood_ml_per_kg: float = ck.param(
        70.0, unit="mL/kg", description="blood volume per kg body weight", source="~70 mL/kg (textbook [M])", tag="M"
    )
    lymphoid_ml_per_kg: float = ck.param(
        1110.0 / 70.0,
        unit="mL/kg",
        description="lymphoid tissue volume (spleen + lymph nodes + marrow) per kg",
        source="Hosseini I et al., npj Syst Biol Appl 2020, human volumes: spleen 210 + LN 400 + BM 500 mL per "
        "70 kg = 15.9 mL/kg",
        tag="D",
    )
    egfr_ml_min: float = ck.param(
        100.0,
        unit="mL/min",
        description="estimated glomerular filtration rate",
        source="assumption: normal renal function",
        tag="A",
    )


class SLECarTModel(ck.AbstractKineticModel):
    """Composed mechanistic model of CAR-T therapy in SLE (states and equations: module docstrings).

    **Parameter groups:** `body`, `product`, `car`, `rejection`, `bcell`, `humoral`, `tcell`, `ld`, `myeloid`,
    `disease`; the defaults are the hand-set adult human SLE values with the MB-CART19.1 product (the calibrated
    default is `load_preset("human")`).

    **Example:**

    ```python
    import carkinetics as ck
    from carkinetics.models.sle import SLECarTModel, erlangen_regimen, save_times
    model = SLECarTModel()
    sol = ck.simulate(model, erlangen_regimen(model), save_times(365.0), solver=ck.EnsembleRodas5())
    float(sol.observables.b_blood[-1])   # blood B cells/uL at day 365
    ```
    """

    stiff = True
    diffrax_solver = diffrax.Kvaerno5()
    default_rtol = 1e-6
    default_atol = 1e-6

    class State(NamedTuple):
        flu_central: Any
        flu_p2: Any
        flu_p3: Any
        flu_auc: Any
        cy_central: Any
        cy_auc: Any
        ld_effect: Any
        t_cells: Any
        nk_cells: Any
        il7: Any
        il15: Any
        anti_car: Any
        car_resting: Any
        car_act1: Any
        car_act2: Any
        car_effector: Any
        car_memory: Any
        car_exhausted: Any
        b_marrow: Any
        b_naive: Any
        b_memory: Any
        b_auto: Any
        pb_auto: Any
        pb_other: Any
        llpc_auto: Any
        llpc: Any
        tumour: Any
        anti_dsdna: Any
        vaccine_igg: Any
        total_igg: Any
        myeloid_act: Any
        il6: Any
        endothelial: Any
        toci_central: Any
        dex: Any
        activity: Any
        damage: Any
        cum_hazard: Any

    class Observables(NamedTuple):
        car_blood: Any
        car_total: Any
        car_memory_fraction: Any
        anti_car_blood: Any
        rejection_rate: Any
        b_blood: Any
        t_blood: Any
        nk_blood: Any
        lymphocytes: Any
        plasmablasts: Any
        cd19_total: Any
        llpc_total: Any
        tumour: Any
        anti_dsdna: Any
        anti_dsdna_rel: Any
        anti_dsdna_index: Any
        vaccine_igg: Any
        total_igg: Any
        il6: Any
        il7: Any
        il15: Any
        temperature: Any
        endothelial: Any
        crs_grade: Any
        sledai: Any
        proteinuria: Any
        proteinuria_score: Any
        survival: Any
        damage: Any
        flu_conc: Any
        cy_conc: Any
        flu_auc: Any
        toci_conc: Any
        igg_k_el: Any

    state_units = {
        "flu_central": "mg",
        "flu_p2": "mg",
        "flu_p3": "mg",
        "flu_auc": "mg*d/L",
        "cy_central": "mg",
        "cy_auc": "mg*d/L",
        "ld_effect": "1/d",
        "t_cells": "cells",
        "nk_cells": "cells",
        "il7": "pg/mL",
        "il15": "pg/mL",
        "anti_car": "cells",
        "car_resting": "cells",
        "car_act1": "cells",
        "car_act2": "cells",
        "car_effector": "cells",
        "car_memory": "cells",
        "car_exhausted": "cells",
        "b_marrow": "cells",
        "b_naive": "cells",
        "b_memory": "cells",
        "b_auto": "cells",
        "pb_auto": "cells",
        "pb_other": "cells",
        "llpc_auto": "cells",
        "llpc": "cells",
        "tumour": "cells",
        "anti_dsdna": "U/mL",
        "vaccine_igg": "1",
        "total_igg": "g/L",
        "myeloid_act": "1",
        "il6": "pg/mL",
        "endothelial": "1",
        "toci_central": "mg",
        "dex": "mg",
        "activity": "1",
        "damage": "1",
        "cum_hazard": "1",
    }
    observable_units = {
        "car_blood": "cells/uL",
        "car_total": "cells",
        "car_memory_fraction": "1",
        "anti_car_blood": "cells/uL",
        "rejection_rate": "1/d",
        "b_blood": "cells/uL",
        "t_blood": "cells/uL",
        "nk_blood": "cells/uL",
        "lymphocytes": "cells/uL",
        "plasmablasts": "cells/uL",
        "cd19_total": "cells",
        "llpc_total": "cells",
        "tumour": "cells",
        "anti_dsdna": "U/mL",
        "anti_dsdna_rel": "1 (relative to baseline)",
        "anti_dsdna_index": "1 (relative to the positivity cutoff; >= 1 positive)",
        "vaccine_igg": "1 (relative to baseline)",
        "total_igg": "g/L",
        "il6": "pg/mL",
        "il7": "pg/mL",
        "il15": "pg/mL",
        "temperature": "degC",
        "endothelial": "1 (0-1)",
        "crs_grade": "1 (0-4, ASTCT-like)",
        "sledai": "1 (SLEDAI-2K; human-scale bridge in mouse presets)",
        "proteinuria": "g/g",
        "proteinuria_score": "1 (dipstick 0-4)",
        "survival": "1",
        "damage": "1 (SDI)",
        "flu_conc": "mg/L",
        "cy_conc": "mg/L",
        "flu_auc": "mg*h/L",
        "toci_conc": "mg/L",
        "igg_k_el": "1/d",
    }

    body: BodyParams = BodyParams()
    product: ProductParams = ProductParams()
    car: CarTParams = CarTParams()
    rejection: RejectionParams = RejectionParams()
    bcell: BCellParams = BCellParams()
    humoral: HumoralParams = HumoralParams()
    tcell: TCellParams = TCellParams()
    ld: LymphodepletionParams = LymphodepletionParams()
    myeloid: MyeloidParams = MyeloidParams()
    disease: DiseaseParams = DiseaseParams()

    # ---- helpers ---------------------------------------------------------------------------------------------

    def volumes(self):
        """Blood and lymphoid-tissue volumes (µL)."""
        w = self.body.weight_kg
        return self.body.blood_ml_per_kg * w * 1000.0, self.body.lymphoid_ml_per_kg * w * 1000.0

    def _flu_v1(self):
        return self.ld.flu_v1 * self.body.weight_kg / 70.0

    def initial_state(self):
        blood_ul, _ = self.volumes()
        t0, nk0 = _ld.baseline_t_nk(self.tcell, blood_ul)
        b = _b.baseline(self.bcell, blood_ul).state
        s0 = self.myeloid.il6_0**self.myeloid.n_vasc
        endo0 = s0 / (self.myeloid.k_vasc**self.myeloid.n_vasc + s0)
        return self.State(
            flu_central=0.0,
            flu_p2=0.0,
            flu_p3=0.0,
            flu_auc=0.0,
            cy_central=0.0,
            cy_auc=0.0,
            ld_effect=0.0,
            t_cells=t0,
            nk_cells=nk0,
            il7=self.tcell.il7_0,
            il15=self.tcell.il15_0,
            anti_car=0.0,
            car_resting=0.0,
            car_act1=0.0,
            car_act2=0.0,
            car_effector=0.0,
            car_memory=0.0,
            car_exhausted=0.0,
            b_marrow=b.marrow,
            b_naive=b.naive,
            b_memory=b.memory,
            b_auto=b.auto,
            pb_auto=b.pb_auto,
            pb_other=b.pb_other,
            llpc_auto=b.llpc_auto,
            llpc=b.llpc,
            tumour=b.tumour,
            anti_dsdna=self.humoral.anti_dsdna0,
            vaccine_igg=1.0,
            total_igg=self.humoral.igg0,
            myeloid_act=0.0,
            il6=self.myeloid.il6_0,
            endothelial=endo0,
            toci_central=0.0,
            dex=0.0,
            activity=1.0,
            damage=self.disease.damage0,
            cum_hazard=0.0,
        )

    def _car_state(self, y):
        return _car.CarState(y.car_resting, y.car_act1, y.car_act2, y.car_effector, y.car_memory, y.car_exhausted)

    def _b_state(self, y):
        return _b.BState(
            y.b_marrow, y.b_naive, y.b_memory, y.b_auto, y.pb_auto, y.pb_other, y.llpc_auto, y.llpc, y.tumour
        )

    def _cyt_state(self, y):
        return _cyt.CytState(y.myeloid_act, y.il6, y.endothelial, y.toci_central, y.dex)

    def _encounter(self, y, lymph_ul):
        """Antigen density, stimulation, kill rates per CD19⁺/BCMA⁺ target and effector density in tissue."""
        bs = self._b_state(y)
        p = self.product
        cd19, bcma = _b.cd19_cells(bs), _b.bcma_cells(bs)
        antigen = (p.cd19 * cd19 + p.bcma * bcma) / lymph_ul
        sigma = _car.stimulation(self.car, antigen)
        tissue = 1.0 - self.car.f_blood
        lam = _car.kill_rate(self.car, tissue * y.car_effector / lymph_ul, antigen)
        return cd19, bcma, sigma, p.cd19 * lam, p.bcma * lam

    def _rejection_rate(self, y, lymph_ul):
        return _rej.rejection_rate(self.rejection, y.anti_car / lymph_ul)

    def __call__(self, t, y, args):
        del t, args  # autonomous: doses are applied by the simulator
        # Every state is non-negative. Reading them clamped at 0 means a state that round-off has pushed below 0
        # sees no production or proliferation of its own (which would amplify the error) and only its inflows:
        # it returns to 0 instead of diverging.
        y = self.State(*(jnp.maximum(v, 0.0) for v in y))
        blood_ul, lymph_ul = self.volumes()
        w = self.body.weight_kg
        t0, nk0 = _ld.baseline_t_nk(self.tcell, blood_ul)
        base = _b.baseline(self.bcell, blood_ul)
        p = self.product

        # conditioning: drug PK and the (delayed) chemotherapy kill
        flu = _ld.flu_pk(self.ld, w, self.body.egfr_ml_min, y.flu_central, y.flu_p2, y.flu_p3)
        cy_cl, cy_v = _ld.cy_clearance_volume(self.ld, w)
        cy_conc = y.cy_central / cy_v
        drive = _ld.chemo_drive(self.ld, flu.conc, cy_conc)
        kill_ld = y.ld_effect

        # CAR-T meets antigen
        cs = self._car_state(y)
        car_total = _car.total(cs)
        cd19, bcma, sigma, kill19, kill_bcma = self._encounter(y, lymph_ul)
        support = _car.cytokine_support(self.car, y.il7 / self.tcell.il7_0, y.il15 / self.tcell.il15_0)
        niche = _car.niche_fraction(self.car, t_cells=y.t_cells, car_total=car_total, t0_cells=t0)
        cyt = self._cyt_state(y)
        _, occ = _cyt.toci_conc_occupancy(self.myeloid, y.toci_central, w)
        steroid = _cyt.steroid_effect(self.myeloid, y.dex)
        kappa = self._rejection_rate(y, lymph_ul)
        dcar = _car.car_derivatives(
            self.car,
            cs,
            sigma=sigma,
            support=support,
            niche=niche,
            cd28=p.cd28,
            rejection=kappa,
            chemo=self.ld.sens_t * drive,
            toci_occ=occ,
            steroid=steroid,
        )

        # host: T/NK homeostasis, IL-7/IL-15, the anti-CAR response
        hom = _ld.homeostasis(
            self.tcell,
            self.ld,
            t_cells=y.t_cells,
            nk_cells=y.nk_cells,
            il7=y.il7,
            il15=y.il15,
            car_total=car_total,
            ld_effect=kill_ld,
            t0_cells=t0,
            nk0_cells=nk0,
        )
        f_prec = _rej.precursor_frequency(
            self.rejection, scfv_foreign=p.scfv_foreign, hla_mismatch=p.hla_mismatch, hla_evasion=p.hla_evasion
        )
        d_anti = _rej.anti_car_derivative(
            self.rejection,
            anti_car=y.anti_car,
            t_cells=y.t_cells,
            t_blood=self.tcell.f_blood_t * y.t_cells / blood_ul,
            car_density=(1.0 - self.car.f_blood) * car_total / lymph_ul,
            f_prec=f_prec,
            chemo_kill=self.ld.sens_t * kill_ld,
        )

        # B lineage, antibodies
        bs = self._b_state(y)
        ic_rel = y.anti_dsdna / self.humoral.anti_dsdna0
        db = _b.bcell_derivatives(
            self.bcell, base, bs, kill19=kill19, kill_bcma=kill_bcma, chemo=self.ld.sens_b * kill_ld, ic_rel=ic_rel
        )
        b0 = base.state
        dab = _ab.antibody_derivatives(
            self.humoral,
            _ab.AbState(y.anti_dsdna, y.vaccine_igg, y.total_igg),
            pb_auto_rel=y.pb_auto / b0.pb_auto,
            pb_other_rel=y.pb_other / b0.pb_other,
            pb_rel=(y.pb_auto + y.pb_other) / (b0.pb_auto + b0.pb_other),
            llpc_auto_rel=y.llpc_auto / b0.llpc_auto,
            llpc_other_rel=y.llpc / b0.llpc,
            llpc_rel=(y.llpc_auto + y.llpc) / (b0.llpc_auto + b0.llpc),
        )

        # cytokine release: DAMPs of killed cells (burden x E:T) and contact with activated CAR-T cells
        kill_flux = (kill19 * cd19 + kill_bcma * bcma) / lymph_ul
        activated = (1.0 - self.car.f_blood) * (y.car_act1 + y.car_act2 + y.car_effector) / lymph_ul
        u = (
            kill_flux / self.myeloid.k_damp
            + _car.costim(p.cd28, self.car.cd28_cytokine_fold) * sigma * activated / self.myeloid.k_cd40
        )
        dcyt = _cyt.cytokine_derivatives(self.myeloid, cyt, drive=u, weight_kg=w)

        # disease
        ddis = _dis.disease_derivatives(
            self.disease, _dis.DiseaseState(y.activity, y.damage, y.cum_hazard), ic_rel=ic_rel, t_rel=y.t_cells / t0
        )
        return self.State(
            flu_central=flu.d_central,
            flu_p2=flu.d_p2,
            flu_p3=flu.d_p3,
            flu_auc=flu.conc,
            cy_central=-cy_cl * cy_conc,
            cy_auc=cy_conc,
            ld_effect=self.ld.k_e0 * (drive - y.ld_effect),
            t_cells=hom.d_t_cells,
            nk_cells=hom.d_nk_cells,
            il7=hom.d_il7,
            il15=hom.d_il15,
            anti_car=d_anti,
            car_resting=dcar.resting,
            car_act1=dcar.act1,
            car_act2=dcar.act2,
            car_effector=dcar.effector,
            car_memory=dcar.memory,
            car_exhausted=dcar.exhausted,
            b_marrow=db.marrow,
            b_naive=db.naive,
            b_memory=db.memory,
            b_auto=db.auto,
            pb_auto=db.pb_auto,
            pb_other=db.pb_other,
            llpc_auto=db.llpc_auto,
            llpc=db.llpc,
            tumour=db.tumour,
            anti_dsdna=dab.anti_dsdna,
            vaccine_igg=dab.vaccine_igg,
            total_igg=dab.total_igg,
            myeloid_act=dcyt.myeloid_act,
            il6=dcyt.il6,
            endothelial=dcyt.endothelial,
            toci_central=dcyt.toci,
            dex=dcyt.dex,
            activity=ddis.activity,
            damage=ddis.damage,
            cum_hazard=ddis.cum_hazard,
        )

    def observe(self, t, y):
        del t
        blood_ul, lymph_ul = self.volumes()
        w = self.body.weight_kg
        bs = self._b_state(y)
        b_blood, pb_blood = _b.blood_counts(self.bcell, bs, blood_ul)
        cs = self._car_state(y)
        car_total = _car.total(cs)
        car_blood = _car.blood_count(self.car, cs, blood_ul)
        t_blood = self.tcell.f_blood_t * y.t_cells / blood_ul
        nk_blood = self.tcell.f_blood_nk * y.nk_cells / blood_ul
        cyt = self._cyt_state(y)
        toci_conc, _ = _cyt.toci_conc_occupancy(self.myeloid, y.toci_central, w)
        temp = _cyt.temperature(self.myeloid, cyt, w)
        ds = _dis.DiseaseState(y.activity, y.damage, y.cum_hazard)
        upcr = _dis.proteinuria(self.disease, ds)
        _, cy_v = _ld.cy_clearance_volume(self.ld, w)
        return self.Observables(
            car_blood=car_blood,
            car_total=car_total,
            # below one cell the fraction is meaningless; the floor also keeps its derivative finite at 0 cells
            car_memory_fraction=y.car_memory / jnp.maximum(car_total, 1.0),
            anti_car_blood=self.tcell.f_blood_t * y.anti_car / blood_ul,
            rejection_rate=self._rejection_rate(y, lymph_ul),
            b_blood=b_blood,
            t_blood=t_blood,
            nk_blood=nk_blood,
            lymphocytes=b_blood + t_blood + nk_blood + car_blood,
            plasmablasts=pb_blood,
            cd19_total=_b.cd19_cells(bs),
            llpc_total=y.llpc_auto + y.llpc,
            tumour=y.tumour,
            anti_dsdna=y.anti_dsdna,
            anti_dsdna_rel=y.anti_dsdna / self.humoral.anti_dsdna0,
            anti_dsdna_index=y.anti_dsdna / self.humoral.anti_dsdna_cutoff,
            vaccine_igg=y.vaccine_igg,
            total_igg=y.total_igg,
            il6=y.il6,
            il7=y.il7,
            il15=y.il15,
            temperature=temp,
            endothelial=y.endothelial,
            crs_grade=_cyt.crs_grade(self.myeloid, temp, y.endothelial),
            sledai=self.disease.sledai0 * y.activity,
            proteinuria=upcr,
            proteinuria_score=_dis.dipstick_score(self.disease, upcr),
            survival=jnp.exp(-y.cum_hazard),
            damage=y.damage,
            flu_conc=y.flu_central / self._flu_v1(),
            cy_conc=y.cy_central / cy_v,
            flu_auc=y.flu_auc * 24.0,
            toci_conc=toci_conc,
            igg_k_el=_ab.igg_clearance(self.humoral, y.total_igg),
        )

    def baseline_counts(self) -> dict:
        """Untreated blood counts (cells/µL) implied by the parameters (B, T, NK, plasmablasts)."""
        return {
            "b_blood": float(self.bcell.b_blood0),
            "t_blood": float(self.tcell.t_blood0),
            "nk_blood": float(self.tcell.nk_blood0),
            "plasmablasts": float(self.bcell.pb_blood0),
        }
