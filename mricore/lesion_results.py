"""A `localize predict` folder: mricore.results' counterpart for lesion outputs (its file names live there).

    OUT/                          one study (`localize predict ... -o OUT`), on the input's grid and affine
      lesion_probability.nii.gz   float32 lesion probability, 0 outside the gland
      lesion_candidates.nii.gz    uint16 labelled candidates, 1 = highest score
      lesion.json                 the record: case_id, model, candidates, patient_score, threshold, ...
      lesion_gradcam.nii.gz, lesion_gradcam.png   with --explain
    PRED/<case>/...               a folder of such folders, as `localize evaluate --pred` reads it

One writer (`write_lesion_case`), one reader (`read_lesion_case`) and one finder
(`find_lesion_predictions`), as `write_case` / `read_case` / `find_predictions` are for zone maps. It is
a module of its own only because mricore.results is at the 300-line budget.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

import numpy as np

from .errors import InputError
from .results import LESION_CANDIDATES_NII, LESION_FILES, LESION_GRADCAM_FILES, LESION_JSON, LESION_PROBABILITY_NII

# `localize evaluate`'s summary, beside the report files of mricore.report.
LOCALIZE_SUMMARY_JSON = "localize.json"
# The lesion.json fields a reader relies on (`localize evaluate`).
REQUIRED_FIELDS = ("case_id", "model", "candidates", "patient_score")


def check_lesion_case(folder: str | Path, explain: bool, force: bool) -> None:
    """Before any work: no file `localize predict` would write (the Grad-CAM files too with `explain`)
    exists in `folder`, unless force."""
    from .outputs import check_absent

    names = LESION_FILES + (LESION_GRADCAM_FILES if explain else ())
    check_absent([Path(folder) / n for n in names], force)


def write_lesion_case(folder: str | Path, image, prob: np.ndarray, candidates: np.ndarray, record: dict,
                      explain: Callable[[Path], dict] | None = None, started: float | None = None) -> dict:
    """The one writer of a `localize predict` folder, all files together or none (mricore.outputs.staged_dir):
    what `explain(stage)` writes into the staging folder (its return value goes into the record as
    "explain"), lesion_probability.nii.gz (`prob` as float32 on `image`'s grid), lesion_candidates.nii.gz
    (`candidates` as uint16), then lesion.json: `record`, with "seconds" since `started` (a
    time.perf_counter() value) when given. Files of an earlier run that this one does not write are
    removed. The caller checks overwriting first (`check_lesion_case`). Returns the record written."""
    from .io import write_nifti
    from .outputs import staged_dir, write_json

    record = dict(record)
    with staged_dir(folder, stale=LESION_FILES + LESION_GRADCAM_FILES) as stage:
        if explain is not None:
            record["explain"] = explain(stage)
        write_nifti(prob.astype(np.float32), image, stage / LESION_PROBABILITY_NII, force=True)
        write_nifti(candidates, image, stage / LESION_CANDIDATES_NII, dtype=np.uint16, force=True)
        if started is not None:  # the whole request, writing included
            record["seconds"] = round(time.perf_counter() - started, 3)
        write_json(record, stage / LESION_JSON, force=True)
    return record


def read_lesion_case(folder: str | Path) -> dict:
    """The one reader of a `localize predict` folder's lesion.json. Raises InputError (one line) when
    it is missing, not JSON, not an object, or lacks one of REQUIRED_FIELDS."""
    from .outputs import read_json

    path = Path(folder) / LESION_JSON
    again = "predict the case again with `localize predict`"
    if not path.is_file():
        raise InputError(folder, f"a lesion folder must hold {LESION_JSON}", "none",
                         "pass the -o folder of `localize predict`, or a folder of them")
    data = read_json(path, again)
    missing = [k for k in REQUIRED_FIELDS if not isinstance(data, dict) or k not in data]
    if missing:
        raise InputError(path, f"{LESION_JSON} must hold {', '.join(REQUIRED_FIELDS)}",
                         f"missing {', '.join(missing)}", again)
    return data


def find_lesion_predictions(pred_dir: str | Path) -> dict[str, Path]:
    """case_id (as its lesion.json says) -> `localize predict` folder: `pred_dir` itself when it holds
    lesion.json, else each of its sub-folders that does, in name order (hidden ones, such as a staging
    folder, left out). Raises InputError for a missing folder, no lesion.json found, an unreadable one
    (`read_lesion_case`), or one case in two folders (it would count twice)."""
    pred_dir = Path(pred_dir)
    if not pred_dir.is_dir():
        raise InputError(pred_dir, "prediction folder does not exist", "nothing at that path", "pass the -o folder of `localize predict`")
    folders = [pred_dir] if (pred_dir / LESION_JSON).exists() else sorted(
        d for d in pred_dir.iterdir() if not d.name.startswith(".") and (d / LESION_JSON).exists())
    if not folders:
        raise InputError(pred_dir, f"no {LESION_JSON} found here or one level below", "none",
                         "pass the -o folder of `localize predict`, or a folder of them")
    found: dict[str, Path] = {}
    for d in folders:
        cid = read_lesion_case(d)["case_id"]
        if cid in found:
            raise InputError(d, "one prediction folder per case", f"case '{cid}' also in {found[cid]}",
                             "remove or move one of the two folders")
        found[cid] = d
    return found
