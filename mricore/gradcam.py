"""Grad-CAM for classifiers and segmenters (built on monai.visualize.GradCAM), a faithfulness check and a
PNG overlay.

- `check_layer(model, name)` validates a target layer before any work, listing valid names on a miss.
- `class_cam(model, x, layer, ...)`: Grad-CAM of one output logit of a classifier, (N, *spatial) in [0, 1]
  per sample, at the input resolution.
- `RegionScore(net, channel, mask)`: turns a segmenter into a one-number model: the sum of one class's
  logits inside a region (the segmenter's own predicted region for that class, fixed from the clean
  input), so the same Grad-CAM explains "why is this zone here".
- `region_cam(net, x, layer, channel, mask)`: Grad-CAM of that score, not normalised per sample (a 2D
  segmenter runs slice-wise; normalising per slice would make every slice look equally important).
- `faithfulness(score_fn, x, cam, top_k)`: score drop when the top-k % CAM voxels are masked, against
  masking as many random voxels (mean and std over draws). A faithful map drops the score more.
- `deletion_insertion(score_fn, x, cam)`: whole deletion and insertion curves and their areas, against
  random orders (RISE).

Axis convention: tensors are (N, C, *spatial) as the network sees them; maps are (N, *spatial).
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from .errors import ConfigError


def layer_names(model: nn.Module) -> list[str]:
    return [n for n, _ in model.named_modules() if n]


def check_layer(model: nn.Module, layer: str) -> str:
    """`layer` if it names a submodule of `model`; else ConfigError with close matches and the valid
    names (the top three levels, so the message stays one readable line)."""
    names = layer_names(model)
    if layer in names:
        return layer
    close = difflib.get_close_matches(layer, names, n=3)
    short = [n for n in names if n.count(".") <= 2]
    more = f" (+{len(names) - len(short)} deeper)" if len(names) > len(short) else ""
    hint = (f"did you mean {close}? " if close else "") + f"valid layers: {', '.join(short)}{more}"
    raise ConfigError("--layer", "unknown Grad-CAM target layer", repr(layer), hint)


def _identity(x):
    return x


def _minmax(x: torch.Tensor) -> torch.Tensor:
    """Per-sample scaling to [0, 1] with the maximum at 1. (MONAI's default_normalizer maps max -> 0,
    inverting the map, so it is not used.)"""
    flat = x.flatten(1)
    lo, hi = flat.min(1).values, flat.max(1).values
    shape = (-1,) + (1,) * (x.ndim - 1)
    return (x - lo.view(shape)) / (hi - lo).clamp_min(1e-12).view(shape)


def class_cam(model: nn.Module, x: torch.Tensor, layer: str, class_idx: int = 0,
              covariates: torch.Tensor | None = None) -> np.ndarray:
    """Grad-CAM of logit `class_idx` for a batch (N, C, *spatial) -> (N, *spatial) float32 in [0, 1]
    (per-sample min-max, maximum = 1, upsampled linearly to the input size)."""
    from monai.visualize import GradCAM

    check_layer(model, layer)
    cam = GradCAM(nn_module=model, target_layers=layer, postprocessing=_minmax)
    kwargs = {} if covariates is None else {"covariates": covariates}
    with torch.enable_grad():
        out = cam(x.detach().float().requires_grad_(True), class_idx=class_idx, **kwargs)
    return out[:, 0].detach().cpu().numpy().astype(np.float32)


class RegionScore(nn.Module):
    """(N, C, *spatial) -> (N, 1): sum of class `channel` logits of `net` inside `mask` (N, *spatial) bool."""

    def __init__(self, net: nn.Module, channel: int, mask: torch.Tensor):
        super().__init__()
        self.net, self.channel = net, int(channel)
        self.register_buffer("mask", mask.float(), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.net(x)
        return (logits[:, self.channel] * self.mask).flatten(1).sum(1, keepdim=True)


def region_cam(net: nn.Module, x: torch.Tensor, layer: str, channel: int, mask: torch.Tensor,
               scale: bool = True) -> np.ndarray:
    """Grad-CAM of RegionScore (ReLU of gradient-weighted activations, upsampled) -> (N, *spatial) float32,
    scaled to [0, 1] over the whole batch (one scale for all slices of a volume); scale=False leaves it
    unscaled, for a caller that blends batches (windows) first and scales the volume once."""
    from monai.visualize import GradCAM

    check_layer(net, layer)
    wrapped = RegionScore(net, channel, mask).eval()
    cam = GradCAM(nn_module=wrapped, target_layers=f"net.{layer}", postprocessing=_identity)
    with torch.enable_grad():
        out = cam(x.detach().float().requires_grad_(True), class_idx=0)[:, 0].detach().cpu().numpy().astype(np.float32)
    if not scale:
        return out
    top = float(out.max())
    return out / top if top > 0 else out


def faithfulness(score_fn: Callable[[torch.Tensor], float], x: torch.Tensor, cam: np.ndarray,
                 top_k: float = 10.0, n_random: int = 5, within: np.ndarray | None = None,
                 fill: float = 0.0, seed: int = 0) -> dict:
    """Deletion check of a heat map.

    Args:
        score_fn: maps an input like `x` to the explained score (a float).
        x: (N, C, *spatial) input; cam: (N, *spatial) heat map on the same voxels.
        top_k: percent of candidate voxels masked (the highest-CAM ones vs random ones).
        within: optional (N, *spatial) bool restricting candidate voxels (e.g. the gland).
        fill: value written into masked voxels of every channel (0 = the mean after z-scoring).
    Returns:
        {score, drop_top_k, drop_random_mean, drop_random_std, top_k_percent, n_masked, n_random,
         faithful (drop_top_k > drop_random_mean)}; drops are score(x) - score(masked x).
    """
    cam = np.asarray(cam, dtype=np.float64)
    cand = np.ones(cam.shape, bool) if within is None else np.asarray(within, bool)
    idx = np.flatnonzero(cand)
    n = max(1, int(round(len(idx) * top_k / 100.0)))
    base = float(score_fn(x))

    def masked_score(flat_idx: np.ndarray) -> float:
        m = np.zeros(cam.size, bool)
        m[flat_idx] = True
        m = torch.from_numpy(m.reshape(cam.shape)).unsqueeze(1).expand_as(x)
        return float(score_fn(torch.where(m, torch.full_like(x, fill), x)))

    order = idx[np.argsort(-cam.ravel()[idx], kind="stable")]
    drop_top = base - masked_score(order[:n])
    rng = np.random.default_rng(seed)
    rand = [base - masked_score(rng.choice(idx, n, replace=False)) for _ in range(n_random)]
    return {"score": base, "drop_top_k": drop_top, "drop_random_mean": float(np.mean(rand)),
            "drop_random_std": float(np.std(rand)), "top_k_percent": float(top_k), "n_masked": int(n),
            "n_random": int(n_random), "faithful": bool(drop_top > np.mean(rand))}


def deletion_insertion(score_fn: Callable[[torch.Tensor], np.ndarray], x: torch.Tensor, cam: np.ndarray,
                       steps: int = 16, n_random: int = 5, fill: float = 0.0, seed: int = 0) -> dict:
    """Deletion and insertion curves of one heat map (Petsiuk et al. 2018, RISE), against random orders.

    Deletion: voxels are set to `fill` in the map's order (hottest first), in `steps` equal shares, and
    the score is read after each; a faithful map makes it fall fast (small area). Insertion: start from
    an all-`fill` input and restore voxels in the same order; a faithful map makes it rise fast (large
    area). Areas are the mean score over the fractions 0, 1/steps, ..., 1 (trapezoid rule). The same
    curves for `n_random` random orders give the reference.

    Args:
        score_fn: (B, C, *spatial) -> (B,) scores (one batch per curve is scored at once).
        x: (1, C, *spatial) input; cam: (*spatial) or (1, *spatial) map on the same voxels.
    Returns:
        {deletion_area, insertion_area, random_deletion_area, random_insertion_area (means over the
        random orders), deletion_curve, insertion_curve, fractions, better_deletion (CAM area <
        random), better_insertion (CAM area > random)}.
    """
    cam = np.asarray(cam, np.float64).reshape(x.shape[2:])
    n = cam.size
    fractions = np.linspace(0, 1, steps + 1)
    counts = np.round(fractions * n).astype(int)

    def curves(order: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        rank = np.empty(n, int)
        rank[order] = np.arange(n)
        masks = torch.from_numpy(np.stack([rank < c for c in counts]).reshape((-1, 1) + cam.shape))
        base, empty = x.expand(len(counts), *x.shape[1:]), torch.full_like(x, fill).expand(len(counts), *x.shape[1:])
        deletion = np.asarray(score_fn(torch.where(masks, empty, base)), float)
        insertion = np.asarray(score_fn(torch.where(masks, base, empty)), float)
        return deletion, insertion

    def area(curve: np.ndarray) -> float:
        return float(np.trapezoid(curve, fractions))

    dele, ins = curves(np.argsort(-cam.ravel(), kind="stable"))
    rng = np.random.default_rng(seed)
    rand = [curves(rng.permutation(n)) for _ in range(n_random)]
    rd, ri = float(np.mean([area(d) for d, _ in rand])), float(np.mean([area(i) for _, i in rand]))
    return {"deletion_area": area(dele), "insertion_area": area(ins), "random_deletion_area": rd,
            "random_insertion_area": ri, "better_deletion": bool(area(dele) < rd), "better_insertion": bool(area(ins) > ri),
            "fractions": fractions.tolist(), "deletion_curve": dele.tolist(), "insertion_curve": ins.tolist(),
            "steps": int(steps), "n_random": int(n_random)}


def save_overlay(image: np.ndarray, cam: np.ndarray, path: str | Path, *, title: str = "",
                 contour: np.ndarray | None = None, force: bool = False) -> Path:
    """PNG of the axial slice (voxel axis k) with the largest CAM sum: image in grey, CAM in colour.

    image, cam, contour: (I, J, K) on one grid. Written atomically; refuses to overwrite without force.
    """
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    from .outputs import output_target, replace_atomically

    path = output_target(Path(path), force)
    k = int(np.argmax(cam.reshape(-1, cam.shape[2]).sum(0)))
    fig, ax = plt.subplots(figsize=(5, 5), dpi=100)
    # Transpose so voxel axis i runs left-right and j top-bottom, as radiology viewers show LPS storage.
    ax.imshow(image[:, :, k].T, cmap="gray")
    ax.imshow(np.ma.masked_less(cam[:, :, k].T, 0.05), cmap="jet", alpha=0.45, vmin=0, vmax=1)
    if contour is not None and contour[:, :, k].any():
        ax.contour(contour[:, :, k].T.astype(float), levels=[0.5], colors="w", linewidths=0.8)
    ax.set_title(f"{title} slice k={k}".strip(), fontsize=9)
    ax.axis("off")
    replace_atomically(path, lambda tmp: fig.savefig(tmp, format="png", bbox_inches="tight"))
    plt.close(fig)
    return path
