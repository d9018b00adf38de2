"""localize.train: transfer-learning initialisation and sampling (no data needed); the folds under
mricore.protocol on the real lesion cases (those of bench/results/localize_cv.json) and the
`data.splits_file` checks."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from localize.config import KIND, CandidateConfig, LocalizeConfig, ModelConfig
from localize.folds import labelled_cases, split_items
from localize.loop import _draw
from localize.model import LesionModel
from localize.train import _init_from, train
from mricore.config import load_config
from mricore.datasets import read_ref
from mricore.errors import ConfigError, InputError
from mricore.config import to_dict
from mricore.modelfolder import ModelMeta, write_model
from mricore.preprocess import PreprocessSpec


def _model(**kw):
    return LesionModel.build(ModelConfig(width=0.125, **kw), CandidateConfig(), PreprocessSpec())


def test_init_from_a_saved_classifier_loads_matching_tensors(tmp_path, capsys):
    torch.manual_seed(0)
    src = _model()
    meta = ModelMeta(KIND, to_dict(src.model_cfg), src.spec, candidates=to_dict(src.cand))
    write_model(tmp_path / "m", meta, src.net.state_dict())
    dst = _model(covariates=["zone_pz"])  # head differs in shape: not loaded
    info = _init_from(dst.net, str(tmp_path / "m"), LocalizeConfig())
    assert info["tensors_loaded"] == info["tensors_total"] - 1
    assert torch.equal(dst.net.encoder.conv1.weight, src.net.encoder.conv1.weight)
    assert "tensors loaded" in capsys.readouterr().out


def test_init_from_a_segmenter_needs_its_own_encoder(tmp_path):
    # A resnet backbone is not a segmenter's encoder: no tensor could ever match, so the claim of
    # transfer is refused rather than silently loading nothing.
    from monai.networks.nets import UNet

    seg = UNet(2, 1, 3, channels=(4, 8), strides=(2,))
    write_model(tmp_path / "s", ModelMeta("segmenter", {"name": "unet"}, PreprocessSpec(), patch=[32, 32]), seg.state_dict())
    with pytest.raises(ConfigError, match="dynunet segmenter"):
        _init_from(_model().net, str(tmp_path / "s"), LocalizeConfig())


def _segmenter_folder(tmp_path, channels=(8, 16, 32), strides=(2, 2)):
    from segment.config import ModelConfig as SegModel
    from segment.networks import build_network

    seg = build_network(SegModel(name="dynunet", channels=list(channels), strides=list(strides), norm="instance"), 1)
    meta = ModelMeta("segmenter", {"name": "dynunet", "channels": list(channels), "strides": list(strides),
                                   "norm": "instance"}, PreprocessSpec(), patch=[64, 64])
    write_model(tmp_path / "seg", meta, seg.state_dict())
    return seg


def test_init_from_a_dynunet_segmenter_loads_every_encoder_tensor(tmp_path, capsys):
    torch.manual_seed(0)
    seg = _segmenter_folder(tmp_path)
    mc = ModelConfig(name="dynunet_encoder", width=1.0, encoder_args={"channels": [8, 16, 32], "strides": [2, 2]})
    dst = LesionModel.build(mc, CandidateConfig(), PreprocessSpec())
    info = _init_from(dst.net, str(tmp_path / "seg"), LocalizeConfig(model=mc))
    n_encoder = sum(1 for k in dst.net.state_dict() if k.startswith("encoder."))
    assert info["tensors_loaded"] == info["tensors_total"] == n_encoder > 0
    w = seg.state_dict()["input_block.conv1.conv.weight"]
    assert torch.equal(dst.net.state_dict()["encoder.input_block.conv1.conv.weight"], w)
    # The encoder computes exactly the segmenter's bottleneck features.
    x = torch.randn(1, 1, 64, 64)
    seg.eval(), dst.net.eval()
    with torch.no_grad():
        feats = seg.bottleneck(seg.downsamples[0](seg.input_block(x))).mean((2, 3))
        assert torch.allclose(dst.net.encoder(x), feats, atol=1e-5)


def test_init_from_a_segmenter_of_other_width_is_refused(tmp_path):
    _segmenter_folder(tmp_path)
    mc = ModelConfig(name="dynunet_encoder", width=1.0, encoder_args={"channels": [8, 16, 64], "strides": [2, 2]})
    with pytest.raises(ConfigError, match="every encoder tensor"):
        _init_from(LesionModel.build(mc, CandidateConfig(), PreprocessSpec()).net, str(tmp_path / "seg"),
                   LocalizeConfig(model=mc))


def test_balanced_sampling_draws_half_positives():
    y = np.r_[np.ones(3), np.zeros(97)].astype(np.float32)
    idx = _draw(y, 32, True, np.random.default_rng(0))
    assert y[idx].sum() == 16
    assert y[_draw(y, 1000, False, np.random.default_rng(0))].mean() < 0.1


ROOT = Path(__file__).resolve().parents[2]


def _config(data_dir, tmp_path, config="lesion_zone_lr.yaml", *sets) -> LocalizeConfig:
    return load_config(LocalizeConfig, ROOT / "configs" / "localize" / config,
                       [f"data.root={data_dir}", f"output_dir={tmp_path / 'runs'}", *sets])


def test_folds_are_those_of_the_published_localize_cv(data_dir, tmp_path):
    # bench/results/localize_cv.json's case -> fold mapping (patient-level, stratified by lesion presence)
    cfg = _config(data_dir, tmp_path, "lesion_t2w_2d.yaml")
    items = [{"case": c, "positive": bool(read_ref(c.labels["lesion"], "lesion", c.case_id).array.any())}
             for c, _ in labelled_cases(cfg.data, ["T2W"])]
    published = json.loads((ROOT / "bench" / "results" / "localize_cv.json").read_text())["folds"]
    for f in published:
        split = split_items(cfg.data, items, f["fold"], inner=False)
        assert [i["case"].case_id for i in split.held_out] == f["held_out"]


@pytest.mark.parametrize("config", ["lesion_zone_lr.yaml", "lesion_t2w_2d.yaml"])   # baseline and CNN
def test_a_splits_file_naming_unknown_cases_is_refused_before_training(data_dir, tmp_path, config):
    (tmp_path / "s.json").write_text(json.dumps([{"fold": 0, "train": ["ProstateX-0000"], "val": ["nope"]}]))
    cfg = _config(data_dir, tmp_path, config, f"data.splits_file={tmp_path / 's.json'}", "model.width=0.125")
    with pytest.raises(InputError, match="not in the dataset"):
        train(cfg, 0)
    assert not (tmp_path / "runs").exists()


def test_a_splits_file_decides_the_held_out_cases(data_dir, tmp_path):
    ids = [c.case_id for c, _ in labelled_cases(_config(data_dir, tmp_path).data, ["T2W"])]
    user = [{"fold": 0, "train": ids[3:], "val": ids[:3]}, {"fold": 1, "train": ids[:3], "val": ids[3:]}]
    (tmp_path / "s.json").write_text(json.dumps(user))
    out = train(_config(data_dir, tmp_path, "lesion_zone_lr.yaml", f"data.splits_file={tmp_path / 's.json'}"), 0)
    assert json.loads((out / "splits.json").read_text()) == user
    assert json.loads((out / "model.json").read_text())["validation"]["cases"] == ids[:3]
