"""localize.train helpers that need no data: transfer-learning initialisation and sampling."""

import numpy as np
import pytest
import torch

from localize.config import CandidateConfig, ModelConfig
from localize.model import KIND, LesionModel
from localize.train import _draw, _init_from
from mricore.errors import ConfigError
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
    info = _init_from(dst.net, str(tmp_path / "m"))
    assert info["tensors_loaded"] == info["tensors_total"] - 1
    assert torch.equal(dst.net.encoder.conv1.weight, src.net.encoder.conv1.weight)
    assert "tensors loaded" in capsys.readouterr().out


def test_init_from_a_segmenter_is_refused_up_front(tmp_path):
    # A segmenter's encoder is not the classifier backbone: no tensor could ever match, so the claim
    # of transfer from a segmenter is refused rather than silently loading nothing.
    from monai.networks.nets import UNet

    seg = UNet(2, 1, 3, channels=(4, 8), strides=(2,))
    write_model(tmp_path / "s", ModelMeta("segmenter", {"name": "unet"}, PreprocessSpec(), patch=[32, 32]), seg.state_dict())
    with pytest.raises(ConfigError, match="lesion classifier folder"):
        _init_from(_model().net, str(tmp_path / "s"))


def test_balanced_sampling_draws_half_positives():
    y = np.r_[np.ones(3), np.zeros(97)].astype(np.float32)
    idx = _draw(y, 32, True, np.random.default_rng(0))
    assert y[idx].sum() == 16
    assert y[_draw(y, 1000, False, np.random.default_rng(0))].mean() < 0.1
