"""`segment predict`: one model folder applied to volumes, case folders or a datalist.

Outputs take `ensemble predict`'s case-folder layout (mricore.results): one case into OUT, a batch (a
dataset folder or a datalist) into OUT/<case_id>/, each folder holding zones.nii.gz (uint8 zones on
the input's exact grid and affine), zones.json (the record: the model as the one member used, volumes,
alignment, timings) and, with `--probabilities`, probabilities.nii.gz (float32; NIfTI has no float16,
background/TZ/PZ along the 4th axis). A batch also gets summary.json and summary.csv (one row per
case, with its status). Every case and output is checked before the first is written. In a batch, any
exception of one case fails that case alone (mricore.cohort: a one-line reason in summary.csv, the
traceback in OUT/logs/<case_id>.log), the others are written, and the run ends with a UserError
(exit code 2).
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import numpy as np

from mricore.datasets import Case, image_from_inputs, load_case, load_dataset, require_study
from mricore.errors import InputError
from mricore.results import is_batch_input

from .torch_segmenter import Segmenter


def cases_from_inputs(inputs: list[str], channels: list[str]) -> list[Case]:
    """A single volume (or several channel files or DICOM series folders of one case), a case folder, a
    dataset folder or a datalist."""
    paths = [Path(p) for p in inputs]
    for p in paths:
        if not p.exists():
            raise InputError(p, "input does not exist", "nothing at that path", "check the path")
    if is_batch_input(paths):
        return load_dataset(paths[0])
    return [image_from_inputs(paths, channels)]


def predict(model_dir: str, inputs: list[str], out_dir: str, probabilities: bool = False,
            force: bool = False, progress: bool = True, explain: str | None = None) -> list:
    """Predict every case of `inputs` and write its case folder; returns the zones.json records
    (mricore.results.ZonesRecord), one per case. `explain`: a zone (WG, TZ or PZ) whose Grad-CAM goes
    into each case folder with the map (segment.explain), its faithfulness check into the record.

    Raises InputError (a missing input or channel), OutputExistsError (an output exists and not force),
    both before anything is written; a batch in which any case failed raises UserError once the other
    cases and the summary are written (module docstring).
    """
    from tqdm import tqdm

    from mricore.cohort import failed_row, failures, succeeded
    from mricore.outputs import check_output_dir
    from mricore.results import case_dir, check_case, check_summary

    out = check_output_dir(out_dir)
    seg = Segmenter.load(model_dir)
    explainer = None
    if explain:  # checked before anything is written
        from .explain import check_explain

        explainer = check_explain(seg, explain)
    cases = cases_from_inputs(inputs, seg.channels)
    batch = is_batch_input([Path(p) for p in inputs])
    if batch:
        check_summary(out, force)
    for c in cases:  # check everything before writing anything
        check_case(case_dir(out, c.case_id, batch), force)
        missing = [ch for ch in seg.channels if ch not in c.images]
        if missing:
            raise InputError(c.case_id, f"model expects {', '.join(seg.channels)}", ", ".join(sorted(c.images)),
                             f"provide {', '.join(missing)} (e.g. adc.nii.gz beside t2.nii.gz)")
    if not batch:
        return [predict_case(seg, model_dir, cases[0], out, probabilities, explainer)]
    records, rows = [], []
    for c in tqdm(cases, desc="predict", disable=not progress or len(cases) < 2):
        try:
            records.append(predict_case(seg, model_dir, c, case_dir(out, c.case_id, True), probabilities, explainer))
        except Exception as e:  # noqa: BLE001  (mricore.cohort: the case fails, the cohort goes on)
            rows.append(failed_row(out, c.case_id, e))
            continue
        succeeded(out, c.case_id)
        rows.append(_row(records[-1]))
    _write_summary(out, model_dir, rows)
    error = failures(out, rows)
    if error is not None:
        raise error
    return records


def predict_case(seg: Segmenter, model_dir, case: Case, folder: Path, probabilities: bool, explainer=None):
    """Read, predict and write one case folder (mricore.results.write_case), with its Grad-CAM when
    `explainer` (segment.explain.Explainer) is given; the record written."""
    from mricore.io import write_nifti
    from mricore.results import PROBABILITIES_NII, ZonesRecord, alignment_record, grid_record, write_case, \
        zone_volumes_ml

    t = time.perf_counter()
    image, _, info = load_case(case, seg.channels)
    require_study(image)
    pred = seg.predict(image)
    model = Path(model_dir).resolve()
    record = ZonesRecord(
        case_id=case.case_id, inputs=list(seg.channels), grid=grid_record(image),
        members_used=[{"member": model.name, "path": str(model), "channels": seg.channels}],  # as an ensemble's
        volume_ml=zone_volumes_ml(pred.label, image.voxel_volume_ml),
        timings_s={"read_predict": round(time.perf_counter() - t, 4)},
        alignment=alignment_record(image.channels[0], info["alignment"]))

    def extra(stage: Path, record: ZonesRecord) -> ZonesRecord:
        if probabilities:
            write_nifti(pred.prob.transpose(1, 2, 3, 0), image, stage / PROBABILITIES_NII, dtype=np.float32,
                        force=True)
        if explainer is None:
            return record
        from .explain import explain_volume

        return dataclasses.replace(record, explanation=explain_volume(explainer, image, pred, stage))
    return write_case(folder, image, pred.label, record, extra)


def _row(record) -> dict:
    """The summary row of a case written."""
    return {"case_id": record.case_id, "status": "ok", "seconds": round(sum(record.timings_s.values()), 3),
            "volume_ml": record.volume_ml}


def _write_summary(out: Path, model_dir, rows: list[dict]) -> None:
    """A batch's summary.json (the model, one row per case, failed ones with their error) and summary.csv."""
    from mricore.results import volume_columns, write_summary

    flat = [{"case_id": r["case_id"], "status": r["status"], **volume_columns(r.get("volume_ml", {})),
             "seconds": r.get("seconds"), "error": r.get("error", "")} for r in rows]
    write_summary(out, {"model": str(model_dir), "cases": rows}, flat)
