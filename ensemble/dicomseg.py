"""DICOM-SEG output for a DICOM series input (highdicom): TZ and PZ as two binary segments with SNOMED CT
codes, referencing the source series, one frame per source slice with the geometry of that slice.

The zone map is on the series' own grid (mricore.dicom.read_dicom_series: voxel (i, j, k) = (column,
row, slice along the normal)). Each source file is matched to its slice k by its ImagePositionPatient
through the inverse affine (not by file order), so frame k of the SEG lies exactly on source slice k.
A file of the folder that is not DICOM (a stray note or thumbnail) is skipped, as the series reader
skips it. The source files are never changed: everything below happens to copies in memory.

Identity (`Identity`; highdicom copies the source's patient and study modules into the SEG):
- default: the source datasets are de-identified first by the DICOM PS3.15 Basic Profile
  (mricore.deid.Pseudonymizer: pseudonymous PatientID/PatientName, dates shifted per patient, instance
  UIDs replaced, private tags removed) with a random key made for this case, and the SEG is built from
  them: it references the de-identified series, study and frame of reference. Its own dates (content,
  instance creation) move by the same per-patient shift, or a SEG made on the day of the scan would
  give the study date away.
- `key_file` (--key-file): the provider's key instead, so the pseudonyms and UIDs are those that
  `segment import --dicom-out` writes with that key: the SEG references the de-identified copies.
- `keep` (--keep-identity): the source's identity as is, for a round trip into the hospital's PACS.
- A source that says it is de-identified already (PatientIdentityRemoved YES) is de-identified again
  all the same: the flag is the sender's claim, not a check (a series can carry it beside a real
  name), and a leak costs more than a broken link. The SEG then references new UIDs; to reference the
  series as you hold it (a public de-identified collection, or the copies `segment import --dicom-out`
  wrote), pass --keep-identity: the identity it keeps is the provider's pseudonyms. (Not --key-file:
  the copies' UIDs would be replaced a second time.)

Missing or malformed attributes never stop the writer; each has a fallback (`complete`):
- PatientID, PatientName, PatientBirthDate, PatientSex, StudyDate, StudyTime, StudyID,
  AccessionNumber, ReferringPhysicianName (type 2 in the SEG's patient and study modules): empty when
  absent, and when the value is not valid DICOM (a PatientSex other than M/F/O, a date not YYYYMMDD);
- StudyInstanceUID, SeriesInstanceUID, FrameOfReferenceUID (type 1): a UID derived from the series
  (its SeriesInstanceUID, else its pixel data), the same on every run for the same files;
- SOPInstanceUID (type 1, each frame references one): derived from the series UID and slice index;
- SOPClassUID and Modality: MR Image Storage and MR (the series reader read it as an image; MR is what
  this software segments);
- SeriesNumber, InstanceNumber, Manufacturer and the like are not needed: the SEG has its own.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mricore.errors import InputError

# SNOMED CT: (code, meaning). Property category: anatomical structure.
SEGMENTS = {1: ("399384005", "Transition zone of prostate"), 2: ("279706003", "Peripheral zone of prostate")}
CATEGORY = ("91723000", "Anatomical structure")
MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"
# Type 2 attributes highdicom reads from the source (empty is a valid value), and the check of each.
TYPE2 = ("PatientID", "PatientName", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime", "StudyID",
         "AccessionNumber", "ReferringPhysicianName")
SEG_DATES = ("ContentDate", "InstanceCreationDate", "SeriesDate")  # the SEG's own dates (highdicom: today)


@dataclass(frozen=True)
class Identity:
    """Whose identity seg.dcm carries (module docstring). Default: de-identified with a random key.

    keep: the source's identity as is (--keep-identity). key_file: the provider's key (--key-file).
    Example: Identity(key_file="provider.key").check() before any work, then write_dicom_seg(..., identity).
    """

    keep: bool = False
    key_file: str | Path | None = None

    def check(self) -> "Identity":
        """Raise InputError for both switches at once, or a key file that cannot be read; returns self."""
        if self.keep and self.key_file is not None:
            raise InputError("--keep-identity", "keeps the source identity, --key-file pseudonymises: not both",
                             "both", "pass one of them")
        self.pseudonymizer()
        return self

    def pseudonymizer(self):
        """The mricore.deid.Pseudonymizer to apply, or None with `keep`."""
        from mricore.deid import Pseudonymizer

        if self.keep:
            return None
        return Pseudonymizer.ephemeral() if self.key_file is None else Pseudonymizer.from_key_file(self.key_file)


def read_sources(folder: Path) -> list:
    """Every DICOM dataset in `folder` (pixel data included), skipping files that are not DICOM."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    sources = []
    for f in sorted(p for p in Path(folder).iterdir() if p.is_file() and not p.name.startswith(".")):
        try:
            sources.append((f, pydicom.dcmread(f)))
        except InvalidDicomError:
            continue
    return sources


def source_datasets(folder: Path, affine: np.ndarray, n_slices: int) -> list:
    """The series' datasets ordered by slice index k of `affine`'s grid (one per slice)."""
    by_k = {}
    inv = np.linalg.inv(affine)
    for f, ds in read_sources(folder):
        lps = np.array([float(v) for v in ds.ImagePositionPatient])
        ras = np.array([-lps[0], -lps[1], lps[2], 1.0])
        k = int(round(float((inv @ ras)[2])))
        if not 0 <= k < n_slices or k in by_k:
            raise InputError(f.name, "DICOM file does not map to one slice of the series grid", f"slice {k}",
                             "pass a folder holding exactly one series")
        by_k[k] = ds
    if len(by_k) != n_slices:
        raise InputError(Path(folder).name, "every slice needs its DICOM file", f"{len(by_k)} of {n_slices}",
                         "pass the complete series folder")
    return [by_k[k] for k in range(n_slices)]


def complete(sources: list) -> None:
    """Give every attribute the SEG needs a value, in place (module docstring: the fallbacks)."""
    from pydicom.uid import generate_uid
    from pydicom.valuerep import DA, TM

    digest = hashlib.sha256()
    for ds in sources:
        digest.update(hashlib.sha256(bytes(ds.get("PixelData", b""))).digest())
    seed = str(sources[0].get("SeriesInstanceUID", "") or "") or digest.hexdigest()
    derived = {k: generate_uid(entropy_srcs=[k, seed]) for k in
               ("StudyInstanceUID", "SeriesInstanceUID", "FrameOfReferenceUID")}
    checks = {"PatientSex": lambda v: v in ("M", "F", "O"), "PatientBirthDate": DA, "StudyDate": DA, "StudyTime": TM}
    for k, ds in enumerate(sources):
        for keyword, uid in derived.items():
            if not str(ds.get(keyword, "") or ""):
                setattr(ds, keyword, uid)
        if not str(ds.get("SOPInstanceUID", "") or ""):
            ds.SOPInstanceUID = generate_uid(entropy_srcs=["SOPInstanceUID", seed, str(k)])
        if not str(ds.get("SOPClassUID", "") or ""):
            ds.SOPClassUID = MR_IMAGE_STORAGE
        if not str(ds.get("Modality", "") or ""):
            ds.Modality = "MR"
        for keyword in TYPE2:
            value = ds.get(keyword)
            if value is None or (value != "" and not _valid(checks.get(keyword), str(value))):
                setattr(ds, keyword, "")


def _valid(check, value: str) -> bool:
    if check is None:
        return True
    try:
        return bool(check(value)) or value == ""
    except (ValueError, TypeError):
        return False


def deidentify(sources: list, identity: Identity):
    """De-identify `sources` in place as `identity` says; the per-patient date shift in days for the
    SEG's own dates (0 with `keep`)."""
    from mricore.deid import identity_of

    p = identity.pseudonymizer()
    if p is None:
        return 0
    shift = p.date_shift_days(identity_of(sources[0]))
    for ds in sources:
        p.deidentify(ds)
    return shift


def write_dicom_seg(label: np.ndarray, affine: np.ndarray, series_folder: str | Path, path: str | Path,
                    software: str = "prostate-zones", identity: Identity = Identity()) -> Path:
    """Write `label` (I, J, K uint8 zones on the series grid) as a binary DICOM-SEG at `path`, its
    identity as `identity` says (module docstring); never fails on a missing source attribute."""
    import highdicom as hd
    from pydicom.sr.codedict import codes
    from pydicom.sr.coding import Code

    sources = source_datasets(Path(series_folder), affine, label.shape[2])
    complete(sources)  # before de-identification, so derived UIDs are replaced like the others
    shift = deidentify(sources, identity)
    complete(sources)  # the profile may empty or remove what the SEG needs
    # (frames, rows, columns, segments): frame k = slice k, rows = j, columns = i.
    masks = np.stack([np.stack([(label[:, :, k] == v).T for v in SEGMENTS], axis=-1)
                      for k in range(label.shape[2])]).astype(np.uint8)
    algo = hd.AlgorithmIdentificationSequence(name=software, version="1",
                                              family=codes.cid7162.ArtificialIntelligence)
    descriptions = [hd.seg.SegmentDescription(
        segment_number=n, segment_label=meaning.split(" of ")[0],
        segmented_property_category=Code(CATEGORY[0], "SCT", CATEGORY[1]),
        segmented_property_type=Code(code, "SCT", meaning),
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=algo) for n, (code, meaning) in enumerate(SEGMENTS.values(), start=1)]
    import warnings

    with warnings.catch_warnings():  # highdicom warns about single-component patient names (ProstateX-0000)
        warnings.simplefilter("ignore", UserWarning)
        seg = _segmentation(hd, sources, masks, descriptions, software)
    _shift_dates(seg, shift)
    seg.save_as(str(path))
    return Path(path)


def _shift_dates(seg, days: int) -> None:
    """Move the SEG's own dates (today, set by highdicom) by the patient's shift."""
    import datetime

    from pydicom.valuerep import DA

    for keyword in SEG_DATES if days else ():
        value = seg.get(keyword)
        if value:
            day = datetime.datetime.strptime(str(value), "%Y%m%d").date() + datetime.timedelta(days=days)
            setattr(seg, keyword, DA(day))


def _segmentation(hd, sources, masks, descriptions, software):
    from pydicom.uid import generate_uid

    return hd.seg.Segmentation(
        source_images=sources, pixel_array=masks, segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions, series_instance_uid=generate_uid(), series_number=9901,
        sop_instance_uid=generate_uid(), instance_number=1, manufacturer="prostate-zones",
        manufacturer_model_name="ensemble", software_versions=software, device_serial_number="0",
        series_description="prostate zones (research use)")
