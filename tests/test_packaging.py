"""Packaging: `models/` ships as `carkinetics.models` (with its preset data) and nothing as a bare `models`."""

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import carkinetics
import carkinetics.models

ROOT = Path(__file__).resolve().parents[1]


def test_models_package_is_the_repository_models_folder():
    assert Path(carkinetics.models.__file__).resolve() == (ROOT / "models" / "__init__.py").resolve()
    assert hasattr(carkinetics.models, "OneCompartmentPK")


@pytest.mark.slow
def test_wheel_contains_models_under_carkinetics_only(tmp_path):
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps", "-q", "-w", str(tmp_path)],
        check=True,
        capture_output=True,
    )
    (whl,) = tmp_path.glob("carkinetics-*.whl")
    names = zipfile.ZipFile(whl).namelist()
    assert "carkinetics/models/__init__.py" in names
    assert "carkinetics/models/pk.py" in names
    assert not any(n.startswith("models/") for n in names)
    assert "carkinetics/models/sle/__init__.py" in names  # the SLE application, a subpackage of the models
    presets = sorted((ROOT / "models" / "sle" / "presets").glob("*.toml"))
    assert presets  # the species presets ship with the SLE application
    for p in presets:
        assert f"carkinetics/models/sle/presets/{p.name}" in names
