"""`localize train`: a patch lesion classifier on patient-level folds (stratified by lesion presence).

Weighted BCE (pos_weight = negatives / positives of the training patches) and/or balanced sampling,
left-right and up-down flips, AdamW, early stopping on validation patch AUC, transfer learning from a
saved classifier or a segmenter (matching tensor names and shapes, count reported) with the encoder
frozen for the first N epochs. After every epoch an atomic `checkpoint_last.pt`; the model folder
(weights of the best epoch + model.json) is rewritten when validation AUC improves. Each epoch's
randomness depends only on (seed, epoch), so `--resume` repeats the run exactly.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from mricore.classifiers import encoder_parameters, load_matching
from mricore.config import save_config, to_dict
from mricore.datasets import load_case, load_dataset, read_ref
from mricore.errors import ConfigError, InputError
from mricore.io import _replace_atomically, write_json
from mricore.modelfolder import load_weights, read_model_meta, run_folder, save_model_folder
from mricore.preprocess import prepare_label
from mricore.splits import make_splits, save_splits

from .config import LocalizeConfig
from .model import KIND, LesionModel
from .patches import patch_labels


def load_training_cases(cfg: LocalizeConfig, model: LesionModel) -> list[dict]:
    """Every case with the lesion label and a zone map: its patches, patch labels and covariates."""
    cases = load_dataset(cfg.data.root)
    if cfg.data.datasets:
        cases = [c for c in cases if c.dataset in cfg.data.datasets]
    out = []
    for c in cases:
        zkey = next((k for k in cfg.data.zones if k in c.labels), None)
        if cfg.data.label not in c.labels or zkey is None or any(ch not in c.images for ch in model.spec.channels):
            continue
        image, lesion, _ = load_case(c, model.spec.channels, cfg.data.label)
        zones = read_ref(c.labels[zkey], zkey, c.case_id, label=True)
        ct = model.tiles_for(image, zones)
        lab = patch_labels(prepare_label(lesion, ct.prepared), ct.tiles, cfg.candidates.positive_min_voxels)
        out.append({"case": c, "tiles": ct, "y": lab, "positive": bool(lesion.array.any()), "zones_key": zkey})
    if not out:
        raise InputError(cfg.data.root, f"no case has '{cfg.data.label}', a zone map {cfg.data.zones} and channels "
                         f"{model.spec.channels}", 0, "check data.root, data.datasets and data.zones")
    return out


def _stack(items: list[dict]):
    if not items:
        return None
    return (np.concatenate([i["tiles"].patches for i in items]), np.concatenate([i["tiles"].covariates for i in items]),
            np.concatenate([i["y"] for i in items]))


def _auc(y: np.ndarray, p: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(y, p)) if 0 < y.sum() < len(y) else float("nan")


def _init_from(net, folder: str) -> dict:
    meta = read_model_meta(folder)
    src = load_weights(folder)
    # A lesion classifier shares our names; a segmenter's encoder is tried under the encoder prefix.
    mapping = {"": ""} if meta.get("kind") == KIND else {"": "encoder."}
    loaded, total = load_matching(net, src, mapping)
    if loaded == 0:
        raise ConfigError("train.init_from", "no tensor matches by name and shape", f"{folder} (kind {meta.get('kind')})",
                          "use a lesion classifier folder or a network with the same encoder")
    print(f"init-from {folder}: {loaded}/{total} tensors loaded (kind {meta.get('kind')})")
    return {"from": str(folder), "kind": meta.get("kind"), "tensors_loaded": loaded, "tensors_total": total}


def train(cfg: LocalizeConfig, fold: int | str = 0, resume: bool = False, force: bool = False) -> Path:
    """Train one fold (or 'all' cases without validation); return the model folder."""
    run_dir, last = run_folder(cfg.output_dir, cfg.name, fold, resume, force)
    torch.manual_seed(cfg.train.seed)
    model = LesionModel.build(cfg.model, cfg.candidates, cfg.preprocess)
    net = model.net
    items = load_training_cases(cfg, model)
    splits = None
    if fold == "all":
        tr, va = items, []
    else:
        n_pat = len({i["case"].patient_id for i in items})
        if cfg.data.folds > n_pat:
            raise ConfigError("data.folds", f"needs at most {n_pat} (patients with labels)", cfg.data.folds, "lower it")
        splits = make_splits([i["case"] for i in items], cfg.data.folds, cfg.data.split_seed,
                             positive=[i["positive"] for i in items])
        if not 0 <= int(fold) < len(splits):
            raise ConfigError("--fold", f"must be in 0..{len(splits) - 1} or 'all'", fold, "")
        val_ids = set(splits[int(fold)]["val"])
        tr = [i for i in items if i["case"].case_id not in val_ids]
        va = [i for i in items if i["case"].case_id in val_ids]
    xtr, ctr, ytr = _stack(tr)
    val = _stack(va)
    n_pos = int(ytr.sum())
    if n_pos == 0:
        raise InputError(cfg.data.root, "no positive training patch", f"{len(ytr)} patches",
                         "lower candidates.positive_min_voxels or add lesion cases")
    pos_weight = (len(ytr) - n_pos) / n_pos if cfg.train.weighted_bce else 1.0
    loss_fn = torch.nn.BCEWithLogitsLoss(pos_weight=torch.tensor(pos_weight))
    transfer = _init_from(net, cfg.train.init_from) if cfg.train.init_from and not resume else None
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
    start, best, best_epoch, bad, history = 0, -np.inf, -1, 0, []
    if resume:
        ck = torch.load(last, map_location="cpu", weights_only=True)
        net.load_state_dict(ck["model"])
        opt.load_state_dict(ck["optimizer"])
        start, best, best_epoch, bad, history = ck["epoch"] + 1, ck["best"], ck["best_epoch"], ck["bad"], ck["history"]
        transfer = ck.get("transfer")
    run_dir.mkdir(parents=True, exist_ok=True)
    save_config(cfg, run_dir / "config.yaml")
    if splits is not None:
        save_splits(splits, run_dir / "splits.json")
    enc = encoder_parameters(net)
    for epoch in range(start, cfg.train.epochs):
        rng = np.random.default_rng(cfg.train.seed * 100003 + epoch)
        torch.manual_seed(cfg.train.seed * 100003 + epoch)
        frozen = epoch < cfg.train.freeze_encoder_epochs
        for p in enc:
            p.requires_grad_(not frozen)
        net.train()
        losses = []
        for _ in range(cfg.train.iters_per_epoch):
            idx = _draw(ytr, cfg.train.batch_size, cfg.train.balanced_sampling, rng)
            x = torch.from_numpy(_flip(xtr[idx], rng))
            c = torch.from_numpy(ctr[idx]) if ctr.shape[1] else None
            loss = loss_fn(net(x, c)[:, 0], torch.from_numpy(ytr[idx]))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
        row = {"epoch": epoch, "loss": float(np.mean(losses)), "frozen_encoder": frozen}
        if val is not None:
            p = model.score(val[0], val[1])
            row["val_auc"] = _auc(val[2], p)
            row["val_loss"] = float(loss_fn(torch.logit(torch.from_numpy(p).clamp(1e-6, 1 - 1e-6)),
                                            torch.from_numpy(val[2])))
        # Validation AUC decides; when the fold has one patch class only, the validation loss does.
        score = row.get("val_auc", np.nan)
        score = score if np.isfinite(score) else -row.get("val_loss", -epoch)
        history.append(row)
        improved = score > best
        best, best_epoch, bad = (score, epoch, 0) if improved else (best, best_epoch, bad + 1)
        print(f"epoch {epoch}: loss {row['loss']:.4f}" + (f" val AUC {row['val_auc']:.3f}" if "val_auc" in row else ""))
        if improved:
            save_model_folder(run_dir, net.state_dict(), _meta(cfg, fold, va, row, pos_weight, transfer, len(ytr), n_pos))
        _replace_atomically(last, lambda tmp: torch.save(dict(
            model=net.state_dict(), optimizer=opt.state_dict(), epoch=epoch, best=float(best), best_epoch=best_epoch,
            bad=bad, history=history, transfer=transfer), tmp))
        if val is not None and bad >= cfg.train.patience:
            print(f"early stop at epoch {epoch}: no validation improvement for {bad} epochs")
            break
    meta = read_model_meta(run_dir)
    meta["history"] = history
    write_json(meta, run_dir / "model.json")
    return run_dir


def _draw(y: np.ndarray, n: int, balanced: bool, rng: np.random.Generator) -> np.ndarray:
    if not balanced:
        return rng.integers(0, len(y), n)
    pos, neg = np.flatnonzero(y > 0), np.flatnonzero(y == 0)
    k = n // 2
    return np.concatenate([rng.choice(pos, k), rng.choice(neg, n - k)])


def _flip(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Random flips of the in-plane axes (i: left-right, j: anterior-posterior), per sample."""
    x = x.copy()
    for i in range(len(x)):
        for ax in (1, 2):
            if rng.random() < 0.5:
                x[i] = np.flip(x[i], axis=ax)
    return x


def _meta(cfg: LocalizeConfig, fold, va, row, pos_weight, transfer, n_train, n_pos) -> dict:
    return {"kind": KIND, "name": cfg.name, "fold": fold, "model": to_dict(cfg.model),
            "candidates": to_dict(cfg.candidates), "preprocess": to_dict(cfg.preprocess),
            "channels": list(cfg.preprocess.channels), "outputs": "lesion logit per candidate patch (sigmoid)",
            "patch_label": f">= {cfg.candidates.positive_min_voxels} '{cfg.data.label}' voxels in the patch centre",
            "training": {"patches": n_train, "positive_patches": n_pos, "pos_weight": pos_weight,
                         "balanced_sampling": cfg.train.balanced_sampling, "transfer": transfer},
            "best_epoch": row["epoch"],
            "validation": None if not va else {
                "split": f"fold {fold} of {cfg.data.folds} (patient-level, stratified by lesion presence)",
                "cases": [i["case"].case_id for i in va], "patch_auc": row.get("val_auc"), "loss": row.get("val_loss")}}
