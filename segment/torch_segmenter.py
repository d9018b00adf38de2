"""A segmenter applied to a volume: `Segmenter.predict(volume)` preprocesses, runs the network and
restores zones and probabilities onto the input grid (segment.segmenter); `Segmenter.probabilities(
prepared.array)` is the lower-level call on an already preprocessed array -> (3, I, J, K) float32
background/TZ/PZ probabilities on the working grid (the ensemble preprocesses once per spec and calls it). 2D models run slice-wise (2.5D stacks neighbours as channels): by default each
whole slice in one pass, edge-padded to a multiple of the network's size divisor and cropped back
(`predict.whole_slice`; a prostate working slice of ~200 x 200 px would otherwise go through 2 x 2
overlapping 160-px tiles, 2.6x the pixels); 3D models, and slices larger than `predict.max_slice_px`,
use a sliding window blended with a Gaussian. Optional left-right flip test-time augmentation.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from mricore.config import to_dict
from mricore.errors import InputError
from mricore.modelfolder import ModelMeta, load_weights, read_model, write_model
from mricore.preprocess import PreprocessSpec
from mricore.zones import LABEL_NAMES

from .config import ModelConfig, PredictConfig, segmenter_configs
from .networks import build_network, class_probabilities
from .segmenter import VolumePredictor
from .windows import (network_input, runs_whole_slices, size_divisor, uses_whole_slices, whole_slices,
                      with_whole_slice, working_layout)

OUTPUTS = "class probabilities (background, TZ, PZ); WG = TZ + PZ"


class Segmenter(VolumePredictor):
    """A network plus everything needed to run it: built from a model folder or from parts."""

    def __init__(self, net: torch.nn.Module, model_cfg: ModelConfig, spec: PreprocessSpec, patch: list[int],
                 predict_cfg: PredictConfig | None = None, meta: ModelMeta | None = None, name: str = ""):
        self.net = net.eval()
        self.model_cfg, self.spec, self.patch = model_cfg, spec, list(patch)
        self.predict_cfg = predict_cfg or PredictConfig()
        self.meta = meta or self.describe()
        self.name = name

    @classmethod
    def load(cls, folder: str | Path, meta: ModelMeta | None = None) -> "Segmenter":
        """Build the network of a model folder and load its weights; `meta` is its description when the
        caller has read it already (an ensemble reads each member's once)."""
        folder = Path(folder)
        meta = read_model(folder, "segmenter") if meta is None else meta
        mcfg, pcfg = segmenter_configs(meta, folder)
        net = build_network(mcfg, len(meta.channels))
        try:
            net.load_state_dict(load_weights(folder))
        except (RuntimeError, TypeError) as e:
            raise InputError(folder / "weights.pt", "weights do not match the architecture in model.json",
                             str(e).splitlines()[0][:120], "re-export the model folder") from None
        return cls(net, mcfg, meta.preprocess, meta.patch, pcfg, meta, folder.name)

    def describe(self, **record) -> ModelMeta:
        """The model folder description of this segmenter; `record` adds the training record (name,
        fold, best_epoch, history_epochs, selection, validation)."""
        return ModelMeta("segmenter", to_dict(self.model_cfg), self.spec, patch=list(self.patch),
                         predict=to_dict(self.predict_cfg), labels=dict(LABEL_NAMES), outputs=OUTPUTS, **record)

    def save(self, folder: str | Path, **record) -> Path:
        """Write this segmenter as a model folder (weights and model.json; see `describe`)."""
        return write_model(folder, self.describe(**record), self.net.state_dict())

    @property
    def whole_slice(self) -> bool:
        return uses_whole_slices(self.model_cfg, self.predict_cfg)

    def tiled(self, x: torch.Tensor, fn, p: PredictConfig | None = None) -> torch.Tensor:
        """`fn` (network input batch -> output batch) applied the way inference applies the network:
        2D slices (K, C, H, W) whole, edge-padded to the size divisor, `sw_batch_size` per call; else
        windows of the training patch blended as MONAI's sliding window blends them. Grad-CAM runs
        through here too, so it explains the inference that wrote the map. p: predict settings
        (default: the model's own)."""
        p = p or self.predict_cfg
        if runs_whole_slices(self.model_cfg, p, x.shape[2:]):
            b = max(1, p.sw_batch_size)

            def run(xp: np.ndarray) -> np.ndarray:
                return torch.cat([fn(torch.from_numpy(xp[i:i + b])) for i in range(0, len(xp), b)]).numpy()
            return torch.from_numpy(whole_slices(x.numpy(), run, size_divisor(self.model_cfg)))
        from monai.inferers import sliding_window_inference

        # 3D: the full training patch; a volume with fewer slices is padded by the inferer, so any
        # slice count works with networks that need sizes divisible by their total stride.
        return sliding_window_inference(x, self.patch, p.sw_batch_size, FixedBatch(fn, p.sw_batch_size),
                                        overlap=p.overlap, mode=p.mode, padding_mode="replicate")

    def logits(self, x: torch.Tensor, p: PredictConfig | None = None) -> torch.Tensor:
        """Network input (slices or one volume, see segment.windows.network_input) -> logits."""
        return self.tiled(x, self.net, p)

    @torch.inference_mode()
    def probabilities(self, array: np.ndarray, tta_flip: bool | None = None,
                      whole_slice: bool | None = None) -> np.ndarray:
        """(C, I, J, K) normalised array on the working grid -> (3, I, J, K) float32 probabilities.
        tta_flip: average with the left-right flipped input (default: predict.tta_flip).
        whole_slice: 2D slices in one pass (True) or in windows (False); default: predict.whole_slice.
        Always in eval mode: dropout off, BatchNorm on its running statistics (never updated here)."""
        self.net.eval()
        p = with_whole_slice(self.predict_cfg, whole_slice)
        x = torch.from_numpy(network_input(array, self.model_cfg))
        prob = class_probabilities(self.logits(x, p), self.model_cfg.label_scheme)
        if p.tta_flip if tta_flip is None else tta_flip:  # left-right flip: voxel axis i
            prob = 0.5 * (prob + class_probabilities(self.logits(x.flip(2), p), self.model_cfg.label_scheme).flip(2))
        return working_layout(prob.numpy(), self.model_cfg)


class FixedBatch(torch.nn.Module):
    """Run `net` on batches padded (with zeros) to `size` and return only the real rows.

    Why: on CPU, torch sends a batch-1 Conv3d to the slow `slow_conv3d` kernel instead of oneDNN
    (measured 0.46 s for one 96x96x16 window at batch 1 vs 0.19 s for two at batch 2; see
    bench/segment_bench.py), and the last sliding-window batch or a small volume is often a single
    window. Padding costs at most sw_batch_size - 1 extra windows and keeps every call one shape.
    Rows are independent in eval mode (batch norm uses running statistics), so outputs match.
    """

    def __init__(self, net, size: int):
        super().__init__()
        self.net, self.size = net, max(2, int(size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        if n >= self.size:
            return self.net(x)
        pad = x.new_zeros((self.size - n,) + tuple(x.shape[1:]))
        return self.net(torch.cat([x, pad]))[:n]
