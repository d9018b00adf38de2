"""Segmentation metrics from confusion counts and distance transforms, with a written empty-mask rule.

Empty-mask rule (tested in tests/mricore/test_metrics.py):
- DSC, precision, sensitivity: NaN when the denominator is empty (reference and prediction both empty
  for DSC; empty prediction for precision; empty reference for sensitivity). NaN values are excluded
  from summaries and the number excluded is reported beside every mean.
- A prediction on an empty reference scores DSC 0 (not NaN).
- HD95 and ASSD (mm): NaN when either mask is empty (a distance to nothing is undefined).
- Specificity: NaN only when every voxel is reference foreground.

Zones: WG = label > 0, TZ = label == 1, PZ = label == 2 (the platform's zone coding).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

ZONES = {"WG": lambda y: y > 0, "TZ": lambda y: y == 1, "PZ": lambda y: y == 2}


def confusion(pred: np.ndarray, ref: np.ndarray) -> tuple[int, int, int, int]:
    """(tp, fp, fn, tn) of two boolean masks of the same shape."""
    pred, ref = np.asarray(pred, bool), np.asarray(ref, bool)
    tp = int(np.count_nonzero(pred & ref))
    fp = int(np.count_nonzero(pred)) - tp
    fn = int(np.count_nonzero(ref)) - tp
    return tp, fp, fn, int(pred.size) - tp - fp - fn


def _ratio(a: float, b: float) -> float:
    return float("nan") if b == 0 else float(a / b)


def dice(pred: np.ndarray, ref: np.ndarray) -> float:
    """DSC = 2 tp / (2 tp + fp + fn); NaN when both masks are empty, 0 for any prediction on an empty reference."""
    tp, fp, fn, _ = confusion(pred, ref)
    return _ratio(2 * tp, 2 * tp + fp + fn)


def overlap_metrics(pred: np.ndarray, ref: np.ndarray) -> dict:
    """DSC, sensitivity, specificity, precision, IoU and relative volume difference from one confusion count."""
    tp, fp, fn, tn = confusion(pred, ref)
    return {"dsc": _ratio(2 * tp, 2 * tp + fp + fn), "sensitivity": _ratio(tp, tp + fn),
            "specificity": _ratio(tn, tn + fp), "precision": _ratio(tp, tp + fp),
            "iou": _ratio(tp, tp + fp + fn), "rvd": _ratio((tp + fp) - (tp + fn), tp + fn),
            "tp": tp, "fp": fp, "fn": fn, "tn": tn}


def _surface(mask: np.ndarray) -> np.ndarray:
    """Boundary voxels: in the mask with at least one 6-neighbour outside (full connectivity erosion)."""
    return mask & ~ndimage.binary_erosion(mask, structure=ndimage.generate_binary_structure(mask.ndim, 1),
                                          border_value=0)


def surface_distances(pred: np.ndarray, ref: np.ndarray, spacing) -> tuple[np.ndarray, np.ndarray]:
    """Distances in mm from each boundary voxel of `pred` to the boundary of `ref`, and back.

    The masks are cropped to their joint bounding box (plus one voxel) before the distance transforms,
    which is what makes this cheap on whole volumes.
    """
    pred, ref = np.asarray(pred, bool), np.asarray(ref, bool)
    both = pred | ref
    idx = np.argwhere(both)
    lo = np.maximum(idx.min(0) - 1, 0)
    hi = np.minimum(idx.max(0) + 2, both.shape)
    box = tuple(slice(a, b) for a, b in zip(lo, hi))
    p, r = pred[box], ref[box]
    # Pad by one so the box edge never counts as surface unless the mask touches the image edge.
    p, r = np.pad(p, 1), np.pad(r, 1)
    sp, sr = _surface(p), _surface(r)
    dt_r = ndimage.distance_transform_edt(~sr, sampling=spacing)
    dt_p = ndimage.distance_transform_edt(~sp, sampling=spacing)
    return dt_r[sp], dt_p[sr]


def distance_metrics(pred: np.ndarray, ref: np.ndarray, spacing) -> dict:
    """HD95 (95th percentile of the symmetric surface distances, as MONAI's HausdorffDistanceMetric
    with percentile=95: max of the two directed 95th percentiles) and ASSD (mean of all surface
    distances, both directions), in mm. NaN when either mask is empty."""
    pred, ref = np.asarray(pred, bool), np.asarray(ref, bool)
    if not pred.any() or not ref.any():
        return {"hd95": float("nan"), "assd": float("nan")}
    d_pr, d_rp = surface_distances(pred, ref, spacing)
    hd95 = max(float(np.percentile(d_pr, 95)), float(np.percentile(d_rp, 95)))
    assd = float((d_pr.sum() + d_rp.sum()) / (len(d_pr) + len(d_rp)))
    return {"hd95": hd95, "assd": assd}


def zone_metrics(pred: np.ndarray, ref: np.ndarray, spacing, distances: bool = True) -> dict:
    """Per zone (WG, TZ, PZ) overlap (and distance) metrics of two zone label maps on one grid.

    Returns {zone: {metric: value}}.
    """
    out = {}
    for z, f in ZONES.items():
        p, r = f(pred), f(ref)
        m = overlap_metrics(p, r)
        if distances:
            m.update(distance_metrics(p, r, spacing))
        out[z] = m
    return out
