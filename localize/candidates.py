"""Lesion candidates from a lesion probability map (PI-CAI style detection map).

Candidates grow from peaks (dynamic thresholding, as PI-CAI's detection maps): the highest remaining
voxel, if at least `threshold`, seeds a candidate made of the voxels connected to it (26-connectivity)
whose probability is at least max(threshold, `relative` x peak); they are removed and the next peak is
taken. So two lesions on a raised background stay two candidates, and a faint lesion still becomes
one. relative=0 gives plain connected regions of `prob >= threshold`. Each candidate gets one score
(its peak), the majority zone of the zone map under it, its volume in mL (mricore.results.mask_volume_ml,
rounded to 1 µL) and its centroid in scanner millimetres. Labels are 1..n in order of decreasing
score; the patient score is the maximum probability anywhere in the gland (0 when the map is empty).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from mricore.results import mask_volume_ml
from mricore.zones import CLASS_NAMES


def extract_candidates(prob: np.ndarray, zones: np.ndarray, affine: np.ndarray, threshold: float,
                       min_volume_ml: float = 0.0, relative: float = 0.5,
                       max_candidates: int = 20) -> tuple[np.ndarray, list[dict]]:
    """(I, J, K) probabilities and zone map on one grid -> (uint16 labelled blobs, candidate dicts).

    Each dict: label, score, zone, volume_ml, voxels, centroid_ijk, centroid_ras_mm (NIfTI world,
    RAS+) and centroid_lps_mm (DICOM scanner convention: x and y negated).
    """
    prob = np.asarray(prob, dtype=np.float32)
    voxel_ml = _voxel_ml(affine)
    work = np.where(prob >= threshold, prob, 0).astype(np.float32)
    found = []
    while len(found) < max_candidates and work.max() >= threshold and work.max() > 0:
        peak_at = np.unravel_index(int(np.argmax(work)), work.shape)
        peak = float(work[peak_at])
        blobs, _ = ndimage.label(work >= max(threshold, relative * peak), structure=np.ones((3, 3, 3), bool))
        m = blobs == blobs[peak_at]
        work[m] = 0
        # The unrounded volume, so the cut stays exact; lesion.json reports it rounded (mask_volume_ml).
        if np.count_nonzero(m) * voxel_ml < min_volume_ml:
            continue
        found.append(describe(m, peak, zones, affine))
    return label_candidates(found, prob.shape)


def describe(mask: np.ndarray, score: float, zones: np.ndarray, affine: np.ndarray) -> dict:
    """A candidate dict for a boolean region (its `_mask` is consumed by label_candidates)."""
    vox = int(mask.sum())
    z = zones[mask]
    counts = np.bincount(z[z > 0], minlength=3)[1:] if (z > 0).any() else None
    ijk = np.argwhere(mask).mean(0)
    ras = (affine @ np.r_[ijk, 1.0])[:3]
    return {"score": float(score), "zone": CLASS_NAMES[0 if counts is None else int(counts.argmax()) + 1],
            "volume_ml": mask_volume_ml(mask, _voxel_ml(affine)), "voxels": vox,
            "centroid_ijk": [float(v) for v in ijk], "centroid_ras_mm": [float(v) for v in ras],
            "centroid_lps_mm": [float(-ras[0]), float(-ras[1]), float(ras[2])], "_mask": mask}


def label_candidates(found: list[dict], shape) -> tuple[np.ndarray, list[dict]]:
    """(uint16 map with labels 1..n by decreasing score, the candidate dicts with their label)."""
    found.sort(key=lambda c: -c["score"])
    out = np.zeros(shape, np.uint16)
    for i, c in enumerate(found, start=1):
        out[c.pop("_mask")] = i
        c["label"] = i
    return out, found


def _voxel_ml(affine: np.ndarray) -> float:
    """The volume of one voxel in mL, from the voxel-to-world affine (mm), as Volume.voxel_volume_ml."""
    return float(abs(np.linalg.det(affine[:3, :3])) / 1000.0)


def patient_score(prob: np.ndarray) -> float:
    """Maximum lesion probability (0 for an empty map)."""
    return float(np.max(prob)) if np.size(prob) else 0.0
