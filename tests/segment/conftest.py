"""Fixtures for segment tests: tiny configs on the real cases and one tiny trained model folder.

Tiny = U-Net channels [8, 16], one stride, 64x64 patches on a 64 mm FOV at 1 mm, 1-2 epochs of 2-3
iterations: seconds per run on 2 cores, still the full code path on real volumes.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from segment_helpers import tiny_config


@pytest.fixture(scope="session")
def tiny_model(data_dir, tmp_path_factory) -> Path:
    """A tiny 2D U-Net trained on every expert-labelled case (fold 'all'); shared, treat as read-only."""
    from segment.train import train

    out = tmp_path_factory.mktemp("tiny_model")
    return train(tiny_config(data_dir, out), "all", progress=False)
