"""Inference speed path: no Conv3d runs on `slow_conv3d`, and the fixed-batch padding that keeps
it off that path does not change the output."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.profiler import profile

from segment.config import ModelConfig, PredictConfig
from segment.inference import FixedBatch, Segmenter
from mricore.preprocess import PreprocessSpec

SLOW = {"aten::slow_conv3d_forward", "aten::slow_conv3d"}


def _tiny_3d(sw_batch_size: int) -> Segmenter:
    torch.manual_seed(0)
    cfg = ModelConfig(spatial_dims=3, channels=[4, 8], strides=[2], dropout=0.0)
    from segment.networks import build_network

    return Segmenter(build_network(cfg, 1), cfg, PreprocessSpec(), [32, 32, 8],
                     PredictConfig(sw_batch_size=sw_batch_size, overlap=0.25))


def _ops(fn) -> set[str]:
    with profile() as p:
        fn()
    return {e.key for e in p.key_averages()}


def test_profiler_sees_slow_conv3d_at_batch_1():
    # Guard for the test below: the profiler reports the op when a batch-1 Conv3d runs eagerly.
    seg = _tiny_3d(1)
    with torch.inference_mode():
        ops = _ops(lambda: seg.net(torch.randn(1, 1, 32, 32, 8)))
    assert ops & SLOW


@pytest.mark.parametrize("sw_batch_size", [1, 4])  # even a configured batch of 1 is padded
def test_3d_prediction_never_runs_slow_conv3d(sw_batch_size):
    seg = _tiny_3d(sw_batch_size)
    vol = np.random.default_rng(0).normal(size=(1, 40, 36, 5)).astype(np.float32)  # fewer slices than the patch
    ops = _ops(lambda: seg.probabilities(vol))
    assert "aten::convolution" in ops
    assert not ops & SLOW, sorted(ops & SLOW)


def test_fixed_batch_matches_eager():
    seg = _tiny_3d(4)
    x = torch.randn(3, 1, 32, 32, 8)
    with torch.inference_mode():
        plain = torch.cat([seg.net(x[i: i + 1]) for i in range(3)])
        padded = FixedBatch(seg.net, 4)(x)
    torch.testing.assert_close(padded, plain, rtol=1e-4, atol=1e-5)


def test_3d_probabilities_on_the_working_grid():
    seg = _tiny_3d(2)
    vol = np.random.default_rng(1).normal(size=(1, 40, 36, 5)).astype(np.float32)
    p = seg.probabilities(vol)
    assert p.shape == (3, 40, 36, 5)
    np.testing.assert_allclose(p.sum(0), 1.0, atol=1e-5)
