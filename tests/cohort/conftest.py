"""Fixtures of the cohort tests: the small BIDS dataset of ``_bids_data.py``, built once per session."""

from __future__ import annotations

import pytest
from _bids_data import build_dataset


@pytest.fixture(scope="session")
def bids_dataset(tmp_path_factory):
    """The dataset (sub-01, sub-02 from the demo subject; sub-03 ses-1/ses-2 simulated; sub-04 corrupt).
    Read-only: tests that change it work on a copy."""
    return build_dataset(tmp_path_factory.mktemp("cohort") / "bids")
