"""Helpers for segment tests: tiny configs on the real cases."""

from __future__ import annotations

from pathlib import Path

from mricore.config import load_config
from segment.config import SegmentConfig

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_CONFIG = ROOT / "configs" / "segment" / "zonal_t2w_2d.yaml"


def tiny_overrides(data_dir: Path, out: Path, **extra) -> list[str]:
    """--set overrides that make the default config tiny; `extra` adds/replaces keys (dotted with __)."""
    sets = {
        "data.root": str(data_dir), "output_dir": str(out), "train.epochs": 1, "train.iters_per_epoch": 2,
        "train.batch_size": 2, "model.channels": "[8, 16]", "model.strides": "[2]", "train.patch": "[64, 64]",
        "preprocess.target_spacing": "[1.0, 1.0, null]", "preprocess.crop_mm": "[64.0, 64.0]",
        "train.tensorboard": "false", "predict.sw_batch_size": 4,
    }
    sets.update({k.replace("__", "."): v for k, v in extra.items()})
    return [f"{k}={v}" for k, v in sets.items()]


def tiny_config(data_dir: Path, out: Path, **extra) -> SegmentConfig:
    return load_config(SegmentConfig, DEFAULT_CONFIG, tiny_overrides(data_dir, out, **extra))
