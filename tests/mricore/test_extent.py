"""Apex, mid-gland and base thirds and the through-plane extent error (mricore.extent), on small
hand-made maps with known answers and on a real oblique expert case."""

import numpy as np
import pytest

from mricore.extent import extent_errors_mm, extent_metrics, superior_mm, thirds

# Voxel axes (i, j, k) with k along superior at 3 mm a slice; a flipped copy runs k inferior-wards.
AXIAL = np.diag([0.5, 0.5, 3.0, 1.0])
FLIPPED = np.diag([0.5, 0.5, -3.0, 1.0])


def _gland(slices=range(2, 11), shape=(8, 8, 12)) -> np.ndarray:
    y = np.zeros(shape, np.uint8)
    y[2:6, 2:6, list(slices)] = 1
    y[2:6, 5, list(slices)] = 2
    return y


def test_thirds_split_the_reference_gland_from_apex_to_base():
    parts = thirds(_gland() > 0, AXIAL)
    assert [list(parts[t]) for t in ("apex", "mid", "base")] == [[2, 3, 4], [5, 6, 7], [8, 9, 10]]


def test_the_affine_not_the_axis_order_says_which_end_is_the_apex():
    parts = thirds(_gland() > 0, FLIPPED)  # k grows inferior-wards: slice 10 is now the most inferior
    assert list(parts["apex"]) == [10, 9, 8] and list(parts["base"]) == [4, 3, 2]


def test_an_empty_apex_scores_zero_there_and_its_extent_error_in_mm():
    ref, pred = _gland(), _gland(range(4, 11))  # the prediction misses the two most inferior slices
    m = extent_metrics(pred, ref, AXIAL)["WG"]
    assert m["dsc_mid"] == 1.0 and m["dsc_base"] == 1.0 and 0 < m["dsc_apex"] < 1
    assert m["apex_error_mm"] == pytest.approx(6.0) and m["base_error_mm"] == 0.0


def test_empty_maps_follow_the_written_rule():
    ref = _gland()
    m = extent_metrics(np.zeros_like(ref), ref, AXIAL)["PZ"]
    assert m["dsc_apex"] == 0.0 and np.isnan(m["apex_error_mm"])   # a reference with nothing predicted
    assert np.isnan(extent_metrics(ref, np.zeros_like(ref), AXIAL)["WG"]["dsc_mid"])  # no thirds: no gland
    assert extent_errors_mm(ref > 0, ref > 0, AXIAL) == {"apex_error_mm": 0.0, "base_error_mm": 0.0}


def test_a_slab_of_two_slices_has_no_thirds():
    assert thirds(_gland(range(5, 7)) > 0, AXIAL) == {}


def test_real_oblique_case_superior_axis_and_perfect_self_score(data_dir):
    from mricore.io import read_label

    ref = read_label(data_dir / "prostate158" / "001" / "zones.nii.gz")
    axis, z = superior_mm(ref.affine, ref.shape)
    assert ref.shape[axis] == len(z) and np.all(np.abs(np.diff(z)) > 1.0)  # monotone, slice-thick steps
    m = extent_metrics(ref.array[0], ref.array[0], ref.affine)
    scores = [m[zone][f"dsc_{t}"] for zone in m for t in ("apex", "mid", "base")]
    assert all(s == 1.0 or np.isnan(s) for s in scores) and scores.count(1.0) >= 7  # PZ may miss the base
