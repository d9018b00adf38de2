"""A prediction is a folder that describes itself, like a model folder (mricore.modelfolder).

    OUT/                 one case (`ensemble predict CASE -o OUT`, `segment predict CASE -o OUT`)
      zones.nii.gz       uint8 0 background, 1 TZ, 2 PZ on the input's grid (WG = label > 0)
      zones.json         `ZonesRecord`: what made the map, volumes, review, timings, the files written
      uncertainty.nii.gz, probabilities.nii.gz, ensemble.yaml, report.html, overlay.png, seg.dcm
                         as the command wrote them (zones.json lists them under `outputs`)
    OUT/<case_id>/...    a batch (a dataset folder or a datalist), one such folder per case, beside
    OUT/summary.json, OUT/summary.csv   one row per case

This module is the one place for those file names, the one writer (`write_case`) and reader
(`read_case`) of a case folder, the zones.json record and its schema version, the zone-volume rule
(`zone_volumes_ml`) and the one finder of prediction maps (`find_predictions`), which also reads the
flat `<case>.nii.gz` folders nnU-Net and `segment train --cv` write.
"""

from __future__ import annotations

import dataclasses
import difflib
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from .errors import InputError

# The files of a case folder.
ZONES_NII = "zones.nii.gz"
UNCERTAINTY_NII = "uncertainty.nii.gz"
PROBABILITIES_NII = "probabilities.nii.gz"
ZONES_JSON = "zones.json"
CONFIG_YAML = "ensemble.yaml"
REPORT_HTML = "report.html"
OVERLAY_PNG = "overlay.png"
SEG_DCM = "seg.dcm"
GRADCAM_ZONES = ("WG", "TZ", "PZ")  # what `segment predict --explain ZONE` may explain (segment.explain)


def gradcam_files(zone: str) -> tuple[str, str]:
    """`segment predict --explain ZONE`'s files in a case folder: NIfTI heat map and PNG overlay (the
    target layer and the faithfulness check go into zones.json, `ZonesRecord.explanation`)."""
    stem = f"gradcam_{zone.upper()}"
    return f"{stem}.nii.gz", f"{stem}.png"


# What each file holds, as zones.json's `outputs` lists it (in this order; zones.json itself is not listed).
DESCRIPTIONS = {ZONES_NII: "uint8 0 background, 1 TZ, 2 PZ; WG = TZ ∪ PZ",
                UNCERTAINTY_NII: "float32 4D: [...,0] normalised entropy, [...,1] member disagreement",
                PROBABILITIES_NII: "float32 4D: background, TZ, PZ",
                CONFIG_YAML: "resolved config",
                SEG_DCM: "DICOM-SEG: TZ and PZ segments referencing the source series",
                REPORT_HTML: "prediction report",
                OVERLAY_PNG: "zones over the reference channel, three planes",
                **{name: f"Grad-CAM of {zone}: {what}" for zone in GRADCAM_ZONES for name, what in
                   zip(gradcam_files(zone), ("float32 heat map in [0, 1]", "heat map over the first channel"))}}
CASE_FILES = (*DESCRIPTIONS, ZONES_JSON)
MEDIA_TYPES = {ZONES_NII: "application/gzip", UNCERTAINTY_NII: "application/gzip",
               PROBABILITIES_NII: "application/gzip", ZONES_JSON: "application/json",
               CONFIG_YAML: "application/yaml", REPORT_HTML: "text/html", OVERLAY_PNG: "image/png",
               SEG_DCM: "application/dicom"}
# A batch's summary, beside its case folders.
SUMMARY_JSON = "summary.json"
SUMMARY_CSV = "summary.csv"
# `localize predict` (one study folder) and its --explain files.
LESION_PROBABILITY_NII = "lesion_probability.nii.gz"
LESION_CANDIDATES_NII = "lesion_candidates.nii.gz"
LESION_JSON = "lesion.json"
LESION_FILES = (LESION_PROBABILITY_NII, LESION_CANDIDATES_NII, LESION_JSON)
LESION_GRADCAM_FILES = ("lesion_gradcam.nii.gz", "lesion_gradcam.png")
# Flat folders (nnU-Net, `segment train --cv`, older `segment predict`): <case>.nii.gz, with probability
# maps `<case>_prob.nii.gz` and Grad-CAM maps `<case>_gradcam_<ZONE>.*` beside them, which are not cases.
PROB_SUFFIX = "_prob"
GRADCAM_INFIX = "_gradcam_"


# zones.json schema. 1: also the files written before the field existed (software 0.1.0), read as is;
# its `inputs` are the paths as given. 2: `inputs` are channel names (a path can name the patient).
SCHEMA_VERSION = 2


@dataclass(frozen=True, kw_only=True)
class ZonesRecord:
    """What a case folder says about itself (its zones.json), typed. Fields left at None are not
    written; the JSON keys follow the field order.

    Example:
        >>> r = ZonesRecord(case_id="001", inputs=["T2W"], grid={}, volume_ml={"WG": 1.0, "TZ": 0.6, "PZ": 0.4})
        >>> ZonesRecord.from_dict(r.to_dict()) == r
        True
    """

    schema_version: int = SCHEMA_VERSION
    case_id: str                          # never a patient's name (mricore.datasets: case-id rules)
    inputs: list                          # the channels given (T2W, ADC, DWI); version 1: the paths
    grid: dict                            # shape, spacing_mm, affine of the output grid (`grid_record`)
    members_used: list = field(default_factory=list)   # {member, path, channels}: the models that ran
    members_skipped: list | None = None   # {member, reason}: ensemble members lacking a channel
    method: str | None = None             # ensemble combination method
    weights: dict | None = None           # member -> class -> weight
    preprocessing_passes: int | None = None
    locator: dict | None = None           # the ensemble's stage one: used, model, centre_mm, gland_ml, ...
    volume_ml: dict                       # WG, TZ, PZ in mL (`zone_volumes_ml`)
    uncertainty: dict | None = None       # score (entropy), disagreement, definition
    gland_components: dict | None = None  # components, removed_fraction (mricore.zones.largest_component)
    review: dict | None = None            # verdict, reasons, score, checks (mricore.review)
    timings_s: dict | None = None         # seconds per stage; `write_case` adds "write"
    staple_performance: dict | None = None
    alignment: dict | None = None         # reference channel, per-channel facts, score (`alignment_record`)
    explanation: dict | None = None       # `segment predict --explain`: zone, layer, target, faithfulness
    outputs: dict = field(default_factory=dict)  # file name -> what it holds (`write_case` fills it)
    software_version: str = ""

    def to_dict(self) -> dict:
        """The JSON object of zones.json."""
        return {f.name: v for f in dataclasses.fields(self) if (v := getattr(self, f.name)) is not None}

    @classmethod
    def from_dict(cls, data, where: str | Path = ZONES_JSON) -> "ZonesRecord":
        """Check and build; raises InputError naming the file, the field, the value and the fix."""
        fix = "predict the case again with this software"
        if not isinstance(data, dict):
            raise InputError(where, "must hold a JSON object", type(data).__name__, fix)
        data = {"schema_version": 1, **data}  # written before the field existed: version 1
        version = data["schema_version"]
        if not isinstance(version, int) or not 1 <= version <= SCHEMA_VERSION:
            raise InputError(where, f"zones.json schema version must be 1..{SCHEMA_VERSION}", repr(version),
                             "update the software, or predict the case again with this version")
        names = [f.name for f in dataclasses.fields(cls)]
        for k in data:
            if k not in names:
                close = difflib.get_close_matches(k, names, n=1)
                raise InputError(where, f"unknown field '{k}'", None, f"did you mean '{close[0]}'?" if close else fix)
        for k, typ in (("case_id", str), ("inputs", list), ("grid", dict), ("volume_ml", dict)):
            if not isinstance(data.get(k), typ):
                raise InputError(where, f"field '{k}' must be a JSON {typ.__name__}",
                                 type(data[k]).__name__ if k in data else "missing", fix)
        return cls(**data)

    def headline(self) -> dict:
        """The fields a batch summary row and the HTTP answer show: volume_ml, uncertainty and the
        review's verdict, reasons and score (None where the record has no review)."""
        review = None if self.review is None else {k: self.review[k] for k in ("verdict", "reasons", "score")}
        return {"volume_ml": self.volume_ml, "uncertainty": self.uncertainty, "review": review}


def zone_volumes_ml(label: np.ndarray, voxel_ml: float) -> dict[str, float]:
    """The one zone-volume rule: {WG, TZ, PZ} in mL, voxel count (WG = label > 0, TZ = label == 1,
    PZ = label == 2) times the voxel volume in mL (`Volume.voxel_volume_ml`), rounded to 3 decimals
    (1 µL). Example: 10 TZ and 5 PZ voxels of 0.002 mL -> {"WG": 0.03, "TZ": 0.02, "PZ": 0.01}."""
    from .zones import masks

    return {z: mask_volume_ml(m, voxel_ml) for z, m in masks(label).items()}


def mask_volume_ml(mask: np.ndarray, voxel_ml: float) -> float:
    """The mL of a boolean mask, by the same rule as `zone_volumes_ml`."""
    return round(float(np.count_nonzero(mask)) * voxel_ml, 3)


def grid_record(image) -> dict:
    """zones.json's `grid` of a Volume: shape, spacing (mm, 5 decimals) and affine (6 decimals)."""
    return {"shape": list(image.shape), "spacing_mm": [round(s, 5) for s in image.spacing],
            "affine": image.affine.round(6).tolist()}


def alignment_record(reference: str, channels: dict) -> dict:
    """zones.json's `alignment`: the reference channel, each other channel's facts (mricore.datasets
    .load_case's alignment info) and the lowest NMI of a resampled channel (None when none was)."""
    nmi = [a["nmi"] for a in channels.values() if "nmi" in a]
    return {"reference": reference, "channels": channels, "score": min(nmi) if nmi else None,
            "score_definition": "lowest normalised mutual information of a resampled channel with the reference "
                                "(0 independent, 1 identical); null when every channel shares the reference grid"}


def case_dir(out: str | Path, case_id: str, batch: bool) -> Path:
    """The folder of one case: OUT itself for one case, OUT/<case_id> in a batch."""
    return Path(out) / case_id if batch else Path(out)


def is_batch_input(inputs: list) -> bool:
    """One datalist (.csv/.json), or one folder holding case folders (no NIfTI, no DICOM files of its
    own): the input of a batch, whose outputs take the batch layout OUT/<case_id>/."""
    from .datasets import is_dicom_folder

    if len(inputs) != 1:
        return False
    p = Path(inputs[0])
    if p.is_file():
        return p.suffix in (".csv", ".json")
    return p.is_dir() and not any(p.glob("*.nii*")) and not is_dicom_folder(p)


def check_case(folder: str | Path, force: bool) -> None:
    """Before any work: no file of a case folder exists in `folder`, unless force."""
    from .outputs import check_absent

    check_absent([Path(folder) / name for name in CASE_FILES], force)


def write_case(folder: str | Path, image, label: np.ndarray, record: ZonesRecord,
               extra: Callable[[Path, ZonesRecord], ZonesRecord | None] | None = None) -> ZonesRecord:
    """The one writer of a case folder, all files together or none (mricore.outputs.staged_dir): zones.nii.gz
    (`label` as uint8 on `image`'s grid), whatever `extra(stage, record)` writes into the staging
    folder, then zones.json: `record` with `outputs` listing the files written, `timings_s["write"]`
    (when the record has timings) and the software version. Files of an earlier run that this one does
    not write are removed. The caller checks overwriting first (`check_case`). Returns the record written."""
    from . import __version__
    from .io import write_nifti
    from .outputs import staged_dir, write_json

    t = time.perf_counter()
    record = dataclasses.replace(record, software_version=record.software_version or __version__)
    with staged_dir(folder, stale=CASE_FILES) as stage:
        write_nifti(label, image, stage / ZONES_NII, dtype=np.uint8, force=True)
        if extra is not None:  # it may return the record with what it learned (e.g. an explanation)
            record = extra(stage, record) or record
        timings = record.timings_s
        if timings is not None:
            timings = {**timings, "write": round(time.perf_counter() - t, 4)}
        written = {n: d for n, d in DESCRIPTIONS.items() if (stage / n).is_file()}
        record = dataclasses.replace(record, outputs=written, timings_s=timings)
        write_json(record.to_dict(), stage / ZONES_JSON)
    return record


def read_case(folder: str | Path) -> ZonesRecord:
    """The one reader of a case folder's zones.json. Raises InputError (one line) when it is missing,
    not JSON, of an unknown schema version, or has an unknown or mistyped field."""
    from .outputs import read_json

    folder = Path(folder)
    path = folder / ZONES_JSON
    if not path.is_file():
        raise InputError(folder, f"a case folder must hold {ZONES_JSON}", "none",
                         "pass the -o folder of `ensemble predict` / `segment predict` (a batch: one case's folder)")
    return ZonesRecord.from_dict(read_json(path, "predict the case again"), path)


def find_predictions(pred_dir: str | Path) -> dict[str, Path]:
    """case_id -> zone label map under `pred_dir`, whichever layout it holds:
    - one case folder (zones.nii.gz with its zones.json): the case id is the record's;
    - flat `<case>.nii.gz` files (nnU-Net, `segment train --cv`; `flat_predictions`);
    - a batch, `<case>/zones.nii.gz` (the folder name is the case id).
    Raises InputError for a missing folder, a file, or no prediction found."""
    pred_dir = Path(pred_dir)
    if not pred_dir.exists():
        raise InputError(pred_dir, "prediction folder does not exist", None,
                         "pass the -o folder of `segment predict` or `ensemble predict`")
    if not pred_dir.is_dir():
        raise InputError(pred_dir, "predictions must be a folder (a case folder, a batch or <case>.nii.gz files)",
                         "a file", "pass the folder, not one file")
    if (pred_dir / ZONES_NII).is_file():
        return {read_case(pred_dir).case_id: pred_dir / ZONES_NII}
    preds = flat_predictions(pred_dir) or {
        d.name: d / ZONES_NII for d in sorted(pred_dir.iterdir())
        if d.is_dir() and not d.name.startswith(".") and (d / ZONES_NII).is_file()}
    if not preds:
        raise InputError(pred_dir, "no <case>.nii.gz predictions found (nor <case>/zones.nii.gz)", "0 files",
                         "run `segment predict` or `ensemble predict` with -o into this folder first")
    return preds


def flat_predictions(folder: Path) -> dict[str, Path]:
    """The adapter for flat folders: case_id -> `<case_id>.nii.gz` (also .nii), leaving out the
    probability and Grad-CAM maps written beside them."""
    preds = {}
    for p in sorted(Path(folder).glob("*.nii*")):
        cid = p.name.split(".nii")[0]
        if not cid.endswith(PROB_SUFFIX) and GRADCAM_INFIX not in cid:
            preds[cid] = p
    return preds


def check_summary(out: str | Path, force: bool) -> None:
    """Before any work: a batch's summary files are absent in `out`, unless force."""
    from .outputs import check_absent

    check_absent([Path(out) / SUMMARY_JSON, Path(out) / SUMMARY_CSV], force)


def write_summary(out: str | Path, summary: dict, rows: list[dict]) -> None:
    """A batch's summary.json (`summary`, its cases included) and summary.csv (`rows`, flat), each
    written atomically."""
    from .outputs import write_csv, write_json

    write_json(summary, Path(out) / SUMMARY_JSON)
    write_csv(rows, Path(out) / SUMMARY_CSV)


def volume_columns(volume_ml: dict) -> dict:
    """The summary.csv columns of a volume_ml mapping: WG_ml, TZ_ml, PZ_ml."""
    return {f"{z}_ml": v for z, v in volume_ml.items()}
