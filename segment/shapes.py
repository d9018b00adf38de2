"""Expert zone shapes into training pairs: label-driven registration of a donor study (T2W image + its
zones) onto a label-only target zone map, in physical space.

`register_shape(donor_image, donor_zones, target_zones)` returns the donor image warped onto the
TARGET's grid and the facts of the transform. The new training pair is (warped donor image, target
zones): the donor's real texture in an expert's new shape. Three steps, all through the affines (MRI
here is anisotropic and often oblique, so nothing is done in voxel space of the inputs):

1. global: centres of mass of the two glands, then a similarity and an affine transform fitted by mean
   squares between soft gland masks (a sigmoid of the signed distance; SimpleITK, on an isotropic
   working grid);
2. deformable: multi-channel demons on the TZ and PZ signed distance maps (both zones at once, so the
   donor's zones land on the target's), compositive updates smoothed each step (fluid) and the total
   field smoothed (diffusion); the field is zero on the border of the working box around the gland;
3. the full transform (affine after the field) is applied once, at full resolution, to the donor image
   (linear) and, for the record, to the donor zones (nearest): their DSC to the target per zone, at each
   stage, says whether the pair is usable (segment.shape_qc judges it).

Conventions: the transform maps TARGET points to DONOR points (ITK's resampling direction), so its
Jacobian determinant is the donor volume per target volume at each point (> 1: the donor is squeezed).
Label maps are 0 background, 1 TZ, 2 PZ (mricore.zones). The optimisation runs on a coarse grid
(`ShapeSettings.grid_mm`); only the final warp is at full resolution.

Example:
    >>> warped, facts = register_shape(read_nifti(t2), read_label(zones), read_label(target))
    >>> facts.dsc["deformable"]["PZ"], facts.jacobian["min"]
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from mricore.dicom import sitk_module, sitk_to_affine, volume_to_sitk
from mricore.metrics import dice
from mricore.volume import Volume
from mricore.zones import ZONES, masks

from .shape_qc import jacobian_determinant, jacobian_stats


@dataclass(frozen=True)
class ShapeSettings:
    grid_mm: float = 2.0              # isotropic working grid of the optimisation (the warp is full resolution)
    margin_mm: float = 15.0           # box around the target gland: the deformation lives in it, 0 on its border
    clip_mm: float = 10.0             # distances outside a zone clipped here: the demons force acts within this band
    inside_mm: float = 3.0            # and inside it: deeper level sets need not match (a thinner donor zone
                                      # would be pinched to its centre); the interior follows by regularisation
    affine_iterations: int = 100      # per transform (similarity, then affine)
    demons_iterations: int = 60
    fluid_sigma: float = 1.0          # voxels of the working grid: smoothing of each update
    diffusion_sigma: float = 1.0      # voxels: smoothing of the total displacement (regularisation)
    qc_dilation_mm: float = 5.0       # Jacobian statistics inside the target gland dilated by this


@dataclass(frozen=True)
class ShapeFacts:
    """What a registration did. `dsc`: stage ("identity": scanner coordinates, "affine", "deformable")
    -> zone (WG, TZ, PZ) -> DSC of the warped donor zones to the target zones, on the target grid.
    `affine_scale`: determinant of the affine's matrix (donor volume per target volume; 1 = no global
    scaling). `jacobian`: shape_qc.jacobian_stats of the full transform inside the dilated target gland,
    plus `box_folds` (share of working-box voxels with J <= 0). `jacobian_map`: det J of the full
    transform on the working grid (a Volume of kind image, RAS affine)."""

    dsc: dict
    affine_scale: float
    jacobian: dict
    seconds: float
    jacobian_map: Volume = field(repr=False, compare=False)

    def to_json(self) -> dict:
        return {"dsc": self.dsc, "affine_scale": round(self.affine_scale, 4), "jacobian": self.jacobian,
                "seconds": self.seconds}


def register_shape(donor_image: Volume, donor_zones: Volume, target_zones: Volume,
                   settings: ShapeSettings = ShapeSettings()) -> tuple[Volume, ShapeFacts]:
    """Warp `donor_image` onto the grid of `target_zones` so that `donor_zones` (on the donor image's
    grid) land on the target's zones.

    Args:
        donor_image: (1, I, J, K) image Volume (channel 0 is warped).
        donor_zones: label Volume on the donor image's grid, 0/1 TZ/2 PZ, both zones present.
        target_zones: label Volume, 0/1 TZ/2 PZ, both zones present; its grid is the output grid.

    Returns:
        (warped image: float32 Volume on the target grid, target header kept; ShapeFacts).
    """
    sitk = sitk_module()
    start = time.perf_counter()
    fixed = _prepared(target_zones, settings.margin_mm, settings.grid_mm)
    moving = _prepared(donor_zones, 2 * settings.margin_mm, settings.grid_mm)
    ratio = moving["ml"] / fixed["ml"]
    affine = _global_transform(fixed, moving, ratio, settings.affine_iterations)
    ref, h = fixed["grid"], settings.grid_mm
    channels = ("TZ", "PZ")
    lo, hi = -settings.inside_mm, settings.clip_mm
    f = np.stack([np.clip(sitk.GetArrayFromImage(fixed[z]), lo, hi) / h for z in channels])
    m = np.stack([np.clip(sitk.GetArrayFromImage(_resampled(moving[z], ref, affine, hi)), lo, hi) / h
                  for z in channels])
    shift = demons(f, m, settings.demons_iterations, settings.fluid_sigma, settings.diffusion_sigma)
    full = sitk.CompositeTransform([affine, _displacement_transform(shift, ref)])  # affine(field(x))
    det_a = float(np.linalg.det(np.reshape(affine.GetMatrix(), (3, 3))))
    jac = det_a * jacobian_determinant(shift)
    region = sitk.GetArrayFromImage(fixed["WG"]) <= settings.qc_dilation_mm
    stats = jacobian_stats(jac, region) | {"box_folds": float(np.mean(jac <= 0))}
    target = volume_to_sitk(target_zones)
    donor_lab = volume_to_sitk(donor_zones)
    dsc = {stage: _dsc(_warp(donor_lab, target, tx, sitk.sitkNearestNeighbor), target_zones.array[0])
           for stage, tx in (("identity", sitk.Transform()), ("affine", affine), ("deformable", full))}
    image = _warp(sitk.Cast(volume_to_sitk(donor_image), sitk.sitkFloat32), target, full, sitk.sitkLinear)
    jac_map = Volume(jac.transpose(2, 1, 0)[None].astype(np.float32), sitk_to_affine(ref), ("jacobian",),
                     target_zones.case_id)
    warped = Volume(image.astype(np.float32)[None], target_zones.affine, donor_image.channels[:1],
                    target_zones.case_id, target_zones.header)
    return warped, ShapeFacts(dsc, det_a, stats, round(time.perf_counter() - start, 2), jac_map)


def _prepared(zones: Volume, margin_mm: float, grid_mm: float) -> dict:
    """A zone map's gland cropped with `margin_mm` around it, its WG/TZ/PZ signed distance maps (mm,
    negative inside) resampled linearly onto an isotropic `grid_mm` working grid in the map's own
    orientation ("grid": that grid as a SimpleITK image), the gland mask there and its volume (mL)."""
    sitk = sitk_module()
    crop = crop_around(zones, zones.array[0] > 0, margin_mm)
    img = volume_to_sitk(crop)
    ref = working_grid(img, grid_mm)
    out = {"grid": ref, "ml": float(np.count_nonzero(zones.array[0])) * zones.voxel_volume_ml}
    for zone, sel in masks(crop.array[0]).items():
        mask = sitk.GetImageFromArray(np.ascontiguousarray(sel.transpose(2, 1, 0)).astype(np.uint8))
        mask.CopyInformation(img)
        sdm = sitk.SignedMaurerDistanceMap(mask, insideIsPositive=False, squaredDistance=False, useImageSpacing=True)
        out[zone] = _resampled(sdm, ref, sitk.Transform(), 0.0, extrapolate=True)  # grid edge: nearest crop voxel
    out["mask"] = sitk.Cast(out["WG"] <= 0, sitk.sitkFloat32)
    # A soft gland mask (1 inside, 0 outside, 10-90 % within +-2.2 mm of the border) for the global fit:
    # mean squares of raw distance maps would favour shrinking (a scaled shape's distances scale too).
    out["soft"] = sitk.Sigmoid(out["WG"], -1.0, 0.0, 1.0, 0.0)
    return out


def crop_around(vol: Volume, mask: np.ndarray, margin_mm: float) -> Volume:
    """`vol` cut to the bounding box of `mask` ((I, J, K) bool, not empty) plus `margin_mm` on every
    side (within the grid); the affine moves with the cut, so every voxel keeps its position."""
    idx = np.argwhere(mask)
    pad = np.ceil(margin_mm / np.asarray(vol.spacing)).astype(int)
    lo = np.maximum(idx.min(0) - pad, 0)
    hi = np.minimum(idx.max(0) + pad + 1, vol.shape)
    affine = vol.affine.copy()
    affine[:3, 3] = vol.affine[:3, :3] @ lo + vol.affine[:3, 3]
    arr = vol.array[:, lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]
    return Volume(np.ascontiguousarray(arr), affine, vol.channels, vol.case_id, None, vol.kind)


def working_grid(img, grid_mm: float):
    """An empty SimpleITK image covering the same physical box as `img`, in its orientation, with
    isotropic `grid_mm` voxels (the box's outer corners are kept)."""
    sitk = sitk_module()
    spacing = np.array(img.GetSpacing())
    size = np.array(img.GetSize())
    n = np.maximum(np.ceil(size * spacing / grid_mm).astype(int), 2)
    direction = np.reshape(img.GetDirection(), (3, 3))
    corner = np.array(img.GetOrigin()) - direction @ (spacing / 2)  # outer corner of voxel 0
    ref = sitk.Image([int(v) for v in n], sitk.sitkFloat32)
    ref.SetSpacing([grid_mm] * 3)
    ref.SetDirection(img.GetDirection())
    ref.SetOrigin([float(v) for v in corner + direction @ np.full(3, grid_mm / 2)])
    return ref


def _resampled(img, ref, transform, default: float, extrapolate: bool = False):
    sitk = sitk_module()
    return sitk.Resample(img, ref, transform, sitk.sitkLinear, float(default), sitk.sitkFloat32, extrapolate)


def _global_transform(fixed: dict, moving: dict, volume_ratio: float, iterations: int):
    """Target -> donor affine: centres of mass of the glands, the scale of their volume ratio, then a
    similarity and an affine fitted by mean squares of the soft gland masks."""
    sitk = sitk_module()
    sim = sitk.CenteredTransformInitializer(fixed["mask"], moving["mask"], sitk.Similarity3DTransform(),
                                            sitk.CenteredTransformInitializerFilter.MOMENTS)
    sim = sitk.Similarity3DTransform(sim)
    sim.SetScale(volume_ratio ** (1 / 3))
    best = _fit(fixed["soft"], moving["soft"], sim, iterations)
    aff = sitk.AffineTransform(3)
    aff.SetCenter(sim.GetCenter())
    aff.SetMatrix(sim.GetMatrix())
    aff.SetTranslation(sim.GetTranslation())
    start = sitk.AffineTransform(aff)
    # The affine is kept only when it fits better and is no mirror image (seen on a 300 mL gland).
    if _fit(fixed["soft"], moving["soft"], aff, iterations) > best or np.linalg.det(np.reshape(aff.GetMatrix(), (3, 3))) <= 0:
        return start
    return aff


def _fit(fixed, moving, transform, iterations: int) -> float:
    """Fit `transform` in place: mean squares, regular-step gradient descent, two levels (4 and 2 x
    the working voxel, smoothed 2 mm at the coarse level), every voxel sampled (deterministic).
    Returns the metric at the fitted transform."""
    sitk = sitk_module()
    reg = sitk.ImageRegistrationMethod()
    reg.SetMetricAsMeanSquares()
    reg.SetInterpolator(sitk.sitkLinear)
    reg.SetOptimizerAsRegularStepGradientDescent(learningRate=2.0, minStep=0.01, numberOfIterations=iterations,
                                                 relaxationFactor=0.5)
    reg.SetOptimizerScalesFromPhysicalShift()
    reg.SetShrinkFactorsPerLevel([2, 1])
    reg.SetSmoothingSigmasPerLevel([2.0, 0.0])
    reg.SetInitialTransform(transform, inPlace=True)
    reg.Execute(fixed, moving)
    return reg.MetricEvaluate(fixed, moving)


def demons(fixed: np.ndarray, moving: np.ndarray, iterations: int, fluid_sigma: float,
           diffusion_sigma: float) -> np.ndarray:
    """Multi-channel demons: the displacement s (3, Z, Y, X), in voxels along the array axes, such that
    moving[c](x + s(x)) ~ fixed[c](x) for every channel c.

    fixed, moving: (C, Z, Y, X) float arrays on one grid (here signed distances in voxels). Each step
    is the demons force summed over channels (symmetric gradient; at most half a voxel), smoothed by
    `fluid_sigma`, composed with the field (s <- u + s o (id + u): invertible while |grad u| < 1), and
    the field smoothed by `diffusion_sigma` with zeros outside the grid, then set to 0 on its border so
    the warp joins the affine outside the box without a tear.
    """
    from scipy import ndimage

    shape = fixed.shape[1:]
    grid = np.indices(shape, dtype=np.float32)
    s = np.zeros((3,) + shape, np.float32)
    grad_f = np.stack([np.stack(np.gradient(c)) for c in fixed])

    def smooth(v, sigma):
        return np.stack([ndimage.gaussian_filter(c, sigma, mode="constant") for c in v]) if sigma > 0 else v

    for _ in range(iterations):
        warped = np.stack([ndimage.map_coordinates(c, grid + s, order=1, mode="nearest") for c in moving])
        diff = warped - fixed
        g = 0.5 * (grad_f + np.stack([np.stack(np.gradient(c)) for c in warped]))
        num = (diff[:, None] * g).sum(0)
        den = (g ** 2).sum((0, 1)) + (diff ** 2).sum(0)
        u = smooth(-num / np.maximum(den, 1e-6), fluid_sigma)
        s = u + np.stack([ndimage.map_coordinates(c, grid + u, order=1, mode="nearest") for c in s])
        s = smooth(s, diffusion_sigma)
        s[:, [0, -1]] = 0
        s[:, :, [0, -1]] = 0
        s[:, :, :, [0, -1]] = 0
    return s


def _displacement_transform(shift: np.ndarray, ref):
    """A SimpleITK displacement-field transform on the grid `ref` from a demons field (voxels along the
    array axes z, y, x): physical displacement = direction @ (spacing * (sx, sy, sz))."""
    sitk = sitk_module()
    direction = np.reshape(ref.GetDirection(), (3, 3))
    xyz = shift[::-1] * np.asarray(ref.GetSpacing(), np.float32)[:, None, None, None]
    phys = np.einsum("ab,bzyx->zyxa", direction, xyz).astype(np.float64)
    field_img = sitk.GetImageFromArray(phys, isVector=True)
    field_img.CopyInformation(ref)
    return sitk.DisplacementFieldTransform(field_img)


def _warp(img, ref, transform, interpolator) -> np.ndarray:
    """`img` resampled onto the grid of `ref` through `transform` (ref point -> img point), 0 outside;
    returned as an (I, J, K) array."""
    sitk = sitk_module()
    out = sitk.Resample(img, ref, transform, interpolator, 0.0, img.GetPixelID())
    return sitk.GetArrayFromImage(out).transpose(2, 1, 0)


def _dsc(pred: np.ndarray, ref: np.ndarray) -> dict[str, float]:
    p, r = masks(pred), masks(ref)
    return {z: round(dice(p[z], r[z]), 4) for z in ZONES}
