"""NIfTI and DICOM I/O into `Volume`, with checks that name the file and the fix.

NIfTI: read with nibabel; the qform/sform (matrices and codes) and the header are kept, so a file
written "like" its input round-trips the affine exactly. Writes are atomic (temporary file in the
same folder, then rename) and refuse to overwrite without `force`.

Writing: `output_target` (no overwrite without force), `replace_atomically` (temporary file, then
rename), `staged_dir` (a case's files all together or none) and `check_output_dir` (an output location
checked before any work). DICOM reading is in mricore.dicom.
"""

from __future__ import annotations

import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from .errors import GeometryError, InputError, OutputExistsError, check_signals
from .volume import Volume

_UMASK = os.umask(0)
os.umask(_UMASK)

# NIfTI header fields that define the grid (qform quaternion + offsets + qfac/voxel sizes, sform rows).
_GEOMETRY_FIELDS = ("qform_code", "sform_code", "quatern_b", "quatern_c", "quatern_d", "qoffset_x",
                    "qoffset_y", "qoffset_z", "pixdim", "srow_x", "srow_y", "srow_z", "xyzt_units")


def _check_exists(path: Path, what: str = "file") -> Path:
    path = Path(path)
    if not path.exists():
        raise InputError(path, f"{what} does not exist", None, "check the path")
    return path


def load_nifti_image(path: str | Path) -> nib.Nifti1Image:
    """Open a NIfTI file (header only until data is read); errors name the file."""
    path = _check_exists(Path(path))
    if path.is_dir():
        raise InputError(path, "expected a NIfTI file (.nii or .nii.gz)", "a folder",
                         "pass a file, or a case folder where a folder is accepted")
    try:
        img = nib.load(str(path))
    except Exception as e:  # nibabel raises several types for non-NIfTI input
        looks_nifti = path.name.endswith((".nii", ".nii.gz"))
        raise InputError(path, "not a readable NIfTI file" + (" (truncated or corrupt)" if looks_nifti else ""),
                         type(e).__name__, "re-export the file" if looks_nifti
                         else "convert it to .nii.gz (e.g. with SimpleITK or dcm2niix)") from None
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
            raise InputError(path, "label values must lie in 0..255", f"{data.min()}..{data.max()}", "")
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


def check_absent(paths, force: bool) -> None:
    """The one rule for outputs: nothing is overwritten without force (checked before any work)."""
    for p in paths:
        if Path(p).exists() and not force:
            raise OutputExistsError(p, "output exists", None, "pass --force to overwrite, or choose another -o")


def output_target(path: Path, force: bool) -> Path:
    """`path`, after `check_absent`; its folder is created."""
    path = Path(path)
    check_absent([path], force)
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def replace_atomically(path: Path, write) -> None:
    """Call `write(tmp)` on a hidden temporary file beside `path`, then rename it onto `path`; the
    temporary file is removed on any error or signal (see mricore.errors.run_cli)."""
    # Named before it exists (as _make_hidden_dir), so a signal just after creation still removes it.
    tmp = f"{_hidden_name(path.parent, f'.{path.name}.')}.tmp{''.join(path.suffixes)}"
    try:
        os.close(os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
        write(tmp)
        check_signals()
        os.chmod(tmp, 0o666 & ~_UMASK)  # created 0600; outputs get the usual permissions
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


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
        raise GeometryError(path, "array must match the reference grid", f"{array.shape} vs {like.shape}", "")
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


def finite_json(obj: Any) -> Any:
    """`obj` with every NaN/Inf float replaced by None, so the JSON written is valid JSON (RFC 8259)."""
    if isinstance(obj, float) or isinstance(obj, np.floating):
        return float(obj) if np.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite_json(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return finite_json(obj.tolist())
    return obj


def write_json(obj: Any, path: str | Path, force: bool = True) -> Path:
    """Write JSON atomically (sidecars are rewritten with their outputs, hence force=True). NaN and
    Inf are written as null: the file is always valid JSON."""
    path = output_target(Path(path), force)
    text = json.dumps(finite_json(obj), indent=2, default=_json_default, allow_nan=False)
    replace_atomically(path, lambda tmp: Path(tmp).write_text(text))
    return path


def repo_relative(obj: Any, root: str | Path) -> Any:
    """`obj` with every absolute path inside `root` (a repository) or beside it written relative to
    `root` ("ensemble/models/...", "../shared/data"), so committed results name no machine's paths."""
    root = Path(root).resolve()
    if isinstance(obj, dict):
        return {k: repo_relative(v, root) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [repo_relative(v, root) for v in obj]
    if isinstance(obj, str):
        return obj.replace(f"{root}/", "").replace(f"{root.parent}/", "../")
    return obj


def write_text(text: str, path: str | Path, force: bool = True) -> Path:
    path = output_target(Path(path), force)
    replace_atomically(path, lambda tmp: Path(tmp).write_text(text))
    return path


def write_csv(rows: list[dict], path: str | Path, force: bool = True) -> Path:
    """Write dict rows atomically as CSV; columns are the union of the rows' keys, in first-seen order."""
    import csv

    path = output_target(Path(path), force)
    keys = list(dict.fromkeys(k for r in rows for k in r))

    def write(tmp):
        with open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=keys)
            w.writeheader()
            w.writerows(rows)
    replace_atomically(path, write)
    return path


def check_output_dir(path: str | Path) -> Path:
    """Check, before any work, that `path` can become an output folder: no name over 255 bytes, no
    symlink loop, not a file, nothing but folders above it, and the nearest existing folder writable
    (probed with a temporary file, which also catches read-only and pseudo file systems)."""
    path = Path(path)
    fix = "choose another -o"
    for part in path.parts:
        if len(part.encode()) > 255:
            raise InputError(path, "a path component is longer than 255 bytes", f"{len(part.encode())} bytes", fix)
    try:
        path.resolve(strict=False)
    except (RuntimeError, OSError) as e:
        raise InputError(path, "output path cannot be resolved (symlink loop?)", type(e).__name__, fix) from None
    if path.exists() and not path.is_dir():
        raise InputError(path, "output must be a folder", "an existing file", fix)
    anc = _nearest_existing(path)
    if anc.is_symlink() and not anc.exists():
        raise InputError(path, "output path goes through a broken or looping symlink", str(anc), fix)
    if not anc.is_dir():
        raise InputError(path, "output folder would lie below a file", str(anc), fix)
    try:
        fd, probe = tempfile.mkstemp(dir=anc, prefix=".write-probe-")
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise InputError(path, "output location is not writable", f"{anc}: {e.strerror}", fix) from None
    return path


def _nearest_existing(path: Path) -> Path:
    """`path` or its closest ancestor that exists (a dangling symlink counts, so callers can name it)."""
    while not path.exists() and not path.is_symlink():
        path = path.parent
    return path


@contextmanager
def staged_dir(out: str | Path, stale: tuple[str, ...] = ()):
    """All-or-nothing outputs of one case: yield a hidden staging folder; when the block ends normally
    its files move into `out` (a new `out` is one rename), on any error or signal (see
    mricore.errors.run_cli) the staging folder is removed with everything in it. Files named in
    `stale` that the new set lacks are removed from an existing `out`, so no output of an earlier run
    is left mixed with the new ones. The caller checks overwriting (force) before any work.

    Raises WriteError (one line, nothing left) when the disk is full, a size limit is hit, or similar.
    """
    import shutil

    from .errors import WriteError

    out = Path(out)
    stage = _hidden_name(_nearest_existing(out.parent), f".{out.name}.staging-")
    try:
        stage = _make_hidden_dir(stage)
        os.chmod(stage, 0o777 & ~_UMASK)  # made 0700; the output folder gets the usual mode
        yield stage
        check_signals()  # a SIGTERM/SIGINT swallowed while writing: keep nothing
        out.parent.mkdir(parents=True, exist_ok=True)
        if not out.exists():
            os.rename(stage, out)
        else:
            names = {p.name for p in stage.iterdir()}
            for name in stale:
                if name not in names and (out / name).is_file():
                    (out / name).unlink()
            for p in stage.iterdir():
                os.replace(p, out / p.name)
            stage.rmdir()
    except OSError as e:
        shutil.rmtree(stage, ignore_errors=True)
        raise WriteError(out, "outputs could not be written (nothing was kept)", e.strerror or type(e).__name__,
                         "free disk space, raise the file size limit or check permissions") from None
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise


def _hidden_name(parent: Path, prefix: str) -> Path:
    import secrets

    return Path(parent) / f"{prefix}{secrets.token_hex(6)}"


def _make_hidden_dir(path: Path) -> Path:
    """Create `path` (0700), or a fresh name beside it if taken. The caller holds the name *before* it
    exists, so a signal arriving just after the folder is made still finds it in the clean-up (with
    tempfile.mkdtemp the name would only be known once the call returned)."""
    while True:
        try:
            os.mkdir(path, 0o700)
            return path
        except FileExistsError:  # 2^-48 per try: a fresh name with the same prefix
            path = _hidden_name(path.parent, path.name[:-12])


@contextmanager
def replaced_dir(out: str | Path):
    """Build a whole folder (an ensemble, an export) in a hidden sibling and swap it for `out` at the
    end: the old `out` is removed only then. On any error or signal the sibling is removed and `out`
    is untouched. The caller checks overwriting (force) first."""
    import shutil

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = _hidden_name(out.parent, f".{out.name}.")
    try:
        tmp = _make_hidden_dir(tmp)
        yield tmp
        check_signals()
        tmp.chmod(0o777 & ~_UMASK)
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _json_default(o):
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")
