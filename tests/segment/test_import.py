"""`segment import` (segment.importer, mricore.series): classification on a real study, a mixed tree's
manifest, keyed pseudonyms, resuming, and a PHI scan of everything it writes (issue 33, item 2)."""

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import generate_uid

from mricore.dicom import read_dicom_series
from mricore.io import read_nifti
from segment.cli import main
from segment.import_manifest import Manifest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from phi import IDENTIFIERS, find_phi, make_phi_study, source_uids  # noqa: E402

PX = "dicom/ProstateX-0000"
T2, ADC, CALC = "4.000000-t2tsetra-00702", "7.000000-ep2ddifftraDYNDISTADC-48780", "8.000000-ep2ddifftraDYNDISTCALCBVAL-83202"
# ProstateX-0000, six series: (series number, b-value) -> (class, orientation, role or the start of why not)
EXPECTED = {
    (3, None): ("T2W", "sagittal", "not axial"),
    (4, None): ("T2W", "axial", "t2"),
    (5, None): ("T2W", "coronal", "not axial"),
    (6, 50): ("DWI", "axial", "b-value 50 below"),      # the trace series, split by b-value
    (6, 400): ("DWI", "axial", "b-value 400 below"),
    (6, 800): ("DWI", "axial", "b-value 800 below"),
    (7, 800): ("ADC", "axial", "adc"),
    (8, 1000): ("DWI", "axial", "dwi"),                 # the scanner's calculated high-b image
}


def _import(*args) -> int:
    return main(["import", *map(str, args)])


def _restamp(src: Path, dest: Path, patient_id: str, burned_in: bool = False) -> None:
    """Copy a series folder as another patient's study: new patient id, study and series UIDs."""
    dest.mkdir(parents=True)
    for f in sorted(src.iterdir()):
        ds = pydicom.dcmread(f)
        ds.PatientID = patient_id
        ds.StudyInstanceUID = generate_uid(entropy_srcs=[patient_id, "study"])
        ds.SeriesInstanceUID = generate_uid(entropy_srcs=[patient_id, src.name])
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid(entropy_srcs=[patient_id, f.name])
        if burned_in:
            ds.BurnedInAnnotation = "YES"
        ds.save_as(dest / f.name)


@pytest.fixture(scope="module")
def single(data_dir, tmp_path_factory):
    """ProstateX-0000 imported as is: (dataset folder, manifest)."""
    out = tmp_path_factory.mktemp("single") / "dataset"
    assert _import(data_dir / PX, "-o", out) == 0
    return out, Manifest.read(out / "manifest.json")


@pytest.fixture(scope="module")
def mixed(data_dir, tmp_path_factory):
    """A mixed tree: the PHI study (six series, a patient-named folder), a second patient (T2, ADC and a
    burned-in calculated DWI), a third without a T2W, a broken .dcm and a text file. Imported with
    two workers, a key file and DICOM copies: (root, dataset, key file, manifest, the PHI study's UIDs)."""
    tmp = tmp_path_factory.mktemp("mixed")
    root = tmp / "root"
    phi = make_phi_study(data_dir / PX, root)
    for name, burned in ((T2, False), (ADC, False), (CALC, True)):
        _restamp(data_dir / PX / name, root / "second" / name, "PX-SECOND", burned)
    _restamp(data_dir / PX / ADC, root / "third" / "adc", "PX-THIRD")
    uids = source_uids(phi)
    (phi / "broken.dcm").write_bytes(b"\x00not dicom" * 40)
    (root / "notes.txt").write_text("exported for the study\n")
    out, key = tmp / "dataset", tmp / "keys" / "provider.key"
    assert _import(root, "-o", out, "--key-file", key, "--dicom-out", "--workers", 2) == 0
    return root, out, key, Manifest.read(out / "manifest.json"), uids


def test_prostatex_six_series_classified(single):
    _, m = single
    (study,) = m.studies
    got = {(int(s.series_number), None if s.kind == "T2W" else int(s.b_value)): s for s in study.series}
    assert set(got) == set(EXPECTED)
    for key, (kind, orientation, outcome) in EXPECTED.items():
        s = got[key]
        assert (s.kind, s.orientation) == (kind, orientation), key
        assert s.role == outcome if outcome in ("t2", "adc", "dwi") else s.excluded.startswith(outcome), key
        assert s.evidence and s.features["inplane_mm"] > 0
    assert study.status == "written" and sorted(study.outputs) == ["adc.nii.gz", "dwi.nii.gz", "t2.nii.gz"]


def test_written_t2_equals_the_t2_series(single, data_dir):
    out, m = single
    t2 = read_nifti(out / m.studies[0].case / "t2.nii.gz")
    ref = read_dicom_series(data_dir / PX / T2)
    np.testing.assert_array_equal(t2.array, ref.array)
    np.testing.assert_allclose(t2.affine, ref.affine, atol=1e-4)
    dwi = read_nifti(out / m.studies[0].case / "dwi.nii.gz")
    np.testing.assert_array_equal(dwi.array, read_dicom_series(data_dir / PX / CALC).array)


def test_dataset_is_what_mricore_reads(single):
    from mricore.datasets import load_dataset

    out, m = single
    (case,) = load_dataset(out)
    assert case.case_id == m.studies[0].case and sorted(case.images) == ["ADC", "DWI", "T2W"]


def test_mixed_tree_manifest(mixed):
    _, _, key, m, _ = mixed
    by_status = {s.status: [] for s in m.studies}
    for s in m.studies:
        by_status[s.status].append(s)
    assert sorted(len(v) for v in by_status.values()) == [1, 2] and set(by_status) == {"written", "skipped"}
    assert by_status["skipped"][0].reason == "no axial T2W series"
    second = next(s for s in by_status["written"] if len(s.series) == 3)
    burned = next(s for s in second.series if s.kind == "DWI")
    assert burned.excluded.startswith("BurnedInAnnotation") and burned.dicom_out == ""
    assert sorted(second.outputs) == ["adc.nii.gz", "t2.nii.gz"]          # no DWI once the burned-in one is out
    assert sorted((p.suffix, p.reason) for p in m.problems) == [(".dcm", "not a DICOM file"),
                                                                (".txt", "not a DICOM file")]
    rows = (Path(str(key) + ".map.csv")).read_text()
    assert IDENTIFIERS["PatientID"] in rows and all(p.ref in rows for p in m.problems)  # the provider's side only


def test_phi_scan_of_everything_import_wrote(mixed):
    _, out, _, _, uids = mixed
    assert list(out.rglob("*.dcm")), "--dicom-out wrote copies"
    assert find_phi(out, uids | {"second", "third", "notes", "broken"}) == []
    copy = pydicom.dcmread(next(out.rglob("*.dcm")))
    assert copy.PatientIdentityRemoved == "YES" and not any(e.tag.is_private for e in copy.iterall())


def test_same_key_same_pseudonyms_other_key_other_ones(mixed, tmp_path):
    root, _, key, m, _ = mixed
    assert _import(root, "-o", tmp_path / "again", "--key-file", key) == 0
    again = Manifest.read(tmp_path / "again" / "manifest.json")
    assert [(s.case, s.study_uid, [e.series_uid for e in s.series]) for s in again.studies] == \
        [(s.case, s.study_uid, [e.series_uid for e in s.series]) for s in m.studies]
    assert [p.ref for p in again.problems] == [p.ref for p in m.problems]
    assert _import(root, "-o", tmp_path / "other", "--key-file", tmp_path / "other.key") == 0
    other = Manifest.read(tmp_path / "other" / "manifest.json")
    assert not {s.case for s in other.studies} & {s.case for s in m.studies}


def test_rerun_skips_finished_studies(single, data_dir, tmp_path):
    key = tmp_path / "k.key"
    out = tmp_path / "ds"
    assert _import(data_dir / PX, "-o", out, "--key-file", key) == 0
    case = out / Manifest.read(out / "manifest.json").studies[0].case
    before = (case / "t2.nii.gz").stat().st_ino
    assert _import(data_dir / PX, "-o", out, "--key-file", key) == 0            # finished: kept as is
    assert (case / "t2.nii.gz").stat().st_ino == before
    assert Manifest.read(out / "manifest.json").studies[0].status == "written"
    assert _import(data_dir / PX, "-o", out, "--key-file", key, "--force") == 0  # --force: imported again
    assert (case / "t2.nii.gz").stat().st_ino != before


def test_manifest_round_trips(single):
    out, _ = single
    data = json.loads((out / "manifest.json").read_text())
    assert Manifest.from_json(data).to_json() == data and data["counts"] == {"written": 1, "skipped": 0, "failed": 0}


BAD = [  # (how the call goes wrong, what the one-line error says)
    ("missing-root", "DICOM root must be a folder"),
    ("no-dicom", "no DICOM image found"),
    ("output-exists", "output exists and is not an earlier import"),
    ("other-key", "import made with another key"),
    ("workers", "must be at least 1"),
]


@pytest.mark.parametrize("case,message", BAD)
def test_bad_input_is_one_line_exit_2(case, message, single, data_dir, tmp_path, capsys):
    out, _ = single
    root, dest, extra = data_dir / PX, tmp_path / "ds", []
    if case == "missing-root":
        root = tmp_path / "absent"
    elif case == "no-dicom":
        root = tmp_path / "texts"
        root.mkdir()
        (root / "a.txt").write_text("x")
    elif case == "output-exists":
        dest.mkdir()
        (dest / "mine.txt").write_text("x")
    elif case == "other-key":
        dest = tmp_path / "copy"
        shutil.copytree(out, dest)               # made with a one-run key: no later key matches it
    else:
        extra = ["--workers", 0]
    assert _import(root, "-o", dest, *extra) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]


def test_a_failing_study_is_one_line_without_paths(data_dir, tmp_path):
    """Any exception in a study (here: its case folder cannot be made) fails that study alone, with a
    one-line reason that names no source path or folder."""
    from mricore.deid import Pseudonymizer
    from segment.import_study import StudyJob, run_study
    from segment.importer import _scan_file

    root = tmp_path / "Zyxwabbot_Quentinella"
    _restamp(data_dir / PX / T2, root / "t2", "PX-FAIL")
    slices = tuple(_scan_file((root, f"t2/{f.name}")) for f in sorted((root / "t2").iterdir()))
    (tmp_path / "blocked").write_text("a file where the dataset folder should be")
    entry = run_study(StudyJob(root, tmp_path / "blocked", "PZCASE", Pseudonymizer(b"k" * 32), slices))
    assert entry.status == "failed" and "\n" not in entry.reason and entry.reason
    assert "Zyxwabbot" not in entry.reason and str(tmp_path) not in entry.reason
