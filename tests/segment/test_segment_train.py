"""Training on real cases (tiny): model folder contents, prediction on the input grid, exact resume,
transfer learning with a frozen encoder, DistributedDataParallel with 2 CPU processes."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from mricore.modelfolder import read_model
from mricore.io import read_nifti
from segment.torch_segmenter import Segmenter
from segment.networks import build_network, encoder_modules, encoder_parameters
from segment.train import train

from segment_helpers import DEFAULT_CONFIG, tiny_config, tiny_overrides


def test_model_folder_describes_itself(tiny_model):
    for name in ("model.json", "weights.pt", "config.yaml", "history.csv", "checkpoint_last.pt"):
        assert (tiny_model / name).is_file(), name
    sd = torch.load(tiny_model / "weights.pt", map_location="cpu", weights_only=True)
    assert all(isinstance(v, torch.Tensor) for v in sd.values())
    meta = read_model(tiny_model)
    assert meta.kind == "segmenter" and meta.channels == ["T2W"]
    assert meta.model["channels"] == [8, 16] and meta.patch == [64, 64]
    cfg = yaml.safe_load((tiny_model / "config.yaml").read_text())
    assert cfg["train"]["epochs"] == 1
    rows = list(csv.DictReader(open(tiny_model / "history.csv")))
    assert len(rows) == 1 and float(rows[0]["loss"]) > 0


def test_segmenter_predicts_on_the_input_grid(tiny_model, data_dir):
    seg = Segmenter.load(tiny_model)
    image = read_nifti(data_dir / "prostate158" / "021" / "t2.nii.gz", "T2W", "021")
    pred = seg.predict(image)
    label, prob = pred.label, pred.prob
    assert label.shape == image.shape and label.dtype == np.uint8
    assert prob.shape == (3,) + image.shape
    np.testing.assert_allclose(prob.sum(0), 1.0, atol=1e-4)
    assert set(np.unique(label)) <= {0, 1, 2}


def _weights(folder: Path) -> dict:
    return torch.load(folder / "checkpoint_last.pt", map_location="cpu", weights_only=True)["model"]


def test_resume_after_a_kill_mid_epoch_matches_an_uninterrupted_run(data_dir, tmp_path):
    extra = dict(train__epochs=2, train__iters_per_epoch=3, data__folds=2)
    full = train(tiny_config(data_dir, tmp_path / "a", **extra), 0, progress=False)

    class Killed(Exception):
        pass

    def kill(epoch, it):
        if epoch == 1 and it == 1:
            raise Killed

    cfg = tiny_config(data_dir, tmp_path / "b", **extra)
    with pytest.raises(Killed):
        train(cfg, 0, progress=False, on_iteration=kill)
    resumed = train(cfg, 0, resume=True, progress=False)
    a, b = _weights(full), _weights(resumed)
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-5, atol=1e-6, msg=k)
    assert len(list(csv.DictReader(open(resumed / "history.csv")))) == 2


def test_init_from_and_frozen_encoder(tiny_model, data_dir, tmp_path):
    cfg = tiny_config(data_dir, tmp_path, train__epochs=2, train__freeze_encoder_epochs=1, name="transfer")
    net = build_network(cfg.model, 1)
    names = {id(p): n for n, p in net.named_parameters()}
    enc = [names[id(p)] for p in encoder_parameters(net, "unet")]
    dec = [n for n in names.values() if n not in enc]
    src = torch.load(tiny_model / "weights.pt", weights_only=True)
    after_frozen = {}

    def grab(epoch, it):  # at the first step of epoch 1 the last checkpoint is the end of epoch 0
        if epoch == 1 and it == 0:
            after_frozen.update(_weights(tmp_path / "transfer" / "fold_all"))

    out = train(cfg, "all", init_from=str(tiny_model), progress=False, on_iteration=grab)
    final = _weights(out)
    for n in enc:  # frozen during epoch 0: still the loaded weights
        torch.testing.assert_close(after_frozen[n], src[n], msg=n)
    mods = {id(m): n for n, m in net.named_modules()}
    enc_buffers = [f"{mods[id(m)]}.{b}" for m in encoder_modules(net, "unet")
                   for b, _ in m.named_buffers() if "running" in b]
    assert enc_buffers
    for n in enc_buffers:  # frozen norm layers keep the source's running statistics
        torch.testing.assert_close(after_frozen[n], src[n], msg=n)
    assert any(not torch.equal(after_frozen[n], src[n]) for n in dec)       # decoder trained
    assert any(not torch.equal(final[n], after_frozen[n]) for n in enc)     # encoder trained after


def _train_cmd(data_dir, tmp_path, fold: str, launch: list[str], **extra) -> list[str]:
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(DEFAULT_CONFIG.read_text())
    sets = [a for s in tiny_overrides(data_dir, tmp_path / "runs", **extra) for a in ("--set", s)]
    return [sys.executable, "-m", "torch.distributed.run", *launch,
            "-m", "segment.cli", "train", "--config", str(cfg), "--fold", fold, *sets]


ENV = {**os.environ, "OMP_NUM_THREADS": "1"}  # 2 processes on 2 cores


def _torchrun(data_dir, tmp_path, fold: str, **extra) -> subprocess.CompletedProcess:
    cmd = _train_cmd(data_dir, tmp_path, fold, ["--standalone", "--nproc_per_node", "2"], **extra)
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=400, env=ENV, cwd=tmp_path)
    assert r.returncode == 0, f"stdout: {r.stdout[-1500:]}\nstderr: {r.stderr[-3000:]}"
    return r


@pytest.fixture(scope="module")
def ddp_all(data_dir, tmp_path_factory) -> Path:
    """Fold 'all', selection fixed, trained by 2 processes on one node; its model folder."""
    tmp = tmp_path_factory.mktemp("ddp_all")
    _torchrun(data_dir, tmp, "all", train__selection="fixed")
    return tmp / "runs"


@pytest.mark.slow
def test_ddp_two_cpu_processes_write_one_model_folder(ddp_all):
    folders = [p.parent for p in ddp_all.rglob("model.json")]
    assert [f.name for f in folders] == ["fold_all"]
    assert read_model(folders[0]).history_epochs == 1


@pytest.mark.slow
def test_two_nodes_on_loopback_train_as_one_node_with_two_processes(data_dir, tmp_path, ddp_all):
    """torchrun --nnodes 2 --nproc_per_node 1, c10d rendezvous on 127.0.0.1: the same two ranks as
    ddp_all's one node, so the same weights (each rank draws its own batches, so one process alone
    would train on half of them: the reference is the same world size). Both "nodes" share the case
    cache: rank 0 fills it, rank 1 reads it."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    launch = ["--nnodes", "2", "--nproc_per_node", "1", "--rdzv_backend", "c10d",
              "--rdzv_endpoint", f"127.0.0.1:{port}", "--rdzv_id", f"t{port}"]
    cmd = _train_cmd(data_dir, tmp_path, "all", launch, train__selection="fixed")
    nodes = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=ENV, cwd=tmp_path)
             for _ in range(2)]
    logs = [n.communicate(timeout=400)[0] for n in nodes]
    assert [n.returncode for n in nodes] == [0, 0], "\n".join(log[-2000:] for log in logs)
    assert sorted(line for log in logs for line in log.splitlines() if "training ended" in line) == [
        "rank 0 of 2: training ended after epoch 0", "rank 1 of 2: training ended after epoch 0"]
    two_nodes = torch.load(tmp_path / "runs" / "zonal_t2w_2d" / "fold_all" / "weights.pt", weights_only=True)
    one_node = torch.load(ddp_all / "zonal_t2w_2d" / "fold_all" / "weights.pt", weights_only=True)
    assert two_nodes.keys() == one_node.keys()
    for k in one_node:
        torch.testing.assert_close(two_nodes[k], one_node[k], rtol=1e-5, atol=1e-6, msg=k)


@pytest.mark.slow
def test_ddp_early_stop_ends_every_rank_at_rank0s_epoch(data_dir, tmp_path):
    # patience 0: rank 0 decides to stop after epoch 0 of 3; without the broadcast rank 1 would enter
    # epoch 1 and wait forever in its first all-reduce.
    r = _torchrun(data_dir, tmp_path, "0", train__epochs=3, train__selection="inner", train__patience=0)
    ends = sorted(line.split(": ", 1)[1] for line in r.stdout.splitlines() if "training ended" in line)
    assert ends == ["training ended after epoch 0"] * 2, r.stdout[-2000:]
    meta = read_model(tmp_path / "runs" / "zonal_t2w_2d" / "fold_0")
    assert meta.history_epochs == 1 and meta.selection["cases"] and meta.validation["cases"]


@pytest.mark.slow
def test_ddp_frozen_encoder_then_unfrozen_ends(data_dir, tmp_path):
    # The trainable set changes after epoch 0: the DDP wrapper is rebuilt (else "Expected to have
    # finished reduction in the prior iteration").
    r = _torchrun(data_dir, tmp_path, "all", train__epochs=2, train__selection="fixed", train__freeze_encoder_epochs=1)
    assert r.stdout.count("training ended after epoch 1") == 2, f"{r.stdout[-2000:]}\n{r.stderr[-2000:]}"
    assert read_model(tmp_path / "runs" / "zonal_t2w_2d" / "fold_all").history_epochs == 2
