"""localize.candidates and localize.patches on hand-made maps with known blobs."""

import numpy as np
import pytest

from localize.candidates import extract_candidates, patient_score
from localize.patches import assemble, extract, patch_labels, tile_gland

AFFINE = np.array([[2.0, 0, 0, -10], [0, 2.0, 0, 5], [0, 0, 3.0, 100], [0, 0, 0, 1]])  # 2x2x3 mm voxels


def _map():
    prob = np.zeros((20, 20, 6), np.float32)
    zones = np.zeros((20, 20, 6), np.uint8)
    zones[2:18, 2:10] = 1   # TZ
    zones[2:18, 10:18] = 2  # PZ
    prob[3:5, 3:5, 1:3] = 0.7     # blob A: 8 voxels in TZ, score 0.7
    prob[12:15, 12:15, 2] = 0.9   # blob B: 9 voxels in PZ, score 0.9
    prob[13, 13, 2] = 0.95
    prob[8, 16, 4] = 0.3          # below threshold
    return prob, zones


def test_blobs_become_candidates_ordered_by_score():
    prob, zones = _map()
    labels, cands = extract_candidates(prob, zones, AFFINE, threshold=0.5)
    assert labels.dtype == np.uint16 and labels.max() == 2
    b, a = cands  # highest score first
    assert (b["label"], b["score"], b["zone"], b["voxels"]) == (1, pytest.approx(0.95), "PZ", 9)
    assert (a["label"], a["score"], a["zone"], a["voxels"]) == (2, pytest.approx(0.7), "TZ", 8)
    assert b["volume_ml"] == pytest.approx(9 * 12 / 1000)
    assert b["centroid_ijk"] == pytest.approx([13, 13, 2])
    assert b["centroid_ras_mm"] == pytest.approx([-10 + 26, 5 + 26, 100 + 6])
    assert b["centroid_lps_mm"] == pytest.approx([10 - 26, -5 - 26, 106])
    assert set(np.unique(labels[prob < 0.5])) == {0}


def test_min_volume_drops_small_blobs():
    prob, zones = _map()
    _, cands = extract_candidates(prob, zones, AFFINE, threshold=0.5, min_volume_ml=9 * 12 / 1000 - 1e-6)
    assert [c["zone"] for c in cands] == ["PZ"]


def test_empty_map_has_no_candidates_and_zero_score():
    z = np.zeros((5, 5, 5), np.uint8)
    labels, cands = extract_candidates(np.zeros((5, 5, 5)), z, AFFINE, 0.5)
    assert cands == [] and labels.max() == 0 and patient_score(np.zeros((5, 5, 5))) == 0.0


def test_tiles_cover_only_the_gland_and_carry_the_zone():
    _, zones = _map()
    t = tile_gland(zones, [8, 8], [4, 4])
    assert len(t.corners) > 0 and t.size == (8, 8, 1)
    assert set(t.zone.tolist()) == {1, 2}
    empty = tile_gland(np.zeros((20, 20, 3), np.uint8), [8, 8], [4, 4])
    assert len(empty.corners) == 0


def test_patch_labels_and_extract_shapes():
    _, zones = _map()
    lesion = np.zeros_like(zones)
    lesion[12:15, 12:15, 2] = 1
    t = tile_gland(zones, [8, 8], [4, 4])
    y = patch_labels(lesion, t, min_voxels=3)
    assert 0 < np.nansum(y) < len(y)
    # A tile with the lesion only at its rim is ambiguous (NaN), never a negative.
    rim = [i for i, (a, b, c) in enumerate(t.corners) if lesion[a:a + 8, b:b + 8, c].any() and y[i] != 1]
    assert rim and np.isnan(y[rim]).all()
    assert (y[np.isfinite(y)] >= 0).all() and set(np.unique(y[np.isfinite(y)])) <= {0.0, 1.0}
    # Positive tiles are on slice 2 and their centre overlaps the lesion.
    assert set(t.corners[y > 0][:, 2].tolist()) == {2}
    p = extract(np.ones((2,) + zones.shape, np.float32), t)
    assert p.shape == (len(t.corners), 2, 8, 8)


def test_assemble_constant_scores_give_constant_map_in_gland():
    _, zones = _map()
    t = tile_gland(zones, [8, 8], [4, 4])
    m = assemble(np.full(len(t.corners), 0.4, np.float32), t, zones.shape, gland=zones)
    assert np.allclose(m[zones > 0], 0.4) and np.all(m[zones == 0] == 0)
    hi = assemble(np.where(t.zone == 2, 0.9, 0.1).astype(np.float32), t, zones.shape, gland=zones)
    assert hi[zones == 2].mean() > hi[zones == 1].mean()
