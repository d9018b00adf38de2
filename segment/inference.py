"""Sliding-window inference of one segmenter on a preprocessed array, and post-processing.

`Segmenter.probabilities(prepared.array)` -> (3, I, J, K) float32 background/TZ/PZ probabilities on
the working grid. 2D models run slice-wise (2.5D stacks neighbours as channels): by default each
whole slice in one pass, edge-padded to a multiple of the network's size divisor and cropped back
(`predict.whole_slice`; a prostate working slice of ~200 x 200 px would otherwise go through 2 x 2
overlapping 160-px tiles, 2.6x the pixels); 3D models, and slices larger than `predict.max_slice_px`,
use a sliding window blended with a Gaussian. Optional left-right flip test-time augmentation.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from mricore.config import from_dict
from mricore.errors import InputError
from mricore.modelfolder import check_meta, load_weights, read_model_meta
from mricore.preprocess import PreprocessSpec

from .config import ModelConfig, PredictConfig
from .networks import build_network, class_probabilities
from .windows import runs_whole_slices, size_divisor, slices_with_context, uses_whole_slices, whole_slices


class Segmenter:
    """A network plus everything needed to run it: built from a model folder or from parts."""

    def __init__(self, net: torch.nn.Module, model_cfg: ModelConfig, spec: PreprocessSpec, patch: list[int],
                 predict_cfg: PredictConfig | None = None, meta: dict | None = None, name: str = ""):
        self.net = net.eval()
        self.model_cfg, self.spec, self.patch = model_cfg, spec, list(patch)
        self.predict_cfg = predict_cfg or PredictConfig()
        self.meta = meta or {}
        self.name = name

    @classmethod
    def load(cls, folder: str | Path, meta: dict | None = None) -> "Segmenter":
        """Build the network of a model folder and load its weights; `meta` is its model.json when the
        caller has read it already (an ensemble reads each member's once)."""
        folder = Path(folder)
        meta = check_meta(read_model_meta(folder) if meta is None else meta, folder, "segmenter")
        mcfg = from_dict(ModelConfig, meta["model"], f"{folder}/model.json", "model.")
        spec = from_dict(PreprocessSpec, meta["preprocess"], f"{folder}/model.json", "preprocess.")
        pcfg = from_dict(PredictConfig, meta.get("predict", {}), f"{folder}/model.json", "predict.")
        net = build_network(mcfg, len(spec.channels))
        try:
            net.load_state_dict(load_weights(folder))
        except (RuntimeError, TypeError) as e:
            raise InputError(folder / "weights.pt", "weights do not match the architecture in model.json",
                             str(e).splitlines()[0][:120], "re-export the model folder") from None
        return cls(net, mcfg, spec, meta["patch"], pcfg, meta, folder.name)

    @property
    def channels(self) -> list[str]:
        return list(self.spec.channels)

    @property
    def whole_slice(self) -> bool:
        return uses_whole_slices(self.model_cfg, self.predict_cfg)

    def _run(self, x: torch.Tensor) -> torch.Tensor:
        from monai.inferers import sliding_window_inference

        p = self.predict_cfg
        if runs_whole_slices(self.model_cfg, p, x.shape[2:]):
            return class_probabilities(self._whole_slices(x), self.model_cfg.label_scheme)
        # 3D: the full training patch; a volume with fewer slices is padded by the inferer, so any
        # slice count works with networks that need sizes divisible by their total stride.
        logits = sliding_window_inference(x, self.patch, p.sw_batch_size, FixedBatch(self.net, p.sw_batch_size),
                                          overlap=p.overlap, mode=p.mode, padding_mode="replicate")
        return class_probabilities(logits, self.model_cfg.label_scheme)

    def _whole_slices(self, x: torch.Tensor) -> torch.Tensor:
        """(K, C, H, W) slices -> (K, n_out, H, W) logits, each slice whole: edge-padded (centred) to a
        multiple of the size divisor, `sw_batch_size` slices per forward, cropped back."""
        b = max(1, self.predict_cfg.sw_batch_size)

        def run(xp: np.ndarray) -> np.ndarray:
            return torch.cat([self.net(torch.from_numpy(xp[i:i + b])) for i in range(0, len(xp), b)]).numpy()
        return torch.from_numpy(whole_slices(x.numpy(), run, size_divisor(self.model_cfg)))

    @torch.inference_mode()
    def probabilities(self, array: np.ndarray) -> np.ndarray:
        """(C, I, J, K) normalised array on the working grid -> (3, I, J, K) float32 probabilities.
        Always in eval mode: dropout off, BatchNorm on its running statistics (never updated here)."""
        self.net.eval()
        if self.model_cfg.spatial_dims == 2:
            x = torch.from_numpy(slices_with_context(array, self.model_cfg.context))  # (K, C', I, J)
        else:
            x = torch.from_numpy(np.ascontiguousarray(array))[None]                  # (1, C, I, J, K)
        prob = self._run(x)
        if self.predict_cfg.tta_flip:  # left-right flip: voxel axis i
            prob = 0.5 * (prob + self._run(x.flip(2)).flip(2))
        prob = prob.numpy()
        return np.ascontiguousarray(prob.transpose(1, 2, 3, 0) if self.model_cfg.spatial_dims == 2 else prob[0])


class FixedBatch(torch.nn.Module):
    """Run `net` on batches padded (with zeros) to `size` and return only the real rows.

    Why: on CPU, torch sends a batch-1 Conv3d to the slow `slow_conv3d` kernel instead of oneDNN
    (measured 0.46 s for one 96x96x16 window at batch 1 vs 0.19 s for two at batch 2; see
    bench/segment_bench.py), and the last sliding-window batch or a small volume is often a single
    window. Padding costs at most sw_batch_size - 1 extra windows and keeps every call one shape.
    Rows are independent in eval mode (batch norm uses running statistics), so outputs match.
    """

    def __init__(self, net: torch.nn.Module, size: int):
        super().__init__()
        self.net, self.size = net, max(2, int(size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        if n >= self.size:
            return self.net(x)
        pad = x.new_zeros((self.size - n,) + tuple(x.shape[1:]))
        return self.net(torch.cat([x, pad]))[:n]


def timed(fn, *a, **k):
    t = time.perf_counter()
    out = fn(*a, **k)
    return out, time.perf_counter() - t
