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

import json
from pathlib import Path

import numpy as np

from mricore.datasets import load_dataset, read_ref
from mricore.errors import GeometryError, InputError
from mricore.io import read_label, write_json
from mricore.zones import SELECTORS



def _pred_dirs(pred: Path) -> list[Path]:
    if not pred.is_dir():
        raise InputError(pred, "prediction folder does not exist", None, "pass the -o folder of `localize predict`")
    if (pred / "lesion.json").exists():
        return [pred]
    dirs = sorted(p for p in pred.iterdir() if (p / "lesion.json").exists())
    if not dirs:
        raise InputError(pred, "no lesion.json found here or one level below", None,
                         "pass the -o folder of `localize predict`, or a folder of them")
    return dirs


def evaluate(pred_dir: str, ref: str, out_dir: str, force: bool = False) -> dict:
    from mricore.metrics import dice, froc, lesion_detection, patient_level
    from mricore.report import write_report

    from mricore.io import check_absent, check_output_dir

    out = check_output_dir(out_dir)
    check_absent([out / "localize.json"], force)
    cases = {c.case_id: c for c in load_dataset(ref)}
    preds = []
    for d in _pred_dirs(Path(pred_dir)):  # check every input before computing or writing anything
        meta = json.loads((d / "lesion.json").read_text())
        cid = meta["case_id"]
        if cid not in cases or "lesion" not in cases[cid].labels:
            raise InputError(d, f"case '{cid}' has no reference lesion mask in {ref}", None,
                             "point --ref at the dataset the case comes from")
        zkey = next((k for k in ("zones", "zones_ai") if k in cases[cid].labels), None)
        if zkey is None:
            raise InputError(cid, "reference case has no zone map (zones or zones_ai)", None, "add one")
        preds.append((d, meta, zkey))
    rows, det, scores, labels = [], [], {z: [] for z in SELECTORS}, {z: [] for z in SELECTORS}
    model = "?"
    for d, meta, zkey in preds:
        cid = meta["case_id"]
        model = meta["model"].get("name") or "model"  # folds of one config are one model (cross-validation)
        lesion = read_ref(cases[cid].labels["lesion"], "lesion", cid)
        zones = read_ref(cases[cid].labels[zkey], zkey, cid).array[0]
        cand = read_label(d / "lesion_candidates.nii.gz", "candidates", cid)
        if not cand.same_grid(lesion):
            raise GeometryError(d / "lesion_candidates.nii.gz", "prediction must lie on the reference grid",
                                f"shape {cand.shape} vs {lesion.shape}", "predict on the case's own t2.nii.gz")
        c, ref_mask = cand.array[0], lesion.array[0] > 0
        cscore = [x["score"] for x in meta["candidates"]]
        r = lesion_detection(c, cscore, ref_mask, 0.1, zones)
        det.append(r)
        for zn, f in SELECTORS.items():
            in_zone = np.ones(len(cscore), bool) if zn == "WG" else r["cand_zone"] == zn
            ref_in = np.ones(r["n_ref"], bool) if zn == "WG" else r["ref_zone"] == zn
            zscore = float(max([s for s, k in zip(cscore, in_zone) if k], default=0.0))
            if zn == "WG":
                zscore = float(meta["patient_score"])
            label = int(ref_in.any())
            scores[zn].append(zscore)
            labels[zn].append(label)
            m = f(zones)
            rows.append({"case_id": cid, "model": model, "zone": zn, "patient_score": zscore, "patient_label": label,
                         "lesion_dsc": dice((c > 0) & m, ref_mask & m),
                         "ref_lesions": int(ref_in.sum()), "hits": int((r["hit"] & in_zone).sum()),
                         "false_positives": int((~r["hit"] & in_zone).sum())})
    threshold = float(preds[0][1].get("threshold", 0.5))
    patient = {zn: patient_level(scores[zn], labels[zn], threshold) for zn in SELECTORS}
    fr = {zn: froc(det, zone=None if zn == "WG" else zn) for zn in SELECTORS}
    summary = {"n_cases": len(preds), "patient_level": patient,
               "lesion_level": {zn: {"ap": f["ap"], "sensitivity_at_fp_per_case": f["at"], "n_lesions": f["n_lesions"]}
                                for zn, f in fr.items()},
               "rules": {"hit": "candidate IoU > 0.1 with a reference lesion (greedy by score)",
                         "patient_score": "max lesion probability (WG) / max candidate score in the zone",
                         "threshold": threshold}}
    from mricore.metrics import roc_curve

    curves = {"froc": {model: (fr["WG"]["fp_per_case"], fr["WG"]["sensitivity"])}}
    if not np.isnan(patient["WG"]["auc"]):
        fpr, tpr, _ = roc_curve(scores["WG"], labels["WG"])
        curves["roc"] = {model: (fpr, tpr, patient["WG"]["auc"])}
    settings = {"pred": str(pred_dir), "ref": str(ref), **summary}
    report = write_report(out, rows, title="Lesion localisation", settings=settings, curves=curves, force=force)
    write_json(summary, out / "localize.json", force=True)
    return {**summary, "report": str(report)}
