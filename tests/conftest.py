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


def pytest_collection_modifyitems(config, items):
    """GPU tests run only where PyTorch sees a CUDA device; BART tests only where `bart` is installed."""
    import shutil

    skip_cuda = pytest.mark.skip(reason="needs a CUDA GPU (torch.cuda.is_available() is False)")
    skip_bart = pytest.mark.skip(reason="needs BART on PATH (Debian package 'bart'; .ci/run installs it)")
    has_cuda = torch.cuda.is_available()
    has_bart = shutil.which("bart") is not None
    for item in items:
        if "cuda" in item.keywords and not has_cuda:
            item.add_marker(skip_cuda)
        if "bart" in item.keywords and not has_bart:
            item.add_marker(skip_bart)
