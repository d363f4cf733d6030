"""Parameter metadata, tables, replacement and the unconstrained transforms."""

import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import carkinetics as ck
from carkinetics.models import OneCompartmentPK


class _Group(eqx.Module):
    frac: float = ck.param(0.25, unit="1", description="a fraction", source="test", tag="A", lower=0.0, upper=1.0)
    shift: float = ck.param(
        -2.0, unit="d", description="an unbounded shift", source="test", tag="A", lower=-math.inf, upper=math.inf
    )


class _Nested(eqx.Module):
    k: float = ck.param(0.033, unit="1/d", description="IgG elimination", source="t1/2 21 d", tag="D")
    group: _Group = _Group()


def test_every_declared_parameter_has_metadata_and_table():
    table = OneCompartmentPK().parameter_table()
    assert [p.name for p in table] == ["cl", "v"]
    md = table.to_markdown()
    assert "| cl | 129.84 | L/d | [0, inf] | D |" in md and "Ahmed" in md


def test_nested_parameters_have_dotted_names_and_replace():
    m = _Nested()
    assert list(ck.parameters(m)) == ["k", "group.frac", "group.shift"]
    m2 = ck.replace(m, {"group.frac": 0.5}, k=0.1)
    assert float(m2.group.frac) == 0.5 and float(m2.k) == 0.1 and float(m.group.frac) == 0.25
    with pytest.raises(ValueError, match=r"Unknown parameter 'group.fracc' .* known parameters are: group.frac"):
        ck.replace(m, {"group.fracc": 0.5})
    with pytest.raises(ValueError, match=r"'group.frac' = 1.5 1 is outside its declared bounds \[0.0, 1.0\]"):
        ck.replace(m, {"group.frac": 1.5})


def test_param_declaration_rejects_bad_metadata():
    with pytest.raises(ValueError, match=r"Confidence tag 'X' is not one of"):
        ck.param(1.0, unit="1", description="d", source="s", tag="X")
    with pytest.raises(ValueError, match=r"default -1.0 .* outside its declared bounds"):
        ck.param(-1.0, unit="1", description="d", source="s", tag="R")


def test_parameter_space_round_trip_and_transforms():
    m = _Nested()
    space = ck.ParameterSpace(m, ["k", "group.frac", "group.shift"])
    z = space.to_vector(m)
    np.testing.assert_allclose(np.asarray(z), [math.log(0.033), math.log(0.25 / 0.75), -2.0], rtol=1e-12)
    back = space.to_model(m, z)
    np.testing.assert_allclose(np.asarray(space.values(back)), [0.033, 0.25, -2.0], rtol=1e-12)
    # any real vector maps inside the bounds
    far = space.to_model(m, jnp.array([50.0, -50.0, 3.0]))
    assert float(far.k) > 0 and 0.0 <= float(far.group.frac) <= 1.0
    # gradient through the transform (d value / d z = value for a log transform)
    g = jax.grad(lambda zz: space.to_model(m, zz).k)(z)
    assert float(g[0]) == pytest.approx(0.033, rel=1e-12)


def test_parameter_space_errors():
    m = _Nested()
    with pytest.raises(ValueError, match=r"Unknown parameter 'nope'"):
        ck.ParameterSpace(m, ["nope"])
    with pytest.raises(ValueError, match=r"single string 'k'"):
        ck.ParameterSpace(m, "k")
    with pytest.raises(ValueError, match=r"`z` must have shape \(1,\)"):
        ck.ParameterSpace(m, ["k"]).to_model(m, jnp.zeros(2))
    on_bound = ck.replace(m, {"group.frac": 0.0})
    with pytest.raises(ValueError, match=r"'group.frac' = 0.0 lies on or outside the boundary"):
        ck.ParameterSpace(m, ["group.frac"]).to_vector(on_bound)


def test_table_csv(tmp_path):
    p = tmp_path / "params.csv"
    OneCompartmentPK().parameter_table().to_csv(str(p))
    lines = p.read_text().splitlines()
    assert lines[0] == "parameter,value,unit,lower,upper,tag,description,source"
    assert lines[1].startswith("cl,129.84,L/d,0.0,inf,D,clearance,")


def test_parameter_space_working_bounds():
    m = _Nested()
    space = ck.ParameterSpace(m, ["k", "group.shift"], bounds={"group.shift": (-10.0, 0.0)})
    assert space.lower == (0.0, -10.0) and space.upper == (math.inf, 0.0)
    z = space.to_vector(m)
    assert float(z[1]) == pytest.approx(math.log(0.8 / 0.2), rel=1e-12)  # logit((-2 + 10) / 10)
    far = space.to_model(m, jnp.array([0.0, 40.0]))
    assert -10.0 <= float(far.group.shift) <= 0.0
    with pytest.raises(ValueError, match=r"`bounds` names 'group.frac', which is not mapped"):
        ck.ParameterSpace(m, ["k"], bounds={"group.frac": (0.1, 0.9)})
    with pytest.raises(ValueError, match=r"Working bounds \(-1.0, 0.5\) of 'group.frac' must lie inside"):
        ck.ParameterSpace(m, ["group.frac"], bounds={"group.frac": (-1.0, 0.5)})
    with pytest.raises(ValueError, match=r"current value -2.0 of 'group.shift' lies outside its working bounds"):
        ck.ParameterSpace(m, ["group.shift"], bounds={"group.shift": (0.0, 5.0)})
