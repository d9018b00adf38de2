"""`ensemble listen` against a real Orthanc (tests/orthanc.py): a study sent by the PACS comes back as a
DICOM-SEG and an SR in the same study, equal to `ensemble predict` on the same series; ten studies back
to back are each processed once; bad associations and studies are refused or dropped with a log line
and the listener keeps serving. The tiny members of conftest.py keep it fast (plumbing, not accuracy).
"""

import io
import json
import socket
import time
from pathlib import Path
from types import SimpleNamespace

import nibabel as nib
import numpy as np
import pydicom
import pytest

from ensemble.cli import main
from ensemble.config import load_ensemble_config
from tests.orthanc import ADC, STUDY, T2, copy_study, free_port, seg_labels, started

AET, SCU = "PZLISTEN", "TESTSCU"
MR = "1.2.840.10008.5.1.4.1.1.4"


@pytest.fixture(scope="module")
def node(members, data_dir, tmp_path_factory):
    """Orthanc and a listener (keep identity, 2 workers, 1 s study timeout) that knows each other."""
    from ensemble.listen import Listener
    from ensemble.nodes import Node

    with started(tmp_path_factory, members, "listen") as (pacs, cfg):
        lines, port = [], free_port()
        listener = Listener(load_ensemble_config(cfg), port, AET, Node("ORTHANC", "127.0.0.1", pacs.dicom_port),
                            allowed=["ORTHANC", SCU], study_timeout=1.0, keep_identity=True, workers=2,
                            host="127.0.0.1", log=lines.append).start()
        pacs.add_modality("listener", AET, port)
        try:
            yield SimpleNamespace(pacs=pacs, listener=listener, lines=lines, cfg=cfg, port=port)
        finally:
            listener.stop()


def outcomes_of(listener, uids, timeout=60.0) -> dict:
    """{study uid: [Outcome]} once every uid has one (the listener keeps identity: names are UIDs)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = {u: [o for o in list(listener.outcomes) if o.study == u] for u in uids}
        if all(got.values()):
            time.sleep(0.3)  # a duplicate would show up now
            return {u: [o for o in list(listener.outcomes) if o.study == u] for u in uids}
        time.sleep(0.1)
    raise TimeoutError(f"no outcome for {[u for u in uids if not got[u]]} within {timeout} s: {listener.outcomes}")


def associate(port, calling=SCU, contexts=(MR,)):
    from pynetdicom import AE

    ae = AE(ae_title=calling)
    ae.dimse_timeout = ae.network_timeout = 120  # correctness, not latency: a loaded 2-core CI may be slow
    for c in contexts:
        ae.add_requested_context(c)
    return ae.associate("127.0.0.1", port, ae_title=AET)


def send(port, files: list[bytes], abort_after: int | None = None) -> None:
    """C-STORE encoded files in one association, released (or aborted after `abort_after` files)."""
    assoc = associate(port)
    assert assoc.is_established
    for i, data in enumerate(files):
        if i == abort_after:
            assoc.abort()
            return
        start = time.monotonic()
        status = assoc.send_c_store(pydicom.dcmread(io.BytesIO(data)))
        assert status.get("Status") == 0, (f"instance {i + 1} of {len(files)}: no success after "
                                           f"{time.monotonic() - start:.1f} s ({status}); association "
                                           f"{'aborted' if assoc.is_aborted else 'open'}")
    assoc.release()


def uid_of(files: list[bytes]) -> str:
    return str(pydicom.dcmread(io.BytesIO(files[0]), stop_before_pixels=True).StudyInstanceUID)


def test_study_from_orthanc_comes_back_as_seg_and_sr_equal_to_predict(node, data_dir, tmp_path):
    study = data_dir / STUDY
    files = sorted(study.glob("*/*.dcm"))
    assert len({f.parent for f in files}) == 6
    orthanc_id = node.pacs.upload(files)
    uid = node.pacs.get(f"/studies/{orthanc_id}")["MainDicomTags"]["StudyInstanceUID"]
    node.pacs.store("listener", orthanc_id)
    found = node.pacs.wait_for(uid, ("SEG", "SR"), timeout=90)
    assert len(found["SEG"]) == len(found["SR"]) == 1  # in the patient's own study, once

    ref = tmp_path / "ref"
    assert main(["predict", str(study / T2), str(study / ADC), "--config", str(node.cfg), "-o", str(ref)]) == 0
    seg = node.pacs.instance_file(found["SEG"][0])
    zones = np.asarray(nib.load(str(ref / "zones.nii.gz")).dataobj)
    np.testing.assert_array_equal(seg_labels(seg, study / T2, ref / "zones.nii.gz"), zones)
    assert set(np.unique(zones)) == {0, 1, 2}

    from ensemble.sr import read_measurement_report

    sr = pydicom.dcmread(io.BytesIO(node.pacs.instance_file(found["SR"][0])))
    got, record = read_measurement_report(sr), json.loads((ref / "zones.json").read_text())
    assert got["volume_ml"] == pytest.approx(record["volume_ml"], abs=1e-6)
    assert got["verdict"] == record["review"]["verdict"] and got["segments"] == {"TZ": 1, "PZ": 2}
    evidence = sr.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0].ReferencedSOPSequence
    assert evidence[0].ReferencedSOPInstanceUID == pydicom.dcmread(io.BytesIO(seg)).SOPInstanceUID
    assert str(sr.StudyInstanceUID) == uid and str(sr.PatientID) == "ProstateX-0000"

    (o,) = outcomes_of(node.listener, [uid])[uid]
    assert o.status == "stored" and o.instances == len(files)
    assert not any(node.listener.work.iterdir())  # the received files are gone


def rss_mb() -> float:
    return int(next(ln for ln in Path("/proc/self/status").read_text().splitlines() if ln.startswith("VmRSS"))
               .split()[1]) / 1024


def test_ten_studies_back_to_back_each_once_none_lost(node, data_dir):
    copies = copy_study([data_dir / STUDY / T2], 10)
    before = rss_mb()  # the members are loaded (and have run, when the round trip above ran first)
    for files in copies:
        send(node.port, files)
    uids = [uid_of(c) for c in copies]
    got = outcomes_of(node.listener, uids, timeout=120)
    assert all(len(v) == 1 and v[0].status == "stored" for v in got.values()), got
    for uid in uids:
        study = node.pacs.find_study(uid)
        assert len(node.pacs.series_of(study, "SEG")) == len(node.pacs.series_of(study, "SR")) == 1
    assert not node.listener.studies and node.listener.queue.empty() and not any(node.listener.work.iterdir())
    assert rss_mb() - before < 400, f"RSS grew {rss_mb() - before:.0f} MB over 10 studies"


def test_bad_input_is_refused_or_dropped_with_a_log_line_and_the_listener_keeps_serving(node, data_dir):
    from pynetdicom.sop_class import CTImageStorage, Verification

    start = len(node.lines)
    assert associate(node.port, "INTRUDER", [Verification]).is_rejected  # unknown calling AE
    assert not associate(node.port, SCU, [CTImageStorage]).is_established  # unsupported SOP class only
    partial, adc_only = copy_study([data_dir / STUDY / T2], 1)[0], copy_study([data_dir / STUDY / ADC], 1)[0]
    send(node.port, partial, abort_after=5)  # aborted mid-study
    send(node.port, adc_only)  # a study with no T2W
    with socket.create_connection(("127.0.0.1", node.port)) as s:  # garbage on the port
        s.sendall(b"\x99 this is not a DICOM PDU \x00" * 50)
        time.sleep(0.3)
    got = outcomes_of(node.listener, [uid_of(partial), uid_of(adc_only)])
    assert [o.status for o in got[uid_of(partial)]] == ["dropped"]
    assert [o.status for o in got[uid_of(adc_only)]] == ["skipped"] and "axial T2W" in got[uid_of(adc_only)][0].reason
    log = "\n".join(node.lines[start:])
    for needle in ("refused an association from INTRUDER", f"unsupported SOP class(es) {CTImageStorage}",
                   f"aborted: {uid_of(partial)} (5 instances) will be dropped", f"{uid_of(partial)}: dropped",
                   f"{uid_of(adc_only)}: skipped", "dropped a connection from 127.0.0.1"):
        assert needle in log, log
    assert node.pacs.find_study(uid_of(partial)) is None and node.pacs.find_study(uid_of(adc_only)) is None
    echo = associate(node.port, SCU, [Verification])  # still serving
    assert echo.is_established and echo.send_c_echo().Status == 0
    echo.release()
    assert all(t.is_alive() for t in node.listener.threads)


def test_a_study_that_fails_is_logged_with_its_reason_and_its_files_deleted(node, data_dir):
    from ensemble.listen import Listener
    from ensemble.nodes import Node

    lines = []
    dead = Listener(node.listener.cfg, free_port(), AET, Node("NOBODY", "127.0.0.1", free_port()), study_timeout=0.5,
                    keep_identity=True, host="127.0.0.1", log=lines.append).start()  # its results go nowhere
    try:
        files = copy_study([data_dir / STUDY / T2], 1)[0]
        send(dead.port, files)
        (o,) = outcomes_of(dead, [uid_of(files)])[uid_of(files)]
        assert o.status == "failed" and "NOBODY@127.0.0.1" in o.reason and "must accept the results" in o.reason
        assert any(f"{uid_of(files)}: failed" in line and "must accept" in line for line in lines), lines
        assert not any(dead.work.iterdir()) and all(t.is_alive() for t in dead.threads)
    finally:
        dead.stop()
    assert not dead.work.exists()


# Where results may go (ensemble.nodes.check_destination): each row (--send-to, --keep-identity, allowed).
DESTINATIONS = [
    ("ORTHANC@127.0.0.1:4242", False, True),    # loopback
    ("PACS@10.1.2.3:104", False, True),         # RFC 1918
    ("PACS@192.168.0.7:104", False, True),      # RFC 1918
    ("PACS@[fd00::1]:104", False, True),        # IPv6 unique local
    ("PACS@8.8.8.8:104", False, False),         # outside the local network: refused ...
    ("PACS@8.8.8.8:104", True, True),           # ... unless --keep-identity is explicit
]


@pytest.mark.parametrize("send_to,keep,allowed", DESTINATIONS)
def test_destination_rule(send_to, keep, allowed):
    from ensemble.nodes import Node, check_destination
    from mricore.errors import InputError

    node = Node.parse(send_to)
    if allowed:
        check_destination(node.host, keep)
    else:
        with pytest.raises(InputError, match="loopback or the local network"):
            check_destination(node.host, keep)


# Bad command lines, each refused with one line and exit 2 before any port opens.
BAD_LISTEN = [
    (["--send-to", "PACS@8.8.8.8:104"], "loopback or the local network"),      # outside, identity removed
    (["--send-to", "PACS@127.0.0.1"], "AET@HOST:PORT"),                        # no port
    (["--send-to", "PACS@127.0.0.1:70000"], "1..65535"),                       # port out of range
    (["--send-to", "A_TITLE_OVER_16_CHARS@127.0.0.1:104"], "1 to 16"),         # AE title too long
    (["--send-to", "PACS@no-such-host.invalid:104"], "must resolve"),          # unresolvable host
]


@pytest.mark.parametrize("extra,needle", BAD_LISTEN)
def test_listen_refuses_a_bad_command_line(extra, needle, capsys):
    code = main(["listen", "--port", str(free_port()), "--ae-title", AET, *extra])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and needle in err, err
