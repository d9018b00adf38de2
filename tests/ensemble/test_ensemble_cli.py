"""`ensemble` CLI in-process: bad inputs give one line on stderr, exit 2, and write nothing."""

import json
import shutil
import subprocess
import sys

import pytest
import yaml

from ensemble.cli import main
from mricore.results import read_case

P158 = "prostate158/001"


def write_cfg(tmp_path, members, **extra):
    path = tmp_path / "ens.yaml"
    path.write_text(yaml.safe_dump({"members": [str(m) for m in members], **extra}))
    return path


def assert_user_error(capsys, code, *needles):
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    for n in needles:
        assert n in err, err


def test_help_does_not_import_torch():
    code = ("import sys\nfrom ensemble.cli import main\n"
            "try:\n    main(['predict', '--help'])\nexcept SystemExit:\n    pass\n"
            "print('torch' in sys.modules, 'monai' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().splitlines()[-1] == "False False"


# Config errors: (config content, words the one-line error must contain)  comment
BAD_CONFIGS = [
    ({"members": []}, ["at least one member"]),                                # empty member list
    ({"members": ["m"], "method": "average"}, ["unknown combination method", "staple"]),  # unknown method
    ({"members": ["m"], "metod": "vote"}, ["did you mean 'method'"]),          # misspelt key
    ({"members": ["m"], "weights": [1, 2]}, ["one weight per member"]),        # weights count
    ({"members": ["m"], "review": {"max_entropy": 2.0}}, ["review.max_entropy", "[0, 1]"]),  # limit range
    ({"members": ["no_such_folder"]}, ["model folder does not exist"]),        # missing member
]


@pytest.mark.parametrize("content,needles", BAD_CONFIGS)
def test_bad_config_one_line_exit_2_nothing_written(data_dir, tmp_path, capsys, content, needles):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(yaml.safe_dump(content))
    out = tmp_path / "out"
    code = main(["predict", str(data_dir / P158 / "t2.nii.gz"), "--config", str(cfg), "-o", str(out)])
    assert_user_error(capsys, code, *needles)
    assert not out.exists()


def test_unreadable_volume(members, tmp_path, capsys):
    bad = tmp_path / "t2.nii.gz"
    bad.write_bytes(b"this is not a nifti file")
    out = tmp_path / "out"
    code = main(["predict", str(bad), "--config", str(write_cfg(tmp_path, [members["t2_a"]])), "-o", str(out)])
    assert_user_error(capsys, code, "not a readable NIfTI file", str(bad))
    assert not out.exists() or not any(out.iterdir())


def test_missing_input(members, tmp_path, capsys):
    code = main(["predict", str(tmp_path / "nope.nii.gz"), "--config",
                 str(write_cfg(tmp_path, [members["t2_a"]])), "-o", str(tmp_path / "out")])
    assert_user_error(capsys, code, "input does not exist")
    assert not (tmp_path / "out").exists()


def test_no_member_can_run(data_dir, members, tmp_path, capsys):
    code = main(["predict", str(data_dir / P158 / "t2.nii.gz"), "--config",
                 str(write_cfg(tmp_path, [members["t2_adc"]])), "-o", str(tmp_path / "out")])
    assert_user_error(capsys, code, "no ensemble member can run", "ADC")
    assert not (tmp_path / "out").exists()


def test_clashing_labels_rejected_naming_member(data_dir, members, tmp_path, capsys):
    clash = tmp_path / "swapped_zones"
    shutil.copytree(members["t2_b"], clash)
    meta = json.loads((clash / "model.json").read_text())
    meta["labels"] = {"0": "background", "1": "PZ", "2": "TZ"}
    (clash / "model.json").write_text(json.dumps(meta))
    code = main(["predict", str(data_dir / P158 / "t2.nii.gz"), "--config",
                 str(write_cfg(tmp_path, [members["t2_a"], clash])), "-o", str(tmp_path / "out")])
    assert_user_error(capsys, code, "swapped_zones", "label scheme")
    assert not (tmp_path / "out").exists()


def test_weighted_without_validation_names_member(data_dir, members, tmp_path, capsys):
    code = main(["predict", str(data_dir / P158 / "t2.nii.gz"), "--config",
                 str(write_cfg(tmp_path, [members["t2_a"]], method="weighted")), "-o", str(tmp_path / "out")])
    assert_user_error(capsys, code, "t2_a", "WG_mean")
    assert not (tmp_path / "out").exists()


def test_refuses_to_overwrite_without_force(data_dir, members, tmp_path, capsys):
    cfg = str(write_cfg(tmp_path, [members["t2_a"]]))
    t2, out = str(data_dir / P158 / "t2.nii.gz"), tmp_path / "out"
    assert main(["predict", t2, "--config", cfg, "-o", str(out)]) == 0
    capsys.readouterr()
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    code = main(["predict", t2, "--config", cfg, "-o", str(out)])
    assert_user_error(capsys, code, "output exists", "--force")
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before
    assert main(["predict", t2, "--config", cfg, "-o", str(out), "--force"]) == 0


def test_bundled_ensemble_missing_says_how_to_train(data_dir, tmp_path, capsys, monkeypatch):
    import ensemble.config

    monkeypatch.setattr(ensemble.config, "BUNDLED", tmp_path / "models" / "default" / "ensemble.yaml")
    code = main(["predict", str(data_dir / P158 / "t2.nii.gz"), "-o", str(tmp_path / "out")])
    assert_user_error(capsys, code, "bundled ensemble", "segment train")
    assert not (tmp_path / "out").exists()


def test_bundled_ensemble_used_without_config(data_dir, members, tmp_path, monkeypatch):
    """With no --config the bundled ensemble.yaml is used; its member paths are relative to it."""
    import ensemble.config

    bundle = tmp_path / "models" / "default"
    shutil.copytree(members["t2_a"], bundle / "t2w_fold0")
    (bundle / "ensemble.yaml").write_text("members: [t2w_fold0]\n")
    monkeypatch.setattr(ensemble.config, "BUNDLED", bundle / "ensemble.yaml")
    assert main(["predict", str(data_dir / P158 / "t2.nii.gz"), "-o", str(tmp_path / "out")]) == 0
    side = read_case(tmp_path / "out")
    assert side.members_used[0]["path"] == str(bundle / "t2w_fold0")


def test_bundle_falls_back_to_pytorch_members_without_onnxruntime(monkeypatch):
    """ONNX Runtime is optional: without it the bundled config is the PyTorch members'."""
    import importlib.util

    import ensemble.config

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "onnxruntime" else real(name, *a))
    assert ensemble.config.bundled_config() == ensemble.config.BUNDLED
    monkeypatch.setattr(importlib.util, "find_spec", real)
    expected = ensemble.config.BUNDLED_ONNX if real("onnxruntime") else ensemble.config.BUNDLED
    assert ensemble.config.bundled_config() == expected
