"""Synthetic lesions inserted into real anatomy: a benchmark where the answer is known.

A lesion is an ellipsoid in scanner millimetres (centre, three semi-axes, a random rotation), so the
same lesion lands correctly on any grid: the T2W grid and the ADC's own grid. On each grid a voxel's
occupancy is the fraction of 3 x 3 x 3 sub-samples inside the ellipsoid (partial volume: a 3 mm
slice through the lesion's edge is partly darkened), restricted to the lesion's zone. The image is
multiplied by `1 - contrast * occupancy * texture`, where texture is smooth noise around 1
(`texture` sets its spread), so the lesion is T2-hypointense and ADC-restricting by `contrast`
(0.4 = 40 % darker than the tissue it replaces). The mask is occupancy >= 0.5 on the T2W grid.

    >>> rng = np.random.default_rng(0)
    >>> lesions = draw_lesions(zones, 2, rng)            # zones: Volume on the T2W grid
    >>> t2_new, mask = insert(t2, zones, lesions, 0.4, rng)

Everything depends only on the rng, so a seed reproduces the benchmark exactly, and the same draws
at another contrast give the same lesions, only fainter or stronger.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

import numpy as np
from scipy import ndimage

from mricore.align import resample_to
from mricore.volume import Volume
from mricore.zones import CLASS_NAMES

VOLUME_ML = (0.1, 2.0)     # lesion volume range, drawn log-uniformly
ELONGATION = (0.7, 1.4)    # semi-axis ratios around a sphere of the drawn volume


@dataclass(frozen=True)
class Lesion:
    """One ellipsoid in RAS+ mm: centre, semi-axes (mm) and a rotation (3 x 3, columns = axes)."""

    centre_mm: tuple[float, float, float]
    axes_mm: tuple[float, float, float]
    rotation: tuple[tuple[float, ...], ...]
    zone: int                  # 1 TZ, 2 PZ: the lesion is confined to this zone
    volume_ml: float           # of the ellipsoid (the mask is clipped to the zone)

    def to_dict(self) -> dict:
        return {**asdict(self), "zone": CLASS_NAMES[self.zone]}


def _random_rotation(rng: np.random.Generator) -> np.ndarray:
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    return q * np.sign(np.diag(r))


def draw_lesions(zones: Volume, n: int, rng: np.random.Generator, volume_ml=VOLUME_ML) -> list[Lesion]:
    """`n` lesions, each in PZ or TZ (equal odds when both exist), centred on a voxel of that zone
    at least 1.5 mm inside it (any voxel when the zone is thinner)."""
    z = zones.array[0]
    out = []
    for _ in range(n):
        present = [k for k in (1, 2) if (z == k).any()]
        if not present:
            break
        zone = int(rng.choice(present))
        m = z == zone
        inner = ndimage.distance_transform_edt(m, sampling=zones.spacing) >= 1.5
        vox = np.argwhere(inner if inner.any() else m)
        ijk = vox[rng.integers(len(vox))] + rng.uniform(-0.5, 0.5, 3)
        centre = (zones.affine @ np.r_[ijk, 1.0])[:3]
        vol = float(np.exp(rng.uniform(*np.log(volume_ml))))
        r = (3 * vol * 1000 / (4 * np.pi)) ** (1 / 3)
        ratio = rng.uniform(*ELONGATION, 3)
        axes = r * ratio / np.prod(ratio) ** (1 / 3)   # same volume, random shape
        rot = _random_rotation(rng)
        out.append(Lesion(tuple(map(float, centre)), tuple(map(float, axes)),
                          tuple(tuple(map(float, row)) for row in rot), zone, vol))
    return out


def occupancy(lesion: Lesion, shape, affine: np.ndarray, sub: int = 3) -> np.ndarray:
    """(I, J, K) float32 fraction of each voxel inside the ellipsoid (sub^3 samples per voxel),
    computed inside the lesion's bounding box only."""
    out = np.zeros(shape, np.float32)
    inv = np.linalg.inv(affine)
    c = (inv @ np.r_[lesion.centre_mm, 1.0])[:3]
    reach = max(lesion.axes_mm) / np.linalg.norm(affine[:3, :3], axis=0) + 1
    lo = np.maximum(np.floor(c - reach).astype(int), 0)
    hi = np.minimum(np.ceil(c + reach).astype(int) + 1, shape)
    if np.any(hi <= lo):
        return out
    offs = (np.arange(sub) + 0.5) / sub - 0.5
    axes = [(np.arange(a, b)[:, None] + offs[None, :]).ravel() for a, b in zip(lo, hi)]
    ijk = np.stack(np.meshgrid(*axes, indexing="ij"), -1).reshape(-1, 3)
    local = (ijk @ affine[:3, :3].T + affine[:3, 3] - lesion.centre_mm) @ np.asarray(lesion.rotation) / lesion.axes_mm
    inside = (np.sum(local ** 2, 1) <= 1.0).reshape([n for a, b in zip(lo, hi) for n in (b - a, sub)])
    out[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]] = inside.mean(axis=(1, 3, 5))
    return out


def crop_around(vol: Volume, mask: np.ndarray, margin_mm: float = 30.0) -> Volume:
    """`vol` cut to the in-plane bounding box of `mask` (on its grid) plus `margin_mm`, every slice kept;
    the affine moves with the crop, so the anatomy stays where it was in scanner space."""
    ij = np.argwhere(mask.any(axis=2))
    if not len(ij):
        return vol
    pad = np.ceil(margin_mm / np.asarray(vol.spacing[:2])).astype(int)
    lo = np.maximum(ij.min(0) - pad, 0)
    hi = np.minimum(ij.max(0) + pad + 1, vol.shape[:2])
    affine = vol.affine.copy()
    affine[:3, 3] = (vol.affine @ np.r_[lo, 0, 1.0])[:3]
    return replace(vol, array=vol.array[:, lo[0]:hi[0], lo[1]:hi[1]].copy(), affine=affine, header=None)


def _texture(shape, rng: np.random.Generator, spread: float, sigma_vox=(1.5, 1.5, 0.5)) -> np.ndarray:
    """Smooth noise with mean 1 and standard deviation `spread` (clipped at 0)."""
    if spread <= 0:
        return np.ones(shape, np.float32)
    n = ndimage.gaussian_filter(rng.normal(size=shape), sigma_vox)
    n = (n - n.mean()) / max(n.std(), 1e-6)
    return np.clip(1 + spread * n, 0, None).astype(np.float32)


def insert(image: Volume, zones: Volume, lesions: list[Lesion], contrast: float, rng: np.random.Generator,
           texture: float = 0.3) -> tuple[Volume, np.ndarray]:
    """Darken `image` (any grid, any channels: T2W or ADC) inside `lesions` by `contrast`; return the
    new image and the lesion mask (occupancy >= 0.5, uint8) on its grid. `zones` is resampled to the
    image's grid with nearest neighbour. The rng is drawn from even at contrast 0, so every contrast
    sees the same texture draws."""
    z = resample_to(zones, image).array[0]  # zones is a label map: nearest neighbour
    occ = np.zeros(image.shape, np.float32)
    for les in lesions:
        occ = np.maximum(occ, occupancy(les, image.shape, image.affine) * (z == les.zone))
    tex = _texture(image.shape, rng, texture)
    factor = 1 - np.clip(contrast * occ * tex, 0, 0.95)
    return image.with_array((image.array * factor[None]).astype(np.float32)), (occ >= 0.5).astype(np.uint8)
