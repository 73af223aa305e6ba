"""Shared fixtures: seeded RNG, paths to ../shared data."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
FETAL = SHARED / "data" / "fetal"


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


@pytest.fixture
def fetal_dir() -> Path:
    if not FETAL.is_dir():
        pytest.skip(f"shared fetal data not found at {FETAL} (CI checks out ../shared beside the repo)")
    return FETAL
