"""End-to-end ensemble prediction on real cases with tiny members (see conftest.py)."""

import csv
import json
import shutil

import nibabel as nib
import numpy as np
import pytest
import yaml

from ensemble.cli import main
from mricore.results import read_case

P158 = "prostate158/001"          # 232x232x23, T2W only (no ADC): the T2W+ADC member is skipped
PX = "prostatex/ProstateX-0000"   # T2W + ADC on its own grid


def write_cfg(tmp_path, members, name="ens.yaml", **extra):
    path = tmp_path / name
    path.write_text(yaml.safe_dump({"members": [str(m) for m in members], **extra}))
    return path


def assert_same_geometry(out_file, input_file):
    out, src = nib.load(str(out_file)), nib.load(str(input_file))
    assert out.shape[:3] == src.shape[:3]
    assert np.array_equal(out.affine, src.affine)
    q_out, q_code_out = out.header.get_qform(coded=True)
    q_src, q_code_src = src.header.get_qform(coded=True)
    assert q_code_out == q_code_src and np.array_equal(q_out, q_src)
    s_out, s_code_out = out.header.get_sform(coded=True)
    s_src, s_code_src = src.header.get_sform(coded=True)
    assert s_code_out == s_code_src and np.array_equal(s_out, s_src)


def test_end_to_end_t2w_study_with_skipped_member(data_dir, members, tmp_path, capsys):
    cfg = write_cfg(tmp_path, [members["t2_a"], members["t2_b"], members["t2_adc"]])
    t2 = data_dir / P158 / "t2.nii.gz"
    out = tmp_path / "out"
    assert main(["predict", str(t2), "--config", str(cfg), "-o", str(out), "--probabilities", "--report"]) == 0
    err = capsys.readouterr().err
    assert "skipping member t2_adc" in err and "ADC" in err

    for name in ("zones.nii.gz", "uncertainty.nii.gz", "probabilities.nii.gz"):
        assert_same_geometry(out / name, t2)
    zones = nib.load(str(out / "zones.nii.gz"))
    z = np.asarray(zones.dataobj)
    assert zones.get_data_dtype() == np.uint8 and set(np.unique(z)) <= {0, 1, 2}
    unc = np.asarray(nib.load(str(out / "uncertainty.nii.gz")).dataobj)
    assert unc.shape == z.shape + (2,) and unc.min() >= 0 and unc.max() <= 1
    assert set(np.unique(unc[..., 1])) <= {0.0, 0.5, 1.0}  # 2 members: fractions of 2
    prob = np.asarray(nib.load(str(out / "probabilities.nii.gz")).dataobj)
    np.testing.assert_allclose(prob.sum(-1), 1.0, atol=1e-4)

    side = read_case(out)
    assert [m["member"] for m in side.members_used] == ["t2_a/fold_all", "t2_b/fold_all"]
    assert side.members_skipped[0]["member"] == "t2_adc/fold_all"
    assert "ADC" in side.members_skipped[0]["reason"]
    assert side.method == "mean" and side.preprocessing_passes == 2  # two distinct specs
    vml = float(np.prod(zones.header.get_zooms()[:3])) / 1000
    assert side.volume_ml["TZ"] == pytest.approx((z == 1).sum() * vml, abs=1e-3)
    assert side.volume_ml["WG"] == pytest.approx((z > 0).sum() * vml, abs=1e-3)
    assert 0 <= side.uncertainty["score"] <= 1 and 0 <= side.uncertainty["disagreement"] <= 1
    assert side.review["verdict"] in ("ok", "review") and {c["name"] for c in side.review["checks"]} >= {
        "slice_tilt_deg", "dark_fraction", "gland_ml", "disagreement"}
    assert set(side.timings_s) >= {"read_align", "preprocess", "network", "restore", "combine", "write"}
    assert side.software_version
    saved = yaml.safe_load((out / "ensemble.yaml").read_text())
    assert saved["method"] == "mean" and len(saved["members"]) == 3
    assert "data:image/png;base64," in (out / "report.html").read_text()


def test_preprocessing_once_per_distinct_spec(data_dir, members, tmp_path, monkeypatch):
    """3 members, 2 specs (t2_a and its copy share one), on a T2W+ADC case: read once, preprocess twice."""
    import ensemble.engine
    import mricore.datasets

    copy = tmp_path / "t2_a_copy"
    shutil.copytree(members["t2_a"], copy)
    calls = {"preprocess": 0, "load_case": 0}
    real_pre, real_load = ensemble.engine.preprocess, mricore.datasets.load_case

    def counting_pre(*a, **k):
        calls["preprocess"] += 1
        return real_pre(*a, **k)

    def counting_load(*a, **k):
        calls["load_case"] += 1
        return real_load(*a, **k)
    monkeypatch.setattr(ensemble.engine, "preprocess", counting_pre)
    monkeypatch.setattr(mricore.datasets, "load_case", counting_load)
    cfg = write_cfg(tmp_path, [members["t2_a"], copy, members["t2_adc"]])
    assert main(["predict", str(data_dir / PX), "--config", str(cfg), "-o", str(tmp_path / "o")]) == 0
    assert calls == {"preprocess": 2, "load_case": 1}
    side = read_case(tmp_path / "o")
    assert len(side.members_used) == 3 and side.members_skipped == []
    assert side.alignment["channels"]["ADC"]["same_grid"] is False
    assert 0 < side.alignment["score"] <= 1  # ADC resampled onto T2W, NMI recorded
    assert_same_geometry(tmp_path / "o" / "zones.nii.gz", data_dir / PX / "t2.nii.gz")


@pytest.mark.parametrize("method", ["vote", "staple"])
def test_label_fusion_methods(data_dir, members, tmp_path, method):
    from ensemble.config import load_ensemble_config
    from ensemble.predict import predict

    cfg = load_ensemble_config(write_cfg(tmp_path, [members["t2_a"], members["t2_b"]], method=method))
    side = predict(data_dir / P158 / "t2.nii.gz", tmp_path / "o", cfg, notify=False)
    assert side.method == method
    z = np.asarray(nib.load(str(tmp_path / "o" / "zones.nii.gz")).dataobj)
    assert set(np.unique(z)) <= {0, 1, 2}
    if method == "staple":
        perf = side.staple_performance
        assert set(perf) == {"t2_a/fold_all", "t2_b/fold_all"}
        assert all(0 <= v <= 1 for p in perf.values() for v in p["sensitivity"].values())


def test_weighted_from_inner_validation_dsc_never_the_held_out(data_dir, members, tmp_path):
    from ensemble.config import load_ensemble_config
    from ensemble.predict import predict

    folders = []
    for name, val in (("a", {"WG_mean": 0.9, "TZ_mean": 0.8, "PZ_mean": 0.7}),
                      ("b", {"WG_mean": 0.6, "TZ_mean": 0.5, "PZ_mean": 0.4})):
        f = tmp_path / name
        shutil.copytree(members["t2_a" if name == "a" else "t2_b"], f)
        meta = json.loads((f / "model.json").read_text())
        meta["selection"] = val  # inner validation (training patients): may weight the members
        meta["validation"] = {"WG_mean": 0.1, "TZ_mean": 0.1, "PZ_mean": 0.1}  # held out: must not
        (f / "model.json").write_text(json.dumps(meta))
        folders.append(f)
    cfg = load_ensemble_config(write_cfg(tmp_path, folders, method="weighted"))
    side = predict(data_dir / P158 / "t2.nii.gz", tmp_path / "o", cfg, notify=False)
    assert side.weights["a"] == {"background": 0.9, "TZ": 0.8, "PZ": 0.7}
    assert side.weights["b"] == {"background": 0.6, "TZ": 0.5, "PZ": 0.4}


def test_dicom_series_input(data_dir, members, tmp_path):
    from ensemble.config import load_ensemble_config
    from ensemble.predict import predict
    from mricore.dicom import read_dicom_series

    series = data_dir / "dicom/ProstateX-0000/4.000000-t2tsetra-00702"
    cfg = load_ensemble_config(write_cfg(tmp_path, [members["t2_a"], members["t2_adc"]]))
    side = predict(series, tmp_path / "o", cfg, notify=False)
    ref = read_dicom_series(series)
    out = nib.load(str(tmp_path / "o" / "zones.nii.gz"))
    assert out.shape == ref.shape and np.allclose(out.affine, ref.affine, atol=1e-4)
    assert [m["member"] for m in side.members_skipped] == ["t2_adc/fold_all"]


def test_batch_over_dataset_folder(data_dir, members, tmp_path):
    ds = tmp_path / "ds"
    ds.mkdir()
    for case in ("001", "002"):
        (ds / case).mkdir()
        (ds / case / "t2.nii.gz").symlink_to(data_dir / "prostate158" / case / "t2.nii.gz")
    cfg = write_cfg(tmp_path, [members["t2_a"]])
    out = tmp_path / "o"
    assert main(["predict", str(ds), "--config", str(cfg), "-o", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert [c["case_id"] for c in summary["cases"]] == ["001", "002"]
    for case in ("001", "002"):
        assert_same_geometry(out / case / "zones.nii.gz", data_dir / "prostate158" / case / "t2.nii.gz")
    assert main(["predict", str(ds), "--config", str(cfg), "-o", str(out)]) == 2  # no --force


def test_evaluate_ensemble_and_members_side_by_side(data_dir, members, tmp_path):
    ds = tmp_path / "ds"
    (ds / "001").mkdir(parents=True)
    for f in ("t2.nii.gz", "zones.nii.gz"):  # central crop (the slicer keeps the geometry): HD95 stays fast
        nib.save(nib.load(str(data_dir / P158 / f)).slicer[60:172, 60:172, :], str(ds / "001" / f))
    cfg = write_cfg(tmp_path, [members["t2_a"], members["t2_b"], members["t2_adc"]])
    out = tmp_path / "rep"
    assert main(["evaluate", "--config", str(cfg), "--ref", str(ds), "-o", str(out)]) == 0
    summary = json.loads((out / "evaluate.json").read_text())
    assert summary["n_cases"] == 1
    with open(out / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 3 * 3  # (ensemble + 2 members) x 3 zones, one case
    models = {r["model"] for r in rows}
    assert models == {"ensemble", "t2_a/fold_all", "t2_b/fold_all"}  # t2_adc skipped: no ADC
    assert {r["zone"] for r in rows} == {"WG", "TZ", "PZ"}
    tz = summary["zones"]["TZ"]
    # The best member is a family, its folds pooled per case (issue 39): t2_a/fold_all -> t2_a.
    assert tz["best_member"] in {m.split("/")[0] for m in models} and tz["ensemble_minus_best_member_dsc"]["n"] <= 1


def test_scores_a_stored_ensemble_prediction(data_dir, members, tmp_path):
    """`ensemble predict volume -o OUT` output (one case folder with zones.json) is scored as it is."""
    from segment.evaluate import evaluate

    cfg = write_cfg(tmp_path, [members["t2_a"]])
    out = tmp_path / "ens_out"
    assert main(["predict", str(data_dir / P158), "--config", str(cfg), "-o", str(out)]) == 0
    evaluate(out, data_dir / "prostate158", tmp_path / "rep", progress=False)
    with open(tmp_path / "rep" / "metrics.csv") as f:
        rows = {(r["case_id"], r["zone"]): float(r["dsc"]) for r in csv.DictReader(f)}
    assert set(rows) == {("001", z) for z in ("WG", "TZ", "PZ")}
    pred = np.asarray(nib.load(str(out / "zones.nii.gz")).dataobj)
    ref = np.asarray(nib.load(str(data_dir / "prostate158/001/zones.nii.gz")).dataobj)
    from mricore.metrics import dice

    assert rows[("001", "WG")] == pytest.approx(dice(pred > 0, ref > 0))
