"""Training you can trust: validation in eval mode, held-out patients that decide nothing, the regions
decoding, split/resume/force rules (issue: training correctness). Tiny runs on real cases."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from mricore.config import load_config
from mricore.datasets import load_dataset
from mricore.errors import ConfigError, InputError
from mricore.modelfolder import read_model
from segment.config import SegmentConfig
from segment.data import load_items
from mricore.zones import labels_from_probabilities
from segment.torch_segmenter import Segmenter
from segment.networks import build_network, class_probabilities
from segment.folds import resolve_split
from segment.loop import validate
from segment.train import train

from segment_helpers import tiny_config

EXPERT = ("prostate158", "i2cvb")


def _bn_state(net: torch.nn.Module) -> dict:
    return {k: v.clone() for k, v in net.state_dict().items() if "running" in k or "num_batches" in k}


def test_validate_equals_eval_mode_inference_and_leaves_batchnorm_untouched(data_dir, tmp_path):
    cfg = tiny_config(data_dir, tmp_path)  # U-Net with batch norm and dropout 0.1
    torch.manual_seed(0)
    net = build_network(cfg.model, 1)
    case = [c for c in load_dataset(data_dir) if c.case_id == "021"]
    items = load_items(case, cfg.preprocess, "zones")
    seg = Segmenter(net, cfg.model, cfg.preprocess, cfg.train.patch, cfg.predict)
    net.eval()
    expected = labels_from_probabilities(seg.probabilities(items[0].image))
    net.train()  # as inside the training loop
    before = _bn_state(net)
    out = validate(seg, items)
    after = _bn_state(net)
    assert before.keys() and all(torch.equal(before[k], after[k]) for k in before), "validation moved BN statistics"
    assert all(m.training for m in net.modules()), "training mode not restored after validation"
    from mricore.metrics import dice
    from mricore.zones import SELECTORS

    for z, f in SELECTORS.items():
        assert out["cases"][0][z] == pytest.approx(dice(f(expected), f(items[0].label)), nan_ok=True), z


@pytest.mark.parametrize("wg,tz,label", [
    (0.7, 0.42, 1),    # p(TZ) 0.42 > p(PZ) = 0.7 - 0.42: TZ (as p(TZ | gland) it would decode to PZ)
    (0.7, 0.20, 2),    # p(PZ) 0.50 wins
    (0.3, 0.25, 0),    # background 0.7
    (0.6, 0.90, 1),    # p(TZ) above p(WG) is capped at p(WG): TZ stays inside the gland
])
def test_regions_scheme_decodes_the_trained_quantities(wg, tz, label):
    logits = torch.logit(torch.tensor([wg, tz], dtype=torch.float64)).float().reshape(1, 2, 1, 1)
    p = class_probabilities(logits, "regions")
    torch.testing.assert_close(p.sum(1), torch.ones(1, 1, 1), rtol=0, atol=1e-6)
    assert int(p.argmax(1)) == label
    assert float(p[0, 1]) <= wg + 1e-6


def _datalist(data_dir, path, corrupt: set[str] = frozenset()) -> None:
    """The 5 expert cases as a datalist; the zones of `corrupt` cases replaced by an empty map."""
    rows = []
    for c in load_dataset(data_dir):
        if c.dataset not in EXPERT or "zones" not in c.labels:
            continue
        zones = c.labels["zones"].path
        if c.case_id in corrupt:
            img = nib.load(zones)
            bad = path.parent / f"bad_{c.case_id}.nii.gz"
            nib.save(nib.Nifti1Image(np.zeros(img.shape, np.uint8), img.affine, img.header), bad)
            zones = bad
        rows.append({"case_id": c.case_id, "patient_id": c.patient_id, "T2W": str(c.images["T2W"].path),
                     "zones": str(zones)})
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, list(rows[0]))
        w.writeheader()
        w.writerows(rows)


def test_held_out_patients_decide_nothing(data_dir, tmp_path):
    # Same run twice; the second with the held-out fold's reference labels destroyed. The chosen weights
    # (best epoch by the inner split, early stopping) must be identical: held-out cases decide nothing.
    extra = dict(train__epochs=3, train__iters_per_epoch=2, train__selection="inner", train__patience=1,
                 data__datasets="[]")
    probe = tiny_config(data_dir, tmp_path / "probe", **extra)
    _datalist(data_dir, tmp_path / "good.csv")
    split = resolve_split(probe, load_dataset(tmp_path / "good.csv"), 0)
    held = {c.case_id for c in split.held_out}
    assert held and not held & {c.case_id for c in split.train + split.inner}
    assert split.inner and not {c.patient_id for c in split.inner} & {c.patient_id for c in split.train}
    _datalist(data_dir, tmp_path / "bad.csv", corrupt=held)
    runs = [train(tiny_config(data_dir, tmp_path / name, **extra, data__root=str(tmp_path / f"{name}.csv")), 0,
                  progress=False) for name in ("good", "bad")]
    a, b = (torch.load(r / "weights.pt", weights_only=True) for r in runs)
    assert all(torch.equal(a[k], b[k]) for k in a)
    ma, mb = read_model(runs[0]), read_model(runs[1])
    assert ma.best_epoch == mb.best_epoch and ma.selection == mb.selection
    assert set(ma.validation["cases"]) == held and not held & set(ma.selection["cases"])
    assert ma.validation["mean_dsc"] != mb.validation["mean_dsc"]  # the held-out score did change
    hist = list(csv.DictReader(open(runs[0] / "history.csv")))
    assert "inner_mean_dsc" in hist[0] and not any(k.startswith("val") for k in hist[0])


def test_fixed_selection_keeps_the_last_epoch_and_scores_the_held_out_fold_once(data_dir, tmp_path):
    cfg = tiny_config(data_dir, tmp_path, train__epochs=2, train__selection="fixed")
    out = train(cfg, 0, progress=False)
    meta = read_model(out)
    assert meta.best_epoch == 1 and meta.selection["cases"] == [] and "fixed" in meta.selection["rule"]
    assert meta.validation["cases"] and "used for no decision" in meta.validation["split"]
    assert meta.validation["crop"] == "as in prediction (volume centre), working grid"  # the tiny config's crop
    last = torch.load(out / "checkpoint_last.pt", weights_only=True)["model"]
    final = torch.load(out / "weights.pt", weights_only=True)
    assert all(torch.equal(last[k], final[k]) for k in final)
    assert not (out / "checkpoint_best.pt").exists()


def test_inner_selection_needs_enough_training_patients(data_dir, tmp_path):
    cfg = tiny_config(data_dir, tmp_path, train__selection="inner", data__inner_val=4)
    with pytest.raises(ConfigError, match="selection=fixed"):
        resolve_split(cfg, load_dataset(data_dir), 0)


BUNDLE = sorted((Path(__file__).resolve().parents[2] / "ensemble" / "models" / "default").glob("*/splits.json"))


@pytest.mark.parametrize("splits_json", BUNDLE, ids=[p.parent.name for p in BUNDLE])
def test_the_protocol_reproduces_the_shipped_bundles_splits(data_dir, splits_json):
    # The bundle's members were trained before mricore.protocol existed: from the same data and config
    # (data section of their config.yaml; the teacher's studies only ever train, so they are left out)
    # the protocol gives the same folds, held-out cases and inner (selection) cases.
    folder = splits_json.parent
    cfg = load_config(SegmentConfig, folder / "config.yaml", [f"data.root={data_dir}", "data.teacher=null"])
    meta = read_model(folder)
    cases = [c for c in load_dataset(cfg.data.root, cfg.data.files) if c.dataset in cfg.data.datasets]
    split = resolve_split(cfg, cases, meta.fold)
    assert split.splits == json.loads(splits_json.read_text())
    assert [c.case_id for c in split.held_out] == meta.validation["cases"]
    assert [c.case_id for c in split.inner] == meta.selection["cases"]


def test_a_second_study_of_a_held_out_patient_never_trains_that_fold(data_dir):
    # A made-up silver-labelled study of each expert patient, in another dataset: it may train the
    # folds that train its patient, never the one that holds the patient out or validates on it.
    from dataclasses import replace

    cfg = load_config(SegmentConfig, Path("configs/segment/zonal_t2w_2d.yaml"),
                      [f"data.root={data_dir}", "data.silver_label=zones_ai", "train.selection=inner"])
    expert = [c for c in load_dataset(data_dir) if cfg.data.label in c.labels and c.dataset in EXPERT]
    twins = [replace(c, case_id=c.case_id + "_second", dataset="elsewhere",
                     labels={"zones_ai": c.labels[cfg.data.label]}) for c in expert]
    for fold in range(cfg.data.folds):
        split = resolve_split(cfg, expert + twins, fold)
        kept_out = {c.patient_id for c in split.held_out + split.inner}
        assert kept_out and not kept_out & {c.patient_id for c in split.train}
        assert {c.case_id for c in split.train} >= {t.case_id for t in twins if t.patient_id not in kept_out}


def test_splits_file_patient_overlap_is_an_error_through_train(data_dir, tmp_path):
    ids = [c.case_id for c in load_dataset(data_dir) if c.dataset in EXPERT and "zones" in c.labels]
    (tmp_path / "s.json").write_text(json.dumps([{"fold": 0, "train": ids[1:], "val": ids[:1] + ["nope"]}]))
    cfg = tiny_config(data_dir, tmp_path, data__splits_file=str(tmp_path / "s.json"))
    with pytest.raises(InputError, match="not in the dataset"):
        train(cfg, 0, progress=False)


def test_resume_refuses_a_changed_config(data_dir, tmp_path):
    cfg = tiny_config(data_dir, tmp_path, train__selection="fixed")
    train(cfg, "all", progress=False)
    changed = tiny_config(data_dir, tmp_path, train__selection="fixed", train__lr=0.5)
    with pytest.raises(ConfigError, match="train.lr"):
        train(changed, "all", resume=True, progress=False)


def test_force_leaves_no_file_of_the_old_run(data_dir, tmp_path):
    cfg = tiny_config(data_dir, tmp_path, train__selection="fixed")
    out = train(cfg, "all", progress=False)
    (out / "stale_from_an_old_run.txt").write_text("x")
    (out / "checkpoint_best.pt").write_text("x")
    out = train(cfg, "all", force=True, progress=False)
    assert not (out / "stale_from_an_old_run.txt").exists() and not (out / "checkpoint_best.pt").exists()
    assert (out / "model.json").is_file()


def test_training_that_fails_before_its_first_checkpoint_leaves_nothing(data_dir, tmp_path):
    # Nothing (config.yaml, splits.json, tensorboard) may block a rerun without --force.
    class Boom(Exception):
        pass

    def fail(epoch, it):
        raise Boom

    cfg = tiny_config(data_dir, tmp_path, train__selection="fixed")
    with pytest.raises(Boom):
        train(cfg, 0, progress=False, on_iteration=fail)
    assert not (tmp_path / cfg.name).exists()
    train(cfg, 0, progress=False)  # no --force needed
