"""`segment pretrain`: self-supervised pre-training of a segment config's network by masked-image
reconstruction on every study's images (no label is read), and the weight loading of
`segment train --init-from`, which starts a segmenter from it.

    segment pretrain --config configs/segment/pretrain_dynunet2d.yaml -o runs/pretrain/dynunet2d
    segment train --config configs/bundle/dynunet2d_long.yaml --init-from runs/pretrain/dynunet2d

A pretrain config names the segment config it pre-trains (`segment_config`): the network (model),
the preprocessing spec and the patch size come from there, so the segmenter trained from that same
config fits the weights. The reconstruction network is that architecture with out_channels = its
input channels: only the final layer (the head, listed in model.json) differs from the segmenter's,
so every other tensor loads. Data and patches: segment.pretrain_data.

Output, a model folder of kind "pretrain" (mricore.modelfolder), built aside and moved into place
whole: weights.pt; model.json (architecture, preprocessing spec, patch, the studies used by case id
and those left out, the mask, the head, the loss history); history.csv; config.yaml (this config,
resolved) and segment.yaml (the segment config it pre-trains, resolved).
"""

from __future__ import annotations

import dataclasses
import resource
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
from torch import nn

from mricore.config import load_config, save_config, to_dict
from mricore.datasets import Case, load_dataset
from mricore.errors import ConfigError, InputError
from mricore.modelfolder import ModelMeta, load_weights, read_model, write_model
from mricore.outputs import check_absent, check_output_dir, replaced_dir, write_csv

from .config import ModelConfig, SegmentConfig
from .data import PatchSampler
from .loop import Optimisation, epoch_loader, schedule, seed_epoch, train_one_epoch
from .networks import REGISTRY, in_channels
from .pretrain_data import MaskConfig, MaskedPatches, image_items

METHOD = "masked-image reconstruction (MONAI RandCoarseDropout + RandCoarseShuffle on the input, L1 loss)"
# Architecture settings that shape the tensors (dropout and the label scheme do not, beyond the head).
ARCH_KEYS = ("name", "spatial_dims", "context", "channels", "strides", "num_res_units", "norm")
SHOWN = 8  # skipped tensor names printed by init_weights


@dataclass(frozen=True)
class PretrainConfig:
    segment_config: str = ""        # the segment config (YAML) pre-trained: its model, preprocess and train.patch,
                                    # and its data.files, data.register, data.cache_dir and data.workers
    root: str = "../shared/data"    # every study under it with the spec's channels; labels are never read
    datasets: list[str] = field(default_factory=list)  # keep only these dataset names ([] = all)
    mask: MaskConfig = field(default_factory=MaskConfig)
    epochs: int = 50
    iters_per_epoch: int = 40
    batch_size: int = 8             # patches per step
    lr: float = 1e-3
    weight_decay: float = 1e-5
    schedule: Literal["cosine", "poly", "constant"] = "cosine"
    seed: int = 0
    num_workers: int = 0            # as train.num_workers: on 2 cores the prefetch thread is enough
    prefetch: bool = True
    amp: bool = True                # only on CUDA

    def validate(self, where):
        if not self.segment_config:
            raise ConfigError(where, "segment_config (the segment config to pre-train) is required", "nothing",
                              "e.g. segment_config: ../bundle/dynunet2d_long.yaml")
        if self.epochs < 1 or self.iters_per_epoch < 1 or self.batch_size < 1:
            raise ConfigError(where, "epochs, iters_per_epoch and batch_size must be >= 1",
                              (self.epochs, self.iters_per_epoch, self.batch_size), "e.g. --set epochs=10")
        if not 0 < self.lr < float("inf") or not self.weight_decay >= 0:
            raise ConfigError(where, "lr must be positive and weight_decay >= 0", (self.lr, self.weight_decay),
                              "e.g. lr: 0.001, weight_decay: 0.00001")
        if self.num_workers < 0:
            raise ConfigError(where, "num_workers must be >= 0", self.num_workers, "e.g. num_workers: 0")


def load_pretrain_config(path, overrides: list[str] | None = None,
                         data: str | Path | None = None) -> tuple[PretrainConfig, SegmentConfig]:
    """The pretrain config at `path` with `--set` overrides (`data`, when given, replaces root) and the
    segment config it names. Raises ConfigError (unknown key with a close match, bad value, ...)."""
    cfg = load_config(PretrainConfig, path, overrides)
    if data is not None:
        cfg = dataclasses.replace(cfg, root=str(Path(data).resolve()))
    return cfg, load_config(SegmentConfig, cfg.segment_config)


def pretrain(cfg: PretrainConfig, seg: SegmentConfig, out: str | Path, force: bool = False,
             progress: bool = True) -> Path:
    """Pre-train `seg`'s network on every study under cfg.root; write the model folder `out` (module
    docstring) and return it. Checked before any work: `out` (nothing overwritten without force)
    and the studies. Raises OutputExistsError, InputError (no study with the channels)."""
    out = Path(out)
    check_output_dir(out, fix="choose another -o")
    check_absent([out], force)
    cases, left_out = pretrain_studies(cfg, seg)
    device = torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    torch.manual_seed(cfg.seed)
    net = reconstruction_network(seg.model, len(seg.preprocess.channels)).to(device)  # before the slow part
    cache = Path(seg.data.cache_dir) if seg.data.cache_dir else Path(seg.output_dir) / "cache"  # as training's
    items = image_items(cases, seg.preprocess, seg.data.register, cache, seg.data.workers)
    sampler = MaskedPatches(PatchSampler(items, seg.train.patch, seg.model.spatial_dims, seg.model.context,
                                         foreground_p=0.0, augment=None), cfg.mask)
    history = _fit(cfg, net, sampler, device, progress)
    return _write(out, cfg, seg, net, cases, left_out, history, sampler.dropout.holes)


def pretrain_studies(cfg: PretrainConfig, seg: SegmentConfig) -> tuple[list[Case], dict[str, str]]:
    """The studies under cfg.root (of cfg.datasets) with every channel of the spec, and the others by
    case id with the reason. Raises InputError when none has them."""
    cases = load_dataset(cfg.root, seg.data.files)
    if cfg.datasets:
        cases = [c for c in cases if c.dataset in cfg.datasets]
    channels = seg.preprocess.channels
    used = [c for c in cases if all(ch in c.images for ch in channels)]
    left_out = {c.case_id: "no " + ", ".join(ch for ch in channels if ch not in c.images)
                for c in cases if any(ch not in c.images for ch in channels)}
    if not used:
        raise InputError(cfg.root, f"no study with the channels {channels}", f"{len(cases)} studies, none with them",
                         "check root (--data), datasets, and preprocess.channels of the segment config")
    return used, left_out


def reconstruction_network(cfg: ModelConfig, n_sequences: int, out_channels: int | None = None) -> nn.Module:
    """The segmenter's architecture (segment.networks) with `out_channels` outputs, by default as many
    as its input channels (2.5D: every slice of the stack): it gives back its input."""
    if cfg.name not in REGISTRY:
        raise ConfigError("model.name", "unknown network", repr(cfg.name), f"use one of {sorted(REGISTRY)}")
    n_in = in_channels(cfg, n_sequences)
    return REGISTRY[cfg.name](cfg, n_in, out_channels or n_in)


def head_tensors(cfg: ModelConfig, n_sequences: int) -> list[str]:
    """The names of the tensors whose shape follows the number of outputs: the final layer, which the
    reconstruction network and the segmenter cannot share (found by building it with two counts)."""
    n_in = in_channels(cfg, n_sequences)
    a = reconstruction_network(cfg, n_sequences).state_dict()
    b = reconstruction_network(cfg, n_sequences, n_in + 1).state_dict()
    return sorted(k for k in a if a[k].shape != b[k].shape)


def _fit(cfg: PretrainConfig, net: nn.Module, sampler: MaskedPatches, device: torch.device, progress: bool) -> list[dict]:
    """cfg.epochs epochs of (corrupted -> clean) steps: L1 loss, AdamW, cfg.schedule over every step.
    Returns the history rows (mean loss, lr, seconds, peak memory so far)."""
    from tqdm import tqdm

    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, schedule(cfg, cfg.epochs * cfg.iters_per_epoch))
    amp = cfg.amp and device.type == "cuda"
    optim = Optimisation(nn.L1Loss(), opt, sched, torch.amp.GradScaler("cuda", enabled=amp), amp)
    history = []
    for epoch in tqdm(range(cfg.epochs), desc="pretrain", disable=not progress):
        seed_epoch(cfg.seed, epoch)
        # scheme "multiclass": segment.networks.targets_for hands the clean patch to the loss unchanged
        stats = train_one_epoch(net, epoch_loader(sampler, cfg, epoch, 0), optim, device, "multiclass", [])
        history.append({"epoch": epoch, "loss": stats["loss"], "lr": sched.get_last_lr()[0],
                        "seconds": round(stats["seconds"], 2),
                        "seconds_per_iteration": round(stats["seconds"] / cfg.iters_per_epoch, 4),
                        "data_wait_share": round(stats["wait"] / max(stats["seconds"], 1e-9), 3),
                        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)})
    return history


def _write(out: Path, cfg: PretrainConfig, seg: SegmentConfig, net: nn.Module, cases: list[Case],
           left_out: dict, history: list[dict], holes: int) -> Path:
    """The model folder (module docstring), built in a hidden sibling and swapped in whole."""
    n = len(seg.preprocess.channels)
    training = {"method": METHOD, "mask": {**to_dict(cfg.mask), "holes": holes},
                "in_channels": in_channels(seg.model, n), "head": head_tensors(seg.model, n),
                "studies": [c.case_id for c in cases], "left_out": left_out, "labels_read": False}
    meta = ModelMeta("pretrain", to_dict(seg.model), seg.preprocess, name=seg.name, patch=list(seg.train.patch),
                     outputs="reconstruction of the input channels", best_epoch=len(history) - 1,
                     history_epochs=len(history), history=history, training=training)
    with replaced_dir(out) as tmp:
        write_model(tmp, meta, {k: v.detach().cpu() for k, v in net.state_dict().items()})
        write_csv(history, tmp / "history.csv")
        save_config(cfg, tmp / "config.yaml")
        save_config(seg, tmp / "segment.yaml")
    return out


def init_weights(net: nn.Module, model_cfg: ModelConfig, channels: list[str], folder: str | Path) -> dict:
    """`segment train --init-from`: load into `net` (model_cfg on `channels`) every tensor of the model
    folder that matches by name and shape, except a pretrain folder's head (model.json training.head).
    Prints how many loaded and which source tensors were skipped; returns {"loaded", "skipped"} (names).

    Raises InputError when no tensor matches, or when a pretrain folder's architecture differs from
    model_cfg (a tensor other than the head without its match, either way)."""
    meta = read_model(folder)
    src, own = load_weights(folder), net.state_dict()
    head = set((meta.training or {}).get("head", [])) if meta.kind == "pretrain" else set()
    matched = {k: v for k, v in src.items() if k not in head and k in own and own[k].shape == v.shape}
    if meta.kind == "pretrain":
        _same_architecture(meta, model_cfg, channels, folder, sorted((set(src) | set(own)) - head - set(matched)))
    if not matched:
        raise InputError(folder, "no tensor of the source model matches this architecture (name and shape)",
                         f"source {meta.model.get('name')}, target {model_cfg.name}",
                         "initialise from a model of the same architecture and channels")
    own.update(matched)
    net.load_state_dict(own)
    skipped = sorted(set(src) - set(matched))
    shown = ", ".join(skipped[:SHOWN]) + (f" (+{len(skipped) - SHOWN} more)" if len(skipped) > SHOWN else "")
    print(f"init-from {folder}: {len(matched)}/{len(own)} tensors loaded (arch {meta.model.get('name')})"
          + (f"; skipped {len(skipped)}: {shown}" if skipped else ""))
    return {"loaded": sorted(matched), "skipped": skipped}


def _same_architecture(meta: ModelMeta, model_cfg: ModelConfig, channels: list[str], folder, unmatched: list[str]) -> None:
    """Refuse a pretrain folder whose network is not model_cfg's on `channels` (head aside)."""
    if not unmatched:
        return
    target = {**to_dict(model_cfg), "input channels": list(channels)}
    source = {**meta.model, "input channels": meta.channels}
    diffs = [f"{k} {source.get(k)} vs {target[k]}" for k in (*ARCH_KEYS, "input channels") if source.get(k) != target[k]]
    raise InputError(folder, "the pre-trained network differs from this config's (all but the final layer must match)",
                     f"{len(unmatched)} tensors without a match, e.g. {unmatched[0]}" + (f"; {', '.join(diffs)}" if diffs else ""),
                     "pre-train with this segment config (segment_config in the pretrain config)")
