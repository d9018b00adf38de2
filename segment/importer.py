"""`segment import DICOM_ROOT -o DATASET`: a data provider's masked, classified dataset from a DICOM tree.

1. Every file under the root is read as a DICOM header (in parallel); a file that is not a DICOM image
   is listed in the manifest under a keyed reference, never a traceback.
2. Slices are grouped into studies by StudyInstanceUID; each study is processed in a worker process
   (segment.import_study): series classified (mricore.series), the axial T2W, the ADC and the
   highest-b DWI written as DATASET/<case>/t2.nii.gz, adc.nii.gz, dwi.nii.gz, the layout
   mricore.datasets reads (`ensemble predict DATASET` works on it), optionally de-identified DICOM
   copies (mricore.deid). A study without an axial T2W is listed as skipped, a failing study as
   failed with a one-line reason; the others go on.
3. DATASET/manifest.json (segment.import_manifest) lists every study, series and unreadable file.

Case folders are named by the patient's keyed pseudonym (plus a keyed study token when a patient has
several studies), never by a source name. With `key_file` the pseudonyms are the same on every run and
the re-identification table (pseudonym -> PatientID, study UID, source folder; file reference -> path)
is merged into `<key_file>.map.csv` (mode 0600), beside the key and never in the dataset; without
one, a random key is used once and nothing can be re-identified.

Re-running into an earlier import made with the same key skips its finished studies (a case folder
exists only complete); `force` re-imports them. Any other existing, non-empty DATASET needs `force`.
A person's decisions (`overrides`, from the import page, segment.import_page) re-run the studies they
name; the decisions recorded in the manifest are applied again by every later run.
"""

from __future__ import annotations

import csv
import io
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from mricore.errors import InputError, OutputExistsError
from mricore.review_limits import ReviewConfig

from .import_manifest import FileProblem, Manifest, StudyEntry
from .import_study import STUDY_JSON, SliceRecord, StudyJob, check_overrides, run_study

MANIFEST = "manifest.json"
COMMON_SUFFIXES = {".dcm", ".dicom", ".ima", ".img", ".txt", ".xml", ".json", ".csv", ".pdf", ".jpg", ".png", ".zip",
                   ".gz", ".nii", ".mha", ".nrrd", ".ini", ".log", ".html", ".htm", ".db", ".bak", ".tmp"}


@dataclass(frozen=True)
class ImportOptions:
    dicom_out: bool = False          # also write de-identified DICOM copies
    include_burned_in: bool = False  # keep series flagged BurnedInAnnotation=YES
    force: bool = False              # re-import finished studies; write into a non-import folder
    workers: int = 1                 # processes (studies and header scans run in parallel)
    limits: ReviewConfig = field(default_factory=ReviewConfig)  # the review's input-check limits
    progress: bool = True            # a tqdm bar on stderr (shown on a terminal only)


def import_dicom(root, out, key_file=None, options: ImportOptions = ImportOptions(), overrides=None,
                 pseudonymizer=None) -> Manifest:
    """Import the DICOM tree `root` into the dataset folder `out` (module docstring); returns the manifest.
    `overrides` ({case: {series key: Decision}}) re-runs those studies with a person's decisions, which
    replace the ones recorded for that case ({} drops them); `pseudonymizer` (mricore.deid) is used
    instead of the key file's key (the import page keeps one across exports; the map still goes beside
    `key_file`).

    Raises InputError (missing root, no DICOM image under it, bad key file, workers < 1, an override
    naming a case or series this import does not hold) and OutputExistsError (`out` exists and is not
    an earlier import with this key, without force)."""
    return scan_and_import(root, out, key_file, options, overrides, pseudonymizer)[0]


def scan_and_import(root, out, key_file=None, options: ImportOptions = ImportOptions(), overrides=None,
                    pseudonymizer=None) -> tuple[Manifest, list[StudyJob]]:
    """`import_dicom`, with the StudyJobs of its scan (the import page keeps them: one scan, not two)."""
    from mricore.deid import PROFILE, Pseudonymizer, library

    root, out = Path(root), Path(out)
    if options.workers < 1:
        raise InputError("--workers", "must be at least 1", options.workers, "pass --workers 1 or more")
    if not root.is_dir():
        raise InputError(root, "DICOM root must be a folder", "missing" if not root.exists() else "a file",
                         "pass the folder holding the studies")
    previous = _previous(out, options.force)
    p = pseudonymizer or (Pseudonymizer.from_key_file(key_file, create=True) if key_file else Pseudonymizer.ephemeral())
    if previous is not None and previous.key_fingerprint != p.fingerprint():
        raise OutputExistsError(out, "holds an import made with another key", f"key {previous.key_fingerprint}",
                                "pass the --key-file it was made with, or choose another -o")
    overrides = overrides or {}
    with _pool(options.workers) as pool:
        decisions = {**(previous.decisions() if previous else {}), **overrides}
        files, jobs, problems = study_jobs(root, out, p, options, decisions, pool)
        check_overrides(jobs, overrides)
        manifest = Manifest(p.fingerprint(), f"{PROFILE}; {library()}; keyed", problems=problems)
        kept = {s.case: s for s in (previous.studies if previous else []) if (out / s.case / STUDY_JSON).is_file()}
        manifest.studies = list(kept.values())
        out.mkdir(parents=True, exist_ok=True)
        manifest.write(out / MANIFEST)  # an interrupted import is still recognised, and resumed
        done = {j.case: _finished(out / j.case) for j in jobs if not options.force and j.case not in overrides}
        new = _run(pool, [j for j in jobs if done.get(j.case) is None], options.progress)
    # Earlier imports' studies stay listed (another root into the same dataset); this run's replace them.
    kept.update({s.case: s for s in [*done.values(), *new] if s is not None})
    manifest.studies = sorted(kept.values(), key=lambda s: s.case)
    manifest.write(out / MANIFEST)
    if key_file:
        write_map(Path(str(key_file) + ".map.csv"), _map_rows(p, jobs, problems, files))
    return manifest, jobs


def _previous(out: Path, force: bool) -> Manifest | None:
    """The earlier import in `out`, or None; raises when `out` may not be written (checked first)."""
    if out.exists() and not out.is_dir():
        raise InputError(out, "the dataset output must be a folder", "a file", "choose another -o")
    if (out / MANIFEST).is_file():
        return Manifest.read(out / MANIFEST)
    if out.is_dir() and any(out.iterdir()) and not force:
        raise OutputExistsError(out, "output exists and is not an earlier import", "no manifest.json of an import",
                                "pass --force to write into it, or choose another -o")
    return None


def study_jobs(root: Path, out: Path, p, options: ImportOptions, decisions: dict, pool):
    """Scan `root` in `pool`: (every file, relative and sorted; one StudyJob per study, carrying its
    decisions from `decisions` {case: {series key: Decision}}; the files that are not DICOM images).
    Raises InputError when no file is a DICOM image."""
    files = _list_files(root)
    records, problems = _scan(root, files, pool, p)
    if not records:
        raise InputError(root, "no DICOM image found", f"{len(files)} files, none a DICOM image",
                         "pass the folder holding the exported studies")
    return files, _jobs(root, out, p, records, options, decisions), problems


def _list_files(root: Path) -> list[str]:
    """Every file under `root`, relative, sorted (hidden files and folders skipped)."""
    found = []
    for folder, dirs, names in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        found += [os.path.relpath(os.path.join(folder, n), root) for n in names if not n.startswith(".")]
    return sorted(found)


def _pool(workers: int):
    """A process pool, or (1 worker) an executor that runs everything here."""
    if workers > 1:
        return ProcessPoolExecutor(max_workers=workers, initializer=_one_thread)
    return _Inline()


def _one_thread() -> None:
    """A worker process reads with one ITK thread: the processes, not ITK's threads, share the cores."""
    from mricore.dicom import sitk_module

    sitk_module().ProcessObject.SetGlobalDefaultNumberOfThreads(1)


class _Inline:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def map(self, fn, items, chunksize=1):
        return map(fn, items)

    def submit(self, fn, arg):
        from concurrent.futures import Future

        f = Future()
        f.set_result(fn(arg))
        return f


def _scan(root: Path, files: list[str], pool, p) -> tuple[list[SliceRecord], list[FileProblem]]:
    records, problems = [], []
    chunk = max(1, len(files) // 64)
    for rel, result in zip(files, pool.map(_scan_file, [(root, f) for f in files], chunksize=chunk)):
        if isinstance(result, SliceRecord):
            records.append(result)
        else:
            size = (root / rel).stat().st_size
            problems.append(FileProblem(file_ref(p, rel), _suffix(rel), size, result))
    return records, problems


def _suffix(rel: str) -> str:
    """A file's extension when it is a common one; any other could be part of a name ("Smith.John")."""
    suffix = Path(rel).suffix.lower()
    return suffix if suffix in COMMON_SUFFIXES else ("" if not suffix else "other")


def file_ref(p, rel: str) -> str:
    """The keyed reference of a source file, as the manifest lists it."""
    return "F-" + p.token("file", rel, 8)


def _scan_file(arg) -> SliceRecord | str:
    """One file's SliceRecord, or why it is not a DICOM image."""
    import numpy as np
    import pydicom
    from pydicom.errors import InvalidDicomError

    from mricore.deid import identity_of
    from mricore.series import b_value_of, header_facts

    root, rel = arg
    try:
        ds = pydicom.dcmread(root / rel, stop_before_pixels=True)
    except InvalidDicomError:
        return "not a DICOM file"
    except Exception as e:  # a truncated or corrupt header
        return f"DICOM header could not be read ({type(e).__name__})"
    if "Rows" not in ds or not ds.get("StudyInstanceUID") or not ds.get("SeriesInstanceUID"):
        return "DICOM without an image (no Rows, StudyInstanceUID or SeriesInstanceUID)"
    try:
        iop = np.array([float(x) for x in ds.ImageOrientationPatient])
        position = float(np.array([float(x) for x in ds.ImagePositionPatient]) @ np.cross(iop[:3], iop[3:]))
    except (AttributeError, TypeError, ValueError):
        position = None
    return SliceRecord(rel, str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID), identity_of(ds), b_value_of(ds),
                       position, header_facts(ds))


def _jobs(root: Path, out: Path, p, records: list[SliceRecord], options: ImportOptions, decisions: dict
          ) -> list[StudyJob]:
    """One job per study; the case is the patient's pseudonym, with a study token if it has several."""
    studies: dict[str, list[SliceRecord]] = {}
    for r in records:
        studies.setdefault(r.study_uid, []).append(r)
    per_patient: dict[str, int] = {}
    for slices in studies.values():
        per_patient[slices[0].identity] = per_patient.get(slices[0].identity, 0) + 1
    jobs = []
    for uid, slices in studies.items():
        case = p.patient(slices[0].identity)
        if per_patient[slices[0].identity] > 1:
            case += "_" + p.token("study", uid)
        jobs.append(StudyJob(root, out, case, p, tuple(slices), options.dicom_out, options.include_burned_in,
                             options.limits, decisions.get(case, {})))
    return sorted(jobs, key=lambda j: j.case)


def _finished(case_dir: Path) -> StudyEntry | None:
    """The entry of a study finished by an earlier run (its case folder is only ever complete)."""
    import json

    try:
        return StudyEntry.from_json(json.loads((case_dir / STUDY_JSON).read_text()))
    except (OSError, ValueError, TypeError):
        return None


def _run(pool, jobs: list[StudyJob], progress: bool) -> list[StudyEntry]:
    from concurrent.futures import as_completed

    from tqdm import tqdm

    futures = [pool.submit(run_study, j) for j in jobs]
    bar = tqdm(total=len(jobs), unit="study", desc="import", disable=None if progress else True)
    entries = []
    for f in as_completed(futures):
        entries.append(f.result())
        bar.update(1)
    bar.close()
    return entries


def _map_rows(p, jobs: list[StudyJob], problems: list[FileProblem], files: list[str]) -> list[dict]:
    rows = []
    for j in jobs:
        source = os.path.commonpath([os.path.dirname(s.rel) or "." for s in j.slices])
        rows.append({"kind": "patient", "pseudonym": p.patient(j.slices[0].identity),
                     "original": j.slices[0].identity, "source": source})
        rows.append({"kind": "study", "pseudonym": p.uid(j.slices[0].study_uid), "original": j.slices[0].study_uid,
                     "source": f"{j.case}"})
    refs = {p_.ref for p_ in problems}
    rows += [{"kind": "file", "pseudonym": file_ref(p, f), "original": f, "source": ""} for f in files
             if file_ref(p, f) in refs]
    return rows


def write_map(path: Path, rows: list[dict]) -> Path:
    """Merge `rows` into the re-identification table `path` (CSV kind, pseudonym, original, source),
    written atomically with mode 0600: it holds the identities the dataset does not."""
    keyed = {}
    if path.is_file():
        keyed = {(r["kind"], r["pseudonym"]): r for r in csv.DictReader(io.StringIO(path.read_text()))}
    keyed.update({(r["kind"], r["pseudonym"]): r for r in rows})
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=["kind", "pseudonym", "original", "source"])
    w.writeheader()
    w.writerows(sorted(keyed.values(), key=lambda r: (r["kind"], r["pseudonym"])))
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_CREAT | os.O_TRUNC | os.O_WRONLY, 0o600)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(buf.getvalue())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path
