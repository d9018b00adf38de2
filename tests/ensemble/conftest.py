"""Tiny ensemble members trained once per session on cropped real data (seconds, not minutes).

Members (all on prostatex/ProstateX-0000 with its AI zones, 1 epoch of 3 iterations, U-Net [8, 16]):
- t2_a: T2W, 120 mm field of view;
- t2_b: T2W, a different seed and a 100 mm field of view (a second preprocessing spec);
- t2_adc: T2W + ADC (ADC on its own grid in the source, resampled onto T2W).
They are far from accurate; the tests check plumbing, geometry and bookkeeping, not DSC.
"""

from pathlib import Path

import pytest

from mricore.config import from_dict

CASE = "prostatex/ProstateX-0000"


def _train(root: Path, out: Path, name: str, channels: list, crop: float, seed: int) -> Path:
    from segment.config import SegmentConfig
    from segment.train import train

    cfg = from_dict(SegmentConfig, {
        "name": name, "output_dir": str(out),
        "data": {"root": str(root), "label": "zones_ai"},
        "preprocess": {"channels": channels, "target_spacing": [1.2, 1.2, None], "crop_mm": [crop, crop]},
        "model": {"channels": [8, 16], "strides": [2], "num_res_units": 0, "dropout": 0.0},
        "augment": {"mode": "none"},
        "train": {"epochs": 1, "iters_per_epoch": 3, "batch_size": 2, "patch": [64, 64], "seed": seed, "selection": "fixed",
                  "tensorboard": False},
        "predict": {"sw_batch_size": 32},
    }, "test members")
    return train(cfg, "all", progress=False)


@pytest.fixture(scope="session")
def members(data_dir, tmp_path_factory) -> dict:
    """{name: model folder} of the three tiny members above."""
    out = tmp_path_factory.mktemp("members")
    root = data_dir / CASE
    return {"t2_a": _train(root, out, "t2_a", ["T2W"], 120.0, 0),
            "t2_b": _train(root, out, "t2_b", ["T2W"], 100.0, 1),
            "t2_adc": _train(root, out, "t2_adc", ["T2W", "ADC"], 120.0, 2)}
