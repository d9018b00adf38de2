"""Paired augmentation: one random draw per sample, applied to every image channel and to the mask.

Spatial part (elasticdeform): one coarse displacement grid + in-plane rotation + zoom, applied with
cubic splines to images and order 0 (nearest) to the mask, so no new label value can appear. The
caller hands a region larger than the patch; only the patch is computed (`crop`), which is what
makes elasticdeform affordable (about 1 s for a full volume vs a few ms for a patch). Deformation is
in-plane only (axes i, j): slices are 3 mm apart. Intensity part (gamma, contrast, brightness, noise,
bias field, in-plane blur) touches images only. Left-right flip is exact. The per-zone shift (off by
default) reads the deformed mask: each label value's region, edges softened in-plane, gets its own
additive shift in every image channel (a 2.5D model's neighbouring slices take the centre slice's
mask), so zone contrast varies as it does across scanners; the mask itself is never changed.

Scanner and coil (off by default; models in segment.acquisition, ranges measured by
bench/coil_probe.py): an endorectal coil's gain field peaked behind the patch mask's posterior edge
and falling off with distance in mm; Rician noise at a drawn SNR; a 1.5 T-like lower tissue contrast
with a softer in-plane image. They need the patch's voxel spacing and which way is posterior: a
`PatchGrid` (PatchGrid.of_spec of the training spec; without one, the default 0.6 mm LPS working grid).
Their random numbers are drawn only when enabled and after every other draw, so a config that leaves
them off draws exactly what it drew before they existed (a checksum test holds it).

Why elasticdeform and not MONAI's elastic transforms: bench/augment_bench.py measured per sample, one
thread, on the shared 2-core machine: 2D 160x160 patch 0.014 s (elasticdeform, crop) vs 0.017 s
(Rand2DElasticd); 3D 96x96x16 patch, 2 channels + mask, 0.049 s vs 0.34 s (Rand3DElasticd, which
deforms through-plane too). Whole 2-channel 320x320x24 volume without crop: 0.77 s.

Example:
    >>> rng = np.random.default_rng(0)
    >>> img, msk = np.zeros((1, 64, 64), np.float32), np.zeros((64, 64), np.uint8)
    >>> p = draw(rng, AugmentConfig())
    >>> a, b = apply_spatial(img, msk, p, crop=(slice(8, 56), slice(8, 56)))
    >>> a.shape, b.shape
    ((1, 48, 48), (48, 48))
    >>> coil = AugmentConfig(coil_p=1.0, lowsnr_p=1.0)  # an endorectal-coil study at low SNR
    >>> a, b = augment_patch(rng, coil, img + 1, msk, (slice(8, 56), slice(8, 56)), PatchGrid())
"""

from __future__ import annotations

from dataclasses import dataclass

import elasticdeform
import numpy as np

from .acquisition import PatchGrid, coil_draw, endorectal_coil, field_strength, rician
from .config import AugmentConfig


ZONE_VALUES = 8  # label values 1..8 get their own per-zone shift; larger values share the last one


@dataclass(frozen=True)
class Draw:
    """All random numbers for one sample, drawn once."""

    displacement: np.ndarray | None  # (2, points, points) in voxels, or None
    rotate: float | None             # degrees, in-plane
    zoom: float | None
    flip: bool
    gamma: float | None
    contrast: float | None
    brightness: float | None
    noise_std: float | None
    bias: np.ndarray | None          # coefficients of a 2nd-order in-plane polynomial field
    blur: float | None               # in-plane Gaussian sigma, voxels
    seed: int                        # for the noise field
    zone: np.ndarray | None = None   # additive shift per label value 1..ZONE_VALUES (image std units)
    coil: np.ndarray | None = None   # endorectal coil: amplitude, falloff mm, offset mm, lateral mm, through mm
    snr: float | None = None         # Rician noise: tissue level over sigma
    field: np.ndarray | None = None  # 1.5 T-like: contrast factor (<= 1), in-plane blur sigma (voxels)


def draw(rng: np.random.Generator, cfg: AugmentConfig) -> Draw:
    def maybe(p):
        return rng.random() < p

    return Draw(
        displacement=rng.normal(0, cfg.elastic_sigma, (2, cfg.elastic_points, cfg.elastic_points))
        if maybe(cfg.elastic_p) else None,
        rotate=float(rng.uniform(-cfg.rotate_deg, cfg.rotate_deg)) if maybe(cfg.rotate_p) else None,
        zoom=float(rng.uniform(1 - cfg.scale_range, 1 + cfg.scale_range)) if maybe(cfg.scale_p) else None,
        flip=bool(maybe(cfg.flip_p)),
        gamma=float(np.exp(rng.uniform(-0.3, 0.3))) if maybe(cfg.gamma_p) else None,
        contrast=float(rng.uniform(0.75, 1.25)) if maybe(cfg.contrast_p) else None,
        brightness=float(rng.uniform(-0.2, 0.2)) if maybe(cfg.brightness_p) else None,
        noise_std=float(rng.uniform(0, cfg.noise_std)) if maybe(cfg.noise_p) else None,
        bias=rng.uniform(-cfg.bias_strength, cfg.bias_strength, 5) if maybe(cfg.bias_p) else None,
        blur=float(rng.uniform(0.25, max(0.25, cfg.blur_sigma))) if maybe(cfg.blur_p) else None,
        seed=int(rng.integers(2**31)),
        # last, and drawn only when enabled: configs without it keep their random streams exactly
        zone=rng.uniform(-cfg.zone_shift, cfg.zone_shift, ZONE_VALUES) if cfg.zone_p > 0 and maybe(cfg.zone_p) else None,
        # after zone, each drawn only when enabled, in this order: configs that leave them off keep
        # every random number they drew before (tests/segment/test_coil_augment.py holds the checksum)
        coil=coil_draw(rng, cfg) if cfg.coil_p > 0 and maybe(cfg.coil_p) else None,
        snr=float(rng.uniform(*cfg.lowsnr_snr)) if cfg.lowsnr_p > 0 and maybe(cfg.lowsnr_p) else None,
        field=np.array([rng.uniform(*cfg.field_contrast), rng.uniform(*cfg.field_blur)])
        if cfg.field_p > 0 and maybe(cfg.field_p) else None,
    )


def apply_spatial(image: np.ndarray, mask: np.ndarray | None, d: Draw, crop: tuple[slice, ...]):
    """Deform (C, I, J[, K]) image and (I, J[, K]) mask with the same field; return the cropped patch.

    `crop` holds slices for the in-plane axes (i, j) of the spatial dims; a 3D slice axis is kept.
    """
    nsp = image.ndim - 1
    if d.displacement is None and d.rotate is None and d.zoom is None:
        region = (slice(None),) + tuple(crop) + (slice(None),) * (nsp - 2)
        img = image[region]
        msk = None if mask is None else mask[region[1:]]
    else:
        xs = [c for c in image] + ([mask] if mask is not None else [])
        orders = [3] * len(image) + ([0] if mask is not None else [])
        disp = d.displacement if d.displacement is not None else np.zeros((2, 2, 2))
        out = elasticdeform.deform_grid(xs, disp, order=orders, mode="nearest", crop=list(crop),
                                        axis=[(0, 1)] * len(xs), rotate=d.rotate, zoom=d.zoom)
        img = np.stack(out[: len(image)]).astype(np.float32)
        msk = out[-1].astype(mask.dtype) if mask is not None else None
    if d.flip:  # left-right is voxel axis i in LPS/RAS storage
        img = img[:, ::-1]
        msk = None if msk is None else msk[::-1]
    return np.ascontiguousarray(img), (None if msk is None else np.ascontiguousarray(msk))


def zone_field(mask: np.ndarray, shifts: np.ndarray) -> np.ndarray:
    """The per-zone additive field: shifts[v - 1] on label value v, 0 on background, edges softened
    in-plane (Gaussian, sigma 1 voxel) so no sharp step marks the label's border."""
    from scipy.ndimage import gaussian_filter

    lut = np.concatenate([[0.0], shifts]).astype(np.float32)
    field = lut[np.minimum(mask, len(shifts)).astype(np.intp)]
    return gaussian_filter(field, [1.0, 1.0] + [0] * (mask.ndim - 2))


def apply_intensity(image: np.ndarray, d: Draw, mask: np.ndarray | None = None,
                    grid: PatchGrid | None = None) -> np.ndarray:
    """Intensity changes on a normalised (C, ...) image; masks are never touched. `mask` (the patch's
    label, same in-plane grid) is read by the per-zone shift and places the coil's peak; `grid` (None:
    PatchGrid()) gives the coil field its millimetres and the patient's posterior."""
    from scipy.ndimage import gaussian_filter

    x = image
    if d.zone is not None and mask is not None:
        x = x + zone_field(mask, d.zone)[None]
    if d.blur is not None:
        x = gaussian_filter(x, [0, d.blur, d.blur] + [0] * (x.ndim - 3))
    if d.gamma is not None:
        lo, hi = x.min(), x.max()
        x = ((x - lo) / max(hi - lo, 1e-6)) ** d.gamma * (hi - lo) + lo
    if d.contrast is not None:
        m = x.mean(axis=tuple(range(1, x.ndim)), keepdims=True)
        x = (x - m) * d.contrast + m
    if d.brightness is not None:
        x = x + d.brightness
    if d.bias is not None:
        i = np.linspace(-1, 1, x.shape[1])[:, None]
        j = np.linspace(-1, 1, x.shape[2])[None, :]
        c = d.bias
        field = np.exp(c[0] * i + c[1] * j + c[2] * i * i + c[3] * j * j + c[4] * i * j)
        x = x * field.reshape(field.shape + (1,) * (x.ndim - 3))
    if d.noise_std:
        x = x + np.random.default_rng(d.seed).normal(0, d.noise_std, x.shape)
    # acquisition order: tissue contrast and resolution (field strength), coil reception, then noise
    if d.field is not None:
        x = field_strength(x, *d.field)
    if d.coil is not None:
        x = endorectal_coil(x, mask, d.coil, grid or PatchGrid())
    if d.snr is not None:
        x = rician(x, d.snr, np.random.default_rng([d.seed, 1]))
    return x.astype(np.float32, copy=False)


def augment_patch(rng, cfg: AugmentConfig, image, mask, crop, grid: PatchGrid | None = None):
    """One draw, applied to image and mask: the online augmentation of one training sample. `grid`:
    the sample's voxel spacing and posterior (PatchGrid.of_spec of the training spec; None: PatchGrid())."""
    d = draw(rng, cfg)
    img, msk = apply_spatial(image, mask, d, crop)
    return apply_intensity(img, d, msk, grid), msk
