"""Shared fixtures: paths to the real test data in ../shared, tiny network configs."""

from __future__ import annotations

import os
from pathlib import Path

import sys

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("UNETRPP_SHARED", REPO.parent / "shared")).resolve()
PARITY = SHARED / "parity"
DATA = SHARED / "data"
PIPELINE = SHARED / "pipeline"

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the `support` helpers


def require(path: Path) -> Path:
    if not path.exists():
        pytest.fail(f"test data {path} is missing: clone the project with ../shared beside it (or set UNETRPP_SHARED)")
    return path


@pytest.fixture(scope="session")
def parity_dir() -> Path:
    return require(PARITY)


@pytest.fixture(scope="session")
def data_dir() -> Path:
    return require(DATA)


@pytest.fixture(scope="session")
def pipeline_dir() -> Path:
    """Official whole-pipeline references (../shared/pipeline/README.md)."""
    return require(PIPELINE)


@pytest.fixture(scope="session")
def tiny_synapse_package(tmp_path_factory) -> Path:
    from support.packages import make_tiny_package

    return make_tiny_package(tmp_path_factory.mktemp("pkg") / "synapse-tiny")
