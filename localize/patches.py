"""Candidate patches tiled over the gland, and the lesion probability map assembled from their scores.

Grid: the working grid of the model's preprocessing (voxel axes i, j, k; k = slice axis). A 2D
candidate is a (pi, pj) patch on one slice; a 3D candidate is a (pi, pj, pk) block. Every tile that
holds gland voxels (zones > 0) in its central half is a candidate, tagged with the majority zone there
(1 TZ, 2 PZ). The volume is zero-padded so tiles at the border are complete.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Tiles:
    """Tile corners (n, 3) in voxels of the working grid, their size (3,), and per tile the zone tag."""

    corners: np.ndarray
    size: tuple[int, int, int]
    zone: np.ndarray


def _starts(n: int, p: int, s: int) -> list[int]:
    last = max(n - p, 0)
    out = list(range(0, last + 1, s))
    if out[-1] != last:
        out.append(last)
    return out


def tile_gland(zones: np.ndarray, patch: list[int], stride: list[int]) -> Tiles:
    """Tiles over the gland of an (I, J, K) zone map. 2D patch/stride (two sizes) tile each slice."""
    size = tuple(patch) + (1,) * (3 - len(patch))
    step = tuple(stride) + (1,) * (3 - len(stride))
    corners, zone = [], []
    for a in _starts(zones.shape[0], size[0], step[0]):
        for b in _starts(zones.shape[1], size[1], step[1]):
            for c in _starts(zones.shape[2], size[2], step[2]):
                core = _centre(zones[a:a + size[0], b:b + size[1], c:c + size[2]])
                z = core[core > 0]
                if z.size:
                    corners.append((a, b, c))
                    zone.append(np.bincount(z, minlength=3)[1:].argmax() + 1)  # ties -> TZ
    return Tiles(np.array(corners, dtype=int).reshape(-1, 3), size, np.array(zone, dtype=np.uint8))


def _centre(block: np.ndarray) -> np.ndarray:
    """The central half of a block along every axis longer than 1 voxel."""
    sl = tuple(slice(n // 4, n - n // 4) if n > 1 else slice(None) for n in block.shape)
    return block[sl]


def _pad(array: np.ndarray, size: tuple[int, int, int]) -> np.ndarray:
    """Zero-pad the trailing 3 axes up to at least `size` (volumes smaller than one tile)."""
    pads = [(0, 0)] * (array.ndim - 3) + [(0, max(0, p - n)) for n, p in zip(array.shape[-3:], size)]
    return np.pad(array, pads) if any(p[1] for p in pads) else array


def extract(array: np.ndarray, tiles: Tiles) -> np.ndarray:
    """(C, I, J, K) -> (n, C, pi, pj) for 2D tiles (pk == 1) or (n, C, pi, pj, pk) for 3D, float32."""
    arr = _pad(array, tiles.size)
    pi, pj, pk = tiles.size
    out = np.stack([arr[:, a:a + pi, b:b + pj, c:c + pk] for a, b, c in tiles.corners]) if len(tiles.corners) \
        else np.zeros((0, arr.shape[0], pi, pj, pk), np.float32)
    return (out[..., 0] if pk == 1 else out).astype(np.float32)


def patch_labels(lesion: np.ndarray, tiles: Tiles, min_voxels: int) -> np.ndarray:
    """Per tile: 1 when its central half holds at least `min_voxels` lesion voxels, 0 when the whole
    tile holds none, NaN otherwise (lesion only at the rim, or too little of it: ambiguous). The
    backbones pool globally, so they cannot tell a lesion at the rim from one in the centre; such
    tiles would teach them that a lesion means "no lesion", and training leaves them out."""
    lab = _pad(lesion, tiles.size)
    pi, pj, pk = tiles.size
    out = []
    for a, b, c in tiles.corners:
        block = lab[a:a + pi, b:b + pj, c:c + pk]
        out.append(1.0 if np.count_nonzero(_centre(block)) >= min_voxels else 0.0 if not block.any() else np.nan)
    return np.array(out, dtype=np.float32)


def _weight(size: tuple[int, int, int]) -> np.ndarray:
    """Gaussian tile weight (sigma = size / 4), so a voxel's value comes mostly from tiles centred near it."""
    axes = [np.exp(-0.5 * ((np.arange(n) - (n - 1) / 2) / max(n / 4, 0.5)) ** 2) for n in size]
    return (axes[0][:, None, None] * axes[1][None, :, None] * axes[2][None, None, :]).astype(np.float32)


def assemble(values: np.ndarray, tiles: Tiles, shape: tuple[int, int, int], gland: np.ndarray | None = None,
             maps: np.ndarray | None = None, reduce: str = "mean") -> np.ndarray:
    """Per-tile values -> (I, J, K) map. Each tile spreads its value (times its own map when `maps`
    (n, pi, pj[, pk]) is given) over its voxels; `mean` blends with Gaussian weights, `max` keeps the
    largest. Voxels outside `gland` are 0."""
    full = tuple(max(n, p) for n, p in zip(shape, tiles.size))
    acc = np.zeros(full, np.float32)
    wsum = np.zeros(full, np.float32)
    w = _weight(tiles.size)
    for t, (a, b, c) in enumerate(tiles.corners):
        v = values[t] * (np.ones(tiles.size, np.float32) if maps is None else maps[t].reshape(tiles.size))
        sl = (slice(a, a + tiles.size[0]), slice(b, b + tiles.size[1]), slice(c, c + tiles.size[2]))
        if reduce == "max":
            acc[sl] = np.maximum(acc[sl], v)
        else:
            acc[sl] += w * v
            wsum[sl] += w
    out = acc if reduce == "max" else np.divide(acc, wsum, out=np.zeros_like(acc), where=wsum > 0)
    out = out[:shape[0], :shape[1], :shape[2]]
    return out * (gland > 0) if gland is not None else out
