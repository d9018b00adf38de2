"""`segment evaluate`: score a folder of predicted zone maps against reference zone maps.

Predictions (label maps, 0 background, 1 TZ, 2 PZ) in any layout mricore.results.find_predictions
reads: the -o folder of `segment predict` or `ensemble predict` (one case folder, or a batch of
`<case_id>/zones.nii.gz`), or a flat folder of `<case_id>.nii.gz` (nnU-Net, `segment train --cv`).
References: a dataset folder or datalist (mricore.datasets.load_dataset) under the given label key,
or a flat folder of `<case_id>.nii.gz` reference maps (as `nnUNetv2_evaluate_folder` takes them). Each
prediction must lie on its reference's grid (shape and affine within mricore.volume.GRID_ATOL_MM):
evaluation never resamples silently. Per case and zone (WG, TZ, PZ) metrics go to
mricore.report.write_report, the report every evaluation writes (here with one model): the headline
table, the cases worst first with a thumbnail of each (linked to the case's own report.html when the
prediction folder has one), every metric in the collapsed detail. Cases without a prediction are
listed in the settings.
"""

from __future__ import annotations

from pathlib import Path

from mricore.datasets import load_dataset, read_ref
from mricore.errors import GeometryError, InputError
from mricore.extent import METRICS as EXTENT_METRICS
from mricore.extent import scored
from mricore.io import read_label

# Columns in the report, in this order (the raw confusion counts stay in metrics.csv too).
METRICS = ("dsc", "sensitivity", "specificity", "precision", "hd95", "assd", "rvd", "tp", "fp", "fn", "tn",
           *EXTENT_METRICS)


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
    from mricore.outputs import check_output_dir
    from mricore.report import write_report
    from mricore.results import find_predictions

    pred_dir, out = Path(pred_dir), check_output_dir(out_dir)
    preds = find_predictions(pred_dir)
    cases = _flat_references(Path(ref), label) if _is_flat(Path(ref)) else load_dataset(ref)
    with_label = [c for c in cases if label in c.labels]
    matched = [c for c in with_label if c.case_id in preds]
    if not matched:
        raise InputError(pred_dir, f"no prediction matches a reference case with label '{label}'",
                         f"predictions {sorted(preds)[:5]}, references {[c.case_id for c in with_label][:5]}",
                         "name predictions <case_id>.nii.gz, or choose --label (zones, zones_ai, wg)")
    _check_report(out, force)
    pairs = [_read_pair(c, preds[c.case_id], label) for c in matched]  # every grid checked before computing
    rows, cases = _score(pairs, preds, label, pred_dir.name or "prediction", progress)
    settings = {"predictions": str(pred_dir.resolve()), "references": str(Path(ref).resolve()), "label": label,
                "zones": "WG = label > 0, TZ = 1, PZ = 2", "distances": "mm, MONAI edge definition",
                "cases_evaluated": [c.case_id for c, _, _ in pairs],
                "references_without_prediction": sorted(c.case_id for c in with_label if c.case_id not in preds),
                "predictions_without_reference": sorted(set(preds) - {c.case_id for c in with_label})}
    return write_report(out, rows, title=f"Zonal segmentation: {pred_dir.name} vs {label}", settings=settings,
                        cases=cases, force=force)


def _check_report(out: Path, force: bool) -> None:
    """No report file in `out` unless force: checked before minutes of work rather than after."""
    from mricore.errors import OutputExistsError
    from mricore.report import OUTPUTS

    existing = [out / f for f in OUTPUTS if (out / f).exists()]
    if existing and not force:
        raise OutputExistsError(existing[0], "report exists", "an existing file", "pass --force, or choose another folder")


def _read_pair(c, pred_path: Path, label: str):
    """(case, reference Volume, prediction Volume), both checked: the same grid, zone label values."""
    refv = read_ref(c.labels[label], label, c.case_id)
    predv = read_label(pred_path, "pred", c.case_id)
    if not predv.same_grid(refv):
        raise GeometryError(pred_path, f"prediction must lie on the reference grid of {c.case_id}",
                            f"shape {predv.shape} vs {refv.shape} (or a different affine)",
                            "predict on the reference's image (segment predict writes on the input grid)")
    for what, v, path in (("prediction", predv, pred_path), ("reference", refv, c.labels[label].path)):
        top = int(v.array.max())
        allowed = 1 if label in ("wg", "wg_ai") and what == "reference" else 2
        if top > allowed:
            raise InputError(path, f"{what} labels must be 0 background, 1 TZ, 2 PZ"
                             + (" (whole gland: 0/1)" if allowed == 1 else ""), f"value {top}",
                             "pass zone maps (not lesion or instance maps), or choose --label")
    return c, refv, predv


def _score(pairs: list, preds: dict, label: str, model: str, progress: bool) -> tuple[list, list]:
    """Per case and zone metric rows, and the report's case entries (mricore.thumbnails)."""
    from tqdm import tqdm

    rows, cases = [], []
    for c, refv, predv in tqdm(pairs, desc="evaluate", disable=not progress or len(pairs) < 2):
        zm = scored(predv.array[0], refv.array[0], refv.affine)
        if label in ("wg", "wg_ai"):  # whole-gland references have no zones: score WG only
            zm = {"WG": zm["WG"]}
        for zone, m in zm.items():
            rows.append({"case_id": c.case_id, "model": model, "zone": zone, **{k: m[k] for k in METRICS}})
        image = c.images.get("T2W") or next(iter(c.images.values()), None)
        cases.append({"case_id": c.case_id, "image": image, "ref": c.labels[label], "pred": preds[c.case_id]})
    return rows, cases
