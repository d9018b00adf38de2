"""Where a 2D/3D segmenter looks, without PyTorch: slices with context, the size divisor, the
whole-slice rule, MONAI's window placement, and centred edge padding.
Shared by the PyTorch path (segment.torch_segmenter) and the ONNX Runtime path (segment.onnx_segmenter)."""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from .config import ModelConfig, PredictConfig


def slices_with_context(array: np.ndarray, context: int) -> np.ndarray:
    """(C, I, J, K) -> (K, C*(2c+1), I, J): each slice with `context` neighbours each side (clamped)."""
    C, I, J, K = array.shape
    idx = np.clip(np.arange(K)[:, None] + np.arange(-context, context + 1)[None, :], 0, K - 1)  # (K, 2c+1)
    out = array[:, :, :, idx]                      # (C, I, J, K, 2c+1)
    return np.ascontiguousarray(out.transpose(3, 0, 4, 1, 2).reshape(K, C * (2 * context + 1), I, J))


def network_input(array: np.ndarray, cfg: ModelConfig) -> np.ndarray:
    """(C, I, J, K) working-grid array -> what the network sees: 2D models (K, C', I, J) slices with
    context, 3D models (1, C, I, J, K); float32."""
    array = array.astype(np.float32, copy=False)
    return slices_with_context(array, cfg.context) if cfg.spatial_dims == 2 else np.ascontiguousarray(array)[None]


def working_layout(out: np.ndarray, cfg: ModelConfig) -> np.ndarray:
    """Inverse of `network_input` for outputs: (K, n, I, J) or (1, n, I, J, K) -> (n, I, J, K)."""
    return np.ascontiguousarray(out.transpose(1, 2, 3, 0) if cfg.spatial_dims == 2 else out[0])


def size_divisor(cfg: ModelConfig) -> int:
    """In-plane sizes the network accepts are multiples of this (the product of its downsampling)."""
    if cfg.name == "segresnet":
        return 2 ** (len(cfg.channels) - 1)
    return int(np.prod(cfg.strides)) if cfg.strides else 1


def uses_whole_slices(model_cfg: ModelConfig, predict_cfg: PredictConfig) -> bool:
    """predict.whole_slice, or by default: whole slices unless the network normalises per instance
    (instance norm computes its statistics over the field of view, so tiles and whole slices differ;
    batch norm in eval mode uses fixed running statistics, so they agree up to the borders)."""
    ws = predict_cfg.whole_slice
    return model_cfg.norm != "instance" if ws is None else ws


def with_whole_slice(predict_cfg: PredictConfig, whole_slice: bool | None) -> PredictConfig:
    """`predict_cfg` with whole_slice set (an ensemble's `whole_slice`), or as it is for None."""
    return predict_cfg if whole_slice is None else dataclasses.replace(predict_cfg, whole_slice=whole_slice)


def window_starts(image: int, patch: int, overlap: float) -> list[int]:
    """Window start positions along one axis, as monai.data.utils.dense_patch_slices."""
    interval = patch if patch == image else max(int(patch * (1 - overlap)), 1)
    num = int(math.ceil(image / interval))
    n = next((d for d in range(num) if d * interval + patch >= image), None)
    return [i * interval - max(i * interval + patch - image, 0) for i in range((n + 1) if n is not None else 1)]


def centre_pad(x: np.ndarray, target) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """Edge-pad the spatial axes of (N, C, ...) up to `target`, half before and the rest after."""
    pads = [(0, 0), (0, 0)] + [((t - s) // 2, (t - s) - (t - s) // 2) for s, t in zip(x.shape[2:], target)]
    return (np.pad(x, pads, mode="edge") if any(p for pair in pads for p in pair) else x), pads[2:]


def crop(out: np.ndarray, pads: list[tuple[int, int]], size) -> np.ndarray:
    """Undo `centre_pad` on (N, C, ...) outputs."""
    return out[(slice(None), slice(None)) + tuple(slice(p[0], p[0] + s) for p, s in zip(pads, size))]


def runs_whole_slices(model_cfg: ModelConfig, predict_cfg: PredictConfig, slice_shape) -> bool:
    """A 2D/2.5D network that `uses_whole_slices`, on slices no larger than predict.max_slice_px."""
    return (model_cfg.spatial_dims == 2 and uses_whole_slices(model_cfg, predict_cfg)
            and max(slice_shape) <= predict_cfg.max_slice_px)


def padded_slice(size, divisor: int) -> list[int]:
    """A slice's size padded up to a multiple of the network's `divisor`: what `whole_slices` feeds it."""
    return [s + (-s) % divisor for s in size]


def whole_slices(x: np.ndarray, run, divisor: int) -> np.ndarray:
    """(K, C, H, W) slices -> (K, outputs, H, W): each slice edge-padded (centred) to a multiple of
    `divisor`, `run` (a network over a batch of padded slices) applied, cropped back."""
    size = x.shape[2:]
    xp, pads = centre_pad(x, padded_slice(size, divisor))
    return crop(run(xp), pads, size)
