"""A segmenter exported to ONNX (`ensemble export`), run by ONNX Runtime without importing PyTorch or
MONAI: the same `probabilities(array)` as segment.torch_segmenter.Segmenter, to the same numbers.

An exported model folder holds `model.onnx` and `model.json` (the segmenter's, plus an `onnx` block:
opset, and `importance.npy`, the Gaussian window weights MONAI's sliding window uses, saved at export
so the blending here is MONAI's). The inference rules are those of the PyTorch path: 2D models run
whole slices (edge-padded to the size divisor, centred) unless the network normalises per instance;
otherwise windows of the training patch at `predict.overlap`, placed as monai.data.utils
.dense_patch_slices places them, blended with the importance map. Outputs are decoded by the model's
label scheme (softmax, or the WG/TZ sigmoids). tests/ensemble/test_export.py checks the parity.
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np

from mricore.errors import InputError
from mricore.modelfolder import ModelMeta

from .config import PredictConfig, segmenter_configs
from .segmenter import VolumePredictor
from .windows import (centre_pad, crop, network_input, runs_whole_slices, size_divisor, whole_slices, window_starts,
                      with_whole_slice, working_layout)


def class_probabilities(logits: np.ndarray, scheme: str) -> np.ndarray:
    """(N, outputs, ...) logits -> (N, 3, ...) background/TZ/PZ probabilities (segment.networks rule)."""
    logits = logits.astype(np.float32, copy=False)
    if scheme == "multiclass":
        e = np.exp(logits - logits.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)
    wg, tz = 1 / (1 + np.exp(-logits[:, 0:1])), 1 / (1 + np.exp(-logits[:, 1:2]))
    tz = np.minimum(tz, wg)
    return np.concatenate([1 - wg, tz, wg - tz], axis=1)


_ARENA_LOCK = threading.Lock()
_ARENA: list = []  # the registered allocator's memory info, once per process


def shared_arena(ort) -> None:
    """Register one CPU arena allocator in ONNX Runtime's process environment (once); sessions made
    with `session.use_env_allocators` then share it instead of each keeping its own."""
    with _ARENA_LOCK:
        if not _ARENA:
            info = ort.OrtMemoryInfo("Cpu", ort.OrtAllocatorType.ORT_ARENA_ALLOCATOR, 0, ort.OrtMemType.DEFAULT)
            ort.create_and_register_allocator(info, ort.OrtArenaCfg(0, -1, -1, -1))  # ORT's defaults
            _ARENA.append(info)


class OnnxSegmenter(VolumePredictor):
    """A model folder with model.onnx (described by `meta`, mricore.modelfolder.read_model), run with
    ONNX Runtime on the CPU."""

    def __init__(self, folder: str | Path, meta: ModelMeta, threads: int | None = None):
        import onnxruntime as ort

        folder = Path(folder)
        self.meta = meta
        self.model_cfg, self.predict_cfg = segmenter_configs(meta, folder)
        self.spec = meta.preprocess
        self.patch = list(meta.patch)
        self.name = folder.name
        opts = ort.SessionOptions()
        # One memory arena for every session of the process (shared_arena): an arena per session keeps
        # its largest activations for the life of the session, about 60 MB a member, and the bundle holds
        # ten; no arena at all frees and re-faults every buffer of every layer, about 15 % more network
        # time. Shared, the ten sessions hold one member's peak (bench/onnx_runtime.py measures the three).
        shared_arena(ort)
        opts.add_session_config_entry("session.use_env_allocators", "1")
        # Worker threads sleep between operators instead of spinning: a spinning pool burns the cores
        # that the cohort's reading and writing threads need (22-study cohort, 2 workers: 54 -> 41 s
        # together with the shared arena; one study, 2.4 -> 2.1 s; maps identical).
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        if threads:
            opts.intra_op_num_threads = threads
        try:
            self.session = ort.InferenceSession(str(folder / "model.onnx"), opts, providers=["CPUExecutionProvider"])
        except Exception as e:  # InvalidProtobuf, Fail, ...
            raise InputError(folder / "model.onnx", "ONNX model could not be loaded", type(e).__name__,
                             "export it again with `ensemble export`") from None
        self.input = self.session.get_inputs()[0].name
        self.importance = np.load(folder / "importance.npy") if (folder / "importance.npy").exists() else None

    def _net(self, x: np.ndarray) -> np.ndarray:
        b = max(1, self.predict_cfg.sw_batch_size)
        return np.concatenate([self.session.run(None, {self.input: np.ascontiguousarray(x[i:i + b])})[0]
                               for i in range(0, len(x), b)])

    def _windows(self, x: np.ndarray) -> np.ndarray:
        """MONAI's sliding window: pad up to the patch, windows at dense_patch_slices, Gaussian blend."""
        size = x.shape[2:]
        xp, pads = centre_pad(x, [max(s, p) for s, p in zip(size, self.patch)])
        starts = [window_starts(s, p, self.predict_cfg.overlap) for s, p in zip(xp.shape[2:], self.patch)]
        grid = np.stack(np.meshgrid(*starts, indexing="ij"), -1).reshape(-1, len(starts))
        boxes = [tuple(slice(s, s + p) for s, p in zip(g, self.patch)) for g in grid]
        w = self.importance if self.predict_cfg.mode == "gaussian" else np.ones(self.patch, np.float32)
        norm = np.zeros(xp.shape[2:], np.float32)
        for box in boxes:
            norm[box] += w
        out = None
        for n in range(len(x)):
            logits = self._net(np.stack([xp[n][(slice(None),) + box] for box in boxes]))
            if out is None:
                out = np.zeros((len(x), logits.shape[1]) + xp.shape[2:], np.float32)
            for box, t in zip(boxes, logits):
                out[(n, slice(None)) + box] += w * t
        return crop(out / norm, pads, size)

    def _run(self, x: np.ndarray, p: PredictConfig) -> np.ndarray:
        logits = (whole_slices(x, self._net, size_divisor(self.model_cfg))
                  if runs_whole_slices(self.model_cfg, p, x.shape[2:]) else self._windows(x))
        return class_probabilities(logits, self.model_cfg.label_scheme)

    def probabilities(self, array: np.ndarray, tta_flip: bool | None = None,
                      whole_slice: bool | None = None) -> np.ndarray:
        """(C, I, J, K) normalised array on the working grid -> (3, I, J, K) float32 probabilities.
        tta_flip: average with the left-right flipped input (default: predict.tta_flip).
        whole_slice: 2D slices in one pass (True) or in windows (False); default: predict.whole_slice."""
        p = with_whole_slice(self.predict_cfg, whole_slice)
        x = network_input(array, self.model_cfg)
        prob = self._run(x, p)
        if p.tta_flip if tta_flip is None else tta_flip:  # left-right flip: voxel axis i
            prob = 0.5 * (prob + self._run(x[:, :, ::-1].copy(), p)[:, :, ::-1])
        return working_layout(prob, self.model_cfg)
