"""`segment predict --explain ZONE`: Grad-CAM of a segmenter for one zone (mricore.gradcam).

The explained score is the sum of the zone's logits inside the zone the model itself predicts on the
clean input (RegionScore), taken from the label map the inference writes; the heat map is computed on
the working grid through the inference's own tiling (the same whole, padded slices, or the same
sliding windows blended alike; one scale for the whole volume), restored to the input grid and written as
`<case>_gradcam_<ZONE>.nii.gz` (float32 in [0, 1]) and `<case>_gradcam_<ZONE>.png`. The faithfulness
check (score drop when the top 10 % CAM voxels are masked vs random voxels) goes to
`<case>_gradcam_<ZONE>.json`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from mricore.errors import UserError
from mricore.io import check_absent, write_json, write_nifti

from .inference import Segmenter

# Logit channel explained per zone and label scheme (multiclass: bg, TZ, PZ; regions: WG, TZ|gland).
ZONE_CHANNEL = {"multiclass": {"TZ": 1, "PZ": 2}, "regions": {"WG": 0, "TZ": 1}}
DEFAULT_LAYER = {"unet": "model.0", "dynunet": "input_block", "segresnet": "down_layers.1"}


def check_zone(seg: Segmenter, zone: str) -> int:
    valid = ZONE_CHANNEL[seg.model_cfg.label_scheme]
    if zone.upper() not in valid:
        raise UserError("--explain", f"zone not explainable for a '{seg.model_cfg.label_scheme}' model",
                        repr(zone), f"use one of {sorted(valid)}")
    return valid[zone.upper()]


def outputs(out: Path, case_id: str, zone: str) -> list[Path]:
    stem = f"{case_id}_gradcam_{zone.upper()}"
    return [out / f"{stem}.nii.gz", out / f"{stem}.png", out / f"{stem}.json"]


def check_explain(model_dir: str, zone: str, case_ids: list[str], out_dir: str, force: bool) -> tuple[Segmenter, int, str]:
    """Validate zone, layer and outputs before anything is written; return (segmenter, channel, layer)."""
    from mricore.gradcam import check_layer

    seg = Segmenter.load(model_dir)
    ch = check_zone(seg, zone)
    layer = check_layer(seg.net, DEFAULT_LAYER.get(seg.model_cfg.name, "model.0"))
    check_absent([p for cid in case_ids for p in outputs(Path(out_dir), cid, zone)], force)
    return seg, ch, layer


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


def explain_volume(seg: Segmenter, channel: int, layer: str, zone: str, image, out_dir: str, force: bool = False) -> dict:
    """Grad-CAM of one zone for one image Volume; writes the NIfTI, PNG and JSON; returns the JSON dict.

    The explained region is the zone in the label map the inference itself writes on the working grid
    (`Segmenter.probabilities`, the same preprocessing, windows or whole slices, and TTA), and the
    heat map runs through the same tiling (`cam_through_inference`)."""
    from mricore.gradcam import faithfulness, save_overlay
    from mricore.preprocess import preprocess, restore
    from mricore.zones import labels_from_probabilities

    from .windows import network_input, working_layout

    prep = preprocess(image, seg.spec)
    work_label = labels_from_probabilities(seg.probabilities(prep.array))      # (I, J, K) as written
    label = {"multiclass": {1: 1, 2: 2}, "regions": {0: None, 1: 1}}[seg.model_cfg.label_scheme][channel]
    region = (work_label > 0) if label is None else (work_label == label)
    x = torch.from_numpy(network_input(prep.array, seg.model_cfg))
    # The region in the network's layout: (K, I, J) slices for 2D models, (1, I, J, K) for 3D.
    mask = torch.from_numpy(np.ascontiguousarray(region.transpose(2, 0, 1) if seg.model_cfg.spatial_dims == 2
                                                 else region[None]))
    seg.net.eval()
    cam = cam_through_inference(seg, x, layer, channel, mask)
    heat = np.clip(restore(working_layout(cam[:, None], seg.model_cfg), prep)[0], 0, 1)

    @torch.no_grad()
    def score(t):  # the explained score, through the inference's own tiling
        return float((seg.logits(t)[:, channel] * mask).sum())

    check = faithfulness(score, x, cam, top_k=10.0, n_random=3)
    nii, png, js = outputs(Path(out_dir), image.case_id, zone)
    write_nifti(heat.astype(np.float32), image, nii, force=force)
    contour = restore(region[None].astype(np.uint8), prep)[0] > 0
    save_overlay(image.array[0], heat, png, title=f"{image.case_id} {zone.upper()} Grad-CAM", contour=contour, force=force)
    info = {"case_id": image.case_id, "zone": zone.upper(), "layer": layer, "target":
            "sum of the zone's logits inside the zone the model predicts (RegionScore)",
            "predicted_voxels_working_grid": int(region.sum()), "faithfulness": check, "files": [nii.name, png.name]}
    write_json(info, js, force=True)
    return info


def prepare_explain(model_dir: str, inputs: list[str], zone: str, out_dir: str, force: bool = False):
    """Check everything `--explain ZONE` needs (before `segment predict` writes anything); return a
    callable that computes and writes the heat maps of every input case and returns their JSON dicts."""
    from mricore.datasets import load_case

    from .predict import cases_from_inputs

    seg = Segmenter.load(model_dir)
    cases = cases_from_inputs(inputs, seg.channels)
    seg, channel, layer = check_explain(model_dir, zone, [c.case_id for c in cases], out_dir, force)

    def run() -> list[dict]:
        return [explain_volume(seg, channel, layer, zone, load_case(c, seg.channels)[0], out_dir, force)
                for c in cases]
    return run
