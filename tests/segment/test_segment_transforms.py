"""Paired augmentation: one draw for image and mask, masks nearest-neighbour, flips exact,
intensity transforms never touch the mask."""

from dataclasses import replace

import numpy as np
import pytest

from mricore.io import read_label
from segment.transforms import ZONE_VALUES, apply_intensity, apply_spatial, augment_patch, draw
from segment.config import AugmentConfig

CROP = (slice(16, 112), slice(16, 112))
OFF = dict(elastic_p=0.0, rotate_p=0.0, scale_p=0.0, flip_p=0.0, gamma_p=0.0, contrast_p=0.0,
           brightness_p=0.0, noise_p=0.0, bias_p=0.0)


@pytest.fixture(scope="module")
def zone_slice(data_dir):
    """A 128x128 in-plane crop of a real zone map (prostate158/001, middle slice) with TZ and PZ."""
    z = read_label(data_dir / "prostate158" / "001" / "zones.nii.gz").array[0]
    k = int(np.argmax((z > 0).sum(axis=(0, 1))))
    ci, cj = np.argwhere(z[:, :, k] > 0).mean(0).astype(int)
    out = z[ci - 64: ci + 64, cj - 64: cj + 64, k]
    assert set(np.unique(out)) == {0, 1, 2}
    return out


def test_elasticdeform_imports():
    # The 0.5.1 wheel fails with numpy 2 (`_ARRAY_API not found`); the Makefile builds it from source.
    import elasticdeform

    assert callable(elasticdeform.deform_grid)


def test_image_and_mask_receive_the_same_deformation(zone_slice):
    cfg = AugmentConfig(**{**OFF, "elastic_p": 1.0, "rotate_p": 1.0, "scale_p": 1.0, "elastic_sigma": 4.0})
    image = zone_slice[None].astype(np.float32)  # an image made from the mask
    d = draw(np.random.default_rng(1), cfg)
    img, msk = apply_spatial(image, zone_slice, d, CROP)
    same = np.mean(np.rint(img[0]).clip(0, 2) == msk)
    # A different draw moves things elsewhere: agreement must drop, so the check can fail.
    _, other = apply_spatial(image, zone_slice, draw(np.random.default_rng(2), cfg), CROP)
    assert same > 0.97
    assert np.mean(np.rint(img[0]).clip(0, 2) == other) < same - 0.01


def test_no_new_label_values_over_many_draws(zone_slice):
    cfg = AugmentConfig(**{**OFF, "elastic_p": 1.0, "rotate_p": 1.0, "scale_p": 1.0, "flip_p": 0.5,
                           "elastic_sigma": 6.0})
    rng = np.random.default_rng(0)
    image = np.random.default_rng(3).normal(size=(2,) + zone_slice.shape).astype(np.float32)
    for _ in range(100):
        _, msk = augment_patch(rng, cfg, image, zone_slice, CROP)
        assert msk.dtype == zone_slice.dtype
        assert set(np.unique(msk)) <= {0, 1, 2}


def test_3d_mask_keeps_its_labels_and_slices(zone_slice):
    vol = np.stack([zone_slice, zone_slice[::-1], zone_slice], axis=-1)  # (I, J, 3)
    cfg = AugmentConfig(**{**OFF, "elastic_p": 1.0, "rotate_p": 1.0})
    img, msk = apply_spatial(vol[None].astype(np.float32), vol, draw(np.random.default_rng(4), cfg), CROP)
    assert msk.shape == (96, 96, 3) and img.shape == (1, 96, 96, 3)
    assert set(np.unique(msk)) <= {0, 1, 2}
    # in-plane only: slices 0 and 2 were equal before and get the same field, so stay equal
    np.testing.assert_array_equal(msk[..., 0], msk[..., 2])


def test_flip_is_exact(zone_slice):
    cfg = AugmentConfig(**{**OFF, "flip_p": 1.0})
    image = np.random.default_rng(0).normal(size=(2,) + zone_slice.shape).astype(np.float32)
    img, msk = apply_spatial(image, zone_slice, draw(np.random.default_rng(0), cfg), CROP)
    np.testing.assert_array_equal(img, image[(slice(None),) + CROP][:, ::-1])
    np.testing.assert_array_equal(msk, zone_slice[CROP][::-1])


@pytest.mark.parametrize("name", ["gamma_p", "contrast_p", "brightness_p", "noise_p", "bias_p", "blur_p"])
def test_intensity_transforms_never_touch_the_mask(zone_slice, name):
    cfg = AugmentConfig(**{**OFF, name: 1.0})
    image = (np.random.default_rng(0).normal(size=(1,) + zone_slice.shape) + 2).astype(np.float32)
    img, msk = augment_patch(np.random.default_rng(5), cfg, image, zone_slice, CROP)
    np.testing.assert_array_equal(msk, zone_slice[CROP])
    assert not np.allclose(img, image[(slice(None),) + CROP])  # the image did change


def test_intensity_alone_is_image_only():
    d = draw(np.random.default_rng(0), replace(AugmentConfig(**OFF), gamma_p=1.0))
    x = np.linspace(0, 1, 64, dtype=np.float32).reshape(1, 8, 8)
    y = apply_intensity(x, d)
    assert y.shape == x.shape and y.dtype == np.float32


def test_blur_is_in_plane_only_and_keeps_the_mean():
    """A blurred 3D patch: each slice smoothed in-plane, no signal carried across slices."""
    d = draw(np.random.default_rng(0), AugmentConfig(**{**OFF, "blur_p": 1.0, "blur_sigma": 1.5}))
    assert 0.25 <= d.blur <= 1.5
    x = np.zeros((1, 32, 32, 3), np.float32)
    x[0, 16, 16, 1] = 1.0  # one bright voxel on the middle slice
    y = apply_intensity(x, d)
    assert y[0, :, :, 0].max() == 0 and y[0, :, :, 2].max() == 0
    assert 0 < y[0, 16, 16, 1] < 1 and y[0, 15, 16, 1] > 0
    np.testing.assert_allclose(y.sum(), 1.0, atol=1e-4)


def test_bias_strength_bounds_the_field():
    cfg = AugmentConfig(**{**OFF, "bias_p": 1.0, "bias_strength": 0.5})
    for seed in range(20):
        d = draw(np.random.default_rng(seed), cfg)
        assert np.all(np.abs(d.bias) <= 0.5)
    x = np.ones((1, 16, 16), np.float32)
    weak = apply_intensity(x, draw(np.random.default_rng(3), replace(cfg, bias_strength=0.05)))
    strong = apply_intensity(x, draw(np.random.default_rng(3), cfg))
    assert np.ptp(strong) > np.ptp(weak) > 0


def test_zone_shift_moves_each_zone_on_its_own_and_leaves_the_rest():
    cfg = AugmentConfig(**{**OFF, "zone_p": 1.0, "zone_shift": 0.8})
    d = draw(np.random.default_rng(3), cfg)
    assert d.zone.shape == (ZONE_VALUES,) and np.all(np.abs(d.zone) <= 0.8)
    mask = np.zeros((40, 40), np.uint8)
    mask[5:15, 5:15], mask[25:35, 25:35] = 1, 2
    x = np.zeros((2, 40, 40), np.float32)
    y = apply_intensity(x, d, mask)
    for c in range(2):  # every channel, each zone by its own draw (edges softened, so the core only)
        np.testing.assert_allclose(y[c, 8:12, 8:12], d.zone[0], atol=1e-4)
        np.testing.assert_allclose(y[c, 28:32, 28:32], d.zone[1], atol=1e-4)
        assert np.all(y[c, 20, :] == 0) and np.all(y[c, :, 20] == 0)  # background away from both zones
    np.testing.assert_array_equal(apply_intensity(x, d), x)  # no mask: nothing to shift


def test_zone_shift_changes_no_other_draw():
    """Off by default, drawn last: enabling it keeps every other random number of a config's stream."""
    base = AugmentConfig(**{**OFF, "gamma_p": 0.5, "noise_p": 0.5, "bias_p": 0.5, "elastic_p": 0.5})
    for seed in range(10):
        a = draw(np.random.default_rng(seed), base)
        b = draw(np.random.default_rng(seed), replace(base, zone_p=1.0))
        assert a.zone is None and b.zone is not None
        assert (a.gamma, a.noise_std, a.seed) == (b.gamma, b.noise_std, b.seed)
        for u, v in ((a.bias, b.bias), (a.displacement, b.displacement)):
            assert (u is None) == (v is None) and (u is None or np.array_equal(u, v))


def test_zone_shift_in_a_training_patch_keeps_the_mask(zone_slice):
    cfg = AugmentConfig(**{**OFF, "zone_p": 1.0, "elastic_p": 1.0})
    image = np.zeros((1,) + zone_slice.shape, np.float32)
    img, msk = augment_patch(np.random.default_rng(1), cfg, image, zone_slice, CROP)
    assert set(np.unique(msk)) <= set(np.unique(zone_slice))
    inside = msk > 0
    assert np.abs(img[0][inside]).mean() > np.abs(img[0][~inside]).mean()  # shifted where the zones are
