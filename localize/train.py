"""`localize train`: a patch lesion classifier on patient-level folds (stratified by lesion presence).

Balanced batches (half lesion tiles) and/or weighted BCE; the prior they impose is undone at scoring
(`training.prior_logit` in model.json), so probabilities are calibrated. Tiles with a lesion only at
their rim are left out (localize.patches.patch_labels); training tiles are denser than prediction's
(`candidates.train_stride`). Quarter turns, flips and intensity scale/shift, AdamW. Transfer learning
(`train.init_from`): from a saved lesion classifier (matching tensor names and shapes, count reported)
or, for model.name dynunet_encoder, from a DynUNet segmenter (every encoder tensor must load), with
the encoder frozen (its norm layers in eval mode) for the first N epochs. `data.max_train_patients`
trains on a seeded subset of the patients (learning curves). model.name zone_stats_lr is fitted by
localize.baseline instead.

The weights are chosen on training patients only (`train.selection`: best epoch and early stopping
by patch AUC on an inner split, or the last epoch); the fold's held-out patients are scored once at
the end and decide nothing. After every epoch an atomic `checkpoint_last.pt`; the model folder is
written once, at the end. Each epoch's randomness depends only on (seed, epoch), so `--resume`
repeats the run exactly. One process (no torchrun path: the data is a few thousand patches).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from mricore.classifiers import load_matching
from mricore.config import to_dict
from mricore.datasets import load_case, read_ref
from mricore.errors import ConfigError, InputError
from mricore.outputs import replace_atomically
from mricore.modelfolder import ModelMeta, load_weights, read_model, run_folder, start_run, write_model
from mricore.preprocess import prepare_label
from mricore.protocol import Selection, patient_subset

from .baseline import NAME as BASELINE
from .baseline import train_baseline
from .config import KIND, LocalizeConfig
from .covariates import read_clinical
from .folds import labelled_cases, split_items
from .loop import Patches, TrainingData, train_one_epoch, validate
from .model import LesionModel
from .patches import patch_labels


def train(cfg: LocalizeConfig, fold: int | str = 0, resume: bool = False, force: bool = False) -> Path:
    """Train one fold (or 'all' cases without validation); return the model folder.

    Steps: data (the fold's patches), model (built, optionally initialised from another folder),
    loop with selection (`_fit`), save (the chosen weights and their description, `_save`).
    """
    if cfg.model.name == BASELINE:
        return train_baseline(cfg, fold, force)
    run_dir, last = run_folder(cfg.output_dir, cfg.name, fold, resume, force)
    torch.manual_seed(cfg.train.seed)
    model = LesionModel.build(cfg.model, cfg.candidates, cfg.preprocess)
    data = load_data(cfg, model, fold)
    n_pos = int(data.train.y.sum())
    pos_weight = (len(data.train.y) - n_pos) / n_pos if cfg.train.weighted_bce else 1.0
    loss_fn = torch.nn.BCEWithLogitsLoss(pos_weight=torch.tensor(pos_weight))
    transfer = _init_from(model.net, cfg.train.init_from, cfg) if cfg.train.init_from and not resume else None
    opt = torch.optim.AdamW(model.net.parameters(), lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
    state = RunState(0, Selection(cfg.train.patience), [], transfer)
    if resume:
        ck = torch.load(last, map_location="cpu", weights_only=True)
        model.net.load_state_dict(ck["model"])
        opt.load_state_dict(ck["optimizer"])
        state = RunState(ck["epoch"] + 1, Selection(cfg.train.patience, ck["best"], ck["best_epoch"], ck["bad"]),
                         ck["history"], ck.get("transfer"))
    _fit(cfg, model, data, loss_fn, opt, (run_dir, last), state)
    _save(cfg, fold, model, data, loss_fn, run_dir, state, pos_weight)
    return run_dir


@dataclass
class RunState:
    """Where a run stands: the next epoch, the selection so far, the epochs' rows, the transfer record
    (all kept in checkpoint_last.pt, so --resume continues exactly)."""
    start: int
    selection: Selection
    history: list
    transfer: dict | None


def load_training_cases(cfg: LocalizeConfig, model: LesionModel) -> list[dict]:
    """Every case with the lesion label and a zone map: its patches, patch labels and covariates."""
    clinical = read_clinical(cfg.data.clinical)
    out = []
    for c, zkey in labelled_cases(cfg.data, model.spec.channels):
        image, lesion, _ = load_case(c, model.spec.channels, cfg.data.label)
        zones = read_ref(c.labels[zkey], zkey, c.case_id)
        ct = model.tiles_for(image, zones, clinical.get(c.case_id) or clinical.get(c.patient_id),
                             stride=cfg.candidates.train_stride)
        lab = patch_labels(prepare_label(lesion, ct.prepared), ct.tiles, cfg.candidates.positive_min_voxels)
        out.append({"case": c, "tiles": ct, "y": lab, "positive": bool(lesion.array.any()), "zones_key": zkey})
    if not out:
        raise InputError(cfg.data.root, f"no case has '{cfg.data.label}', a zone map {cfg.data.zones} and channels "
                         f"{model.spec.channels}", 0, "check data.root, data.datasets and data.zones")
    return out


def load_data(cfg: LocalizeConfig, model: LesionModel, fold) -> TrainingData:
    """The fold's items under the protocol (localize.folds), the training ones cut to
    `data.max_train_patients` after the inner split (the patients whose tiles train the weights),
    and their patches. Raises InputError when no training patch is positive."""
    split = split_items(cfg.data, load_training_cases(cfg, model), fold, inner=cfg.train.selection == "inner")
    chosen = patient_subset([i["case"].patient_id for i in split.train], [i["positive"] for i in split.train],
                            cfg.data.max_train_patients, cfg.data.split_seed, fold)
    split = replace(split, train=[i for i in split.train if i["case"].patient_id in chosen])
    data = TrainingData(split, Patches.of(split.train), Patches.of(split.inner))
    if not data.train.y.sum():
        raise InputError(cfg.data.root, "no positive training patch", f"{len(data.train.y)} patches",
                         "lower candidates.positive_min_voxels or add lesion cases")
    return data


def _init_from(net, folder: str, cfg: LocalizeConfig) -> dict:
    """Load a source model's matching tensors: a lesion classifier of the same backbone, or (for
    model.name dynunet_encoder) the contracting path of a DynUNet segmenter or of a `segment pretrain`
    folder (same tensor names), where every encoder tensor must load. The counts go into model.json."""
    meta = read_model(folder)
    kind = meta.kind
    src = load_weights(folder)
    if kind == KIND:
        loaded, total = load_matching(net, src, {"": ""})
    elif kind in ("segmenter", "pretrain") and cfg.model.name == "dynunet_encoder":
        seg = meta.model
        if seg.get("name") != "dynunet" or list(meta.channels) != list(cfg.preprocess.channels):
            raise ConfigError("train.init_from", "the segmenter must be a dynunet on the same channels",
                              f"{folder} ({seg.get('name')}, channels {meta.channels})",
                              f"use a dynunet segmenter trained on {cfg.preprocess.channels}")
        enc = {k: v for k, v in src.items() if k.split(".")[0] in ("input_block", "downsamples", "bottleneck")}
        loaded, _ = load_matching(net, enc, {"": "encoder."})
        total = sum(1 for k in net.state_dict() if k.startswith("encoder."))
        if loaded != total or loaded != len(enc):
            raise ConfigError("train.init_from", "every encoder tensor of the segmenter must load",
                              f"{loaded} of {total} ({len(enc)} in {folder})",
                              f"set model.width 1.0 and model.encoder_args to the segmenter's channels "
                              f"{seg.get('channels')}, strides {seg.get('strides')}, norm {seg.get('norm')}")
    else:
        raise ConfigError("train.init_from", "transfer needs a lesion classifier folder (same backbone), or a "
                          "dynunet segmenter with model.name dynunet_encoder", f"{folder} (kind {kind})",
                          "train one with `localize train`, or drop init_from")
    if loaded == 0:
        raise ConfigError("train.init_from", "no tensor matches by name and shape", f"{folder} (kind {kind})",
                          "use a lesion classifier folder or a network with the same encoder")
    print(f"init-from {folder}: {loaded}/{total} tensors loaded (kind {kind})")
    return {"from": str(folder), "kind": kind, "tensors_loaded": loaded, "tensors_total": total}


def _fit(cfg: LocalizeConfig, model: LesionModel, data: TrainingData, loss_fn, opt, paths: tuple[Path, Path],
         state: RunState) -> None:
    """Epochs `start`.. of the schedule: train, score the inner split (it alone chooses the epoch:
    patch AUC, or the loss when the inner patches hold one class), save checkpoint_best.pt on a gain
    and checkpoint_last.pt after every epoch; stop early after train.patience epochs without gain."""
    (run_dir, last), net, sel, history = paths, model.net, state.selection, state.history
    for epoch in range(state.start, cfg.train.epochs):
        frozen = epoch < cfg.train.freeze_encoder_epochs
        row = {"epoch": epoch, "loss": train_one_epoch(net, data.train, loss_fn, opt, cfg.train, epoch, frozen),
               "frozen_encoder": frozen}
        start_run(run_dir, cfg, data.split.splits)  # the folder appears with the first checkpoint
        if data.inner is not None:
            row.update({f"inner_{k}": v for k, v in validate(model, data.inner, loss_fn).items()})
            score = row["inner_auc"] if np.isfinite(row["inner_auc"]) else -row["inner_loss"]
            if sel.update(score, epoch):
                replace_atomically(run_dir / "checkpoint_best.pt",
                                   lambda tmp: torch.save({"model": net.state_dict(), "row": row}, tmp))
        else:
            sel.best_epoch = epoch
        history.append(row)
        print(f"epoch {epoch}: loss {row['loss']:.4f}" + (f" inner AUC {row['inner_auc']:.3f}" if data.inner is not None else ""))
        replace_atomically(last, lambda tmp: torch.save(dict(
            model=net.state_dict(), optimizer=opt.state_dict(), epoch=epoch, best=float(sel.best),
            best_epoch=sel.best_epoch, bad=sel.bad, history=history, transfer=state.transfer), tmp))
        if data.inner is not None and sel.stop:
            print(f"early stop at epoch {epoch}: no inner-validation gain for {sel.bad} epochs")
            break


def _save(cfg: LocalizeConfig, fold, model: LesionModel, data: TrainingData, loss_fn, run_dir: Path,
          state: RunState, pos_weight: float) -> None:
    """Write the model folder: the chosen weights (inner best, else the last epoch), the held-out fold
    scored once on them, and the training prior to undo at scoring (`training.prior_logit`)."""
    inner_row = None
    if data.inner is not None and (run_dir / "checkpoint_best.pt").exists():
        ck = torch.load(run_dir / "checkpoint_best.pt", map_location="cpu", weights_only=True)
        model.net.load_state_dict(ck["model"])
        inner_row = ck["row"]
    held = validate(model, Patches.of(data.split.held_out), loss_fn) if data.split.held_out else None
    y = data.train.y
    n_pos = int(y.sum())
    meta = _meta(cfg, fold, data, inner_row, held, state.selection.best_epoch)
    meta.training.update(patches=len(y), positive_patches=n_pos, pos_weight=pos_weight,
                         balanced_sampling=cfg.train.balanced_sampling, transfer=state.transfer,
                         patients=len({i["case"].patient_id for i in data.split.train}))
    # Training saw lesions at odds (batch share) x pos_weight; the tiles hold them at n_pos : n_neg.
    odds = n_pos / max(len(y) - n_pos, 1)
    batch_odds = 1.0 if cfg.train.balanced_sampling else odds
    meta.training["prior_logit"] = float(np.log(odds) - np.log(batch_odds * pos_weight))
    write_model(run_dir, replace(meta, history=state.history), model.net.state_dict())


def _meta(cfg: LocalizeConfig, fold, data: TrainingData, inner_row: dict | None, held: dict | None,
          epoch: int) -> ModelMeta:
    """The model folder's description; `training` is filled by the caller."""
    inner, held_out = data.split.inner, data.split.held_out
    rule = ("inner: best epoch and early stopping by patch AUC on inner-validation patients drawn from the "
            "fold's training patients" if inner else "fixed: last epoch, no selection")
    return ModelMeta(**{"kind": KIND, "name": cfg.name, "fold": fold, "model": to_dict(cfg.model),
            "candidates": to_dict(cfg.candidates), "preprocess": cfg.preprocess,
            "outputs": "lesion logit per candidate patch (sigmoid)",
            "patch_label": f">= {cfg.candidates.positive_min_voxels} '{cfg.data.label}' voxels in the patch centre",
            "training": {},
            "best_epoch": epoch,
            "selection": {"rule": rule, "epoch": epoch, "cases": [i["case"].case_id for i in inner],
                          **({"patch_auc": inner_row.get("inner_auc"), "loss": inner_row.get("inner_loss")}
                             if inner_row else {})},
            "validation": None if not held_out else {
                "split": f"fold {fold} of {cfg.data.folds} (patient-level, stratified by lesion presence); "
                         "held out: scored once after training, used for no decision",
                "cases": [i["case"].case_id for i in held_out], "patch_auc": held["auc"],
                "loss": held["loss"]}})
