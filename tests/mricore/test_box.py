"""mricore.box and restoring onto a box (mricore.preprocess.restore(..., box=)): a box of the original
grid gets the very values a whole-grid restore gives it (labels exactly, ties included; probabilities
to float32 rounding), and outside a working grid's footprint the
whole-grid restore holds only its outside values, so the ensemble may work on the box alone."""

import numpy as np
import pytest

from mricore import box as boxes
from mricore.preprocess import PreprocessSpec, footprint, preprocess, restore
from mricore.volume import Volume


def _volume(shape, spacing, affine_extra=None, seed=0):
    aff = np.diag(list(spacing) + [1.0])
    aff[:3, 3] = [-40.0, -30.0, -20.0]
    if affine_extra is not None:
        aff = affine_extra @ aff
    arr = np.random.default_rng(seed).random((1,) + shape).astype(np.float32) * 100 + 1
    return Volume(arr, aff, ["T2W"])


TILT = np.array([[1, 0, 0, 0], [0, np.cos(0.2), -np.sin(0.2), 0], [0, np.sin(0.2), np.cos(0.2), 0], [0, 0, 0, 1.0]])
FLIP = np.diag([-1.0, 1.0, 1.0, 1.0])
CASES = [
    # (input shape, input spacing mm, extra world transform, working spacing mm, crop mm)
    ((150, 140, 6), (0.5, 0.5, 3.0), None, [1.5, 1.5, None], [40.0, 40.0]),   # ratio 1/3: voxel centres on ties
    ((150, 140, 6), (0.5, 0.5, 3.0), TILT, [0.6, 0.6, None], [45.0, 35.0]),   # oblique slices (diagonal voxel map)
    ((90, 100, 5), (0.8, 0.8, 4.0), FLIP, [0.6, 0.6, None], [50.0, 50.0]),    # RAS input: reoriented, flipped axis
    ((60, 60, 5), (1.1, 1.1, 3.0), None, [0.5, 0.5, 2.0], None),             # whole plane, every axis resampled
]


@pytest.mark.parametrize("shape,spacing,extra,target,crop", CASES)
def test_restore_on_the_footprint_box_equals_the_whole_grid_and_nothing_lies_outside(shape, spacing, extra,
                                                                                     target, crop):
    vol = _volume(shape, spacing, extra)
    prep = preprocess(vol, PreprocessSpec(target_spacing=target, crop_mm=crop))
    rng = np.random.default_rng(1)
    prob = rng.random((3,) + prep.array.shape[1:]).astype(np.float32)
    label = rng.integers(1, 3, prep.array.shape[1:], dtype=np.uint8)[None]  # no 0: the fill is told apart
    box = footprint(prep)
    whole_p, whole_l = restore(prob, prep, fill=[7.0, 8.0, 9.0]), restore(label, prep)
    # Same weights, same coordinates; a matrix product of another shape may round the sum differently.
    np.testing.assert_allclose(restore(prob, prep, fill=[7.0, 8.0, 9.0], box=box), whole_p[(slice(None), *box)],
                               rtol=0, atol=1e-6)
    np.testing.assert_array_equal(restore(label, prep, box=box), whole_l[(slice(None), *box)])
    outside = np.ones(shape, bool)
    outside[box] = False
    for c, v in enumerate([7.0, 8.0, 9.0]):
        assert np.all(whole_p[c][outside] == v)
    assert not whole_l[0][outside].any()
    if crop is not None:
        assert outside.any()  # the box is smaller than the grid: the case tests something


def test_the_footprint_of_a_part_of_the_working_grid_holds_every_voxel_it_reaches():
    """`footprint(prep, lo, hi)`: the locator restores its gland's box of working voxels only."""
    prep = preprocess(_volume((150, 140, 6), (0.5, 0.5, 3.0)), PreprocessSpec(target_spacing=[1.5, 1.5, None], crop_mm=None))
    mask = np.zeros(prep.array.shape[1:], np.uint8)
    mask[10:14, 20:31, 2:4] = 1
    whole = restore(mask[None], prep)[0]
    box = footprint(prep, (10, 20, 2), (14, 31, 4))
    assert whole[box].sum() == whole.sum() > 0
    np.testing.assert_array_equal(restore(mask[None], prep, box=box)[0], whole[box])


def test_embed_union_intersection():
    a, b = (slice(2, 5), slice(0, 3), slice(1, 2)), (slice(4, 8), slice(1, 2), slice(0, 2))
    assert boxes.union([a, b]) == (slice(2, 8), slice(0, 3), slice(0, 2))
    assert boxes.intersection(a, b) == (slice(4, 5), slice(1, 2), slice(1, 2))
    assert boxes.is_empty(boxes.intersection(a, (slice(6, 9), slice(0, 3), slice(0, 2))))
    assert boxes.is_empty(boxes.union([]))
    values = np.arange(2 * 3 * 3 * 1, dtype=np.float32).reshape(2, 3, 3, 1) + 1
    out = boxes.embed(values, a, (9, 4, 3), fill=[1.0, 0.0])
    assert out.shape == (2, 9, 4, 3)
    np.testing.assert_array_equal(out[(slice(None), *a)], values)
    assert out[0].sum() == values[0].sum() + (9 * 4 * 3 - 9)  # fill 1 outside the 9 box voxels
    assert out[1].sum() == values[1].sum()
    np.testing.assert_array_equal(boxes.embed(values[0], a, (9, 4, 3))[a], values[0])
