"""One study of `segment import` (segment.importer): its series read and classified, the axial T2W, the
ADC and the highest-b DWI written as t2/adc/dwi.nii.gz into DATASET/<case>/, with study.json and, on
request, de-identified DICOM copies. The case folder appears whole or not at all (built aside, then
renamed: mricore.outputs.replaced_dir), so an existing case folder is a finished study.

Runs in a worker process: everything it needs travels in a `StudyJob` (plain data), and any exception
becomes a failed `StudyEntry` with a one-line reason that names no source path.

A person's decisions (`StudyJob.overrides`, {series key: Decision}, from the import page) are applied
after the automatic classification: another class (a T2W set by a person stands in for the voxel
checks; the orientation still counts), a series left out, a burned-in series kept. Each entry records
its decision. A study that is skipped now loses the case folder an earlier run wrote.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from pathlib import Path

from mricore.review_limits import ReviewConfig

from .import_manifest import EXCLUDED, Decision, SeriesEntry, StudyEntry, series_key

STUDY_JSON = "study.json"


@dataclass(frozen=True)
class SliceRecord:
    """One DICOM slice as the scan saw it (segment.importer._scan_file)."""

    rel: str                         # path relative to the import root (never written to the dataset)
    study_uid: str
    series_uid: str
    identity: str                    # mricore.deid.identity_of
    b_value: float | None
    position: float | None           # along the slice normal, mm
    facts: dict                      # mricore.series.header_facts


@dataclass(frozen=True)
class StudyJob:
    root: Path
    out: Path                        # DATASET
    case: str
    pseudonymizer: object            # mricore.deid.Pseudonymizer (picklable: its key only)
    slices: tuple[SliceRecord, ...]
    dicom_out: bool = False
    include_burned_in: bool = False
    limits: ReviewConfig = field(default_factory=ReviewConfig)
    overrides: dict = field(default_factory=dict)  # {series key: Decision}, a person's decisions


def run_study(job: StudyJob) -> StudyEntry:
    """Process one study; never raises for a bad study (a failed entry instead)."""
    p = job.pseudonymizer
    try:
        return _study(job, p)
    except Exception as e:  # one study never stops the others (UserError included)
        return StudyEntry(job.case, p.patient(job.slices[0].identity), p.uid(job.slices[0].study_uid), "failed",
                          scrub(_one_line(e), job.slices, job.root))


def _one_line(e: BaseException) -> str:
    from mricore.errors import UserError

    if isinstance(e, UserError):
        return e.rule + ("" if e.got is None else f"; got {e.got}")
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0][:160]}" if text else type(e).__name__


def scrub(text: str, slices, root: Path) -> str:
    """`text` without any path, nor any source folder name of the study (they are often patient names)."""
    text = re.sub(r"(?:[A-Za-z]:)?[/\\][^\s'\"]+", "<path>", text)
    parts = {part for s in slices for part in Path(s.rel).parts} | set(Path(root).resolve().parts[1:])
    parts |= set(Path(root).parts[1:] if Path(root).is_absolute() else Path(root).parts)
    for secret in sorted(parts, key=len, reverse=True):
        text = re.sub(re.escape(secret), "<source>", text, flags=re.IGNORECASE) if len(secret) > 2 else text
    return text


def units(slices) -> list[list[SliceRecord]]:
    """The study's series, a series holding several b-values split into one unit per b-value; in
    series-number then b-value order, each unit's slices along the slice normal."""
    groups: dict[tuple, list[SliceRecord]] = {}
    for s in slices:
        groups.setdefault(s.series_uid, []).append(s)
    out = []
    for series in groups.values():
        bs = {s.b_value for s in series}
        for b in sorted(bs, key=lambda v: -1.0 if v is None else v):
            unit = [s for s in series if s.b_value == b or len(bs) == 1]
            out.append(sorted(unit, key=lambda s: (s.position is None, s.position or 0.0, s.rel)))
    return sorted(out, key=lambda u: (u[0].facts["series_number"] or 0, u[0].b_value or -1.0))


def unit_key(p, unit: list[SliceRecord]) -> str:
    """The series key (segment.import_manifest.series_key) of one unit of `units`."""
    return series_key(p.uid(unit[0].series_uid), unit[0].b_value)


def check_overrides(jobs: list[StudyJob], overrides: dict) -> None:
    """Raise InputError for the first case or series key of `overrides` ({case: {series key: ...}})
    that none of `jobs` holds."""
    from mricore.errors import InputError

    keys = {j.case: {unit_key(j.pseudonymizer, u) for u in units(j.slices)} for j in jobs}
    for case, table in overrides.items():
        if case not in keys:
            raise InputError("decision", "the study must be one of this import's", repr(str(case)[:40]),
                             "reload the page and decide again")
        unknown = sorted(set(table) - keys[case])
        if unknown:
            raise InputError("decision", f"the series must be one of study {case}'s", repr(str(unknown[0])[:60]),
                             "reload the page and decide again")


def _classify_units(job: StudyJob, parts):
    """(classes, volumes, exclusions, decisions) of the units: burned-in ones left out (unless a person
    kept one), unreadable ones named, a person's decisions applied."""
    from mricore.dicom import read_dicom_files
    from mricore.errors import UserError
    from mricore.series import SeriesClass, classify

    classes, volumes, excluded, decisions = [], [], [], []
    for unit in parts:
        facts, why = unit[0].facts, ""
        d = job.overrides.get(unit_key(job.pseudonymizer, unit))
        if facts["burned_in"] and not (job.include_burned_in or (d and d.include)):
            why = "BurnedInAnnotation YES (pass --include-burned-in to keep it)"
        vol = None
        if not why:
            try:
                vol = read_dicom_files([str(job.root / s.rel) for s in unit], "series", "image", job.case)
            except UserError as e:
                why = "unreadable: " + scrub(_one_line(e), unit, job.root)
        if why.startswith("unreadable"):
            classes.append(SeriesClass("unreadable", facts["orientation"], unit[0].b_value, [why]))
        else:
            classes.append(classify(facts, unit[0].b_value, None if vol is None else vol.array[0],
                                    None if vol is None else vol.affine, job.limits))
        if d is not None:
            d, left_out = _decide(classes[-1], d)
            why = why or left_out
        volumes.append(vol)
        excluded.append(why)
        decisions.append(d)
    return classes, volumes, excluded, decisions


def _decide(c, d: Decision) -> tuple[Decision, str]:
    """Apply a person's decision to the SeriesClass `c` in place: (the decision as recorded, with the
    automatic class, and why the series is now left out, "" when it is not)."""
    d = replace(d, automatic=c.kind)
    if d.kind and c.kind != "unreadable":
        c.evidence.append(f"class {d.kind} set on the page (automatic: {c.kind})")
        if d.kind == "T2W":
            c.axial_t2w = c.orientation in ("axial", "unknown")  # a person's look replaces the voxel checks
        c.kind = d.kind
    return d, EXCLUDED if d.exclude else ""


def _study(job: StudyJob, p) -> StudyEntry:
    from mricore.outputs import replaced_dir, write_json
    from mricore.series import choose

    parts = units(job.slices)
    classes, volumes, excluded, decisions = _classify_units(job, parts)
    pick, reasons = choose(classes, [u[0].facts["series_number"] for u in parts], excluded)
    roles = {i: role for role, i in pick.items()}
    entries = [_entry(p, unit, c, roles.get(i, ""), reasons[i], decisions[i])
               for i, (unit, c) in enumerate(zip(parts, classes))]
    study = StudyEntry(job.case, p.patient(job.slices[0].identity), p.uid(job.slices[0].study_uid), "written",
                       series=entries)
    if "t2" not in pick:
        study.status, study.reason = "skipped", "no axial T2W series"
        _drop(job.out / job.case)
        return study
    with replaced_dir(job.out / job.case) as tmp:
        for role, i in sorted(pick.items()):
            _write_volume(volumes[i], tmp / f"{role}.nii.gz")
            study.outputs.append(f"{role}.nii.gz")
        if job.dicom_out:
            _dicom_copies(job, p, parts, entries, tmp)
        write_json(study.to_json(), tmp / STUDY_JSON)
    return study


def _entry(p, unit, c, role: str, excluded: str, decision: Decision | None) -> SeriesEntry:
    f = unit[0].facts
    return SeriesEntry(p.uid(unit[0].series_uid), f["series_number"], f["description"], f["image_type"],
                       len(unit), c.b_value, c.orientation, c.kind, c.evidence, c.features, role, excluded,
                       decision=decision)


def _drop(case_dir: Path) -> None:
    """Remove the case folder an earlier run wrote for a study that is skipped now (renamed aside
    first, so a reader never sees it half removed)."""
    import os
    import shutil

    if (case_dir / STUDY_JSON).is_file():
        aside = case_dir.with_name(f".{case_dir.name}.dropped-{os.getpid()}")
        os.rename(case_dir, aside)
        shutil.rmtree(aside)


def _write_volume(vol, path: Path) -> None:
    from mricore.io import write_nifti

    write_nifti(vol.array[0], None, path, affine=vol.affine)


def _dicom_copies(job: StudyJob, p, parts, entries, case_dir: Path) -> None:
    """De-identified copies of every series not left out for burned-in text, unreadable pixels or by a person."""
    import pydicom

    for i, (unit, entry) in enumerate(zip(parts, entries)):
        if entry.kind == "unreadable" or entry.excluded.startswith(("BurnedIn", EXCLUDED)):
            continue
        b = "" if entry.b_value is None else f"-b{entry.b_value:g}"
        rel = Path("dicom") / f"{i + 1:02d}-{entry.kind}{b}"  # position in the study, not a source name
        (case_dir / rel).mkdir(parents=True)
        for k, s in enumerate(unit):
            ds = pydicom.dcmread(job.root / s.rel)
            p.deidentify(ds)
            ds.save_as(case_dir / rel / f"{k + 1:04d}.dcm")
        entry.dicom_out = str(rel)
