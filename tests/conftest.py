"""Shared fixtures and skips: seeded RNG; CUDA and BART tests skipped where those are missing.

No test reads anything outside the checkout: the real-subject checks use the demo stacks bundled with
the package (``gaussian_mri/data/``), the atlas-based simulations a crop of a CC0 fetal atlas in
``tests/data/`` (see its SOURCE.md). Only hardware (CUDA) and optional external peers (BART, sigpy)
are skipped when absent, with a reason that says how to enable them.
"""

from __future__ import annotations

import pytest
import torch


@pytest.fixture
def one_thread():
    """One torch thread for short fits: the test machines are shared, and OpenMP oversubscription makes
    small fits many times slower."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


BART_SKIP = (
    "optional peer: BART is not installed (to run the BART comparisons: apt-get install bart, as .ci/run does, "
    "or point $BART_EXECUTABLE at a bart binary)"
)


def pytest_collection_modifyitems(config, items):
    """GPU tests (marker ``cuda``) run only where PyTorch sees a CUDA device; BART comparisons (marker
    ``bart``) only where a ``bart`` binary is found. Nothing else is skipped here."""
    from gaussian_mri.mri.bart import bart_available

    skip_cuda = pytest.mark.skip(
        reason="hardware: needs a CUDA GPU and a CUDA build of PyTorch (torch.cuda.is_available() is False here); "
        "runs by itself on such a machine"
    )
    skip_bart = pytest.mark.skip(reason=BART_SKIP)
    has_cuda = torch.cuda.is_available()
    has_bart = bart_available()
    for item in items:
        if "cuda" in item.keywords and not has_cuda:
            item.add_marker(skip_cuda)
        if "bart" in item.keywords and not has_bart:
            item.add_marker(skip_bart)
