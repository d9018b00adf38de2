"""Privacy by default (issue 33): `ensemble predict` on a study stamped with known identifiers
(tests/phi.py), one case and a cohort, writes none of them, nor the source UIDs, nor the patient's
folder name, anywhere (every byte of every file, stdout and stderr); --keep-identity keeps them in
seg.dcm and nowhere else; with a provider key, seg.dcm references the series by the keyed UID."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import yaml
from phi import FOLDER, IDENTIFIERS, VARIANTS, find_phi, make_phi_study, source_uids  # tests/ is on sys.path

from ensemble.cli import main

T2 = "4.000000-t2tsetra-00702"


@pytest.fixture(scope="module")
def study(data_dir, tmp_path_factory) -> Path:
    """The real ProstateX-0000 study with known identifiers, in a folder named after the patient."""
    return make_phi_study(data_dir / "dicom" / "ProstateX-0000", tmp_path_factory.mktemp("phi"))


@pytest.fixture(scope="module")
def config(members, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("cfg") / "ens.yaml"
    path.write_text(yaml.safe_dump({"members": [str(members["t2_a"])]}))
    return path


def _needles(study: Path) -> set[str]:
    return source_uids(study) | {str(study.parent)}


def _scan_text(text: str, study: Path) -> list[str]:
    return [n for n in VARIANTS | {FOLDER} | _needles(study) if n in text]


def test_one_dicom_case_writes_no_identifier(study, config, tmp_path, capsys):
    """The series given in a folder named after the patient (as some exports name it): the case id
    comes from its images, not its folder."""
    import shutil

    series = shutil.copytree(study / T2, tmp_path / FOLDER)
    out = tmp_path / "out"
    assert main(["predict", str(series), "--config", str(config), "-o", str(out), "--report",
                 "--probabilities"]) == 0
    printed = capsys.readouterr()
    assert (out / "seg.dcm").is_file() and (out / "report.html").is_file()
    assert find_phi(out, _needles(study) | {str(tmp_path)}) == []  # no local path either
    assert _scan_text(printed.out + printed.err, study) == []
    from mricore.results import read_case

    record = read_case(out)
    assert record.inputs == ["T2W"] and record.case_id.startswith("dicom-")


def test_a_cohort_holding_the_series_writes_no_identifier(study, config, tmp_path, capsys):
    """A datalist whose T2W is the DICOM series in the patient's folder (the cohort input that carries
    DICOM); the case id is the datalist's own (the user's naming). A second case fails on a broken file
    in the patient's folder: its one-line reason (summary.csv) and its log name no local path."""
    broken = tmp_path / FOLDER / "t2.nii.gz"
    broken.parent.mkdir()
    broken.write_bytes(b"not a NIfTI")
    datalist = tmp_path / "cohort.csv"
    with datalist.open("w", newline="") as f:
        csv.writer(f).writerows([["patient_id", "T2W"], ["case-a", str(study / T2)], ["case-b", str(broken)]])
    out = tmp_path / "out"
    assert main(["predict", str(datalist), "--config", str(config), "-o", str(out), "--report"]) == 2
    printed = capsys.readouterr()
    assert (out / "case-a" / "seg.dcm").is_file() and (out / "summary.csv").is_file()
    assert "case-b,failed" in (out / "summary.csv").read_text() and (out / "logs" / "case-b.log").is_file()
    assert find_phi(out, _needles(study) | {str(tmp_path)}) == []
    assert _scan_text(printed.out + printed.err, study) == []


def test_keep_identity_on_a_cohort_keeps_it_in_seg_dcm_only(study, config, tmp_path, capsys):
    datalist = tmp_path / "cohort.csv"
    datalist.write_text(f"patient_id,T2W\ncase-a,{study / T2}\n")
    out = tmp_path / "out"
    assert main(["predict", str(datalist), "--config", str(config), "-o", str(out), "--keep-identity"]) == 0
    assert {f for f, _ in find_phi(out, _needles(study))} == {"case-a/seg.dcm"}


def test_keep_identity_keeps_it_in_seg_dcm_and_nowhere_else(study, config, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["predict", str(study / T2), "--config", str(config), "-o", str(out), "--report",
                 "--keep-identity"]) == 0
    found = find_phi(out, _needles(study))
    assert {f for f, _ in found} == {"seg.dcm"}
    kept = {n for _, n in found}
    assert {"Zyxwabbot", "Quentinella", IDENTIFIERS["PatientID"], IDENTIFIERS["PatientBirthDate"],
            IDENTIFIERS["AccessionNumber"], "Vondrakova"} <= kept
    assert source_uids(study) & kept  # the SEG references the series as the hospital holds it
    printed = capsys.readouterr()
    assert _scan_text(printed.out + printed.err, study) == []


def test_with_the_provider_key_seg_references_the_keyed_series_uid(study, config, tmp_path):
    """The consistency promise: the same key gives `segment import --dicom-out`'s UIDs and pseudonym."""
    import pydicom

    from mricore.deid import Pseudonymizer, identity_of

    key = tmp_path / "provider.key"
    p = Pseudonymizer.from_key_file(key, create=True)
    out = tmp_path / "out"
    assert main(["predict", str(study / T2), "--config", str(config), "-o", str(out), "--key-file", str(key)]) == 0
    source = pydicom.dcmread(next((study / T2).iterdir()), stop_before_pixels=True)
    seg = pydicom.dcmread(out / "seg.dcm")
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == p.uid(source.SeriesInstanceUID)
    assert seg.StudyInstanceUID == p.uid(source.StudyInstanceUID)
    assert seg.FrameOfReferenceUID == p.uid(source.FrameOfReferenceUID)
    assert seg.PatientID == p.patient(identity_of(source)) and seg.PatientIdentityRemoved == "YES"
    assert find_phi(out, _needles(study)) == []


BAD_FLAGS = {
    # both switches: one keeps, the other pseudonymises
    "keep and key": (["--keep-identity", "--key-file", "KEY"], "not both"),
    # a key file that does not exist is not created by predict (only the import creates keys)
    "missing key file": (["--key-file", "KEY"], "key file not found"),
}


@pytest.mark.parametrize("flags, message", BAD_FLAGS.values(), ids=BAD_FLAGS.keys())
def test_bad_identity_flags_are_one_line_errors_before_any_work(study, config, tmp_path, capsys, flags, message):
    flags = [str(tmp_path / "none.key") if f == "KEY" else f for f in flags]
    out = tmp_path / "out"
    assert main(["predict", str(study / T2), "--config", str(config), "-o", str(out), *flags]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1 and not out.exists()


@pytest.mark.parametrize("cohort", [False, True], ids=["one case", "cohort"])
def test_segment_predict_writes_no_identifier(study, members, tmp_path, capsys, cohort):
    """`segment predict` reads inputs through the same resolver: its outputs are as clean."""
    from segment.cli import main as segment_main

    given = study / T2
    if cohort:
        given = tmp_path / "cohort.csv"
        given.write_text(f"patient_id,T2W\ncase-a,{study / T2}\n")
    out = tmp_path / "out"
    assert segment_main(["predict", "--model", str(members["t2_a"]), str(given), "-o", str(out)]) == 0
    printed = capsys.readouterr()
    assert find_phi(out, _needles(study)) == []
    assert _scan_text(printed.out + printed.err, study) == []
