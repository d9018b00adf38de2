"""ONNX export and the ONNX Runtime path: the same probabilities as eager PyTorch (max |diff| <= 1e-4)
and the same labels (>= 99.99 %) on a real case, for each way a member looks at a volume (whole 2D
slices, 2D tiles with Gaussian blending, 3D windows), end to end through `ensemble export` /
`ensemble predict`, without importing PyTorch or MONAI."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
import yaml

pytest.importorskip("onnxruntime", reason="ONNX Runtime is optional (pip install onnxruntime onnx)")

from ensemble.cli import main  # noqa: E402
from ensemble.members import Member  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
P158 = "prostate158/001"


def assert_same_outputs(a: Path, b: Path) -> None:
    """Zone labels >= 99.99 % identical and probabilities within 1e-4 between two `ensemble predict` outputs."""
    def load(folder, name):
        return np.asarray(nib.load(str(folder / name)).dataobj)
    assert (load(a, "zones.nii.gz") == load(b, "zones.nii.gz")).mean() >= 0.9999
    assert float(np.abs(load(a, "probabilities.nii.gz") - load(b, "probabilities.nii.gz")).max()) <= 1e-4


def member(cfg_kwargs: dict, patch, predict: dict, tmp: Path) -> Member:
    from mricore.preprocess import PreprocessSpec
    from segment.config import ModelConfig, PredictConfig
    from segment.torch_segmenter import Segmenter
    from segment.networks import build_network

    torch.manual_seed(0)
    cfg = ModelConfig(**cfg_kwargs)
    net = build_network(cfg, 1).eval()
    spec = PreprocessSpec(target_spacing=[1.2, 1.2, None], crop_mm=[100.0, 100.0])
    seg = Segmenter(net, cfg, spec, patch, PredictConfig(**predict))
    return Member(tmp, "m", seg.describe(), seg)


KINDS = {  # how the member looks at a volume: (model, patch, predict settings)
    "2d whole slices (batch norm)": ({"spatial_dims": 2, "channels": [8, 16, 32], "strides": [2, 2], "dropout": 0.0}, [48, 48], {}),
    "2.5d whole slices": ({"spatial_dims": 2, "context": 1, "channels": [8, 16], "strides": [2], "dropout": 0.0}, [48, 48], {}),
    "2d tiles (instance norm)": ({"name": "dynunet", "spatial_dims": 2, "channels": [8, 16, 32], "strides": [2, 2],
                                  "norm": "instance", "dropout": 0.0, "label_scheme": "regions"}, [48, 48], {"overlap": 0.25}),
    "3d windows": ({"spatial_dims": 3, "channels": [4, 8], "strides": [2], "dropout": 0.0}, [48, 48, 8], {"sw_batch_size": 2}),
}


@pytest.mark.parametrize("kind", list(KINDS))
def test_onnx_runtime_matches_eager_on_a_real_case(data_dir, tmp_path, kind):
    from ensemble.export import export_member
    from mricore.io import read_nifti
    from mricore.modelfolder import read_model
    from mricore.preprocess import preprocess
    from segment.onnx_segmenter import OnnxSegmenter

    m = member(*KINDS[kind], tmp_path)
    export_member(m, tmp_path / "onnx")
    onnx = OnnxSegmenter(tmp_path / "onnx", read_model(tmp_path / "onnx", "segmenter"))
    prep = preprocess(read_nifti(data_dir / P158 / "t2.nii.gz", "T2W"), m.segmenter.spec)
    for whole_slice in (None, True):  # as the member says; whole slices (an ensemble's `whole_slice`)
        eager = m.segmenter.probabilities(prep.array, whole_slice=whole_slice)
        ort = onnx.probabilities(prep.array, whole_slice=whole_slice)
        assert eager.shape == ort.shape == (3,) + prep.array.shape[1:]
        assert float(np.abs(eager - ort).max()) <= 1e-4
        assert (eager.argmax(0) == ort.argmax(0)).mean() >= 0.9999


def test_export_predict_end_to_end_without_torch(data_dir, members, tmp_path):
    cfg = tmp_path / "ens.yaml"
    cfg.write_text(yaml.safe_dump({"members": [str(members["t2_a"]), str(members["t2_b"])], "method": "mean"}))
    exp = tmp_path / "exp"
    assert main(["export", "--config", str(cfg), "-o", str(exp)]) == 0
    assert main(["export", "--config", str(cfg), "-o", str(exp)]) == 2  # no --force
    t2 = data_dir / P158 / "t2.nii.gz"
    assert main(["predict", str(t2), "--config", str(cfg), "-o", str(tmp_path / "torch"), "--probabilities"]) == 0
    code = ("import sys\nfrom ensemble.cli import main\n"
            f"rc = main(['predict', {str(t2)!r}, '--config', {str(exp / 'ensemble.yaml')!r}, '-o', "
            f"{str(tmp_path / 'onnx')!r}, '--probabilities'])\n"
            "print(rc, 'torch' in sys.modules, 'monai' in sys.modules)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert r.stdout.strip().splitlines()[-1] == "0 False False", r.stdout + r.stderr
    assert_same_outputs(tmp_path / "torch", tmp_path / "onnx")


def test_bundled_onnx_export_matches_the_bundled_members(data_dir, tmp_path):
    """The shipped ONNX bundle (the default when ONNX Runtime is installed) against the shipped PyTorch
    members, on a real study, through `ensemble predict`."""
    from ensemble.config import BUNDLED, BUNDLED_ONNX

    t2 = data_dir / P158 / "t2.nii.gz"
    for name, cfg in (("torch", BUNDLED), ("onnx", BUNDLED_ONNX)):
        assert main(["predict", str(t2), "--config", str(cfg), "-o", str(tmp_path / name), "--probabilities"]) == 0
    assert_same_outputs(tmp_path / "torch", tmp_path / "onnx")
