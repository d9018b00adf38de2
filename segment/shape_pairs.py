"""`segment shape-pairs`: every label-only expert zone map becomes a training pair by warping a donor
study onto it (segment.shapes), judged by a fixed rule (segment.shape_qc).

Layout of OUT (read as is by `segment train` through `data.teacher: OUT/datalist.json`):
- `<pair_id>/t2.nii.gz`, `<pair_id>/zones.nii.gz`: the warped donor T2W and the TARGET's zones, both on
  the target's grid (header kept), written together or not at all; pair_id = `<target>__<donor case>`;
- `datalist.json`: the ACCEPTED pairs, one row each: case_id, patient_id = the DONOR's patient id (its
  texture is that patient's, so segment.folds keeps the pair out of any fold that holds that patient
  out or validates on it), T2W, and the zones under `zones_teacher` (training-only, never validated on);
- `qc.json`: the rule, the settings, the donors (and why any was left out), and per target its donor,
  DSC per stage and zone, Jacobian statistics, seconds, accepted or the reasons not;
- `qc_sheet_NN.png`: the QC sheet (segment.shape_qc.write_sheet).

Donors: each target gets the `per_target` donors nearest in gland volume (|log ratio| in 5 % steps;
ties go to the donor used least so far, then by case id), deterministic for given inputs.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from mricore.errors import InputError
from mricore.outputs import check_absent, check_output_dir
from mricore.results import ZONES_NII

from .caseprep import TEACHER_ZONES
from .shapes import ShapeSettings

MIN_DONOR_EXTENT_MM = 20.0  # a donor's gland must span this along its slice axis (I2CVB's 5-slice slabs do not)
DATASET = "shape_pairs"


@dataclass(frozen=True)
class Target:
    target_id: str
    path: Path
    gland_ml: float
    skip: str = ""          # why no pair is made (a map without both zones)


@dataclass(frozen=True)
class Donor:
    case_id: str
    patient_id: str
    image: Path
    zones: Path
    label: str              # the donor's label key used (zones: expert, zones_ai: silver)
    gland_ml: float


def find_targets(dirs: list) -> list[Target]:
    """Every `*.nii.gz` zone map directly in each folder of `dirs` (or a file given), sorted by id.
    Raises InputError for a missing path, a folder without maps, a map with values other than 0/1/2
    or a target id given twice."""
    from mricore.io import read_label

    paths = []
    for d in map(Path, dirs):
        if not d.exists():
            raise InputError(d, "--labels path does not exist", "nothing at that path", "check the path")
        found = sorted(d.glob("*.nii.gz")) if d.is_dir() else [d]
        if not found:
            raise InputError(d, "--labels folder holds no .nii.gz zone maps", "0 files", "pass a folder of zone maps")
        paths += found
    targets = {}
    for p in paths:
        tid = p.name.split(".nii")[0]
        if tid in targets:
            raise InputError(p, "two zone maps share a target id (file name)", tid, "rename one of them")
        vol = read_label(p, "zones", tid)
        lab, affine = vol.array[0], vol.affine
        _check_codes(p, lab)
        missing = [z for z, v in (("TZ", 1), ("PZ", 2)) if not (lab == v).any()]
        skip = f"no {' and no '.join(missing)} drawn: not a zone truth" if missing else coding_problem(lab, affine)
        targets[tid] = Target(tid, p, float(np.count_nonzero(lab)) * _voxel_ml(affine), skip)
    return [targets[k] for k in sorted(targets)]


def find_donors(paths: list, label_keys: tuple[str, ...]) -> tuple[list[Donor], list[dict]]:
    """Donor studies from datasets, case folders or datalists (mricore.datasets.load_dataset): cases
    with a T2W image and one of `label_keys` (the first one present is used). Returns (donors sorted by
    case id, excluded: [{case_id, reason}]). Raises InputError when no case can donate."""
    from mricore.datasets import load_dataset
    from mricore.io import read_label

    donors, excluded = [], []
    for case in [c for p in paths for c in load_dataset(p)]:
        key = next((k for k in label_keys if k in case.labels), None)
        if key is None or "T2W" not in case.images:
            excluded.append({"case_id": case.case_id, "reason": f"no T2W image or no label of {list(label_keys)}"})
            continue
        zones = read_label(case.labels[key].path, key, case.case_id)
        lab = zones.array[0]
        _check_codes(case.labels[key].path, lab)
        slices = np.nonzero(lab.any((0, 1)))[0]
        extent = (slices.max() - slices.min() + 1) * zones.spacing[2] if slices.size else 0.0
        both = (lab == 1).any() and (lab == 2).any()
        why = ("lacks a zone" if not both else coding_problem(lab, zones.affine) or (
            f"gland spans {extent:.1f} mm through the slices (a slab; at least {MIN_DONOR_EXTENT_MM:g} mm)"
            if extent < MIN_DONOR_EXTENT_MM else ""))
        if why:
            excluded.append({"case_id": case.case_id, "reason": why})
            continue
        donors.append(Donor(case.case_id, case.patient_id, case.images["T2W"].path, case.labels[key].path, key,
                            float(np.count_nonzero(lab)) * zones.voxel_volume_ml))
    if not donors:
        raise InputError(", ".join(map(str, paths)), "no donor study (T2W with whole-gland zones)",
                         f"{len(excluded)} cases left out", "pass datasets or datalists with t2 and zones files")
    return sorted(donors, key=lambda d: d.case_id), excluded


def choose_donors(targets: list[Target], donors: list[Donor], per_target: int) -> list[tuple[Target, Donor]]:
    """(target, donor) pairs: for each usable target, in order, the `per_target` donors nearest in
    gland volume (|log volume ratio| in steps of 5 %; ties: fewest uses so far, then case id)."""
    uses = {d.case_id: 0 for d in donors}
    pairs = []
    for t in targets:
        if t.skip:
            continue
        ranked = sorted(donors, key=lambda d: (round(abs(math.log(d.gland_ml / t.gland_ml)) / math.log(1.05)),
                                               uses[d.case_id], d.case_id))
        for d in ranked[:per_target]:
            uses[d.case_id] += 1
            pairs.append((t, d))
    return pairs


def pair_id(target: Target, donor: Donor) -> str:
    return f"{target.target_id}__{donor.case_id}"


def check_request(out, workers: int, per_target: int) -> Path:
    """Validate the request at the door (before any file is read): counts sane, output folder usable."""
    if workers < 1:
        raise InputError("--workers", "must be >= 1 (processes)", workers, "e.g. --workers 2")
    if per_target < 1:
        raise InputError("--per-target", "must be >= 1", per_target, "e.g. --per-target 1")
    return check_output_dir(out)


def _check_codes(path, lab: np.ndarray) -> None:
    extra = sorted(set(np.unique(lab).tolist()) - {0, 1, 2})
    if extra:
        raise InputError(path, "zone maps hold 0 background, 1 TZ, 2 PZ", f"values {extra}",
                         "map the source coding to 0/1 TZ/2 PZ first (msd/nci maps in ../shared/data already are)")


def coding_problem(lab: np.ndarray, affine: np.ndarray) -> str:
    """'' when the PZ (2) centroid lies posterior of the TZ (1) centroid, as anatomy has it; else why
    not (a map still in the MSD / NCI-ISBI source coding, 1 PZ and 2 TZ, fails here)."""
    y = {v: (affine[:3, :3] @ np.argwhere(lab == v).mean(0))[1] for v in (1, 2)}  # RAS: +y is anterior
    gap = y[1] - y[2]
    return "" if gap > 0 else f"PZ centroid {-gap:.1f} mm anterior of the TZ's: label coding swapped (1 PZ, 2 TZ)?"


def _voxel_ml(affine: np.ndarray) -> float:
    return float(abs(np.linalg.det(affine[:3, :3]))) / 1000.0


def make_pairs(labels: list, donors: list, out, *, label_keys: tuple[str, ...] = ("zones",), per_target: int = 1,
               workers: int = 1, force: bool = False, settings: ShapeSettings = ShapeSettings(), log=print) -> dict:
    """Write OUT (module docstring) for every zone map under `labels` with donors from `donors`, over
    `workers` processes. Every input and the output location are checked before the first
    registration. Returns qc.json's content. Raises InputError / OutputExistsError (exit 2 in the CLI)."""
    from mricore.outputs import write_json

    from .shape_qc import rule_text, sheet_title, summarise, write_sheet

    out = check_request(out, workers, per_target)
    targets = find_targets(labels)
    pool, excluded = find_donors(donors, tuple(label_keys))
    pairs = choose_donors(targets, pool, per_target)
    check_absent([out / "qc.json", out / "datalist.json"] + [out / pair_id(t, d) for t, d in pairs], force)
    log(f"{len(pairs)} pairs: {len(targets)} target maps ({sum(bool(t.skip) for t in targets)} skipped), "
        f"{len(pool)} donors ({len(excluded)} left out), {workers} worker(s)")
    records = [{"pair_id": None, "target": t.target_id, "accepted": False, "reasons": [t.skip]}
               for t in targets if t.skip]
    sheet = []
    for record, view in _run([(t, d, out, settings) for t, d in pairs], workers):
        records.append(record)
        log(f"{record['pair_id']}: {'accepted' if record['accepted'] else 'rejected: ' + '; '.join(record['reasons'])}"
            f" ({record.get('seconds', 0):.1f} s)")
        if view is not None:
            sheet.append({"pair_id": record["pair_id"], "preview": view, "accepted": record["accepted"],
                          "title": sheet_title(record)})
    rows = [datalist_row(r) for r in records if r["accepted"]]
    write_json(rows, out / "datalist.json", force=True)  # overwriting was checked at the door
    qc = {"schema": 1, "rule": rule_text(), "settings": asdict(settings), "summary": summarise(records),
          "donors": [{k: str(v) for k, v in asdict(d).items()} for d in pool], "excluded_donors": excluded,
          "pairs": records}
    write_json(qc, out / "qc.json", force=True)
    write_sheet(sheet, out / "qc_sheet.png")
    return qc


def datalist_row(record: dict) -> dict:
    """A pair's datalist row (paths relative to OUT): the donor's patient id, training-only zones."""
    pid = record["pair_id"]
    return {"case_id": pid, "patient_id": record["donor_patient"], "dataset": DATASET,
            "T2W": f"{pid}/t2.nii.gz", TEACHER_ZONES: f"{pid}/{ZONES_NII}"}


def _run(jobs: list, workers: int):
    """(record, preview) of each job in order: in this process, or in `workers` processes (each with
    one SimpleITK thread: the processes are the parallelism)."""
    if workers == 1:
        yield from map(_pair_job, jobs)
        return
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(workers, initializer=_one_thread) as ex:
        yield from ex.map(_pair_job, jobs)


def _one_thread() -> None:
    from mricore.dicom import sitk_module

    sitk_module().ProcessObject.SetGlobalDefaultNumberOfThreads(1)


def _pair_job(job) -> tuple[dict, dict | None]:
    """Register one donor onto one target, write the pair folder (all or nothing), judge it."""
    from mricore.datasets import ImageRef, read_ref
    from mricore.errors import GeometryError
    from mricore.io import read_label, write_nifti
    from mricore.outputs import staged_dir

    from .shape_qc import preview, verdict
    from .shapes import register_shape

    t, d, out, settings = job
    pid = pair_id(t, d)
    base = {"pair_id": pid, "target": t.target_id, "target_file": str(t.path), "donor": d.case_id,
            "donor_patient": d.patient_id, "donor_label": d.label,
            "gland_ml": {"target": round(t.gland_ml, 2), "donor": round(d.gland_ml, 2)}}
    target = read_label(t.path, "zones", t.target_id)
    image = read_ref(ImageRef(d.image), "T2W", d.case_id)  # a NIfTI file or a DICOM series folder
    zones = read_label(d.zones, d.label, d.case_id)
    if not zones.same_grid(image):
        raise GeometryError(d.zones, "donor zones must lie on the donor T2W grid", f"{zones.shape} vs {image.shape}",
                            "resample the zones onto the T2W with nearest neighbour")
    try:
        warped, facts = register_shape(image, zones, target, settings)
    except RuntimeError as e:  # an ITK optimiser giving up on a shape: recorded, the other pairs go on
        return base | {"accepted": False, "reasons": ["registration failed"], "error": str(e)[:200]}, None
    f = facts.to_json()
    reasons = verdict(f)
    with staged_dir(out / pid) as stage:
        write_nifti(warped.array[0], target, stage / "t2.nii.gz", dtype=np.float32, force=True)
        write_nifti(target.array[0], target, stage / ZONES_NII, dtype=np.uint8, force=True)
    return base | f | {"accepted": not reasons, "reasons": reasons}, preview(warped, target, facts.jacobian_map)
