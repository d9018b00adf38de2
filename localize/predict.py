"""`localize predict`: one study + its zone map -> lesion probability map, candidates and lesion.json.

Outputs: one `localize predict` folder, on the input's exact grid and affine (layout, writer and reader:
mricore.lesion_results): the lesion probability (0 outside the gland), the candidates labelled 1 = highest
score (localize.candidates), and lesion.json with the candidates (score, zone, volume mL, centroid mm),
the patient score and the model. With --explain also the Grad-CAM heat map (float32 in [0, 1]) and its
overlay, and the Grad-CAM faithfulness check on the highest-scoring patch in lesion.json.
Every input is checked, and every output tested for existence, before anything is written.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from mricore.datasets import image_from_inputs, load_case
from mricore.errors import ConfigError, GeometryError, InputError
from mricore.io import read_label, write_nifti
from mricore.lesion_results import check_lesion_case, write_lesion_case
from mricore.preprocess import restore
from mricore.results import LESION_GRADCAM_FILES
from mricore.volume import Volume

from .candidates import extract_candidates, patient_score
from .covariates import covariate_columns, read_clinical
from .model import CaseTiles, LesionModel, lesion_probability, load_lesion_model
from .patches import assemble


def predict(model_dir: str, inputs: list[str], zones_path: str, out_dir: str, explain: bool = False,
            layer: str | None = None, force: bool = False, clinical: str | None = None) -> dict:
    """Run the lesion model on one study; write its folder (mricore.lesion_results.write_lesion_case)
    and return the lesion.json content. `clinical`: a CSV with a case_id column, read for the model's
    clinical covariates (a case not in it has them missing)."""
    from mricore.outputs import check_output_dir

    t0 = time.perf_counter()
    # Check: every input and output, before the network runs.
    out = check_output_dir(out_dir)
    model = load_lesion_model(model_dir)
    case = _study(model, inputs)
    check_lesion_case(out, explain, force)
    row = read_clinical(clinical).get(case.case_id)
    layer = _explain_layer(model, layer) if explain else None
    image, _, info = load_case(case, model.spec.channels)
    zones = _zone_map(zones_path, image, case.case_id)
    # Run: the lesion map on the input's grid, then its candidates.
    prob, extra, tiled = _lesion_map(model, image, zones, row)
    labels, cands = _candidates(model, prob, zones.array[0], image.affine)
    # Write: lesion.json's record and the maps, all together or none.
    record = {"case_id": case.case_id, "inputs": [str(p) for p in inputs], "zones": str(zones_path),
              "model": {"folder": str(model_dir), "name": model.meta.get("name"), "fold": model.meta.get("fold"),
                        "classifier": model.model_cfg.name, "validation": model.meta.get("validation")},
              **extra, "threshold": model.cand.threshold, "patient_score": patient_score(prob), "candidates": cands,
              "alignment": info["alignment"],
              "coordinates": "centroid_ras_mm: NIfTI world (RAS+); centroid_lps_mm: DICOM scanner (LPS)"}
    gland = zones.array[0] > 0
    heat_map = None if layer is None else (lambda stage: _explain(model, *tiled, layer, gland, image, stage, True))
    return write_lesion_case(out, image, prob, labels, record, heat_map, started=t0)


def _study(model, inputs: list[str]):
    """The study's images (mricore.datasets.image_from_inputs), checked to hold every channel the model reads."""
    case = image_from_inputs([Path(p) for p in inputs], model.spec.channels)
    missing = [c for c in model.spec.channels if c not in case.images]
    if missing:
        raise InputError(case.case_id, f"model expects {', '.join(model.spec.channels)}", ", ".join(sorted(case.images)),
                         f"provide {', '.join(missing)}")
    return case


def _explain_layer(model, layer: str | None) -> str:
    """The Grad-CAM layer for --explain: `layer`, else the model's; only a CNN classifier has one."""
    from mricore.gradcam import check_layer

    if not isinstance(model, LesionModel):
        raise ConfigError("--explain", "Grad-CAM needs a CNN lesion classifier", model.model_cfg.name,
                          "drop --explain: model.json training.coefficients explain zone_stats_lr")
    return check_layer(model.net, layer or model.cam_layer)


def _zone_map(zones_path: str, image: Volume, case_id: str) -> Volume:
    """The zone map, checked to lie on the image's grid and to hold zone labels (0, 1 TZ, 2 PZ)."""
    zones = read_label(zones_path, "zones", case_id)
    if not zones.same_grid(image):
        raise GeometryError(zones_path, "the zone map must lie on the grid of the first input image",
                            f"shape {zones.shape} vs image {image.shape}",
                            "pass the zones written by `ensemble predict` / `segment predict` for this image")
    if zones.array.max() > 2:
        raise InputError(zones_path, "zone labels must be 0 background, 1 TZ, 2 PZ", int(zones.array.max()),
                         "pass a zone map, not a lesion or whole-gland mask")
    return zones


def _lesion_map(model, image: Volume, zones: Volume, row: dict | None) -> tuple[np.ndarray, dict, tuple | None]:
    """(lesion probability on the image's grid, 0 outside the gland; the model's own lesion.json fields;
    (CaseTiles, patch scores) for Grad-CAM, None for the zone-statistics model)."""
    gland = zones.array[0] > 0
    if isinstance(model, LesionModel):
        ct: CaseTiles = model.tiles_for(image, zones, row)
        scores = model.score(ct.patches, ct.covariates)
        work = assemble(scores, ct.tiles, ct.zones.shape, gland=ct.zones)
        prob = restore(work[None], ct.prepared)[0] * gland
        extra = {"covariates": dict(zip(covariate_columns(model.model_cfg.covariates),
                                        (ct.covariates[0].tolist() if len(ct.covariates) else []))),
                 "n_patches": int(len(scores))}
        tiled = (ct, scores)
    else:
        prob, per_zone = model.zone_map(image, zones, row)
        extra, tiled = {"zone_probability": per_zone}, None
    if not np.all(np.isfinite(prob)):
        raise InputError(image.case_id, "lesion probabilities must be finite", "NaN/Inf values",
                         "check the input image and the model folder")
    return prob, extra, tiled


def _candidates(model, prob: np.ndarray, zones: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, list[dict]]:
    """(uint16 candidate labels, candidate dicts): peaks of the map for a CNN (localize.candidates), the
    model's own rule otherwise (the zone-statistics model: one candidate per zone)."""
    if not isinstance(model, LesionModel):
        return model.candidates(prob, zones, affine)
    c = model.cand
    return extract_candidates(prob, zones, affine, c.threshold, c.min_volume_ml, c.relative, c.max_candidates)


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
    write_nifti(heat.astype(np.float32), image, out / LESION_GRADCAM_FILES[0], force=force)
    save_overlay(image.array[0], heat, out / LESION_GRADCAM_FILES[1], title=f"{image.case_id} lesion Grad-CAM",
                 contour=gland, force=force)
    return {"method": "Grad-CAM (monai.visualize.GradCAM) per candidate patch x patch probability, max-merged",
            "layer": layer, "faithfulness": check, "files": list(LESION_GRADCAM_FILES)}
