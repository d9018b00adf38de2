"""`localize evaluate`: lesion predictions against expert lesion masks, through the shared report engine.

--pred: a folder written by `localize predict` (holding lesion.json), or a folder of such folders.
--ref: a dataset (mricore.datasets layout) holding `lesion` and a zone map (`zones`, else `zones_ai`).

Per case and zone (WG, PZ, TZ) rows for mricore.report: patient score and label (patient = has a
reference lesion in that zone; zone score = highest candidate score in the zone, 0 without one),
reference lesions, hits (candidate IoU > 0.1, mricore.metrics.lesion_detection), false positives and
lesion DSC (candidates vs reference inside the zone; empty-mask rule of mricore.metrics). Patient-level
AUC and sensitivity/specificity at the model threshold and at the Youden point (mricore.metrics.
patient_level), FROC and lesion AP go into the settings block of metrics.json and `localize.json`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mricore.datasets import load_dataset, read_ref
from mricore.errors import GeometryError, InputError
from mricore.io import read_label
from mricore.lesion_results import LOCALIZE_SUMMARY_JSON, find_lesion_predictions, read_lesion_case
from mricore.outputs import write_json
from mricore.results import LESION_CANDIDATES_NII
from mricore.zones import SELECTORS

HIT_IOU = 0.1  # a candidate overlapping a reference lesion by more than this IoU is a hit


def evaluate(pred_dir: str, ref: str, out_dir: str, force: bool = False) -> dict:
    """Score `localize predict` folders under `pred_dir` (mricore.lesion_results.find_lesion_predictions)
    against the lesion masks of the dataset `ref`; write the report (mricore.report) and localize.json
    into `out_dir`; return the summary with the report's path. Every input is checked before any work."""
    from mricore.outputs import check_absent, check_output_dir
    from mricore.report import write_report

    out = check_output_dir(out_dir)
    check_absent([out / LOCALIZE_SUMMARY_JSON], force)
    preds = _matched_predictions(pred_dir, ref)
    rows, det, model = [], [], "?"
    for d, meta, case, zkey in preds:
        model = meta["model"].get("name") or "model"  # folds of one config are one model (cross-validation)
        r, case_rows = _score_case(d, meta, case, zkey, model)
        det.append(r)
        rows += case_rows
    summary, curves = _summarise(rows, det, float(preds[0][1].get("threshold", 0.5)), model)
    settings = {"pred": str(pred_dir), "ref": str(ref), **summary}
    report = write_report(out, rows, title="Lesion localisation", settings=settings, curves=curves, force=force)
    write_json(summary, out / LOCALIZE_SUMMARY_JSON, force=True)
    return {**summary, "report": str(report)}


def _matched_predictions(pred_dir: str, ref: str) -> list[tuple]:
    """(folder, lesion.json record, reference case, its zone-map key) of every prediction, each checked
    to have a reference lesion mask and a zone map (`zones`, else `zones_ai`) in `ref`."""
    cases = {c.case_id: c for c in load_dataset(ref)}
    preds = []
    for cid, d in find_lesion_predictions(pred_dir).items():
        if cid not in cases or "lesion" not in cases[cid].labels:
            raise InputError(d, f"case '{cid}' has no reference lesion mask in {ref}", "no lesion map",
                             "point --ref at the dataset the case comes from")
        zkey = next((k for k in ("zones", "zones_ai") if k in cases[cid].labels), None)
        if zkey is None:
            raise InputError(cid, "reference case has no zone map (zones or zones_ai)", "none",
                             "add zones.nii.gz (or zones_ai.nii.gz) to the case")
        preds.append((d, read_lesion_case(d), cases[cid], zkey))
    return preds


def _score_case(d: Path, meta: dict, case, zkey: str, model: str) -> tuple[dict, list[dict]]:
    """(lesion detection of the case (mricore.metrics.lesion_detection), its report rows, one per zone)."""
    from mricore.metrics import dice, lesion_detection

    cid = case.case_id
    lesion = read_ref(case.labels["lesion"], "lesion", cid)
    zones = read_ref(case.labels[zkey], zkey, cid).array[0]
    cand = read_label(d / LESION_CANDIDATES_NII, "candidates", cid)
    if not cand.same_grid(lesion):
        raise GeometryError(d / LESION_CANDIDATES_NII, "prediction must lie on the reference grid",
                            f"shape {cand.shape} vs {lesion.shape}", "predict on the case's own t2.nii.gz")
    c, ref_mask = cand.array[0], lesion.array[0] > 0
    cscore = [x["score"] for x in meta["candidates"]]
    r = lesion_detection(c, cscore, ref_mask, HIT_IOU, zones)
    rows = []
    for zn, f in SELECTORS.items():
        in_zone = np.ones(len(cscore), bool) if zn == "WG" else r["cand_zone"] == zn
        ref_in = np.ones(r["n_ref"], bool) if zn == "WG" else r["ref_zone"] == zn
        zscore = float(max([s for s, k in zip(cscore, in_zone) if k], default=0.0))
        if zn == "WG":
            zscore = float(meta["patient_score"])
        m = f(zones)
        rows.append({"case_id": cid, "model": model, "zone": zn, "patient_score": zscore,
                     "patient_label": int(ref_in.any()), "lesion_dsc": dice((c > 0) & m, ref_mask & m),
                     "ref_lesions": int(ref_in.sum()), "hits": int((r["hit"] & in_zone).sum()),
                     "false_positives": int((~r["hit"] & in_zone).sum())})
    return r, rows


def _summarise(rows: list[dict], det: list[dict], threshold: float, model: str) -> tuple[dict, dict]:
    """(localize.json's summary: patient level per zone, lesion level (FROC, AP), rules; the report's
    curves: FROC, and ROC when the AUC is defined) from the case rows and detections."""
    from mricore.metrics import froc, patient_level, roc_curve

    scores = {zn: [r["patient_score"] for r in rows if r["zone"] == zn] for zn in SELECTORS}
    labels = {zn: [r["patient_label"] for r in rows if r["zone"] == zn] for zn in SELECTORS}
    patient = {zn: patient_level(scores[zn], labels[zn], threshold) for zn in SELECTORS}
    fr = {zn: froc(det, zone=None if zn == "WG" else zn) for zn in SELECTORS}
    summary = {"n_cases": len(det), "patient_level": patient,
               "lesion_level": {zn: {"ap": f["ap"], "sensitivity_at_fp_per_case": f["at"], "n_lesions": f["n_lesions"]}
                                for zn, f in fr.items()},
               "rules": {"hit": f"candidate IoU > {HIT_IOU} with a reference lesion (greedy by score)",
                         "patient_score": "max lesion probability (WG) / max candidate score in the zone",
                         "threshold": threshold}}
    curves = {"froc": {model: (fr["WG"]["fp_per_case"], fr["WG"]["sensitivity"])}}
    if not np.isnan(patient["WG"]["auc"]):
        fpr, tpr, _ = roc_curve(scores["WG"], labels["WG"])
        curves["roc"] = {model: (fpr, tpr, patient["WG"]["auc"])}
    return summary, curves
