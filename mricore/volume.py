"""`Volume`: one datum type that carries its geometry.

Axis convention: `array` is channel-first, (C, I, J, K), in the voxel order of the file (nibabel's
i, j, k). `affine` maps voxel indices (i, j, k, 1) to scanner RAS+ millimetres (the NIfTI convention;
nibabel's `aff2axcodes` names where each voxel axis points). Nothing assumes axis-aligned voxels.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from .errors import GeometryError

# What a volume holds decides how it is resampled: an image is interpolated (linear), a label map
# never is (nearest neighbour, so no new label value can appear). Readers set it (mricore.io.read_nifti
# / read_label); every resampling (mricore.align.resample_to, mricore.preprocess) follows it.
KINDS = ("image", "label")

# Two grids are "the same" when shapes are equal and affines agree to this many mm (voxel corners).
GRID_ATOL_MM = 1e-3


@dataclass(frozen=True)
class Volume:
    """A multi-channel image (or label map) on one voxel grid.

    Args:
        array: (C, I, J, K) numpy array.
        affine: (4, 4) voxel-to-RAS+ mm.
        channels: one name per channel, e.g. ("T2W", "ADC").
        case_id: patient/case identifier; splits are made on it.
        header: optional NIfTI header of the source file, used to write outputs "like the input"
            (qform/sform codes kept). Not compared.
        kind: "image" (interpolated when resampled) or "label" (integer label map, nearest neighbour).

    Example:
        >>> v = Volume(np.zeros((1, 4, 4, 2), np.float32), np.eye(4), ("T2W",), "case0")
        >>> v.spacing
        (1.0, 1.0, 1.0)
    """

    array: np.ndarray
    affine: np.ndarray
    channels: tuple[str, ...]
    case_id: str = ""
    header: Any = field(default=None, compare=False, repr=False)
    kind: str = "image"

    def __post_init__(self):
        a = np.asarray(self.affine, dtype=np.float64)
        object.__setattr__(self, "affine", a)
        object.__setattr__(self, "channels", tuple(self.channels))
        if self.array.ndim != 4:
            raise GeometryError(self.case_id or "volume", "array must be (C, I, J, K)",
                                f"shape {self.array.shape}", "add a channel axis or drop extra axes")
        if self.kind not in KINDS:
            raise GeometryError(self.case_id or "volume", f"kind must be one of {list(KINDS)}", repr(self.kind),
                                f"use one of {list(KINDS)}")
        if self.kind == "label" and not np.issubdtype(self.array.dtype, np.integer):
            raise GeometryError(self.case_id or "volume", "a label map holds integers", f"dtype {self.array.dtype}",
                                "read it with mricore.io.read_label or round it first")
        if a.shape != (4, 4):
            raise GeometryError(self.case_id or "volume", "affine must be 4x4", a.shape, "pass a 4x4 homogeneous matrix")
        if len(self.channels) != self.array.shape[0]:
            raise GeometryError(self.case_id or "volume", "one channel name per channel",
                                f"{len(self.channels)} names for {self.array.shape[0]} channels",
                                "pass matching channel names")

    @property
    def is_label(self) -> bool:
        return self.kind == "label"

    @property
    def shape(self) -> tuple[int, int, int]:
        """Spatial shape (I, J, K)."""
        return tuple(int(s) for s in self.array.shape[1:])

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel size in mm along i, j, k (column norms of the affine)."""
        return tuple(float(s) for s in np.linalg.norm(self.affine[:3, :3], axis=0))

    @property
    def voxel_volume_ml(self) -> float:
        return float(abs(np.linalg.det(self.affine[:3, :3])) / 1000.0)

    def channel(self, name: str) -> np.ndarray:
        """The (I, J, K) array of one named channel."""
        if name not in self.channels:
            raise GeometryError(self.case_id, "unknown channel", repr(name),
                                f"use one of {list(self.channels)}")
        return self.array[self.channels.index(name)]

    def with_array(self, array: np.ndarray, channels: tuple[str, ...] | None = None) -> "Volume":
        """Same grid, new data."""
        return replace(self, array=array, channels=tuple(channels or self.channels))

    def same_grid(self, other: "Volume") -> bool:
        return same_grid(self.shape, self.affine, other.shape, other.affine)

    def inplane_scaled(self, factor: float) -> "Volume":
        """Same voxels, in-plane voxel size (axes i, j) times `factor` about the centre voxel: anatomy
        then measures `factor` x its size. Slice axis and orientation are unchanged, so labels or
        probabilities computed on the result belong voxel for voxel to this volume too."""
        a = self.affine.copy()
        a[:3, :2] *= factor
        a[:3, 3] += (self.affine - a)[:3, :3] @ ((np.array(self.shape) - 1) / 2.0)  # centre voxel stays put
        return replace(self, affine=a)


def same_grid(shape_a, affine_a, shape_b, affine_b, atol: float = GRID_ATOL_MM) -> bool:
    """True when two grids have equal shapes and affines within `atol` mm."""
    return tuple(shape_a) == tuple(shape_b) and np.allclose(affine_a, affine_b, atol=atol)


def stack(volumes: list[Volume], case_id: str | None = None) -> Volume:
    """Stack channels of volumes that share one grid; never silently across grids."""
    first = volumes[0]
    for v in volumes[1:]:
        if not first.same_grid(v):
            raise GeometryError(f"{v.case_id}:{','.join(v.channels)}",
                                "channels must share the reference grid before stacking",
                                f"shape {v.shape} vs {first.shape}",
                                "align them first (mricore.align.resample_to / align_case)")
        if v.kind != first.kind:
            raise GeometryError(f"{v.case_id}:{','.join(v.channels)}", "an image and a label map cannot be stacked",
                                f"{v.kind} onto {first.kind}", "stack images with images")
    arr = np.concatenate([v.array for v in volumes], axis=0)
    names = tuple(n for v in volumes for n in v.channels)
    return Volume(arr, first.affine, names, case_id or first.case_id, first.header, first.kind)
