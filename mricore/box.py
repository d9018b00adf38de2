"""Boxes of voxels on a grid: the part of a large grid where a result can differ from a value known
beforehand, so that the work (restoring, combining, uncertainty) is done there only.

A box is a tuple of three slices (start, stop; step 1) over the (I, J, K) voxel axes of a grid, e.g.
`array[(..., *box)]`. Example: a 100 mm working grid restored onto a 704 x 704 x 30 input grid covers
a box of about 215 x 215 x 30 of its voxels; outside it every member says background, so the ensemble
(ensemble.engine) combines on the box and `embed`s the result into the input grid with those values.
"""

from __future__ import annotations

import itertools

import numpy as np

Box = tuple[slice, slice, slice]


def footprint(src_affine: np.ndarray, lo, hi, dst_affine: np.ndarray, dst_shape) -> Box:
    """The box of the grid (`dst_affine`, `dst_shape`) holding every voxel whose centre lies in the
    footprint of the source voxels lo..hi-1 (source index lo - 0.5 .. hi - 0.5 on each axis: the rule of
    mricore.align.resample_array, which gives every other voxel its outside value), plus one voxel of
    slack on each side (rounding), clipped to the grid. Exact for any affine: the footprint is a
    parallelepiped in destination voxels, and the box holds its eight corners. May be empty."""
    src = [(float(a) - 0.5, float(b) - 0.5) for a, b in zip(lo, hi)]
    corners = np.array([[*c, 1.0] for c in itertools.product(*src)]).T          # (4, 8) source voxels
    vox = (np.linalg.solve(dst_affine, src_affine) @ corners)[:3]               # destination voxels
    start = np.clip(np.floor(vox.min(axis=1)) - 1, 0, dst_shape).astype(int)
    stop = np.clip(np.ceil(vox.max(axis=1)) + 2, 0, dst_shape).astype(int)
    return tuple(slice(int(a), int(max(a, b))) for a, b in zip(start, stop))


def union(boxes: list[Box]) -> Box:
    """The smallest box holding every non-empty box of `boxes` (an empty box when none is)."""
    full = [b for b in boxes if not is_empty(b)]
    if not full:
        return (slice(0, 0),) * 3
    return tuple(slice(min(b[a].start for b in full), max(b[a].stop for b in full)) for a in range(3))


def intersection(a: Box, b: Box) -> Box:
    """The voxels in both boxes (an empty slice on an axis where they do not meet)."""
    return tuple(slice(max(x.start, y.start), max(max(x.start, y.start), min(x.stop, y.stop))) for x, y in zip(a, b))


def is_empty(box: Box) -> bool:
    return any(s.stop <= s.start for s in box)


def shape(box: Box) -> tuple[int, int, int]:
    return tuple(s.stop - s.start for s in box)


def affine(grid_affine: np.ndarray, box: Box) -> np.ndarray:
    """Voxel -> world affine of the box as a grid of its own (its voxel 0 is the box's first voxel)."""
    shift = np.eye(4)
    shift[:3, 3] = [s.start for s in box]
    return grid_affine @ shift


def embed(values: np.ndarray, box: Box, grid_shape, fill=0) -> np.ndarray:
    """(C, *box shape) or (*box shape) `values` placed into a new array on the whole grid (`grid_shape`,
    the leading channel axis kept), every voxel outside the box set to `fill` (a scalar, or one value
    per channel)."""
    lead = values.shape[:-3]
    # np.zeros, then the non-zero fills: zeroed pages come from the OS on first touch, which costs
    # far less than writing them (704 x 704 x 30 float32 maps: about 60 MB each).
    out = np.zeros(lead + tuple(int(n) for n in grid_shape), values.dtype)
    fills = np.broadcast_to(np.asarray(fill, values.dtype), lead)
    for c in np.ndindex(*lead):  # one channel at a time: no full-size temporary
        if fills[c] != 0:
            out[c].fill(fills[c])
    out[(..., *box)] = values
    return out
