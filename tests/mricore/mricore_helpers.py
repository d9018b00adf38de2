"""Helpers for the mricore tests: crop real volumes (keeping their world position) and write small
case folders into tmp_path, so tests stay fast while still running on real oblique data.

A uniquely named module rather than conftest.py, because `conftest` module names clash across test
folders when imported by name."""

from pathlib import Path

import nibabel as nib
import numpy as np

from mricore.io import read_label
from mricore.volume import Volume


def crop(vol: Volume, lo, hi) -> Volume:
    """Voxel box [lo, hi) of a Volume; the affine is shifted so every voxel keeps its world position."""
    box = tuple(slice(a, b) for a, b in zip(lo, hi))
    affine = vol.affine.copy()
    affine[:3, 3] = (vol.affine @ np.r_[lo, 1.0])[:3]
    return Volume(vol.array[(slice(None),) + box].copy(), affine, vol.channels, vol.case_id, kind=vol.kind)


def save(array: np.ndarray, affine: np.ndarray, path: Path) -> Path:
    """Write a plain NIfTI (qform/sform code 1) without going through mricore.io."""
    img = nib.Nifti1Image(np.asarray(array), affine)
    img.header.set_qform(affine, code=1)
    img.header.set_sform(affine, code=1)
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(img, str(path))
    return path


def gland_box(data_dir: Path, case: str, label: str, half_mm: float = 32.0):
    """Voxel box (lo, hi) of +-half_mm in-plane around the gland centroid, all slices."""
    lab = read_label(data_dir / case / f"{label}.nii.gz")
    centre = np.argwhere(lab.array[0] > 0).mean(0).round().astype(int)
    half = np.round(half_mm / np.array(lab.spacing[:2])).astype(int)
    lo = (centre[0] - half[0], centre[1] - half[1], 0)
    hi = (centre[0] + half[0], centre[1] + half[1], lab.shape[2])
    return lo, hi
