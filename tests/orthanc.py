"""A real Orthanc for the PACS tests and bench: started on loopback with its own storage folder, HTTP and
DICOM ports and the DICOMweb plugin, driven over its REST API (stdlib HTTP, no client library).

    with Orthanc(tmp_path) as pacs:          # skips the test when /usr/sbin/Orthanc is absent
        pacs.add_modality("listener", "LISTEN", port)
        study = pacs.upload(files)           # Orthanc's id of the study
        pacs.store("listener", study)        # POST /modalities/listener/store

`copy_study` makes copies of a study with new UIDs (a study Orthanc has not seen), in memory.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

# The study the PACS tests and bench send (under ../shared/data), with its axial T2W and ADC series.
STUDY = "dicom/ProstateX-0000"
T2, ADC = "4.000000-t2tsetra-00702", "7.000000-ep2ddifftraDYNDISTADC-48780"
BINARY = Path("/usr/sbin/Orthanc")
DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")
AET = "ORTHANC"


def free_port() -> int:
    """A TCP port nobody listens on now (loopback)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tiny_config(folder: Path, members: dict) -> Path:
    """An ensemble config of the tiny T2W and T2W+ADC members (tests/ensemble/conftest.py) in `folder`."""
    import yaml

    path = Path(folder) / "ens.yaml"
    path.write_text(yaml.safe_dump({"members": [str(members["t2_a"]), str(members["t2_adc"])]}))
    return path


@contextlib.contextmanager
def started(tmp_path_factory, members: dict, name: str):
    """For a module fixture: skip without Orthanc, else (a started Orthanc, `tiny_config`) in a new
    temporary folder `name`; Orthanc stops on leaving."""
    require_orthanc()
    tmp = tmp_path_factory.mktemp(name)
    with Orthanc(tmp / "orthanc") as pacs:
        yield pacs, tiny_config(tmp, members)


def require_orthanc() -> None:
    """Skip the calling test, with the reason, when the Orthanc binary or its DICOMweb plugin is absent."""
    import pytest

    if not BINARY.exists() or not DICOMWEB_PLUGIN.exists():
        pytest.skip(f"Orthanc is not installed ({BINARY}, {DICOMWEB_PLUGIN}): "
                    "apt-get install orthanc orthanc-dicomweb (.ci/run does)")


class Orthanc:
    """One Orthanc process on 127.0.0.1 with its storage under `folder`; a context manager."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.http_port, self.dicom_port = free_port(), free_port()
        self.url = f"http://127.0.0.1:{self.http_port}"
        self.dicomweb = self.url + "/dicom-web"
        self.process = None

    def __enter__(self) -> "Orthanc":
        self.folder.mkdir(parents=True, exist_ok=True)
        config = {"Name": "test", "StorageDirectory": str(self.folder / "db"), "IndexDirectory": str(self.folder / "db"),
                  "HttpPort": self.http_port, "DicomPort": self.dicom_port, "DicomAet": AET,
                  "RemoteAccessAllowed": False, "AuthenticationEnabled": False, "HttpServerEnabled": True,
                  "DicomServerEnabled": True, "DicomAlwaysAllowStore": True, "DicomCheckCalledAet": False,
                  "Plugins": [str(DICOMWEB_PLUGIN)], "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
                  "StableAge": 1, "ConcurrentJobs": 2, "HttpTimeout": 60, "DicomScuTimeout": 30}
        path = self.folder / "orthanc.json"
        path.write_text(json.dumps(config))
        self.log = open(self.folder / "orthanc.log", "wb")
        self.process = subprocess.Popen([str(BINARY), str(path)], stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                self.get("/system")
                return self
            except OSError:
                if self.process.poll() is not None:
                    break
                time.sleep(0.1)
        self.__exit__()
        raise RuntimeError(f"Orthanc did not start: {(self.folder / 'orthanc.log').read_text()[-2000:]}")

    def __exit__(self, *exc) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:  # its storage is thrown away: no need to wait out its graceful stop (about 4 s)
                self.process.wait(1)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log.close()
        shutil.rmtree(self.folder / "db", ignore_errors=True)

    # ------------------------------------------------------------------ REST
    def request(self, method: str, path: str, body: bytes | None = None, kind: str = "application/json"):
        req = urllib.request.Request(self.url + path, data=body, method=method, headers={"Content-Type": kind})
        with urllib.request.urlopen(req, timeout=120) as r:
            data = r.read()
        return json.loads(data) if r.headers.get("Content-Type", "").startswith("application/json") else data

    def get(self, path: str):
        return self.request("GET", path)

    def post(self, path: str, payload) -> dict:
        return self.request("POST", path, json.dumps(payload).encode())

    def add_modality(self, name: str, aet: str, port: int, host: str = "127.0.0.1") -> None:
        """Register a DICOM node (PUT /modalities/NAME), as a PACS administrator would."""
        self.request("PUT", f"/modalities/{name}", json.dumps({"AET": aet, "Host": host, "Port": port}).encode())

    def upload(self, files: list) -> str:
        """POST each DICOM file (a path or bytes) to /instances; Orthanc's id of their (last) study."""
        study = ""
        for f in files:
            data = f if isinstance(f, (bytes, bytearray)) else Path(f).read_bytes()
            study = self.request("POST", "/instances", bytes(data), "application/dicom")["ParentStudy"]
        return study

    def store(self, modality: str, resource: str) -> dict:
        """Send a study to a registered modality by C-STORE and wait for the job (Synchronous)."""
        return self.post(f"/modalities/{modality}/store", {"Resources": [resource], "Synchronous": True})

    def find_study(self, study_uid: str) -> str | None:
        """Orthanc's id of the study with this StudyInstanceUID, or None."""
        found = self.request("POST", "/tools/lookup", study_uid.encode(), "text/plain")
        return next((r["ID"] for r in found if r["Type"] == "Study"), None)

    def series_of(self, study: str, modality: str) -> list[dict]:
        """The series of an Orthanc study with this Modality (SEG, SR, MR)."""
        return [s for s in self.get(f"/studies/{study}/series") if s["MainDicomTags"].get("Modality") == modality]

    def instance_file(self, series: dict) -> bytes:
        """The DICOM file of the first instance of an Orthanc series record."""
        return self.get(f"/instances/{series['Instances'][0]}/file")

    def wait_for(self, study_uid: str, modalities=("SEG", "SR"), timeout: float = 60.0) -> dict:
        """{modality: [series]} once the study holds a series of each of `modalities`; raises TimeoutError."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            study = self.find_study(study_uid)
            found = {m: self.series_of(study, m) for m in modalities} if study else {}
            if study and all(found.values()):
                return found
            time.sleep(0.2)
        raise TimeoutError(f"no {modalities} series in study {study_uid} within {timeout} s")


def copy_study(folders: list[Path], n: int) -> list[list[bytes]]:
    """`n` copies of the study made of the series `folders`, each with new Study, Series, SOP and Frame of
    Reference UIDs (consistent inside a copy) and the accession number cleared: encoded DICOM files."""
    import io

    import pydicom
    from pydicom.uid import generate_uid

    files = [pydicom.dcmread(f) for folder in folders for f in sorted(Path(folder).glob("*.dcm"))]
    keywords = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "FrameOfReferenceUID")
    copies = []
    for _ in range(n):
        new = {}
        out = []
        for ds in files:
            ds = ds.copy()
            for k in keywords:
                if k in ds:
                    setattr(ds, k, new.setdefault(str(getattr(ds, k)), generate_uid()))
            ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
            buf = io.BytesIO()
            ds.save_as(buf, enforce_file_format=True)
            out.append(buf.getvalue())
        copies.append(out)
    return copies


def seg_labels(data: bytes, series_folder: Path, zones_nii: Path):
    """The zone map (I, J, K uint8: 0, 1 TZ, 2 PZ) a DICOM-SEG file holds on the grid of `zones_nii`,
    frame by frame through the source slices of `series_folder` (the SOP Instance UIDs it references)."""
    import io

    import highdicom as hd
    import nibabel as nib
    import numpy as np

    from ensemble.dicomseg import source_datasets

    ref = nib.load(str(zones_nii))
    sources = source_datasets(Path(series_folder), ref.affine, ref.shape[2])
    seg = hd.seg.segread(io.BytesIO(data))
    frames = seg.get_pixels_by_source_instance([str(ds.SOPInstanceUID) for ds in sources], segment_numbers=[1, 2],
                                               combine_segments=True, assert_missing_frames_are_empty=True)
    return np.asarray(frames).transpose(2, 1, 0).astype(np.uint8)  # (k, rows j, columns i) -> (i, j, k)
