"""MONAI networks built by name through an explicit registry, and the one place where logits become
zone probabilities.

Networks return logits. `class_probabilities` turns them into (background, TZ, PZ) probabilities for
either label scheme, so ensembles average like with like and every output is zone-consistent
(WG = TZ ∪ PZ).
"""

from __future__ import annotations

import torch
from torch import nn

from mricore.classifiers import dynunet_strides
from mricore.errors import ConfigError

from .config import ModelConfig, n_outputs


def _unet(cfg: ModelConfig, in_ch: int, out_ch: int) -> nn.Module:
    from monai.networks.nets import UNet

    return UNet(spatial_dims=cfg.spatial_dims, in_channels=in_ch, out_channels=out_ch,
                channels=tuple(cfg.channels), strides=tuple(cfg.strides), num_res_units=cfg.num_res_units,
                dropout=cfg.dropout, norm=cfg.norm)


def _dynunet(cfg: ModelConfig, in_ch: int, out_ch: int) -> nn.Module:
    from monai.networks.nets import DynUNet

    n = len(cfg.channels)
    if n < 3:  # MONAI DynUNet needs input block, >= 1 downsampling and a bottleneck
        raise ConfigError("model.channels", "dynunet needs at least 3 levels", cfg.channels, "e.g. [16, 32, 64]")
    strides = dynunet_strides(cfg.spatial_dims, cfg.strides)  # 3D: the first level keeps the slice axis
    return DynUNet(spatial_dims=cfg.spatial_dims, in_channels=in_ch, out_channels=out_ch,
                   kernel_size=[3] * n, strides=strides, upsample_kernel_size=strides[1:],
                   filters=list(cfg.channels), dropout=cfg.dropout, norm_name=cfg.norm, res_block=True)


def _segresnet(cfg: ModelConfig, in_ch: int, out_ch: int) -> nn.Module:
    from monai.networks.nets import SegResNet

    return SegResNet(spatial_dims=cfg.spatial_dims, in_channels=in_ch, out_channels=out_ch,
                     init_filters=cfg.channels[0], blocks_down=tuple([1] + [2] * (len(cfg.channels) - 1)),
                     blocks_up=tuple([1] * (len(cfg.channels) - 1)), dropout_prob=cfg.dropout or None,
                     norm=cfg.norm)


REGISTRY = {"unet": _unet, "dynunet": _dynunet, "segresnet": _segresnet}


def in_channels(cfg: ModelConfig, n_sequences: int) -> int:
    """2.5D stacks 2*context+1 slices of every sequence as channels."""
    return n_sequences * (2 * cfg.context + 1)


def build_network(cfg: ModelConfig, n_sequences: int) -> nn.Module:
    if cfg.name not in REGISTRY:
        raise ConfigError("model.name", "unknown network", repr(cfg.name), f"use one of {sorted(REGISTRY)}")
    return REGISTRY[cfg.name](cfg, in_channels(cfg, n_sequences), n_outputs(cfg.label_scheme))


def encoder_modules(model: nn.Module, name: str) -> list[nn.Module]:
    """Modules of the contracting path (frozen first in transfer learning; their norm layers are then
    kept in eval mode so their running statistics stay those of the source model)."""
    if name == "unet":
        mods = []
        seq = model.model
        while True:  # MONAI UNet: Sequential(down, SkipConnection(Sequential(down, ..., up)), up)
            mods.append(seq[0])
            if len(seq) < 3:
                break
            sub = seq[1].submodule
            if not isinstance(sub, nn.Sequential):
                mods.append(sub)  # bottom layer
                break
            seq = sub
        return mods
    if name == "dynunet":
        return [model.input_block, *model.downsamples, model.bottleneck]
    if name == "segresnet":
        return [model.convInit, model.down_layers]
    raise ConfigError("model.name", "no encoder definition", name, f"use one of {sorted(REGISTRY)}")


def encoder_parameters(model: nn.Module, name: str) -> list[nn.Parameter]:
    """Parameters of the contracting path (see encoder_modules)."""
    return [p for m in encoder_modules(model, name) for p in m.parameters()]


def class_probabilities(logits: torch.Tensor, scheme: str) -> torch.Tensor:
    """(N, outputs, ...) logits -> (N, 3, ...) probabilities of background, TZ, PZ (float32).

    regions: the two sigmoids are trained on the targets of `targets_for`, WG and TZ, each 0 on the
    background, so they estimate p(WG) and p(TZ) (not p(TZ | gland)). Decoded as background 1 - p(WG),
    TZ min(p(TZ), p(WG)), PZ p(WG) - TZ: TZ ⊂ WG and the three sum to 1. Example: p(WG) 0.7, p(TZ) 0.42
    gives (0.30, 0.42, 0.28), so the voxel is TZ.
    """
    logits = logits.float()
    if scheme == "multiclass":
        return torch.softmax(logits, dim=1)
    wg, tz = torch.sigmoid(logits[:, 0:1]), torch.sigmoid(logits[:, 1:2])
    tz = torch.minimum(tz, wg)
    return torch.cat([1 - wg, tz, wg - tz], dim=1)


def targets_for(label: torch.Tensor, scheme: str) -> torch.Tensor:
    """(N, 1, ...) zone labels (0/1/2) -> training target: as-is for multiclass, (WG, TZ) for regions."""
    if scheme == "multiclass":
        return label
    return torch.cat([(label > 0), (label == 1)], dim=1).float()
