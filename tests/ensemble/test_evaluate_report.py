"""`ensemble evaluate`'s report as a reader meets it (issue 39): the bundle (9 members) on the five expert
cases, run once for the module (about a minute on 2 cores), read back in headless Chromium at 1400 x 900;
and `--compare` with the tiny members of conftest.py (layout, not figures)."""

from __future__ import annotations

import csv
import json
import re
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import yaml

from ensemble.cli import main
from mricore.stats import summarize

sys.path.append(str(Path(__file__).resolve().parents[1]))  # tests/: the shared Chromium helper
from chromium import CHROMIUM, open_page, set_viewport, start_chromium, viewport_box

EXPERT = ("prostate158/001", "prostate158/002", "prostate158/021", "i2cvb/Patient_52209036", "i2cvb/Patient_68619")
SCREEN = (1400, 900)


@pytest.fixture(scope="module")
def bundle_report(data_dir, tmp_path_factory) -> Path:
    """The report folder of `ensemble evaluate` with the bundled ensemble on the five expert cases."""
    from ensemble.config import BUNDLED

    members = yaml.safe_load(BUNDLED.read_text())["members"]
    if not all((BUNDLED.parent / m).exists() for m in members):
        pytest.skip("bundled ensemble not packed (run `make bundle`)")
    root = tmp_path_factory.mktemp("expert")
    for case in EXPERT:
        (root / "ref" / Path(case).name).parent.mkdir(parents=True, exist_ok=True)
        (root / "ref" / Path(case).name).symlink_to(data_dir / case)
    assert main(["evaluate", "--ref", str(root / "ref"), "-o", str(root / "report")]) == 0
    return root / "report"


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    if not CHROMIUM.exists():
        pytest.skip("headless browser test needs /usr/bin/chromium")
    drv = start_chromium(tmp_path_factory.mktemp("chromium-profile"), *SCREEN)
    set_viewport(drv, *SCREEN)
    yield drv
    drv.quit()


def _csv_rows(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_headline_numbers_equal_metrics_csv(bundle_report):
    """Golden: every headline cell is recomputed from metrics.csv (folds of a family averaged per case)."""
    rows = _csv_rows(bundle_report / "metrics.csv")
    assert len({r["model"] for r in rows}) == 10 and len({r["case_id"] for r in rows}) == 5
    per: dict = {}
    for r in rows:
        family = re.sub(r"_fold\d+$", "", r["model"])  # bundle folders: <config>_fold<k>
        per.setdefault((family, r["zone"]), {}).setdefault(r["case_id"], []).append(float(r["dsc"]))
    doc = json.loads((bundle_report / "metrics.json").read_text())
    head = doc["headline"]
    assert [r["model"] for r in head["rows"]] == ["ensemble", "unet2d_long", "dynunet25d_scale", "dynunet2d_long"]
    html = (bundle_report / "report.html").read_text()
    for row in head["rows"]:
        for zone in ("WG", "TZ", "PZ"):
            want = summarize([np.mean(v) for v in per[(row["model"], zone)].values()])
            got = row["zones"][zone]["dsc"]
            assert got["n"] == 5 and got["mean"] == pytest.approx(want["mean"])
            assert got["median"] == pytest.approx(want["median"]) and got["ci_low"] == pytest.approx(want["ci_low"])
            assert f"<b>{want['mean']:.3f}</b> [{want['ci_low']:.3f}, {want['ci_high']:.3f}]" in html
    summary = json.loads((bundle_report / "evaluate.json").read_text())
    for zone in ("WG", "TZ", "PZ"):  # the CLI's and evaluate.json's best member is the report's
        assert summary["zones"][zone]["best_member"] == head["versus"][zone][0]["model"]


def test_first_screen_holds_the_headline_and_the_sentences(bundle_report, browser):
    urls = open_page(browser, bundle_report / "report.html")
    assert urls and not [u for u in urls if not u.startswith(("data:", "file:"))], "nothing may be fetched"
    for selector in ("#headline", "#verdicts"):
        box = viewport_box(browser, selector)
        assert box and box["rendered"] and (box["vw"], box["vh"]) == SCREEN
        assert 0 <= box["top"] and box["bottom"] <= SCREEN[1] and box["right"] <= SCREEN[0], (selector, box)
    items = browser.execute_script("return Array.from(document.querySelectorAll('#verdicts li')).map(li => li.textContent)")
    assert [s.split(":")[0] for s in items] == ["WG", "TZ", "PZ"] and all("ensemble" in s and "95 % CI" in s for s in items)


def test_worst_case_thumbnail_is_visible_without_expanding(bundle_report, browser):
    open_page(browser, bundle_report / "report.html")
    rows = _csv_rows(bundle_report / "metrics.csv")
    lowest = min((float(r["dsc"]), r["case_id"]) for r in rows if r["model"] == "ensemble")[1]
    first = browser.execute_script(
        "const tr = document.querySelectorAll('#cases tr')[1]; const im = tr.querySelector('img.thumb');"
        "const a = im.closest('a'); return [tr.cells[0].textContent, im.naturalWidth, im.closest('details') === null,"
        "a ? a.getAttribute('href') : null, im.getBoundingClientRect().width];")
    assert first[0] == lowest and first[1] > 0 and first[2] and first[4] > 0
    assert (bundle_report / first[3]).is_file()  # the thumbnail opens the case's own report
    from selenium.webdriver.common.by import By

    assert browser.find_elements(By.CSS_SELECTOR, "#cases img.thumb")[0].is_displayed()


def test_figures_are_legible_and_the_report_is_small(bundle_report, browser):
    figures = json.loads((bundle_report / "metrics.json").read_text())["figures"]
    drawn = [f for group in figures.values() for f in group]
    assert len(figures["first"]) == 2 and drawn
    for f in drawn:  # measured on matplotlib's rendered text boxes when each figure was made
        assert f["overlapping_ticks"] == 0 and f["min_text_px"] >= 11, f
    open_page(browser, bundle_report / "report.html")
    shown = browser.execute_script("return Array.from(document.querySelectorAll('img.fig')).filter(i => "
                                   "i.closest('details') === null).map(i => [i.alt, i.naturalWidth, i.clientWidth])")
    assert len(shown) == 2
    for alt, natural, width in shown:  # shown 1:1, so matplotlib's >= 11 px text is >= 11 px on screen
        assert natural > 0 and width == natural, alt
    assert (bundle_report / "report.html").stat().st_size < 1_000_000


def _one_case(data_dir, root: Path) -> Path:
    """prostate158/001 cropped around the gland (the slicer keeps the geometry): seconds, not minutes."""
    (root / "001").mkdir(parents=True)
    for f in ("t2.nii.gz", "zones.nii.gz"):
        nib.save(nib.load(str(data_dir / "prostate158/001" / f)).slicer[60:172, 60:172, :], str(root / "001" / f))
    return root


def test_compare_scores_an_earlier_evaluations_maps(data_dir, members, tmp_path, capsys):
    ds = _one_case(data_dir, tmp_path / "ds")
    for name, member in (("a", "t2_a"), ("b", "t2_b")):
        (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump({"members": [str(members[member])]}))
    assert main(["evaluate", "--config", str(tmp_path / "a.yaml"), "--ref", str(ds), "-o", str(tmp_path / "first")]) == 0
    assert (tmp_path / "first" / "001" / "zones.nii.gz").is_file()  # the case folder the report links to
    capsys.readouterr()
    assert main(["evaluate", "--config", str(tmp_path / "b.yaml"), "--ref", str(ds), "-o", str(tmp_path / "second"),
                 "--compare", str(tmp_path / "first")]) == 0
    assert "DSC ensemble − first (compared)" in capsys.readouterr().out
    head = json.loads((tmp_path / "second" / "metrics.json").read_text())["headline"]
    assert [r["model"] for r in head["rows"]][:2] == ["ensemble", "first (compared)"]
    assert any(v["role"] == "compared maps" for v in head["versus"]["WG"])
    first = {r["zone"]: r["dsc"] for r in _csv_rows(tmp_path / "first" / "metrics.csv") if r["model"] == "ensemble"}
    again = {r["zone"]: r["dsc"] for r in _csv_rows(tmp_path / "second" / "metrics.csv") if r["model"] == "first (compared)"}
    assert again == first  # the earlier ensemble's maps, scored again, give the same numbers


def test_compare_without_matching_cases_is_a_one_line_error(data_dir, members, tmp_path, capsys):
    ds = _one_case(data_dir, tmp_path / "ds")
    other = tmp_path / "peer"
    other.mkdir()
    nib.save(nib.load(str(ds / "001" / "zones.nii.gz")), str(other / "someone_else.nii.gz"))
    (tmp_path / "a.yaml").write_text(yaml.safe_dump({"members": [str(members["t2_a"])]}))
    assert main(["evaluate", "--config", str(tmp_path / "a.yaml"), "--ref", str(ds), "-o", str(tmp_path / "r"),
                 "--compare", str(other)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--compare" in err
    assert not (tmp_path / "r" / "report.html").exists() and not (tmp_path / "r" / "001").exists()
