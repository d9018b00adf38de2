"""The DICOM SR measurement report of one prediction (TID 1500 through highdicom.sr), beside its DICOM-SEG.

Content (a Comprehensive 3D SR, one Measurement Report):
- procedure reported: multiparametric MRI of prostate (SNOMED CT 719178004);
- observer: this software, as a device;
- three measurement groups, each with a tracking identifier (WG, TZ, PZ) and one Volume measurement
  (SNOMED CT 118565006) in mL (UCUM "ml"), the volumes of zones.json (mricore.results.zone_volumes_ml):
  - WG (finding type: Prostate, TID 1501): the gland, TZ ∪ PZ, with the review verdict as a qualitative
    evaluation (ok / review / reject; no standard code exists, so a private scheme, `SCHEME`);
  - TZ and PZ (TID 1411): each references its segment of the SEG (ensemble.dicomseg.SEGMENTS numbers).
- evidence: the SEG; the patient and study come from it, so the report lands in the SEG's study with
  the SEG's identity (de-identified or kept, as ensemble.dicomseg.Identity made it); its own dates
  (moved by the same per-patient shift when de-identified) and its de-identification marks
  (PatientIdentityRemoved, DeidentificationMethod...) are the SEG's (`FROM_SEG`).

`read_measurement_report` reads the volumes and the verdict back (a viewer's or a test's view).
"""

from __future__ import annotations

from pathlib import Path

from mricore.errors import InputError
from mricore.results import SEG_DCM, ZONES_JSON

from .dicomseg import SEGMENTS

SCHEME = "99PZONES"  # private coding scheme (DICOM PS3.16 8.2: "99" + a local name) for the verdict
VERDICTS = {"ok": "No finding for review", "review": "Needs review by a reader", "reject": "Rejected input"}
ZONE_SEGMENT = {"TZ": 1, "PZ": 2}  # tracking identifier -> segment number of the SEG
SERIES_NUMBER = 9902               # the SEG is 9901 (ensemble.dicomseg)
# Copied from the SEG: its own dates (shifted with the patient when de-identified) and its de-identification.
FROM_SEG = ("ContentDate", "ContentTime", "SeriesDate", "SeriesTime", "InstanceCreationDate", "InstanceCreationTime",
            "PatientIdentityRemoved", "DeidentificationMethod", "DeidentificationMethodCodeSequence")


def _codes():
    from pydicom.sr.coding import Code

    return {"prostate": Code("41216001", "SCT", "Prostate"),
            "procedure": Code("719178004", "SCT", "Multiparametric magnetic resonance imaging of prostate"),
            "volume": Code("118565006", "SCT", "Volume"), "ml": Code("ml", "UCUM", "milliliter"),
            "verdict": Code("verdict", SCHEME, "Automated review verdict")}


def measurement_report(seg, record, software: str = "prostate-zones"):
    """The SR (highdicom.sr.Comprehensive3DSR) of `record` (mricore.results.ZonesRecord: volume_ml,
    review) for the SEG dataset `seg` it describes (module docstring). Raises InputError when the
    record lacks a volume or the SEG a segment."""
    import warnings

    import highdicom as hd
    from pydicom.sr.coding import Code
    from pydicom.uid import generate_uid

    c = _codes()
    volumes = record.volume_ml
    missing = [z for z in ("WG", "TZ", "PZ") if not isinstance(volumes.get(z), (int, float))]
    if missing:
        raise InputError(ZONES_JSON, "volume_ml needs WG, TZ and PZ in mL", f"missing {missing}",
                         "predict the case again with this software")
    verdict = (record.review or {}).get("verdict", "review")
    source_series = str(seg.ReferencedSeriesSequence[0].SeriesInstanceUID)
    algorithm = hd.sr.AlgorithmIdentification(name=software, version=record.software_version or "1")

    def volume(zone):
        return [hd.sr.Measurement(name=c["volume"], value=float(volumes[zone]), unit=c["ml"], algorithm_id=algorithm)]

    gland = hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=generate_uid(), identifier="WG"),
        finding_type=c["prostate"], algorithm_id=algorithm, measurements=volume("WG"),
        qualitative_evaluations=[hd.sr.QualitativeEvaluation(
            c["verdict"], Code(verdict, SCHEME, VERDICTS.get(verdict, verdict)))])
    zones = []
    for zone, number in ZONE_SEGMENT.items():
        if number not in {int(s.SegmentNumber) for s in seg.get("SegmentSequence", [])}:
            raise InputError(SEG_DCM, f"the SEG needs segment {number} ({zone})", "absent",
                             "write the SEG with ensemble.dicomseg.write_dicom_seg")
        # The source series, not each source image: the SR's evidence is the SEG alone.
        ref = hd.sr.ReferencedSegment(seg.SOPClassUID, seg.SOPInstanceUID, number,
                                      source_series=hd.sr.SourceSeriesForSegmentation(source_series))
        zones.append(hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
            tracking_identifier=hd.sr.TrackingIdentifier(uid=generate_uid(), identifier=zone),
            referenced_segment=ref, finding_type=Code(SEGMENTS[number][0], "SCT", SEGMENTS[number][1]),
            algorithm_id=algorithm, measurements=volume(zone)))
    device = hd.sr.ObserverContext(observer_type=hd.sr.CodedConcept("121007", "DCM", "Device"),
                                   observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
                                       uid=generate_uid(), name=software))
    report = hd.sr.MeasurementReport(observation_context=hd.sr.ObservationContext(observer_device_context=device),
                                     procedure_reported=c["procedure"], imaging_measurements=[gland, *zones])
    with warnings.catch_warnings():  # highdicom warns about single-component patient names (ProstateX-0000)
        warnings.simplefilter("ignore", UserWarning)
        sr = hd.sr.Comprehensive3DSR(evidence=[seg], content=report, series_instance_uid=generate_uid(),
                                     series_number=SERIES_NUMBER, sop_instance_uid=generate_uid(), instance_number=1,
                                     manufacturer=software, is_complete=True,
                                     series_description="prostate zone volumes (research use)")
    for keyword in FROM_SEG:
        if seg.get(keyword):
            setattr(sr, keyword, seg.get(keyword))
    return sr


def write_measurement_report(seg_path: str | Path, record, path: str | Path) -> Path:
    """Read the SEG at `seg_path`, write its measurement report for `record` at `path` (atomically)."""
    import os

    import pydicom

    sr = measurement_report(pydicom.dcmread(seg_path), record)
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        sr.save_as(tmp, enforce_file_format=True)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def read_measurement_report(ds) -> dict:
    """{"volume_ml": {WG, TZ, PZ}, "verdict": str | None, "segments": {zone: segment number}} from an SR
    written by `measurement_report` (any TID 1500 report with those tracking identifiers)."""
    out = {"volume_ml": {}, "verdict": None, "segments": {}}
    for group in _groups(ds):
        zone = next((str(i.TextValue) for i in group.ContentSequence if _name(i) == "112039"), None)
        for item in group.ContentSequence:
            if _name(item) == "118565006" and zone:
                out["volume_ml"][zone] = float(item.MeasuredValueSequence[0].NumericValue)
            elif _name(item) == "verdict":
                out["verdict"] = str(item.ConceptCodeSequence[0].CodeValue)
            elif item.get("ReferencedSOPSequence") and zone:
                ref = item.ReferencedSOPSequence[0]
                out["segments"][zone] = int(ref.ReferencedSegmentNumber)
    return out


def _name(item) -> str:
    seq = item.get("ConceptNameCodeSequence")
    return str(seq[0].CodeValue) if seq else ""


def _groups(ds):
    """Every Measurement Group container (DCM 125007) of the content tree, depth first."""
    for item in ds.get("ContentSequence", []):
        if item.get("ValueType") == "CONTAINER" and _name(item) == "125007":
            yield item
        else:
            yield from _groups(item)
