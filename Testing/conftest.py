"""Shared fixtures: paths to the real test data in ../shared, tiny network configs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("UNETRPP_SHARED", REPO.parent / "shared")).resolve()
PARITY = SHARED / "parity"
DATA = SHARED / "data"


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
