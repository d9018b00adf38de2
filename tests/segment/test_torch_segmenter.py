"""Inference speed path: no Conv3d runs on `slow_conv3d`, and the fixed-batch padding that keeps
it off that path does not change the output."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.profiler import profile

from segment.config import ModelConfig, PredictConfig
from segment.torch_segmenter import FixedBatch, Segmenter
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


def _tiny_2d(norm: str, **predict) -> Segmenter:
    torch.manual_seed(0)
    name = "unet" if norm == "batch" else "dynunet"
    cfg = ModelConfig(name=name, spatial_dims=2, channels=[4, 8, 16], strides=[2, 2], dropout=0.0, norm=norm,
                      num_res_units=1)
    from segment.networks import build_network

    net = build_network(cfg, 1)
    net.eval()
    return Segmenter(net, cfg, PreprocessSpec(), [32, 32], PredictConfig(**predict))


def test_whole_slices_by_default_unless_instance_norm():
    assert _tiny_2d("batch").whole_slice and not _tiny_2d("instance").whole_slice
    assert _tiny_2d("instance", whole_slice=True).whole_slice and not _tiny_2d("batch", whole_slice=False).whole_slice


@pytest.mark.parametrize("norm", ["batch", "instance"])
def test_whole_slice_equals_one_window_of_the_padded_size(norm):
    """A whole slice is the sliding window whose single window is the slice padded to the divisor (4):
    odd sizes are padded, run once and cropped back on the right pixels."""
    from monai.inferers import sliding_window_inference

    seg = _tiny_2d(norm, whole_slice=True, sw_batch_size=3)
    x = torch.randn(5, 1, 45, 38)
    with torch.inference_mode():
        whole = seg.logits(x)  # whole slices: predict.whole_slice and 45 x 38 <= max_slice_px
        window = sliding_window_inference(x, (48, 40), 3, seg.net, overlap=0.0, padding_mode="replicate")
    assert whole.shape == (5, 3, 45, 38)
    torch.testing.assert_close(whole, window, atol=1e-5, rtol=1e-5)
    prob = seg.probabilities(np.random.default_rng(0).normal(size=(1, 45, 38, 5)).astype(np.float32))
    assert prob.shape == (3, 45, 38, 5) and np.allclose(prob.sum(axis=0), 1, atol=1e-5)


def test_whole_slice_argument_overrides_the_model_setting():
    """probabilities(whole_slice=...) (an ensemble's `whole_slice`) runs as if predict.whole_slice were
    set: an instance-norm model on windows by default gives other maps than on whole slices."""
    vol = np.random.default_rng(2).normal(size=(1, 45, 38, 3)).astype(np.float32)
    tiles = _tiny_2d("instance", sw_batch_size=2)
    whole = _tiny_2d("instance", whole_slice=True, sw_batch_size=2)
    default, forced = tiles.probabilities(vol), tiles.probabilities(vol, whole_slice=True)
    np.testing.assert_allclose(forced, whole.probabilities(vol), atol=1e-6)
    assert np.abs(forced - default).max() > 1e-3  # 45 x 38 is more than one 32-px window
    np.testing.assert_allclose(whole.probabilities(vol, whole_slice=False), default, atol=1e-6)
