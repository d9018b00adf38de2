"""`segment predict --explain ZONE` (segment/explain.py) on a tiny untrained segmenter folder and a real
ProstateX T2: heat map on the input grid, PNG, faithfulness JSON; a bad zone is one line, exit 2, nothing written."""


import nibabel as nib
import numpy as np
import pytest
import torch

from mricore.config import from_dict


@pytest.fixture(scope="module")
def tiny_segmenter(tmp_path_factory):
    from segment.config import SegmentConfig
    from segment.networks import build_network
    from segment.torch_segmenter import Segmenter

    cfg = from_dict(SegmentConfig, {
        "preprocess": {"channels": ["T2W"], "target_spacing": [2.0, 2.0, None], "crop_mm": [48.0, 48.0]},
        "model": {"channels": [4, 8], "strides": [2], "num_res_units": 0},
        "train": {"patch": [32, 32]}})
    torch.manual_seed(0)
    net = build_network(cfg.model, 1)
    folder = tmp_path_factory.mktemp("seg") / "model"
    Segmenter(net, cfg.model, cfg.preprocess, cfg.train.patch, cfg.predict).save(folder, name="tiny", fold=0)
    return folder


def test_explain_zone_writes_heat_map_on_input_grid(tiny_segmenter, data_dir, tmp_path):
    from mricore.results import gradcam_files, read_case
    from segment.cli import main

    t2 = data_dir / "prostatex" / "ProstateX-0000" / "t2.nii.gz"
    assert main(["predict", "--model", str(tiny_segmenter), str(t2), "-o", str(tmp_path), "--explain", "PZ"]) == 0
    nii, png = gradcam_files("PZ")
    assert nii == "gradcam_PZ.nii.gz" and (tmp_path / png).exists()  # in the case folder, beside zones.nii.gz
    img, ref = nib.load(str(tmp_path / nii)), nib.load(str(t2))
    assert img.shape == ref.shape and np.allclose(img.affine, ref.affine, atol=1e-4)
    a = np.asarray(img.dataobj)
    assert a.min() >= 0 and a.max() <= 1
    record = read_case(tmp_path)
    info = record.explanation
    assert info["zone"] == "PZ" and "drop_top_k" in info["faithfulness"]
    assert nii in record.outputs and png in record.outputs


def test_explain_unknown_zone_is_one_line_and_writes_nothing(tiny_segmenter, data_dir, tmp_path, capsys):
    from segment.cli import main

    t2 = data_dir / "prostatex" / "ProstateX-0000" / "t2.nii.gz"
    rc = main(["predict", "--model", str(tiny_segmenter), str(t2), "-o", str(tmp_path / "o"), "--explain", "XZ"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "\n" not in err and "PZ" in err
    assert not (tmp_path / "o").exists()
