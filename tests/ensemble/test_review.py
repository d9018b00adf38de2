"""The review verdict end to end: inputs that are not an axial T2W study are refused before any network
runs (exit 2, one line, nothing written) unless --force; every prediction carries its verdict in
zones.json, the printed line, report.html, the batch summary and `ensemble evaluate`'s tables."""

import csv
import json
import shutil

import nibabel as nib
import pytest
import yaml

from ensemble.cli import main

PX = "prostatex/ProstateX-0000"


def write_cfg(tmp_path, members):
    path = tmp_path / "ens.yaml"
    path.write_text(yaml.safe_dump({"members": [str(m) for m in members]}))
    return path


def assert_user_error(capsys, code, *needles):
    err = capsys.readouterr().err.strip()
    assert code == 2 and "Traceback" not in err and len(err.splitlines()) == 1, err
    for n in needles:
        assert n in err, err


@pytest.fixture
def no_network(monkeypatch):
    def fail(*a, **k):
        raise AssertionError("a network ran on a refused input")
    monkeypatch.setattr("ensemble.engine.run_ensemble", fail)


def test_adc_saved_as_t2_is_refused_before_any_network(data_dir, members, tmp_path, capsys, no_network):
    t2 = tmp_path / "t2.nii.gz"
    shutil.copy(data_dir / PX / "adc.nii.gz", t2)  # the file name says T2; the content does not
    out = tmp_path / "out"
    code = main(["predict", str(t2), "--config", str(write_cfg(tmp_path, [members["t2_a"]])), "-o", str(out)])
    assert_user_error(capsys, code, "not an axial T2W study", "inplane_mm 2", "--force")
    assert not out.exists()


def test_sagittal_dicom_series_is_refused(data_dir, members, tmp_path, capsys, no_network):
    series = next((data_dir / "dicom/ProstateX-0000").glob("*t2tsesag*"))
    out = tmp_path / "out"
    code = main(["predict", str(series), "--config", str(write_cfg(tmp_path, [members["t2_a"]])), "-o", str(out)])
    assert_user_error(capsys, code, "not an axial T2W study", "slice_tilt_deg 9")
    assert not out.exists()


def test_force_segments_a_rejected_input_and_keeps_the_verdict(data_dir, members, tmp_path, capsys):
    t2 = tmp_path / "t2.nii.gz"
    shutil.copy(data_dir / "prostate158/001/dwi.nii.gz", t2)  # on the T2 grid: only the content tells
    out = tmp_path / "out"
    cfg = write_cfg(tmp_path, [members["t2_a"]])
    assert main(["predict", str(t2), "--config", str(cfg), "-o", str(out), "--force"]) == 0
    side = json.loads((out / "zones.json").read_text())
    assert side["review"]["verdict"] == "reject"
    assert any(r.startswith("dark_fraction") for r in side["review"]["reasons"])
    assert ": reject (dark_fraction" in capsys.readouterr().out


def test_every_prediction_carries_its_verdict(data_dir, members, tmp_path, capsys):
    t2 = data_dir / "prostate158/001/t2.nii.gz"
    out = tmp_path / "out"
    cfg = write_cfg(tmp_path, [members["t2_a"], members["t2_b"]])
    assert main(["predict", str(t2), "--config", str(cfg), "-o", str(out), "--report"]) == 0
    printed = capsys.readouterr().out.strip()
    side = json.loads((out / "zones.json").read_text())
    review = side["review"]
    assert review["verdict"] in ("ok", "review", "reject") and f": {review['verdict']}" in printed
    names = {c["name"] for c in review["checks"]}
    assert {"slice_tilt_deg", "inplane_mm", "dark_fraction", "sharpness", "disagreement", "entropy",
            "border_mm", "pz_posterior_mm"} <= names
    assert all(c["verdict"] != "reject" for c in review["checks"])  # a real axial T2W study
    assert review["features"]["slab"] is False and review["features"]["inplane_mm"] < 0.5
    for reason in review["reasons"]:
        assert reason in printed
    html = (out / "report.html").read_text()
    assert f">{review['verdict']}</b>" in html and "member disagreement" in html and "all checks" in html


def test_batch_summary_lists_verdicts_and_refused_cases(data_dir, members, tmp_path, capsys):
    ds = tmp_path / "ds"
    for case, src in (("good", data_dir / "prostate158/001/t2.nii.gz"), ("adc", data_dir / PX / "adc.nii.gz")):
        (ds / case).mkdir(parents=True)
        img = nib.load(str(src))
        nib.save(img, str(ds / case / "t2.nii.gz"))
    out = tmp_path / "out"
    assert main(["predict", str(ds), "--config", str(write_cfg(tmp_path, [members["t2_a"]])), "-o", str(out)]) == 2
    assert "1 of 2 cases failed" in capsys.readouterr().err
    with open(out / "summary.csv", newline="") as f:
        rows = {r["case_id"]: r for r in csv.DictReader(f)}
    assert rows["good"]["status"] == "ok" and rows["good"]["verdict"] in ("ok", "review")
    assert rows["adc"]["status"] == "failed" and "not an axial T2W study" in rows["adc"]["error"]
    assert not (out / "adc").exists()


def test_evaluate_tables_carry_the_verdict(data_dir, members, tmp_path):
    ds = tmp_path / "ds"
    (ds / "001").mkdir(parents=True)
    for f in ("t2.nii.gz", "zones.nii.gz"):
        nib.save(nib.load(str(data_dir / "prostate158/001" / f)).slicer[60:172, 60:172, :], str(ds / "001" / f))
    out = tmp_path / "rep"
    assert main(["evaluate", "--config", str(write_cfg(tmp_path, [members["t2_a"]])), "--ref", str(ds),
                 "-o", str(out)]) == 0
    summary = json.loads((out / "evaluate.json").read_text())
    verdict = summary["review"]["001"]["verdict"]
    with open(out / "review.csv", newline="") as f:
        assert list(csv.DictReader(f))[0]["verdict"] == verdict
    with open(out / "metrics.csv", newline="") as f:
        ens = [r for r in csv.DictReader(f) if r["model"] == "ensemble"]
    assert len(ens) == 3 and all(float(r["flagged"]) == float(verdict != "ok") for r in ens)


def test_a_config_without_fitted_limits_takes_the_bundles(tmp_path, monkeypatch):
    """The fitted review limits are stored once, in the bundle's ensemble.yaml: a config that leaves
    them out (configs/ensemble/default.yaml, or any user's) takes those; its own values win; with no
    bundle the fitted checks are not calibrated (n/a)."""
    from ensemble import config as ec
    from mricore.review_limits import FITTED

    bundle = yaml.safe_load(ec.BUNDLED.read_text())["review"]
    cfg = tmp_path / "ens.yaml"
    cfg.write_text(yaml.safe_dump({"members": ["m"], "review": {"max_noise": 0.5}}))
    review = ec.load_ensemble_config(cfg).review
    assert review.max_noise == 0.5
    assert all(getattr(review, k) == bundle[k] for k in FITTED if k != "max_noise")
    monkeypatch.setattr(ec, "BUNDLED", tmp_path / "no_bundle" / "ensemble.yaml")
    review = ec.load_ensemble_config(cfg).review
    assert review.max_noise == 0.5 and all(getattr(review, k) is None for k in FITTED if k != "max_noise")
