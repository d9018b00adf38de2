"""Typed config of `segment train` (YAML under configs/segment/ maps onto these dataclasses)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from mricore.config import ConfigError
from mricore.preprocess import PreprocessSpec
from mricore.protocol import validate_protocol

@dataclass(frozen=True)
class DataConfig:
    root: str = "../shared/data"          # dataset folder, MSD folder or datalist (in a file: relative to it)
    datasets: list[str] = field(default_factory=list)  # keep only these dataset names ([] = all)
    label: str = "zones"                  # expert label key
    silver_label: str | None = None       # used where `label` is missing (e.g. zones_ai); never for validation
    teacher: str | None = None            # datalist of extra studies with a teacher's whole gland (column
                                          # wg_teacher, zones unknown) or its zones where confident (column
                                          # zones_teacher, segment pseudo-label): training only, partial-label
                                          # loss; a {fold} in the path is replaced by the fold (per-fold labels)
    files: dict[str, str] = field(default_factory=dict)  # extra channel -> file stem (new sequences)
    folds: int = 3                        # patient-level k-fold
    split_seed: int = 0
    splits_file: str | None = None        # reuse saved splits (JSON) instead of making them
    exclude_patients: list[str] = field(default_factory=list)  # patient ids this run never reads, in any
                                          # dataset (calibration folds: studies left unseen for out-of-sample maps)
    inner_val: int = 1                    # train.selection inner: expert patients drawn from the fold's
                                          # TRAINING patients to choose the epoch (never the held-out ones)
    register: bool = False                # rigid registration of other channels onto T2W
    cache_dir: str | None = None          # preprocessed cases (segment.caseprep), keyed by case, source files and
                                          # spec; null = <output_dir>/cache, shared by every run and fold
    workers: int = 0                      # processes preprocessing cases missing from the cache: 0 = one per core

    def validate(self, where):
        validate_protocol(self, where)
        if self.workers < 0:
            raise ConfigError(where, "data.workers must be >= 0 (0: one per core)", self.workers, "e.g. data.workers: 2")


@dataclass(frozen=True)
class ModelConfig:
    name: str = "unet"                    # registry name: unet, dynunet, segresnet
    spatial_dims: Literal[2, 3] = 2
    context: int = 0                      # 2.5D: neighbouring slices each side as extra channels (2D only)
    channels: list[int] = field(default_factory=lambda: [16, 32, 64, 128])
    strides: list[int] = field(default_factory=lambda: [2, 2, 2])
    num_res_units: int = 1
    dropout: float = 0.1
    norm: str = "batch"
    label_scheme: Literal["multiclass", "regions"] = "multiclass"

    def validate(self, where):
        if self.context and self.spatial_dims == 3:
            raise ConfigError(where, "model.context (2.5D) needs spatial_dims 2", self.context, "set context: 0")
        if len(self.strides) != len(self.channels) - 1:
            raise ConfigError(where, "model.strides needs one entry fewer than model.channels",
                              f"{len(self.strides)} strides, {len(self.channels)} channels",
                              "e.g. channels: [16, 32, 64] with strides: [2, 2]")
        if not 0 <= self.dropout < 1:
            raise ConfigError(where, "model.dropout must be in [0, 1)", self.dropout, "e.g. model.dropout: 0.1")


@dataclass(frozen=True)
class AugmentConfig:
    mode: Literal["online", "offline", "none"] = "online"
    offline_copies: int = 4               # copies per case written by `segment augment`
    elastic_p: float = 0.3
    elastic_sigma: float = 3.0            # displacement std of the control grid, in voxels
    elastic_points: int = 3               # control points per axis
    flip_p: float = 0.5                   # left-right flip (axis i in LPS storage)
    rotate_p: float = 0.3
    rotate_deg: float = 10.0              # in-plane
    scale_p: float = 0.3
    scale_range: float = 0.1
    gamma_p: float = 0.2
    contrast_p: float = 0.2
    brightness_p: float = 0.2
    noise_p: float = 0.1
    noise_std: float = 0.05
    bias_p: float = 0.1
    bias_strength: float = 0.2            # coefficients of the smooth log-bias field drawn in [-s, s]
                                          # (surface and endorectal coils: 0.5 and more)
    blur_p: float = 0.0                   # in-plane Gaussian blur (thicker, lower-resolution acquisitions)
    blur_sigma: float = 1.0               # largest sigma in voxels, drawn in [0.25, blur_sigma]
    zone_p: float = 0.0                   # per-zone intensity: each label value's region shifted on its own
                                          # (zone contrast differs by scanner: PZ - TZ is 0.1-0.9 std here)
    zone_shift: float = 0.5               # the shift per label value, drawn in [-s, s], in image std units
    # Scanner and coil (segment.acquisition), all off. Each range [low, high] is drawn uniformly; the defaults
    # come from bench/results/coil_probe.json (python -m bench.coil_probe; Case00 = PROMISE12's endorectal-coil
    # study, "3 T" = Prostate158 001, 021 and ProstateX-0000, "1.5 T" = Philips-02..04), as noted at each.
    coil_p: float = 0.0                   # endorectal coil: gain 1 + A * 2^(-r / L), r mm from a peak behind the gland
    coil_gain: list[float] = field(default_factory=lambda: [1.0, 4.0])  # A. Case00 over the 3 T median: gland
                                          # posterior/anterior third 2.14 vs 1.04 (x2.1: A 1.1); gland-adjacent
                                          # posterior/anterior 2.82 vs 0.53 (x5.3: A 4.3)
    coil_falloff_mm: list[float] = field(default_factory=lambda: [6.0, 16.0])  # L, where the excess halves. Case00:
                                          # 14 mm in its N4 field (a smooth fit: the slow end), about 6 mm in
                                          # the image, from the gland's bright posterior edge forward
    coil_offset_mm: list[float] = field(default_factory=lambda: [0.0, 10.0])  # peak behind the mask's posterior
                                          # edge: in Case00 the dark coil balloon lies 4-8 mm behind it
    coil_jitter_mm: float = 10.0          # the peak's left-right and through-plane jitter, drawn in [-j, j]
    lowsnr_p: float = 0.0                 # Rician noise at an SNR (segment.acquisition.tissue_level / sigma)
    lowsnr_snr: list[float] = field(default_factory=lambda: [4.0, 12.0])  # Case00 4.1 (air, the one Rayleigh
                                          # background); 3 T training studies 9.6-16.7 (in-tissue estimate)
    field_p: float = 0.0                  # 1.5 T-like: lower tissue contrast, softer in-plane image
    field_contrast: list[float] = field(default_factory=lambda: [0.6, 1.0])  # contrast factor: gland IQR/median,
                                          # 1.5 T median 0.54 over 3 T median 0.84 = 0.64 (3 studies each: rough)
    field_blur: list[float] = field(default_factory=lambda: [0.0, 0.45])  # in-plane sigma, working voxels: a
                                          # 1.094 mm voxel (Case00) on the 0.6 mm grid adds 0.44; 0.47-0.5 mm, 0

    def validate(self, where):
        for k, v in vars(self).items():
            if k.endswith("_p") and not 0 <= v <= 1:
                raise ConfigError(where, f"augment.{k} is a probability in [0, 1]", v, f"set augment.{k} between 0 and 1")
        if self.zone_shift < 0:
            raise ConfigError(where, "augment.zone_shift is a magnitude (>= 0)", self.zone_shift, "e.g. 0.5")
        if not self.coil_jitter_mm >= 0:
            raise ConfigError(where, "augment.coil_jitter_mm is a distance (>= 0)", self.coil_jitter_mm, "e.g. 10")
        for key, low, high in _AUGMENT_RANGES:
            r = getattr(self, key)
            if not (isinstance(r, (list, tuple)) and len(r) == 2 and low <= r[0] <= r[1] <= high):
                raise ConfigError(where, f"augment.{key} is a range [low, high] with {low} <= low <= high <= {high}",
                                  r, f"e.g. the default, augment.{key}: {getattr(AugmentConfig(), key)}")


# The scanner ranges' bounds (segment.acquisition): key, lowest low, highest high.
_AUGMENT_RANGES = (("coil_gain", 0.0, float("inf")), ("coil_falloff_mm", 1e-3, float("inf")),
                   ("coil_offset_mm", 0.0, float("inf")), ("lowsnr_snr", 1e-3, float("inf")),
                   ("field_contrast", 1e-3, 1.0), ("field_blur", 0.0, float("inf")))


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 30
    iters_per_epoch: int = 50
    batch_size: int = 8
    patch: list[int] = field(default_factory=lambda: [160, 160])  # 2D (i, j) or 3D (i, j, k) voxels
    lr: float = 2e-3
    weight_decay: float = 1e-4
    schedule: Literal["cosine", "poly", "constant"] = "cosine"
    loss: Literal["dice_ce", "dice", "ce"] = "dice_ce"
    class_weights: list[float] | None = None  # CE weights per output class (imbalance)
    foreground_p: float = 0.67            # share of patches centred on foreground (oversampling)
    # How the weights are chosen. The fold's held-out patients never decide anything; they are scored
    # once, at the end, on the chosen weights.
    #   inner: best epoch and early stopping by mean DSC on `data.inner_val` patients drawn from the
    #          fold's training patients (they do not train);
    #   fixed: the last epoch of the full schedule, no selection (nnU-Net's rule; no patient is spent).
    selection: Literal["inner", "fixed"] = "inner"
    patience: int = 10                    # selection inner: early stop after this many epochs without gain
    freeze_encoder_epochs: int = 0        # transfer learning: encoder frozen for the first N epochs
    num_workers: int = 0                  # 2 cores: extra workers compete with compute (bench/)
    prefetch: bool = True                 # with num_workers 0: a thread prepares the next batch during the step
    seed: int = 0
    amp: bool = True                      # only on CUDA
    tensorboard: bool = True              # when the tensorboard package is installed

    def validate(self, where):
        if self.epochs < 1 or self.iters_per_epoch < 1 or self.batch_size < 1:
            raise ConfigError(where, "train.epochs, iters_per_epoch, batch_size must be >= 1",
                              (self.epochs, self.iters_per_epoch, self.batch_size), "e.g. --set train.epochs=10")
        if not 0 <= self.foreground_p <= 1:
            raise ConfigError(where, "train.foreground_p is a probability", self.foreground_p, "e.g. train.foreground_p: 0.5")
        if not (self.lr > 0 and self.lr < float("inf")):
            raise ConfigError(where, "train.lr must be a positive number", self.lr, "e.g. 0.002")
        if not self.weight_decay >= 0:
            raise ConfigError(where, "train.weight_decay must be >= 0", self.weight_decay, "e.g. 0.0001")


@dataclass(frozen=True)
class PredictConfig:
    whole_slice: bool | None = None       # 2D/2.5D: each slice in one pass, padded to the network's divisor (no
                                          # overlapping tiles; up to max_slice_px per side). None = auto: on unless
                                          # model.norm is instance (its statistics follow the field of view: a
                                          # DynUNet on 200-px slices, 160-px patches, lost WG DSC 0.786 -> 0.751;
                                          # on the bundle's 167-px crops it does not, so the bundle sets it)
    max_slice_px: int = 512
    overlap: float = 0.25
    sw_batch_size: int = 8                # windows per forward; short batches are padded to it (never batch 1:
                                          # CPU Conv3d at batch 1 takes the slow_conv3d path, bench/segment_bench.py)
    tta_flip: bool = False
    largest_component: bool = True
    mode: Literal["gaussian", "constant"] = "gaussian"


@dataclass(frozen=True)
class SegmentConfig:
    name: str = "zonal"
    output_dir: str = "runs"              # model folders go to output_dir/name/fold_K
    data: DataConfig = field(default_factory=DataConfig)
    preprocess: PreprocessSpec = field(default_factory=PreprocessSpec)
    model: ModelConfig = field(default_factory=ModelConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    predict: PredictConfig = field(default_factory=PredictConfig)

    def validate(self, where):
        need = self.model.spatial_dims
        if len(self.train.patch) != need:
            raise ConfigError(where, f"train.patch needs {need} sizes for spatial_dims {need}",
                              self.train.patch, f"e.g. {[160, 160] if need == 2 else [128, 128, 16]}")
        div = 1
        for st in self.model.strides:
            div *= st
        # 3D DynUNet never downsamples the slice axis at the first level (segment.networks), UNet/SegResNet do.
        for axis, p in enumerate(self.train.patch):
            need = div // (self.model.strides[0] if axis == 2 and self.model.name == "dynunet" else 1)
            if p < need or p % need:
                raise ConfigError(where, f"train.patch must be multiples of the network's total stride ({need})",
                                  self.train.patch, f"e.g. {[max(need, (q // need) * need) for q in self.train.patch]}")
        if self.data.teacher and self.model.label_scheme != "multiclass":
            raise ConfigError(where, "data.teacher (whole glands, zones unknown) needs model.label_scheme multiclass",
                              self.model.label_scheme, "set model.label_scheme: multiclass or drop data.teacher")
        if self.train.class_weights is not None and len(self.train.class_weights) != n_outputs(self.model.label_scheme):
            raise ConfigError(where, "train.class_weights needs one weight per output",
                              self.train.class_weights, f"{n_outputs(self.model.label_scheme)} values")


def n_outputs(scheme: str) -> int:
    """multiclass: background, TZ, PZ (softmax); regions: WG, TZ (sigmoid, PZ = WG - TZ)."""
    return 3 if scheme == "multiclass" else 2


def segmenter_configs(meta, folder) -> tuple[ModelConfig, PredictConfig]:
    """The architecture and predict settings of a segmenter model folder's description (ModelMeta)."""
    from mricore.config import from_dict

    where = f"{folder}/model.json"
    return from_dict(ModelConfig, meta.model, where, "model."), from_dict(PredictConfig, meta.predict, where, "predict.")
