"""`segment predict --explain ZONE`: Grad-CAM of a segmenter for one zone (mricore.gradcam).

The explained score is the sum of the zone's logits inside the zone the model itself predicts on the
clean input (RegionScore), taken from the label map the inference writes; the heat map is computed on
the working grid through the inference's own tiling (the same whole, padded slices, or the same
sliding windows blended alike; one scale for the whole volume), restored to the input grid and written
into the case folder as `gradcam_<ZONE>.nii.gz` (float32 in [0, 1]) and `gradcam_<ZONE>.png`
(mricore.results.gradcam_files), with the case's other outputs. The faithfulness check (score drop when
the top 10 % CAM voxels are masked vs random voxels) goes into zones.json (`explanation`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from mricore.errors import UserError
from mricore.io import write_nifti
from mricore.results import gradcam_files

from .torch_segmenter import Segmenter

# Logit channel explained per zone and label scheme (multiclass: bg, TZ, PZ; regions: WG, TZ|gland).
ZONE_CHANNEL = {"multiclass": {"TZ": 1, "PZ": 2}, "regions": {"WG": 0, "TZ": 1}}
DEFAULT_LAYER = {"unet": "model.0", "dynunet": "input_block", "segresnet": "down_layers.1"}


@dataclass(frozen=True)
class Explainer:
    """What `--explain ZONE` needs, checked: the segmenter, the zone, its logit channel, the target layer."""

    seg: Segmenter
    zone: str
    channel: int
    layer: str


def check_explain(seg: Segmenter, zone: str) -> Explainer:
    """Validate the zone and the target layer before anything is written."""
    from mricore.gradcam import check_layer

    valid = ZONE_CHANNEL[seg.model_cfg.label_scheme]
    if zone.upper() not in valid:
        raise UserError("--explain", f"zone not explainable for a '{seg.model_cfg.label_scheme}' model",
                        repr(zone), f"use one of {sorted(valid)}")
    layer = check_layer(seg.net, DEFAULT_LAYER.get(seg.model_cfg.name, "model.0"))
    return Explainer(seg, zone.upper(), valid[zone.upper()], layer)


def cam_through_inference(seg: Segmenter, x: torch.Tensor, layer: str, channel: int, mask: torch.Tensor) -> np.ndarray:
    """Grad-CAM of RegionScore over the network input `x` (segment.windows.network_input) and the
    region `mask` (same layout, bool), computed through `Segmenter.tiled`: the same whole slices (and
    their padding) or the same sliding windows and blending as the inference, one scale for the volume.
    Returns (N, *spatial) float32 in [0, 1]."""
    from mricore.gradcam import region_cam

    def cam(xm: torch.Tensor) -> torch.Tensor:  # the region travels as an extra channel, padded alike
        xi, m = xm[:, :-1], xm[:, -1] > 0.5
        return torch.from_numpy(region_cam(seg.net, xi, layer, channel, m, scale=False))[:, None]

    xm = torch.cat([x, mask[:, None].to(x.dtype)], 1)
    out = seg.tiled(xm, cam)[:, 0].numpy().astype(np.float32)
    top = float(out.max())
    return out / top if top > 0 else out


def explain_volume(ex: Explainer, image, pred, folder: Path) -> dict:
    """Grad-CAM of `ex.zone` for one image Volume and its segment.segmenter.Prediction `pred` (by
    `ex.seg.predict`); writes the heat map (NIfTI) and its overlay (PNG) into `folder` (a case's staging
    folder) and returns the explanation zones.json records.

    The explained region is the zone in the label map the inference itself wrote on the working grid
    (`pred.work_label`: the same preprocessing, windows or whole slices, and TTA), and the heat map
    runs through the same tiling (`cam_through_inference`)."""
    from mricore.gradcam import faithfulness, save_overlay
    from mricore.preprocess import restore

    from .windows import network_input, working_layout

    seg, channel, prep, work_label = ex.seg, ex.channel, pred.prepared, pred.work_label
    label = {"multiclass": {1: 1, 2: 2}, "regions": {0: None, 1: 1}}[seg.model_cfg.label_scheme][channel]
    region = (work_label > 0) if label is None else (work_label == label)
    x = torch.from_numpy(network_input(prep.array, seg.model_cfg))
    # The region in the network's layout: (K, I, J) slices for 2D models, (1, I, J, K) for 3D.
    mask = torch.from_numpy(np.ascontiguousarray(region.transpose(2, 0, 1) if seg.model_cfg.spatial_dims == 2
                                                 else region[None]))
    seg.net.eval()
    cam = cam_through_inference(seg, x, ex.layer, channel, mask)
    heat = np.clip(restore(working_layout(cam[:, None], seg.model_cfg), prep)[0], 0, 1)

    @torch.no_grad()
    def score(t):  # the explained score, through the inference's own tiling
        return float((seg.logits(t)[:, channel] * mask).sum())

    check = faithfulness(score, x, cam, top_k=10.0, n_random=3)
    nii, png = gradcam_files(ex.zone)
    write_nifti(heat.astype(np.float32), image, folder / nii, force=True)
    contour = restore(region[None].astype(np.uint8), prep)[0] > 0
    save_overlay(image.array[0], heat, folder / png, title=f"{image.case_id} {ex.zone} Grad-CAM", contour=contour,
                 force=True)
    return {"zone": ex.zone, "layer": ex.layer,
            "target": "sum of the zone's logits inside the zone the model predicts (RegionScore)",
            "predicted_voxels_working_grid": int(region.sum()), "faithfulness": check, "files": [nii, png]}
