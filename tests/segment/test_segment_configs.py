"""Every shipped config loads, validates and builds its network."""

from pathlib import Path

import pytest

from mricore.config import load_config
from segment.config import SegmentConfig
from segment.networks import build_network

CONFIGS = sorted(p for p in (Path(__file__).resolve().parents[2] / "configs" / "segment").glob("*.yaml")
                 if not p.name.startswith("pretrain_"))  # `segment pretrain` configs: tests/segment/test_pretrain.py


def test_the_expected_configs_exist():
    names = {p.stem for p in CONFIGS}
    # default 2D, 3D, DynUNet, SegResNet, 2.5D, T2W+ADC
    assert {"zonal_t2w_2d", "zonal_t2w_3d", "zonal_t2w_dynunet_2d", "zonal_t2w_segresnet_2d",
            "zonal_t2w_25d", "zonal_t2w_adc_2d"} <= names


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_config_loads_and_builds(path):
    cfg = load_config(SegmentConfig, path)
    assert cfg.name == path.stem  # model folders are named after the config
    net = build_network(cfg.model, len(cfg.preprocess.channels))
    assert sum(p.numel() for p in net.parameters()) > 0
