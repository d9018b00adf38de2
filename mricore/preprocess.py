"""Preprocessing shared by training and prediction, described by one serialisable spec.

Forward (`preprocess`): with `spec.n4`, divide the T2W channel by its N4 bias field on the input grid
(mricore.bias; the member was trained so, and prediction repeats it); reorient voxel axes to
`spec.orientation` (a permutation/flip, exact), resample to `spec.target_spacing` (in-plane and
through-plane separately; `None` keeps an axis as acquired), crop/pad the in-plane field of view to
`spec.crop_mm` around a centre (the volume centre, or a gland centre the caller found:
`spec.crop_centre` "gland", see ensemble.engine's locator), and normalise each
channel by its rule. The result carries its own affine, so the inverse is a resampling through world
coordinates back onto the original grid (`restore`): linear for probabilities, nearest for labels;
on a large grid, only onto the box of it that the working grid reaches (`footprint`), if the caller
knows the values outside.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Literal

import nibabel as nib
import numpy as np

from . import box as boxes
from .align import resample_array
from .config import ConfigError, to_dict
from .volume import Volume


@dataclass(frozen=True)
class ChannelNorm:
    """Intensity rule for one channel.

    zscore: (x - mean) / std over voxels > 0 (MRI background is 0), for T2W and DWI.
    percentile: clip to the [lower, upper] percentiles of the volume, then scale to [0, 1].
    fixed: x * scale + offset, then clip to [clip_low, clip_high]; for quantitative maps such as ADC
        (scanner units 1e-6 mm^2/s: scale 0.001 gives 1e-3 mm^2/s, typical prostate 0.5-2.0).
    """

    method: Literal["zscore", "percentile", "fixed"] = "zscore"
    lower: float = 0.5
    upper: float = 99.5
    scale: float = 1.0
    offset: float = 0.0
    clip_low: float = -5.0
    clip_high: float = 5.0

    def validate(self, where):
        if not 0 <= self.lower < self.upper <= 100:
            raise ConfigError(where, "percentiles need 0 <= lower < upper <= 100", (self.lower, self.upper), "e.g. lower: 0.5, upper: 99.5")
        if self.clip_low >= self.clip_high:
            raise ConfigError(where, "clip_low must be below clip_high", (self.clip_low, self.clip_high), "swap the two values")


# Defaults by sequence name: a new sequence falls back to z-score.
DEFAULT_NORMS = {
    "T2W": ChannelNorm("zscore"),
    "ADC": ChannelNorm("fixed", scale=0.001, clip_low=0.0, clip_high=4.0),
    "DWI": ChannelNorm("zscore"),
}


@dataclass(frozen=True)
class PreprocessSpec:
    """How raw volumes become network input. Saved in every model folder.

    target_spacing: mm along (in-plane i, in-plane j, through-plane k); None per axis keeps it.
    crop_mm: in-plane field of view (i, j) in mm kept around the crop centre; None keeps the whole plane.
    crop_centre: "volume" (the FOV centre) or "gland": training centres the crop on the reference
        gland's centre, and prediction on the gland a locator found (two stages, ensemble.engine);
        without a gland centre (e.g. `segment predict` of one member) the volume centre is used.
    n4: N4 bias-field correction of the T2W channel first (mricore.bias; a few seconds per study), in
        training and in prediction alike, so a member trained on corrected images always sees them.
    """

    channels: list[str] = field(default_factory=lambda: ["T2W"])
    orientation: str = "LPS"
    target_spacing: list[float | None] = field(default_factory=lambda: [0.6, 0.6, None])
    crop_mm: list[float] | None = field(default_factory=lambda: [128.0, 128.0])
    crop_centre: Literal["volume", "gland"] = "volume"
    norm: dict[str, ChannelNorm] = field(default_factory=dict)
    n4: bool = False

    def validate(self, where="preprocess"):
        if len(self.orientation) != 3 or set(self.orientation) - set("LRAPSI"):
            raise ConfigError(where, "orientation must be 3 letters from L/R, A/P, S/I", self.orientation, "e.g. LPS")
        if len(self.target_spacing) != 3:
            raise ConfigError(where, "target_spacing needs 3 values (i, j, k; null keeps)", self.target_spacing, "e.g. [0.5, 0.5, null]")
        if any(s is not None and s <= 0 for s in self.target_spacing):
            raise ConfigError(where, "target_spacing must be positive", self.target_spacing, "e.g. [0.5, 0.5, 3.0]")
        if self.crop_mm is not None and (len(self.crop_mm) != 2 or min(self.crop_mm) <= 0):
            raise ConfigError(where, "crop_mm needs 2 positive values (in-plane mm) or null", self.crop_mm, "e.g. [120, 120], or null for no crop")
        if self.crop_centre not in ("volume", "gland"):
            raise ConfigError(where, "crop_centre must be volume or gland", self.crop_centre, "set crop_centre: volume")
        if not self.channels:
            raise ConfigError(where, "channels must not be empty", self.channels, "e.g. [T2W]")
        if self.n4 and "T2W" not in self.channels:
            raise ConfigError(where, "n4 corrects the T2W channel, which channels lacks", self.channels,
                              "add T2W or set n4: false")

    def norm_for(self, channel: str) -> ChannelNorm:
        return self.norm.get(channel) or DEFAULT_NORMS.get(channel, ChannelNorm("zscore"))

    def key(self) -> str:
        """Stable identity: members with equal keys share one preprocessing pass."""
        return json.dumps(to_dict(self), sort_keys=True)


def normalise(x: np.ndarray, rule: ChannelNorm) -> np.ndarray:
    x = x.astype(np.float32, copy=False)
    if rule.method == "zscore":
        fg = x[x > 0]
        fg = fg if fg.size > 100 else x.ravel()
        mean, std = float(fg.mean()), float(fg.std())
        return ((x - mean) / max(std, 1e-6)).astype(np.float32)
    if rule.method == "percentile":
        lo, hi = np.percentile(x, [rule.lower, rule.upper])
        return ((np.clip(x, lo, hi) - lo) / max(hi - lo, 1e-6)).astype(np.float32)
    return np.clip(x * rule.scale + rule.offset, rule.clip_low, rule.clip_high).astype(np.float32)


def reorient(array: np.ndarray, affine: np.ndarray, codes: str):
    """Permute/flip voxel axes of a (C, I, J, K) array so they point along `codes` (e.g. 'LPS')."""
    start = nib.orientations.io_orientation(affine)
    end = nib.orientations.axcodes2ornt(tuple(codes))
    tr = nib.orientations.ornt_transform(start, end)
    if np.array_equal(tr, [[0, 1], [1, 1], [2, 1]]):
        return array, affine
    shape = array.shape[1:]
    out = np.stack([nib.orientations.apply_orientation(a, tr) for a in array])
    new_affine = affine @ nib.orientations.inv_ornt_aff(tr, shape)
    return out, new_affine


def target_grid(shape, affine, target_spacing, crop_mm, centre=None):
    """Shape and affine of the working grid: resampled per axis, in-plane FOV cropped/padded around
    `centre` (world mm; None: the volume centre). Only the in-plane position of `centre` counts: the
    through-plane extent is kept whole."""
    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    new_sp = np.array([s if t is None else t for s, t in zip(spacing, target_spacing)], dtype=float)
    extent = np.array(shape) * spacing
    if crop_mm is not None:
        extent[:2] = crop_mm
    new_shape = np.maximum(1, np.round(extent / new_sp)).astype(int)
    # Keep the centre fixed: the volume centre (or `centre` in-plane) maps to the new grid's centre voxel.
    centre_vox = (np.array(shape) - 1) / 2.0
    if centre is not None and crop_mm is not None:
        centre_vox[:2] = (np.linalg.inv(affine) @ np.r_[np.asarray(centre, float), 1])[:2]
    centre_world = affine @ np.r_[centre_vox, 1]
    new_affine = affine.copy()
    new_affine[:3, :3] = affine[:3, :3] / spacing[None, :] * new_sp[None, :]
    new_affine[:3, 3] = centre_world[:3] - new_affine[:3, :3] @ ((new_shape - 1) / 2.0)
    return tuple(int(s) for s in new_shape), new_affine


@dataclass(frozen=True)
class Prepared:
    """Network-ready array on the working grid plus what is needed to go back."""

    array: np.ndarray            # (C, I, J, K) float32, normalised
    affine: np.ndarray           # working grid voxel -> RAS mm
    original_shape: tuple        # input grid
    original_affine: np.ndarray


def preprocess(vol: Volume, spec: PreprocessSpec, centre=None) -> Prepared:
    """Volume on its reference grid -> normalised array on the working grid.
    centre: world point (mm) to centre the in-plane crop on when `spec.crop_centre` is "gland"."""
    missing = [c for c in spec.channels if c not in vol.channels]
    if missing:
        from .errors import InputError

        raise InputError(vol.case_id, f"model expects channels {', '.join(spec.channels)}",
                         ", ".join(vol.channels), f"provide {', '.join(missing)}")
    if spec.n4:
        from .bias import bias_corrected

        vol = bias_corrected(vol, "T2W")
    arr = np.stack([vol.channel(c) for c in spec.channels]).astype(np.float32)
    arr, aff = reorient(arr, vol.affine, spec.orientation)
    centre = centre if spec.crop_centre == "gland" else None
    shape, new_aff = target_grid(arr.shape[1:], aff, spec.target_spacing, spec.crop_mm, centre)
    if not (shape == arr.shape[1:] and np.allclose(new_aff, aff, atol=1e-4)):
        arr = resample_array(arr, aff, new_aff, shape, order=1)
    arr = np.stack([normalise(a, spec.norm_for(c)) for a, c in zip(arr, spec.channels)])
    return Prepared(arr, new_aff, vol.shape, vol.affine)


def prepare_label(label: Volume, prepared: Prepared) -> np.ndarray:
    """A label map (1, I, J, K) on the original grid -> (I, J, K) uint8 on the working grid (nearest)."""
    if not label.is_label:
        from .errors import InputError

        raise InputError(label.case_id or "label", "prepare_label takes a label map", f"a volume of kind {label.kind}",
                         "read it with mricore.io.read_label")
    return resample_array(label.array, label.affine, prepared.affine, prepared.array.shape[1:], order=0)[0]


def restore(array: np.ndarray, prepared: Prepared, fill: list[float] | None = None,
            box: boxes.Box | None = None) -> np.ndarray:
    """Inverse of `preprocess` for outputs: (C, working grid) -> (C, original grid), or (C, box shape)
    for a `box` of the original grid (mricore.box; e.g. `footprint`): the very values the whole grid
    gets there.

    The array's type decides, as a Volume's kind does: an integer array is a label map (or an index
    map) and takes the nearest voxel's value, 0 outside the working grid; a floating array
    (probabilities, heat maps) is interpolated linearly, `fill` giving per-channel values outside
    the working grid (e.g. 1 for background).
    """
    if np.issubdtype(array.dtype, np.integer) or array.dtype == bool:
        return resample_array(array, prepared.affine, prepared.original_affine, prepared.original_shape, order=0,
                              box=box)
    out = resample_array(array.astype(np.float32), prepared.affine, prepared.original_affine,
                         prepared.original_shape, order=1, cval=np.nan, box=box)
    fill = fill or [0.0] * array.shape[0]
    for c, v in enumerate(fill):
        np.nan_to_num(out[c], copy=False, nan=v)
    return out


def footprint(prepared: Prepared, lo=None, hi=None) -> boxes.Box:
    """The box of the original grid that working-grid voxels lo..hi-1 (default: all of them) reach
    when restored (mricore.box.footprint): outside it `restore` gives only its outside values, so
    `restore(..., box=footprint(prepared))` leaves nothing out."""
    shape = prepared.array.shape[1:]
    return boxes.footprint(prepared.affine, (0, 0, 0) if lo is None else lo, shape if hi is None else hi,
                           prepared.original_affine, prepared.original_shape)


def gland_centre(mask: np.ndarray, affine: np.ndarray) -> np.ndarray | None:
    """World centre (mm) of the bounding box of a (I, J, K) mask on the grid `affine`; None if empty."""
    idx = np.argwhere(mask)
    if not len(idx):
        return None
    return (affine @ np.r_[(idx.min(0) + idx.max(0)) / 2.0, 1])[:3]
