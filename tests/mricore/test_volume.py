"""mricore.volume: the geometry-carrying Volume and stacking that never crosses grids."""

import numpy as np
import pytest

from mricore.errors import GeometryError
from mricore.io import read_nifti
from mricore.volume import Volume, stack

ILL_VOLUMES = [
    (np.zeros((4, 4, 2), np.float32), np.eye(4), ("T2W",), r"must be \(C, I, J, K\)"),    # no channel axis
    (np.zeros((1, 4, 4, 2), np.float32), np.eye(3), ("T2W",), "4x4"),                  # 3x3 affine
    (np.zeros((2, 4, 4, 2), np.float32), np.eye(4), ("T2W",), "one channel name"),     # names != channels
]


@pytest.mark.parametrize("array,affine,channels,match", ILL_VOLUMES)
def test_volume_rejects_bad_geometry(array, affine, channels, match):
    with pytest.raises(GeometryError, match=match):
        Volume(array, affine, channels, "c")


def test_spacing_and_voxel_volume_from_oblique_affine(data_dir):
    v = read_nifti(data_dir / "prostate158/001/t2.nii.gz")
    np.testing.assert_allclose(v.spacing, (0.46875, 0.46875, 3.15), atol=1e-4)  # README: 0.469 x 0.469 x 3.15
    assert v.voxel_volume_ml == pytest.approx(0.46875 * 0.46875 * 3.15 / 1000, rel=1e-4)


def test_unknown_channel_names_the_valid_ones():
    v = Volume(np.zeros((2, 2, 2, 2), np.float32), np.eye(4), ("T2W", "ADC"), "c")
    with pytest.raises(GeometryError, match=r"\['T2W', 'ADC'\]"):
        v.channel("DWI")


def test_stack_same_grid_keeps_order_and_affine(data_dir):
    t2 = read_nifti(data_dir / "prostate158/001/t2.nii.gz", "T2W")
    dwi = read_nifti(data_dir / "prostate158/001/dwi.nii.gz", "DWI")  # already on the T2 grid
    s = stack([t2, dwi], "001")
    assert s.channels == ("T2W", "DWI") and s.array.shape == (2,) + t2.shape
    np.testing.assert_array_equal(s.channel("DWI"), dwi.array[0])
    np.testing.assert_array_equal(s.affine, t2.affine)


def test_stack_refuses_channels_on_different_grids(data_dir):
    t2 = read_nifti(data_dir / "prostatex/ProstateX-0000/t2.nii.gz", "T2W")
    adc = read_nifti(data_dir / "prostatex/ProstateX-0000/adc.nii.gz", "ADC")  # own 2 mm grid
    with pytest.raises(GeometryError, match="align them first"):
        stack([t2, adc])


def test_stack_refuses_same_shape_but_shifted_affine():
    a = Volume(np.zeros((1, 3, 3, 3), np.float32), np.eye(4), ("T2W",))
    shifted = np.eye(4)
    shifted[0, 3] = 0.5  # half a voxel: same shape, different grid
    with pytest.raises(GeometryError):
        stack([a, Volume(np.zeros((1, 3, 3, 3), np.float32), shifted, ("ADC",))])


def test_inplane_scaled_keeps_the_centre_voxel_and_the_slice_axis(data_dir):
    vol = read_nifti(data_dir / "prostate158/001/t2.nii.gz", "T2W")  # oblique affine
    half = vol.inplane_scaled(0.8)
    centre = np.append((np.array(vol.shape) - 1) / 2.0, 1.0)
    np.testing.assert_allclose(half.affine @ centre, vol.affine @ centre, atol=1e-6)
    np.testing.assert_allclose(half.affine[:3, :2], 0.8 * vol.affine[:3, :2])
    np.testing.assert_array_equal(half.affine[:3, 2], vol.affine[:3, 2])
    np.testing.assert_allclose(half.spacing, [0.8 * vol.spacing[0], 0.8 * vol.spacing[1], vol.spacing[2]])
    assert half.array is vol.array  # same voxels
