"""`localize predict`: one study + its zone map -> lesion probability map, candidates and lesion.json.

Outputs in OUT, on the input's exact grid and affine:
  lesion_probability.nii.gz  float32, per-voxel lesion probability inside the gland (0 outside)
  lesion_candidates.nii.gz   uint16 labelled blobs, 1 = highest score (see localize.candidates)
  lesion.json                candidates (score, zone, volume mL, centroid mm), patient score, model
  with --explain: lesion_gradcam.nii.gz (float32 in [0, 1]) and lesion_gradcam.png (overlay), and the
  Grad-CAM faithfulness check on the highest-scoring patch in lesion.json.
Every input is checked, and every output tested for existence, before anything is written.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from mricore.datasets import image_from_inputs, load_case
from mricore.errors import ConfigError, GeometryError, InputError
from mricore.io import read_label, write_json, write_nifti
from mricore.preprocess import restore

from .candidates import extract_candidates, patient_score
from .model import LesionModel, covariate_columns, lesion_probability, load_lesion_model, read_clinical
from .patches import assemble

OUTPUTS = ("lesion_probability.nii.gz", "lesion_candidates.nii.gz", "lesion.json")
EXPLAIN_OUTPUTS = ("lesion_gradcam.nii.gz", "lesion_gradcam.png")


def predict(model_dir: str, inputs: list[str], zones_path: str, out_dir: str, explain: bool = False,
            layer: str | None = None, force: bool = False, clinical: str | None = None) -> dict:
    """Run the lesion model on one study; return the lesion.json content. `clinical`: a CSV with a
    case_id column, read for the model's clinical covariates (a case not in it has them missing)."""
    from mricore.io import check_absent, check_output_dir, staged_dir

    t0 = time.perf_counter()
    out = check_output_dir(out_dir)
    model = load_lesion_model(model_dir)
    cnn = isinstance(model, LesionModel)
    case = image_from_inputs([Path(p) for p in inputs], model.spec.channels)
    missing = [c for c in model.spec.channels if c not in case.images]
    if missing:
        raise InputError(case.case_id, f"model expects {', '.join(model.spec.channels)}", ", ".join(sorted(case.images)),
                         f"provide {', '.join(missing)}")
    names = OUTPUTS + (EXPLAIN_OUTPUTS if explain else ())
    check_absent([out / n for n in names], force)
    row = read_clinical(clinical).get(case.case_id)
    if explain and not cnn:
        raise ConfigError("--explain", "Grad-CAM needs a CNN lesion classifier", model.model_cfg.name,
                          "drop --explain: model.json training.coefficients explain zone_stats_lr")
    if explain:
        from mricore.gradcam import check_layer

        layer = check_layer(model.net, layer or model.cam_layer)
    image, _, info = load_case(case, model.spec.channels)
    zones = read_label(zones_path, "zones", case.case_id)
    if not zones.same_grid(image):
        raise GeometryError(zones_path, "the zone map must lie on the grid of the first input image",
                            f"shape {zones.shape} vs image {image.shape}",
                            "pass the zones written by `ensemble predict` / `segment predict` for this image")
    if zones.array.max() > 2:
        raise InputError(zones_path, "zone labels must be 0 background, 1 TZ, 2 PZ", int(zones.array.max()),
                         "pass a zone map, not a lesion or whole-gland mask")
    gland = zones.array[0] > 0
    if cnn:
        ct = model.tiles_for(image, zones, row)
        scores = model.score(ct.patches, ct.covariates)
        work = assemble(scores, ct.tiles, ct.zones.shape, gland=ct.zones)
        prob = restore(work[None], ct.prepared)[0] * gland
        extra = {"covariates": dict(zip(covariate_columns(model.model_cfg.covariates),
                                        (ct.covariates[0].tolist() if len(ct.covariates) else []))),
                 "n_patches": int(len(scores))}
    else:
        prob, per_zone = model.zone_map(image, zones, row)
        extra = {"zone_probability": per_zone}
    if not np.all(np.isfinite(prob)):
        raise InputError(case.case_id, "lesion probabilities must be finite", "NaN/Inf values",
                         "check the input image and the model folder")
    if cnn:
        labels, cands = extract_candidates(prob, zones.array[0], image.affine, model.cand.threshold,
                                           model.cand.min_volume_ml, model.cand.relative, model.cand.max_candidates)
    else:
        labels, cands = model.candidates(prob, zones.array[0], image.affine)
    result = {"case_id": case.case_id, "inputs": [str(p) for p in inputs], "zones": str(zones_path),
              "model": {"folder": str(model_dir), "name": model.meta.get("name"), "fold": model.meta.get("fold"),
                        "classifier": model.model_cfg.name, "validation": model.meta.get("validation")},
              **extra, "threshold": model.cand.threshold, "patient_score": patient_score(prob), "candidates": cands,
              "alignment": info["alignment"],
              "coordinates": "centroid_ras_mm: NIfTI world (RAS+); centroid_lps_mm: DICOM scanner (LPS)"}
    with staged_dir(out, stale=OUTPUTS + EXPLAIN_OUTPUTS) as stage:  # all outputs together or none
        if explain:
            result["explain"] = _explain(model, ct, scores, layer, gland, image, stage, True)
        write_nifti(prob.astype(np.float32), image, stage / OUTPUTS[0], force=True)
        write_nifti(labels, image, stage / OUTPUTS[1], dtype=np.uint16, force=True)
        result["seconds"] = round(time.perf_counter() - t0, 3)
        write_json(result, stage / OUTPUTS[2], force=True)
    return result


def top_patch_faithfulness(model: LesionModel, ct, scores: np.ndarray, layer: str, cams: np.ndarray | None = None) -> dict:
    """Grad-CAM faithfulness on the highest-scoring patch: the top-10 % deletion check
    (mricore.gradcam.faithfulness) and the deletion / insertion curves against random orders."""
    from mricore.gradcam import class_cam, deletion_insertion, faithfulness

    top = int(np.argmax(scores))
    x = torch.from_numpy(ct.patches[top:top + 1])
    c = torch.from_numpy(ct.covariates[top:top + 1]) if ct.covariates.shape[1] else None
    cam = cams[top:top + 1] if cams is not None else class_cam(model.net, x, layer, covariates=c)

    @torch.no_grad()
    def batch_scores(t):
        return lesion_probability(model.net.eval()(t, None if c is None else c.expand(len(t), -1)),
                                  model.prior_logit).numpy()

    curves = deletion_insertion(batch_scores, x, cam)
    return {"patch": top, **faithfulness(lambda t: float(batch_scores(t)[0]), x, cam, top_k=10.0, n_random=5),
            "curves": curves}


def _explain(model: LesionModel, ct, scores, layer, gland, image, out: Path, force: bool) -> dict:
    """Grad-CAM of every patch, weighted by its score and merged by maximum; faithfulness on the top patch."""
    from mricore.gradcam import class_cam, save_overlay

    cams = []
    for s in range(0, len(ct.patches), 32):
        x = torch.from_numpy(ct.patches[s:s + 32])
        c = torch.from_numpy(ct.covariates[s:s + 32]) if ct.covariates.shape[1] else None
        cams.append(class_cam(model.net, x, layer, covariates=c))
    cams = np.concatenate(cams) if cams else np.zeros((0,) + ct.patches.shape[2:], np.float32)
    work = assemble(scores, ct.tiles, ct.zones.shape, gland=ct.zones, maps=cams, reduce="max")
    heat = np.clip(restore(work[None], ct.prepared)[0], 0, 1) * gland
    check = top_patch_faithfulness(model, ct, scores, layer, cams) if len(scores) else None
    write_nifti(heat.astype(np.float32), image, out / EXPLAIN_OUTPUTS[0], force=force)
    save_overlay(image.array[0], heat, out / EXPLAIN_OUTPUTS[1], title=f"{image.case_id} lesion Grad-CAM",
                 contour=gland, force=force)
    return {"method": "Grad-CAM (monai.visualize.GradCAM) per candidate patch x patch probability, max-merged",
            "layer": layer, "faithfulness": check, "files": list(EXPLAIN_OUTPUTS)}
