"""Typed config of an ensemble (YAML under configs/ensemble/ or beside bundled members).

Member paths are model folders written by `segment train`; relative paths are resolved against the
folder of the config file (so a config travels with its members), absolute paths are kept.
With no config, `ensemble predict` uses the bundled ensemble at ensemble/models/default/ensemble.yaml,
or its ONNX export (ensemble/models/default/onnx/) when ONNX Runtime is installed.

Example (configs/ensemble/default.yaml):
    members: [../../runs/zonal_t2w_2d/fold_0, ../../runs/zonal_t2w_2d/fold_1]
    method: mean
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from pathlib import Path

from mricore.config import from_dict, load_config
from mricore.errors import ConfigError
from mricore.results import CONFIG_YAML
from mricore.review_limits import FITTED, ReviewConfig

METHODS = ("mean", "weighted", "vote", "staple")
BUNDLED = Path(__file__).resolve().parent / "models" / "default" / CONFIG_YAML
# The same members exported to ONNX (`ensemble export`): the default when ONNX Runtime is installed
# (about 2x faster per study, no PyTorch import; tests/ensemble/test_export.py checks the parity).
BUNDLED_ONNX = BUNDLED.parent / "onnx" / CONFIG_YAML


def bundled_config() -> Path:
    """The bundled ensemble: its ONNX export when onnxruntime can be imported, else the PyTorch members."""
    import importlib.util

    onnx = BUNDLED.parent / "onnx" / CONFIG_YAML  # BUNDLED_ONNX, beside whatever BUNDLED is now
    if onnx.exists() and importlib.util.find_spec("onnxruntime") is not None:
        return onnx
    return BUNDLED
HOW_TO_TRAIN = ("train members with `segment train --config configs/segment/zonal_t2w_2d.yaml --fold all`, "
                "copy the model folders into ensemble/models/default/ and list them in "
                "ensemble/models/default/ensemble.yaml (members: [...]), or pass --config")


@dataclass(frozen=True)
class EnsembleConfig:
    """What to combine and how.

    members: model folders (relative to this file's folder).
    method: mean (of probabilities, default) | weighted | vote (majority of label maps) | staple.
    weights: one weight per member (weighted); null = per zone from each member's inner-validation DSC
        (model.json selection WG_mean/TZ_mean/PZ_mean for background/TZ/PZ; training patients only).
    largest_component: keep the largest 3D gland component of the combined zones.
    review: limits of the input and output quality checks behind the ok / review / reject verdict
        (mricore.review_limits.ReviewConfig). The fitted ones are stored once, in the bundle's
        ensemble.yaml (`make review-limits`); a config that leaves one out (or null) takes the bundle's,
        and with no bundle, or a bundle not yet fitted, that check reports n/a (not calibrated).
    probabilities: also write probabilities.nii.gz (float32: NIfTI-1 has no half-float type).
    tta: left-right flip test-time augmentation in every member (doubles network time).
    whole_slice: null: each member's own `predict.whole_slice` (automatic: whole slices unless it uses
        instance norm); true: every 2D/2.5D member predicts each slice in one pass instead of
        overlapping training-patch windows (an instance-norm member then normalises over the slice:
        about the patch's field of view when the crop is close to the patch, as in the bundle).
    tta_scales: multi-scale test-time augmentation: each member also predicts the image with its
        in-plane voxel size times each factor (the gland looks that much smaller or larger), averaged
        on the input's voxels; must hold 1.0 (the member label maps); each factor costs one more pass.
    register: rigid registration of ADC/DWI onto T2W before preprocessing (else resampling by affine).
    n4: N4 bias-field correction of the T2W channel (mricore.bias) before the locator and the members;
        the quality checks still judge the input as given.
    locator: stage one (a model folder, relative to this file): a coarse segmenter run on the whole
        field of view; the members' crop is centred on the gland it finds (their preprocess
        crop_centre "gland") and everything farther than `locator_margin_mm` from its gland's bounding
        box is background (null: no bound, the locator only centres). Null locator: one stage, crops
        around the volume centre.
    """

    members: list[str] = field(default_factory=list)
    method: str = "mean"  # str, not Literal: a miss gets the one-line error listing METHODS
    weights: list[float] | None = None
    largest_component: bool = True
    review: ReviewConfig = field(default_factory=ReviewConfig)
    probabilities: bool = False
    tta: bool = False
    whole_slice: bool | None = None
    tta_scales: list[float] = field(default_factory=lambda: [1.0])
    register: bool = False
    n4: bool = False
    locator: str | None = None
    locator_margin_mm: float | None = 15.0

    def validate(self, where: str = "config"):
        if not self.members:
            raise ConfigError(f"{where}: members", "an ensemble needs at least one member", "[]",
                              "list model folders written by `segment train` under members:")
        if self.method not in METHODS:
            raise ConfigError(f"{where}: method", "unknown combination method", repr(self.method),
                              f"use one of {list(METHODS)}")
        if 1.0 not in self.tta_scales or not all(isinstance(s, (int, float)) and 0.25 <= s <= 4
                                                  for s in self.tta_scales):
            raise ConfigError(f"{where}: tta_scales", "needs 1.0 and factors in [0.25, 4]", self.tta_scales,
                              "e.g. tta_scales: [0.8, 1.0, 1.25], or [1.0] for none")
        if self.locator_margin_mm is not None and not self.locator_margin_mm >= 0:
            raise ConfigError(f"{where}: locator_margin_mm", "must be >= 0 (mm) or null", self.locator_margin_mm, "e.g. 15")
        if self.weights is not None:
            if len(self.weights) != len(self.members):
                raise ConfigError(f"{where}: weights", "needs one weight per member",
                                  f"{len(self.weights)} weights for {len(self.members)} members",
                                  "give one weight per member, or null for inner-validation-DSC weights")
            if not all(isinstance(w, (int, float)) and math.isfinite(w) for w in self.weights):
                raise ConfigError(f"{where}: weights", "weights must be finite numbers", self.weights,
                                  "e.g. weights: [1, 1, 2]")
            if any(w < 0 for w in self.weights) or sum(self.weights) <= 0:
                raise ConfigError(f"{where}: weights", "weights must be >= 0 with a positive sum",
                                  self.weights, "give every member a weight >= 0, at least one above 0")


def load_ensemble_config(path: str | Path | None = None, overrides: list[str] | None = None) -> EnsembleConfig:
    """Load and check a config; member paths come back absolute (relative ones are relative to the
    config file, mricore.config.PATH_KEYS). path=None -> the bundled ensemble.

    Raises ConfigError (bad file/keys/values, bundled ensemble missing) naming the file and the fix.
    """
    if path is None:
        if not BUNDLED.exists():
            raise ConfigError("bundled ensemble", "not installed (no ensemble/models/default/ensemble.yaml)",
                              "no ensemble.yaml", HOW_TO_TRAIN)
        path = bundled_config()
    cfg = load_config(EnsembleConfig, path, overrides)  # member paths relative to the file: mricore.config
    return with_bundle_limits(cfg)


def with_bundle_limits(cfg: EnsembleConfig) -> EnsembleConfig:
    """`cfg` with each fitted review limit it leaves out (None) taken from the bundle's ensemble.yaml,
    the one place they are stored (mricore.review_limits); unchanged where the bundle has none."""
    missing = [name for name in FITTED if getattr(cfg.review, name) is None]
    if not missing or not BUNDLED.exists():
        return cfg
    import yaml

    bundle = from_dict(ReviewConfig, (yaml.safe_load(BUNDLED.read_text()) or {}).get("review"), str(BUNDLED),
                       prefix="review.")
    fill = {name: getattr(bundle, name) for name in missing if getattr(bundle, name) is not None}
    return replace(cfg, review=replace(cfg.review, **fill)) if fill else cfg
