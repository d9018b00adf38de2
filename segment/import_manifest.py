"""The record `segment import` writes: DATASET/manifest.json, and one DATASET/<case>/study.json per study.

Typed, read and written only here (`Manifest.to_json` / `Manifest.from_json`, `StudyEntry` likewise), so
a page that lets a person re-classify or exclude a series edits these objects and writes them back.
Nothing in it identifies a patient or names a source path: studies are named by the patient's keyed
pseudonym, series by keyed UIDs (mricore.deid) and their series number, unreadable files by a keyed
reference (the provider's map file beside the key file resolves it). A person's decision on a series
(segment.import_page: another class, left out, a burned-in series kept) is a `Decision` on its entry;
the import applies it (`import_dicom(..., overrides=...)`) and every later run of the import keeps it.

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
from mricore.series import KINDS

SCHEMA = "segment-import/1"
STATUSES = ("written", "skipped", "failed")  # a study's outcome; "skipped": no axial T2W
ON_PAGE = "changed on the page"    # who decided is not known, only where
EXCLUDED = "excluded on the page"  # a series' `excluded` reason when a person left it out


def series_key(series_uid: str, b_value: float | None) -> str:
    """A series' id within the import: its keyed UID, plus "@b<b-value>" for a diffusion series (one
    series holding several b-values is one entry per b-value), e.g. "2.25.1234@b800"."""
    return series_uid if b_value is None else f"{series_uid}@b{b_value:g}"


@dataclass
class Decision:
    """A person's decision on one series: another class (`kind`; "" keeps the automatic one), left
    out (`exclude`), or kept although flagged BurnedInAnnotation=YES (`include`). `automatic` is the
    class the import gave (filled in by the import), `by` where it was decided, `time` when (UTC,
    ISO 8601). Raises InputError for an unknown class, non-boolean flags or exclude with include."""

    kind: str = ""
    exclude: bool = False
    include: bool = False
    automatic: str = ""
    by: str = ON_PAGE
    time: str = ""

    def __post_init__(self):
        if self.kind not in ("", *KINDS):
            raise InputError("decision", f"class must be one of {', '.join(KINDS)}", repr(self.kind),
                             "choose a class from the list")
        if not isinstance(self.exclude, bool) or not isinstance(self.include, bool):
            raise InputError("decision", "exclude and include must be true or false",
                             f"{self.exclude!r}, {self.include!r}", "send JSON booleans")
        if self.exclude and self.include:
            raise InputError("decision", "a series is either excluded or included", "both",
                             "choose one of exclude and include")


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
    decision: Decision | None = None  # a person's decision, applied (None: all automatic)

    @property
    def key(self) -> str:
        return series_key(self.series_uid, self.b_value)


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
        data["series"] = [SeriesEntry(**{**s, "decision": Decision(**s["decision"]) if s.get("decision") else None})
                          for s in data.get("series", [])]
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

    def decisions(self) -> dict[str, dict[str, Decision]]:
        """The recorded decisions, {case: {series key: Decision}}, as `import_dicom` takes them."""
        return {st.case: {s.key: s.decision for s in st.series if s.decision} for st in self.studies
                if any(s.decision for s in st.series)}

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
