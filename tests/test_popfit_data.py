"""Population data: the shipped data sets, the batched layout, and every malformed case with its line and column."""

import io

import numpy as np
import pytest

import carkinetics as ck
from carkinetics.models import OneCompartmentOralPK, OneCompartmentPK, Stein2019CK, TwoCompartmentPK

HEADER = "ID,TIME,AMT,DV,EVID,MDV,CMT"


def _read(text, model=OneCompartmentOralPK, **kw):
    return ck.read_population_data(io.StringIO(text), model, **kw)


def test_theophylline_and_indometacin_as_published():
    th = ck.read_population_data(
        ck.example_data("theophylline"), OneCompartmentOralPK, time_unit="h", covariates=["wt", "DOSE"]
    )
    assert (th.n_subjects, th.n_observations, th.n_censored) == (12, 132, 0)
    # subject 1 of R's Theoph: 4.02 mg/kg x 79.6 kg, first samples 0.74 mg/L at 0 h and 2.84 mg/L at 0.25 h
    np.testing.assert_allclose(float(th.regimen.doses[0].amount[0]), 319.992, rtol=0, atol=1e-9)
    np.testing.assert_allclose(np.asarray(th.dv[0, :2]), [0.74, 2.84], rtol=0, atol=0)
    np.testing.assert_allclose(np.asarray(th.time[0, 1]), 0.25 / 24, rtol=1e-15)
    np.testing.assert_allclose(np.asarray(th.covariates["WT"][:3]), [79.6, 72.4, 70.5], rtol=0, atol=0)
    total = float(np.sum(np.asarray(th.dv)[np.asarray(th.mask)]))
    np.testing.assert_allclose(total, 654.78, rtol=1e-12)  # sum(Theoph$conc) in R
    ind = ck.read_population_data(ck.example_data("indometacin"), OneCompartmentPK, time_unit="h")
    assert (ind.n_subjects, ind.n_observations) == (6, 66)
    assert np.asarray(ind.ts).shape == (11,)  # the same 11 sampling times for all subjects
    np.testing.assert_allclose(float(ind.dv[0, 0]), 1.50, rtol=0, atol=0)
    with pytest.raises(ValueError, match=r"Unknown example data set 'theoph'"):
        ck.example_data("theoph")


def test_batched_layout_padding_and_per_subject_regimens():
    text = (
        f"{HEADER},RATE,II,ADDL\n"
        "1,0,100,.,1,1,1,0,12,1\n1,1,.,2.0,0,0,2,.,.,.\n1,30,.,1.0,0,0,2,.,.,.\n"
        "2,0,200,.,1,1,central,24,.,.\n2,4,.,5.0,0,0,2,.,.,.\n"
    )
    data = _read(text, time_unit="h")
    # subject 1: two oral boluses (ADDL expanded); subject 2: one infusion into central; padded to one structure
    kinds = [(type(d).__name__, d.state) for d in data.regimen.doses]
    assert kinds == [("Bolus", "depot"), ("Bolus", "depot"), ("Infusion", "central")]
    np.testing.assert_allclose(np.asarray(data.regimen.doses[1].time), [0.5, 0.0], rtol=0, atol=1e-15)
    np.testing.assert_allclose(np.asarray(data.regimen.doses[1].amount), [100.0, 0.0], rtol=0, atol=0)
    np.testing.assert_allclose(np.asarray(data.regimen.doses[2].rate), [0.0, 24.0 * 24], rtol=1e-15)
    assert np.asarray(data.mask).tolist() == [[True, True], [True, False]]
    np.testing.assert_allclose(np.asarray(data.ts) * 24, [1.0, 4.0, 30.0], rtol=1e-14)
    assert np.asarray(data.time_index).tolist()[0] == [0, 2]
    sol = ck.simulate_ensemble(ck.batch_models(OneCompartmentOralPK(), n=2), data.regimen, data.ts)
    assert sol.obs_array.shape == (2, 3, 1)
    # take: designs reused with new IDs
    big = data.take(np.arange(5) % 2)
    assert big.ids == ("1", "2", "3", "4", "5") and big.n_observations == 8


def test_censoring_columns_and_helpers():
    text = (
        f"{HEADER},BLQ,LLOQ\n1,0,100,.,1,1,1,0,.\n1,1,.,2.0,0,0,1,0,.\n1,2,.,.,0,0,1,1,0.5\n"
        "2,0,100,.,1,1,1,0,.\n2,1,.,0.3,0,0,1,1,.\n"
    )
    data = _read(text)
    assert np.asarray(data.censored).tolist() == [[False, True], [True, False]]
    np.testing.assert_allclose(np.asarray(data.limit)[np.asarray(data.censored)], [0.5, 0.3], rtol=0, atol=0)
    assert data.any_censored and data.without_censored().n_observations == 1
    assert not data.without_censored().any_censored
    cens = data.without_censored().censor_below(2.5)
    assert cens.n_censored == 1 and float(cens.limit[0, 0]) == 2.5
    # CENS (nlmixr2/Monolix) with the limit in DV
    data2 = _read(f"{HEADER},CENS\n1,0,100,.,1,1,1,0\n1,1,.,0.1,0,0,1,1\n")
    assert data2.n_censored == 1 and float(data2.limit[0, 0]) == 0.1


def test_observable_mapping_and_covariates():
    text = "ID,TIME,AMT,DV,EVID,CMT,WT\n1,0,100,.,1,1,70\n1,1,.,2,0,2,70\n2,0,100,.,1,1,80\n2,1,.,3,0,2,.\n"
    data = _read(text, covariates=["WT"], observables={2: "concentration"})
    np.testing.assert_allclose(np.asarray(data.covariates["WT"]), [70.0, 80.0], rtol=0, atol=0)
    with pytest.raises(ValueError, match=r"Line 3: column CMT = '2' is not one of the observation compartments"):
        _read(text, observables={3: "concentration"})
    with pytest.raises(ValueError, match=r"`observables` maps CMT 2 to 'conc', which is not an observable"):
        _read(text, observables={2: "conc"})
    # a model without doses (Stein 2019): observations only
    stein = _read("ID,TIME,DV\n1,0,5\n1,9,20000\n2,1,8\n", Stein2019CK)
    assert len(stein.regimen.doses) == 0 and stein.n_observations == 3


@pytest.mark.parametrize(
    ("text", "match"),
    [
        (f"{HEADER}\n1,0,100,.,1,1,1\n1,1,.,abc,0,0,2\n", r"Line 3: column DV = 'abc' is not a number"),
        (f"{HEADER}\n1,0,100,.,1,1,1\n1,1,.,2.0,0,0\n", r"Line 3 has 6 field\(s\) but the header has 7 columns"),
        (f"{HEADER}\n1,0,100,.,1,1,1\n1,1,.,2.0,3,0,2\n", r"Line 3: EVID = 3 is not supported \(NONMEM's reset\)"),
        (f"{HEADER}\n1,0,100,.,1,1,1\n1,1,.,2.0,0,2,2\n", r"Line 3: column MDV = '2' must be 0 or 1"),
        (
            f"{HEADER}\n1,0,100,.,1,1,1\n2,0,100,.,1,1,1\n1,1,.,2.0,0,0,2\n",
            r"Line 4: ID 1 appears again after ID 2 \(its rows start on line 2\)",
        ),
        (
            f"{HEADER}\n1,0,100,.,1,1,1\n1,5,.,2.0,0,0,2\n1,4,.,2.0,0,0,2\n",
            r"Line 4: column TIME = 4 is earlier than TIME = 5 on line 3 of the same subject \(ID 1\)",
        ),
        (
            f"{HEADER}\n1,0,100,.,1,1,1\n1,1,.,.,0,0,2\n",
            r"Line 3: column DV is empty; it is required for an observation",
        ),
        (f"{HEADER}\n1,.,100,.,1,1,1\n", r"Line 2: column TIME is empty"),
        (f"{HEADER}\n1,0,100,.,1,1,9\n1,1,.,2,0,0,1\n", r"Line 2: unknown dose compartment CMT = '9'"),
        (f"{HEADER}\n1,0,-5,.,1,1,1\n1,1,.,2,0,0,1\n", r"Line 2: AMT = -5.0 is negative"),
        (f"{HEADER}\n1,0,100,.,1,1,1\n", r"Subject ID 1 \(from line 2\) has no observation records"),
        (f"{HEADER},BLQ\n1,0,100,.,1,1,1,0\n1,1,.,2,0,0,1,2\n", r"Line 3: column BLQ = '2' must be 0 or 1"),
        (f"{HEADER},CENS\n1,0,100,.,1,1,1,0\n1,1,.,2,0,0,1,-1\n", r"upper censoring, -1, is not supported"),
        (
            f"{HEADER},BLQ,LLOQ\n1,0,100,.,1,1,1,0,.\n1,1,.,.,0,0,1,1,.\n",
            r"Line 3: a censored record \(BLQ = 1\) needs its limit in column LLOQ, which is empty",
        ),
        (
            f"{HEADER},BLQ,LLOQ\n1,0,100,.,1,1,1,0,.\n1,1,.,.,0,0,1,1,low\n",
            r"Line 3: column LLOQ = 'low' is not a number",
        ),
        (
            f"{HEADER},WT\n1,0,100,.,1,1,1,70\n1,1,.,2,0,0,1,71\n",
            r"Line 3: column WT = 71 differs from 70 on line 2 of the same subject \(ID 1\); time-varying covariates",
        ),
        (f"{HEADER},WT\n1,0,100,.,1,1,1,heavy\n1,1,.,2,0,0,1,70\n", r"Line 2: column WT = 'heavy' is not a number"),
        (
            f"{HEADER},WT\n1,0,100,.,1,1,1,.\n1,1,.,2,0,0,1,.\n",
            r"Subject ID 1 \(from line 2\) has no value in covariate",
        ),
        ("ID,TIME,AMT\n1,0,100\n", r"lacks required column\(s\) \['DV'\]"),
        (f"{HEADER}\n,0,100,.,1,1,1\n", r"Line 2: column ID is empty"),
        ("", r"is empty \(no header line\)"),
    ],
)
def test_malformed_data_name_line_and_column(text, match):
    kw = {"covariates": ["WT"]} if "WT" in text.split("\n")[0] else {}
    with pytest.raises(ValueError, match=match):
        _read(text, **kw)


def test_bytes_encodings_and_bom():
    text = f"{HEADER}\n1,0,100,.,1,1,1\n1,1,.,2.0,0,0,2\n"
    data = ck.read_population_data(io.BytesIO(b"\xef\xbb\xbf" + text.encode()), OneCompartmentOralPK)
    assert data.n_observations == 1
    with pytest.raises(ValueError, match=r"not UTF-8 text: byte 0xb5 on line 4, character 7"):
        ck.read_population_data(
            io.BytesIO((text + "1,2,.,3,0,0,2\n").replace("1,2,.,3", "1,2,.,\xb5").encode("latin-1")),
            OneCompartmentOralPK,
        )
    with pytest.raises(ValueError, match=r"Covariate column AGE is not in the table"):
        _read(text, covariates=["age"])
    with pytest.raises(ValueError, match=r"`time_unit` must be one of"):
        _read(text, time_unit="hours")
    with pytest.raises(ValueError, match=r"`covariates` must be a sequence of column names"):
        _read(text, covariates="WT")
    two = _read("ID,TIME,AMT,DV,EVID,CMT\n1,0,100,.,1,1\n1,1,.,2.0,0,1\n", TwoCompartmentPK)
    assert two.observables == ("concentration",)
