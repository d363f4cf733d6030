"""Published target files, the row validator, units, summary statistics and observation models."""

import glob
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.scipy.stats import norm

import carkinetics as ck
from carkinetics.models.sle import QUANTITIES

DATA = os.path.join(os.path.dirname(__file__), "..", "calibration", "data")
GOOD = {
    "target_id": "x2022_b",
    "quantity": "b_cell_reappearance_time",
    "measure": "mean",
    "value": "110",
    "spread_kind": "sd",
    "spread": "32",
    "spread_low": "",
    "spread_high": "",
    "unit": "d",
    "time": "",
    "population": "SLE",
    "n": "5",
    "species": "human",
    "source": "Mackensen 2022",
    "doi": "10.1038/x",
    "tag": "R",
    "note": "",
}


def test_all_shipped_target_files_validate():
    files = sorted(glob.glob(os.path.join(DATA, "*.csv")))
    assert len(files) == 3
    table = ck.load_targets(files, quantities=QUANTITIES)
    assert len(table) == len(set(table.ids())) >= 40
    r = table["mackensen2022_b_reappearance"]
    assert (r.value, r.sigma(), r.unit, r.tag) == (110.0, 32.0, "d", "R")
    assert r.interval() == (78.0, 142.0)
    assert table["muller2024_b_aplasia"].interval() == (65.0, 159.0)
    assert table["kochenderfer2010_b_aplasia"].interval() == (143.0, math.inf)
    assert table["stein2019_alpha"].sigma() == pytest.approx(0.16 * 0.11, rel=1e-12)
    assert table["igg_half_life_human"].sigma() == pytest.approx(1.5, rel=1e-12)  # range 17-23 / 4
    axicel = table.select(quantity="car_blood")
    assert [r.time for r in axicel] == [7.0, 14.0, 28.0, 90.0]
    assert [r.value for r in axicel] == [27.5, 9.1, 2.1, 0.1]
    assert all(r.doi == "none" or r.doi.startswith("10.") for r in table)
    print(table.select(species="human", tag=["R", "R2"])[:5])


@pytest.mark.parametrize(
    "change, message",
    [
        ({"unit": "cells/uL"}, "inconsistent with quantity"),
        ({"unit": "days"}, "unknown unit"),
        ({"quantity": "b_reappearance"}, "unknown quantity"),
        ({"value": "abc"}, "must be a number"),
        ({"value": ""}, "'value' is empty"),
        ({"spread": "-3"}, "needs a positive 'spread'"),
        ({"spread_kind": "range"}, "needs both 'spread_low' and 'spread_high'"),
        ({"spread_kind": "range", "spread": "", "spread_low": "120", "spread_high": "130"}, "must contain value"),
        ({"spread_kind": "none"}, "spread columns are filled"),
        ({"tag": "X"}, "confidence tag"),
        ({"doi": "doi:10.1/x"}, "must look like"),
        ({"source": ""}, "every target needs a citation"),
        ({"n": "2.5"}, "positive whole number"),
        (
            {
                "measure": "proportion",
                "quantity": "crs_grade1_fraction",
                "unit": "1",
                "value": "60",
                "spread_kind": "none",
                "spread": "",
            },
            "proportion must lie in",
        ),
        ({"measure": "average"}, "measure"),
    ],
)
def test_validator_rejects_malformed_rows(change, message):
    raw = dict(GOOD, **change)
    with pytest.raises(ValueError, match=message) as e:
        ck.validate_target_row(raw, QUANTITIES, "file.csv:7")
    assert "file.csv:7 (x2022_b)" in str(e.value) or "file.csv:7" in str(e.value)


def test_validator_accepts_good_row_and_file_errors(tmp_path):
    row = ck.validate_target_row(GOOD, QUANTITIES)
    assert row.value == 110.0 and row.value_in("wk") == pytest.approx(110 / 7)
    p = tmp_path / "t.csv"
    header = ",".join(GOOD)
    line = ",".join(GOOD.values())
    p.write_text(header + "\n" + line + "\n" + line + "\n")
    with pytest.raises(ValueError, match="duplicated"):
        ck.load_targets(p, quantities=QUANTITIES)
    p.write_text("target_id,value\nx,1\n")
    with pytest.raises(ValueError, match="lacks the columns"):
        ck.load_targets(p, quantities=QUANTITIES)
    with pytest.raises(ValueError, match="does not exist"):
        ck.load_targets(tmp_path / "missing.csv", quantities=QUANTITIES)


def test_units():
    assert ck.convert_unit(2.0, "wk", "d") == 14.0
    assert ck.convert_unit(1.0, "cells/mL", "cells/uL") == pytest.approx(1e-3)
    assert ck.convert_unit(50.0, "%", "1") == 0.5
    with pytest.raises(ValueError, match="dimensions differ"):
        ck.convert_unit(1.0, "d", "cells/uL")


def test_statistics_hand_values_and_gradients():
    ts = jnp.linspace(0.0, 10.0, 101)
    y = 100.0 * jnp.exp(-0.3 * ts)  # half-life ln2/0.3
    assert float(ck.HalfLife("b", 2.0, 8.0)(ts, y)) == pytest.approx(math.log(2) / 0.3, rel=1e-10)
    assert float(ck.FoldChange("b", 5.0, 0.0)(ts, y)) == pytest.approx(math.exp(-1.5), rel=1e-3)
    assert float(ck.ValueAt("b", 5.0)(ts, y)) == pytest.approx(100 * math.exp(-1.5), rel=1e-12)
    # crosses 10 at t = ln(10)/0.3 = 7.675 d (linear interpolation between grid points: within 1e-3)
    t_cross = math.log(10) / 0.3
    assert float(ck.TimeBelow("b", 10.0)(ts, y)) == pytest.approx(10.0 - t_cross, abs=1e-3)
    assert float(ck.TimeAbove("b", 10.0, t_start=1.0)(ts, y)) == pytest.approx(t_cross - 1.0, abs=1e-3)
    assert float(ck.CrossingTime("b", 10.0, "down")(ts, y)) == pytest.approx(t_cross, abs=1e-3)
    assert float(ck.CrossingTime("b", 1000.0, "up")(ts, y)) == 10.0  # no crossing: horizon
    bump = jnp.exp(-((ts - 4.3) ** 2))
    assert float(ck.PeakTime("b")(ts, bump)) == pytest.approx(4.3, abs=2e-3)
    assert float(ck.PeakTime("b", t_start=6.0)(ts, bump + 0.1 * (ts > 8))) >= 6.0
    assert float(ck.PeakHeight("b")(ts, bump)) == pytest.approx(1.0, abs=1e-3)
    # gradient of the time below a threshold w.r.t. the decay rate: d/dk (10 - ln(10)/k) = ln(10)/k^2
    # (exact for the piecewise-linear interpolant: check against its finite difference, and within 2 % of the
    # smooth-curve value, the interpolation error of the crossing slope on a 0.1-day grid)
    f = jax.jit(lambda k: ck.TimeBelow("b", 10.0)(ts, 100.0 * jnp.exp(-k * ts)))
    g = float(jax.grad(f)(0.3))
    fd = (float(f(0.3 + 1e-6)) - float(f(0.3 - 1e-6))) / 2e-6
    assert g == pytest.approx(fd, rel=1e-5)
    assert g == pytest.approx(math.log(10) / 0.09, rel=2e-2)
    with pytest.raises(ValueError, match="must be earlier"):
        ck.TimeBelow("b", 1.0, t_start=5.0, t_end=1.0)
    with pytest.raises(ValueError, match="direction"):
        ck.CrossingTime("b", 1.0, "sideways")


def test_observation_models():
    assert float(ck.NormalError(32.0).nll(110.0, 142.0)) == pytest.approx(-float(norm.logpdf(142.0, 110.0, 32.0)))
    ln = ck.LogNormalError(0.5)
    # log-normal density of obs: N(log obs; log pred, 0.5) / obs
    want = -(float(norm.logpdf(np.log(3.0), np.log(2.0), 0.5)) - np.log(3.0))
    assert float(ln.nll(2.0, 3.0)) == pytest.approx(want, rel=1e-12)
    assert float(ln.residuals(2.0, 3.0)) == pytest.approx(np.log(1.5) / 0.5)
    cens = ck.CensoredError(ck.LogNormalError(0.3), lloq=1.0)
    assert float(cens.nll(0.2, 1.0)) == pytest.approx(-float(norm.logcdf((0 - np.log(0.2)) / 0.3)), rel=1e-12)
    assert float(cens.nll(jnp.array([0.2, 5.0]), jnp.array([0.5, 4.0]))) == pytest.approx(
        float(cens.nll(0.2, 0.5)) + float(ln.__class__(0.3).nll(5.0, 4.0)), rel=1e-12
    )
    lb = ck.CensoredError(ck.NormalError(14.3), uloq=143.0)  # "at least 143 days"
    assert float(lb.nll(200.0, 143.0)) == pytest.approx(-float(norm.logcdf((200 - 143) / 14.3)), rel=1e-12)
    assert float(lb.nll(100.0, 143.0)) > 4.0
    g = jax.grad(lambda p: cens.nll(p, 1.0))(0.8)
    assert float(g) > 0 and np.isfinite(float(g))
    with pytest.raises(ValueError, match="positive finite"):
        ck.NormalError(0.0)
    with pytest.raises(ValueError, match="needs `lloq`"):
        ck.CensoredError(ck.NormalError(1.0))


def test_summary_target_binding_converts_units():
    from carkinetics.models import Stein2019CK

    row = ck.validate_target_row(dict(GOOD, quantity="car_tmax", value="2", spread="0.5", unit="wk"), QUANTITIES)
    tg = ck.summary_target(row, ck.PeakTime("transgene"), Stein2019CK)
    assert float(tg.value) == 14.0 and tg.unit == "d" and tg.interval == (10.5, 17.5)
    assert isinstance(tg.error, ck.NormalError) and float(tg.error.sigma) == 3.5
    peak = ck.validate_target_row(dict(GOOD, quantity="car_peak_blood", unit="cells/uL"), QUANTITIES)
    with pytest.raises(ValueError, match="is in 'cells/uL'"):
        ck.summary_target(peak, ck.PeakHeight("transgene"), Stein2019CK)
    lb = ck.validate_target_row(dict(GOOD, measure="lower_bound", spread_kind="none", spread=""), QUANTITIES)
    tg = ck.summary_target(lb, ck.TimeBelow("transgene", 1.0), Stein2019CK)
    assert isinstance(tg.error, ck.CensoredError) and tg.error.uloq == 110.0 and tg.interval == (110.0, math.inf)
