"""mricore.report.write_report: files, summaries, comparisons, self-contained HTML, refusals."""

import csv
import json
import re

import nibabel as nib
import numpy as np
import pytest

from mricore.errors import InputError, OutputExistsError
from mricore.report import write_report
from mricore.stats import summarize


def rows_for(models=("m1",), n=5, seed=0):
    rng = np.random.default_rng(seed)
    return [{"case_id": f"c{i}", "model": m, "zone": z, "dsc": float(rng.uniform(0.5, 0.9)), "hd95": float(rng.uniform(1, 9)),
             "tp": int(rng.integers(10, 100))} for m in models for z in ("WG", "PZ") for i in range(n)]


def test_writes_csv_json_html(tmp_path):
    rows = rows_for()
    rows[0]["dsc"] = float("nan")  # an undefined value is excluded and counted
    html_path = write_report(tmp_path / "r", rows, title="t", settings={"label": "zones"})
    assert html_path == tmp_path / "r" / "report.html"
    with open(tmp_path / "r" / "metrics.csv") as f:
        table = list(csv.DictReader(f))
    assert len(table) == len(rows) and table[0]["dsc"] == "" and table[1]["tp"] == str(rows[1]["tp"])
    doc = json.loads((tmp_path / "r" / "metrics.json").read_text())
    wg = [r["dsc"] for r in rows if r["zone"] == "WG"]
    want = summarize(wg)
    got = doc["summary"]["m1"]["WG"]["dsc"]
    assert (got["n"], got["n_excluded"]) == (4, 1)
    assert got["mean"] == pytest.approx(want["mean"]) and got["ci_low"] == pytest.approx(want["ci_low"])
    assert "tp" not in doc["summary"]["m1"]["WG"]  # raw counts are in the CSV, not summarised
    assert doc["software"]["mricore"] and doc["settings"] == {"label": "zones"}
    assert doc["counts"]["cases"] == 5 and doc["comparisons"] == []


def test_html_is_self_contained(tmp_path):
    text = write_report(tmp_path / "r", rows_for(), title="t <b>").read_text()
    assert "id='summary'" in text and "t &lt;b&gt;" in text
    # No external fetches: every src is inline data, no link/script tags, no http(s) URL anywhere.
    assert all(s.startswith("data:image/png;base64,") for s in re.findall(r'src="([^"]*)"', text))
    assert not re.search(r"<script|<link|https?://", text)
    # The cases across models, then one distribution per summarised metric (dsc, hd95), collapsed.
    assert len(re.findall(r"<img ", text)) == 1 + 2


def test_comparison_of_two_models(tmp_path):
    a = rows_for(("a",))
    rows = a + [{**r, "model": "b", "dsc": r["dsc"] - 0.05} for r in a]  # b is a, 0.05 worse on every case
    write_report(tmp_path / "r", rows, title="t")
    doc = json.loads((tmp_path / "r" / "metrics.json").read_text())
    c = [c for c in doc["comparisons"] if c["zone"] == "WG" and c["metric"] == "dsc"][0]
    assert (c["a"], c["b"], c["n"]) == ("a", "b", 5)
    assert c["mean"] == pytest.approx(0.05) and c["ci_low"] == pytest.approx(0.05)
    assert "id='comparison'" in (tmp_path / "r" / "report.html").read_text()


def test_curves_and_case_thumbnails_are_drawn(tmp_path):
    g = np.indices((20, 20, 5)).astype(float)
    gland = ((g[0] - 10) ** 2 + (g[1] - 10) ** 2) < 36
    cases = []
    for i in range(4):
        paths = {"case_id": f"c{i}"}
        for name, arr in (("image", gland * 100.0 + 50), ("ref", gland.astype(np.uint8)),
                          ("pred", np.roll(gland, i, 0).astype(np.uint8))):
            paths[name] = tmp_path / f"c{i}_{name}.nii.gz"
            nib.save(nib.Nifti1Image(arr.astype(np.float32 if name == "image" else np.uint8), np.eye(4)), paths[name])
        cases.append(paths)
    curves = {"roc": {"m1": ([0, 0.5, 1], [0, 0.8, 1], 0.8)}}
    text = write_report(tmp_path / "r", rows_for(n=4), title="t", cases=cases, curves=curves).read_text()
    assert text.count("<img ") == 1 + 1 + 4 + 2  # cases across models + ROC + a thumbnail per case + metrics
    assert text.count('src="data:image/jpeg;base64,') == 4
    doc = json.loads((tmp_path / "r" / "metrics.json").read_text())
    assert doc["curves_summary"]["roc"]["m1"] == 0.8
    worst = doc["cases_worst_first"][0]
    assert worst["dsc"] == min(r["dsc"] for r in rows_for(n=4))  # the worst case heads the table
    assert text.index(f">{worst['case_id']}<") < min(text.index(f">c{i}<") for i in range(4) if f"c{i}" != worst["case_id"])


def test_refuses_to_overwrite_without_force(tmp_path):
    write_report(tmp_path / "r", rows_for(), title="first")
    before = (tmp_path / "r" / "report.html").read_text()
    with pytest.raises(OutputExistsError, match="--force"):
        write_report(tmp_path / "r", rows_for(seed=1), title="second")
    assert (tmp_path / "r" / "report.html").read_text() == before
    write_report(tmp_path / "r", rows_for(seed=1), title="second", force=True)
    assert "second" in (tmp_path / "r" / "report.html").read_text()


BAD_ROWS = [
    ([], "at least one row"),                                                        # nothing to report
    ([{"model": "m", "zone": "WG", "dsc": 0.5}], "case_id"),                         # missing key
    ([{"case_id": "c", "model": "m", "zone": "WG", "dsc": "0.5"}], "numbers"),       # a string metric
    ([{"case_id": "c", "model": "m", "zone": "WG", "dsc": 0.5}] * 2, "duplicate"),   # same case/model/zone twice
]


@pytest.mark.parametrize("rows, match", BAD_ROWS)
def test_bad_rows_write_nothing(tmp_path, rows, match):
    with pytest.raises(InputError, match=match):
        write_report(tmp_path / "r", rows, title="t")
    assert not (tmp_path / "r").exists()


def test_output_path_that_is_a_file(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(InputError, match="folder"):
        write_report(tmp_path / "f", rows_for(), title="t")
