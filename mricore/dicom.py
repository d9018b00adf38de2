"""DICOM series and SimpleITK images <-> `Volume`.

One series folder read with SimpleITK; slices sorted along the slice normal (GDCM), a gap in slice
positions is an error, a truncated file is named. SimpleITK works in LPS; affines are RAS+.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .errors import InputError
from .volume import Volume

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


def sitk_module():
    """SimpleITK with its own WARNING lines off (they would print before, or instead of, our error)."""
    import SimpleITK as sitk

    sitk.ProcessObject.SetGlobalWarningDisplay(False)
    return sitk


def sitk_to_affine(img) -> np.ndarray:
    """RAS+ voxel-to-world affine of a SimpleITK image (which is LPS) in (x, y, z) = (i, j, k) order."""
    direction = np.array(img.GetDirection(), dtype=np.float64).reshape(3, 3)
    spacing = np.array(img.GetSpacing(), dtype=np.float64)
    aff = np.eye(4)
    aff[:3, :3] = direction * spacing[None, :]
    aff[:3, 3] = img.GetOrigin()
    return LPS_TO_RAS @ aff


def affine_to_sitk(img, affine: np.ndarray) -> None:
    """Set origin/spacing/direction of a SimpleITK image from a RAS+ affine."""
    lps = LPS_TO_RAS @ np.asarray(affine, dtype=np.float64)
    spacing = np.linalg.norm(lps[:3, :3], axis=0)
    img.SetSpacing([float(s) for s in spacing])
    img.SetDirection([float(d) for d in (lps[:3, :3] / spacing[None, :]).ravel()])
    img.SetOrigin([float(o) for o in lps[:3, 3]])


def volume_to_sitk(vol: Volume, channel: int = 0):
    """One channel of a Volume as a SimpleITK image (float32 unless integer)."""
    sitk = sitk_module()

    img = sitk.GetImageFromArray(np.ascontiguousarray(vol.array[channel].transpose(2, 1, 0)))
    affine_to_sitk(img, vol.affine)
    return img


def _unreadable_files(sitk, folder: Path, series_files) -> None:
    """Raise naming the first file of `folder` outside the series that cannot be read as DICOM."""
    listed = {str(Path(f)) for f in series_files}
    for f in sorted(folder.iterdir()):
        if f.is_file() and not f.name.startswith(".") and str(f) not in listed:
            r = sitk.ImageFileReader()
            r.SetFileName(str(f))
            try:
                r.ReadImageInformation()
            except RuntimeError:
                raise InputError(f, "DICOM file could not be read (truncated or corrupt)", f"{f.stat().st_size} bytes",
                                 "re-export the series") from None


def read_dicom_series(folder: str | Path, channel: str = "image", case_id: str = "",
                      rel_tol: float = 0.05) -> Volume:
    """Read one DICOM series folder into a `Volume`.

    Slices are sorted along the slice normal; a missing slice (a gap larger than the median step by
    more than `rel_tol`) or several series in one folder is an error naming the folder.
    """
    sitk = sitk_module()

    folder = Path(folder)
    return read_dicom_files(_series_files(sitk.ImageSeriesReader(), folder), folder, channel,
                            case_id or folder.name, rel_tol)


def read_dicom_files(files: list[str], folder: str | Path, channel: str = "image", case_id: str = "",
                     rel_tol: float = 0.05) -> Volume:
    """Read the slices `files` (one series, at least 2, sorted along the slice normal as GDCM sorts
    them) into a `Volume`, as `read_dicom_series` does; `folder` names them in errors."""
    sitk = sitk_module()

    folder = Path(folder)
    files = [str(f) for f in files]
    reader = sitk.ImageSeriesReader()
    step = _slice_step(sitk, folder, files, rel_tol)
    reader.SetFileNames(files)
    try:
        img = reader.Execute()
    except RuntimeError:
        raise InputError(folder, "DICOM pixel data could not be read (a file is truncated or corrupt)",
                         f"{len(files)} files", "re-export the series") from None
    arr = sitk.GetArrayFromImage(img).transpose(2, 1, 0).astype(np.float32)
    aff = sitk_to_affine(img)
    # SimpleITK derives z spacing from the first two slices; use the measured median step instead.
    aff[:3, 2] *= step / np.linalg.norm(aff[:3, 2])
    return Volume(arr[None], aff, (channel,), case_id or folder.name)


def series_case_id(folder: str | Path) -> str:
    """The case id of a DICOM series given by its folder: "dicom-" + 12 hex digits of a SHA-256 over
    its files' pixel data (each file's digest, sorted: file names and order do not matter). It names the
    images, not the patient: never PatientName/PatientID, nor a folder name (hospital exports name
    folders after the patient); the same on every run and machine, and before and after
    de-identification (which changes headers, not pixels). A file pydicom cannot read is left out here
    (the series reader names it). Example: series_case_id("study/4-t2tra") -> "dicom-3f9a0c51d2e7"."""
    import hashlib

    import pydicom

    digests = []
    for f in sorted(p for p in Path(folder).iterdir() if p.is_file() and not p.name.startswith(".")):
        try:
            pixels = pydicom.dcmread(f, specific_tags=["PixelData"]).get("PixelData") or b""
        except Exception:  # not DICOM, truncated...: the series reader gives the one-line error
            continue
        digests.append(hashlib.sha256(bytes(pixels)).digest())
    return "dicom-" + hashlib.sha256(b"".join(sorted(digests))).hexdigest()[:12]


def _series_files(reader, folder: Path) -> list[str]:
    """The files of the one series in `folder` (GDCM's order), at least 2; else an error naming it."""
    if not folder.exists():
        raise InputError(folder, "DICOM folder does not exist", "nothing at that path", "check the path")
    if not folder.is_dir():
        raise InputError(folder, "expected a folder of DICOM files", "a file", "pass the series folder")
    series = reader.GetGDCMSeriesIDs(str(folder))
    if not series:
        raise InputError(folder, "no DICOM series found", "0 series", "point to a folder of .dcm files")
    if len(series) > 1:
        raise InputError(folder, "one DICOM series per folder", f"{len(series)} series",
                         "split the series into separate folders")
    files = reader.GetGDCMSeriesFileNames(str(folder), series[0])
    if len(files) < 2:
        raise InputError(folder, "a series needs at least 2 slices", f"{len(files)} file(s)",
                         "pass the folder of the whole series")
    return files


def _slice_positions(sitk, files) -> list[float]:
    """Each file's position along the slice normal (from its header), naming a file that cannot be read."""
    positions = []
    normal = None
    for f in files:
        try:
            r = sitk.ImageFileReader()
            r.SetFileName(f)
            r.ReadImageInformation()
            ipp = np.array([float(x) for x in r.GetMetaData("0020|0032").split("\\")])
            if normal is None:
                iop = np.array([float(x) for x in r.GetMetaData("0020|0037").split("\\")])
                normal = np.cross(iop[:3], iop[3:])
        except RuntimeError as e:
            raise InputError(f, "DICOM file header could not be read (truncated or corrupt)",
                             str(e).strip().splitlines()[-1][:80] if str(e).strip() else type(e).__name__,
                             "re-export the series") from None
        positions.append(float(ipp @ normal))
    return positions


def _slice_step(sitk, folder: Path, files, rel_tol: float) -> float:
    """The median slice step (mm) of the series; duplicate positions or a gap (a missing or truncated
    slice) is an error."""
    steps = np.diff(np.sort(np.array(_slice_positions(sitk, files))))
    if np.any(steps < 1e-3):
        raise InputError(folder, "slices must have distinct positions", "duplicate slice positions",
                         "the folder mixes series (e.g. several b-values); split it first")
    step = float(np.median(steps))
    bad = np.where(np.abs(steps - step) > rel_tol * step)[0]
    if len(bad):
        _unreadable_files(sitk, folder, files)  # a truncated file drops out of the series: say so
        i = int(bad[0])
        raise InputError(folder, "slice positions must be evenly spaced (a slice is missing)",
                         f"gap of {steps[i]:.2f} mm after slice {i} where the step is {step:.2f} mm",
                         "re-export the complete series")
    return step
