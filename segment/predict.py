"""`segment predict`: one model folder applied to volumes, case folders or a datalist.

Outputs per case, on the input's exact grid and affine: `<case>.nii.gz` (uint8 zones) and, with
`--probabilities`, `<case>_prob.nii.gz` (float32; NIfTI has no float16, background/TZ/PZ along the 4th axis).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from mricore.datasets import Case, image_from_inputs, is_dicom_folder, load_case, load_dataset, require_study
from mricore.errors import InputError
from mricore.io import write_json, write_nifti

from .inference import Segmenter


def cases_from_inputs(inputs: list[str], channels: list[str]) -> list[Case]:
    """A single volume (or several channel files or DICOM series folders of one case), a case folder, a
    dataset folder or a datalist."""
    paths = [Path(p) for p in inputs]
    for p in paths:
        if not p.exists():
            raise InputError(p, "input does not exist", None, "check the path")
    if len(paths) == 1 and (paths[0].suffix in (".csv", ".json") or
                            (paths[0].is_dir() and not any(paths[0].glob("*.nii*")) and not is_dicom_folder(paths[0]))):
        return load_dataset(paths[0])
    return [image_from_inputs(paths, channels)]


def predict(model_dir: str, inputs: list[str], out_dir: str, probabilities: bool = False,
            force: bool = False, progress: bool = True) -> list[dict]:
    from tqdm import tqdm

    from mricore.io import check_absent, check_output_dir, staged_dir

    out = check_output_dir(out_dir)
    seg = Segmenter.load(model_dir)
    cases = cases_from_inputs(inputs, seg.channels)
    check_absent([out / "predict.json"] + [out / f"{c.case_id}.nii.gz" for c in cases], force)
    for c in cases:  # check everything before writing anything
        missing = [ch for ch in seg.channels if ch not in c.images]
        if missing:
            raise InputError(c.case_id, f"model expects {', '.join(seg.channels)}", ", ".join(sorted(c.images)),
                             f"provide {', '.join(missing)} (e.g. adc.nii.gz beside t2.nii.gz)")
    rows = []
    for c in tqdm(cases, desc="predict", disable=not progress or len(cases) < 2):
        t = time.perf_counter()
        image, _, info = load_case(c, seg.channels)
        require_study(image)
        pred = seg.predict(image)
        label, prob = pred.label, pred.prob
        with staged_dir(out) as stage:  # a case's files appear together or not at all
            write_nifti(label, image, stage / f"{c.case_id}.nii.gz", dtype=np.uint8, force=True)
            if probabilities:
                write_nifti(prob.transpose(1, 2, 3, 0), image, stage / f"{c.case_id}_prob.nii.gz",
                            dtype=np.float32, force=True)
        vml = image.voxel_volume_ml
        rows.append({"case_id": c.case_id, "seconds": round(time.perf_counter() - t, 3),
                     "volume_ml": {"WG": float((label > 0).sum() * vml), "TZ": float((label == 1).sum() * vml),
                                   "PZ": float((label == 2).sum() * vml)},
                     "alignment": info["alignment"]})
    write_json({"model": str(model_dir), "cases": rows}, out / "predict.json")
    return rows
