"""Coil, low-SNR and 1.5 T-like augmentations (segment.acquisition via segment.transforms): off by
default, invisible to the random stream of configs that leave them off, image-only, and where the
coil's peak and the noise's SNR are meant to be."""

import hashlib
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from mricore.config import ConfigError, from_dict
from mricore.io import read_label, read_nifti
from mricore.preprocess import PreprocessSpec, reorient
from segment.acquisition import PatchGrid, coil_gain, rician
from segment.config import AugmentConfig
from segment.data import Item, PatchSampler
from segment.transforms import apply_intensity, augment_patch, draw

CROP = (slice(16, 112), slice(16, 112))
OFF = {"elastic_p": 0.0, "rotate_p": 0.0, "scale_p": 0.0, "flip_p": 0.0, "gamma_p": 0.0, "contrast_p": 0.0,
       "brightness_p": 0.0, "noise_p": 0.0, "bias_p": 0.0}
NEW = {"coil_p": 1.0, "lowsnr_p": 1.0, "field_p": 1.0}
# the bundle's augment section (configs/bundle/*.yaml): the stream training of the shipped members drew
BUNDLE = {"gamma_p": 0.3, "contrast_p": 0.3, "brightness_p": 0.3, "noise_p": 0.2, "bias_p": 0.3,
          "bias_strength": 0.4, "blur_p": 0.2, "blur_sigma": 1.5}
# sha256 of `_stream_digest()`, computed on the code BEFORE these augmentations existed (same machine,
# numpy 2 / scipy / elasticdeform of .venv). A change means seeded training of existing configs changed.
FROZEN_DIGEST = "8f4622c03a761db686e1ea1ee14879af938d2540a0a48801c266dec05bceb8ee"
DRAW_FIELDS = ("displacement", "rotate", "zoom", "flip", "gamma", "contrast", "brightness", "noise_std",
               "bias", "blur", "seed", "zone")


def _synthetic(shape):
    """A seeded 2-channel image and an ellipse mask with two labels (1 left half, 2 right half)."""
    image = np.random.default_rng(7).normal(size=(2,) + shape).astype(np.float32)
    ii, jj = np.meshgrid(np.arange(shape[0]), np.arange(shape[1]), indexing="ij")
    m = ((ii - shape[0] / 2) ** 2 / 400 + (jj - shape[1] / 2) ** 2 / 225 < 1).astype(np.uint8)
    m[(m == 1) & (jj > shape[1] / 2)] = 2
    return image, (np.repeat(m[..., None], shape[2], axis=-1) if len(shape) == 3 else m)


def _stream_digest() -> str:
    """Draw fields and augmented arrays of the default, bundle and bundle+zone configs (2D and 3D),
    and two training batches of the 2.5D sampler, hashed."""
    h = hashlib.sha256()

    def put(a):
        a = np.ascontiguousarray(a)
        h.update(str(a.dtype).encode() + str(a.shape).encode() + a.tobytes())
    for cfg in (AugmentConfig(), AugmentConfig(**BUNDLE), AugmentConfig(**BUNDLE, zone_p=0.5)):
        for shape in ((72, 72), (72, 72, 4)):
            image, mask = _synthetic(shape)
            rng = np.random.default_rng(11)
            for _ in range(6):
                d = draw(np.random.default_rng(int(rng.integers(1000))), cfg)
                for f in DRAW_FIELDS:
                    v = getattr(d, f)
                    put(np.asarray(-1.0 if v is None else v, dtype=np.float64))
                img, msk = augment_patch(rng, cfg, image, mask, (slice(8, 64), slice(8, 64)))
                put(img)
                put(msk)
    image, mask = _synthetic((96, 96, 5))
    item = Item("c", "p", image, mask, np.argwhere(mask > 0))
    for cfg in (AugmentConfig(), AugmentConfig(**BUNDLE)):
        x, y = PatchSampler([item], [48, 48], 2, 1, 0.5, cfg).batch(np.random.default_rng([0, 1, 0, 2]), 4)
        put(x.numpy())
        put(y.numpy())
    return h.hexdigest()


@pytest.fixture(scope="module")
def case00(data_dir):
    """PROMISE12 Case00 (endorectal coil) as stored: T2 (I, J, K), whole gland, affine (RAS)."""
    t2 = read_nifti(data_dir / "promise12" / "Case00" / "t2.nii.gz")
    wg = read_label(data_dir / "promise12" / "Case00" / "wg.nii.gz")
    return t2.array[0], wg.array[0], t2.affine


@pytest.fixture(scope="module")
def zone_slice(data_dir):
    """A 128x128 in-plane crop of a real zone map (prostate158/001, its largest gland slice)."""
    z = read_label(data_dir / "prostate158" / "001" / "zones.nii.gz").array[0]
    k = int(np.argmax((z > 0).sum(axis=(0, 1))))
    ci, cj = np.argwhere(z[:, :, k] > 0).mean(0).astype(int)
    return z[ci - 64: ci + 64, cj - 64: cj + 64, k]


# ----------------------------------------------------------------------------- off by default

def test_existing_configs_draw_and_augment_exactly_as_before():
    assert _stream_digest() == FROZEN_DIGEST


def test_default_is_off():
    cfg = AugmentConfig()
    assert (cfg.coil_p, cfg.lowsnr_p, cfg.field_p) == (0.0, 0.0, 0.0)
    for seed in range(20):
        d = draw(np.random.default_rng(seed), cfg)
        assert d.coil is None and d.snr is None and d.field is None


@pytest.mark.parametrize("on", [{"coil_p": 1.0}, {"lowsnr_p": 1.0}, {"field_p": 1.0}, NEW])
def test_enabling_them_changes_no_other_draw(on):
    """Drawn last and only when enabled: every other random number of the stream is kept."""
    base = AugmentConfig(**BUNDLE, elastic_p=0.5, zone_p=0.5)
    for seed in range(10):
        a, b = draw(np.random.default_rng(seed), base), draw(np.random.default_rng(seed), replace(base, **on))
        for f in DRAW_FIELDS:
            u, v = getattr(a, f), getattr(b, f)
            assert (u is None) == (v is None) and (u is None or np.array_equal(u, v)), f
        assert (b.coil is not None, b.snr is not None, b.field is not None) == \
            ("coil_p" in on, "lowsnr_p" in on, "field_p" in on)


# ----------------------------------------------------------------------------- image only

def test_mask_unchanged_and_no_new_label_values(zone_slice):
    cfg = AugmentConfig(**{**OFF, "elastic_p": 1.0, "rotate_p": 1.0, **NEW})
    image = (np.random.default_rng(0).normal(size=(1,) + zone_slice.shape) + 3).astype(np.float32)
    for seed in range(5):
        img, msk = augment_patch(np.random.default_rng(seed), cfg, image, zone_slice, CROP, PatchGrid())
        _, ref = augment_patch(np.random.default_rng(seed), replace(cfg, coil_p=0.0, lowsnr_p=0.0, field_p=0.0),
                               image, zone_slice, CROP, PatchGrid())
        np.testing.assert_array_equal(msk, ref)  # same spatial draw: the new ones never touch the mask
        assert msk.dtype == zone_slice.dtype and set(np.unique(msk)) <= {0, 1, 2}
        assert img.shape == (1, 96, 96) and np.isfinite(img).all()


# ----------------------------------------------------------------------------- the coil

def _world(affine, vox):
    return (affine @ np.r_[np.asarray(vox, float), 1.0])[:3]


@pytest.mark.parametrize("storage", ["as stored", "LPS working grid"])
def test_coil_peak_lies_posterior_of_the_gland_in_world_terms(case00, storage):
    """The gain's maximum, mapped through the affine, is posterior (RAS: lower y) of the gland's
    centroid and of its posterior edge, for the study's own axes and for the LPS working grid."""
    t2, wg, aff = case00
    if storage == "as stored":
        grid, mask = PatchGrid.of_affine(aff), wg
    else:
        arr, aff = reorient(np.stack([t2, wg]), aff, "LPS")
        spacing = tuple(float(s) for s in np.linalg.norm(aff[:3, :3], axis=0))
        grid, mask = replace(PatchGrid.of_spec(PreprocessSpec()), spacing=spacing), arr[1] > 0.5
    centre_y = _world(aff, np.argwhere(mask).mean(0))[1]
    back_y = min(_world(aff, v)[1] for v in np.argwhere(mask)[::50])
    cfg = AugmentConfig(coil_p=1.0)
    for seed in range(5):
        d = draw(np.random.default_rng(seed), cfg)
        g = coil_gain(mask.shape, mask, d.coil, grid)
        peak_y = _world(aff, np.unravel_index(np.argmax(g), g.shape))[1]
        assert peak_y < centre_y - 5 and peak_y <= back_y + 2, (seed, peak_y, centre_y, back_y)


def test_coil_without_a_mask_peaks_behind_the_patch_centre():
    g = coil_gain((64, 64), np.zeros((64, 64), np.uint8), np.array([2.0, 10.0, 6.0, 0.0, 0.0]), PatchGrid())
    i, j = np.unravel_index(np.argmax(g), g.shape)
    assert i in (31, 32) and j in (41, 42)  # 6 mm at 0.6 mm: 10 voxels posterior (+j) of the centre 31.5
    ras = PatchGrid.of_spec(replace(PreprocessSpec(), orientation="RAS"))
    assert ras.posterior == (0, -1, 0)
    g = coil_gain((64, 64), None, np.array([2.0, 10.0, 6.0, 0.0, 0.0]), ras)
    assert np.unravel_index(np.argmax(g), g.shape)[1] < 31  # RAS storage: posterior is -j


def test_coil_amplitude_within_config_bounds(zone_slice):
    cfg = AugmentConfig(**{**OFF, "coil_p": 1.0, "coil_gain": [0.5, 1.5], "coil_falloff_mm": [8.0, 12.0]})
    x = (np.random.default_rng(1).random((1,) + zone_slice.shape) + 1).astype(np.float32)
    for seed in range(10):
        d = draw(np.random.default_rng(seed), cfg)
        assert 0.5 <= d.coil[0] <= 1.5 and 8.0 <= d.coil[1] <= 12.0
        y = apply_intensity(x, d, zone_slice, PatchGrid())
        lit = x - x.min() > 0.1  # voxels with signal above the floor (the floor stays where it is)
        ratio = (y - x.min())[lit] / (x - x.min())[lit]
        assert ratio.min() >= 1 - 1e-5 and ratio.max() <= 1 + d.coil[0] + 1e-4
        # the peak lies in the patch, at most 10 mm through-plane (jitter): 2^(-10/8) of the excess left
        assert ratio.max() > 1 + 0.4 * d.coil[0]


def test_coil_gain_halves_at_the_falloff_distance():
    g = coil_gain((1, 200), None, np.array([2.0, 10.0, 0.0, 0.0, 0.0]), PatchGrid(spacing=(1.0, 1.0, 3.0)))
    j = int(np.argmax(g[0]))
    np.testing.assert_allclose(g[0, j - 10] - 1, (g[0, j] - 1) / 2, rtol=1e-5)  # 10 mm anterior: excess halved


# ----------------------------------------------------------------------------- noise and field strength

def test_rician_noise_is_non_negative_and_has_the_drawn_snr():
    cfg = AugmentConfig(**{**OFF, "lowsnr_p": 1.0, "lowsnr_snr": [6.0, 12.0]})
    x = np.zeros((1, 128, 128), np.float32)
    x[0, 16:112, 16:112] = 100.0  # tissue in air: floor 0, tissue level 100
    for seed in range(8):
        d = draw(np.random.default_rng(seed), cfg)
        assert 6.0 <= d.snr <= 12.0
        y = apply_intensity(x, d)
        assert y.min() >= 0.0  # a magnitude: never below the floor
        measured = 100.0 / y[0, 16:112, 16:112].std()
        assert 6.0 * 0.9 <= measured <= 12.0 * 1.1 and abs(measured / d.snr - 1) < 0.1
        assert y[0, :8].mean() > 0.5 * 100.0 / d.snr  # air gets the Rayleigh floor


def test_rician_keeps_a_negative_floor():
    """A z-scored patch: its minimum is zero signal, and nothing goes below it."""
    x = np.random.default_rng(0).normal(size=(2, 32, 32)).astype(np.float32)
    y = rician(x, 5.0, np.random.default_rng(1))
    assert (y.min(axis=(1, 2)) >= x.min(axis=(1, 2)) - 1e-6).all()


def test_field_strength_lowers_tissue_contrast(data_dir):
    t2 = read_nifti(data_dir / "prostate158" / "001" / "t2.nii.gz").array[0]
    k = int(np.argmax((read_label(data_dir / "prostate158" / "001" / "zones.nii.gz").array[0] > 0).sum((0, 1))))
    x = t2[None, :, :, k]
    cfg = AugmentConfig(**{**OFF, "field_p": 1.0, "field_contrast": [0.6, 0.8], "field_blur": [0.0, 0.0]})
    d = draw(np.random.default_rng(0), cfg)
    y = apply_intensity(x, d)
    tissue = x[0] - x.min() > 0.1 * np.percentile(x[0] - x.min(), 99)  # tissue_level's voxels
    np.testing.assert_allclose(np.median(y[0][tissue]), np.median(x[0][tissue]), rtol=1e-4)  # level kept
    spread = np.subtract(*np.percentile(x, [90, 10])), np.subtract(*np.percentile(y, [90, 10]))
    np.testing.assert_allclose(spread[1] / spread[0], d.field[0], rtol=1e-3)


# ----------------------------------------------------------------------------- config keys

ILL = [  # (key, bad value): each must name augment.<key>, the value and an example fix
    ("coil_p", 1.5), ("lowsnr_p", -0.1), ("field_p", 2.0),
    ("coil_gain", [3.0, 1.0]),          # low above high
    ("coil_gain", [-1.0, 1.0]),         # a negative gain
    ("coil_falloff_mm", [0.0, 10.0]),   # a zero falloff
    ("coil_offset_mm", [5.0]),          # one value
    ("lowsnr_snr", [0.0, 10.0]),        # SNR 0: infinite noise
    ("field_contrast", [0.8, 1.2]),     # more contrast is not 1.5 T
    ("field_blur", [-0.5, 0.5]),        # a negative sigma
    ("coil_jitter_mm", -1.0),
]


@pytest.mark.parametrize("key,value", ILL)
def test_bad_values_are_config_errors_naming_the_key(key, value):
    with pytest.raises(ConfigError) as e:
        from_dict(AugmentConfig, {key: value}, "cfg.yaml", prefix="augment.")
    msg = str(e.value)
    assert f"augment.{key}" in msg and str(value) in msg and "fix: " in msg


def test_good_values_load():
    cfg = from_dict(AugmentConfig, {**NEW, "coil_gain": [1, 2], "lowsnr_snr": [4, 8]}, "cfg.yaml")
    assert cfg.coil_gain == [1.0, 2.0] and cfg.lowsnr_p == 1.0


def test_the_training_sampler_passes_its_grid():
    image, mask = _synthetic((96, 96, 5))
    image = image + 3
    item = Item("c", "p", image, mask, np.argwhere(mask > 0))
    cfg = AugmentConfig(**{**OFF, "coil_p": 1.0})
    rng = [0, 1, 0, 2]
    lps = PatchSampler([item], [48, 48], 2, 0, 1.0, cfg, PatchGrid()).batch(np.random.default_rng(rng), 2)[0]
    ras = PatchSampler([item], [48, 48], 2, 0, 1.0, cfg, PatchGrid(posterior=(0, -1, 0))).batch(
        np.random.default_rng(rng), 2)[0]
    assert not np.allclose(lps.numpy(), ras.numpy())  # the peak moved to the other side


def test_coil_finetune_config_is_the_shipped_family_with_the_new_augmentations():
    """configs/bundle/coil_finetune.yaml repeats the 2D DynUNet family's config: it must stay that config,
    the three augmentations on, a shorter schedule at a lower lr, the members' own split."""
    from mricore.config import load_config
    from segment.config import SegmentConfig

    bundle = Path(__file__).resolve().parents[2] / "configs" / "bundle"
    shipped = load_config(SegmentConfig, bundle / "dynunet2d_long.yaml")
    tune = load_config(SegmentConfig, bundle / "coil_finetune.yaml")
    assert tune.preprocess == shipped.preprocess and tune.model == shipped.model and tune.predict == shipped.predict
    assert replace(tune.augment, coil_p=0.0, lowsnr_p=0.0, field_p=0.0) == shipped.augment
    assert min(tune.augment.coil_p, tune.augment.lowsnr_p, tune.augment.field_p) > 0
    assert replace(tune.data, teacher=shipped.data.teacher, splits_file=None) == shipped.data
    assert Path(tune.data.splits_file).is_file()
    assert tune.train.epochs < shipped.train.epochs and tune.train.lr < shipped.train.lr
    assert replace(tune.train, epochs=shipped.train.epochs, lr=shipped.train.lr) == shipped.train
