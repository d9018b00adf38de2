"""`segment train`: patient-level cross-validation folds, online augmentation, Dice+CE, AdamW with a
cosine/poly schedule, weights chosen on training patients only (an inner split with early stopping,
or a fixed schedule), the held-out fold scored once at the end, atomic last/best checkpoints with
optimiser, scheduler, RNG state and config (so `--resume` continues exactly, and only with the same
config), transfer learning with a frozen encoder, and DistributedDataParallel under torchrun (gloo on
CPU; every rank follows rank 0's stop decision).

Output: a self-describing model folder `output_dir/name/fold_K` (see mricore.modelfolder).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from mricore.config import to_dict
from mricore.datasets import load_dataset
from mricore.errors import ConfigError, InputError
from mricore.outputs import write_csv
from mricore.modelfolder import run_folder, start_run
from mricore.protocol import Fold, Selection

from .config import SegmentConfig
from .acquisition import PatchGrid
from .data import GLAND_UNKNOWN, PatchSampler, config_items
from .folds import config_cases, resolve_split, teacher_datalist
from .torch_segmenter import Segmenter
from .loop import (Optimisation, barrier, dist_rank, epoch_loader, from_rank0, rank0_first, rng_state, save_checkpoint,
                   schedule, seed_epoch, set_rng_state, train_one_epoch, validate, wrap)
from .losses import PartialDiceCE
from .networks import build_network, encoder_modules
from .pretrain import init_weights


@dataclass
class Run:
    """One training run's fixed parts: its config and fold, where it writes, which process it is
    (rank of world under torchrun), its cases and its network (wrapped by a Segmenter for validation)."""
    cfg: SegmentConfig
    fold: int | str
    run_dir: Path
    last: Path                # checkpoint_last.pt
    rank: int
    world: int
    device: torch.device
    split: Fold
    seg: Segmenter


@dataclass
class RunState:
    """Where a run stands (all kept in checkpoint_last.pt, so --resume continues exactly)."""
    start: int                # the next epoch
    selection: Selection
    history: list


def train(cfg: SegmentConfig, fold: int | str = 0, resume: bool = False, init_from: str | None = None,
          force: bool = False, progress: bool = True, on_iteration=None) -> Path:
    """Train one fold; return the model folder. `on_iteration(epoch, it)` is called after each step.

    Weights are chosen by `train.selection` (inner split or fixed schedule); the fold's held-out
    patients are scored once at the end, on the chosen weights, and never decide anything.
    Steps: data, model, optimisation (and --resume), the loop with selection (`_fit`), save (`_finish`).
    """
    from mricore.outputs import check_output_dir

    rank, world = dist_rank()
    check_output_dir(Path(cfg.output_dir) / cfg.name / f"fold_{fold}",  # before the first epoch, not after it
                     fix="choose another output_dir (--set output_dir=DIR)")
    run_dir, last = run_folder(cfg.output_dir, cfg.name, fold, resume, force, clear=rank == 0)
    barrier(world)
    torch.manual_seed(cfg.train.seed)
    np.random.seed(cfg.train.seed)
    split, train_items, inner_items = load_data(cfg, fold, rank, world)
    device = torch.device("cuda", rank % max(1, torch.cuda.device_count())) if torch.cuda.is_available() else torch.device("cpu")
    net = build_model(cfg, device, init_from)
    optim = optimisation(cfg, net, train_items, device)
    state = RunState(0, Selection(cfg.train.patience, best=-1.0), [])  # below any DSC; as checkpoints hold it
    if resume:
        state = _resume(cfg, last, net, optim)
    run = Run(cfg, fold, run_dir, last, rank, world, device, split,
              Segmenter(net, cfg.model, cfg.preprocess, cfg.train.patch, cfg.predict))
    sampler = PatchSampler(train_items, cfg.train.patch, cfg.model.spatial_dims, cfg.model.context,
                           cfg.train.foreground_p, cfg.augment if cfg.augment.mode == "online" else None,
                           PatchGrid.of_spec(cfg.preprocess))
    _fit(run, optim, sampler, inner_items, state, progress, on_iteration)
    if rank == 0:
        _finish(run, state)
    barrier(world)
    return run_dir


def load_data(cfg: SegmentConfig, fold, rank: int, world: int = 1) -> tuple[Fold, list, list]:
    """The fold's cases (segment.folds) and the training and inner-validation items, from the cache
    (segment.data.config_items). Rank 0 builds what the cache lacks while the other ranks wait (a node
    that does not share the folder builds its own). Only rank 0 validates: the other ranks never read
    the inner cases. Raises InputError on an empty training set."""
    cases = config_cases(cfg)
    if cfg.data.teacher:  # extra studies with a teacher's gland or zones: training only (resolve_split)
        cases += load_dataset(teacher_datalist(cfg, fold))
    split = resolve_split(cfg, cases, fold)
    train_items, inner_items = rank0_first(rank, world, lambda: (config_items(cfg, split.train, cfg.data.silver_label),
                                                                  config_items(cfg, split.inner) if rank == 0 else []))
    if not train_items:
        raise InputError(cfg.data.root, "empty training set (no case has all channels and a label)",
                         f"channels {cfg.preprocess.channels}", "check data.root, data.datasets and preprocess.channels")
    return split, train_items, inner_items


def build_model(cfg: SegmentConfig, device: torch.device, init_from: str | None) -> torch.nn.Module:
    """The network of cfg.model on `device`; with `init_from` (a model folder, e.g. of `segment pretrain`)
    every tensor that matches by name and shape is loaded (segment.pretrain.init_weights: counts and
    skipped tensors reported). Raises InputError when none matches or a pretrain folder's network differs."""
    net = build_network(cfg.model, len(cfg.preprocess.channels)).to(device)
    if init_from:
        init_weights(net, cfg.model, cfg.preprocess.channels, init_from)
    return net


def optimisation(cfg: SegmentConfig, net: torch.nn.Module, train_items: list, device: torch.device) -> Optimisation:
    """Loss (Dice+CE, or its partial-label form when a teacher's whole glands train), AdamW, the
    learning-rate schedule over every iteration, and the AMP scaler (CUDA only)."""
    from monai.losses import DiceCELoss

    scheme = cfg.model.label_scheme
    weight = torch.tensor(cfg.train.class_weights, dtype=torch.float32) if cfg.train.class_weights else None
    lam_dice, lam_ce = {"dice_ce": (1.0, 1.0), "dice": (1.0, 0.0), "ce": (0.0, 1.0)}[cfg.train.loss]
    if any(it.label.max() == GLAND_UNKNOWN for it in train_items):  # teacher whole glands: zones unknown
        loss_fn = PartialDiceCE(weight=weight, lambda_dice=lam_dice, lambda_ce=lam_ce).to(device)
    else:
        loss_fn = DiceCELoss(to_onehot_y=scheme == "multiclass", softmax=scheme == "multiclass",
                             sigmoid=scheme == "regions", weight=weight, lambda_dice=lam_dice,
                             lambda_ce=lam_ce).to(device)
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, schedule(cfg.train, cfg.train.epochs * cfg.train.iters_per_epoch))
    use_amp = cfg.train.amp and device.type == "cuda"
    return Optimisation(loss_fn, opt, sched, torch.amp.GradScaler("cuda", enabled=use_amp), use_amp)


def _resume(cfg: SegmentConfig, last: Path, net: torch.nn.Module, optim: Optimisation) -> RunState:
    """Load checkpoint_last.pt (same config only) into the network, optimiser, scheduler and RNGs."""
    ck = torch.load(last, map_location="cpu", weights_only=True)
    _check_resume(cfg, ck, last)
    net.load_state_dict(ck["model"])
    optim.opt.load_state_dict(ck["optimizer"])
    optim.sched.load_state_dict(ck["scheduler"])
    set_rng_state(ck["rng"])
    return RunState(ck["epoch"] + 1, Selection(cfg.train.patience, ck["best"], ck["best_epoch"], ck["bad"]),
                    ck["history"])


def _fit(run: Run, optim: Optimisation, sampler: PatchSampler, inner_items: list, state: RunState,
         progress: bool, on_iteration) -> None:
    """Epochs state.start.. : train, choose (rank 0 validates the inner split; every rank follows its stop
    decision), log and checkpoint. With a frozen encoder the DDP wrapper is rebuilt when it thaws."""
    from tqdm import tqdm

    cfg, net = run.cfg, run.seg.net
    enc = encoder_modules(net, cfg.model.name) if cfg.train.freeze_encoder_epochs else []
    bar = tqdm(range(state.start, cfg.train.epochs), desc=f"train {cfg.name} fold {run.fold}",
               disable=not progress or run.rank != 0, initial=state.start, total=cfg.train.epochs)
    model, wrapped_frozen, epoch, writer = None, None, state.start - 1, None
    for epoch in bar:
        seed_epoch(cfg.train.seed, epoch)
        frozen = epoch < cfg.train.freeze_encoder_epochs
        if frozen != wrapped_frozen:  # DDP reduces the parameters that train at construction: rebuild
            for m in enc:
                m.requires_grad_(not frozen)
            model, wrapped_frozen = wrap(net, run.world, run.device), frozen
        step = None if on_iteration is None else (lambda it, e=epoch: on_iteration(e, it))
        stats = train_one_epoch(model, epoch_loader(sampler, cfg.train, epoch, run.rank), optim, run.device,
                                cfg.model.label_scheme, enc if frozen else [], step)
        if run.rank == 0 and epoch == state.start:
            start_run(run.run_dir, cfg, run.split.splits)
            writer = _tensorboard(cfg, run.run_dir)
        val, stop = _select(run, inner_items, state.selection, epoch)
        if run.rank == 0:
            _end_epoch(run, optim, state, epoch, {**stats, "frozen": frozen, "val": val}, writer, bar)
        if stop:
            if run.rank == 0:
                print(f"early stop at epoch {epoch}: no gain in inner-validation mean DSC for {state.selection.bad} epochs")
            break
    if writer is not None:
        writer.close()
    if run.world > 1:
        print(f"rank {run.rank} of {run.world}: training ended after epoch {epoch}", flush=True)


def _select(run: Run, inner_items: list, sel: Selection, epoch: int) -> tuple[dict | None, bool]:
    """Rank 0 scores the inner split and keeps the best epoch's weights (checkpoint_best.pt); every rank
    gets its stop decision. Returns (inner scores or None, stop)."""
    val, improved, stop = None, 0, 0
    if run.rank == 0 and inner_items:
        val = validate(run.seg, inner_items)
        improved = int(sel.update(val["mean_dsc"], epoch))
        if improved:
            save_checkpoint(run.run_dir / "checkpoint_best.pt", model=run.seg.net.state_dict(), epoch=epoch, inner=val)
        stop = int(sel.stop)
    if run.split.inner:
        improved, stop = from_rank0([improved, stop], run.world)
    return val, bool(stop)


def _end_epoch(run: Run, optim: Optimisation, state: RunState, epoch: int, stats: dict, writer, bar) -> None:
    """Rank 0: the epoch's history row (history.csv, TensorBoard, progress bar) and checkpoint_last.pt."""
    val, sel = stats["val"], state.selection
    row = {"epoch": epoch, "loss": stats["loss"], "lr": optim.sched.get_last_lr()[0],
           "seconds": round(stats["seconds"], 2), "data_wait_share": round(stats["wait"] / max(stats["seconds"], 1e-9), 3),
           "frozen_encoder": stats["frozen"],
           **({f"inner_{k}": v for k, v in val.items() if k != "cases"} if val else {})}
    state.history.append(row)
    if writer is not None:
        for k, v in row.items():
            if isinstance(v, (int, float)) and k != "epoch":
                writer.add_scalar(k, v, epoch)
    bar.set_postfix(loss=f"{row['loss']:.3f}", **({"inner": f"{val['mean_dsc']:.3f}"} if val else {}))
    save_checkpoint(run.last, model=run.seg.net.state_dict(), optimizer=optim.opt.state_dict(),
                    scheduler=optim.sched.state_dict(), rng=rng_state(), epoch=epoch, best=sel.best,
                    best_epoch=sel.best_epoch, bad=sel.bad, history=state.history, config=to_dict(run.cfg))
    write_csv(state.history, run.run_dir / "history.csv")


def _check_resume(cfg: SegmentConfig, ck: dict, last: Path) -> None:
    """A run continues only with the config it started with (dotted keys compared)."""
    def flat(d, prefix=""):
        out = {}
        for k, v in d.items():
            out.update(flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
        return out

    old, new = flat(ck.get("config") or {}), flat(to_dict(cfg))
    diff = [k for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]
    if diff:
        k = diff[0]
        raise ConfigError("--resume", f"the config differs from the one {last.name} was trained with",
                          f"{k}: {old.get(k)!r} -> {new.get(k)!r}" + (f" (+{len(diff) - 1} more)" if len(diff) > 1 else ""),
                          f"resume with {last.parent / 'config.yaml'} or pass --force to start anew")


def _tensorboard(cfg: SegmentConfig, run_dir: Path):
    """A SummaryWriter in run_dir/tensorboard, or None (off, or the package is not installed)."""
    if not cfg.train.tensorboard:
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(str(run_dir / "tensorboard"))


def _finish(run: Run, state: RunState) -> None:
    """Write the model folder: the chosen weights, then the held-out cases scored once on them."""
    cfg, seg, split = run.cfg, run.seg, run.split
    inner, best_epoch, best_path = None, state.selection.best_epoch, run.run_dir / "checkpoint_best.pt"
    if split.inner and best_path.exists():  # absent only if no epoch gave a finite inner DSC
        ck = torch.load(best_path, map_location="cpu", weights_only=True)
        seg.net.load_state_dict(ck["model"])
        inner = ck["inner"]
    else:
        best_epoch = len(state.history) - 1 if state.history else cfg.train.epochs - 1
    held = None
    if split.held_out:
        items = config_items(cfg, split.held_out)
        held = validate(seg, items)
    seg.save(run.run_dir, **training_record(cfg, run.fold, split, inner, held, best_epoch, len(state.history)))


def held_out_crop(spec) -> str:
    """The crop and grid model.json's held-out DSC is scored on (`ensemble evaluate --cv`: the ensemble's)."""
    if spec.crop_mm is not None and spec.crop_centre == "gland":
        return "centred on the reference gland (in an ensemble: on the locator's gland), working grid"
    return f"as in prediction ({'whole field of view' if spec.crop_mm is None else 'volume centre'}), working grid"


def training_record(cfg: SegmentConfig, fold, split: Fold, inner: dict | None, held: dict | None, epoch: int,
                    history_epochs: int) -> dict:
    """What a training run adds to its segmenter's model folder description (Segmenter.describe)."""
    def metrics(v):
        return {"per_case": v["cases"], **{k: x for k, x in v.items() if k != "cases"}}

    rule = ("inner: best epoch and early stopping by mean DSC on inner-validation patients drawn from "
            "the fold's training patients" if split.inner else "fixed: last epoch of the schedule, no selection")
    return {
        "name": cfg.name,
        "fold": fold,
        "best_epoch": epoch,
        "history_epochs": history_epochs,
        "selection": {"rule": rule, "epoch": epoch, "cases": [c.case_id for c in split.inner],
                      **(metrics(inner) if inner else {})},
        "validation": None if held is None else {
            "split": f"fold {fold} of {cfg.data.folds} (patient-level), expert labels '{cfg.data.label}'; "
                     "held out: scored once after training, used for no decision",
            "cases": [c.case_id for c in split.held_out],
            "crop": held_out_crop(cfg.preprocess),
            **metrics(held)},
    }
