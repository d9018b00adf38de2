"""The import page (segment.import_page, issue 33 item 3) over real HTTP on 127.0.0.1 (uvicorn in a
thread) and in real headless Chromium: a two-study tree (ProstateX-0000 stamped with identifiers in a
patient-named folder, and a second patient's copy) is imported, every series is shown with its class,
a person changes a class and excludes a series through the page's controls and presses Export; the
dataset then reflects it, the manifest records each decision, and nothing identifying is in the page,
its answers or the dataset. Bad decisions get a one-line 400; decisions survive a forced re-import
and can be taken back."""

from __future__ import annotations

import json
import sys
import time
import urllib.error
import urllib.request
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("fastapi", reason="needs the 'serve' extra (pip install -e '.[serve]')")

TESTS = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(TESTS), str(TESTS / "ensemble")]
from chromium import CHROMIUM, SKIP_REASON, requested_urls, start_chromium  # noqa: E402
from phi import IDENTIFIERS, find_phi, make_phi_study, source_uids  # noqa: E402
from serve_client import Running, get  # noqa: E402
from test_import import CALC, PX, _restamp  # noqa: E402

from mricore.io import read_nifti  # noqa: E402
from segment.import_manifest import EXCLUDED, ON_PAGE, Manifest  # noqa: E402
from segment.importer import ImportOptions, import_dicom  # noqa: E402

SECOND = "Wexholm_Study"          # the second study's source folder: it must not leave either
KINDS = ["ADC", "DWI", "DWI", "DWI", "DWI", "T2W", "T2W", "T2W"]  # ProstateX-0000's eight series entries


@pytest.fixture(scope="module")
def page(data_dir, tmp_path_factory):
    """The page served for an import of the two-study tree (the second study's calculated b1000 image
    flagged BurnedInAnnotation=YES): (server, dataset, key file, the PHI
    study's case, the other study's case, the strings that must not appear)."""
    from mricore.deid import Pseudonymizer
    from segment.import_page import create_import_app

    tmp = tmp_path_factory.mktemp("import_page")
    root, dataset, key = tmp / "root", tmp / "dataset", tmp / "keys" / "provider.key"
    phi = make_phi_study(data_dir / PX, root)
    for series in sorted(p for p in (data_dir / PX).iterdir() if p.is_dir()):
        _restamp(series, root / SECOND / series.name, "PX-PAGE-SECOND", burned_in=series.name == CALC)
    secrets = source_uids(phi) | source_uids(root / SECOND) | {SECOND, str(root), "PX-PAGE-SECOND"}
    server = Running(create_import_app(root, dataset, ImportOptions(progress=False), key))
    p = Pseudonymizer.from_key_file(key)
    yield server, dataset, key, p.patient(IDENTIFIERS["PatientID"]), p.patient("PX-PAGE-SECOND"), secrets
    server.stop()


def post_json(url: str, body, content_type: str = "application/json") -> tuple[int, dict]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    request = urllib.request.Request(url, data, {"Content-Type": content_type}, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=120) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def series_of(dataset: Path, case: str) -> dict:
    """{series key: SeriesEntry} of one study, as the dataset's manifest records it."""
    study = next(s for s in Manifest.read(dataset / "manifest.json").studies if s.case == case)
    return {s.key: s for s in study.series}


@pytest.mark.skipif(not CHROMIUM.exists(), reason=SKIP_REASON)
def test_classify_and_export_through_the_page_in_chromium(page, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait

    server, dataset, _, case, other, secrets = page
    before = series_of(dataset, case)
    adc = next(k for k, s in before.items() if s.kind == "ADC")
    coronal = next(k for k, s in before.items() if s.orientation == "coronal")
    other_t2 = (dataset / other / "t2.nii.gz").stat().st_ino
    drv = start_chromium(tmp_path / "profile")
    try:
        drv.get_log("performance")  # drop the browser's own start-up requests
        drv.get(server.url + "/")
        WebDriverWait(drv, 30).until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "tr.series")) == 16)
        shown = {(tr.get_attribute("data-case"), tr.get_attribute("data-key")): tr.find_element(By.CSS_SELECTOR,
                 "td.kind").text for tr in drv.find_elements(By.CSS_SELECTOR, "tr.series")}
        m = Manifest.read(dataset / "manifest.json")
        assert shown == {(st.case, s.key): s.kind for st in m.studies for s in st.series}
        assert sorted(k for (c, _), k in shown.items() if c == case) == KINDS
        assert len(drv.find_elements(By.CSS_SELECTOR, f'tr[data-case="{other}"] input.include')) == 1  # burned-in
        WebDriverWait(drv, 30).until(lambda d: d.execute_script(
            "return Array.from(document.images).every(i => i.complete && i.naturalWidth > 0)"))
        row = f'tr.series[data-case="{case}"][data-key="%s"]'
        Select(drv.find_element(By.CSS_SELECTOR, row % adc + " select.cls")).select_by_value("other")
        drv.find_element(By.CSS_SELECTOR, row % coronal + " input.exclude").click()
        drv.find_element(By.ID, "export").click()
        WebDriverWait(drv, 120).until(lambda d: d.find_element(By.ID, "status").text.startswith("exported")
                                      or d.find_element(By.ID, "error").text)
        assert drv.find_element(By.ID, "error").text == ""
        assert drv.find_element(By.ID, "status").text == f"exported: 1 studies written again ({case})"
        assert drv.find_element(By.CSS_SELECTOR, row % adc + " td.kind").text == "other (automatic: ADC)"
        assert drv.find_element(By.CSS_SELECTOR, row % coronal + " td.outcome").text == EXCLUDED
        assert ON_PAGE in drv.find_element(By.CSS_SELECTOR, row % coronal + " td.when").text
        rendered, urls = drv.page_source, requested_urls(drv)
    finally:
        drv.quit()
    # Nothing from the network: every request is the page's own (chrome:// is the browser's new-tab page).
    assert server.url + "/api/manifest" in urls and sum("/api/thumbnail?" in u for u in urls) >= 16
    assert [u for u in urls if not u.startswith((server.url + "/", "chrome://", "data:"))] == []
    # On disk: the ADC is no longer written, both decisions are recorded; the other study was not touched.
    after = series_of(dataset, case)
    assert not (dataset / case / "adc.nii.gz").exists() and (dataset / case / "t2.nii.gz").is_file()
    assert (after[adc].kind, after[adc].role, after[adc].decision.automatic) == ("other", "", "ADC")
    assert after[coronal].excluded == EXCLUDED and after[coronal].decision.exclude
    for d in (after[adc].decision, after[coronal].decision):
        assert d.by == ON_PAGE and datetime.fromisoformat(d.time).tzinfo is not None
    assert json.loads((dataset / case / "study.json").read_text())["outputs"] == ["dwi.nii.gz", "t2.nii.gz"]
    assert (dataset / other / "t2.nii.gz").stat().st_ino == other_t2
    # Nothing identifying in the page as rendered and served, its answers, its thumbnails, the dataset.
    served = tmp_path / "served"
    served.mkdir()
    (served / "rendered.html").write_text(rendered)
    (served / "page.html").write_bytes(get(server.url + "/")[1])
    (served / "manifest.json").write_bytes(get(server.url + "/api/manifest")[1])
    for i, key in enumerate(after):
        status, png = get(f"{server.url}/api/thumbnail?case={case}&series={key}")
        assert status == 200 and png[:8] == b"\x89PNG\r\n\x1a\n"
        (served / f"{i}.png").write_bytes(png)
    assert find_phi(served, secrets) == [] and find_phi(dataset, secrets) == []
    assert find_phi(served, {case}), "control: the scan sees what was served (the pseudonym is in it)"


BAD = [  # (what is wrong, the decisions sent for the PHI study, words of the one-line error)
    ("unknown series", lambda keys: {"2.25.999@b50": {"kind": "ADC"}}, "the series must be one of study"),
    ("unknown class", lambda keys: {keys[0]: {"kind": "FLAIR"}}, "class must be one of T2W, ADC, DWI, other"),
    ("unknown field", lambda keys: {keys[0]: {"colour": "red"}}, "must hold only kind, exclude, include"),
    ("exclude and include", lambda keys: {keys[0]: {"exclude": True, "include": True}}, "either excluded or"),
    ("not a boolean", lambda keys: {keys[0]: {"exclude": "yes"}}, "exclude and include must be true or false"),
]


@pytest.mark.parametrize("name,decisions,words", BAD, ids=[b[0] for b in BAD])
def test_a_bad_decision_is_a_one_line_400_and_changes_nothing(page, name, decisions, words):
    server, dataset, _, case, _, _ = page
    before = (dataset / "manifest.json").read_bytes()
    keys = sorted(series_of(dataset, case))
    status, j = post_json(server.url + "/api/export", {"decisions": {case: decisions(keys)}})
    assert status == 400 and words in j["error"] and "\n" not in j["error"], j
    assert (dataset / "manifest.json").read_bytes() == before


def test_a_bad_request_shape_is_refused(page):
    server, dataset, _, case, _, _ = page
    assert post_json(server.url + "/api/export", {"decisions": {"PZNOSUCHCASE": {"x": {"kind": "ADC"}}}})[0] == 400
    assert post_json(server.url + "/api/export", {"decisions": [case]})[0] == 400
    assert post_json(server.url + "/api/export", b"not json")[0] == 400
    assert post_json(server.url + "/api/export", {"decisions": {}}, "text/plain")[0] == 415  # a cross-site form
    assert get(server.url + f"/api/thumbnail?case={case}&series=2.25.1")[0] == 404


def test_a_kept_burned_in_series_survives_a_forced_reimport_and_can_be_taken_back(page):
    """Keeping the burned-in calculated b1000 image makes it the DWI instead of the b800 trace; a forced
    re-import keeps the recorded decision; sending the study without it leaves the image out again."""
    server, dataset, key, _, other, _ = page
    series = series_of(dataset, other)
    b1000 = next(k for k, s in series.items() if s.b_value == 1000)
    assert series[b1000].excluded.startswith("BurnedInAnnotation") and series[b1000].role == ""
    trace = read_nifti(dataset / other / "dwi.nii.gz").array
    status, j = post_json(server.url + "/api/export", {"decisions": {other: {b1000: {"include": True}}}})
    assert status == 200 and j["rerun"] == [other], j
    assert series_of(dataset, other)[b1000].role == "dwi" and series_of(dataset, other)[b1000].decision.include
    calculated = read_nifti(dataset / other / "dwi.nii.gz").array
    assert calculated.shape == trace.shape and not np.array_equal(calculated, trace)
    import_dicom(server.app.state.import_page.root, dataset, key, ImportOptions(force=True, progress=False))
    assert series_of(dataset, other)[b1000].role == "dwi"
    np.testing.assert_array_equal(read_nifti(dataset / other / "dwi.nii.gz").array, calculated)
    status, j = post_json(server.url + "/api/export", {"decisions": {other: {}}})
    assert status == 200 and j["rerun"] == [other]
    assert series_of(dataset, other)[b1000].decision is None and series_of(dataset, other)[b1000].role == ""
    np.testing.assert_array_equal(read_nifti(dataset / other / "dwi.nii.gz").array, trace)
    assert post_json(server.url + "/api/export", {"decisions": {other: {}}})[1]["rerun"] == []  # unchanged


def test_excluding_the_axial_t2_skips_the_study_and_removes_its_folder(page):
    server, dataset, _, case, _, _ = page
    series = series_of(dataset, case)
    kept = {k: {f: getattr(s.decision, f) for f in ("kind", "exclude", "include")} for k, s in series.items()
            if s.decision}  # whatever an earlier test decided stays
    t2 = next(k for k, s in series.items() if s.role == "t2")
    status, j = post_json(server.url + "/api/export", {"decisions": {case: {**kept, t2: {"exclude": True}}}})
    study = next(s for s in j["manifest"]["studies"] if s["case"] == case)
    assert status == 200 and (study["status"], study["reason"]) == ("skipped", "no axial T2W series")
    assert not (dataset / case).exists() and not [p.name for p in dataset.iterdir() if p.name.startswith(".")]
    assert post_json(server.url + "/api/export", {"decisions": {case: kept}})[1]["rerun"] == [case]
    assert (dataset / case / "t2.nii.gz").is_file() and series_of(dataset, case)[t2].role == "t2"


def test_segment_import_serve_serves_the_page_on_loopback(data_dir, tmp_path):
    """`segment import ROOT -o DATASET --serve`: the import's lines, then the page on 127.0.0.1."""
    import socket
    import subprocess

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "segment.cli", "import", str(data_dir / PX), "-o",
                             str(tmp_path / "ds"), "--serve", "--port", str(port)], stdout=subprocess.PIPE, text=True)
    try:
        lines = [proc.stdout.readline() for _ in range(3)]
        assert lines[-1].strip() == f"import page on http://127.0.0.1:{port}/ (Ctrl-C to stop)", lines
        status = None
        for _ in range(300):  # uvicorn binds the port just after the line is printed
            try:
                status, html = get(f"http://127.0.0.1:{port}/")
                break
            except urllib.error.URLError:
                time.sleep(0.1)
        assert status == 200 and b'id="export"' in html
        assert len(json.loads(get(f"http://127.0.0.1:{port}/api/manifest")[1])["studies"][0]["series"]) == 8
    finally:
        proc.terminate()
        proc.wait(timeout=30)
