"""`segment evaluate`: score a folder of predicted zone maps against reference zone maps.

Predictions (label maps, 0 background, 1 TZ, 2 PZ), in any of the layouts the platform or nnU-Net
writes:
- a flat folder of `<case_id>.nii.gz` (`segment predict`, nnU-Net);
- a folder of case folders `<case_id>/zones.nii.gz` (`ensemble predict DATASET -o OUT`);
- one case's folder holding `zones.nii.gz` and `zones.json` (`ensemble predict volume -o OUT`; the
  case id is the one in zones.json).
References: a dataset folder or datalist (mricore.datasets.load_dataset) under the given label key,
or a flat folder of `<case_id>.nii.gz` reference maps (as `nnUNetv2_evaluate_folder` takes them). Each prediction must lie on its reference's grid (shape and affine within
mricore.volume.GRID_ATOL_MM): evaluation never resamples silently. Per case and zone (WG, TZ, PZ)
metrics go to mricore.report.write_report; cases without a prediction are listed in the settings.
"""

from __future__ import annotations

from pathlib import Path

from mricore.datasets import load_dataset, read_ref
from mricore.errors import GeometryError, InputError
from mricore.io import read_label
from mricore.metrics import zone_metrics

# Columns in the report, in this order (the raw confusion counts stay in metrics.csv too).
METRICS = ("dsc", "sensitivity", "specificity", "precision", "hd95", "assd", "rvd", "tp", "fp", "fn", "tn")


def _predictions(pred_dir: Path) -> dict[str, Path]:
    if not pred_dir.exists():
        raise InputError(pred_dir, "prediction folder does not exist", None,
                         "pass the -o folder of `segment predict` or `ensemble predict`")
    if not pred_dir.is_dir():
        raise InputError(pred_dir, "predictions must be a folder of <case>.nii.gz", "a file",
                         "pass the folder, not one file")
    if (pred_dir / "zones.nii.gz").is_file() and (pred_dir / "zones.json").is_file():  # one ensemble case
        import json

        return {str(json.loads((pred_dir / "zones.json").read_text()).get("case_id") or pred_dir.name):
                pred_dir / "zones.nii.gz"}
    preds = {}
    for p in sorted(pred_dir.glob("*.nii*")):
        cid = p.name.split(".nii")[0]
        if not cid.endswith("_prob"):  # probability maps are written beside the labels
            preds[cid] = p
    if not preds:  # an ensemble batch: <case>/zones.nii.gz
        preds = {d.name: d / "zones.nii.gz" for d in sorted(pred_dir.iterdir())
                 if d.is_dir() and not d.name.startswith(".") and (d / "zones.nii.gz").is_file()}
    if not preds:
        raise InputError(pred_dir, "no <case>.nii.gz predictions found", "0 files",
                         "run `segment predict ... -o` into this folder first")
    return preds


def _is_flat(folder: Path) -> bool:
    """A folder of <case>.nii.gz reference maps: NIfTI files, no sub-folders, no t2/adc/dwi image."""
    from mricore.datasets import DEFAULT_FILES

    if not folder.is_dir() or any(p.is_dir() for p in folder.iterdir()):
        return False
    stems = {p.name.split(".nii")[0] for p in folder.glob("*.nii*")}
    return bool(stems) and not stems & {DEFAULT_FILES[c] for c in ("T2W", "ADC", "DWI")}


def _flat_references(folder: Path, label: str) -> list:
    from mricore.datasets import Case, ImageRef

    return [Case(p.name.split(".nii")[0], p.name.split(".nii")[0], {}, {label: ImageRef(p)}, folder.name)
            for p in sorted(folder.glob("*.nii*"))]


def evaluate(pred_dir, ref, out_dir, label: str = "zones", force: bool = False, progress: bool = True) -> Path:
    """Score predictions against references and write the report folder; returns report.html's path.

    Raises:
        InputError: missing/empty prediction folder, no case matching a reference with `label`.
        GeometryError: a prediction not on its reference grid.
        OutputExistsError: report files exist and force is False (checked before any computing).
    """
    from tqdm import tqdm

    from mricore.report import OUTPUTS, write_report
    from mricore.errors import OutputExistsError

    from mricore.io import check_output_dir

    pred_dir, out = Path(pred_dir), check_output_dir(out_dir)
    preds = _predictions(pred_dir)
    cases = _flat_references(Path(ref), label) if _is_flat(Path(ref)) else load_dataset(ref)
    with_label = [c for c in cases if label in c.labels]
    matched = [c for c in with_label if c.case_id in preds]
    if not matched:
        raise InputError(pred_dir, f"no prediction matches a reference case with label '{label}'",
                         f"predictions {sorted(preds)[:5]}, references {[c.case_id for c in with_label][:5]}",
                         "name predictions <case_id>.nii.gz, or choose --label (zones, zones_ai, wg)")
    existing = [out / f for f in OUTPUTS if (out / f).exists()]
    if existing and not force:  # fail before minutes of work, not after
        raise OutputExistsError(existing[0], "report exists", None, "pass --force, or choose another folder")
    pairs = []
    for c in matched:  # check every grid before computing anything
        refv = read_ref(c.labels[label], label, c.case_id)
        predv = read_label(preds[c.case_id], "pred", c.case_id)
        if not predv.same_grid(refv):
            raise GeometryError(preds[c.case_id], f"prediction must lie on the reference grid of {c.case_id}",
                                f"shape {predv.shape} vs {refv.shape} (or a different affine)",
                                "predict on the reference's image (segment predict writes on the input grid)")
        for what, v, path in (("prediction", predv, preds[c.case_id]), ("reference", refv, c.labels[label].path)):
            top = int(v.array.max())
            allowed = 1 if label in ("wg", "wg_ai") and what == "reference" else 2
            if top > allowed:
                raise InputError(path, f"{what} labels must be 0 background, 1 TZ, 2 PZ"
                                 + (" (whole gland: 0/1)" if allowed == 1 else ""), f"value {top}",
                                 "pass zone maps (not lesion or instance maps), or choose --label")
        pairs.append((c, refv, predv))
    rows, overlays = [], []
    for c, refv, predv in tqdm(pairs, desc="evaluate", disable=not progress or len(pairs) < 2):
        zm = zone_metrics(predv.array[0], refv.array[0], refv.spacing)
        if label in ("wg", "wg_ai"):  # whole-gland references have no zones: score WG only
            zm = {"WG": zm["WG"]}
        for zone, m in zm.items():
            rows.append({"case_id": c.case_id, "model": pred_dir.name or "prediction", "zone": zone,
                         **{k: m[k] for k in METRICS}})
        image = next(iter(c.images.values()), None)
        if image is not None and image.index is None:
            overlays.append({"case_id": c.case_id, "image": image.path, "ref": c.labels[label].path,
                             "pred": preds[c.case_id]})
    settings = {"predictions": str(pred_dir.resolve()), "references": str(Path(ref).resolve()), "label": label,
                "zones": "WG = label > 0, TZ = 1, PZ = 2", "distances": "mm, MONAI edge definition",
                "cases_evaluated": [c.case_id for c, _, _ in pairs],
                "references_without_prediction": sorted(c.case_id for c in with_label if c.case_id not in preds),
                "predictions_without_reference": sorted(set(preds) - {c.case_id for c in with_label})}
    return write_report(out, rows, title=f"Zonal segmentation: {pred_dir.name} vs {label}", settings=settings,
                        overlays=overlays, force=force)
