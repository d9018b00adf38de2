"""`ensemble predict --dicomweb URL --study UID -o OUT [--stow]`: one study from a DICOMweb server
(dicomweb-client: WADO-RS retrieve, STOW-RS store) through the ensemble.

The study is retrieved instance by instance into a private temporary folder (ensemble.study layout;
one instance in memory at a time), its axial T2W and ADC chosen as `segment import` chooses them, and
`ensemble predict` writes OUT as for a DICOM series folder (zones.nii.gz, zones.json, seg.dcm, ...).
With `stow`, the SEG and the SR measurement report (ensemble.sr) are stored back over STOW-RS: with
--keep-identity into the patient's own study, else into the pseudonymous study of the de-identified
SEG. The destination rule of ensemble.nodes applies to the server's host when storing. The retrieved
files are removed whatever happens. Every check (request, config, members, output folder) runs before
the first request to the server.
"""

from __future__ import annotations

import re
import shutil
import tempfile
from pathlib import Path
from urllib.parse import urlparse

from mricore.errors import InputError

from .study import instance_path

_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")
USAGE = "ensemble predict --dicomweb URL --study UID -o OUT [--stow]"


def check_request(inputs: list, url: str | None, study: str | None) -> None:
    """InputError unless the request reads --dicomweb URL (http/https) --study UID and no INPUT."""
    if not inputs and not url and not study:
        raise InputError("INPUT", "give at least one input", "none", "pass a volume, case folder, DICOM series "
                         f"folder or dataset, or read a study from a PACS: {USAGE}")
    if inputs or not url or not study:
        raise InputError("--dicomweb", "takes --study UID and no INPUT (--study and --stow need --dicomweb)",
                         f"{len(inputs)} INPUT(s), --dicomweb {url!r}, --study {study!r}", USAGE)
    parsed = urlparse(url)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise InputError("--dicomweb", "must be an http(s) URL of a DICOMweb root", repr(url),
                         "e.g. http://127.0.0.1:8042/dicom-web")
    if len(study) > 64 or not _UID.match(study):
        raise InputError("--study", "must be a DICOM UID (digits and dots, at most 64 characters)", repr(study[:80]),
                         "copy the StudyInstanceUID from the PACS")


def _client(url: str):
    from dicomweb_client import DICOMwebClient

    client = DICOMwebClient(url, timeout=(10, 120))
    # One retry after 0.5 s (its default: 5 tries over 30 s, for any error, an unreachable server too).
    client.set_http_retry_params(retry=True, max_attempts=2, wait_exponential_multiplier=250)
    return client


def _http_error(url: str, study: str, e: Exception) -> InputError:
    """The one-line error of a failed DICOMweb request."""
    import requests

    status = getattr(getattr(e, "response", None), "status_code", None)
    if status == 404:
        return InputError("--study", "the server holds no such study", study, "check the StudyInstanceUID")
    if isinstance(e, requests.ConnectionError | requests.Timeout):
        return InputError("--dicomweb", "the DICOMweb server could not be reached", url,
                          "check the URL and that the server runs")
    return InputError("--dicomweb", "the DICOMweb server refused the request",
                      f"HTTP {status}" if status else type(e).__name__, "see the server's log")


def retrieve_study(url: str, study: str, folder: Path) -> int:
    """WADO-RS: every instance of `study` into `folder` (one sub-folder per series); how many."""
    import requests

    n = 0
    try:
        for ds in _client(url).iter_study(study):
            ds.save_as(instance_path(folder, ds.SeriesInstanceUID, ds.SOPInstanceUID), enforce_file_format=True)
            n += 1
    except requests.RequestException as e:
        raise _http_error(url, study, e) from None
    if not n:
        raise InputError("--study", "the server holds no instance of this study", study, "check the StudyInstanceUID")
    return n


def store(url: str, files: list[Path]) -> list[str]:
    """STOW-RS: store `files`; their SOP Instance UIDs. InputError when the server fails any of them."""
    import pydicom
    import requests

    datasets = [pydicom.dcmread(f) for f in files]
    try:
        answer = _client(url).store_instances(datasets)
    except requests.RequestException as e:
        raise _http_error(url, str(datasets[0].StudyInstanceUID), e) from None
    failed = answer.get("FailedSOPSequence") if answer is not None else None
    if failed:
        raise InputError("--stow", "the server did not store every result", f"{len(failed)} of {len(files)} failed",
                         "see the server's log")
    return [str(ds.SOPInstanceUID) for ds in datasets]


def predict_dicomweb(url: str, study: str, out, cfg, force: bool = False, probabilities: bool | None = None,
                     report: bool = False, identity=None, stow: bool = False):
    """Retrieve `study` from the DICOMweb root `url`, predict it into `out` (ensemble.predict.predict's
    outputs), and with `stow` store the SEG and SR back. Returns (ZonesRecord, SOP Instance UIDs stored).
    Raises UserError subclasses (nothing written into `out`) for a bad request, config, output folder,
    an unreachable server, an unknown study, a study with no axial T2W (ensemble.study.NoT2W)."""
    from dataclasses import replace

    from mricore.outputs import check_output_dir
    from mricore.results import check_case

    from .dicomseg import Identity
    from .members import read_members
    from .nodes import check_destination, require_pacs
    from .predict import resolve_config
    from .study import analyse_study

    check_request([], url, study)
    require_pacs()
    identity = (identity or Identity()).check()
    if stow:
        check_destination(urlparse(url).hostname, identity.keep, "--dicomweb")
    cfg = resolve_config(cfg)
    if probabilities is not None:
        cfg = replace(cfg, probabilities=probabilities)
    check_case(check_output_dir(out), force)
    members = read_members(cfg.members)
    work = Path(tempfile.mkdtemp(prefix="ensemble-dicomweb-"))  # private (0700), removed below
    try:
        retrieve_study(url, study, work / "in")
        result = analyse_study(work / "in", Path(out), work / "sr.dcm", cfg, members, identity, force, report)
        return result.record, store(url, [result.seg, result.sr]) if stow else []
    finally:
        shutil.rmtree(work, ignore_errors=True)
