"""MONAI image classifiers by name, 2D or 3D, with optional clinical covariates before the head.

Every classifier is a `CovariateClassifier`: `encoder` (a MONAI backbone whose own head is replaced by
the identity, so it returns (N, F) image features) and `head` (one Linear layer on the features,
concatenated with `n_covariates` numbers per sample: age, PSA, prostate volume, ...). It returns
logits (N, n_outputs); a binary task uses n_outputs=1 and a sigmoid outside the network.

`dynunet_encoder` is the contracting path of the DynUNet segmenters (same module names), so a lesion
classifier can start from a trained segmenter's encoder: every encoder tensor loads and is counted.

Nothing downloads weights: EfficientNet is built with pretrained=False. `width` scales the number of
feature channels so the same architecture fits a CPU (width 1.0 is the published size).

Example:
    >>> net = build_classifier("resnet18", spatial_dims=2, in_channels=1, n_covariates=2, width=0.25)
    >>> net(torch.zeros(2, 1, 64, 64), torch.zeros(2, 2)).shape
    torch.Size([2, 1])
"""

from __future__ import annotations

import difflib

import torch
from torch import nn

from .errors import ConfigError


class CovariateClassifier(nn.Module):
    """encoder(x) -> (N, F) features; head(concat(features, covariates)) -> (N, n_outputs) logits."""

    def __init__(self, encoder: nn.Module, n_features: int, n_outputs: int = 1, n_covariates: int = 0,
                 dropout: float = 0.0):
        super().__init__()
        self.encoder = encoder
        self.n_covariates = int(n_covariates)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(n_features + self.n_covariates, n_outputs)

    def forward(self, x: torch.Tensor, covariates: torch.Tensor | None = None) -> torch.Tensor:
        f = self.encoder(x).flatten(1)
        if self.n_covariates:
            if covariates is None or covariates.shape != (x.shape[0], self.n_covariates):
                got = None if covariates is None else tuple(covariates.shape)
                raise ConfigError("covariates", f"this classifier needs ({x.shape[0]}, {self.n_covariates}) covariates",
                                  got, "pass one row of covariates per image")
            f = torch.cat([f, covariates.to(f.dtype)], dim=1)
        return self.head(self.dropout(f))


def _scaled(values, width: float) -> list[int]:
    return [max(4, int(round(v * width))) for v in values]


def _densenet121(spatial_dims: int, in_channels: int, width: float):
    from monai.networks.nets import DenseNet121

    net = DenseNet121(spatial_dims=spatial_dims, in_channels=in_channels, out_channels=1,
                      init_features=_scaled([64], width)[0], growth_rate=_scaled([32], width)[0])
    n = net.class_layers.out.in_features
    net.class_layers.out = nn.Identity()  # features = global-average-pooled last dense block
    return net, n


def _resnet(layers: list[int]):
    def build(spatial_dims: int, in_channels: int, width: float):
        from monai.networks.nets import ResNet

        inplanes = _scaled([64, 128, 256, 512], width)
        net = ResNet("basic", layers, inplanes, spatial_dims=spatial_dims, n_input_channels=in_channels,
                     conv1_t_size=7, conv1_t_stride=2, feed_forward=False)  # feed_forward=False: no fc
        return net, inplanes[-1]
    return build


def _efficientnet_b0(spatial_dims: int, in_channels: int, width: float):
    from monai.networks.nets import EfficientNetBN

    if width != 1.0:  # compound scaling is part of the B0 definition; a width knob would change the model
        raise ConfigError("model.width", "efficientnet-b0 has a fixed width", width, "set model.width: 1.0")
    net = EfficientNetBN("efficientnet-b0", pretrained=False, progress=False, spatial_dims=spatial_dims,
                         in_channels=in_channels, num_classes=1)
    n = net._fc.in_features
    net._fc = nn.Identity()
    return net, n


def dynunet_strides(spatial_dims: int, strides: list[int]) -> list:
    """DynUNet strides per level from the downsampling factors: the input level has stride 1, and in 3D
    the first downsampling keeps the 3 mm slice axis. The segmenters (segment.networks) and the
    classifier built on their encoder share this rule, so their tensors match."""
    if spatial_dims == 3:
        return [1] + [(s, s, 1) if i == 0 else (s, s, s) for i, s in enumerate(strides)]
    return [1] + list(strides)


class DynUNetEncoder(nn.Module):
    """The contracting path of a MONAI DynUNet (input block, downsamplings, bottleneck) with the
    segmenter's own module names, then global average pooling -> (N, channels[-1]) features. A
    segmenter's `input_block.*`, `downsamples.*` and `bottleneck.*` tensors load into it one to one."""

    def __init__(self, spatial_dims: int, in_channels: int, channels: list[int], strides: list[int],
                 norm: str = "instance"):
        super().__init__()
        from monai.networks.nets import DynUNet

        if len(channels) < 3 or len(strides) != len(channels) - 1:
            raise ConfigError("model.encoder_args", "dynunet_encoder needs >= 3 channels and one stride per "
                              "downsampling", {"channels": channels, "strides": strides},
                              "e.g. channels [16, 32, 64, 128], strides [2, 2, 2] (the segmenter's)")
        st = dynunet_strides(spatial_dims, strides)
        net = DynUNet(spatial_dims=spatial_dims, in_channels=in_channels, out_channels=1,
                      kernel_size=[3] * len(channels), strides=st, upsample_kernel_size=st[1:],
                      filters=list(channels), norm_name=norm, res_block=True)
        self.input_block, self.downsamples, self.bottleneck = net.input_block, net.downsamples, net.bottleneck
        self.pool = nn.AdaptiveAvgPool3d(1) if spatial_dims == 3 else nn.AdaptiveAvgPool2d(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.input_block(x)
        for down in self.downsamples:
            x = down(x)
        return self.pool(self.bottleneck(x)).flatten(1)


def _dynunet_encoder(spatial_dims: int, in_channels: int, width: float, channels=(16, 32, 64, 128),
                     strides=(2, 2, 2), norm: str = "instance"):
    chans = _scaled(channels, width) if width != 1.0 else list(channels)
    return DynUNetEncoder(spatial_dims, in_channels, chans, list(strides), norm), chans[-1]


REGISTRY = {
    "densenet121": _densenet121,
    "dynunet_encoder": _dynunet_encoder,
    "resnet18": _resnet([2, 2, 2, 2]),
    "resnet34": _resnet([3, 4, 6, 3]),
    "efficientnet-b0": _efficientnet_b0,
}

# Last convolutional stage of each backbone: the default Grad-CAM target (its resolution is input/32
# for all four; pass an earlier layer for a finer map).
DEFAULT_CAM_LAYER = {
    "densenet121": "encoder.features.denseblock4",
    "dynunet_encoder": "encoder.bottleneck",
    "resnet18": "encoder.layer4",
    "resnet34": "encoder.layer4",
    "efficientnet-b0": "encoder._conv_head",
}

def check_name(name: str) -> str:
    """The registry key for `name`, or a ConfigError listing the valid names."""
    key = str(name).lower()
    if key not in REGISTRY:
        close = difflib.get_close_matches(key, list(REGISTRY), n=1)
        hint = f"did you mean '{close[0]}'? " if close else ""
        raise ConfigError("model.name", "unknown classifier", repr(name), f"{hint}use one of {sorted(REGISTRY)}")
    return key


def build_classifier(name: str, spatial_dims: int = 2, in_channels: int = 1, n_outputs: int = 1,
                     n_covariates: int = 0, width: float = 1.0, dropout: float = 0.0,
                     encoder_args: dict | None = None) -> CovariateClassifier:
    """A classifier from the registry; input (N, in_channels, *spatial) with spatial of `spatial_dims`
    axes (each at least 32 voxels, the backbones downsample by 32), output (N, n_outputs) logits.
    `encoder_args` go to the backbone builder (dynunet_encoder: channels, strides, norm)."""
    key = check_name(name)
    if spatial_dims not in (2, 3):
        raise ConfigError("model.spatial_dims", "must be 2 or 3", spatial_dims, "set model.spatial_dims: 2 or 3")
    if width <= 0:
        raise ConfigError("model.width", "must be positive", width, "e.g. 0.25 for a CPU-sized model")
    if n_covariates < 0:
        raise ConfigError("covariates", "count must be >= 0", n_covariates, "list the covariates, or none")
    try:
        encoder, n_features = REGISTRY[key](spatial_dims, in_channels, width, **(encoder_args or {}))
    except TypeError as e:
        raise ConfigError("model.encoder_args", f"not accepted by {key}", encoder_args,
                          "dynunet_encoder takes channels, strides, norm; the other backbones take none") from e
    return CovariateClassifier(encoder, n_features, n_outputs, n_covariates, dropout)


def encoder_parameters(model: CovariateClassifier) -> list[nn.Parameter]:
    """The backbone's parameters (frozen first in transfer learning; `model.encoder` is the module)."""
    return list(model.encoder.parameters())


def load_matching(model: nn.Module, state_dict: dict, prefix_map: dict[str, str] | None = None) -> tuple[int, int]:
    """Copy tensors of `state_dict` whose (renamed) name and shape match `model`'s; return (loaded, total).

    `prefix_map` renames source prefixes first (e.g. {"": "encoder."} to load a bare backbone). Used for
    transfer learning from a saved classifier of the same backbone.
    """
    own = model.state_dict()
    loaded = {}
    for k, v in state_dict.items():
        for src, dst in (prefix_map or {"": ""}).items():
            if k.startswith(src):
                name = dst + k[len(src):]
                if name in own and own[name].shape == v.shape:
                    loaded[name] = v
    own.update(loaded)
    model.load_state_dict(own)
    return len(loaded), len(own)
