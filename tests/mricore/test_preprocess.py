"""mricore.preprocess: working grid there and back on real oblique cases, orientation, normalisation
rules, and the serialisable spec."""

from dataclasses import replace

import nibabel as nib
import numpy as np
import pytest

from mricore.bias import n4_correct
from mricore.config import ConfigError, from_dict, to_dict
from mricore.errors import InputError
from mricore.io import read_label, read_nifti
from mricore.preprocess import (ChannelNorm, PreprocessSpec, gland_centre, normalise, prepare_label,
                                preprocess, restore)
from mricore.volume import Volume

ORIGINAL_GRID = [
    ("prostate158/001", "zones"),           # oblique, 0.47 mm -> 0.6 mm, FOV cropped to 128 mm
    ("prostatex/ProstateX-0000", "zones_ai"),  # oblique, 0.5 mm
    ("i2cvb/Patient_68619", "zones"),       # 5-slice slab, labels on every slice
]


def dice(a, b):
    return 2 * (a & b).sum() / (a.sum() + b.sum())


@pytest.mark.parametrize("case,key", ORIGINAL_GRID)
def test_restore_returns_to_exact_original_grid_and_labels_agree(data_dir, case, key):
    t2 = read_nifti(data_dir / case / "t2.nii.gz", "T2W")
    lab = read_label(data_dir / case / f"{key}.nii.gz")
    prep = preprocess(t2, PreprocessSpec())
    np.testing.assert_allclose(prep.affine[:3, :3] @ np.linalg.inv(prep.affine[:3, :3]), np.eye(3), atol=1e-9)
    np.testing.assert_allclose(np.linalg.norm(prep.affine[:3, :3], axis=0)[:2], [0.6, 0.6])
    y = prepare_label(lab, prep)
    assert y.dtype == np.uint8 and set(np.unique(y)) == {0, 1, 2}
    back = restore(y[None], prep)[0]
    assert back.shape == t2.shape and prep.original_shape == t2.shape
    np.testing.assert_array_equal(prep.original_affine, t2.affine)
    assert dice(back > 0, lab.array[0] > 0) > 0.95  # WG
    for k in (1, 2):
        assert dice(back == k, lab.array[0] == k) > 0.9
    # One-hot "probabilities" restored linearly, argmax: the same agreement, and fill outside.
    prob = restore(np.stack([y == k for k in range(3)]).astype(np.float32), prep, fill=[1.0, 0.0, 0.0])
    assert prob.shape == (3,) + t2.shape
    np.testing.assert_allclose(prob.sum(0), 1.0, atol=1e-5)
    assert dice(prob.argmax(0) > 0, lab.array[0] > 0) > 0.95


def test_prostate158_001_wg_round_trip_dice(data_dir):
    """The issue's figure: WG through prepare_label + restore (nearest for integer maps) agrees with DSC > 0.95."""
    t2 = read_nifti(data_dir / "prostate158/001/t2.nii.gz", "T2W")
    lab = read_label(data_dir / "prostate158/001/zones.nii.gz")
    prep = preprocess(t2, PreprocessSpec())
    back = restore(prepare_label(lab, prep)[None], prep)[0]
    assert dice(back > 0, lab.array[0] > 0) > 0.95


def _ras_copy(path, name="T2W"):
    img = nib.as_closest_canonical(nib.load(str(path)))
    assert nib.aff2axcodes(img.affine) == ("R", "A", "S")
    return Volume(np.asarray(img.dataobj, np.float32)[None], img.affine, (name,), "ras")


def test_ras_input_gives_the_lps_result_up_to_the_flip(data_dir):
    path = data_dir / "prostate158/001/t2.nii.gz"
    lps = read_nifti(path, "T2W")
    ras = _ras_copy(path)
    spec = PreprocessSpec()
    a, b = preprocess(lps, spec), preprocess(ras, spec)
    np.testing.assert_allclose(b.affine, a.affine, atol=1e-6)   # same working grid in the world
    np.testing.assert_allclose(b.array, a.array, atol=1e-5)
    # Restored onto each input's own grid, the outputs are flips of each other (L->R, P->A).
    out_a = restore(a.array, a)[0]
    out_b = restore(b.array, b)[0]
    np.testing.assert_allclose(out_b, out_a[::-1, ::-1, :], atol=1e-4)


@pytest.mark.parametrize("codes", ["LPS", "RAS", "LAS"])
def test_working_grid_points_along_the_requested_axes(data_dir, codes):
    t2 = read_nifti(data_dir / "i2cvb/Patient_68619/t2.nii.gz", "T2W")
    prep = preprocess(t2, PreprocessSpec(orientation=codes))
    assert "".join(nib.aff2axcodes(prep.affine)) == codes


NORM_CASES = [
    # rule, input, expected output
    (ChannelNorm("fixed", scale=0.001, clip_low=0.0, clip_high=4.0),
     [0.0, 1000.0, 2500.0, 9000.0], [0.0, 1.0, 2.5, 4.0]),                         # ADC units -> 1e-3 mm^2/s, clipped
    (ChannelNorm("fixed", scale=2.0, offset=-1.0, clip_low=-5.0, clip_high=5.0),
     [-10.0, 0.0, 1.0, 10.0], [-5.0, -1.0, 1.0, 5.0]),                            # offset and both clips
    (ChannelNorm("percentile", lower=0.0, upper=100.0), [2.0, 4.0, 6.0], [0.0, 0.5, 1.0]),  # min-max
]


@pytest.mark.parametrize("rule,x,expected", NORM_CASES)
def test_normalisation_rules(rule, x, expected):
    out = normalise(np.array(x, np.float32), rule)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, expected, atol=1e-6)


def test_percentile_clips_outliers(rng):
    x = rng.normal(100, 10, 10_000).astype(np.float32)
    x[0] = 1e6   # one hot voxel must not squash the range
    out = normalise(x, ChannelNorm("percentile", lower=1.0, upper=99.0))
    assert out.min() == 0.0 and out.max() == 1.0
    assert 0.3 < np.median(out) < 0.7


def test_zscore_uses_foreground_only(rng):
    fg = rng.normal(500, 50, 5000).astype(np.float32)
    x = np.concatenate([np.zeros(20_000, np.float32), fg])  # MRI background is 0
    out = normalise(x, ChannelNorm("zscore"))
    assert abs(out[20_000:].mean()) < 1e-3 and abs(out[20_000:].std() - 1) < 1e-3


def test_spec_round_trips_through_dict_and_key_is_stable():
    spec = PreprocessSpec(channels=["T2W", "ADC"], target_spacing=[0.5, 0.5, 3.0], crop_mm=None,
                          norm={"ADC": ChannelNorm("fixed", scale=0.001, clip_low=0.0, clip_high=4.0)})
    again = from_dict(PreprocessSpec, to_dict(spec), "model.json")
    assert again == spec and again.key() == spec.key()
    assert isinstance(again.norm["ADC"], ChannelNorm)
    assert PreprocessSpec().key() == PreprocessSpec().key()
    assert PreprocessSpec(crop_mm=[100.0, 100.0]).key() != PreprocessSpec().key()
    assert PreprocessSpec(n4=True).key() != PreprocessSpec().key()  # never shares a pass with uncorrected members
    old = to_dict(PreprocessSpec())
    del old["n4"]  # a model.json written before the option: trained without N4
    assert from_dict(PreprocessSpec, old, "model.json").n4 is False


def test_n4_spec_corrects_t2w_only_on_the_input_grid():
    i, j = np.meshgrid(np.linspace(0, 1, 48), np.linspace(0, 1, 40), indexing="ij")
    t2 = (100 + 50 * (i > 0.5))[..., None] * np.exp(1.2 * i + 0.4 * j)[..., None] * np.ones(6)  # tissue x shading
    adc = np.full(t2.shape, 1200.0)
    vol = Volume(np.stack([t2, adc]).astype(np.float32), np.diag([-0.8, -0.8, 3.0, 1.0]), ("T2W", "ADC"))
    spec = PreprocessSpec(channels=["T2W", "ADC"], target_spacing=[None, None, None], crop_mm=None)
    plain, corrected = preprocess(vol, spec), preprocess(vol, replace(spec, n4=True))
    by_hand = preprocess(replace(vol, array=np.stack([n4_correct(vol.array[0], vol.spacing), vol.array[1]])), spec)
    np.testing.assert_allclose(corrected.array, by_hand.array, atol=1e-5)  # the same correction, nothing else
    np.testing.assert_array_equal(corrected.array[1], plain.array[1])  # ADC untouched
    assert not np.allclose(corrected.array[0], plain.array[0])


BAD_SPECS = [
    ({"orientation": "LPX"}, "orientation"),               # not an axis letter
    ({"target_spacing": [0.6, 0.6]}, "3 values"),          # one value missing
    ({"target_spacing": [0.6, -1.0, None]}, "positive"),   # negative spacing
    ({"crop_mm": [100.0]}, "crop_mm"),                     # needs 2 values
    ({"channels": []}, "must not be empty"),
    ({"channels": ["ADC"], "n4": True}, "n4 corrects the T2W"),  # nothing to correct
    ({"norm": {"T2W": {"method": "percentile", "lower": 99.0, "upper": 1.0}}}, "lower < upper"),
]


@pytest.mark.parametrize("data,match", BAD_SPECS)
def test_invalid_spec_is_a_config_error(data, match):
    with pytest.raises(ConfigError, match=match):
        from_dict(PreprocessSpec, data, "cfg.yaml", "preprocess.")


def test_missing_channel_names_what_to_provide(data_dir):
    t2 = read_nifti(data_dir / "i2cvb/Patient_68619/t2.nii.gz", "T2W")
    with pytest.raises(InputError, match="provide ADC"):
        preprocess(t2, PreprocessSpec(channels=["T2W", "ADC"]))


def _padded(vol: Volume, n: int) -> Volume:
    """`vol` with n zero voxels added before voxel 0 along axis i: the same anatomy, n voxels off-centre."""
    aff = vol.affine.copy()
    aff[:3, 3] -= aff[:3, 0] * n
    arr = np.pad(vol.array, [(0, 0), (n, 0), (0, 0), (0, 0)])
    return Volume(arr, aff, vol.channels, vol.case_id, kind=vol.kind)


def test_gland_centred_crop_keeps_an_off_centre_gland(data_dir):
    """prostate158/001 padded so the gland lies about 47 mm from the FOV centre: a 100 mm crop around the
    volume centre cuts the gland; the same crop around the gland's centre (the locator's job at
    prediction) keeps all of it, and the crop centre maps to the gland centre in the world."""
    t2 = _padded(read_nifti(data_dir / "prostate158/001/t2.nii.gz", "T2W"), 200)
    lab = _padded(read_label(data_dir / "prostate158/001/zones.nii.gz"), 200)
    centre = gland_centre(lab.array[0] > 0, lab.affine)
    spec = PreprocessSpec(crop_mm=[100.0, 100.0], crop_centre="gland")
    kept = {}
    for name, c in (("volume", None), ("gland", centre)):
        prep = preprocess(t2, spec, c)
        kept[name] = (prepare_label(lab, prep) > 0).sum() * np.prod(np.linalg.norm(prep.affine[:3, :3], axis=0)) / (
            (lab.array[0] > 0).sum() * np.prod(np.linalg.norm(lab.affine[:3, :3], axis=0)))
        if c is not None:  # the gland centre sits at the working grid's in-plane centre
            ijk = np.linalg.inv(prep.affine) @ np.r_[centre, 1]
            np.testing.assert_allclose(ijk[:2], (np.array(prep.array.shape[1:3]) - 1) / 2.0, atol=0.5)
    assert kept["volume"] < 0.8 and kept["gland"] > 0.97
    # A "volume" spec ignores any centre it is given: old models keep their working grid.
    a = preprocess(t2, PreprocessSpec(crop_mm=[100.0, 100.0]), centre)
    b = preprocess(t2, PreprocessSpec(crop_mm=[100.0, 100.0]))
    np.testing.assert_array_equal(a.affine, b.affine)


def test_gland_centre_is_the_bounding_box_centre():
    aff = np.diag([0.5, 0.5, 3.0, 1.0])
    mask = np.zeros((20, 20, 5), bool)
    mask[4:9, 10:15, 1:4] = True
    np.testing.assert_allclose(gland_centre(mask, aff), [3.0, 6.0, 6.0])
    assert gland_centre(np.zeros_like(mask), aff) is None
