"""`ensemble predict --dicomweb URL --study UID -o OUT --stow` against the /dicom-web of a real Orthanc
(tests/orthanc.py): the study retrieved over WADO-RS gives the zones of `ensemble predict` on its
series, and the SEG and SR stored over STOW-RS land in the same study. Bad requests end with one line
and exit code 2, nothing written."""

import io
import json

import nibabel as nib
import numpy as np
import pydicom
import pytest

from ensemble.cli import main
from tests.orthanc import ADC, STUDY, T2, free_port, seg_labels, started


@pytest.fixture(scope="module")
def pacs(members, data_dir, tmp_path_factory):
    """Orthanc holding the six series of ProstateX-0000; (Orthanc, StudyInstanceUID, ensemble config)."""
    with started(tmp_path_factory, members, "dicomweb") as (o, cfg):
        study = o.upload(sorted((data_dir / STUDY).glob("*/*.dcm")))
        yield o, o.get(f"/studies/{study}")["MainDicomTags"]["StudyInstanceUID"], cfg


def test_study_over_dicomweb_predicts_and_stores_seg_and_sr_in_the_same_study(pacs, data_dir, tmp_path, capsys):
    from ensemble.sr import read_measurement_report

    orthanc, uid, cfg = pacs
    out, ref = tmp_path / "out", tmp_path / "ref"
    assert main(["predict", "--dicomweb", orthanc.dicomweb, "--study", uid, "-o", str(out), "--config", str(cfg),
                 "--stow", "--keep-identity"]) == 0
    assert "stored over STOW-RS" in capsys.readouterr().out
    study = data_dir / STUDY
    assert main(["predict", str(study / T2), str(study / ADC), "--config", str(cfg), "-o", str(ref)]) == 0
    zones = np.asarray(nib.load(str(out / "zones.nii.gz")).dataobj)
    np.testing.assert_array_equal(zones, np.asarray(nib.load(str(ref / "zones.nii.gz")).dataobj))
    assert json.loads((out / "zones.json").read_text())["inputs"] == ["T2W", "ADC"]

    found = orthanc.wait_for(uid, ("SEG", "SR"), timeout=30)
    assert len(found["SEG"]) == len(found["SR"]) == 1  # in the patient's own study
    np.testing.assert_array_equal(seg_labels(orthanc.instance_file(found["SEG"][0]), study / T2, out / "zones.nii.gz"),
                                  zones)
    sr = read_measurement_report(pydicom.dcmread(io.BytesIO(orthanc.instance_file(found["SR"][0]))))
    assert sr["volume_ml"] == pytest.approx(json.loads((out / "zones.json").read_text())["volume_ml"], abs=1e-6)


def test_without_keep_identity_the_results_go_to_a_pseudonymous_study(pacs, tmp_path):
    orthanc, uid, cfg = pacs
    before = set(orthanc.get("/studies"))
    assert main(["predict", "--dicomweb", orthanc.dicomweb, "--study", uid, "-o", str(tmp_path / "out"),
                 "--config", str(cfg), "--stow"]) == 0
    (new,) = set(orthanc.get("/studies")) - before
    seg = pydicom.dcmread(io.BytesIO(orthanc.instance_file(orthanc.series_of(new, "SEG")[0])))
    sr = pydicom.dcmread(io.BytesIO(orthanc.instance_file(orthanc.series_of(new, "SR")[0])))
    for ds in (seg, sr):
        assert ds.StudyInstanceUID != uid and ds.PatientID != "ProstateX-0000" and ds.PatientIdentityRemoved == "YES"
    assert sr.StudyInstanceUID == seg.StudyInstanceUID and sr.PatientID == seg.PatientID


# Each bad request (arguments after `predict`, the text the one-line error holds); nothing is written.
BAD = [
    (["--study", "1.2.3"], "--study and --stow need --dicomweb"),                          # no server
    (["INPUT.nii.gz", "--dicomweb", "{url}", "--study", "1.2.3"], "no INPUT"),             # both sources
    (["--dicomweb", "{url}"], "takes --study UID"),                                        # no study
    (["--dicomweb", "ftp://127.0.0.1/dicom-web", "--study", "1.2.3"], "http(s) URL"),      # not HTTP
    (["--dicomweb", "{url}", "--study", "1.2.x"], "must be a DICOM UID"),                  # not a UID
    (["--dicomweb", "{url}", "--study", "1.2.3.4"], "no such study"),                      # unknown study
    (["--dicomweb", "http://127.0.0.1:{free}/dicom-web", "--study", "1.2.3"], "could not be reached"),
    (["--dicomweb", "http://8.8.8.8:1/dicom-web", "--study", "1.2.3", "--stow"], "local network"),  # rule first
]


@pytest.mark.parametrize("args,needle", BAD)
def test_bad_dicomweb_request_is_one_line_and_writes_nothing(pacs, args, needle, tmp_path, capsys):
    orthanc, _, cfg = pacs
    args = [a.format(url=orthanc.dicomweb, free=free_port()) for a in args]
    out = tmp_path / "out"
    code = main(["predict", *args, "-o", str(out), "--config", str(cfg)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and needle in err, err
    assert not out.exists() or not any(out.iterdir())
