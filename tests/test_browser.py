"""Render report.html in real headless Chromium (selenium + Debian's chromium/chromium-driver).

Asserts the rendered page shows the headline table (the summary and comparison tables collapsed below
it), every <img> decoded (naturalWidth > 0), and that no request left the machine: every URL the
browser requested, taken from Chrome's DevTools network log, is a data: or file: URL. A control page with one remote image
proves that the network check can fail. Skips only when /usr/bin/chromium is absent.
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from chromium import CHROMIUM, SKIP_REASON, open_page, start_chromium

from mricore.report import write_report

pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason=SKIP_REASON)


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    drv = start_chromium(tmp_path_factory.mktemp("chromium-profile"))
    yield drv
    drv.quit()


def _volumes(folder: Path, case: str, shift: int) -> dict:
    """A small synthetic T2-like image with a two-zone gland, and a shifted prediction."""
    g = np.indices((48, 40, 10)).astype(float)
    gland = ((g[0] - 24) / 14) ** 2 + ((g[1] - 20) / 11) ** 2 + ((g[2] - 5) / 4) ** 2 <= 1
    ref = np.where(gland, np.where(g[1] < 17, 2, 1), 0).astype(np.uint8)
    img = (200 + 300 * gland + np.random.default_rng(shift).normal(0, 20, gland.shape)).astype(np.float32)
    aff = np.diag([0.5, 0.5, 3.0, 1.0])
    paths = {"case_id": case}
    for name, arr in (("image", img), ("ref", ref), ("pred", np.roll(ref, shift, axis=0))):
        paths[name] = folder / f"{case}_{name}.nii.gz"
        nib.save(nib.Nifti1Image(arr, aff), str(paths[name]))
    return paths


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    d = tmp_path_factory.mktemp("browser_report")
    cases = [_volumes(d, f"c{i}", shift=i) for i in range(4)]
    rng = np.random.default_rng(0)
    rows = [{"case_id": f"c{i}", "model": m, "zone": z, "dsc": float(rng.uniform(0.6, 0.9)),
             "hd95": float(rng.uniform(2, 9))} for m in ("unet", "ensemble") for z in ("WG", "TZ", "PZ")
            for i in range(4)]
    curves = {"roc": {"unet": ([0, 0.2, 1], [0, 0.7, 1], 0.75)}, "froc": {"unet": ([0, 0.5, 2], [0, 0.5, 0.8])}}
    return write_report(d / "out", rows, title="browser test", settings={"seed": 0}, cases=cases, curves=curves)


def test_report_renders_offline_with_tables_and_images(browser, report, tmp_path):
    urls = open_page(browser, report)
    from selenium.webdriver.common.by import By

    head = browser.find_element(By.ID, "headline")
    assert head.is_displayed()
    # header + the lead (ensemble) + unet; zones as columns.
    assert len(head.find_elements(By.TAG_NAME, "tr")) == 1 + 2 and "WG" in head.text and "ensemble" in head.text
    assert browser.find_element(By.ID, "verdicts").is_displayed()
    summary = browser.find_element(By.ID, "summary")  # collapsed on demand: in the page, not shown
    assert not summary.is_displayed()
    # 2 models x 3 zones x 2 metrics rows + the header row.
    assert len(summary.find_elements(By.TAG_NAME, "tr")) == 1 + 12
    images = browser.execute_script(
        "return Array.from(document.images).map(i => [i.alt, i.complete, i.naturalWidth, i.src.slice(0, 22)])")
    # forest + cases across models + ROC + FROC + 4 thumbnails + 2 metric distributions (collapsed).
    assert len(images) == 10
    for alt, complete, width, src in images:
        assert complete and width > 0, f"image '{alt}' did not load"
        assert src.startswith(("data:image/png;base64", "data:image/jpeg;base64"))
    assert urls, "the DevTools log recorded no request at all: the check would be blind"
    remote = [u for u in urls if not u.startswith(("data:", "file:"))]
    assert remote == [], f"requests left the machine: {remote}"
    assert browser.get_screenshot_as_file(str(tmp_path / "report.png"))


def test_network_check_catches_a_remote_request(browser, tmp_path):
    # Control: a page with one remote image must show up as a non-local request.
    page = tmp_path / "remote.html"
    page.write_text("<html><body><img src='http://example.invalid/x.png'></body></html>")
    urls = open_page(browser, page)
    assert any(u.startswith("http://example.invalid") for u in urls)


def test_broken_image_is_detected(browser, tmp_path):
    # Control: an undecodable inline image has naturalWidth 0, so the image check can fail too.
    page = tmp_path / "broken.html"
    page.write_text("<html><body><img src='data:image/png;base64,AAAA'></body></html>")
    open_page(browser, page)
    assert browser.execute_script("return document.images[0].naturalWidth") == 0


def test_ci_installs_the_browser_before_the_tests():
    # .ci/run must install the browser before `make test`, or this file silently skips in CI.
    text = (Path(__file__).resolve().parents[1] / ".ci" / "run").read_text()
    assert "chromium-driver" in text and text.index("chromium-driver") < text.index("make test")


def test_report_from_real_predictions_renders(browser, data_dir, tmp_path):
    """`segment predict` with a bundled member on the 3 Prostate158 cases, `segment evaluate` against the
    expert zones, and the resulting report.html in Chromium: tables, every image, nothing remote."""
    import yaml

    from ensemble.config import BUNDLED
    from segment.cli import main

    member = BUNDLED.parent / yaml.safe_load(BUNDLED.read_text())["members"][0]  # the 2D U-Net, fold 0
    if not member.exists():
        pytest.skip("bundled ensemble not packed (run `make bundle`)")
    pred, rep = tmp_path / "pred", tmp_path / "report"
    assert main(["predict", "--model", str(member), str(data_dir / "prostate158"), "-o", str(pred)]) == 0
    assert main(["evaluate", "--pred", str(pred), "--ref", str(data_dir / "prostate158"), "-o", str(rep)]) == 0
    urls = open_page(browser, rep / "report.html")
    from selenium.webdriver.common.by import By

    head = browser.find_element(By.ID, "headline")
    assert head.is_displayed() and "WG" in head.text and "[" in head.text  # mean [95 % CI]
    images = browser.execute_script("return Array.from(document.images).map(i => [i.alt, i.naturalWidth])")
    assert len(images) >= 4  # cases across models, a thumbnail per case, every metric's plot
    assert all(width > 0 for _, width in images), images
    assert urls and not [u for u in urls if not u.startswith(("data:", "file:"))]
