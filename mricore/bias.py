"""N4 bias-field correction (SimpleITK) of one image channel: coil shading, above all the steep
fall-off around an endorectal coil, which the networks' bias-field augmentation does not cover.

The field is fitted on a coarse copy (voxels averaged to about `SHRINK_MM`, tissue only: voxels above
5 % of the 99th percentile) and carried back to the full grid by trilinear interpolation; it is smooth
on a scale of centimetres, so the coarse fit costs a fraction of a full one and changes little. Thin
slabs keep at least 3 voxels along each axis; a single slice is left as it is.
Settings: ITK's defaults for the B-spline mesh (4 control points per axis, refined over 4 fitting
levels, so the final mesh has 11 per axis: smooth on the scale of the field of view, it cannot absorb
anatomy), 50 iterations per level.

Example:
    >>> x = np.ones((32, 32, 8), np.float32) * np.linspace(1, 3, 32)[:, None, None]
    >>> y = n4_correct(x, (1.0, 1.0, 3.0))
    >>> bool(np.ptp(y[4:-4, 4:-4]) < np.ptp(x[4:-4, 4:-4]))
    True
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from .volume import Volume

SHRINK_MM = 4.0
LEVELS = 4
CONTROL_POINTS = 4
ITERATIONS = 50


def n4_log_field(image: np.ndarray, spacing) -> np.ndarray:
    """The log bias field of a 3D (I, J, K) image with voxel `spacing` (mm), float32, same shape."""
    import SimpleITK as sitk
    import torch

    if min(image.shape) < 2:  # one slice: no 3D field to fit
        return np.zeros(image.shape, np.float32)
    # thin slabs (I2CVB: 3-5 slices) keep at least 3 voxels along every axis
    factors = [max(1, min(int(round(SHRINK_MM / s)), n // 3)) for s, n in zip(spacing, image.shape)]
    img = sitk.GetImageFromArray(np.ascontiguousarray(image.T, dtype=np.float32))  # sitk is (K, J, I)
    img.SetSpacing([float(s) for s in spacing])
    small = sitk.BinShrink(img, factors)  # block means, voxel centres kept aligned
    arr = sitk.GetArrayViewFromImage(small)
    mask = sitk.GetImageFromArray((arr > 0.05 * np.percentile(arr, 99)).astype(np.uint8))
    mask.CopyInformation(small)
    n4 = sitk.N4BiasFieldCorrectionImageFilter()
    n4.SetMaximumNumberOfIterations([ITERATIONS] * LEVELS)
    n4.SetNumberOfControlPoints([CONTROL_POINTS] * 3)
    n4.Execute(small, mask)
    coarse = sitk.GetArrayFromImage(n4.GetLogBiasFieldAsImage(small)).T.astype(np.float32)
    full = torch.nn.functional.interpolate(torch.from_numpy(np.ascontiguousarray(coarse))[None, None],
                                           size=tuple(image.shape), mode="trilinear", align_corners=False)
    return full[0, 0].numpy()


def n4_correct(image: np.ndarray, spacing) -> np.ndarray:
    """`image` divided by its N4 bias field (float32, same shape)."""
    field = n4_log_field(image, spacing)
    np.exp(field, out=field)
    return np.divide(image, field, out=field, dtype=np.float32)


def bias_corrected(image: "Volume", channel: str = "T2W") -> "Volume":
    """`image` with `channel` divided by its N4 bias field, the other channels as they are (a copy)."""
    from dataclasses import replace

    c = image.channels.index(channel)
    array = image.array.copy()
    array[c] = n4_correct(image.array[c], image.spacing)
    return replace(image, array=array)
