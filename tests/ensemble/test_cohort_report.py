"""`ensemble predict DATASET --report`: the cohort's OUT/report.html (mricore.cohort_report) on 12 real
unlabelled studies of ../shared/data, with a tiny member of conftest.py (the layout, not the accuracy)."""

from __future__ import annotations

import csv
import re
import sys
from collections import Counter
from pathlib import Path

import nibabel as nib
import pytest
import yaml

from ensemble.cli import main
from mricore.cohort_report import reference_ranges
from mricore.gland_reference import load_reference
from mricore.thumbnails import MAX_THUMBNAILS

sys.path.append(str(Path(__file__).resolve().parents[1]))  # tests/: the shared Chromium helper
from chromium import CHROMIUM, open_page, set_viewport, start_chromium

# 12 studies with a T2W image and no expert zones: Siemens, Philips and an endorectal-coil study.
STUDIES = ([f"unlabelled/Prostate3T-03-000{i}" for i in range(1, 6)] + ["unlabelled/ProstateX-0217",
           "unlabelled/ProstateX-0218"] + [f"philips/Philips-0{i}" for i in range(1, 5)] + ["promise12/Case00"])


@pytest.fixture(scope="module")
def cohort(data_dir, members, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("cohort")
    for s in STUDIES:  # the central half in-plane (the slicer keeps the geometry): half the time
        (root / "ds" / Path(s).name).mkdir(parents=True)
        img = nib.load(str(data_dir / s / "t2.nii.gz"))
        w, h = img.shape[:2]
        nib.save(img.slicer[w // 4:3 * w // 4, h // 4:3 * h // 4, :], str(root / "ds" / Path(s).name / "t2.nii.gz"))
    (root / "ens.yaml").write_text(yaml.safe_dump({"members": [str(members["t2_a"])]}))
    code = main(["predict", str(root / "ds"), "--config", str(root / "ens.yaml"), "-o", str(root / "out"),
                 "--report", "--workers", "2"])
    assert code in (0, 2)  # 2: some study failed its checks; the others are complete and reported
    return root / "out"


def test_verdict_counts_equal_summary_csv(cohort):
    with open(cohort / "summary.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 12
    want = Counter(r["verdict"] if r["status"] == "ok" else "failed" for r in rows)
    html = (cohort / "report.html").read_text()
    table = html[html.index("id='verdicts'"):html.index("</table>", html.index("id='verdicts'"))]
    got = dict(re.findall(r"<b class='\w+'>(\w+)</b></td><td>(\d+)</td>", table))
    assert {k: int(v) for k, v in got.items()} == {v: want.get(v, 0) for v in ("ok", "review", "reject", "failed")}
    flagged = [r["case_id"] for r in rows if r["status"] == "ok" and r["verdict"] != "ok"]
    assert html.count("class=\"thumb\"") == len(flagged)  # every flagged case has its thumbnail
    for case in flagged:
        assert f"href='{case}/report.html'" in html
    # Under 2 MB for 100 cases: the page without its thumbnails grows with the cases at most, and
    # thumbnails are capped at MAX_THUMBNAILS, each no larger than the largest here.
    thumbs = [len(t) for t in re.findall(r'src="data:image/jpeg;base64,([^"]*)"', html)]
    rest = len(html.encode()) - sum(thumbs)
    assert rest / 12 * 100 + MAX_THUMBNAILS * max(thumbs) < 2_000_000


def test_expert_range_is_the_gland_reference():
    maps = load_reference()["maps"]
    lo, _, hi = reference_ranges()["WG"]
    assert (lo, hi) == (min(m["WG_ml"] for m in maps), max(m["WG_ml"] for m in maps))
    tz = reference_ranges()["TZ"]
    assert tz[0] >= 0 and tz[2] <= hi and tz[0] < tz[1] < tz[2]


def test_cohort_report_renders_offline(cohort, tmp_path):
    if not CHROMIUM.exists():
        pytest.skip("headless browser test needs /usr/bin/chromium")
    drv = start_chromium(tmp_path / "profile", 1400, 900)
    try:
        set_viewport(drv, 1400, 900)
        urls = open_page(drv, cohort / "report.html")
        assert urls and not [u for u in urls if not u.startswith(("data:", "file:"))]
        images = drv.execute_script("return Array.from(document.images).map(i => [i.alt, i.naturalWidth])")
        assert images and all(w > 0 for _, w in images), images
        top = drv.execute_script("return document.getElementById('verdicts').getBoundingClientRect().bottom")
        assert top <= 900  # the verdict counts are on the first screen
    finally:
        drv.quit()
