"""mricore.metrics: the written empty-mask rule, parity with MONAI and scikit-learn on the same
arrays, and the lesion-level detection / FROC / patient-level functions."""

import math

import numpy as np
import pytest
import torch
from monai.metrics import (DiceMetric, HausdorffDistanceMetric, SurfaceDistanceMetric,
                           compute_confusion_matrix_metric, get_confusion_matrix)
from sklearn.metrics import average_precision_score, roc_auc_score

from mricore import metrics as M
from mricore.zones import SELECTORS

NAN = float("nan")


def ball(shape, centre, radii):
    g = np.indices(shape).astype(float)
    return sum(((g[i] - centre[i]) / radii[i]) ** 2 for i in range(3)) <= 1


def pair(seed):
    """A noisy ellipsoid prediction and a shifted reference on an anisotropic grid."""
    rng = np.random.default_rng(seed)
    shape = (36, 40, 12)
    ref = ball(shape, (18, 20, 6), (9, 11, 4))
    pred = ball(shape, (18 + rng.integers(-3, 4), 20 + rng.integers(-3, 4), 6), (10, 9, 3)) ^ (rng.random(shape) < 0.01)
    return pred, ref


def overlap(pred, ref):
    """Overlap metrics of two boolean masks, through zone_metrics (WG = label > 0)."""
    return M.zone_metrics(np.asarray(pred, np.uint8), np.asarray(ref, np.uint8), (1, 1, 1), distances=False)["WG"]


def _t(a):
    return torch.as_tensor(np.asarray(a, np.float32))[None, None]


# ----------------------------------------------------------------------------- empty-mask rule
EMPTY_CASES = [
    # (pred, ref, expected dsc, sensitivity, precision, hd95): both empty -> undefined
    (np.zeros((4, 4, 4), bool), np.zeros((4, 4, 4), bool), NAN, NAN, NAN, NAN),
    # a prediction on an empty reference scores DSC 0; sensitivity undefined; distances undefined
    (np.ones((4, 4, 4), bool), np.zeros((4, 4, 4), bool), 0.0, NAN, 0.0, NAN),
    # an empty prediction on a non-empty reference: DSC 0, sensitivity 0, precision undefined
    (np.zeros((4, 4, 4), bool), np.ones((4, 4, 4), bool), 0.0, 0.0, NAN, NAN),
]


@pytest.mark.parametrize("pred, ref, dsc, sens, prec, hd", EMPTY_CASES)
def test_empty_mask_rule(pred, ref, dsc, sens, prec, hd):
    m = overlap(pred, ref)
    for got, want in ((m["dsc"], dsc), (m["sensitivity"], sens), (m["precision"], prec),
                      (M.distance_metrics(pred, ref, (1, 1, 1))["hd95"], hd)):
        assert (math.isnan(got) and math.isnan(want)) or got == want


def test_specificity_undefined_only_when_all_reference():
    full = np.ones((3, 3, 3), bool)
    assert math.isnan(overlap(full, full)["specificity"])
    assert overlap(np.zeros_like(full), np.zeros_like(full))["specificity"] == 1.0


def test_rvd_sign_and_empty_reference():
    ref = np.zeros((4, 4, 4), bool)
    ref[:2] = True
    pred = np.zeros_like(ref)
    pred[:3] = True
    assert overlap(pred, ref)["rvd"] == pytest.approx(0.5)  # 50 % over-segmentation
    assert math.isnan(overlap(pred, np.zeros_like(ref))["rvd"])


def test_ranking_auc_undefined_with_one_class():
    assert math.isnan(M.roc_auc([0.1, 0.9], [1, 1]))
    assert math.isnan(M.average_precision([0.1, 0.9], [0, 0]))


# ----------------------------------------------------------------------------- parity with MONAI
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_overlap_parity_with_monai(seed):
    pred, ref = pair(seed)
    ours = overlap(pred, ref)
    assert ours["dsc"] == pytest.approx(DiceMetric()(_t(pred), _t(ref)).item(), abs=1e-6)
    cm = get_confusion_matrix(_t(pred), _t(ref))
    for ours_name, monai_name in (("sensitivity", "sensitivity"), ("specificity", "specificity"),
                                  ("precision", "precision")):
        theirs = compute_confusion_matrix_metric(monai_name, cm).item()
        assert ours[ours_name] == pytest.approx(theirs, abs=1e-6), ours_name


@pytest.mark.parametrize("seed, spacing", [(0, (0.5, 0.5, 3.0)), (1, (1.0, 1.0, 1.0)), (2, (0.4, 0.7, 2.5))])
def test_distance_parity_with_monai(seed, spacing):
    pred, ref = pair(seed)
    ours = M.distance_metrics(pred, ref, spacing)
    hd = HausdorffDistanceMetric(percentile=95)(_t(pred), _t(ref), spacing=spacing).item()
    assd = SurfaceDistanceMetric(symmetric=True)(_t(pred), _t(ref), spacing=spacing).item()
    # Same edge definition and exact Euclidean distances: equal up to MONAI's float32 output.
    assert ours["hd95"] == pytest.approx(hd, rel=1e-5)
    assert ours["assd"] == pytest.approx(assd, rel=1e-5)


def test_distances_at_the_image_border_match_monai():
    # A mask touching the image edge: the edge voxels count as surface in both implementations.
    ref = np.zeros((10, 10, 5), bool)
    ref[:6, :6] = True
    pred = np.zeros_like(ref)
    pred[2:9, 1:7, 1:] = True
    ours = M.distance_metrics(pred, ref, (1, 1, 2))
    assert ours["hd95"] == pytest.approx(HausdorffDistanceMetric(percentile=95)(_t(pred), _t(ref), spacing=(1, 1, 2)).item(), rel=1e-5)


def test_zone_metrics_matches_per_mask_metrics():
    rng = np.random.default_rng(3)
    ref = rng.integers(0, 3, (20, 20, 6)).astype(np.uint8)
    pred = np.where(rng.random(ref.shape) < 0.8, ref, rng.integers(0, 3, ref.shape)).astype(np.uint8)
    zm = M.zone_metrics(pred, ref, (0.5, 0.5, 3.0), distances=False)
    for zone, f in SELECTORS.items():
        assert zm[zone]["dsc"] == pytest.approx(M.dice(f(pred), f(ref)))
        assert zm[zone]["tp"] + zm[zone]["fp"] == int(f(pred).sum())


def test_zone_metrics_rejects_shape_mismatch():
    with pytest.raises(ValueError, match="shape"):
        M.zone_metrics(np.zeros((2, 2, 2)), np.zeros((2, 2, 3)), (1, 1, 1))


# ----------------------------------------------------------------------------- parity with scikit-learn
@pytest.mark.parametrize("seed, rounding", [(0, 3), (1, 1), (2, None)])  # rounding makes ties
def test_auc_and_ap_parity_with_sklearn(seed, rounding):
    rng = np.random.default_rng(seed)
    s = rng.random(3000)
    y = rng.random(3000) < s * 0.6
    if rounding is not None:
        s = np.round(s, rounding)
    assert M.roc_auc(s, y) == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    assert M.average_precision(s, y) == pytest.approx(average_precision_score(y, s), abs=1e-12)


def test_patient_level_threshold_and_youden():
    scores = [0.1, 0.4, 0.35, 0.8, 0.7, 0.2]
    labels = [0, 0, 1, 1, 1, 0]
    p = M.patient_level(scores, labels, threshold=0.5)
    assert p["auc"] == pytest.approx(roc_auc_score(labels, scores))
    assert (p["sensitivity"], p["specificity"]) == (pytest.approx(2 / 3), 1.0)
    # Youden: threshold 0.35 catches all positives with one false positive (0.4).
    assert p["youden_threshold"] == 0.35
    assert (p["youden_sensitivity"], p["youden_specificity"]) == (1.0, pytest.approx(2 / 3))


# ----------------------------------------------------------------------------- lesions
def lesion_case():
    """Two reference lesions (PZ and TZ); candidates: a hit, a duplicate on the same lesion, a FP."""
    zones = np.zeros((30, 30, 6), np.uint8)
    zones[:15], zones[15:] = 2, 1
    ref = np.zeros(zones.shape, bool)
    ref[3:8, 3:8, 1:4] = True      # PZ lesion
    ref[20:25, 20:25, 1:4] = True  # TZ lesion (missed)
    cand = np.zeros(zones.shape, np.int32)
    cand[4:9, 4:9, 1:4] = 1       # overlaps the PZ lesion (IoU > 0.1)
    cand[3:5, 3:5, 1:2] = 2       # a small second candidate on the same lesion (IoU < 0.1)
    cand[16:20, 10:14, 2:4] = 3   # in the TZ, nowhere near a lesion
    return cand, ref, zones


def test_lesion_detection_hits_duplicates_and_zones():
    cand, ref, zones = lesion_case()
    d = M.lesion_detection(cand, [0.9, 0.95, 0.3], ref, zones=zones)
    assert d["n_ref"] == 2
    assert d["hit"].tolist() == [True, False, False]
    assert d["ref_hit_score"][0] == 0.9 and math.isnan(d["ref_hit_score"][1])
    assert d["ref_zone"].tolist() == ["PZ", "TZ"]
    assert d["cand_zone"].tolist() == ["PZ", "PZ", "TZ"]
    # The same scores as a dict give the same result.
    assert M.lesion_detection(cand, {1: 0.9, 2: 0.95, 3: 0.3}, ref)["hit"].tolist() == [True, False, False]


def test_lesion_detection_iou_threshold_is_strict():
    ref = np.zeros((10, 10, 1), bool)
    ref[:10, :1] = True                 # 10 voxels
    cand = np.zeros(ref.shape, np.int32)
    cand[:1, :1] = 1                    # IoU exactly 0.1 is not a hit
    assert not M.lesion_detection(cand, [1.0], ref)["hit"][0]
    cand[:2, :1] = 1                    # IoU 0.2
    assert M.lesion_detection(cand, [1.0], ref)["hit"][0]


@pytest.mark.parametrize("scores, match", [([0.5], "one finite score"), ([0.5, np.nan, 0.1], "finite")])
def test_lesion_detection_rejects_bad_scores(scores, match):
    cand, ref, _ = lesion_case()
    with pytest.raises(ValueError, match=match):
        M.lesion_detection(cand, scores, ref)


def test_froc_and_lesion_ap():
    cand, ref, zones = lesion_case()
    det = [M.lesion_detection(cand, [0.9, 0.95, 0.3], ref, zones=zones),
           M.lesion_detection(np.zeros_like(cand), [], np.zeros_like(ref))]  # a negative case, no candidates
    f = M.froc(det)
    assert f["n_lesions"] == 2 and f["n_cases"] == 2
    # Sorted scores 0.95 (FP), 0.9 (TP), 0.3 (FP): at 0.5 FP/case (1 FP) sensitivity is 1/2.
    assert f["at"] == {0.5: 0.5, 1.0: 0.5, 2.0: 0.5}
    assert f["ap"] == pytest.approx(0.5 * 0.5)  # recall step 1/2 at precision 1/2
    pz = M.froc(det, zone="PZ")
    assert pz["n_lesions"] == 1 and pz["at"][0.5] == 1.0
    assert M.froc(det, zone="TZ")["at"][2.0] == 0.0


def test_lesion_ap_equals_sklearn_when_every_lesion_is_found():
    rng = np.random.default_rng(5)
    ref = np.zeros((40, 40, 4), bool)
    cand = np.zeros(ref.shape, np.int32)
    for i in range(6):  # six lesions, each found by one candidate, plus six false positives
        ref[i * 6:i * 6 + 4, 2:6, 1:3] = True
        cand[i * 6:i * 6 + 4, 3:7, 1:3] = i + 1
        cand[i * 6:i * 6 + 3, 30:33, 1:3] = i + 7
    scores = rng.random(12)
    d = M.lesion_detection(cand, scores, ref)
    assert d["hit"].sum() == 6
    assert M.froc([d])["ap"] == pytest.approx(average_precision_score(d["hit"], d["scores"]))
