"""mricore.align and load_case alignment on the real ProstateX-0000 ADC/DWI (own 2 mm grid) and T2W."""

import numpy as np
import pytest

from mricore_helpers import crop, save
from mricore.align import alignment_score, fill_outside_box, resample_array, resample_to
from mricore.datasets import load_case, load_dataset
from mricore.io import read_label, read_nifti
from mricore.volume import Volume


def test_world_point_maps_to_same_intensity(data_dir, px0000_crop):
    """An ADC voxel centre, mapped through both affines onto the T2W grid, reads the same value."""
    case = load_dataset(px0000_crop)[0]
    image, _, info = load_case(case, ["T2W", "ADC", "DWI"])
    assert info["alignment"]["ADC"]["same_grid"] is False
    adc = read_nifti(data_dir / "prostatex/ProstateX-0000/adc.nii.gz")
    on_t2 = image.channel("ADC")
    hits = 0
    for ijk in np.argwhere(adc.array[0] > 500)[::97]:   # a spread of tissue voxels
        world = adc.affine @ np.r_[ijk, 1.0]
        t2_ijk = np.linalg.inv(image.affine) @ world
        r = np.round(t2_ijk[:3]).astype(int)
        if np.any(r < 0) or np.any(r >= image.shape) or np.abs(t2_ijk[:3] - r).max() > 1e-3:
            continue  # outside the crop, or not on a T2W voxel centre
        assert on_t2[tuple(r)] == pytest.approx(adc.array[0][tuple(ijk)], rel=1e-3, abs=1e-2)
        hits += 1
    assert hits >= 5


def test_nmi_score_reported_and_drops_when_misaligned(px0000_crop, tmp_path):
    case = load_dataset(px0000_crop)[0]
    _, _, info = load_case(case, ["T2W", "ADC"])
    nmi = info["alignment"]["ADC"]["nmi"]
    # Shift the ADC 10 mm in x: same data, wrong place.
    adc = read_nifti(px0000_crop / "adc.nii.gz")
    aff = adc.affine.copy()
    aff[0, 3] += 10.0
    t2 = read_nifti(px0000_crop / "t2.nii.gz")
    shifted = alignment_score(t2, resample_to(Volume(adc.array, aff, ("ADC",)), t2))
    assert 0.02 < nmi < 1.0
    assert shifted < 0.7 * nmi


def _case_with_shifted_adc(px0000_crop, tmp_path, shift_mm):
    out = tmp_path / "ProstateX-0000"
    out.mkdir()
    (out / "t2.nii.gz").write_bytes((px0000_crop / "t2.nii.gz").read_bytes())
    adc = read_nifti(px0000_crop / "adc.nii.gz")
    aff = adc.affine.copy()
    aff[:3, 3] += shift_mm
    save(adc.array[0], aff, out / "adc.nii.gz")
    return load_dataset(out)[0]


def test_registration_recovers_a_known_shift(px0000_crop, tmp_path):
    """Register the real ADC, then the same ADC moved by (+6, -4, 0) mm RAS: the estimated
    translations differ by that shift (SimpleITK is LPS: x, y negated), and NMI recovers."""
    base = load_dataset(px0000_crop)[0]
    _, _, info0 = load_case(base, ["T2W", "ADC"], register=True)
    moved = _case_with_shifted_adc(px0000_crop, tmp_path, np.array([6.0, -4.0, 0.0]))
    _, _, info_unreg = load_case(moved, ["T2W", "ADC"])
    img, _, info1 = load_case(moved, ["T2W", "ADC"], register=True)
    r0, r1 = info0["alignment"]["ADC"]["registration"], info1["alignment"]["ADC"]["registration"]
    assert r1["accepted"] and r1["metric_after"] < r1["metric_before"]
    delta = np.array(r1["translation_mm"]) - np.array(r0["translation_mm"])
    np.testing.assert_allclose(delta, [-6.0, 4.0, 0.0], atol=1.5)
    assert info1["alignment"]["ADC"]["nmi"] > info_unreg["alignment"]["ADC"]["nmi"] + 0.01
    assert img.channels == ("T2W", "ADC") and img.shape == read_nifti(px0000_crop / "t2.nii.gz").shape


RESAMPLE_LABELS = [
    ("prostate158/001", "zones"),        # oblique 0.47 x 0.47 x 3.15 mm
    ("i2cvb/Patient_68619", "zones"),    # 5-slice slab: edge slices must survive
]


@pytest.mark.parametrize("case,key", RESAMPLE_LABELS)
def test_nearest_resampling_preserves_label_values_there_and_back(data_dir, case, key):
    lab = read_label(data_dir / case / f"{key}.nii.gz")
    # Another grid: 0.8 mm in-plane, rotated 7 degrees about the slice axis, shifted in-plane (a
    # shift along the slice normal would legitimately move edge slices out of a 5-slice slab).
    c, s = np.cos(np.radians(7)), np.sin(np.radians(7))
    rot = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])
    aff = lab.affine.copy()
    aff[:3, :3] = lab.affine[:3, :3] @ rot @ np.diag([0.8 / lab.spacing[0], 0.8 / lab.spacing[1], 1.0])
    aff[:3, 3] += lab.affine[:3, :3] @ [2.7, -1.6, 0.0]
    shape = tuple(int(round(n * sp / nsp)) for n, sp, nsp in zip(lab.shape, lab.spacing, (0.8, 0.8, lab.spacing[2])))
    other = resample_to(lab, (shape, aff))
    back = resample_to(other, lab)
    for arr in (other.array, back.array):
        assert arr.dtype == np.uint8
        assert set(np.unique(arr)) <= set(np.unique(lab.array))   # no new values
    assert set(np.unique(back.array)) == {0, 1, 2}
    for k in (1, 2):
        a, b = lab.array[0] == k, back.array[0] == k
        assert 2 * (a & b).sum() / (a.sum() + b.sum()) > 0.85
    # Every slice that holds labels still does after the round trip.
    np.testing.assert_array_equal(lab.array[0].any(axis=(0, 1)), back.array[0].any(axis=(0, 1)))


def test_linear_resampling_would_create_new_label_values(data_dir):
    """Why labels must use order 0: the same round trip with order 1 produces fractional values."""
    lab = read_label(data_dir / "i2cvb/Patient_68619/zones.nii.gz")
    aff = lab.affine.copy()
    aff[:3, 3] += 0.3
    out = resample_array(lab.array.astype(np.float32), lab.affine, aff, lab.shape, order=1)
    assert not np.all(np.isin(out, [0, 1, 2]))


def test_edge_voxels_kept_despite_rounding_error():
    """A destination grid equal to the source up to 1e-12 mm must reproduce every voxel (regression:
    mode='constant' dropped whole edge slices)."""
    arr = np.arange(1, 1 + 4 * 3 * 2, dtype=np.uint8).reshape(1, 4, 3, 2)
    src = np.diag([0.5, 0.5, 3.0, 1.0])
    dst = src.copy()
    dst[:3, 3] -= 1e-12
    out = resample_array(arr, src, dst, (4, 3, 2), order=0)
    np.testing.assert_array_equal(out, arr)
    lin = resample_array(arr.astype(np.float32), src, dst, (4, 3, 2), order=1)
    np.testing.assert_allclose(lin, arr, atol=1e-6)


def test_outside_source_footprint_gets_cval():
    arr = np.ones((1, 4, 4, 2), np.float32)
    dst = np.eye(4)
    dst[0, 3] = 3.0   # shifted by 3 voxels: destination i >= 1 lies beyond the source
    out = resample_array(arr, np.eye(4), dst, (4, 4, 2), order=1, cval=-7.0)
    assert np.all(out[0, 0] == 1.0) and np.all(out[0, 1:] == -7.0)


def test_resample_to_same_grid_is_identity(data_dir):
    v = read_nifti(data_dir / "i2cvb/Patient_68619/t2.nii.gz")
    assert resample_to(v, v) is v


def test_crop_helper_keeps_world_position(data_dir):
    v = read_nifti(data_dir / "i2cvb/Patient_68619/t2.nii.gz")
    c = crop(v, (10, 20, 1), (30, 40, 4))
    np.testing.assert_allclose(c.affine @ [0, 0, 0, 1], v.affine @ [10, 20, 1, 1])
    np.testing.assert_allclose(resample_to(v, c).array, c.array, atol=1e-4)


def _general_path(array, src, dst, shape, order, cval):
    """The ndimage path that resample_array takes for oblique mappings, forced here for comparison."""
    from scipy import ndimage

    vox = np.linalg.inv(src) @ dst
    m, o = vox[:3, :3], vox[:3, 3]
    inside = np.pad(np.ones(array.shape[1:], np.uint8), 1)
    inside = ndimage.affine_transform(inside, m, o + 1.0, output_shape=shape, order=0, mode="constant",
                                      prefilter=False).astype(bool)
    out = np.empty((array.shape[0],) + shape, array.dtype if order == 0 else np.float32)
    for c in range(array.shape[0]):
        out[c] = ndimage.affine_transform(array[c].astype(out.dtype), m, o, output_shape=shape, order=order,
                                          mode="nearest", prefilter=False)
        out[c][~inside] = cval
    return out


@pytest.mark.parametrize("seed", range(12))
def test_separable_fast_path_equals_the_general_path(seed):
    # Diagonal voxel mappings (what preprocess/restore produce) take the separable path; flips, half-voxel
    # offsets and exact .5 rounding ties included. Labels must match exactly, images to float32 rounding.
    from mricore.align import resample_array

    rng = np.random.default_rng(seed)
    s1, s2 = rng.choice([0.5, 0.6, 1.0, 0.47]), rng.choice([0.25, 0.5, 0.6, 1.2])
    src = np.diag([s1 * rng.choice([-1, 1]), s1, 3.0, 1.0])
    dst = np.diag([s2, s2 * rng.choice([-1, 1]), rng.choice([1.5, 3.0]), 1.0])
    src[:3, 3], dst[:3, 3] = rng.choice([0, 0.25, 0.5, 1.0], 3), rng.choice([0, 0.25, 0.5, -1.0], 3)
    labels = rng.integers(0, 3, (1, 20, 18, 6)).astype(np.uint8)
    image = rng.random((2, 20, 18, 6)).astype(np.float32)
    shape = (25, 23, 9)
    assert np.array_equal(resample_array(labels, src, dst, shape, order=0),
                          _general_path(labels, src, dst, shape, 0, 0))
    fast = resample_array(image, src, dst, shape, order=1, cval=np.nan)
    slow = _general_path(image, src, dst, shape, 1, np.nan)
    assert np.array_equal(np.isnan(fast), np.isnan(slow))
    np.testing.assert_allclose(fast[~np.isnan(fast)], slow[~np.isnan(slow)], atol=1e-6)


def test_fill_outside_box_equals_boolean_indexing_per_channel():
    rng = np.random.default_rng(1)
    arr = rng.random((3, 5, 4, 3)).astype(np.float32)
    inside = [np.array([0, 1, 1, 1, 0], bool), np.array([1, 1, 0, 0], bool), np.array([0, 1, 1], bool)]
    box = inside[0][:, None, None] & inside[1][None, :, None] & inside[2][None, None, :]
    ref = arr.copy()
    ref[:, ~box] = np.array([1.0, 0.0, np.nan], np.float32)[:, None]
    fill_outside_box(arr, inside, [1.0, 0.0, np.nan])
    np.testing.assert_array_equal(arr, ref)  # NaN == NaN here; the box itself untouched
    labels = np.full((2, 5, 4, 3), 2, np.uint8)
    fill_outside_box(labels, inside, [0, 0])
    assert (labels[:, box] == 2).all() and (labels[:, ~box] == 0).all()
