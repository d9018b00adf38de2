"""Dice + cross-entropy for partly labelled training data.

A teacher's whole gland (`data.teacher`) says where the gland is but not which zone: its voxels carry
GLAND_UNKNOWN (segment.data). The loss uses what is known and nothing else (a marginal loss):
- cross-entropy: -log p(label) on labelled voxels, -log (p(TZ) + p(PZ)) on gland-unknown voxels;
- soft Dice per sample and class, as MONAI's DiceCELoss computes it (include background, smooth 1e-5):
  background everywhere (a gland-unknown voxel is not background), each zone only over voxels whose
  zone is known.
Without gland-unknown voxels it equals MONAI's DiceCELoss(to_onehot_y=True, softmax=True)
(tests/segment/test_losses.py), so the two training paths agree wherever both apply.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .data import GLAND_UNKNOWN


class PartialDiceCE(torch.nn.Module):
    def __init__(self, weight: torch.Tensor | None = None, lambda_dice: float = 1.0, lambda_ce: float = 1.0,
                 smooth: float = 1e-5):
        super().__init__()
        self.register_buffer("weight", weight)
        self.lambda_dice, self.lambda_ce, self.smooth = lambda_dice, lambda_ce, smooth

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """logits (N, 3, ...); target (N, 1, ...) integer labels 0/1/2 or GLAND_UNKNOWN."""
        y = target[:, 0].long()
        known = y != GLAND_UNKNOWN
        yk = torch.where(known, y, torch.zeros_like(y))
        logp = F.log_softmax(logits.float(), 1)
        ce_known = -logp.gather(1, yk[:, None])[:, 0]
        ce_gland = -torch.logsumexp(logp[:, 1:], 1)
        if self.weight is not None:  # class weights as nn.CrossEntropyLoss applies them (weighted mean)
            w = torch.where(known, self.weight[yk], self.weight[1:].mean())  # gland-unknown: mean zone weight
            ce = (w * torch.where(known, ce_known, ce_gland)).sum() / w.sum()
        else:
            ce = torch.where(known, ce_known, ce_gland).mean()
        p = logp.exp()
        onehot = F.one_hot(yk, logits.shape[1]).movedim(-1, 1).to(p.dtype)
        onehot[:, 0] = (y == 0).to(p.dtype)
        valid = torch.ones_like(onehot)
        valid[:, 1:] = known[:, None].to(p.dtype)
        dims = tuple(range(2, p.ndim))
        inter = (p * onehot * valid).sum(dims)
        denom = ((p + onehot) * valid).sum(dims)
        dice = 1 - (2 * inter + self.smooth) / (denom + self.smooth)
        if self.weight is not None:  # as MONAI's DiceLoss: each class's Dice times its weight
            dice = dice * self.weight
        dice = dice.mean()
        return self.lambda_dice * dice + self.lambda_ce * ce
