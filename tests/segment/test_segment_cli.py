"""`segment` CLI in-process: predict on a volume, a case folder and a datalist (one case folder, or a
batch of them, as `ensemble predict` lays them out); --probabilities; no overwrite without --force;
every bad input gives exit 2, one stderr line, nothing written."""

from __future__ import annotations

import json
import shutil

import nibabel as nib
import numpy as np
import pytest

from mricore.io import read_label
from mricore.results import find_predictions, read_case, zone_volumes_ml
from segment.cli import main
from segment.networks import build_network
from segment.torch_segmenter import Segmenter
from segment_helpers import DEFAULT_CONFIG, tiny_config, tiny_overrides


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


def test_predict_a_volume_with_probabilities(tiny_model, data_dir, tmp_path):
    t2 = data_dir / "prostate158" / "001" / "t2.nii.gz"
    out = tmp_path / "out"
    assert main(["predict", "--model", str(tiny_model), str(t2), "-o", str(out), "--probabilities"]) == 0
    src, lab = nib.load(t2), nib.load(out / "zones.nii.gz")  # one case: OUT is its case folder
    assert lab.shape == src.shape and lab.get_data_dtype() == np.uint8
    np.testing.assert_allclose(lab.affine, src.affine, atol=1e-6)   # the input's exact grid
    prob = nib.load(out / "probabilities.nii.gz")
    assert prob.shape == src.shape + (3,)
    record = read_case(out)
    assert record.case_id == "001" and record.members_used[0]["path"] == str(tiny_model.resolve())
    assert set(record.outputs) == {"zones.nii.gz", "probabilities.nii.gz"}
    zones = read_label(out / "zones.nii.gz")
    assert record.volume_ml == zone_volumes_ml(zones.array[0], zones.voxel_volume_ml)


def test_predict_refuses_to_overwrite_without_force(tiny_model, data_dir, tmp_path, capsys):
    case = data_dir / "i2cvb" / "Patient_68619"
    out = tmp_path / "out"
    assert main(["predict", "--model", str(tiny_model), str(case), "-o", str(out)]) == 0
    before = (out / "zones.nii.gz").stat().st_mtime_ns
    capsys.readouterr()
    assert main(["predict", "--model", str(tiny_model), str(case), "-o", str(out)]) == 2
    assert "--force" in _one_error_line(capsys)
    assert (out / "zones.nii.gz").stat().st_mtime_ns == before
    assert main(["predict", "--model", str(tiny_model), str(case), "-o", str(out), "--force"]) == 0


def test_a_case_folder_of_an_earlier_run_is_not_overwritten_without_force(tiny_model, data_dir, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["predict", "--model", str(tiny_model), str(data_dir / "i2cvb" / "Patient_68619"), "-o", str(out)]) == 0
    record = (out / "zones.json").read_bytes()
    capsys.readouterr()
    other = data_dir / "i2cvb" / "Patient_52209036"  # another case into the same folder
    assert main(["predict", "--model", str(tiny_model), str(other), "-o", str(out)]) == 2
    assert "zones.nii.gz" in _one_error_line(capsys)
    assert (out / "zones.json").read_bytes() == record and read_case(out).case_id == "Patient_68619"


def test_predict_a_datalist(tiny_model, data_dir, tmp_path):
    dl = tmp_path / "list.csv"
    dl.write_text("patient_id,T2W\n"
                  f"p1,{data_dir / 'prostate158' / '021' / 't2.nii.gz'}\n"
                  f"p2,{data_dir / 'i2cvb' / 'Patient_52209036' / 't2.nii.gz'}\n")
    out = tmp_path / "out"
    assert main(["predict", "--model", str(tiny_model), str(dl), "-o", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["p1", "p2", "summary.csv", "summary.json"]  # a batch
    assert sorted(find_predictions(out)) == ["p1", "p2"] and read_case(out / "p2").case_id == "p2"
    assert [c["case_id"] for c in json.loads((out / "summary.json").read_text())["cases"]] == ["p1", "p2"]


# ---- bad input: one test each -------------------------------------------------------------------

def test_config_unknown_key(data_dir, tmp_path, capsys):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(DEFAULT_CONFIG.read_text().replace("  epochs: 30", "  epoch: 30"))
    rc = main(["train", "--config", str(cfg), "--set", f"output_dir={tmp_path / 'runs'}"])
    assert rc == 2
    assert "unknown key 'train.epoch'" in _one_error_line(capsys)
    assert not (tmp_path / "runs").exists()


def test_config_wrong_type(tmp_path, capsys):
    rc = main(["train", "--config", str(DEFAULT_CONFIG), "--set", "train.epochs=many",
               "--set", f"output_dir={tmp_path / 'runs'}"])
    assert rc == 2
    assert "must be an integer" in _one_error_line(capsys)
    assert not (tmp_path / "runs").exists()


def test_model_folder_missing_a_file(tiny_model, data_dir, tmp_path, capsys):
    broken = tmp_path / "model"
    shutil.copytree(tiny_model, broken)
    (broken / "weights.pt").unlink()
    out = tmp_path / "out"
    assert main(["predict", "--model", str(broken), str(data_dir / "prostate158" / "001"), "-o", str(out)]) == 2
    assert "missing weights.pt" in _one_error_line(capsys)
    assert not out.exists()


def test_input_channels_do_not_match_the_model(data_dir, tmp_path, capsys):
    cfg = tiny_config(data_dir, tmp_path, preprocess__channels="[T2W, ADC]")
    net = build_network(cfg.model, 2)
    model = Segmenter(net, cfg.model, cfg.preprocess, cfg.train.patch, cfg.predict).save(tmp_path / "t2w_adc", fold="all")
    out = tmp_path / "out"
    # prostate158/021 holds T2W only
    assert main(["predict", "--model", str(model), str(data_dir / "prostate158" / "021"), "-o", str(out)]) == 2
    assert "model expects T2W, ADC; got T2W" in _one_error_line(capsys)
    assert not out.exists()


def test_empty_training_set(data_dir, tmp_path, capsys):
    # prostate158/i2cvb have expert zones but no ADC: nothing left to train on
    sets = [a for s in tiny_overrides(data_dir, tmp_path / "runs", preprocess__channels="[ADC]") for a in ("--set", s)]
    assert main(["train", "--config", str(DEFAULT_CONFIG), "--fold", "all", *sets]) == 2
    assert "empty training set" in _one_error_line(capsys)
    assert not (tmp_path / "runs").exists()


def test_no_case_has_the_label(data_dir, tmp_path, capsys):
    sets = [a for s in tiny_overrides(data_dir, tmp_path / "runs", data__datasets="[promise12]") for a in ("--set", s)]
    assert main(["train", "--config", str(DEFAULT_CONFIG), *sets]) == 2
    assert "no case has label 'zones'" in _one_error_line(capsys)
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("fold", ["3", "-1"])
def test_fold_out_of_range(data_dir, tmp_path, capsys, fold):
    sets = [a for s in tiny_overrides(data_dir, tmp_path / "runs") for a in ("--set", s)]
    assert main(["train", "--config", str(DEFAULT_CONFIG), "--fold", fold, *sets]) == 2
    assert "must be in 0..2" in _one_error_line(capsys)
    assert not (tmp_path / "runs").exists()


def test_fold_not_an_integer(tmp_path, capsys):
    assert main(["train", "--config", str(DEFAULT_CONFIG), "--fold", "first"]) == 2
    assert "integer or 'all'" in _one_error_line(capsys)


def test_predict_accepts_a_dicom_series_folder(tiny_model, data_dir, tmp_path):
    """`segment predict` takes the DICOM series folder like any input, and its map equals the one of
    the series' NIfTI conversion."""
    series = data_dir / "dicom/ProstateX-0000/4.000000-t2tsetra-00702"
    assert main(["predict", "--model", str(tiny_model), str(series), "-o", str(tmp_path / "dicom")]) == 0
    assert main(["predict", "--model", str(tiny_model), str(data_dir / "prostatex/ProstateX-0000/t2.nii.gz"),
                 "-o", str(tmp_path / "nifti")]) == 0
    a = nib.load(str(tmp_path / "dicom" / "zones.nii.gz"))
    b = nib.load(str(tmp_path / "nifti" / "zones.nii.gz"))
    assert a.shape == b.shape and np.allclose(a.affine, b.affine, atol=1e-3)
    assert (np.asarray(a.dataobj) == np.asarray(b.dataobj)).mean() >= 0.9999
