"""The PHI scan of `ensemble serve` (issue 33): a study stamped with known identifiers (tests/phi.py) is
uploaded as (a) a NIfTI of its T2W series in a file named after the patient and (b) a zip of the T2W
series folder inside a folder named after the patient. No identifier, no study or series UID and no
patient-named folder may appear in the HTTP answers, in any file served, or in any file left under
the server's results folder.
"""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import pytest
import yaml

pytest.importorskip("fastapi", reason="needs the 'serve' extra (pip install -e '.[serve]')")

from phi import FOLDER, find_phi, make_phi_study, source_uids  # noqa: E402
from serve_client import Running, get, post  # noqa: E402

T2_SERIES = "4.000000-t2tsetra-00702"


@pytest.fixture(scope="module")
def study(data_dir, tmp_path_factory) -> Path:
    """The stamped study, of the T2W series alone (the other five are not uploaded)."""
    src = tmp_path_factory.mktemp("src")
    (src / T2_SERIES).symlink_to(data_dir / "dicom/ProstateX-0000" / T2_SERIES)
    return make_phi_study(src, tmp_path_factory.mktemp("phi"))


@pytest.fixture(scope="module")
def served(members, study, tmp_path_factory) -> dict:
    """Both uploads answered by one server: {"nifti"|"zip": (answer, {file: bytes})}, and its results folder."""
    from ensemble.config import load_ensemble_config
    from ensemble.serve import create_app
    from mricore.dicom import read_dicom_series
    from mricore.io import write_nifti

    tmp = tmp_path_factory.mktemp("serve_phi")
    cfg = tmp / "ens.yaml"
    cfg.write_text(yaml.safe_dump({"members": [str(members["t2_a"])]}))
    series = study / T2_SERIES
    vol = read_dicom_series(series)
    nifti = write_nifti(vol.array[0], vol, tmp / f"{FOLDER}.nii.gz")
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for f in sorted(series.iterdir()):
            z.write(f, f"{FOLDER}/{T2_SERIES}/{f.name}")
    uploads = {"nifti": (nifti.name, nifti.read_bytes()), "zip": (f"{FOLDER}.zip", buf.getvalue())}
    s = Running(create_app(load_ensemble_config(cfg), tmp / "results"))
    out = {"results": tmp / "results"}
    try:
        for kind, upload in uploads.items():
            status, j = post(s.url + "/predict", {"t2": upload})
            assert status == 200, j
            out[kind] = (j, {name: get(s.url + url)[1] for name, url in j["files"].items()})
    finally:
        s.stop()
    return out


def scan(served: dict, study: Path, tmp: Path) -> list[tuple[str, str]]:
    """find_phi over the answers, the files served and the results folder."""
    dump = tmp / "scan"
    for kind in ("nifti", "zip"):
        answer, files = served[kind]
        (dump / kind).mkdir(parents=True)
        (dump / kind / "answer.json").write_text(json.dumps(answer))
        for name, data in files.items():
            (dump / kind / name).write_bytes(data)
    found = find_phi(dump, source_uids(study))
    return found + [(f"results/{f}", n) for f, n in find_phi(served["results"], source_uids(study))]


def test_no_identifier_leaves_the_server(served, study, tmp_path):
    assert FOLDER not in served["zip"][0]["case_id"]  # not the zip's patient-named folder
    assert "seg.dcm" in served["zip"][1]  # the DICOM-SEG (ensemble.dicomseg, de-identified) is scanned too
    assert scan(served, study, tmp_path) == []
