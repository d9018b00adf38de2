"""Shared test fixtures: the real data folder and small seeded helpers."""

from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """../shared/data beside the repository; tests that need it skip with the reason when absent."""
    if not DATA.is_dir():
        pytest.skip(f"real data folder {DATA} is absent (CI has it beside the repository)")
    return DATA


@pytest.fixture
def rng():
    return np.random.default_rng(0)
