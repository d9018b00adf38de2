"""`segment predict --explain ZONE`: Grad-CAM of a segmenter for one zone (mricore.gradcam).

The explained score is the sum of the zone's logits inside the zone the model itself predicts on the
clean input (RegionScore); the heat map is computed on the working grid (2D models slice by slice,
one scale for the whole volume), restored to the input grid and written as
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
from .windows import slices_with_context
from .networks import class_probabilities

# Logit channel explained per zone and label scheme (multiclass: bg, TZ, PZ; regions: WG, TZ|gland).
ZONE_CHANNEL = {"multiclass": {"TZ": 1, "PZ": 2}, "regions": {"WG": 0, "TZ": 1}}
DEFAULT_LAYER = {"unet": "model.0", "dynunet": "input_block", "segresnet": "down_layers.1"}
PAD = 16  # spatial sizes padded to a multiple of this so every U-Net level divides evenly


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


def _pad(x: torch.Tensor, dims: int) -> tuple[torch.Tensor, tuple[int, ...]]:
    size = x.shape[2:]
    pads = []
    for n in reversed(size[-dims:]):
        pads += [0, (-n) % PAD]
    return torch.nn.functional.pad(x, pads, mode="replicate" if dims == 2 else "constant"), tuple(size)


def explain_volume(seg: Segmenter, channel: int, layer: str, zone: str, image, out_dir: str, force: bool = False) -> dict:
    """Grad-CAM of one zone for one image Volume; writes the NIfTI, PNG and JSON; returns the JSON dict."""
    from mricore.gradcam import RegionScore, faithfulness, region_cam, save_overlay
    from mricore.preprocess import preprocess, restore

    prep = preprocess(image, seg.spec)
    dims = seg.model_cfg.spatial_dims
    arr = slices_with_context(prep.array, seg.model_cfg.context) if dims == 2 else prep.array[None]
    x, size = _pad(torch.from_numpy(np.ascontiguousarray(arr)), dims)
    net = seg.net.eval()
    with torch.no_grad():
        prob = class_probabilities(net(x), seg.model_cfg.label_scheme)
    label = {"multiclass": {1: 1, 2: 2}, "regions": {0: None, 1: 1}}[seg.model_cfg.label_scheme][channel]
    mask = (prob.argmax(1) > 0) if label is None else (prob.argmax(1) == label)
    cam = region_cam(net, x, layer, channel, mask)
    crop = tuple(slice(0, n) for n in size)
    cam = cam[(slice(None),) + crop]
    work = cam.transpose(1, 2, 0) if dims == 2 else cam[0]  # back to (I, J, K)
    heat = np.clip(restore(work[None], prep)[0], 0, 1)
    scorer = RegionScore(net, channel, mask).eval()

    @torch.no_grad()
    def score(t):
        return float(scorer(t).sum())

    check = faithfulness(score, x, np.pad(cam, [(0, 0)] + [(0, p - n) for p, n in zip(x.shape[2:], size)]),
                         top_k=10.0, n_random=3)
    nii, png, js = outputs(Path(out_dir), image.case_id, zone)
    write_nifti(heat.astype(np.float32), image, nii, force=force)
    m = mask.numpy()[(slice(None),) + crop].astype(np.uint8)
    region = restore((m.transpose(1, 2, 0) if dims == 2 else m[0])[None], prep, label=True)[0] > 0
    save_overlay(image.array[0], heat, png, title=f"{image.case_id} {zone.upper()} Grad-CAM", contour=region, force=force)
    info = {"case_id": image.case_id, "zone": zone.upper(), "layer": layer, "target":
            "sum of the zone's logits inside the zone the model predicts (RegionScore)",
            "predicted_voxels_working_grid": int(mask.sum()), "faithfulness": check, "files": [nii.name, png.name]}
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
