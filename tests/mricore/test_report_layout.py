"""The first screen of a report (mricore.report_data, mricore.report_html) and its figures (mricore.plots):
folds pooled per case, the sentence per zone, the worst case first, no empty rows, readable figures."""

import csv
import json

import numpy as np
import pytest

from mricore import plots
from mricore.report import write_report
from mricore.report_data import headline, per_case_table, sentence, worst_first
from mricore.stats import summarize

MODELS = ["ensemble", "unet/fold_0", "unet/fold_1", "dyn/fold_0", "dyn/fold_1"]
FAMILIES = {m: m.split("/")[0] for m in MODELS}


def rows_for(n=6, seed=0, models=MODELS):
    rng = np.random.default_rng(seed)
    rows = []
    for m in models:
        for z in ("WG", "TZ", "PZ"):
            for i in range(n):
                r = {"case_id": f"c{i}", "model": m, "zone": z, "dsc": float(rng.uniform(0.6, 0.9)),
                     "hd95": float(rng.uniform(2, 9))}
                if m == "ensemble":  # only the ensemble has a verdict: members have no such value
                    r["flagged"] = float(i == 0)
                rows.append(r)
    return rows


def test_families_are_pooled_per_case():
    rows = rows_for()
    h = headline(per_case_table(rows), MODELS, ["WG", "TZ", "PZ"], ["dsc", "hd95", "flagged"], FAMILIES)
    assert [r["model"] for r in h["rows"]] == ["ensemble", "unet", "dyn"]
    assert h["rows"][1]["models"] == ["unet/fold_0", "unet/fold_1"]
    per_case = {}
    for r in rows:
        if r["zone"] == "TZ" and r["model"].startswith("unet/"):
            per_case.setdefault(r["case_id"], []).append(r["dsc"])
    want = summarize([np.mean(v) for v in per_case.values()])
    got = h["rows"][1]["zones"]["TZ"]["dsc"]
    assert got["n"] == 6 and got["mean"] == pytest.approx(want["mean"]) and got["ci_low"] == pytest.approx(want["ci_low"])
    assert h["versus"]["TZ"][0]["role"] == "best member" and h["versus"]["TZ"][0]["model"] in ("unet", "dyn")


def test_peers_are_rows_and_sentences_but_never_the_best_member():
    rows = rows_for()
    rows += [{**r, "model": "nnunet (compared)", "dsc": r["dsc"] + 0.2} for r in rows if r["model"] == "dyn/fold_0"]
    h = headline(per_case_table(rows), MODELS + ["nnunet (compared)"], ["WG"], ["dsc", "hd95"], FAMILIES,
                 ("nnunet (compared)",))
    assert [r["model"] for r in h["rows"]][:2] == ["ensemble", "nnunet (compared)"]
    roles = {v["model"]: v["role"] for v in h["versus"]["WG"]}
    assert roles["nnunet (compared)"] == "compared maps" and list(roles.values()).count("best member") == 1


D = {"mean": 0.03, "ci_low": 0.01, "ci_high": 0.05, "n": 5}
SENTENCES = [
    (D, "dsc", "beats unet (best member) by 0.030 DSC (95 % CI +0.010 to +0.050, 5 paired cases)"),  # CI above 0
    ({**D, "mean": -0.03, "ci_low": -0.05, "ci_high": -0.01}, "dsc", "is worse than unet"),       # CI below 0
    ({**D, "ci_low": -0.01}, "dsc", "no clear difference"),                                        # CI spans 0
    ({**D, "ci_low": float("nan"), "ci_high": float("nan"), "n": 1}, "dsc", "no confidence interval"),  # one case
    ({**D, "n": 0}, "dsc", "no case was scored by both"),                                          # nothing paired
    ({**D, "mean": -1.0, "ci_low": -2.0, "ci_high": -0.5}, "hd95", "beats unet"),                # lower is better
]


@pytest.mark.parametrize("d, metric, want", SENTENCES)
def test_sentence_in_words(d, metric, want):
    assert want in sentence("TZ", "ensemble", "unet", "best member", metric, d)


def test_worst_case_first_by_lowest_zone():
    table = {"m": {"WG": {"dsc": {"a": 0.9, "b": 0.8, "c": float("nan")}}, "PZ": {"dsc": {"a": 0.5, "b": 0.7,
                                                                                           "c": float("nan")}}}}
    assert worst_first(table, "m", ["WG", "PZ"], "dsc") == [("a", "PZ", 0.5), ("b", "PZ", 0.7), ("c", None, pytest.approx(float("nan"), nan_ok=True))]


def test_report_files_and_no_empty_rows(tmp_path):
    text = write_report(tmp_path / "r", rows_for(), title="t", groups=FAMILIES).read_text()
    doc = json.loads((tmp_path / "r" / "metrics.json").read_text())
    assert "flagged" not in doc["summary"]["unet/fold_0"]["WG"]  # members have no verdict: no row of dashes
    with open(tmp_path / "r" / "metrics_summary.csv") as f:
        summary = list(csv.DictReader(f))
    assert len(summary) == 5 * 3 * 2 + 3  # models x zones x (dsc, hd95) + the ensemble's flagged per zone
    assert all(r["mean"] for r in summary)
    with open(tmp_path / "r" / "comparisons.csv") as f:
        pairs = list(csv.DictReader(f))
    assert len(pairs) == 10 * 3 * 2 and all(int(r["n"]) > 0 for r in pairs)  # 10 pairs; flagged pairs none
    # The first screen first, the detail collapsed after it.
    assert text.index("id='headline'") < text.index("id='verdicts'") < text.index("id='cases'") < text.index("<details")
    assert text.index("<details") < text.index("id='summary'") and text.index("<details") < text.index("id='comparison'")
    assert "2 folds pooled" in text and "id='folds'" in text


def test_tick_label_boxes_find_an_overlap():
    # Control: 30 long labels on a narrow x axis must overlap, and the check must say so.
    plt = plots.pyplot()
    fig, ax = plt.subplots(figsize=(3, 2))
    ax.set_xticks(range(30), [f"model_name_{i}" for i in range(30)])
    boxes = plots.tick_label_boxes(fig)
    plt.close(fig)
    assert len(boxes[0]) == 30 and plots.overlapping_pairs(boxes[0]) > 0


def test_figures_of_ten_long_model_names_are_legible():
    names = [f"dynunet25d_scale/fold_{k}_{'x' * k}" for k in range(10)]
    diffs = {z: {m: {"mean": 0.01 * i, "ci_low": -0.02, "ci_high": 0.05, "n": 5} for i, m in enumerate(names)}
             for z in ("WG", "TZ", "PZ")}
    values = {z: {m: {f"c{i}": 0.7 + 0.01 * i for i in range(5)} for m in names} for z in ("WG", "TZ", "PZ")}
    for p in (plots.forest(diffs, "ensemble", "dsc", ["WG", "TZ", "PZ"]),
              plots.paired_cases(values, "dsc", ["WG", "TZ", "PZ"], names)):
        assert p.overlapping_ticks == 0 and p.min_text_px >= 11
        assert p.width_px <= 1240  # shown 1:1 in the page's content width, so the text stays >= 11 px
        assert p.png.startswith(b"\x89PNG")


def test_case_view_of_a_real_case(data_dir, tmp_path):
    """prostate158/001 against itself shifted: a small JPEG thumbnail, volumes by the one volume rule; an
    image on another grid leaves the background out rather than failing the report."""
    import io

    import nibabel as nib
    from PIL import Image

    from mricore.results import zone_volumes_ml
    from mricore.thumbnails import case_view

    case = data_dir / "prostate158" / "001"
    ref = nib.load(str(case / "zones.nii.gz"))
    arr = np.asarray(ref.dataobj)
    nib.save(nib.Nifti1Image(np.roll(arr, 5, axis=0), ref.affine), str(tmp_path / "001.nii.gz"))
    view = case_view({"case_id": "001", "pred": tmp_path / "001.nii.gz", "image": case / "t2.nii.gz",
                      "ref": case / "zones.nii.gz"})
    picture = Image.open(io.BytesIO(view.thumbnail))
    assert picture.format == "JPEG" and picture.size == (160, 160) and len(view.thumbnail) < 20_000
    voxel_ml = abs(np.linalg.det(ref.affine[:3, :3])) / 1000
    assert view.ref_volume_ml == zone_volumes_ml(arr, voxel_ml) and view.volume_ml["WG"] == view.ref_volume_ml["WG"]
    assert view.verdict is None and view.report is None  # a flat prediction file has no case record
    other = case_view({"case_id": "001", "pred": tmp_path / "001.nii.gz", "image": data_dir / "prostate158/021/t2.nii.gz"})
    assert other.thumbnail and other.ref_volume_ml is None
