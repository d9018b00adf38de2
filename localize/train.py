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

from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from mricore.classifiers import encoder_parameters, load_matching
from mricore.config import to_dict
from mricore.datasets import load_case, read_ref
from mricore.errors import ConfigError, InputError
from mricore.io import replace_atomically
from mricore.modelfolder import ModelMeta, load_weights, read_model, run_folder, start_run, write_model
from mricore.preprocess import prepare_label
from mricore.splits import inner_patients

from .config import LocalizeConfig
from .baseline import NAME as BASELINE
from .baseline import train_baseline
from .model import KIND, LesionModel, fold_split, labelled_cases, read_clinical
from .patches import patch_labels


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


def _stack(items: list[dict]):
    """(patches, covariates, labels) of the items' unambiguous tiles (localize.patches.patch_labels)."""
    if not items:
        return None
    x, c, y = (np.concatenate([i["tiles"].patches for i in items]), np.concatenate([i["tiles"].covariates for i in items]),
               np.concatenate([i["y"] for i in items]))
    keep = np.isfinite(y)
    return x[keep], c[keep], y[keep]


def _auc(y: np.ndarray, p: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(y, p)) if 0 < y.sum() < len(y) else float("nan")


def _init_from(net, folder: str, cfg: LocalizeConfig) -> dict:
    """Load a source model's matching tensors: a lesion classifier of the same backbone, or (for
    model.name dynunet_encoder) a DynUNet segmenter's contracting path, where every encoder tensor
    must load. The counts go into model.json."""
    meta = read_model(folder)
    kind = meta.kind
    src = load_weights(folder)
    if kind == KIND:
        loaded, total = load_matching(net, src, {"": ""})
    elif kind == "segmenter" and cfg.model.name == "dynunet_encoder":
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


def train(cfg: LocalizeConfig, fold: int | str = 0, resume: bool = False, force: bool = False) -> Path:
    """Train one fold (or 'all' cases without validation); return the model folder."""
    if cfg.model.name == BASELINE:
        return train_baseline(cfg, fold, force)
    run_dir, last = run_folder(cfg.output_dir, cfg.name, fold, resume, force)
    torch.manual_seed(cfg.train.seed)
    model = LesionModel.build(cfg.model, cfg.candidates, cfg.preprocess)
    net = model.net
    items = load_training_cases(cfg, model)
    splits, tr, held = fold_split(cfg.data, items, fold)
    tr, inner = _inner_split(cfg, tr, fold)
    tr = _subset(cfg, tr, fold)  # after the inner split: the patients whose tiles train the weights
    xtr, ctr, ytr = _stack(tr)
    val = _stack(inner)
    n_pos = int(ytr.sum())
    if n_pos == 0:
        raise InputError(cfg.data.root, "no positive training patch", f"{len(ytr)} patches",
                         "lower candidates.positive_min_voxels or add lesion cases")
    pos_weight = (len(ytr) - n_pos) / n_pos if cfg.train.weighted_bce else 1.0
    loss_fn = torch.nn.BCEWithLogitsLoss(pos_weight=torch.tensor(pos_weight))
    transfer = _init_from(net, cfg.train.init_from, cfg) if cfg.train.init_from and not resume else None
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
    start, best, best_epoch, bad, history = 0, -np.inf, -1, 0, []
    if resume:
        ck = torch.load(last, map_location="cpu", weights_only=True)
        net.load_state_dict(ck["model"])
        opt.load_state_dict(ck["optimizer"])
        start, best, best_epoch, bad, history = ck["epoch"] + 1, ck["best"], ck["best_epoch"], ck["bad"], ck["history"]
        transfer = ck.get("transfer")
    enc = encoder_parameters(net)
    best_path = run_dir / "checkpoint_best.pt"
    for epoch in range(start, cfg.train.epochs):
        rng = np.random.default_rng(cfg.train.seed * 100003 + epoch)
        torch.manual_seed(cfg.train.seed * 100003 + epoch)
        frozen = epoch < cfg.train.freeze_encoder_epochs
        for p in enc:
            p.requires_grad_(not frozen)
        net.train()
        if frozen:
            net.encoder.eval()  # frozen norm layers keep the source model's running statistics
        losses = []
        for _ in range(cfg.train.iters_per_epoch):
            idx = _draw(ytr, cfg.train.batch_size, cfg.train.balanced_sampling, rng)
            x = torch.from_numpy(_augment(xtr[idx], rng))
            c = torch.from_numpy(ctr[idx]) if ctr.shape[1] else None
            loss = loss_fn(net(x, c)[:, 0], torch.from_numpy(ytr[idx]))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
        start_run(run_dir, cfg, splits)  # the folder appears with the first checkpoint
        row = {"epoch": epoch, "loss": float(np.mean(losses)), "frozen_encoder": frozen}
        if val is not None:  # inner split (training patients): it alone chooses the epoch
            row.update({f"inner_{k}": v for k, v in _score(model, val, loss_fn).items()})
            # Inner AUC decides; when the inner patches hold one class only, the inner loss does.
            score = row["inner_auc"] if np.isfinite(row["inner_auc"]) else -row["inner_loss"]
            improved = score > best
            best, best_epoch, bad = (score, epoch, 0) if improved else (best, best_epoch, bad + 1)
            if improved:
                replace_atomically(best_path, lambda tmp: torch.save({"model": net.state_dict(), "row": row}, tmp))
        else:
            best_epoch = epoch
        history.append(row)
        print(f"epoch {epoch}: loss {row['loss']:.4f}" + (f" inner AUC {row['inner_auc']:.3f}" if val is not None else ""))
        replace_atomically(last, lambda tmp: torch.save(dict(
            model=net.state_dict(), optimizer=opt.state_dict(), epoch=epoch, best=float(best), best_epoch=best_epoch,
            bad=bad, history=history, transfer=transfer), tmp))
        if val is not None and bad >= cfg.train.patience:
            print(f"early stop at epoch {epoch}: no inner-validation gain for {bad} epochs")
            break
    inner_row = None
    if val is not None and best_path.exists():
        ck = torch.load(best_path, map_location="cpu", weights_only=True)
        net.load_state_dict(ck["model"])
        inner_row = ck["row"]
    held_scores = _score(model, _stack(held), loss_fn) if held else None
    meta = _meta(cfg, fold, inner, held, inner_row, held_scores, best_epoch, pos_weight, transfer, len(ytr), n_pos)
    meta.training["patients"] = len({i["case"].patient_id for i in tr})
    # Training saw lesions at odds (batch share) x pos_weight; the tiles hold them at n_pos : n_neg.
    odds = n_pos / max(len(ytr) - n_pos, 1)
    batch_odds = 1.0 if cfg.train.balanced_sampling else odds
    meta.training["prior_logit"] = float(np.log(odds) - np.log(batch_odds * pos_weight))
    write_model(run_dir, replace(meta, history=history), net.state_dict())
    return run_dir


def _score(model: LesionModel, data, loss_fn) -> dict:
    """Patch AUC and loss of (patches, covariates, labels) in eval mode."""
    p = model.score(data[0], data[1])
    loss = loss_fn(torch.logit(torch.from_numpy(p).clamp(1e-6, 1 - 1e-6)), torch.from_numpy(data[2]))
    return {"auc": _auc(data[2], p), "loss": float(loss)}


def _inner_split(cfg: LocalizeConfig, items: list[dict], fold) -> tuple[list[dict], list[dict]]:
    """(training, inner-validation) items: `data.inner_val` training patients, seeded by split_seed and
    fold. Lesion patients are taken first (so the inner patches hold both classes), but one always stays
    in training. Fixed selection: no inner split."""
    if cfg.train.selection == "fixed":
        return items, []
    positive: dict[str, bool] = {}
    for i in items:
        positive[i["case"].patient_id] = positive.get(i["case"].patient_id, False) or i["positive"]
    chosen = inner_patients(list(positive), cfg.data.inner_val, cfg.data.split_seed, fold, positive)
    return ([i for i in items if i["case"].patient_id not in chosen],
            [i for i in items if i["case"].patient_id in chosen])


def _subset(cfg: LocalizeConfig, items: list[dict], fold) -> list[dict]:
    """`data.max_train_patients` of the training patients (lesion patients in proportion, at least one),
    seeded by split_seed and fold; all of them when unset."""
    n = cfg.data.max_train_patients
    positive: dict[str, bool] = {}
    for i in items:
        positive[i["case"].patient_id] = positive.get(i["case"].patient_id, False) or i["positive"]
    if n is None or n >= len(positive):
        return items
    rng = np.random.default_rng([cfg.data.split_seed, 0 if fold == "all" else int(fold) + 1, n])
    pos = list(rng.permutation(sorted(p for p, v in positive.items() if v)))
    neg = list(rng.permutation(sorted(p for p, v in positive.items() if not v)))
    k = min(len(pos), max(1, round(n * len(pos) / len(positive)))) if pos else 0
    chosen = set(pos[:k] + neg[:n - k])
    return [i for i in items if i["case"].patient_id in chosen]


def _draw(y: np.ndarray, n: int, balanced: bool, rng: np.random.Generator) -> np.ndarray:
    if not balanced:
        return rng.integers(0, len(y), n)
    pos, neg = np.flatnonzero(y > 0), np.flatnonzero(y == 0)
    k = n // 2
    return np.concatenate([rng.choice(pos, k), rng.choice(neg, n - k)])


def _augment(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Per sample: a random quarter turn and flip in-plane (axes i, j), and a random intensity scale
    (0.8-1.25) and shift (sd 0.2 of the z-scored intensity): the lesion's look is kept, the anatomy's
    orientation and brightness are not memorised."""
    x = x.copy()
    square = x.shape[2] == x.shape[3]
    for i in range(len(x)):
        x[i] = np.rot90(x[i], int(rng.integers(4)) if square else 2 * int(rng.integers(2)), axes=(1, 2))
        if rng.random() < 0.5:
            x[i] = np.flip(x[i], axis=1)
        x[i] = x[i] * rng.uniform(0.8, 1.25) + rng.normal(0, 0.2)
    return x


def _meta(cfg: LocalizeConfig, fold, inner, held, inner_row, held_scores, epoch, pos_weight, transfer,
          n_train, n_pos) -> ModelMeta:
    rule = ("inner: best epoch and early stopping by patch AUC on inner-validation patients drawn from the "
            "fold's training patients" if inner else "fixed: last epoch, no selection")
    return ModelMeta(**{"kind": KIND, "name": cfg.name, "fold": fold, "model": to_dict(cfg.model),
            "candidates": to_dict(cfg.candidates), "preprocess": cfg.preprocess,
            "outputs": "lesion logit per candidate patch (sigmoid)",
            "patch_label": f">= {cfg.candidates.positive_min_voxels} '{cfg.data.label}' voxels in the patch centre",
            "training": {"patches": n_train, "positive_patches": n_pos, "pos_weight": pos_weight,
                         "balanced_sampling": cfg.train.balanced_sampling, "transfer": transfer},
            "best_epoch": epoch,
            "selection": {"rule": rule, "epoch": epoch, "cases": [i["case"].case_id for i in inner],
                          **({"patch_auc": inner_row.get("inner_auc"), "loss": inner_row.get("inner_loss")}
                             if inner_row else {})},
            "validation": None if not held else {
                "split": f"fold {fold} of {cfg.data.folds} (patient-level, stratified by lesion presence); "
                         "held out: scored once after training, used for no decision",
                "cases": [i["case"].case_id for i in held], "patch_auc": held_scores["auc"],
                "loss": held_scores["loss"]}})
