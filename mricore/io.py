"""NIfTI I/O into and out of `Volume`, with checks that name the file and the fix.

NIfTI: read with nibabel; the qform/sform (matrices and codes) and the header are kept, so a file
written "like" its input round-trips the affine exactly. Writes are atomic (temporary file in the
same folder, then rename) and refuse to overwrite without `force` (mricore.outputs, where the other
writers and the output-location checks live). DICOM reading is in mricore.dicom.
"""

from __future__ import annotations

import logging
from pathlib import Path

import nibabel as nib
import numpy as np

from .errors import GeometryError, InputError
from .outputs import output_target, replace_atomically
from .volume import Volume

# NIfTI header fields that define the grid (qform quaternion + offsets + qfac/voxel sizes, sform rows).
_GEOMETRY_FIELDS = ("qform_code", "sform_code", "quatern_b", "quatern_c", "quatern_d", "qoffset_x",
                    "qoffset_y", "qoffset_z", "pixdim", "srow_x", "srow_y", "srow_z", "xyzt_units")


def _check_exists(path: Path, what: str = "file") -> Path:
    path = Path(path)
    if not path.exists():
        raise InputError(path, f"{what} does not exist", "nothing at that path", "check the path")
    return path


def load_nifti_image(path: str | Path) -> nib.Nifti1Image:
    """Open a NIfTI file (header only until data is read); errors name the file."""
    path = _check_exists(Path(path))
    if path.is_dir():
        raise InputError(path, "expected a NIfTI file (.nii or .nii.gz)", "a folder",
                         "pass a file, or a case folder where a folder is accepted")
    quiet = logging.getLogger("nibabel.global")  # where nibabel logs the header fixes it makes on load
    level = quiet.level
    quiet.setLevel(logging.ERROR)  # "pixdim[1,2,3] should be non-zero; ...": check_affine says it in one line
    try:
        img = nib.load(str(path))
    except Exception as e:  # nibabel raises several types for non-NIfTI input
        looks_nifti = path.name.endswith((".nii", ".nii.gz"))
        raise InputError(path, "not a readable NIfTI file" + (" (truncated or corrupt)" if looks_nifti else ""),
                         type(e).__name__, "re-export the file" if looks_nifti
                         else "convert it to .nii.gz (e.g. with SimpleITK or dcm2niix)") from None
    finally:
        quiet.setLevel(level)
    if not isinstance(img, (nib.Nifti1Image, nib.Nifti2Image)):
        raise InputError(path, "not a NIfTI file", type(img).__name__, "convert it to .nii.gz")
    return img


def read_nifti(path: str | Path, channel: str = "image", case_id: str = "", index: int | None = None) -> Volume:
    """Read one 3D NIfTI image (or one volume of a 4D file) into a one-channel float32 `Volume` of
    kind "image" (interpolated when resampled). Label maps are read with `read_label`.

    Args:
        path: .nii or .nii.gz file holding a 3D image (a trailing axis of length 1 is dropped).
        channel: the channel name to give it.
        index: for 4D files (MSD layout), the volume along the 4th axis to read; None for 3D files.

    Raises:
        InputError: missing/unreadable file, not 3D (or index out of range), NaN/Inf voxels.
    """
    return _read(path, channel, case_id, index, "image")


def read_label(path: str | Path, channel: str = "label", case_id: str = "", index: int | None = None) -> Volume:
    """Read one 3D NIfTI label map into a one-channel uint8 `Volume` of kind "label" (never
    interpolated: every resampling takes the nearest voxel's value).

    Raises:
        InputError: as `read_nifti`, and values that are not whole numbers in 0..255.
    """
    return _read(path, channel, case_id, index, "label")


def _read(path, channel: str, case_id: str, index: int | None, kind: str) -> Volume:
    img = load_nifti_image(path)
    shape = img.shape
    if index is not None:
        if len(shape) != 4 or not 0 <= index < shape[3]:
            raise InputError(path, f"expected a 4D volume with a channel {index}", f"shape {shape}",
                             "check the modality list in dataset.json")
        shape = shape[:3]
    elif len(shape) == 4 and shape[3] == 1:
        shape = shape[:3]
    if len(shape) != 3:
        raise InputError(path, "expected a 3D volume", f"shape {img.shape}",
                         "split 4D files into one file per channel, or use the MSD loader")
    check_affine(img.affine, path)
    if np.issubdtype(img.get_data_dtype(), np.complexfloating):
        raise InputError(path, "voxels must be real numbers", f"dtype {img.get_data_dtype()}",
                         "save the magnitude image (np.abs) instead")
    try:
        data = np.asarray(img.dataobj[..., index] if index is not None else img.dataobj).reshape(shape)
    except Exception as e:
        raise InputError(path, "voxel data could not be read", type(e).__name__,
                         "the file is truncated or corrupt; re-export it") from None
    if kind == "label":
        if not np.issubdtype(data.dtype, np.integer):
            if not np.all(np.isfinite(data)) or not np.all(np.equal(np.mod(data, 1), 0)):
                raise InputError(path, "label maps must hold whole numbers", "fractional or NaN values",
                                 "export labels with nearest-neighbour interpolation")
        if data.min() < 0 or data.max() > 255:
            raise InputError(path, "label values must lie in 0..255", f"{data.min()}..{data.max()}",
                             "save the label map as uint8 codes")
        data = data.astype(np.uint8)
    else:
        data = np.asarray(data, dtype=np.float32)
        if not np.all(np.isfinite(data)):
            n = int(np.size(data) - np.count_nonzero(np.isfinite(data)))
            raise InputError(path, "voxels must be finite", f"{n} NaN/Inf voxels",
                             "replace NaN/Inf (e.g. with 0) before use")
    return Volume(data[None], img.affine, (channel,), case_id, img.header.copy(), kind)


def check_affine(affine: np.ndarray, where) -> None:
    """A grid must be finite and invertible (voxel sizes > 0); else a one-line error naming `where`."""
    a = np.asarray(affine, dtype=np.float64)
    if a.shape != (4, 4) or not np.all(np.isfinite(a)):
        raise InputError(where, "the affine (qform/sform) must be finite", "NaN/Inf entries",
                         "fix the header (e.g. re-export with SimpleITK or dcm2niix)")
    sizes = np.linalg.norm(a[:3, :3], axis=0)
    if sizes.min() <= 1e-6 or abs(np.linalg.det(a[:3, :3])) <= 1e-9 * float(np.prod(sizes)):
        raise InputError(where, "the affine (qform/sform) must be invertible", f"voxel sizes {np.round(sizes, 4).tolist()}",
                         "fix the header (e.g. re-export with SimpleITK or dcm2niix)")


def write_nifti(array: np.ndarray, like: Volume | None, path: str | Path, *, affine: np.ndarray | None = None,
                dtype=None, force: bool = False) -> Path:
    """Write a 3D array atomically as NIfTI on the grid of `like` (or the given affine).

    When `like` carries a source header, its qform/sform matrices and codes are kept exactly, so the
    output lands on the input's exact grid.
    """
    path = output_target(Path(path), force)
    array = np.asarray(array)
    if dtype is not None:
        array = array.astype(dtype)
    if like is not None and array.shape[:3] != like.shape:
        raise GeometryError(path, "array must match the reference grid", f"{array.shape} vs {like.shape}",
                            "resample the array onto the reference grid first")
    header = None
    if like is not None and like.header is not None:
        header = like.header.copy()
    aff = like.affine if like is not None else affine
    img = nib.Nifti1Image(array, aff, header=header)
    if header is not None:
        # Keep the source's qform and sform exactly: copy the stored fields. set_qform() would
        # recompute the quaternion (sign flipped, last bits changed), so the qform matrix would no
        # longer equal the input's bit for bit.
        for key in _GEOMETRY_FIELDS:
            img.header[key] = like.header[key]
    else:
        img.header.set_qform(aff, code=1)
        img.header.set_sform(aff, code=1)
    img.header.set_data_dtype(array.dtype)
    img.header["scl_slope"], img.header["scl_inter"] = 1.0, 0.0
    replace_atomically(path, lambda tmp: nib.save(img, tmp))
    return path
