"""`segment augment`: offline augmentation for small datasets.

Writes `copies` augmented copies of every labelled training case as case folders that
mricore.datasets reads back:

    OUT/<dataset>_aug/<case>_aug<k>/t2.nii.gz, adc.nii.gz, ..., zones.nii.gz
    OUT/datalist.csv     one row per copy with the ORIGINAL patient_id, so a cross-validation on the
                         copies (data.root: OUT/datalist.csv) still splits by patient
    OUT/augment.json     the resolved augment config, seed and the source of every copy

Each copy uses one random draw (segment.transforms) for all channels and the label: images with cubic
splines, the label with order 0 (nearest), so no new label value appears. The deformation is
in-plane and identical on every slice (slices are 3 mm apart). Copies keep the case's reference grid
and affine (the first channel's), so they are valid inputs wherever the original was. Intensity
changes are applied in units of each channel's foreground standard deviation and scaled back, so the
written values stay in scanner units and training-time normalisation still applies.

Nothing is written when the output folder exists without `force`; every file is written atomically.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

from mricore.config import to_dict
from mricore.datasets import DEFAULT_FILES, load_case, load_dataset
from mricore.errors import InputError, OutputExistsError
from mricore.io import write_nifti
from mricore.outputs import write_csv, write_json

from .acquisition import PatchGrid
from .transforms import apply_intensity, apply_spatial, draw
from .config import SegmentConfig
from .data import label_key_for


def augment_volume(rng: np.random.Generator, cfg, image: np.ndarray, label: np.ndarray, grid: PatchGrid | None = None):
    """One paired draw on a whole (C, I, J, K) raw image and its (I, J, K) label, same grid out; `grid`
    (PatchGrid.of_affine of the study) places the coil field."""
    d = draw(rng, cfg)
    I, J = label.shape[:2]
    img, lab = apply_spatial(image, label, d, (slice(0, I), slice(0, J)))
    scale = np.array([max(float(c[c > 0].std()) if (c > 0).any() else 1.0, 1e-6) for c in image],
                     dtype=np.float32).reshape((-1,) + (1,) * (image.ndim - 1))
    img = apply_intensity(img / scale, d, lab, grid) * scale
    return img.astype(np.float32), lab


def write_augmented(cfg: SegmentConfig, out_dir: str | Path, copies: int | None = None, force: bool = False,
                    progress: bool = True) -> list[dict]:
    """Write the copies; return the datalist rows. Raises InputError when no case qualifies and
    OutputExistsError when `out_dir` is not empty and `force` is False."""
    from tqdm import tqdm

    n = cfg.augment.offline_copies if copies is None else copies
    if n < 1:
        raise InputError("--copies", "must be >= 1", n, "e.g. --copies 4")
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()) and not force:
        raise OutputExistsError(out, "output folder is not empty", "files in it", "pass --force or choose another folder")
    cases = load_dataset(cfg.data.root, cfg.data.files)
    if cfg.data.datasets:
        cases = [c for c in cases if c.dataset in cfg.data.datasets]
    chans = list(cfg.preprocess.channels)
    todo = [(c, label_key_for(c, cfg.data.label, cfg.data.silver_label)[0]) for c in cases]
    todo = [(c, k) for c, k in todo if k is not None and all(ch in c.images for ch in chans)]
    if not todo:
        raise InputError(cfg.data.root, "no case has all channels and a label", f"channels {chans}",
                         "check data.root, data.datasets, data.label and preprocess.channels")
    if force and out.exists():
        shutil.rmtree(out)
    stems = {**DEFAULT_FILES, **cfg.data.files}
    rng = np.random.default_rng(cfg.train.seed)
    rows = []
    for case, key in tqdm(todo, desc="augment", disable=not progress):
        image, label, _ = load_case(case, chans, key, register=cfg.data.register)
        ds = f"{case.dataset or 'cases'}_aug"
        for k in range(n):
            img, lab = augment_volume(rng, cfg.augment, image.array, label.array[0], PatchGrid.of_affine(image.affine))
            folder = out / ds / f"{case.case_id}_aug{k}"
            row = {"case_id": folder.name, "patient_id": case.patient_id, "dataset": ds}
            for c, arr in zip(chans, img):
                row[c] = str(write_nifti(arr, image, folder / f"{stems[c]}.nii.gz", dtype=np.float32).relative_to(out))
            row[key] = str(write_nifti(lab, image, folder / f"{stems[key]}.nii.gz", dtype=np.uint8).relative_to(out))
            rows.append(row)
    write_csv(rows, out / "datalist.csv")
    write_json({"copies": n, "seed": cfg.train.seed, "augment": to_dict(cfg.augment), "channels": chans,
                "sources": {r["case_id"]: r["patient_id"] for r in rows}}, out / "augment.json")
    print(f"wrote {len(rows)} augmented cases to {out}")
    return rows
