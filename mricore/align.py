"""Bring every channel onto the reference (T2W) grid in physical space.

`resample_to` maps a volume onto any target grid through the two affines (trilinear for images,
nearest for labels: no new label value can appear). `register_rigid` optionally estimates a rigid
(Euler 3D) transform of a moving sequence (ADC/DWI) onto the fixed T2W with SimpleITK's Mattes
mutual information and reports a score, so misregistered studies can be flagged.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from .volume import Volume, same_grid


def resample_array(array: np.ndarray, src_affine: np.ndarray, dst_affine: np.ndarray,
                   dst_shape: tuple[int, int, int], order: int, cval: float = 0.0, box=None) -> np.ndarray:
    """Resample a (C, I, J, K) array from one grid to another through world coordinates.

    order 0 (nearest) keeps label values exactly; order 1 is trilinear. A destination voxel whose
    centre falls inside the footprint of the source grid (voxel index -0.5 .. n-0.5 on every axis)
    gets a value (the edge voxel's value in the outer half voxel); voxels outside it get `cval`.
    When the voxel mapping is diagonal (same axes, other spacing or offset, as between a volume and
    its preprocessing grid) a separable path gives the same values several times faster.
    box: only this box of the destination grid (mricore.box, three slices), with the very values (same
    coordinates, same rounding) the whole grid gets there; the result has the box's shape.
    """
    vox = np.linalg.inv(src_affine) @ dst_affine  # dst voxel -> src voxel
    matrix, offset = vox[:3, :3], vox[:3, 3]
    dst_shape = tuple(int(s) for s in dst_shape)
    box = box or tuple(slice(0, n) for n in dst_shape)
    if np.allclose(matrix, np.diag(np.diag(matrix)), atol=1e-9):
        if order == 1:
            return _separable_linear(array, np.diag(matrix), offset, dst_shape, cval, box)
        if order == 0:
            return _separable_nearest(array, np.diag(matrix), offset, dst_shape, cval, box)
    if box != tuple(slice(0, n) for n in dst_shape):  # the general path: the whole grid, then the box
        return resample_array(array, src_affine, dst_affine, dst_shape, order, cval)[(slice(None), *box)]
    # Why not mode="constant" alone: it rejects coordinates a rounding error beyond the first/last
    # voxel centre (e.g. k = -1e-15), which silently dropped whole edge slices of thick-slice
    # labels. Extend the edges ("nearest") and cut at the voxel footprint with an indicator array.
    inside = np.pad(np.ones(array.shape[1:], np.uint8), 1)
    inside = ndimage.affine_transform(inside, matrix, offset + 1.0, output_shape=dst_shape, order=0,
                                      mode="constant", cval=0, prefilter=False).astype(bool)
    out = np.empty((array.shape[0],) + dst_shape, dtype=array.dtype if order == 0 else np.float32)
    for c in range(array.shape[0]):
        src = array[c] if order == 0 else array[c].astype(np.float32, copy=False)
        out[c] = ndimage.affine_transform(src, matrix, offset, output_shape=dst_shape,
                                          order=order, mode="nearest", prefilter=False)
        out[c][~inside] = cval
    return out


def _axis_weights(n_src: int, n_dst: int, scale: float, offset: float, part: slice = slice(None)):
    """Linear interpolation along one axis as an (n_dst, n_src) matrix (rows `part` of it only), and
    which destination voxels fall inside the source footprint (index -0.5 <= x < n - 0.5, the rule of
    the general path)."""
    x = (scale * np.arange(n_dst, dtype=np.float64) + offset)[part]
    n_dst = len(x)
    inside = (x >= -0.5) & (x < n_src - 0.5)
    xc = np.clip(x, 0, n_src - 1)  # edge voxels extend half a voxel outwards ("nearest")
    i0 = np.floor(xc).astype(int)
    i1 = np.minimum(i0 + 1, n_src - 1)
    f = (xc - i0).astype(np.float32)
    w = np.zeros((n_dst, n_src), np.float32)
    rows = np.arange(n_dst)
    np.add.at(w, (rows, i0), 1 - f)
    np.add.at(w, (rows, i1), f)
    w[~inside] = 0
    return w, inside


def _separable_linear(array: np.ndarray, scale: np.ndarray, offset: np.ndarray, dst_shape, cval: float, box):
    """Trilinear resampling when the voxel mapping is diagonal (same axes, new spacing/offset: what
    preprocessing and its inverse produce): one small matrix product per axis over all channels,
    several times faster than ndimage.affine_transform; same values to float32 rounding."""
    weights, inside = [], []
    for ax in range(3):
        w, ins = _axis_weights(array.shape[ax + 1], dst_shape[ax], float(scale[ax]), float(offset[ax]), box[ax])
        inside.append(ins)
        identity = w.shape[0] == w.shape[1] and np.array_equal(w, np.eye(w.shape[0], dtype=np.float32))
        weights.append(None if identity else w)  # identity: e.g. slices kept as acquired
    # One channel at a time into the output: the transient copies are one channel's, not all of them
    # (a 704x704x30 input grid: about 0.2 GB less at the peak for three channels).
    out = np.empty((array.shape[0],) + tuple(len(i) for i in inside), np.float32)
    for c in range(array.shape[0]):
        ch = array[c].astype(np.float32, copy=False)
        for ax, w in enumerate(weights):
            if w is not None:
                ch = np.moveaxis(np.tensordot(w, ch, axes=([1], [ax])), 0, ax)
        out[c] = ch
        del ch
    fill_outside_box(out, inside, [cval] * out.shape[0])
    return out


def fill_outside_box(array: np.ndarray, inside: list[np.ndarray], values) -> None:
    """Set, in place, every voxel of a (C, I, J, K) array outside the box `inside` (one boolean vector
    per spatial axis) to values[c]. One channel at a time with `where`: `array[:, ~mask] = ...` would
    build an int64 index array per axis over every outside voxel (0.35 GB on a 704x704x30 grid)."""
    outside = ~(inside[0][:, None, None] & inside[1][None, :, None] & inside[2][None, None, :])
    if outside.any():
        for c, v in enumerate(values):
            np.copyto(array[c], array.dtype.type(v), where=outside)


def _separable_nearest(array: np.ndarray, scale: np.ndarray, offset: np.ndarray, dst_shape, cval, box):
    """Nearest neighbour for a diagonal voxel mapping: one index vector per axis (labels keep their
    values exactly); rounding as ndimage's order 0 (floor(x + 0.5)), same footprint rule as above."""
    idx, inside = [], []
    for ax in range(3):
        n = array.shape[ax + 1]
        x = (float(scale[ax]) * np.arange(dst_shape[ax], dtype=np.float64) + float(offset[ax]))[box[ax]]
        inside.append((x >= -0.5) & (x < n - 0.5))
        idx.append(np.clip(np.floor(x + 0.5), 0, n - 1).astype(np.intp))
    out = array[:, idx[0][:, None, None], idx[1][None, :, None], idx[2][None, None, :]]
    fill_outside_box(out, inside, [cval] * out.shape[0])
    return out


def resample_to(vol: Volume, ref: Volume | tuple) -> Volume:
    """`vol` on the grid of `ref` (a Volume, or a (shape, affine) pair). No-op when grids match.
    Its kind decides: an image is interpolated linearly, a label map takes its nearest voxel's value."""
    shape, affine = (ref.shape, ref.affine) if isinstance(ref, Volume) else ref
    if same_grid(vol.shape, vol.affine, shape, affine):
        return vol
    arr = resample_array(vol.array, vol.affine, affine, shape, order=0 if vol.is_label else 1)
    return Volume(arr, affine, vol.channels, vol.case_id, ref.header if isinstance(ref, Volume) else None, vol.kind)


def register_rigid(fixed: Volume, moving: Volume, iterations: int = 100, seed: int = 0):
    """Rigid registration of `moving` (channel 0) onto `fixed` (channel 0), Mattes MI.

    Returns (moving resampled on the fixed grid, info) where info holds the metric for the scanner
    (identity) alignment and after optimisation (more negative is better), whether the result was
    accepted (only when it improves the metric; otherwise the scanner alignment is kept), the
    translation in mm and rotation in degrees.
    """
    from .dicom import sitk_module

    sitk = sitk_module()

    from .dicom import volume_to_sitk

    f = volume_to_sitk(fixed)
    m = volume_to_sitk(moving)
    f = sitk.Cast(f, sitk.sitkFloat32)
    m = sitk.Cast(m, sitk.sitkFloat32)
    reg = sitk.ImageRegistrationMethod()
    reg.SetMetricAsMattesMutualInformation(numberOfHistogramBins=32)
    reg.SetMetricSamplingStrategy(reg.RANDOM)
    reg.SetMetricSamplingPercentage(0.2, seed)
    reg.SetInterpolator(sitk.sitkLinear)
    reg.SetOptimizerAsRegularStepGradientDescent(learningRate=1.0, minStep=1e-3, numberOfIterations=iterations,
                                                 relaxationFactor=0.5)
    reg.SetOptimizerScalesFromPhysicalShift()
    reg.SetShrinkFactorsPerLevel([2, 1])
    reg.SetSmoothingSigmasPerLevel([1.0, 0.0])
    identity = sitk.Euler3DTransform()
    identity.SetCenter(f.TransformContinuousIndexToPhysicalPoint([(s - 1) / 2 for s in f.GetSize()]))
    reg.SetInitialTransform(sitk.Euler3DTransform(identity), inPlace=False)
    before = reg.MetricEvaluate(f, m)
    tx = reg.Execute(f, m)
    reg.SetInitialTransform(tx, inPlace=False)
    after = reg.MetricEvaluate(f, m)
    euler = sitk.Euler3DTransform(identity)
    accepted = after < before  # Mattes MI is negated: lower is better. Keep scanner alignment otherwise.
    if accepted:
        euler.SetParameters(tx.GetNthTransform(0).GetParameters() if hasattr(tx, "GetNthTransform")
                            else tx.GetParameters())
    out = []
    for c in range(moving.array.shape[0]):
        mc = sitk.Cast(volume_to_sitk(moving, c), sitk.sitkFloat32)
        r = sitk.Resample(mc, f, euler, sitk.sitkLinear, 0.0, sitk.sitkFloat32)
        out.append(sitk.GetArrayFromImage(r).transpose(2, 1, 0))
    params = euler.GetParameters()
    info = {
        "metric": "mattes_mi",
        "metric_before": float(before),
        "metric_after": float(after),
        "accepted": bool(accepted),
        "rotation_deg": [float(np.degrees(p)) for p in params[:3]],
        "translation_mm": [float(p) for p in params[3:]],
        "stop": reg.GetOptimizerStopConditionDescription(),
    }
    return Volume(np.stack(out), fixed.affine, moving.channels, moving.case_id, fixed.header), info


def alignment_score(fixed: Volume, moving_on_fixed: Volume, bins: int = 32) -> float:
    """Normalised mutual information (H(A) + H(B)) / H(A, B) - 1 of channel 0 of two volumes on the
    same grid, over voxels where both are > 0. 0 = independent, 1 = one determines the other.
    Contrast-agnostic, so it compares T2W with ADC; higher after registration means better aligned."""
    a = fixed.array[0].ravel()
    b = moving_on_fixed.array[0].ravel()
    sel = (a > 0) & (b > 0)
    if sel.sum() < 100:
        return 0.0
    h, _, _ = np.histogram2d(a[sel], b[sel], bins=bins)
    p = h / h.sum()
    def ent(q):
        q = q[q > 0]
        return float(-(q * np.log(q)).sum())
    return ent(p.sum(1)) / ent(p) + ent(p.sum(0)) / ent(p) - 1.0 if ent(p) > 0 else 0.0
