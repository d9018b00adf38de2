"""`segment pretrain` (masked-image reconstruction on label-free studies) and `segment train --init-from`
a pretrain folder: the folder is complete, no label is opened, the loss is finite, the encoder loads
into a segmenter and the head never does, and every bad input is one line with exit code 2.

Tiny: the two 3-slice i2cvb studies (T2W only, copied), a DynUNet [8, 16, 32] on 32x32 patches of a
64 mm FOV at 1 mm, 1 epoch of 2 steps of 2 patches: seconds on 2 cores.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from mricore.config import load_config
from mricore.datasets import load_dataset, load_case
from mricore.modelfolder import load_weights, read_model
from segment.cli import main
from segment.config import SegmentConfig
from segment.data import PatchSampler
from segment.networks import build_network
from segment.pretrain import (PretrainConfig, head_tensors, init_weights, load_pretrain_config, pretrain,
                              reconstruction_network)
from segment.pretrain_data import MaskedPatches, image_items
from segment.train import build_model

STUDIES = ("Patient_52209036", "Patient_68619")  # i2cvb: the smallest studies on hand (3 slices)
ENCODER_TENSOR = "input_block.conv1.conv.weight"


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


def _segment_yaml(folder, **model) -> str:
    """A tiny segment config in `folder` (its cache and runs there too); `model` replaces model keys."""
    cfg = {"name": "tiny", "output_dir": "runs", "data": {"cache_dir": "cache", "workers": 1},
           "preprocess": {"channels": ["T2W"], "target_spacing": [1.0, 1.0, None], "crop_mm": [64.0, 64.0],
                          "crop_centre": "gland"},
           "model": {"name": "dynunet", "channels": [8, 16, 32], "strides": [2, 2], "norm": "instance",
                     "dropout": 0.0, **model},
           "train": {"patch": [32, 32], "tensorboard": False}}
    name = "segment_" + "_".join(f"{k}{v}" for k, v in model.items()).replace(" ", "") + ".yaml"
    (folder / name).write_text(yaml.safe_dump(cfg))
    return name


def _pretrain_yaml(folder, segment: str, data, **extra) -> str:
    """A tiny pretrain config in `folder` naming `segment` by a relative path (resolved from the file)."""
    cfg = {"segment_config": segment, "root": str(data), "epochs": 1, "iters_per_epoch": 2, "batch_size": 2,
           "mask": {"ratio": 0.3, "hole_min": 2, "hole_max": 8, "shuffle_holes": 2, "shuffle_size": 4}, **extra}
    path = folder / f"pretrain_{segment}"
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


@pytest.fixture(scope="module")
def label_free(data_dir, tmp_path_factory):
    """Two studies with their T2W only; one holds a zones.nii.gz that is not NIfTI, so any attempt to
    read a label fails."""
    root = tmp_path_factory.mktemp("label_free")
    for case in STUDIES:
        (root / "data" / case).mkdir(parents=True)
        shutil.copy(data_dir / "i2cvb" / case / "t2.nii.gz", root / "data" / case / "t2.nii.gz")
    (root / "data" / STUDIES[0] / "zones.nii.gz").write_bytes(b"not a label map")
    return root


@pytest.fixture(scope="module")
def pretrained(label_free):
    """One pretrain run through the CLI: (its folder, the segment config file)."""
    seg = _segment_yaml(label_free)
    out = label_free / "pretrained"
    assert main(["pretrain", "--config", _pretrain_yaml(label_free, seg, label_free / "data"), "-o", str(out)]) == 0
    return out, label_free / seg


def test_pretrain_writes_a_complete_model_folder(pretrained):
    out, seg_file = pretrained
    assert sorted(p.name for p in out.iterdir()) == ["config.yaml", "history.csv", "model.json", "segment.yaml",
                                                     "weights.pt"]
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]  # nothing left of the staging
    meta = read_model(out, "pretrain")
    assert meta.training["studies"] == list(STUDIES) and meta.training["labels_read"] is False
    assert meta.model["name"] == "dynunet" and meta.patch == [32, 32] and meta.channels == ["T2W"]
    assert meta.history_epochs == 1 and len(meta.history) == 1
    assert math.isfinite(meta.history[0]["loss"]) and meta.history[0]["loss"] > 0  # the reconstruction L1
    weights = load_weights(out)
    assert meta.training["head"] and all(weights[k].shape[0] == 1 for k in meta.training["head"])  # 1 output: T2W
    cfg = load_config(PretrainConfig, out / "config.yaml")  # resolved: reloads as it ran
    assert cfg.segment_config == str(seg_file) and cfg.epochs == 1
    assert load_config(SegmentConfig, out / "segment.yaml").model.channels == [8, 16, 32]


def test_no_label_file_is_opened(pretrained, label_free):
    zones = label_free / "data" / STUDIES[0] / "zones.nii.gz"
    case = next(c for c in load_dataset(label_free / "data") if c.case_id == STUDIES[0])
    assert "zones" in case.labels  # the study offers a label ...
    with pytest.raises(Exception):
        load_case(case, ["T2W"], "zones")  # ... which cannot be read: pre-training never tried
    assert zones.read_bytes() == b"not a label map"
    entries = [p for p in (label_free / "cache").iterdir() if not p.name.startswith(".")]
    assert len(entries) == 2
    for e in entries:  # image-only cache entries
        assert sorted(json.loads((e / "entry.json").read_text())["arrays"]) == ["image"]


def test_masked_patches_corrupt_a_copy_and_repeat(pretrained, label_free):
    cfg, seg = load_pretrain_config(label_free / f"pretrain_{pretrained[1].name}")
    items = image_items(load_dataset(cfg.root), seg.preprocess, False, label_free / "cache", workers=1)
    masked = MaskedPatches(PatchSampler(items, [32, 32], 2, 0, 0.0, None), cfg.mask)
    x, y = masked.batch(np.random.default_rng(3), 4)
    x2, y2 = masked.batch(np.random.default_rng(3), 4)
    assert x.shape == y.shape == (4, 1, 32, 32) and x.dtype == y.dtype == torch.float32
    assert torch.equal(x, x2) and torch.equal(y, y2)  # a function of the generator alone
    assert not torch.equal(x, y) and (x != y).float().mean() < 0.6  # holes, not the whole patch


def test_init_from_loads_the_encoder_and_skips_the_head(pretrained, capsys):
    out, seg_file = pretrained
    cfg = load_config(SegmentConfig, seg_file)
    net = build_model(cfg, torch.device("cpu"), str(out))
    src, own, head = load_weights(out), net.state_dict(), read_model(out).training["head"]
    assert torch.equal(own[ENCODER_TENSOR], src[ENCODER_TENSOR])
    assert all(torch.equal(own[k], src[k]) for k in src if k not in head)  # all but the final layer
    printed = capsys.readouterr().out
    assert f"{len(src) - len(head)}/{len(own)} tensors loaded" in printed
    assert all(k in printed for k in head[:8])  # the skipped tensors are named


def test_the_head_is_skipped_even_when_its_shape_fits(label_free):
    # 2.5D, one neighbour each side: 3 input channels, so the reconstruction head has the segmenter's
    # 3 outputs (multiclass); it must still not load
    seg = _segment_yaml(label_free, context=1)
    cfg, scfg = load_pretrain_config(_pretrain_yaml(label_free, seg, label_free / "data"))
    out = pretrain(cfg, scfg, label_free / "pretrained_25d", progress=False)
    head = read_model(out).training["head"]
    net = build_model(scfg, torch.device("cpu"), None)
    fresh = {k: v.clone() for k, v in net.state_dict().items()}
    src = load_weights(out)
    assert all(src[k].shape == fresh[k].shape for k in head)
    info = init_weights(net, scfg.model, scfg.preprocess.channels, out)
    assert sorted(info["skipped"]) == sorted(head)
    assert all(torch.equal(net.state_dict()[k], fresh[k]) for k in head)


def test_a_lesion_classifier_encoder_starts_from_a_pretrain_folder(pretrained):
    from localize.config import CandidateConfig, LocalizeConfig, ModelConfig
    from localize.model import LesionModel
    from localize.train import _init_from
    from mricore.preprocess import PreprocessSpec

    mc = ModelConfig(name="dynunet_encoder", width=1.0, encoder_args={"channels": [8, 16, 32], "strides": [2, 2]})
    dst = LesionModel.build(mc, CandidateConfig(), PreprocessSpec())
    info = _init_from(dst.net, str(pretrained[0]), LocalizeConfig(model=mc))
    assert info["kind"] == "pretrain" and info["tensors_loaded"] == info["tensors_total"] > 0
    assert torch.equal(dst.net.state_dict()["encoder." + ENCODER_TENSOR], load_weights(pretrained[0])[ENCODER_TENSOR])


@pytest.mark.parametrize("model", [
    {"channels": [8, 16, 64]},                          # another width at the bottom
    {"name": "unet", "channels": [8, 16, 32]},          # another network
])
def test_init_from_a_pretrain_folder_of_another_architecture_is_refused(pretrained, label_free, model):
    from mricore.errors import InputError

    cfg = load_config(SegmentConfig, label_free / _segment_yaml(label_free, **model))
    with pytest.raises(InputError, match="differs from this config"):
        build_model(cfg, torch.device("cpu"), str(pretrained[0]))


def test_an_existing_output_is_replaced_only_with_force(pretrained, label_free, capsys):
    cfg = str(label_free / f"pretrain_{pretrained[1].name}")
    before = (pretrained[0] / "weights.pt").stat().st_mtime_ns
    capsys.readouterr()
    assert main(["pretrain", "--config", cfg, "-o", str(pretrained[0])]) == 2
    assert "--force" in _one_error_line(capsys)
    assert (pretrained[0] / "weights.pt").stat().st_mtime_ns == before
    out = label_free / "forced"
    (out).mkdir()
    (out / "old.txt").write_text("x")
    assert main(["pretrain", "--config", cfg, "-o", str(out), "--force"]) == 0
    assert not (out / "old.txt").exists() and (out / "weights.pt").exists()


@pytest.mark.parametrize("path", sorted((Path(__file__).resolve().parents[2] / "configs" / "segment")
                                         .glob("pretrain_*.yaml")), ids=lambda p: p.stem)
def test_shipped_pretrain_configs_load_and_fit_their_segmenter(path):
    cfg, seg = load_pretrain_config(path)
    n = len(seg.preprocess.channels)
    recon, segmenter = reconstruction_network(seg.model, n).state_dict(), build_network(seg.model, n).state_dict()
    head = head_tensors(seg.model, n)
    assert head and set(recon) == set(segmenter)
    assert all(recon[k].shape == segmenter[k].shape for k in recon if k not in head)  # all but the final layer


# Bad input: (extra CLI arguments, pretrain config keys, a fragment of the one error line). Each exits 2.
BAD = [
    (["--set", "mask.ratoi=0.3"], {}, "did you mean 'mask.ratio'"),      # unknown key, close match
    (["--set", "mask.ratio=1.5"], {}, "mask.ratio must be in (0, 1)"),
    (["--set", "epochs=0"], {}, "must be >= 1"),
    ([], {"segment_config": ""}, "segment_config"),                       # nothing to pre-train
    ([], {"segment_config": "missing.yaml"}, "config file does not exist"),
    (["--data", "{tmp}/nowhere"], {}, "dataset path does not exist"),
    (["--data", "{tmp}/adc_only"], {}, "no study with the channels"),    # no T2W study under --data
]


@pytest.mark.parametrize("args,keys,message", BAD)
def test_bad_input_is_one_line_and_exit_2(label_free, tmp_path, capsys, args, keys, message):
    (tmp_path / "adc_only" / "case").mkdir(parents=True)
    shutil.copy(label_free / "data" / STUDIES[1] / "t2.nii.gz", tmp_path / "adc_only" / "case" / "adc.nii.gz")
    seg = _segment_yaml(label_free)
    cfg = yaml.safe_load(open(_pretrain_yaml(label_free, seg, label_free / "data")))
    path = tmp_path / "pretrain.yaml"
    path.write_text(yaml.safe_dump({**cfg, "segment_config": str(label_free / seg), **keys}))
    argv = ["pretrain", "--config", str(path), "-o", str(tmp_path / "out")] + [a.format(tmp=tmp_path) for a in args]
    assert main(argv) == 2
    assert message in _one_error_line(capsys)
    assert not (tmp_path / "out").exists()
