"""One loader for three dataset layouts, all giving a list of `Case`.

1. Case folders (the layout of ../shared/data): `root/[dataset/]<case>/t2.nii.gz, adc.nii.gz, ...,
   zones.nii.gz`. File stems per channel come from `DEFAULT_FILES` or the config (`files:`), so a
   new sequence is a config change.
2. Medical Segmentation Decathlon: `root/dataset.json` with `modality`, `labels`, `training`;
   images either 4D (one channel per volume index) or `_0000`, `_0001` channel files.
3. A datalist (CSV or JSON list of rows) with a `patient_id` column, a column per channel and
   optional label columns; relative paths are relative to the datalist file.

`load_case` reads a case's channels, brings them onto the reference grid (the first channel, T2W
in practice) in physical space and stacks them; labels must already lie on that grid.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field, replace
from pathlib import Path


from .align import alignment_score, register_rigid, resample_to
from .dicom import series_case_id
from .errors import GeometryError, InputError
from .io import read_label, read_nifti
from .outputs import read_json
from .volume import Volume, stack

# Channel name -> file stem in case folders. Extend with `files:` in a config for new sequences.
DEFAULT_FILES = {"T2W": "t2", "ADC": "adc", "DWI": "dwi", "zones": "zones", "zones_ai": "zones_ai",
                 "wg": "wg", "wg_ai": "wg_ai", "lesion": "lesion"}
LABEL_KEYS = ("zones", "zones_ai", "wg", "wg_ai", "wg_teacher", "zones_teacher", "lesion")
MSD_NAMES = {"T2": "T2W", "T2W": "T2W", "ADC": "ADC", "DWI": "DWI", "HBV": "DWI"}


@dataclass(frozen=True)
class ImageRef:
    """A file, the index along its 4th axis for 4D MSD images (None for 3D files), and what it holds:
    "image" or "label" (a label map; `Case` marks every ref in its `labels` so)."""

    path: Path
    index: int | None = None
    kind: str = "image"


@dataclass(frozen=True)
class Case:
    case_id: str
    patient_id: str
    images: dict = field(default_factory=dict)   # channel name -> ImageRef
    labels: dict = field(default_factory=dict)   # label key ('zones', 'lesion', ...) -> ImageRef
    dataset: str = ""

    def __post_init__(self):  # a reference under `labels` is a label map, however it was made
        object.__setattr__(self, "labels", {k: replace(r, kind="label") if isinstance(r, ImageRef) else r
                                            for k, r in self.labels.items()})


def _nii(folder: Path, stem: str) -> Path | None:
    for ext in (".nii.gz", ".nii"):
        p = folder / f"{stem}{ext}"
        if p.exists():
            return p
    return None


def scan_case_folder(folder: Path, files: dict | None = None, dataset: str = "") -> Case | None:
    files = {**DEFAULT_FILES, **(files or {})}
    images, labels = {}, {}
    for name, stem in files.items():
        p = _nii(folder, stem)
        if p is not None:
            (labels if name in LABEL_KEYS else images)[name] = ImageRef(p)
    if not images:
        return None
    return Case(folder.name, folder.name, images, labels, dataset)


def load_case_folders(root: Path, files: dict | None = None) -> list[Case]:
    """Case folders directly under `root`, or one level deeper (root/dataset/case)."""
    root = Path(root)
    direct = scan_case_folder(root, files)
    if direct is not None:
        return [direct]
    cases = []
    for sub in sorted(p for p in root.iterdir() if p.is_dir()):
        c = scan_case_folder(sub, files, dataset=root.name)
        if c is not None:
            cases.append(c)
            continue
        for case_dir in sorted(p for p in sub.iterdir() if p.is_dir()):
            c = scan_case_folder(case_dir, files, dataset=sub.name)
            if c is not None:
                cases.append(c)
    return cases


def load_msd(root: Path) -> list[Case]:
    """MSD layout: dataset.json + imagesTr (4D or _0000 files) + labelsTr."""
    root = Path(root)
    meta = read_json(root / "dataset.json", "fix or regenerate dataset.json")
    modality = meta.get("modality") or meta.get("channel_names") or {"0": "T2W"}
    names = [MSD_NAMES.get(str(modality[k]).upper(), str(modality[k])) for k in sorted(modality, key=int)]
    cases = []
    for row in meta.get("training", []):
        img = row["image"] if isinstance(row, dict) else row
        img_path = (root / img).resolve()
        cid = img_path.name.split(".nii")[0]
        images = {}
        if img_path.exists():
            import nibabel as nib

            ndim = len(nib.load(str(img_path)).shape)
            for i, n in enumerate(names):
                images[n] = ImageRef(img_path, i if ndim == 4 else None)
        else:  # nnU-Net style channel files
            for i, n in enumerate(names):
                p = img_path.parent / f"{cid}_{i:04d}.nii.gz"
                if not p.exists():
                    raise InputError(p, "MSD channel file missing", "nothing at that path", "check imagesTr")
                images[n] = ImageRef(p)
        labels = {}
        if isinstance(row, dict) and row.get("label"):
            labels["zones"] = ImageRef((root / row["label"]).resolve())
        cases.append(Case(cid, cid, images, labels, meta.get("name", root.name)))
    return cases


def load_datalist(path: Path) -> list[Case]:
    """CSV or JSON datalist: one row per case, a `patient_id` column, channel and label columns."""
    path = Path(path)
    try:
        if path.suffix == ".json":
            rows = json.loads(path.read_text())
            rows = rows.get("cases", rows) if isinstance(rows, dict) else rows
        else:
            with path.open(newline="") as f:
                rows = list(csv.DictReader(f))
    except (json.JSONDecodeError, UnicodeDecodeError, csv.Error) as e:
        raise InputError(path, "datalist is not readable JSON/CSV text", f"{type(e).__name__}: {str(e)[:60]}",
                         "write one row per case with patient_id and channel columns") from None
    if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
        raise InputError(path, "datalist must be a list of rows (objects with patient_id and channel keys)",
                         type(rows).__name__ if not isinstance(rows, list) else "a list of non-objects",
                         'e.g. [{"patient_id": "p1", "T2W": "p1/t2.nii.gz"}]')
    cases = []
    for i, row in enumerate(rows):
        if not row.get("patient_id"):
            raise InputError(f"{path} row {i + 1}", "every row needs a patient_id", row.get("patient_id"),
                             "add a patient_id column so splits can be made by patient")
        images, labels = {}, {}
        for k, v in row.items():
            if k in ("patient_id", "case_id", "dataset") or v in (None, ""):
                continue
            ref = ImageRef((path.parent / v).resolve())
            (labels if k in LABEL_KEYS else images)[k] = ref
        cid = row.get("case_id") or row["patient_id"]
        cases.append(Case(cid, row["patient_id"], images, labels, row.get("dataset", path.stem)))
    return cases


def load_dataset(path: str | Path, files: dict | None = None) -> list[Case]:
    """Detect the layout of `path` and return its cases."""
    path = Path(path)
    if not path.exists():
        raise InputError(path, "dataset path does not exist", "nothing at that path", "check the path")
    if path.is_file() and path.suffix in (".csv", ".json"):
        return load_datalist(path)
    if path.is_dir() and (path / "dataset.json").exists():
        return load_msd(path)
    if path.is_dir():
        cases = load_case_folders(path, files)
        if not cases:
            raise InputError(path, "no cases found (no t2.nii.gz/adc.nii.gz... case folders, no dataset.json)",
                             "0 cases", "point to a case folder, a dataset folder, an MSD folder or a datalist")
        return cases
    raise InputError(path, "unknown dataset layout", path.suffix, "use a folder, dataset.json folder, .csv or .json")


def require_study(image: Volume) -> Volume:
    """A study to segment has at least 2 slices: one slice gives no gland volume and no 3D component."""
    if min(image.shape) < 2:
        raise InputError(image.case_id or "input", "a study needs at least 2 slices along every axis",
                         f"shape {image.shape}", "pass the whole series (not one slice)")
    return image


NOT_DICOM = (".json", ".csv", ".txt", ".md", ".yaml", ".yml")


def is_dicom_folder(p: Path) -> bool:
    """One DICOM series: a folder of files with no NIfTI and no sub-folders (a folder of case folders,
    even with a manifest.json beside them, is a dataset)."""
    p = Path(p)
    if not p.is_dir() or any(p.glob("*.nii*")):
        return False
    entries = [f for f in p.iterdir() if not f.name.startswith(".")]
    return not any(f.is_dir() for f in entries) and any(
        f.is_file() and f.suffix.lower() not in NOT_DICOM for f in entries)


def read_ref(ref: ImageRef, name: str, case_id: str) -> Volume:
    """One channel or label map of a case, as its kind says: a 3D NIfTI file, one volume of a 4D MSD
    file (with read_nifti's / read_label's checks), or a DICOM series folder (images only)."""
    if ref.path.is_dir():
        if ref.kind == "label":
            raise InputError(ref.path, "label maps are read from NIfTI files", "a DICOM folder",
                             "convert the label map to .nii.gz")
        from .dicom import read_dicom_series

        return read_dicom_series(ref.path, name, case_id)
    reader = read_label if ref.kind == "label" else read_nifti
    return reader(ref.path, name, case_id, index=ref.index)


def load_case(case: Case, channels: list[str], label_key: str | None = None, register: bool = False,
              optional: bool = False):
    """Read `channels` of a case onto the grid of the first one, and the label map if asked.

    Returns (image Volume with the requested channels, label Volume or None, info dict with per
    channel alignment: resampled or not, registration metric and NMI score).
    With optional=True, missing channels are left out instead of raising (ensembles skip members).
    """
    info: dict = {"case_id": case.case_id, "alignment": {}}
    present = [c for c in channels if c in case.images]
    missing = [c for c in channels if c not in case.images]
    if missing and not optional:
        raise InputError(case.case_id, f"channel(s) {missing} not found", sorted(case.images),
                         "add the files, or map the names with `files:` in the config")
    if not present:
        raise InputError(case.case_id, "none of the channels found", channels,
                         "add the files, or map the names with `files:` in the config")
    ref = read_ref(case.images[present[0]], present[0], case.case_id)
    vols = [ref]
    for c in present[1:]:
        v = read_ref(case.images[c], c, case.case_id)
        entry = {"same_grid": v.same_grid(ref)}
        if not entry["same_grid"]:
            if register:
                v, reg = register_rigid(ref, v)
                entry["registration"] = reg
            else:
                v = resample_to(v, ref)
            entry["nmi"] = round(alignment_score(ref, v), 4)
        info["alignment"][c] = entry
        vols.append(v)
    image = stack(vols, case.case_id)
    label = None
    if label_key is not None:
        if label_key not in case.labels:
            raise InputError(case.case_id, f"label '{label_key}' not found", sorted(case.labels),
                             "add the label file, or choose another --label")
        label = read_ref(case.labels[label_key], label_key, case.case_id)
        if not label.same_grid(ref):
            raise GeometryError(case.labels[label_key].path, "label grid must equal its image grid",
                                f"shape {label.shape} vs image {ref.shape}",
                                "resample the label onto the image with nearest neighbour")
    return image, label, info


def image_from_inputs(inputs: list[Path], channels: list[str], case_id: str | None = None) -> Case:
    """A Case from what a user typed: one case folder, or one file or DICOM series folder per channel
    (NIfTI files named t2/adc/dwi are named by their stem; the others, and DICOM folders, take the
    names of `channels` in the order given). Every command reads its inputs through this. Case id: a
    DICOM series' content id (mricore.dicom.series_case_id); NIfTI: the case folder's name, or the
    file's stem (its folder's for t2/adc/dwi), which is the user's naming (a dataset's ProstateX-0000)."""
    inputs = [Path(p) for p in inputs]
    for p in inputs:
        if not p.exists():
            raise InputError(p, "input does not exist", "nothing at that path", "check the path")
    if len(inputs) == 1 and inputs[0].is_dir() and not is_dicom_folder(inputs[0]):
        c = scan_case_folder(inputs[0])
        if c is not None:
            return c
        raise InputError(inputs[0], "folder holds no t2/adc/dwi NIfTI files and is no DICOM series", "no such files",
                         "pass NIfTI files, a case folder or a DICOM series folder")
    stems = {v: k for k, v in DEFAULT_FILES.items()}
    images = {}
    for i, p in enumerate(inputs):
        if p.is_dir() and not is_dicom_folder(p):
            raise InputError(p, "a folder given with other inputs must be one DICOM series", "a folder of folders",
                             "pass the series folder itself")
        stem = p.name.split(".nii")[0].lower() if p.is_file() else ""
        if stem not in stems and i >= len(channels):
            raise InputError(p, f"an input beyond the {len(channels)} channels that can be named by position "
                             f"({', '.join(channels)})", f"{len(inputs)} inputs",
                             "pass one file or series per channel of one study, or name them t2/adc/dwi.nii.gz")
        name = stems.get(stem) or channels[i]
        if name in images:
            raise InputError(p, f"channel {name} is given twice", f"{images[name].path} and {p}",
                             "pass one file per channel of one study (one patient per run; a folder of "
                             "case folders for several)")
        images[name] = ImageRef(p)
    first = inputs[0]  # a DICOM series is named by its images, never by its folder (a patient's name?)
    cid = case_id or (series_case_id(first) if first.is_dir() else
                      first.parent.name if first.name.split(".nii")[0] in stems else first.name.split(".nii")[0])
    return Case(cid, cid, images, {}, "")
