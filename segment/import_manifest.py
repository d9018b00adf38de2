"""The record `segment import` writes: DATASET/manifest.json, and one DATASET/<case>/study.json per study.

Typed, read and written only here (`Manifest.to_json` / `Manifest.from_json`, `StudyEntry` likewise), so
a page that lets a person re-classify or exclude a series edits these objects and writes them back.
Nothing in it identifies a patient or names a source path: studies are named by the patient's keyed
pseudonym, series by keyed UIDs (mricore.deid) and their series number, unreadable files by a keyed
reference (the provider's map file beside the key file resolves it).

    m = Manifest.read("DATASET/manifest.json")
    for study in m.studies:
        for s in study.series:
            print(study.case, s.series_number, s.kind, s.role or s.excluded)
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from mricore.errors import InputError

SCHEMA = "segment-import/1"
STATUSES = ("written", "skipped", "failed")  # a study's outcome; "skipped": no axial T2W


@dataclass
class SeriesEntry:
    """One series (a trace DWI holding several b-values is one entry per b-value)."""

    series_uid: str                  # keyed pseudonymous SeriesInstanceUID
    series_number: float | None      # SeriesNumber from the header (None when absent)
    description: str                 # SeriesDescription or ProtocolName (the protocol, not the patient)
    image_type: list[str]
    n_files: int
    b_value: float | None            # s/mm^2, diffusion series only
    orientation: str                 # axial | coronal | sagittal | unknown (header)
    kind: str                        # T2W | ADC | DWI | other | unreadable (mricore.series)
    evidence: list[str] = field(default_factory=list)   # why this class, header and voxels, in words
    features: dict = field(default_factory=dict)        # the review's input features (mricore.review)
    role: str = ""                   # t2 | adc | dwi when chosen, else ""
    excluded: str = ""               # why it was left out ("" when chosen)
    dicom_out: str = ""              # its de-identified copy, relative to the case folder (--dicom-out)


@dataclass
class StudyEntry:
    """One study: written (case folder complete), skipped (no axial T2W) or failed (one-line reason)."""

    case: str                        # folder name in DATASET: the patient's pseudonym (+ a study token)
    patient: str                     # the patient's pseudonym
    study_uid: str                   # keyed pseudonymous StudyInstanceUID
    status: str                      # one of STATUSES
    reason: str = ""                 # why skipped or failed
    outputs: list[str] = field(default_factory=list)    # files written, relative to the case folder
    series: list[SeriesEntry] = field(default_factory=list)

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> "StudyEntry":
        data = dict(data)
        data["series"] = [SeriesEntry(**s) for s in data.get("series", [])]
        return cls(**data)


@dataclass
class FileProblem:
    """A file that is not a readable DICOM image."""

    ref: str                         # keyed reference "F-XXXXXXXX" (the map file gives its path)
    suffix: str                      # its extension, e.g. ".dcm", ".txt"
    bytes: int
    reason: str


@dataclass
class Manifest:
    """Everything one import saw: every study and series, every unreadable file."""

    key_fingerprint: str             # which key made the pseudonyms (mricore.deid.Pseudonymizer.fingerprint)
    deidentification: str            # the method, as written into DICOM copies
    studies: list[StudyEntry] = field(default_factory=list)
    problems: list[FileProblem] = field(default_factory=list)
    schema: str = SCHEMA

    def to_json(self) -> dict:
        return {"schema": self.schema, "key_fingerprint": self.key_fingerprint,
                "deidentification": self.deidentification,
                "counts": {s: sum(st.status == s for st in self.studies) for s in STATUSES},
                "studies": [s.to_json() for s in self.studies], "problems": [asdict(p) for p in self.problems]}

    @classmethod
    def from_json(cls, data: dict) -> "Manifest":
        if data.get("schema") != SCHEMA:
            raise InputError("manifest.json", f"schema must be {SCHEMA}", data.get("schema"),
                             "write it with this version of `segment import`")
        known = {f.name for f in fields(cls)}
        out = cls(**{k: v for k, v in data.items() if k in known and k not in ("studies", "problems")})
        out.studies = [StudyEntry.from_json(s) for s in data.get("studies", [])]
        out.problems = [FileProblem(**p) for p in data.get("problems", [])]
        return out

    @classmethod
    def read(cls, path) -> "Manifest":
        path = Path(path)
        try:
            return cls.from_json(json.loads(path.read_text()))
        except (OSError, ValueError, TypeError) as e:
            raise InputError(path, "a readable import manifest", type(e).__name__,
                             "run `segment import` again with --force") from None

    def write(self, path) -> Path:
        from mricore.outputs import write_json

        return write_json(self.to_json(), path, force=True)
