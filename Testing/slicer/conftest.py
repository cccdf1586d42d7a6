"""Fixtures for the headless Slicer tests (slicer-core): a fresh MRML scene per test, volumes read
from ../shared/data through storage nodes, and small real model packages (tiny UNETR++ configs with
deterministic weights and the official manifests of a variant). UNETRPP_HOME points at a private
folder so that no test reads or changes the user's model cache."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

MODULE_DIR = Path(__file__).resolve().parents[2] / "UNETRPlusPlus"
sys.path.insert(0, str(MODULE_DIR))  # UNETRPlusPlusLib, as Slicer puts the module folder on sys.path
sys.path.insert(0, str(Path(__file__).resolve().parent))  # slicer_support

slicer = pytest.importorskip("slicer", reason="slicer-core is not installed (pip install -e .[dev])")

from slicer_support import load_volume, make_package  # noqa: E402,F401


@pytest.fixture(scope="session", autouse=True)
def private_model_home(tmp_path_factory):
    import os

    old = os.environ.get("UNETRPP_HOME")
    os.environ["UNETRPP_HOME"] = str(tmp_path_factory.mktemp("unetrpp-home"))
    yield Path(os.environ["UNETRPP_HOME"])
    if old is None:
        os.environ.pop("UNETRPP_HOME", None)
    else:
        os.environ["UNETRPP_HOME"] = old


@pytest.fixture(scope="session")
def synapse_pkg(tmp_path_factory) -> Path:
    return make_package(tmp_path_factory.mktemp("slicer-pkg") / "synapse-tiny-test", "synapse", spacing=(8.0, 8.0, 8.0))


@pytest.fixture(scope="session")
def slow_pkg(tmp_path_factory) -> Path:
    """The same tiny network on a fine grid: minutes of work, for cancelling mid-run."""
    return make_package(tmp_path_factory.mktemp("slicer-pkg") / "synapse-slow", "synapse", spacing=(3.0, 3.0, 3.0))


@pytest.fixture(scope="session")
def brats_pkg(tmp_path_factory) -> Path:
    return make_package(tmp_path_factory.mktemp("slicer-pkg") / "brats-tiny-test", "brats", spacing=(6.0, 6.0, 6.0))


@pytest.fixture()
def scene():
    s = slicer.vtkMRMLScene()
    previous = getattr(slicer, "mrmlScene", None)
    slicer.mrmlScene = s
    yield s
    s.Clear(1)
    slicer.mrmlScene = previous
