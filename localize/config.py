"""Typed config of `localize train` (YAML under configs/localize/ maps onto these dataclasses)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from mricore.config import ConfigError
from mricore.preprocess import PreprocessSpec
from mricore.protocol import validate_protocol

KIND = "lesion_classifier"  # model.json kind of every localize model folder (CNN or zone_stats_lr)

# Covariates: name -> (centre, scale); the head sees (value - centre) * scale, near 1 in size.
# Computed by the pipeline from the zone map:
COMPUTED = {
    "prostate_volume_ml": (0.0, 0.01),   # gland (TZ + PZ) volume of the zone map, in 100 mL
    "zone_pz": (0.0, 1.0),               # 1 when the candidate patch is mostly PZ, 0 for TZ
}
# From the clinical table (`data.clinical`, `localize predict --clinical`; columns case_id, age, psa,
# psad, prostate_volume_ml as in ../shared/data/prostatex/clinical.csv). Each comes with a
# `<name>_missing` indicator column: a missing value enters as 0 (the centre) with the indicator 1, so
# "not known" is a value the head learns, never a silent guess.
CLINICAL = {
    "age": (65.0, 0.1, "age"),
    "psa": (10.0, 0.1, "psa"),                             # ng/mL
    "psa_density": (0.15, 10.0, "psad"),                   # ng/mL/mL, as reported
    "reported_volume_ml": (50.0, 0.01, "prostate_volume_ml"),
    "psa_density_predicted": (0.15, 10.0, None),           # PSA / the zone map's gland volume (platform's own)
}
COVARIATES = sorted([*COMPUTED, *CLINICAL])


@dataclass(frozen=True)
class DataConfig:
    root: str = "../shared/data"
    datasets: list[str] = field(default_factory=lambda: ["prostatex", "prostate158"])
    label: str = "lesion"                 # expert lesion mask
    zones: list[str] = field(default_factory=lambda: ["zones", "zones_ai"])  # first one present is used
    clinical: str | None = None           # CSV with case_id and clinical columns (see localize.config.CLINICAL)
    max_train_patients: int | None = None # learning curves: a seeded subset of each fold's training patients
    folds: int = 3                        # patient-level, stratified by lesion presence
    split_seed: int = 0
    splits_file: str | None = None        # reuse saved splits (JSON) instead of making them
    inner_val: int = 1                    # train.selection inner: patients drawn from the fold's TRAINING
                                          # patients (a lesion patient first) to choose the epoch

    def validate(self, where):
        validate_protocol(self, where)
        if not self.zones:
            raise ConfigError(where, "data.zones needs at least one label key", self.zones, "e.g. [zones, zones_ai]")


@dataclass(frozen=True)
class CandidateConfig:
    spatial_dims: Literal[2, 3] = 2
    patch: list[int] = field(default_factory=lambda: [64, 64])     # voxels of the working grid (i, j[, k])
    stride: list[int] = field(default_factory=lambda: [32, 32])
    train_stride: list[int] | None = None # denser tiling for training (more views of each lesion); None = stride
    positive_min_voxels: int = 5          # lesion voxels in the patch centre that make a patch positive
    threshold: float = 0.5                # lesion probability a candidate's peak must reach
    relative: float = 0.5                 # a candidate: voxels connected to its peak with >= relative x peak
    max_candidates: int = 20
    min_volume_ml: float = 0.01           # smaller connected regions are dropped

    def validate(self, where):
        n = self.spatial_dims
        if len(self.patch) != n or len(self.stride) != n:
            raise ConfigError(where, f"candidates.patch and stride need {n} sizes for spatial_dims {n}",
                              (self.patch, self.stride), "e.g. [64, 64] (2D) or [64, 64, 8] (3D)")
        if min(self.patch) < 1 or min(self.stride) < 1 or any(s > p for s, p in zip(self.stride, self.patch)):
            raise ConfigError(where, "candidates.stride must be in 1..patch", (self.patch, self.stride),
                              "use a stride no larger than the patch so tiles cover the gland")
        ts = self.train_stride
        if ts is not None and (len(ts) != n or min(ts) < 1 or any(s > p for s, p in zip(ts, self.patch))):
            raise ConfigError(where, f"candidates.train_stride needs {n} sizes in 1..patch", ts, "e.g. [16, 16]")
        if not 0 <= self.relative < 1 or self.max_candidates < 1:
            raise ConfigError(where, "candidates.relative must lie in [0, 1) and max_candidates be >= 1",
                              (self.relative, self.max_candidates), "e.g. relative 0.5, max_candidates 20")
        if not 0 < self.threshold < 1:
            raise ConfigError(where, "candidates.threshold is a probability in (0, 1)", self.threshold, "e.g. candidates.threshold: 0.5")


@dataclass(frozen=True)
class ModelConfig:
    name: str = "resnet18"                # mricore.classifiers registry name, or zone_stats_lr (localize.baseline)
    width: float = 0.25                   # feature-channel scale (CPU-sized)
    dropout: float = 0.2
    covariates: list[str] = field(default_factory=list)   # names from COVARIATES (clinical ones add an indicator)
    encoder_args: dict = field(default_factory=dict)       # dynunet_encoder: channels, strides, norm (the segmenter's)
    c: float = 0.3                        # zone_stats_lr: inverse L2 strength (scikit-learn's C)
    cam_layer: str | None = None          # Grad-CAM target; None = the backbone's default

    def validate(self, where):
        bad = [c for c in self.covariates if c not in COVARIATES]
        if bad:
            raise ConfigError(where, "unknown covariate", bad, f"use names from {sorted(COVARIATES)}")


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 20
    iters_per_epoch: int = 30
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 1e-4
    weighted_bce: bool = True             # pos_weight = negatives / positives of the training patches
    balanced_sampling: bool = False       # draw half positive, half negative patches per batch
    # The fold's held-out patients never choose anything; they are scored once at the end.
    #   inner: best epoch / early stopping by patch AUC on `data.inner_val` training patients;
    #   fixed: the last epoch, no selection.
    selection: Literal["inner", "fixed"] = "inner"
    patience: int = 6                     # selection inner: early stop after this many epochs without gain
    init_from: str | None = None          # model folder: a lesion classifier (same backbone) or, for
                                          # model.name dynunet_encoder, a DynUNet segmenter (its encoder)
    freeze_encoder_epochs: int = 0        # two-stage fine-tuning: encoder frozen for the first N epochs
    seed: int = 0

    def validate(self, where):
        if min(self.epochs, self.iters_per_epoch, self.batch_size) < 1:
            raise ConfigError(where, "train.epochs, iters_per_epoch, batch_size must be >= 1",
                              (self.epochs, self.iters_per_epoch, self.batch_size), "e.g. --set train.epochs=10")
        if not (self.lr > 0 and self.lr < float("inf")):
            raise ConfigError(where, "train.lr must be a positive number", self.lr, "e.g. 0.001")


@dataclass(frozen=True)
class LocalizeConfig:
    name: str = "lesion"
    output_dir: str = "runs"              # model folders go to output_dir/name/fold_K
    data: DataConfig = field(default_factory=DataConfig)
    preprocess: PreprocessSpec = field(default_factory=lambda: PreprocessSpec(crop_mm=None))
    candidates: CandidateConfig = field(default_factory=CandidateConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
