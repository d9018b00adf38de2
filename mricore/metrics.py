"""Segmentation metrics from confusion counts and distance transforms, with a written empty-mask rule.

Empty-mask rule (tested in tests/mricore/test_metrics.py):
- DSC, precision, sensitivity: NaN when the denominator is empty (reference and prediction both empty
  for DSC; empty prediction for precision; empty reference for sensitivity). NaN values are excluded
  from summaries and the number excluded is reported beside every mean.
- A prediction on an empty reference scores DSC 0 (not NaN).
- HD95 and ASSD (mm): NaN when either mask is empty (a distance to nothing is undefined).
- Specificity: NaN only when every voxel is reference foreground.
- Relative volume difference (pred - ref) / ref: NaN on an empty reference.
- ROC AUC: NaN unless both classes are present. Average precision: NaN without positives.
- Lesions: a case without reference lesions adds only false positives to FROC; a candidate is a hit
  when its IoU with a reference lesion is > 0.1.

Surfaces (HD95, ASSD) use MONAI's edge definition: a voxel of the mask with a 6-neighbour outside it
(erosion with the connectivity-1 structure, zero outside the image), and exact Euclidean distances in
mm between edge-voxel centres, so MONAI's HausdorffDistanceMetric(percentile=95) and
SurfaceDistanceMetric(symmetric=True) agree to float32 rounding (tests/mricore/test_metrics.py).

Zones: WG = label > 0, TZ = label == 1, PZ = label == 2 (the platform's zone coding).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from .zones import SELECTORS


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


def _from_counts(tp: int, fp: int, fn: int, tn: int) -> dict:
    """DSC, sensitivity, specificity, precision, IoU and relative volume difference from one confusion count."""
    return {"dsc": _ratio(2 * tp, 2 * tp + fp + fn), "sensitivity": _ratio(tp, tp + fn),
            "specificity": _ratio(tn, tn + fp), "precision": _ratio(tp, tp + fp),
            "iou": _ratio(tp, tp + fp + fn), "rvd": _ratio((tp + fp) - (tp + fn), tp + fn),
            "tp": tp, "fp": fp, "fn": fn, "tn": tn}


def _bbox(mask: np.ndarray) -> tuple[slice, ...]:
    """Bounding box of a non-empty mask, from per-axis projections (cheaper than argwhere)."""
    box = []
    for ax in range(mask.ndim):
        hit = np.flatnonzero(mask.any(axis=tuple(a for a in range(mask.ndim) if a != ax)))
        box.append(slice(int(hit[0]), int(hit[-1]) + 1))
    return tuple(box)


def _surface(mask: np.ndarray) -> np.ndarray:
    """Edge voxels as MONAI defines them: in the mask with at least one 6-neighbour outside it (outside
    the image counts as outside). Shifted ANDs of a zero-padded copy, i.e. an erosion with the
    connectivity-1 structure, without scipy's per-voxel loop."""
    m = np.pad(np.asarray(mask, bool), 1)
    inner = m[(slice(1, -1),) * m.ndim].copy()
    for ax in range(m.ndim):
        for lo, hi in ((0, -2), (2, None)):
            inner &= m[tuple(slice(lo, hi) if a == ax else slice(1, -1) for a in range(m.ndim))]
    return np.asarray(mask, bool) & ~inner


def surface_distances(pred: np.ndarray, ref: np.ndarray, spacing) -> tuple[np.ndarray, np.ndarray]:
    """Distances in mm from each edge voxel of `pred` to the nearest edge voxel of `ref`, and back.

    Both masks must be non-empty. Edges are found inside the joint bounding box, and the nearest edge
    voxel comes from a KD-tree over edge coordinates (as MONAI does on the CPU): the cost follows the
    number of edge voxels, not the volume, so stray voxels far from the gland stay cheap.
    """
    from scipy.spatial import cKDTree

    pred, ref = np.asarray(pred, bool), np.asarray(ref, bool)
    box = _bbox(pred | ref)
    scale = np.asarray(spacing, dtype=np.float64)
    cp = np.argwhere(_surface(pred[box])) * scale
    cr = np.argwhere(_surface(ref[box])) * scale
    return cKDTree(cr).query(cp, k=1)[0], cKDTree(cp).query(cr, k=1)[0]


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

    The confusion counts of all zones come from one joint histogram of (ref, pred) label pairs, so a
    whole volume is read once, not once per zone. Returns {zone: {metric: value}}.
    """
    pred, ref = np.asarray(pred), np.asarray(ref)
    if pred.shape != ref.shape:
        raise ValueError(f"prediction shape {pred.shape} != reference shape {ref.shape}")
    # Labels above 2 (unknown codes) are folded into 3 so the histogram stays 4x4.
    p, r = np.minimum(pred, 3).astype(np.intp), np.minimum(ref, 3).astype(np.intp)
    joint = np.bincount((r * 4 + p).ravel(), minlength=16).reshape(4, 4)  # joint[ref, pred]
    zone_labels = {"WG": [1, 2, 3], "TZ": [1], "PZ": [2]}
    out = {}
    for z, labels in zone_labels.items():
        in_r = np.isin(np.arange(4), labels)
        tp = int(joint[np.ix_(in_r, in_r)].sum())
        fp = int(joint[np.ix_(~in_r, in_r)].sum())
        fn = int(joint[np.ix_(in_r, ~in_r)].sum())
        m = _from_counts(tp, fp, fn, int(pred.size) - tp - fp - fn)
        if distances:
            m.update(distance_metrics(SELECTORS[z](pred), SELECTORS[z](ref), spacing))
        out[z] = m
    return out


# ----------------------------------------------------------------------------- scores and curves
# Own implementations (checked against scikit-learn in the tests) so that curves, AUC and AP share one
# threshold sweep: a candidate is positive when its score >= threshold.

def roc_curve(scores, labels) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(fpr, tpr, thresholds) over the distinct scores, descending, starting at (0, 0) with threshold +inf."""
    s, y = np.asarray(scores, float).ravel(), np.asarray(labels, bool).ravel()
    order = np.argsort(-s, kind="mergesort")
    s, y = s[order], y[order]
    last = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1]  # last index of each run of tied scores
    tps, fps = np.cumsum(y)[last], (last + 1) - np.cumsum(y)[last]
    n_pos, n_neg = int(y.sum()), int(len(y) - y.sum())
    tpr = np.r_[0.0, tps / n_pos] if n_pos else np.full(len(last) + 1, np.nan)
    fpr = np.r_[0.0, fps / n_neg] if n_neg else np.full(len(last) + 1, np.nan)
    return fpr, tpr, np.r_[np.inf, s[last]]


def roc_auc(scores, labels) -> float:
    """Area under the ROC curve (trapezoid; ties count one half). NaN unless both classes are present."""
    y = np.asarray(labels, bool).ravel()
    if y.all() or not y.any():
        return float("nan")
    fpr, tpr, _ = roc_curve(scores, y)
    return float(np.trapezoid(tpr, fpr))


def average_precision(scores, labels, n_positives: int | None = None) -> float:
    """AP = sum over thresholds of (recall step) x precision, as scikit-learn (no interpolation).

    `n_positives` sets the recall denominator when some positives can never be scored (lesions no
    candidate touches); by default it is the number of positive labels. NaN when there are no positives.
    """
    s, y = np.asarray(scores, float).ravel(), np.asarray(labels, bool).ravel()
    n_pos = int(y.sum()) if n_positives is None else int(n_positives)
    if n_pos == 0:
        return float("nan")
    if len(s) == 0:
        return 0.0
    order = np.argsort(-s, kind="mergesort")
    s, y = s[order], y[order]
    last = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1]
    tps = np.cumsum(y)[last]
    precision, recall = tps / (last + 1), tps / n_pos
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def patient_level(scores, labels, threshold: float = 0.5) -> dict:
    """Patient-level AUC, sensitivity/specificity at `threshold` and at the Youden point (max tpr - fpr).

    scores: one score per patient (e.g. the highest lesion likelihood); labels: 1 = has significant cancer.
    A patient is called positive when score >= threshold.
    """
    s, y = np.asarray(scores, float).ravel(), np.asarray(labels, bool).ravel()
    tp, fn = int(np.sum(y & (s >= threshold))), int(np.sum(y & (s < threshold)))
    tn, fp = int(np.sum(~y & (s < threshold))), int(np.sum(~y & (s >= threshold)))
    out = {"auc": roc_auc(s, y), "threshold": float(threshold), "sensitivity": _ratio(tp, tp + fn),
           "specificity": _ratio(tn, tn + fp), "n_pos": int(y.sum()), "n_neg": int((~y).sum())}
    youden = {"youden_threshold": float("nan"), "youden_sensitivity": float("nan"),
              "youden_specificity": float("nan")}
    if y.any() and (~y).any():
        fpr, tpr, thr = roc_curve(s, y)
        k = int(np.argmax(tpr - fpr))
        youden = {"youden_threshold": float(thr[k]), "youden_sensitivity": float(tpr[k]),
                  "youden_specificity": float(1 - fpr[k])}
    return {**out, **youden}


# ----------------------------------------------------------------------------- lesions

FULL_3D = np.ones((3, 3, 3), bool)  # lesions are 26-connected components, as in PI-CAI's evaluation


def component_zones(labelled: np.ndarray, zones: np.ndarray, n: int) -> np.ndarray:
    """Zone of each component 1..n of a labelled array: 'PZ' or 'TZ' by majority of its voxels ('' outside)."""
    idx = labelled.ravel()
    z = np.asarray(zones).ravel()
    tz = np.bincount(idx, weights=(z == 1), minlength=n + 1)[1:]
    pz = np.bincount(idx, weights=(z == 2), minlength=n + 1)[1:]
    return np.where((tz == 0) & (pz == 0), "", np.where(pz >= tz, "PZ", "TZ"))


def lesion_detection(candidates: np.ndarray, scores, ref_mask: np.ndarray, iou_threshold: float = 0.1,
                     zones: np.ndarray | None = None) -> dict:
    """Match candidate lesions of one case to reference lesions.

    Args:
        candidates: int array, 0 = background, 1..K = candidate lesions (e.g. from scipy.ndimage.label).
        scores: score of each candidate, a sequence indexed by label - 1 or a dict {label: score}.
        ref_mask: reference lesion mask (any value > 0); lesions are its 26-connected components.
        iou_threshold: a candidate hits a reference lesion when IoU > this (0.1, PI-CAI's rule).
        zones: optional zone map (1 TZ, 2 PZ) to name the zone of each lesion and candidate.

    Matching is greedy by descending score: each candidate takes the unmatched reference lesion it
    overlaps most (IoU > threshold). A second candidate on an already-found lesion counts as a false
    positive, so splitting one lesion into pieces is not rewarded.

    Returns {"scores", "hit" (bool per candidate), "n_ref", "ref_hit_score" (best hitting score per
    reference lesion, NaN if missed), "ref_zone", "cand_zone"}.
    """
    candidates = np.asarray(candidates)
    if candidates.shape != np.shape(ref_mask):
        raise ValueError(f"candidate shape {candidates.shape} != reference shape {np.shape(ref_mask)}")
    k = int(candidates.max()) if candidates.size else 0
    if isinstance(scores, dict):
        s = np.array([float(scores.get(i, np.nan)) for i in range(1, k + 1)])
    else:
        s = np.asarray(scores, float).ravel()[:k]
    if len(s) != k or not np.all(np.isfinite(s)):
        raise ValueError(f"need one finite score per candidate label 1..{k}, got {len(s)}")
    ref_lab, n_ref = ndimage.label(np.asarray(ref_mask) > 0, structure=FULL_3D)
    both = (candidates > 0) | (ref_lab > 0)
    c, r = candidates[both].astype(np.intp), ref_lab[both].astype(np.intp)
    inter = np.bincount(c * (n_ref + 1) + r, minlength=(k + 1) * (n_ref + 1)).reshape(k + 1, n_ref + 1)
    size_c, size_r = inter.sum(1), inter.sum(0)
    iou = inter[1:, 1:] / np.maximum(size_c[1:, None] + size_r[None, 1:] - inter[1:, 1:], 1)
    hit = np.zeros(k, bool)
    ref_hit_score = np.full(n_ref, np.nan)
    for i in np.argsort(-s, kind="mergesort"):
        ok = (iou[i] > iou_threshold) & np.isnan(ref_hit_score)
        if ok.any():
            j = int(np.argmax(np.where(ok, iou[i], -1)))
            hit[i], ref_hit_score[j] = True, s[i]
    out = {"scores": s, "hit": hit, "n_ref": int(n_ref), "ref_hit_score": ref_hit_score,
           "ref_zone": np.full(n_ref, ""), "cand_zone": np.full(k, "")}
    if zones is not None:
        out["ref_zone"] = component_zones(ref_lab, zones, n_ref)
        out["cand_zone"] = component_zones(candidates, zones, k)
    return out


def froc(detections: list[dict], fp_rates=(0.5, 1.0, 2.0), zone: str | None = None) -> dict:
    """Free-response ROC over cases from `lesion_detection` results, plus lesion-level AP.

    zone: 'PZ' or 'TZ' keeps only reference lesions and candidates of that zone (needs `zones` given
    to lesion_detection). Sensitivity at r false positives per case is the highest sensitivity reached
    with at most r FPs per case on average. Returns {"fp_per_case", "sensitivity", "thresholds",
    "at" {rate: sensitivity}, "ap", "n_lesions", "n_cases"}.
    """
    n_cases = len(detections)
    s, hit, n_ref = [], [], 0
    for d in detections:
        keep_c = np.ones(len(d["scores"]), bool) if zone is None else d["cand_zone"] == zone
        keep_r = np.ones(d["n_ref"], bool) if zone is None else d["ref_zone"] == zone
        # A hit on a lesion of another zone is not a false positive in this zone: drop it.
        s.append(d["scores"][keep_c])
        hit.append(d["hit"][keep_c])
        n_ref += int(keep_r.sum())
    s = np.concatenate(s) if s else np.zeros(0)
    hit = np.concatenate(hit).astype(bool) if hit else np.zeros(0, bool)
    order = np.argsort(-s, kind="mergesort")
    s, hit = s[order], hit[order]
    last = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1] if len(s) else np.zeros(0, int)
    tps, fps = np.cumsum(hit)[last], (last + 1) - np.cumsum(hit)[last]
    sens = np.r_[0.0, tps / n_ref] if n_ref else np.full(len(last) + 1, np.nan)
    fppc = np.r_[0.0, fps / max(n_cases, 1)]
    at = {float(r): float(np.max(sens[fppc <= r])) for r in fp_rates}
    return {"fp_per_case": fppc, "sensitivity": sens, "thresholds": np.r_[np.inf, s[last]], "at": at,
            "ap": average_precision(s, hit, n_positives=n_ref), "n_lesions": n_ref, "n_cases": n_cases}
