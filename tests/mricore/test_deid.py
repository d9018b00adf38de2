"""mricore.deid: keyed, consistent pseudonyms and the PS3.15 profile through dicognito (issue 33)."""

import os
import stat
import sys
from datetime import datetime
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset

from mricore.deid import Pseudonymizer, identity_of, is_deidentified
from mricore.errors import InputError

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from phi import IDENTIFIERS, find_phi, make_phi_study, source_uids  # noqa: E402

KEY_A, KEY_B = b"a" * 32, b"b" * 32


@pytest.fixture(scope="module")
def phi_study(data_dir, tmp_path_factory):
    return make_phi_study(data_dir / "dicom" / "ProstateX-0000", tmp_path_factory.mktemp("phi"))


def _first(study: Path, series: str = "4.000000-t2tsetra-00702") -> Path:
    return sorted((study / series).iterdir())[0]


def _deidentified(path: Path, key: bytes) -> Dataset:
    ds = pydicom.dcmread(path)
    Pseudonymizer(key).deidentify(ds)
    return ds


def test_same_key_same_pseudonyms_other_key_other_ones(phi_study):
    f = _first(phi_study)
    a1, a2, b = _deidentified(f, KEY_A), _deidentified(f, KEY_A), _deidentified(f, KEY_B)
    for keyword in ("PatientID", "PatientName", "StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID",
                    "FrameOfReferenceUID", "StudyDate", "AccessionNumber", "ReferringPhysicianName"):
        assert a1.get(keyword) == a2.get(keyword), keyword          # same key: the same every run
    for keyword in ("PatientID", "StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"):
        assert a1.get(keyword) != b.get(keyword), keyword            # another key: another one
    p = Pseudonymizer(KEY_A)
    assert str(a1.PatientID) == str(a1.PatientName) == p.patient(IDENTIFIERS["PatientID"])
    assert a1.StudyInstanceUID == p.uid(pydicom.dcmread(f).StudyInstanceUID)
    assert p.date_shift_days("x") == Pseudonymizer(KEY_A).date_shift_days("x") != Pseudonymizer(KEY_B).date_shift_days("x")


def test_pseudonym_uid_and_shift_formats():
    p = Pseudonymizer(KEY_A)
    assert p.patient("123").startswith("PZ") and len(p.patient("123")) == 12 and p.patient("123") != p.patient("124")
    uids = [p.uid(f"1.2.3.{i}") for i in range(200)]
    assert all(u.startswith("2.25.") and len(u) <= 64 and not u[5:].startswith("0") for u in uids)
    assert len(set(uids)) == 200
    shifts = [p.date_shift_days(str(i)) for i in range(200)]
    assert all(-3650 <= s <= -1 for s in shifts) and len(set(shifts)) > 100


def test_references_stay_consistent_across_series(phi_study):
    """Every series of the study gets the same pseudonym, study UID and shifted date, its own series UID."""
    t2, adc = (_deidentified(_first(phi_study, s), KEY_A) for s in
               ("4.000000-t2tsetra-00702", "7.000000-ep2ddifftraDYNDISTADC-48780"))
    assert t2.StudyInstanceUID == adc.StudyInstanceUID and t2.SeriesInstanceUID != adc.SeriesInstanceUID
    assert t2.PatientID == adc.PatientID and t2.StudyDate == adc.StudyDate


def test_dates_shift_per_patient(phi_study):
    f = _first(phi_study)
    ds = pydicom.dcmread(f)
    before = ds.StudyDate
    Pseudonymizer(KEY_A).deidentify(ds)
    days = (datetime.strptime(ds.StudyDate, "%Y%m%d") - datetime.strptime(before, "%Y%m%d")).days
    assert days == Pseudonymizer(KEY_A).date_shift_days(IDENTIFIERS["PatientID"])
    assert ds.PatientBirthDate == ""  # the profile empties it (Z); a shifted birth date still narrows who it is


def test_phi_gone_after_deidentify(phi_study, tmp_path):
    """The identifiers of tests/phi.py, the private tag and the source UIDs: none left in any file."""
    for series in sorted(phi_study.iterdir()):
        ds = _deidentified(sorted(series.iterdir())[0], KEY_A)
        assert is_deidentified(ds) and "PS3.15 Basic Profile" in ds.DeidentificationMethod
        assert any(v.startswith("dicognito ") for v in ds.DeidentificationMethod)
        assert not any(e.tag.is_private for e in ds.iterall())
        ds.save_as(tmp_path / f"{series.name[:2]}.dcm")
    assert find_phi(tmp_path, source_uids(phi_study)) == []


def test_missing_attributes_work():
    """Real de-identified DICOM lacks PatientID, PatientSex, dates, file meta...: never a crash."""
    ds = Dataset()
    ds.Modality, ds.SOPInstanceUID, ds.StudyInstanceUID = "MR", "1.2.3.4", "1.2.3"
    Pseudonymizer(KEY_A).deidentify(ds)
    assert is_deidentified(ds) and ds.SOPInstanceUID == Pseudonymizer(KEY_A).uid("1.2.3.4")
    assert ds.PatientID == Pseudonymizer(KEY_A).patient("study:1.2.3")   # one unknown patient per study
    assert "PatientSex" not in ds and "StudyDate" not in ds and getattr(ds, "file_meta", None) is None
    Pseudonymizer(KEY_A).deidentify(Dataset())                          # nothing at all: still no crash


def test_burned_in_is_not_marked_removed():
    ds = Dataset()
    ds.BurnedInAnnotation = "YES"
    Pseudonymizer(KEY_A).deidentify(ds)
    assert not is_deidentified(ds) and not is_deidentified(Dataset())


IDENTITY_CASES = [  # (attributes, identity): PatientID first, then the name, then the study
    ({"PatientID": "P1", "PatientName": "N"}, "P1"),
    ({"PatientName": "N", "StudyInstanceUID": "1.2"}, "name:N"),
    ({"PatientID": "  ", "StudyInstanceUID": "1.2"}, "study:1.2"),
    ({}, ""),
]


@pytest.mark.parametrize("attrs,identity", IDENTITY_CASES)
def test_identity_of(attrs, identity):
    ds = Dataset()
    for k, v in attrs.items():
        setattr(ds, k, v)
    assert identity_of(ds) == identity


def test_key_file_created_0600_and_read_back(tmp_path):
    path = tmp_path / "keys" / "provider.key"
    a = Pseudonymizer.from_key_file(path, create=True)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert Pseudonymizer.from_key_file(path).patient("x") == a.patient("x")
    assert Pseudonymizer.ephemeral().patient("x") != Pseudonymizer.ephemeral().patient("x")


BAD_KEYS = [  # (file content or None for a missing file, what the error names)
    (None, "key file not found"),
    ("not hex\n", "hex digits"),
    ("abcd\n", "at least 16 bytes"),
]


@pytest.mark.parametrize("content,rule", BAD_KEYS)
def test_bad_key_files(tmp_path, content, rule):
    path = tmp_path / "k.key"
    if content is not None:
        path.write_text(content)
    with pytest.raises(InputError, match=rule):
        Pseudonymizer.from_key_file(path)
