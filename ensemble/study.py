"""One DICOM study held as files (received by `ensemble listen`, or retrieved over DICOMweb) through the
ensemble: its series sorted into folders, the axial T2W and the ADC chosen as `segment import` chooses
them (mricore.series: header and voxels), `ensemble predict` on them, and the SR measurement report.

    STUDY/<series folder>/<instance>.dcm     one folder per SeriesInstanceUID (`add_instance`)

Only a header classified as T2W (axial or of unknown orientation) has its voxels read, for the review's
input checks; ADC and DWI are judged on the header, as `mricore.series.choose` needs. The DWI is not
given to the ensemble (no bundled member reads it, and a series of several b-values is not one volume).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from mricore.errors import InputError, UserError


class NoT2W(InputError):
    """A study without an axial T2W series the ensemble could read: skipped, not failed."""


def folder_name(uid: str) -> str:
    """A file-system name for a UID: 16 hex digits of its SHA-256 (UIDs can exceed what a name should)."""
    return hashlib.sha256(str(uid).encode()).hexdigest()[:16]


def instance_path(study: Path, series_uid: str, sop_uid: str) -> Path:
    """Where one instance of `study` goes (its series folder created)."""
    folder = Path(study) / folder_name(series_uid)
    folder.mkdir(parents=True, exist_ok=True)
    return folder / f"{folder_name(sop_uid)}.dcm"


def add_instance(study: Path, series_uid: str, sop_uid: str, data: bytes) -> Path:
    """Write one encoded DICOM file into its series folder of `study`; returns its path."""
    path = instance_path(study, series_uid, sop_uid)
    path.write_bytes(data)
    return path


def _classify(folder: Path, limits):
    """(SeriesClass, series number, exclusion reason "" or why) of one series folder."""
    import pydicom

    from mricore.dicom import read_dicom_series
    from mricore.series import b_value_of, classify, header_class, header_facts

    files = sorted(folder.glob("*.dcm"))
    ds = pydicom.dcmread(files[0], stop_before_pixels=True)
    facts, b = header_facts(ds), b_value_of(ds)
    if facts["burned_in"]:
        return classify(facts, b, None, None), facts["series_number"], "BurnedInAnnotation YES"
    if header_class(facts, b)[0] != "T2W" or facts["orientation"] not in ("axial", "unknown"):
        return classify(facts, b, None, None), facts["series_number"], ""
    try:
        vol = read_dicom_series(folder, "T2W")
    except UserError as e:
        return classify(facts, b, None, None), facts["series_number"], f"unreadable: {e.rule}"
    return classify(facts, b, vol.array[0], vol.affine, limits), facts["series_number"], ""


def pick_series(study: Path, limits=None) -> tuple[dict[str, Path], list[str]]:
    """The series folders of `study` per role ("t2", "adc"; absent when none qualifies) and one line
    per series left out (its description's class and why). `limits`: mricore.review_limits.ReviewConfig."""
    from mricore.review_limits import ReviewConfig
    from mricore.series import choose

    folders = sorted(p for p in Path(study).iterdir() if p.is_dir() and any(p.glob("*.dcm")))
    found = [_classify(f, limits or ReviewConfig()) for f in folders]
    pick, reasons = choose([c for c, _, _ in found], [n for _, n, _ in found], [x for _, _, x in found])
    roles = {role: folders[i] for role, i in pick.items() if role in ("t2", "adc")}
    left = [f"{c.kind} ({c.orientation}): {why}" for (c, _, _), why in zip(found, reasons) if why]
    return roles, left


@dataclass(frozen=True)
class StudyResult:
    """A study's prediction: the zones.json record, the case folder and the SEG and SR files."""

    record: object        # mricore.results.ZonesRecord
    out: Path
    seg: Path
    sr: Path


def analyse_study(study: Path, out: Path, sr: Path, cfg, members, identity, force: bool = False,
                  report: bool = False) -> StudyResult:
    """Pick the series of `study` (`pick_series`), run `ensemble predict` on the T2W (and ADC) into `out`
    (ensemble.predict.predict: its outputs, seg.dcm with `identity`, report.html with `report`), and
    write the SR measurement report at `sr`. Raises NoT2W when no axial T2W qualifies, and predict's
    UserErrors."""
    from mricore.results import SEG_DCM

    from .predict import predict
    from .sr import write_measurement_report

    roles, left = pick_series(study, cfg.review)
    if "t2" not in roles:
        raise NoT2W("study", "needs an axial T2W series", "; ".join(left) or "no MR series",
                    "send the study with its axial T2W series")
    inputs = [roles["t2"]] + ([roles["adc"]] if "adc" in roles else [])
    record = predict(inputs, out, cfg, force, report=report, members=members, notify=False, identity=identity)
    seg = Path(out) / SEG_DCM
    return StudyResult(record, Path(out), seg, write_measurement_report(seg, record, sr))
