"""The lesion classifier's training loop: the patches one epoch sees, one epoch of steps, and scoring a
set of patches (inner split, held-out fold).

Each epoch's randomness (batch draws, augmentation, dropout) depends only on (seed, epoch), so a
resumed run repeats an uninterrupted one.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from mricore.classifiers import encoder_parameters
from mricore.protocol import Fold


@dataclass
class Patches:
    """(patches, covariates, labels) of a set of cases' unambiguous tiles (localize.patches.patch_labels)."""
    x: np.ndarray             # (n, C, pi, pj[, pk]) float32
    cov: np.ndarray           # (n, n_covariates) float32
    y: np.ndarray             # (n,) float32, 0 or 1

    @classmethod
    def of(cls, items: list[dict]) -> "Patches | None":
        if not items:
            return None
        x, c, y = (np.concatenate([i["tiles"].patches for i in items]),
                   np.concatenate([i["tiles"].covariates for i in items]), np.concatenate([i["y"] for i in items]))
        keep = np.isfinite(y)
        return cls(x[keep], c[keep], y[keep])


@dataclass
class TrainingData:
    """One fold's items (training after data.max_train_patients, inner, held out) and the patches that
    train the weights and choose the epoch."""
    split: Fold
    train: Patches
    inner: Patches | None     # None without an inner split (train.selection fixed)


def train_one_epoch(net: torch.nn.Module, data: Patches, loss_fn, opt: torch.optim.Optimizer, cfg, epoch: int,
                    frozen: bool) -> float:
    """One epoch of `cfg.iters_per_epoch` steps (cfg: a TrainConfig); the mean loss. With `frozen` the
    encoder does not train and its norm layers keep the source model's running statistics."""
    rng = np.random.default_rng(cfg.seed * 100003 + epoch)
    torch.manual_seed(cfg.seed * 100003 + epoch)
    for p in encoder_parameters(net):
        p.requires_grad_(not frozen)
    net.train()
    if frozen:
        net.encoder.eval()
    losses = []
    for _ in range(cfg.iters_per_epoch):
        idx = _draw(data.y, cfg.batch_size, cfg.balanced_sampling, rng)
        x = torch.from_numpy(_augment(data.x[idx], rng))
        c = torch.from_numpy(data.cov[idx]) if data.cov.shape[1] else None
        loss = loss_fn(net(x, c)[:, 0], torch.from_numpy(data.y[idx]))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    return float(np.mean(losses))


def validate(model, data: Patches, loss_fn) -> dict:
    """Patch AUC and loss of `data` in eval mode (model: a LesionModel; the next epoch restores train mode)."""
    p = model.score(data.x, data.cov)
    loss = loss_fn(torch.logit(torch.from_numpy(p).clamp(1e-6, 1 - 1e-6)), torch.from_numpy(data.y))
    return {"auc": _auc(data.y, p), "loss": float(loss)}


def _auc(y: np.ndarray, p: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(y, p)) if 0 < y.sum() < len(y) else float("nan")


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
