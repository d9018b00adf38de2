"""`ensemble serve` over real HTTP on 127.0.0.1 (uvicorn in a thread, stdlib urllib as the client): the
page, predictions from NIfTI and zipped DICOM, downloads, the bounded pool (503), a loopback load test
and the bad-upload matrix; nothing of a rejected request stays on disk and no error names a server
path. The limits over raw sockets: a chunked upload over the limit refused while it streams, a slow
client timed out without delaying another, the bearer token, results expiring. The headless-Chromium
test uploads a real case through the page."""

from __future__ import annotations

import io
import json
import os
import re
import resource
import threading
import time
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import nibabel as nib
import pytest
import yaml

pytest.importorskip("fastapi", reason="needs the 'serve' extra (pip install -e '.[serve]')")

from mricore.results import read_case  # noqa: E402
from serve_client import Running, Stream, get, post  # noqa: E402

P158 = "prostate158/001"
DICOM_T2 = "dicom/ProstateX-0000/4.000000-t2tsetra-00702"


@pytest.fixture(scope="module")
def cfg(members, tmp_path_factory):
    from ensemble.config import load_ensemble_config

    path = tmp_path_factory.mktemp("serve_cfg") / "ens.yaml"
    path.write_text(yaml.safe_dump({"members": [str(members["t2_a"])]}))
    return load_ensemble_config(path)


def serve(cfg, results: Path, **kw) -> Running:
    from ensemble.serve import create_app

    return Running(create_app(cfg, results, **kw))


@pytest.fixture(scope="module")
def server(cfg, tmp_path_factory):
    s = serve(cfg, tmp_path_factory.mktemp("results"), workers=1, queue=2, max_upload_mb=8)
    yield s
    s.stop()


def leftovers(results: Path) -> list[str]:
    return sorted(p.name for p in results.iterdir() if p.name.startswith("."))


def test_health_and_page(server):
    status, body = get(server.url + "/health")
    assert status == 200 and json.loads(body)["members"] == 1
    status, page = get(server.url + "/")
    assert status == 200 and b'name="t2"' in page and b'name="adc"' in page


def test_predict_a_nifti_and_download_its_results(server, data_dir):
    t2 = (data_dir / P158 / "t2.nii.gz").read_bytes()
    status, j = post(server.url + "/predict", {"t2": ("whatever.bin", t2)})  # named by content, not name
    assert status == 200, j
    assert set(j["volume_ml"]) == {"WG", "TZ", "PZ"} and j["review"]["verdict"] in ("ok", "review")
    assert j["id"] == j["case_id"] and len(j["id"]) == 32
    status, zones = get(server.url + j["files"]["zones.nii.gz"])
    img = nib.Nifti1Image.from_bytes(__import__("gzip").decompress(zones))
    assert status == 200 and img.shape == nib.load(str(data_dir / P158 / "t2.nii.gz")).shape
    status, png = get(server.url + j["files"]["overlay.png"])
    assert status == 200 and png[:8] == b"\x89PNG\r\n\x1a\n"
    results = server.app.state.server.results
    assert leftovers(results) == [] and (results / j["id"] / "report.html").is_file()
    record = read_case(results / j["id"])  # the answer names and values its fields as zones.json does
    assert (j["volume_ml"], j["uncertainty"]) == (record.volume_ml, record.uncertainty)


def test_a_zipped_dicom_series_gives_dicom_seg(server, data_dir):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for f in sorted((data_dir / DICOM_T2).iterdir()):
            z.write(f, f"series/{f.name}")
    status, j = post(server.url + "/predict", {"t2": ("study.zip", buf.getvalue())})
    assert status == 200, j
    assert "series" not in j["case_id"]  # never the zip's folder name (often the patient's)
    assert "seg.dcm" in j["files"] and get(server.url + j["files"]["seg.dcm"])[0] == 200


def zip_bytes(entries: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for name, data in entries.items():
            z.writestr(name, data)
    return buf.getvalue()


BAD = {  # name: (files, expected status, words of the one-line error)
    "oversized": (lambda t2: {"t2": ("t2.nii.gz", b"\x1f\x8b" + bytes(9 * 1024 * 1024))}, 413, "at most 8 MB"),
    "truncated gzip": (lambda t2: {"t2": ("t2.nii.gz", t2[:5000])}, 400, "t2"),
    "text renamed .nii.gz": (lambda t2: {"t2": ("t2.nii.gz", b"hello, I am not an image\n" * 40)}, 415, "NIfTI"),
    "zip with ../ names": (lambda t2: {"t2": ("x.zip", zip_bytes({"../evil.dcm": b"x" * 100}))}, 400, "inside the archive"),
    "zip bomb": (lambda t2: {"t2": ("x.zip", zip_bytes({"a/b.dcm": bytes(20 * 1024 * 1024)}))}, 400, "expands"),
    "no t2 field": (lambda t2: {"adc": ("adc.nii.gz", t2)}, 400, "field named t2"),
}


@pytest.mark.parametrize("name", list(BAD))
def test_bad_uploads_get_clear_json_errors_and_leave_nothing(server, data_dir, name):
    make, code, words = BAD[name]
    results = server.app.state.server.results
    before = sorted(p.name for p in results.iterdir())
    status, j = post(server.url + "/predict", make((data_dir / P158 / "t2.nii.gz").read_bytes()))
    assert status == code and words in j["error"] and "\n" not in j["error"], (status, j)
    assert str(results) not in j["error"] and not re.search(r"(^|\s)/\w", j["error"]), j  # no server path
    assert sorted(p.name for p in results.iterdir()) == before  # no result, no staging left


def test_empty_body_and_result_ids_outside_the_folder(server):
    status, j = post(server.url + "/predict", {}, raw=b"")
    assert status == 400 and "error" in j
    for path in ("/results/../zones.json", "/results/" + "0" * 32 + "/..%2F..%2Fetc%2Fpasswd",
                 "/results/abc/zones.nii.gz", "/results/" + "0" * 32 + "/weights.pt"):
        assert get(server.url + path)[0] == 404


def test_a_full_pool_answers_503_at_once(cfg, tmp_path, data_dir, monkeypatch):
    from ensemble.serve import Server

    gate = threading.Event()
    real = Server.predict

    def slow(self, inputs, rid):
        gate.wait(60)
        return real(self, inputs, rid)
    monkeypatch.setattr(Server, "predict", slow)
    s = serve(cfg, tmp_path / "r", workers=1, queue=0)
    try:
        t2 = (data_dir / P158 / "t2.nii.gz").read_bytes()
        with ThreadPoolExecutor(1) as pool:
            first = pool.submit(post, s.url + "/predict", {"t2": ("t2.nii.gz", t2)})
            while s.app.state.server.waiting + s.app.state.server.running == 0:
                time.sleep(0.05)
            t = time.perf_counter()
            status, j = post(s.url + "/predict", {"t2": ("t2.nii.gz", t2)})
            assert status == 503 and "busy" in j["error"] and time.perf_counter() - t < 5
            gate.set()
            assert first.result()[0] == 200
    finally:
        gate.set()
        s.stop()


def test_loopback_load_20_requests_4_at_a_time(cfg, tmp_path, data_dir):
    """2 workers and 1 waiting place against 4 concurrent clients: every request ends 200 or 503, each
    200 has its own complete result folder, nothing is lost or duplicated, memory stays bounded."""
    s = serve(cfg, tmp_path / "r", workers=2, queue=1)
    t2 = (data_dir / P158 / "t2.nii.gz").read_bytes()
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    try:
        with ThreadPoolExecutor(4) as pool:
            answers = list(pool.map(lambda _: post(s.url + "/predict", {"t2": ("t2.nii.gz", t2)}), range(20)))
    finally:
        s.stop()
    statuses = [a[0] for a in answers]
    assert set(statuses) <= {200, 503} and statuses.count(200) >= 2, statuses
    ids = [a[1]["id"] for a in answers if a[0] == 200]
    results = tmp_path / "r"
    assert len(set(ids)) == len(ids) and sorted(ids) == sorted(p.name for p in results.iterdir())
    assert all((results / i / "zones.nii.gz").is_file() and (results / i / "zones.json").is_file() for i in ids)
    assert (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0) / 1024 < 1500  # MB of growth


def small_t2(data_dir) -> bytes:
    """A crop of a real T2W (a second's prediction), as .nii.gz bytes."""
    img = nib.load(str(data_dir / P158 / "t2.nii.gz")).slicer[60:-60, 60:-60, 4:-4]
    return __import__("gzip").compress(img.to_bytes())


def t2_part(boundary: str) -> bytes:
    return (f"--{boundary}\r\nContent-Disposition: form-data; name=\"t2\"; filename=\"t2.nii.gz\"\r\n"
            "Content-Type: application/octet-stream\r\n\r\n").encode()


def test_a_chunked_upload_over_the_limit_is_refused_while_it_streams(cfg, tmp_path):
    """40 MB sent chunked (no Content-Length) to a 1 MB server: 413 before the client could send it all,
    and nothing of it on disk."""
    s = serve(cfg, tmp_path / "r", max_upload_mb=1)
    total = 40 * 1024 * 1024

    def chunks(boundary):
        yield t2_part(boundary) + b"\x1f\x8b", 0
        for _ in range(total // 65536):
            yield bytes(65536), 0
        yield f"\r\n--{boundary}--\r\n".encode(), 0
    try:
        upload = Stream(s.url + "/predict", chunks)
        status, j = upload.answer()
    finally:
        s.stop()
    assert status == 413 and "at most 1 MB" in j["error"], (status, j)
    assert not upload.done and upload.sent < total // 2, upload.sent  # the rest was never read
    assert list((tmp_path / "r").iterdir()) == []


def test_a_slow_client_times_out_and_does_not_delay_another(cfg, tmp_path, data_dir):
    """One worker, no queue: a client sending 1 byte a second holds no slot, so a second client is
    answered 200 meanwhile; the slow one gets 408 at the upload timeout."""
    s = serve(cfg, tmp_path / "r", workers=1, queue=0, upload_timeout_s=6)
    t2 = small_t2(data_dir)

    def trickle(boundary):
        yield t2_part(boundary), 0
        for b in t2[:60]:
            yield bytes([b]), 1.0
    try:
        t0 = time.perf_counter()
        slow = Stream(s.url + "/predict", trickle)
        time.sleep(0.5)  # the slow upload has begun
        status, j = post(s.url + "/predict", {"t2": ("t2.nii.gz", t2)})
        fast_s = time.perf_counter() - t0
        slow_status, slow_j = slow.answer()
        slow_s = time.perf_counter() - t0
    finally:
        s.stop()
    assert status == 200, j
    assert slow_status == 408 and "within 6 s" in slow_j["error"], (slow_status, slow_j)
    assert fast_s < slow_s and 5.5 < slow_s < 30, (fast_s, slow_s)
    assert sorted(p.name for p in (tmp_path / "r").iterdir()) == [j["id"]]  # nothing of the slow one


def test_a_token_guards_every_endpoint_but_health(cfg, tmp_path, data_dir):
    s = serve(cfg, tmp_path / "r", token="s3cret-token")
    try:
        assert get(s.url + "/health")[0] == 200
        for token in (None, "wrong", ""):
            status, body = get(s.url + "/", token=token)
            assert status == 401 and "bearer token" in json.loads(body)["error"]
            status, j = post(s.url + "/predict", {"t2": ("t2.nii.gz", small_t2(data_dir))}, token=token)
            assert status == 401, j
        assert get(s.url + "/", token="s3cret-token")[0] == 200
        status, j = post(s.url + "/predict", {"t2": ("t2.nii.gz", small_t2(data_dir))}, token="s3cret-token")
        assert status == 200, j
        assert get(s.url + j["files"]["zones.json"])[0] == 401
        assert get(s.url + j["files"]["zones.json"], token="s3cret-token")[0] == 200
    finally:
        s.stop()


def test_a_browser_signs_in_once_and_reaches_the_import_page_behind_the_same_token(cfg, tmp_path, data_dir):
    """A browser cannot send the bearer header: /login turns the token into a cookie that opens the
    page and the data provider's import page mounted at /import/ (segment.import_page)."""
    import shutil
    import urllib.request

    from segment.import_page import create_import_app
    from segment.importer import ImportOptions

    tree = tmp_path / "tree" / "study"
    shutil.copytree(data_dir / "dicom" / "ProstateX-0000" / "4.000000-t2tsetra-00702", tree / "t2")
    page = create_import_app(tmp_path / "tree", tmp_path / "dataset", ImportOptions(progress=False))
    s = serve(cfg, tmp_path / "r", token="s3cret-token", import_page=page)
    no_redirect = urllib.request.build_opener(type("Keep", (urllib.request.HTTPRedirectHandler,),
                                                   {"redirect_request": lambda *a, **k: None}))
    try:
        assert get(s.url + "/import/")[0] == 401 and get(s.url + "/login")[0] == 200
        with pytest.raises(urllib.error.HTTPError) as wrong:
            no_redirect.open(s.url + "/login", data=b"token=nope", timeout=30)
        assert wrong.value.code == 401 and "set-cookie" not in wrong.value.headers
        with pytest.raises(urllib.error.HTTPError) as right:  # 303 back to the page, with the cookie
            no_redirect.open(s.url + "/login", data=b"token=s3cret-token", timeout=30)
        cookie = right.value.headers["set-cookie"].split(";")[0]
        assert right.value.code == 303 and "HttpOnly" in right.value.headers["set-cookie"]
        for path in ("/", "/import/", "/import/api/manifest"):
            with urllib.request.urlopen(urllib.request.Request(s.url + path, headers={"Cookie": cookie}),
                                        timeout=60) as r:
                assert r.status == 200, path
    finally:
        s.stop()


def test_results_expire(cfg, tmp_path, data_dir):
    """A result older than --keep-hours answers 404 and is removed; the sweep removes old results and
    left-over upload folders, and nothing that is not the server's."""
    s = serve(cfg, tmp_path / "r", keep_hours=1)
    results = tmp_path / "r"
    try:
        status, j = post(s.url + "/predict", {"t2": ("t2.nii.gz", small_t2(data_dir))})
        assert status == 200 and get(s.url + j["files"]["zones.nii.gz"])[0] == 200
        two_hours_ago = time.time() - 7200
        os.utime(results / j["id"], (two_hours_ago, two_hours_ago))
        assert get(s.url + j["files"]["zones.nii.gz"])[0] == 404
        assert not (results / j["id"]).exists()
        old, upload, mine = results / ("a" * 32), results / f".upload-{'b' * 32}", results / "notes.txt"
        for p in (old, upload):
            p.mkdir()
            os.utime(p, (two_hours_ago, two_hours_ago))
        mine.write_text("not the server's")
        os.utime(mine, (two_hours_ago, two_hours_ago))
        fresh = results / ("c" * 32)
        fresh.mkdir()
        assert sorted(s.app.state.server.sweep()) == sorted([old.name, upload.name])
        assert sorted(p.name for p in results.iterdir()) == sorted([fresh.name, mine.name])
    finally:
        s.stop()


CHROMIUM, DRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")


@pytest.mark.skipif(not CHROMIUM.exists(), reason="needs /usr/bin/chromium (.ci/run installs it)")
def test_upload_through_the_page_in_headless_chromium(server, data_dir, tmp_path):
    webdriver = pytest.importorskip("selenium.webdriver", reason="needs the 'browser' extra")
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    opts = webdriver.ChromeOptions()
    opts.binary_location = str(CHROMIUM)
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                 f"--user-data-dir={tmp_path / 'profile'}"):
        opts.add_argument(flag)
    drv = webdriver.Chrome(options=opts, service=Service(str(DRIVER)))
    try:
        drv.get(server.url + "/")
        drv.find_element(By.ID, "t2").send_keys(str(data_dir / P158 / "t2.nii.gz"))
        drv.find_element(By.ID, "go").click()
        WebDriverWait(drv, 120).until(lambda d: d.find_elements(By.ID, "verdict") or d.find_elements(By.ID, "error"))
        assert not drv.find_elements(By.ID, "error")
        ml = [float(td.text) for td in drv.find_elements(By.CSS_SELECTOR, "#volumes td.ml")]
        assert len(ml) == 3 and ml[0] == pytest.approx(ml[1] + ml[2], abs=0.11)  # WG = TZ + PZ
        assert drv.find_element(By.ID, "verdict").text in ("ok", "review")
        WebDriverWait(drv, 30).until(lambda d: d.execute_script(
            "const i = document.getElementById('overlay'); return i.complete && i.naturalWidth > 0"))
    finally:
        drv.quit()
