"""A study with known patient identifiers, for the PHI scans of issue 33 (tests/*/test_phi*.py).

`make_phi_study(src, dest)` copies the real DICOM study `../shared/data/dicom/ProstateX-0000` (six
series) into `dest/<patient name folder>/<series>/` and stamps every file with the identifiers below,
plus a private tag, so a scan of everything a command writes can look for each one byte for byte.
`find_phi(folder)` lists (file, identifier) for every identifier found anywhere under a folder, in
raw bytes and in the DICOM-, JSON- and HTML-escaped spellings a writer might use.
"""

from __future__ import annotations

from pathlib import Path

# Chosen to be unique: none of these strings occurs in the software or in the real data.
IDENTIFIERS = {
    "PatientName": "Zyxwabbot^Quentinella",
    "PatientID": "PHIPID-73519",
    "PatientBirthDate": "19270314",
    "AccessionNumber": "ACCPHI88231",
    "InstitutionName": "Quillfeather Infirmary",
    "ReferringPhysicianName": "Vondrakova^Eulalie",
}
PRIVATE_VALUE = "PRIVATE-PHI-4471"
FOLDER = "Zyxwabbot_Quentinella"     # a study folder named after the patient, as hospitals export them
# Spellings a writer may turn a name into (DICOM PN caret, a JSON or HTML escape, spaces).
VARIANTS = {"Zyxwabbot", "Quentinella", "Quillfeather", "Vondrakova", "PHIPID-73519", "ACCPHI88231",
            "19270314", "1927-03-14", PRIVATE_VALUE}


def make_phi_study(src: Path, dest: Path) -> Path:
    """Copy the DICOM study `src` (a folder of series folders) to `dest/FOLDER/` with the identifiers
    stamped into every file; returns the study folder. StudyInstanceUID and SeriesInstanceUIDs are kept
    (they are identifiers too: a scan should look for them, see `source_uids`)."""
    import pydicom

    study = dest / FOLDER
    for series in sorted(p for p in src.iterdir() if p.is_dir()):
        out = study / series.name
        out.mkdir(parents=True)
        for f in sorted(series.iterdir()):
            ds = pydicom.dcmread(f)
            for name, value in IDENTIFIERS.items():
                setattr(ds, name, value)
            block = ds.private_block(0x0029, "PHI TEST", create=True)
            block.add_new(0x01, "LO", PRIVATE_VALUE)
            ds.save_as(out / f.name)
    return study


def source_uids(study: Path) -> set[str]:
    """The study's and series' instance UIDs, which must not leave in a de-identified output either."""
    import pydicom

    uids = set()
    for series in study.iterdir():
        ds = pydicom.dcmread(next(series.iterdir()), stop_before_pixels=True)
        uids |= {str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID)}
    return uids


def find_phi(folder: Path, extra: set[str] = frozenset()) -> list[tuple[str, str]]:
    """(relative file, identifier) for every identifier (VARIANTS, the study folder name and `extra`)
    found in any file under `folder`, its name included, also inside compressed NIfTI and PNG text."""
    import gzip

    needles = {s.encode() for s in VARIANTS | {FOLDER} | set(extra)}
    found = []
    for f in sorted(p for p in Path(folder).rglob("*") if p.is_file()):
        data = f.read_bytes()
        if f.name.endswith(".gz"):
            data += gzip.decompress(data)
        rel = str(f.relative_to(folder))
        found += [(rel, n.decode()) for n in needles if n in data or n.decode() in rel]
    return found
