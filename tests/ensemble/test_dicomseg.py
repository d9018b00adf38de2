"""ensemble.dicomseg on real DICOM with attributes missing or malformed (public de-identified studies
often lack patient-module attributes): every one has its documented fallback, never a traceback."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from ensemble.dicomseg import Identity, write_dicom_seg

T2 = "dicom/ProstateX-0000/4.000000-t2tsetra-00702"
# Each attribute a real export may lack; highdicom read most of them unguarded (AttributeError).
MISSING = ["PatientSex", "PatientID", "PatientName", "PatientBirthDate", "StudyDate", "StudyTime", "StudyID",
           "AccessionNumber", "ReferringPhysicianName", "SeriesNumber", "StudyInstanceUID", "FrameOfReferenceUID",
           "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID", "Modality", "InstanceNumber", "Manufacturer"]


def _edited_copy(src: Path, dest: Path, edit) -> Path:
    import warnings

    import pydicom

    dest.mkdir(parents=True)
    for f in sorted(src.iterdir()):
        ds = pydicom.dcmread(f)
        with warnings.catch_warnings():  # pydicom warns when the test sets a malformed value
            warnings.simplefilter("ignore", UserWarning)
            edit(ds)
        ds.save_as(dest / f.name, enforce_file_format=False)
    return dest


@pytest.fixture(scope="module")
def grid(data_dir):
    """The T2 series' grid and a small zone map on it (TZ block, PZ block)."""
    from mricore.dicom import read_dicom_series

    vol = read_dicom_series(data_dir / T2)
    label = np.zeros(vol.shape, np.uint8)
    label[150:200, 150:200, 8:12], label[150:200, 200:215, 8:12] = 1, 2
    return vol.affine, label


def _drop(names):
    def edit(ds):
        for name in names:
            if name in ds:
                delattr(ds, name)
    return edit


CASES = {name: _drop([name]) for name in MISSING}
CASES["all together"] = _drop(MISSING)


def _malformed(ds):  # values highdicom refuses: a sex other than M/F/O, an ISO date, a free-text time
    ds.PatientSex, ds.StudyDate, ds.StudyTime, ds.PatientBirthDate = "Male", "2011-07-07", "noon", "1927"


CASES["malformed values"] = _malformed
# De-identified (the default) for each; the source identity kept (--keep-identity) for the two hardest.
RUNS = [(name, edit, False) for name, edit in CASES.items()] + [
    (name, CASES[name], True) for name in ("all together", "malformed values")]


@pytest.mark.parametrize("name, edit, keep", RUNS, ids=[f"{n}{' keep' if k else ''}" for n, _, k in RUNS])
def test_missing_or_malformed_attribute_has_its_fallback(data_dir, grid, tmp_path, name, edit, keep):
    import highdicom as hd

    affine, label = grid
    series = _edited_copy(data_dir / T2, tmp_path / "series", edit)
    (series / "notes.txt").write_text("a stray file beside the slices is skipped")
    out = write_dicom_seg(label, affine, series, tmp_path / "seg.dcm", identity=Identity(keep=keep))
    seg = hd.seg.segread(str(out))
    assert seg.PatientIdentityRemoved == "YES" or keep
    frames = seg.get_volume(combine_segments=True).array  # (slices, rows, columns)
    assert int((frames == 1).sum()) == int((label == 1).sum()) and int((frames == 2).sum()) == int((label == 2).sum())


def test_predict_on_a_series_missing_patient_attributes(data_dir, members, tmp_path, capsys):
    """The issue's case (no PatientSex; here every attribute above missing), end to end: a traceback
    before, now exit 0 with seg.dcm and no warning lines."""
    import yaml

    from ensemble.cli import main

    series = _edited_copy(data_dir / T2, tmp_path / "series", _drop(MISSING))
    cfg = tmp_path / "ens.yaml"
    cfg.write_text(yaml.safe_dump({"members": [str(members["t2_a"])]}))
    assert main(["predict", str(series), "--config", str(cfg), "-o", str(tmp_path / "out")]) == 0
    assert (tmp_path / "out" / "seg.dcm").is_file()
    err = capsys.readouterr().err
    assert "Warning" not in err and "Traceback" not in err, err


def test_the_source_files_are_never_changed(data_dir, grid, tmp_path):
    affine, label = grid
    series = tmp_path / "series"
    shutil.copytree(data_dir / T2, series)
    before = {f.name: f.read_bytes() for f in series.iterdir()}
    write_dicom_seg(label, affine, series, tmp_path / "seg.dcm")
    assert {f.name: f.read_bytes() for f in series.iterdir()} == before
