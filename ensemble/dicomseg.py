"""DICOM-SEG output for a DICOM series input (highdicom): TZ and PZ as two binary segments with SNOMED CT
codes, referencing the source series, one frame per source slice with the geometry of that slice.

The zone map is on the series' own grid (mricore.dicom.read_dicom_series: voxel (i, j, k) = (column,
row, slice along the normal)). Each source file is matched to its slice k by its ImagePositionPatient
through the inverse affine (not by file order), so frame k of the SEG lies exactly on source slice k.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mricore.errors import InputError

# SNOMED CT: (code, meaning). Property category: anatomical structure.
SEGMENTS = {1: ("399384005", "Transition zone of prostate"), 2: ("279706003", "Peripheral zone of prostate")}
CATEGORY = ("91723000", "Anatomical structure")


def source_datasets(folder: Path, affine: np.ndarray, n_slices: int) -> list:
    """The series' datasets ordered by slice index k of `affine`'s grid (one per slice)."""
    import pydicom

    by_k = {}
    inv = np.linalg.inv(affine)
    for f in sorted(p for p in Path(folder).iterdir() if p.is_file() and not p.name.startswith(".")):
        ds = pydicom.dcmread(f)
        lps = np.array([float(v) for v in ds.ImagePositionPatient])
        ras = np.array([-lps[0], -lps[1], lps[2], 1.0])
        k = int(round(float((inv @ ras)[2])))
        if not 0 <= k < n_slices or k in by_k:
            raise InputError(f, "DICOM file does not map to one slice of the series grid", f"slice {k}",
                             "pass a folder holding exactly one series")
        by_k[k] = ds
    if len(by_k) != n_slices:
        raise InputError(folder, "every slice needs its DICOM file", f"{len(by_k)} of {n_slices}", "")
    return [by_k[k] for k in range(n_slices)]


def write_dicom_seg(label: np.ndarray, affine: np.ndarray, series_folder: str | Path, path: str | Path,
                    software: str = "prostate-zones") -> Path:
    """Write `label` (I, J, K uint8 zones on the series grid) as a binary DICOM-SEG at `path`."""
    import highdicom as hd
    from pydicom.sr.codedict import codes
    from pydicom.sr.coding import Code

    sources = source_datasets(Path(series_folder), affine, label.shape[2])
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
    seg.save_as(str(path))
    return Path(path)


def _segmentation(hd, sources, masks, descriptions, software):
    from pydicom.uid import generate_uid

    return hd.seg.Segmentation(
        source_images=sources, pixel_array=masks, segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions, series_instance_uid=generate_uid(), series_number=9901,
        sop_instance_uid=generate_uid(), instance_number=1, manufacturer="prostate-zones",
        manufacturer_model_name="ensemble", software_versions=software, device_serial_number="0",
        series_description="prostate zones (research use)")
