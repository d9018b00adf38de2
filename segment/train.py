"""`segment train`: patient-level cross-validation folds, online augmentation, Dice+CE, AdamW with a
cosine/poly schedule, weights chosen on training patients only (an inner split with early stopping,
or a fixed schedule), the held-out fold scored once at the end, atomic last/best checkpoints with
optimiser, scheduler, RNG state and config (so `--resume` continues exactly, and only with the same
config), transfer learning with a frozen encoder, and DistributedDataParallel under torchrun (gloo on
CPU; every rank follows rank 0's stop decision).

Output: a self-describing model folder `output_dir/name/fold_K` (see mricore.modelfolder).
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path

import numpy as np
import torch

from mricore.config import to_dict
from mricore.datasets import load_dataset
from mricore.errors import ConfigError, InputError
from mricore.io import replace_atomically, write_csv
from mricore.metrics import dice
from mricore.modelfolder import load_weights, read_model, run_folder, start_run
from mricore.zones import SELECTORS, ZONES, labels_from_probabilities

from .config import SegmentConfig
from .data import GLAND_UNKNOWN, EpochBatches, PatchSampler, Prefetch, load_items
from .losses import PartialDiceCE
from .folds import Split, resolve_split, teacher_datalist
from .inference import Segmenter
from .networks import build_network, encoder_modules, targets_for

def _dist() -> tuple[int, int]:
    world = int(os.environ.get("WORLD_SIZE", "1"))  # set by torchrun
    if world > 1 and not torch.distributed.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        torch.distributed.init_process_group(backend)
    return (torch.distributed.get_rank(), world) if world > 1 else (0, 1)


def _from_rank0(values: list[int], world: int) -> list[int]:
    """Rank 0's decision (stop, improved, ...) sent to every rank, so all ranks leave the loop together."""
    if world == 1:
        return values
    t = torch.tensor(values, dtype=torch.int64, device="cuda" if torch.cuda.is_available() else "cpu")
    torch.distributed.broadcast(t, src=0)
    return [int(v) for v in t.tolist()]


def _barrier(world: int) -> None:
    if world > 1:
        torch.distributed.barrier()


def _rng_state() -> dict:
    st = np.random.get_state()
    return {"torch": torch.get_rng_state(), "numpy": [st[0], torch.from_numpy(st[1].astype(np.int64)), st[2], st[3], st[4]]}


def _set_rng_state(s: dict) -> None:
    torch.set_rng_state(s["torch"])
    n = s["numpy"]
    np.random.set_state((n[0], n[1].numpy().astype(np.uint32), n[2], n[3], n[4]))


def _save_checkpoint(path: Path, **state) -> None:
    replace_atomically(path, lambda tmp: torch.save(state, tmp))


def _schedule(cfg, total_iters: int):
    if cfg.train.schedule == "cosine":
        return lambda it: 0.5 * (1 + math.cos(math.pi * min(it, total_iters) / total_iters))
    if cfg.train.schedule == "poly":
        return lambda it: (1 - min(it, total_iters) / total_iters) ** 0.9
    return lambda it: 1.0


def validate(seg: Segmenter, items) -> dict:
    """Per-zone DSC on the working grid for each case; mean over zones and cases.

    `Segmenter.probabilities` runs the network in eval mode under inference_mode (dropout off,
    BatchNorm on its running statistics, which the pass cannot change); every module's previous mode
    is restored after.
    """
    modes = [(m, m.training) for m in seg.net.modules()]
    try:
        rows = []
        for it in items:
            pred = labels_from_probabilities(seg.probabilities(it.image))
            rows.append({"case_id": it.case_id, **{z: dice(f(pred), f(it.label)) for z, f in SELECTORS.items()}})
    finally:
        for m, mode in modes:
            m.training = mode
    out = {"cases": rows}
    for z in ZONES:
        v = np.array([r[z] for r in rows], dtype=float)
        v = v[np.isfinite(v)]
        out[f"{z}_mean"] = float(v.mean()) if len(v) else float("nan")
        out[f"{z}_median"] = float(np.median(v)) if len(v) else float("nan")
        out[f"{z}_n"] = int(len(v))
    vals = [out[f"{z}_mean"] for z in ZONES if np.isfinite(out[f"{z}_mean"])]
    out["mean_dsc"] = float(np.mean(vals)) if vals else float("nan")
    return out


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


def _wrap(net: torch.nn.Module, world: int, device: torch.device) -> torch.nn.Module:
    """DistributedDataParallel over the parameters that train now (rebuilt when the trainable set changes)."""
    if world == 1:
        return net
    ids = [device.index] if device.type == "cuda" else None
    return torch.nn.parallel.DistributedDataParallel(net, device_ids=ids)


def train(cfg: SegmentConfig, fold: int | str = 0, resume: bool = False, init_from: str | None = None,
          force: bool = False, progress: bool = True, on_iteration=None) -> Path:
    """Train one fold; return the model folder. `on_iteration(epoch, it)` is called after each step.

    Weights are chosen by `train.selection` (inner split or fixed schedule); the fold's held-out
    patients are scored once at the end, on the chosen weights, and never decide anything.
    """
    rank, world = _dist()
    run_dir, last = run_folder(cfg.output_dir, cfg.name, fold, resume, force, clear=rank == 0)
    _barrier(world)
    torch.manual_seed(cfg.train.seed)
    np.random.seed(cfg.train.seed)

    cases = load_dataset(cfg.data.root, cfg.data.files)
    if cfg.data.datasets:
        cases = [c for c in cases if c.dataset in cfg.data.datasets]
    if cfg.data.teacher:  # extra studies with a teacher's gland or zones: training only (resolve_split)
        cases += load_dataset(teacher_datalist(cfg, fold))
    split = resolve_split(cfg, cases, fold)
    spec = cfg.preprocess
    train_items = load_items(split.train, spec, cfg.data.label, cfg.data.silver_label, cfg.data.register)
    # Only rank 0 validates: the other ranks never read the inner cases.
    inner_items = load_items(split.inner, spec, cfg.data.label, None, cfg.data.register) if rank == 0 else []
    if not train_items:
        raise InputError(cfg.data.root, "empty training set (no case has all channels and a label)",
                         f"channels {spec.channels}", "check data.root, data.datasets and preprocess.channels")

    device = torch.device("cuda", rank % max(1, torch.cuda.device_count())) if torch.cuda.is_available() else torch.device("cpu")
    net = build_network(cfg.model, len(spec.channels)).to(device)
    if init_from:
        source = read_model(init_from).model.get("name")
        src = load_weights(init_from)
        own = net.state_dict()
        matched = {k: v for k, v in src.items() if k in own and own[k].shape == v.shape}
        if not matched:
            raise InputError(init_from, "no tensor of the source model matches this architecture (name and shape)",
                             f"source {source}, target {cfg.model.name}",
                             "initialise from a model of the same architecture and channels")
        own.update(matched)
        net.load_state_dict(own)
        print(f"init-from {init_from}: {len(matched)}/{len(own)} tensors loaded (arch {source})")

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
    total = cfg.train.epochs * cfg.train.iters_per_epoch
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _schedule(cfg, total))
    use_amp = cfg.train.amp and device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    best_path = run_dir / "checkpoint_best.pt"   # weights of the inner-validation best epoch

    start_epoch, best, best_epoch, bad, history = 0, -1.0, -1, 0, []
    if resume:
        ck = torch.load(last, map_location="cpu", weights_only=True)
        _check_resume(cfg, ck, last)
        net.load_state_dict(ck["model"])
        opt.load_state_dict(ck["optimizer"])
        sched.load_state_dict(ck["scheduler"])
        _set_rng_state(ck["rng"])
        start_epoch, best, best_epoch, bad, history = ck["epoch"] + 1, ck["best"], ck["best_epoch"], ck["bad"], ck["history"]

    sampler = PatchSampler(train_items, cfg.train.patch, cfg.model.spatial_dims, cfg.model.context,
                           cfg.train.foreground_p, cfg.augment if cfg.augment.mode == "online" else None)
    seg = Segmenter(net, cfg.model, spec, cfg.train.patch, cfg.predict)
    enc = encoder_modules(net, cfg.model.name) if cfg.train.freeze_encoder_epochs else []
    writer = None  # TensorBoard, opened with the run folder at the first checkpoint

    from tqdm import tqdm

    bar = tqdm(range(start_epoch, cfg.train.epochs), desc=f"train {cfg.name} fold {fold}",
               disable=not progress or rank != 0, initial=start_epoch, total=cfg.train.epochs)
    model, wrapped_frozen, epoch = None, None, start_epoch - 1
    for epoch in bar:
        # Each epoch's randomness depends only on (seed, epoch): a resumed run repeats it exactly.
        torch.manual_seed(cfg.train.seed * 100003 + epoch)
        np.random.seed((cfg.train.seed * 100003 + epoch) % 2**32)
        frozen = epoch < cfg.train.freeze_encoder_epochs
        if frozen != wrapped_frozen:  # DDP reduces the parameters that train at construction: rebuild
            for m in enc:
                m.requires_grad_(not frozen)
            model, wrapped_frozen = _wrap(net, world, device), frozen
        model.train()
        for m in enc if frozen else []:
            m.eval()  # frozen norm layers keep the source model's running statistics
        batches = EpochBatches(sampler, cfg.train.seed, epoch, rank, cfg.train.iters_per_epoch, cfg.train.batch_size)
        if cfg.train.num_workers == 0 and cfg.train.prefetch:
            loader = Prefetch(batches)
        else:
            loader = torch.utils.data.DataLoader(batches, batch_size=None, num_workers=cfg.train.num_workers)
        t0, wait, losses = time.perf_counter(), 0.0, []
        t_data = time.perf_counter()
        for it, (x, y) in enumerate(loader):
            wait += time.perf_counter() - t_data
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            with torch.autocast(device.type, enabled=use_amp):
                loss = loss_fn(model(x), targets_for(y, scheme))
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            sched.step()
            losses.append(float(loss.detach()))
            if on_iteration is not None:
                on_iteration(epoch, it)
            t_data = time.perf_counter()
        epoch_s = time.perf_counter() - t0
        val, improved, stop = None, 0, 0
        if rank == 0 and epoch == start_epoch:
            start_run(run_dir, cfg, split.splits)
            writer = _tensorboard(cfg, run_dir)
        if rank == 0 and inner_items:
            val = validate(seg, inner_items)
            score = val["mean_dsc"]
            improved = int(bool(np.isfinite(score) and score > best))
            if improved:
                best, best_epoch, bad = score, epoch, 0
                _save_checkpoint(best_path, model=net.state_dict(), epoch=epoch, inner=val)
            else:
                bad += 1
            stop = int(bad >= cfg.train.patience)
        if split.inner:
            improved, stop = _from_rank0([improved, stop], world)
        if rank == 0:
            row = {"epoch": epoch, "loss": float(np.mean(losses)), "lr": sched.get_last_lr()[0],
                   "seconds": round(epoch_s, 2), "data_wait_share": round(wait / max(epoch_s, 1e-9), 3),
                   "frozen_encoder": frozen,
                   **({f"inner_{k}": v for k, v in val.items() if k != "cases"} if val else {})}
            history.append(row)
            if writer is not None:
                for k, v in row.items():
                    if isinstance(v, (int, float)) and k != "epoch":
                        writer.add_scalar(k, v, epoch)
            bar.set_postfix(loss=f"{row['loss']:.3f}", **({"inner": f"{val['mean_dsc']:.3f}"} if val else {}))
            state = dict(model=net.state_dict(), optimizer=opt.state_dict(), scheduler=sched.state_dict(),
                         rng=_rng_state(), epoch=epoch, best=best, best_epoch=best_epoch, bad=bad, history=history,
                         config=to_dict(cfg))
            _save_checkpoint(last, **state)
            write_csv(history, run_dir / "history.csv")
        if stop:
            if rank == 0:
                print(f"early stop at epoch {epoch}: no gain in inner-validation mean DSC for {bad} epochs")
            break
    if writer is not None:
        writer.close()
    if world > 1:
        print(f"rank {rank} of {world}: training ended after epoch {epoch}", flush=True)
    if rank == 0:
        _finish(cfg, fold, split, seg, run_dir, best_path, best_epoch, history)
    _barrier(world)
    return run_dir


def _finish(cfg: SegmentConfig, fold, split: Split, seg: Segmenter, run_dir: Path, best_path: Path,
            best_epoch: int, history: list) -> None:
    """Write the model folder: the chosen weights, then the held-out cases scored once on them."""
    inner = None
    if split.inner and best_path.exists():  # absent only if no epoch gave a finite inner DSC
        ck = torch.load(best_path, map_location="cpu", weights_only=True)
        seg.net.load_state_dict(ck["model"])
        inner = ck["inner"]
    else:
        best_epoch = len(history) - 1 if history else cfg.train.epochs - 1
    held = None
    if split.held_out:
        items = load_items(split.held_out, cfg.preprocess, cfg.data.label, None, cfg.data.register)
        held = validate(seg, items)
    seg.save(run_dir, **training_record(cfg, fold, split, inner, held, best_epoch, len(history)))


def training_record(cfg: SegmentConfig, fold, split: Split, inner: dict | None, held: dict | None, epoch: int,
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
            **metrics(held)},
    }
