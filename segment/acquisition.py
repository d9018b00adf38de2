"""How a scanner and its coil change an image: the models behind the coil, low-SNR and 1.5 T-like
augmentations of segment.transforms (which draws their parameters and applies them to a patch).

- Endorectal coil (`coil_gain`): a receive coil in the rectum makes tissue next to it, posterior of the
  gland, several times brighter, falling off over a few centimetres. Modelled as a multiplicative gain
  1 + A * 2 ** (-r / L): r the distance in mm to a peak placed posterior of the mask's posterior edge,
  L the distance at which the excess gain halves (bench/coil_probe.py measured both on PROMISE12 Case00).
- Low SNR (`rician`): magnitude images carry Rician noise, the magnitude of complex Gaussian noise added
  to the signal; so the result is never below the floor and dark regions get brighter on average.
- 1.5 T-like (`field_strength`): lower tissue contrast (deviations from the tissue level scaled by a
  factor <= 1) and a softer in-plane image (Gaussian blur), as at the lower field's larger voxels.

Intensities here are patch values after normalisation, which can be negative (z-score): the patch's
minimum per channel is taken as zero signal (air) wherever the model needs a magnitude.

Example:
    >>> g = coil_gain((64, 64), None, np.array([2.0, 10.0, 5.0, 0.0, 0.0]), PatchGrid())
    >>> bool(g.max() <= 3.0 and g.min() >= 1.0)
    True
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# mm along (i, j, k) where a preprocessing spec keeps a study's own spacing (target_spacing null): the
# usual prostate T2W grid here (../shared/data README: 0.5-0.7 mm in-plane, 3-4 mm slices).
DEFAULT_SPACING = (0.6, 0.6, 3.0)
TISSUE_FRACTION = 0.1  # tissue: voxels above this share of the 99th percentile (air and coil shadow out)


@dataclass(frozen=True)
class PatchGrid:
    """Where a patch's voxels sit in the patient: spacing in mm along (i, j, k), and `posterior`, the
    voxel axis direction (one +-1 entry) pointing to the patient's back. The default is the working grid
    of the default spec (LPS storage: +j is posterior)."""

    spacing: tuple[float, float, float] = DEFAULT_SPACING
    posterior: tuple[int, int, int] = (0, 1, 0)

    @classmethod
    def of_spec(cls, spec) -> PatchGrid:
        """The working grid of a mricore.preprocess.PreprocessSpec (its target spacing, an axis it keeps
        taking DEFAULT_SPACING, and its orientation letters)."""
        spacing = tuple(float(d if t is None else t) for t, d in zip(spec.target_spacing, DEFAULT_SPACING))
        axis = next(i for i, c in enumerate(spec.orientation) if c in "AP")
        post = [0, 0, 0]
        post[axis] = 1 if spec.orientation[axis] == "P" else -1
        return cls(spacing, tuple(post))

    @classmethod
    def of_affine(cls, affine) -> PatchGrid:
        """The grid of a voxel-to-RAS+ affine (a study as read, e.g. by `segment augment`): the voxel
        axis most nearly anterior-posterior; posterior is -y in RAS."""
        a = np.asarray(affine, dtype=float)[:3, :3]
        spacing = np.linalg.norm(a, axis=0)
        axis = int(np.argmax(np.abs(a[1]) / spacing))
        post = [0, 0, 0]
        post[axis] = -1 if a[1, axis] > 0 else 1
        return cls(tuple(float(s) for s in spacing), tuple(post))


def tissue_level(x: np.ndarray) -> float:
    """The median of the tissue voxels of a non-negative magnitude array (those above TISSUE_FRACTION of
    its 99th percentile): the signal of the SNR that `rician` is given and bench/coil_probe.py measures."""
    top = float(np.percentile(x, 99))
    tissue = x[x > TISSUE_FRACTION * top]
    return float(np.median(tissue)) if tissue.size else top


def _floor(x: np.ndarray) -> np.ndarray:
    """Each channel's minimum of a (C, ...) array, broadcastable: the zero-signal level of a patch."""
    return x.min(axis=tuple(range(1, x.ndim)), keepdims=True)


def coil_draw(rng: np.random.Generator, cfg) -> np.ndarray:
    """The coil's parameters from an AugmentConfig: amplitude A, falloff L (mm), the peak's offset
    behind the mask (mm), and its left-right and through-plane jitter (mm)."""
    j = cfg.coil_jitter_mm
    return np.array([rng.uniform(*cfg.coil_gain), rng.uniform(*cfg.coil_falloff_mm),
                     rng.uniform(*cfg.coil_offset_mm), rng.uniform(-j, j), rng.uniform(-j, j)])


def coil_peak(shape: tuple[int, ...], mask: np.ndarray | None, offset: float, lateral: float,
              through: float, grid: PatchGrid) -> np.ndarray:
    """The coil's peak in mm on the patch's (i, j[, k]) axes: `offset` mm posterior of the mask's
    posterior edge (its foreground centroid, moved back to the level of its most posterior voxel), or
    of the patch centre when the mask is empty or absent; `lateral` mm along the other in-plane axis;
    in 3D `through` mm along k."""
    n = len(shape)
    sp, post = np.array(grid.spacing[:n]), np.array(grid.posterior[:n], dtype=float)
    fg = np.argwhere(mask > 0) if mask is not None else np.zeros((0, n))
    if len(fg):
        c = fg.mean(0)
        anchor = c + post * ((fg @ post).max() - c @ post)
    else:
        anchor = (np.array(shape) - 1) / 2.0
    side = np.zeros(n)
    side[0 if post[1] else 1] = 1.0  # left-right: the in-plane axis that is not anterior-posterior
    peak = anchor * sp + post * offset + side * lateral
    if n == 3:
        peak[2] += through
    return peak


def coil_gain(shape: tuple[int, ...], mask: np.ndarray | None, coil: np.ndarray, grid: PatchGrid) -> np.ndarray:
    """The gain field, float32 of `shape` (a patch's (I, J[, K])): 1 + A * 2 ** (-r / L), r the distance
    in mm to `coil_peak` (a 2D patch's slice lies `through` mm from the peak's plane). In [1, 1 + A]."""
    amp, falloff, offset, lateral, through = (float(v) for v in coil)
    n = len(shape)
    peak = coil_peak(shape, mask, offset, lateral, through, grid)
    r2 = np.full(shape, through ** 2 if n == 2 else 0.0)
    for ax, (size, s, p) in enumerate(zip(shape, grid.spacing, peak)):
        d = np.arange(size) * s - p
        r2 = r2 + (d ** 2).reshape([-1 if a == ax else 1 for a in range(n)])
    return (1 + amp * np.exp2(-np.sqrt(r2) / falloff)).astype(np.float32)


def endorectal_coil(x: np.ndarray, mask: np.ndarray | None, coil: np.ndarray, grid: PatchGrid) -> np.ndarray:
    """(C, I, J[, K]) image received by the coil: per channel, floor + (x - floor) * `coil_gain` (the
    signal above the floor is multiplied; air stays air)."""
    lo = _floor(x)
    return (lo + (x - lo) * coil_gain(x.shape[1:], mask, coil, grid)[None]).astype(np.float32)


def rician(x: np.ndarray, snr: float, rng: np.random.Generator) -> np.ndarray:
    """(C, ...) image with Rician noise: per channel, s = x - floor (the minimum), sigma = tissue_level(s)
    / snr, out = floor + |s + n1 + i n2| with n1, n2 ~ N(0, sigma). Never below the floor."""
    lo = _floor(x)
    s = x - lo
    sigma = np.array([tissue_level(c) / snr for c in s]).reshape(lo.shape)
    noisy = np.hypot(s + rng.normal(0.0, 1.0, x.shape) * sigma, rng.normal(0.0, 1.0, x.shape) * sigma)
    return (lo + noisy).astype(np.float32)


def field_strength(x: np.ndarray, contrast: float, blur: float) -> np.ndarray:
    """(C, I, J[, K]) image, 1.5 T-like: per channel, deviations from the tissue level (floor +
    tissue_level) scaled by `contrast` (<= 1: lower contrast), then an in-plane Gaussian blur of
    sigma `blur` voxels (0: none)."""
    from scipy.ndimage import gaussian_filter

    lo = _floor(x)
    m = lo + np.array([tissue_level(c) for c in x - lo]).reshape(lo.shape)
    y = m + (x - m) * contrast
    if blur > 0:
        y = gaussian_filter(y, [0, blur, blur] + [0] * (x.ndim - 3))
    return y.astype(np.float32)
