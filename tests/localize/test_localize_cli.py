"""`localize` end to end on real ProstateX cases (tiny model, 1 epoch), and bad inputs: one line, exit 2,
nothing written."""

import json
import shutil

import nibabel as nib
import numpy as np
import pytest
import yaml

from localize.cli import main

TINY = {  # CPU-sized: 6 ProstateX cases, 2 folds, 1 epoch of 2 steps
    "name": "tiny", "data": {"datasets": ["prostatex"], "folds": 2},
    "preprocess": {"channels": ["T2W"], "target_spacing": [0.6, 0.6, None], "crop_mm": None},
    "candidates": {"patch": [64, 64], "stride": [48, 48]},
    "model": {"name": "resnet18", "width": 0.125, "covariates": ["prostate_volume_ml", "zone_pz"],
              "cam_layer": "encoder.layer3"},
    "train": {"epochs": 1, "iters_per_epoch": 2, "batch_size": 8},
}


@pytest.fixture(scope="module")
def trained(data_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("loc")
    cfg = dict(TINY, output_dir=str(root / "runs"), data=dict(TINY["data"], root=str(data_dir)))
    (root / "tiny.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["train", "--config", str(root / "tiny.yaml"), "--fold", "0"]) == 0
    return root, root / "runs" / "tiny" / "fold_0"


@pytest.fixture(scope="module")
def predicted(trained, data_dir):
    root, model = trained
    case = data_dir / "prostatex" / "ProstateX-0000"
    out = root / "pred" / "ProstateX-0000"
    rc = main(["predict", "--model", str(model), "--zones", str(case / "zones_ai.nii.gz"), str(case / "t2.nii.gz"),
               "-o", str(out), "--explain"])
    assert rc == 0
    return out, case


def test_model_folder_describes_itself(trained):
    _, model = trained
    meta = json.loads((model / "model.json").read_text())
    assert meta["kind"] == "lesion_classifier" and meta["model"]["name"] == "resnet18"
    assert meta["training"]["positive_patches"] > 0 and meta["training"]["pos_weight"] > 1
    assert meta["validation"]["cases"] and "patient-level" in meta["validation"]["split"]
    splits = json.loads((model / "splits.json").read_text())
    assert not set(splits[0]["train"]) & set(splits[0]["val"])
    assert (model / "checkpoint_last.pt").exists() and (model / "config.yaml").exists()


def test_predict_outputs_on_the_input_grid(predicted):
    out, case = predicted
    t2 = nib.load(str(case / "t2.nii.gz"))
    for name in ("lesion_probability.nii.gz", "lesion_candidates.nii.gz", "lesion_gradcam.nii.gz"):
        img = nib.load(str(out / name))
        assert img.shape == t2.shape and np.allclose(img.affine, t2.affine, atol=1e-4), name
    prob = np.asarray(nib.load(str(out / "lesion_probability.nii.gz")).dataobj)
    zones = np.asarray(nib.load(str(case / "zones_ai.nii.gz")).dataobj)
    assert prob.min() >= 0 and prob.max() <= 1 and np.all(prob[zones == 0] == 0)
    cam = np.asarray(nib.load(str(out / "lesion_gradcam.nii.gz")).dataobj)
    assert cam.max() > 0 and cam.min() >= 0
    meta = json.loads((out / "lesion.json").read_text())
    assert meta["patient_score"] == pytest.approx(float(prob.max()), abs=1e-5)
    labels = np.asarray(nib.load(str(out / "lesion_candidates.nii.gz")).dataobj)
    assert labels.max() == len(meta["candidates"])
    f = meta["explain"]["faithfulness"]
    assert {"drop_top_k", "drop_random_mean", "faithful"} <= set(f)
    assert (out / "lesion_gradcam.png").read_bytes()[:4] == b"\x89PNG"


def test_evaluate_writes_the_report(predicted, data_dir, tmp_path):
    out, _ = predicted
    assert main(["evaluate", "--pred", str(out.parent), "--ref", str(data_dir / "prostatex"),
                 "-o", str(tmp_path / "rep")]) == 0
    s = json.loads((tmp_path / "rep" / "localize.json").read_text())
    assert s["n_cases"] == 1 and s["lesion_level"]["WG"]["n_lesions"] >= 1
    assert (tmp_path / "rep" / "report.html").exists() and (tmp_path / "rep" / "metrics.csv").exists()


def _bad(capsys, argv, out):
    rc = main(argv)
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.startswith("error:") and "\n" not in err and "Traceback" not in err
    assert not out.exists() or not any(out.iterdir())
    return err


def test_zone_map_on_another_grid(predicted, trained, data_dir, tmp_path, capsys):
    _, model = trained
    case = data_dir / "prostatex" / "ProstateX-0000"
    err = _bad(capsys, ["predict", "--model", str(model), "--zones", str(data_dir / "prostate158/001/zones.nii.gz"),
                        str(case / "t2.nii.gz"), "-o", str(tmp_path / "o")], tmp_path / "o")
    assert "grid" in err


def test_missing_model_file(trained, data_dir, tmp_path, capsys):
    _, model = trained
    broken = tmp_path / "model"
    shutil.copytree(model, broken)
    (broken / "weights.pt").unlink()
    case = data_dir / "prostatex" / "ProstateX-0000"
    err = _bad(capsys, ["predict", "--model", str(broken), "--zones", str(case / "zones_ai.nii.gz"),
                        str(case / "t2.nii.gz"), "-o", str(tmp_path / "o")], tmp_path / "o")
    assert "weights.pt" in err


def test_unknown_layer(trained, data_dir, tmp_path, capsys):
    _, model = trained
    case = data_dir / "prostatex" / "ProstateX-0000"
    err = _bad(capsys, ["predict", "--model", str(model), "--zones", str(case / "zones_ai.nii.gz"),
                        str(case / "t2.nii.gz"), "-o", str(tmp_path / "o"), "--explain", "--layer", "encoder.layer9"],
               tmp_path / "o")
    assert "valid layers" in err and "encoder.layer4" in err


def test_lesion_mask_passed_as_zones(trained, data_dir, tmp_path, capsys):
    _, model = trained
    case = data_dir / "prostatex" / "ProstateX-0000"
    lesion_as_zones = tmp_path / "z.nii.gz"
    img = nib.load(str(case / "lesion.nii.gz"))
    nib.save(nib.Nifti1Image(np.asarray(img.dataobj) * 3, img.affine, img.header), str(lesion_as_zones))
    err = _bad(capsys, ["predict", "--model", str(model), "--zones", str(lesion_as_zones),
                        str(case / "t2.nii.gz"), "-o", str(tmp_path / "o")], tmp_path / "o")
    assert "zone labels" in err


def test_existing_outputs_need_force(predicted, trained, capsys):
    out, case = predicted
    _, model = trained
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    rc = main(["predict", "--model", str(model), "--zones", str(case / "zones_ai.nii.gz"), str(case / "t2.nii.gz"),
               "-o", str(out)])
    assert rc == 2 and "--force" in capsys.readouterr().err
    assert before == {p.name: p.stat().st_mtime_ns for p in out.iterdir()}


def test_unknown_classifier_in_config(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"model": {"name": "resnet19"}, "output_dir": str(tmp_path / "runs")}))
    err = _bad(capsys, ["train", "--config", str(cfg)], tmp_path / "runs")
    assert "resnet18" in err


def test_unknown_covariate_in_config(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"model": {"covariates": ["psa_velocity"]}}))
    assert "unknown covariate" in _bad(capsys, ["train", "--config", str(cfg)], tmp_path / "runs")


def test_resume_without_checkpoint(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"output_dir": str(tmp_path / "runs")}))
    assert "nothing to resume" in _bad(capsys, ["train", "--config", str(cfg), "--resume"], tmp_path / "runs")


def test_help_does_not_import_torch():
    import subprocess
    import sys

    code = "import sys; from localize.cli import main\ntry: main(['--help'])\nexcept SystemExit: pass\nprint('torch' in sys.modules)"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.stdout.strip().endswith("False")


def test_predict_accepts_a_dicom_series_folder(predicted, trained, data_dir, tmp_path):
    """The same study given as its DICOM series (the input every command reads alike) gives the same
    patient score as its NIfTI conversion, on the same grid."""
    _, model = trained
    series = data_dir / "dicom/ProstateX-0000/4.000000-t2tsetra-00702"
    case = data_dir / "prostatex" / "ProstateX-0000"
    out = tmp_path / "dicom"
    assert main(["predict", "--model", str(model), "--zones", str(case / "zones_ai.nii.gz"), str(series),
                 "-o", str(out)]) == 0
    a = nib.load(str(predicted[0] / "lesion_probability.nii.gz"))
    b = nib.load(str(out / "lesion_probability.nii.gz"))
    assert a.shape == b.shape and np.allclose(a.affine, b.affine, atol=1e-3)
    score = [json.loads((d / "lesion.json").read_text())["patient_score"] for d in (predicted[0], out)]
    assert score[1] == pytest.approx(score[0], abs=1e-3)


def test_zero_affine_is_one_line_without_nibabel_s_own(trained, data_dir, tmp_path, capsys, monkeypatch):
    """A zero affine with zero voxel sizes: nibabel logs "pixdim[1,2,3] should be non-zero" through a
    handler of its own (pointed here at the stderr the test reads); the user reads our one line only."""
    import struct

    from nibabel_logs import to_current_stderr

    to_current_stderr(monkeypatch)
    _, model = trained
    img = nib.load(str(data_dir / "prostatex" / "ProstateX-0000" / "t2.nii.gz")).slicer[100:200, 100:200, 4:12]
    h = nib.Nifti1Header()
    h.set_data_shape(img.shape)
    h.set_data_dtype(np.float32)
    h["qform_code"], h["sform_code"] = 0, 1  # a zero sform (srow_* default to 0)
    t2 = tmp_path / "t2.nii"
    nib.save(nib.Nifti1Image(np.asarray(img.dataobj, dtype=np.float32), None, header=h), str(t2))
    header = bytearray(t2.read_bytes())
    header[80:92] = struct.pack("<3f", 0, 0, 0)  # and zero voxel sizes, which nibabel "fixes" aloud on load
    t2.write_bytes(bytes(header))
    err = _bad(capsys, ["predict", "--model", str(model), "--zones", str(t2), str(t2), "-o", str(tmp_path / "o")],
               tmp_path / "o")
    assert "invertible" in err
