"""`segment train`: patient-level cross-validation folds, online augmentation, Dice+CE, AdamW with a
cosine/poly schedule, per-zone validation DSC every epoch, early stopping, atomic last/best
checkpoints with optimiser, scheduler and RNG state (so `--resume` continues exactly), transfer
learning with a frozen encoder, and DistributedDataParallel under torchrun (gloo on CPU).

Output: a self-describing model folder `output_dir/name/fold_K` (see mricore.modelfolder).
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path

import numpy as np
import torch

from mricore.config import save_config, to_dict
from mricore.datasets import load_dataset
from mricore.errors import ConfigError, InputError
from mricore.io import _replace_atomically, write_csv, write_json
from mricore.metrics import ZONES, dice
from mricore.modelfolder import load_weights, read_model_meta, run_folder, save_model_folder
from mricore.splits import load_splits, make_splits, save_splits

from .config import SegmentConfig
from .data import EpochBatches, PatchSampler, Prefetch, load_items
from .inference import Segmenter, labels_from_probabilities
from .networks import build_network, encoder_parameters, targets_for

def _dist() -> tuple[int, int]:
    world = int(os.environ.get("WORLD_SIZE", "1"))  # set by torchrun
    if world > 1 and not torch.distributed.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        torch.distributed.init_process_group(backend)
    return (torch.distributed.get_rank(), world) if world > 1 else (0, 1)


def resolve_split(cfg: SegmentConfig, cases, fold: int | str, run_dir: Path):
    """Expert-labelled cases are split by patient; silver-only cases only ever train."""
    expert = [c for c in cases if cfg.data.label in c.labels]
    silver = [c for c in cases if cfg.data.label not in c.labels and cfg.data.silver_label
              and cfg.data.silver_label in c.labels]
    if not expert and not silver:
        raise InputError(cfg.data.root, f"no case has label '{cfg.data.label}'", 0, "check data.root and data.label")
    if fold == "all":
        return expert + silver, [], None
    if cfg.data.splits_file:
        splits = load_splits(cfg.data.splits_file)
    else:
        n_pat = len({c.patient_id for c in expert})
        if n_pat < cfg.data.folds:
            raise ConfigError("data.folds", f"needs at least as many expert-labelled patients ({n_pat})",
                              cfg.data.folds, f"set --set data.folds={max(2, n_pat)} or use --fold all")
        splits = make_splits(expert, cfg.data.folds, cfg.data.split_seed)
    if not 0 <= int(fold) < len(splits):
        raise ConfigError("--fold", f"must be in 0..{len(splits) - 1} or 'all'", fold, "")
    s = splits[int(fold)]
    by_id = {c.case_id: c for c in cases}
    train = [by_id[i] for i in s["train"] if i in by_id] + silver
    val = [by_id[i] for i in s["val"] if i in by_id]
    return train, val, splits


def _rng_state() -> dict:
    st = np.random.get_state()
    return {"torch": torch.get_rng_state(), "numpy": [st[0], torch.from_numpy(st[1].astype(np.int64)), st[2], st[3], st[4]]}


def _set_rng_state(s: dict) -> None:
    torch.set_rng_state(s["torch"])
    n = s["numpy"]
    np.random.set_state((n[0], n[1].numpy().astype(np.uint32), n[2], n[3], n[4]))


def _save_checkpoint(path: Path, **state) -> None:
    _replace_atomically(path, lambda tmp: torch.save(state, tmp))


def _schedule(cfg, total_iters: int):
    if cfg.train.schedule == "cosine":
        return lambda it: 0.5 * (1 + math.cos(math.pi * min(it, total_iters) / total_iters))
    if cfg.train.schedule == "poly":
        return lambda it: (1 - min(it, total_iters) / total_iters) ** 0.9
    return lambda it: 1.0


def validate(seg: Segmenter, items) -> dict:
    """Per-zone DSC on the working grid for each validation case; mean over zones and cases."""
    rows = []
    for it in items:
        pred = labels_from_probabilities(seg.probabilities(it.image))
        rows.append({"case_id": it.case_id, **{z: dice(f(pred), f(it.label)) for z, f in ZONES.items()}})
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


def train(cfg: SegmentConfig, fold: int | str = 0, resume: bool = False, init_from: str | None = None,
          force: bool = False, progress: bool = True, on_iteration=None) -> Path:
    """Train one fold; return the model folder. `on_iteration(epoch, it)` is called after each step."""
    rank, world = _dist()
    run_dir, last = run_folder(cfg.output_dir, cfg.name, fold, resume, force)
    torch.manual_seed(cfg.train.seed)
    np.random.seed(cfg.train.seed)

    cases = load_dataset(cfg.data.root, cfg.data.files)
    if cfg.data.datasets:
        cases = [c for c in cases if c.dataset in cfg.data.datasets]
    train_cases, val_cases, splits = resolve_split(cfg, cases, fold, run_dir)
    spec = cfg.preprocess
    train_items = load_items(train_cases, spec, cfg.data.label, cfg.data.silver_label, cfg.data.register)
    val_items = load_items(val_cases, spec, cfg.data.label, None, cfg.data.register)
    if not train_items:
        raise InputError(cfg.data.root, "empty training set (no case has all channels and a label)",
                         f"channels {spec.channels}", "check data.root, data.datasets and preprocess.channels")

    device = torch.device("cuda", rank % max(1, torch.cuda.device_count())) if torch.cuda.is_available() else torch.device("cpu")
    net = build_network(cfg.model, len(spec.channels)).to(device)
    if init_from:
        meta = read_model_meta(init_from)
        src = load_weights(init_from)
        own = net.state_dict()
        matched = {k: v for k, v in src.items() if k in own and own[k].shape == v.shape}
        own.update(matched)
        net.load_state_dict(own)
        print(f"init-from {init_from}: {len(matched)}/{len(own)} tensors loaded (arch {meta.get('model', {}).get('name')})")
    model = torch.nn.parallel.DistributedDataParallel(net) if world > 1 else net

    from monai.losses import DiceCELoss

    scheme = cfg.model.label_scheme
    weight = torch.tensor(cfg.train.class_weights, dtype=torch.float32) if cfg.train.class_weights else None
    lam_dice, lam_ce = {"dice_ce": (1.0, 1.0), "dice": (1.0, 0.0), "ce": (0.0, 1.0)}[cfg.train.loss]
    loss_fn = DiceCELoss(to_onehot_y=scheme == "multiclass", softmax=scheme == "multiclass", sigmoid=scheme == "regions",
                         weight=weight, lambda_dice=lam_dice, lambda_ce=lam_ce).to(device)
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
    total = cfg.train.epochs * cfg.train.iters_per_epoch
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _schedule(cfg, total))
    use_amp = cfg.train.amp and device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)

    start_epoch, best, best_epoch, bad, history = 0, -1.0, -1, 0, []
    if resume:
        ck = torch.load(last, map_location="cpu", weights_only=True)
        net.load_state_dict(ck["model"])
        opt.load_state_dict(ck["optimizer"])
        sched.load_state_dict(ck["scheduler"])
        _set_rng_state(ck["rng"])
        start_epoch, best, best_epoch, bad, history = ck["epoch"] + 1, ck["best"], ck["best_epoch"], ck["bad"], ck["history"]

    sampler = PatchSampler(train_items, cfg.train.patch, cfg.model.spatial_dims, cfg.model.context,
                           cfg.train.foreground_p, cfg.augment if cfg.augment.mode == "online" else None)
    seg = Segmenter(net, cfg.model, spec, cfg.train.patch, cfg.predict)
    enc = encoder_parameters(net, cfg.model.name) if cfg.train.freeze_encoder_epochs else []
    writer = None
    if rank == 0:
        run_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, run_dir / "config.yaml")
        if splits is not None:
            save_splits(splits, run_dir / "splits.json")
        if cfg.train.tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                writer = SummaryWriter(str(run_dir / "tensorboard"))
            except ImportError:
                writer = None

    from tqdm import tqdm

    bar = tqdm(range(start_epoch, cfg.train.epochs), desc=f"train {cfg.name} fold {fold}",
               disable=not progress or rank != 0, initial=start_epoch, total=cfg.train.epochs)
    for epoch in bar:
        # Each epoch's randomness depends only on (seed, epoch): a resumed run repeats it exactly.
        torch.manual_seed(cfg.train.seed * 100003 + epoch)
        np.random.seed((cfg.train.seed * 100003 + epoch) % 2**32)
        frozen = epoch < cfg.train.freeze_encoder_epochs
        for p in enc:
            p.requires_grad_(not frozen)
        model.train()
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
        if rank != 0:
            continue
        val = validate(seg, val_items) if val_items else {"mean_dsc": float("nan")}
        model.train()
        score = val["mean_dsc"]
        improved = (not val_items) or (np.isfinite(score) and score > best)
        if improved:
            best, best_epoch, bad = (score if val_items else -1.0), epoch, 0
        else:
            bad += 1
        row = {"epoch": epoch, "loss": float(np.mean(losses)), "lr": sched.get_last_lr()[0],
               "seconds": round(epoch_s, 2), "data_wait_share": round(wait / max(epoch_s, 1e-9), 3),
               "frozen_encoder": frozen, **{k: v for k, v in val.items() if k != "cases"}}
        history.append(row)
        if writer is not None:
            for k, v in row.items():
                if isinstance(v, (int, float)) and k != "epoch":
                    writer.add_scalar(k, v, epoch)
        bar.set_postfix(loss=f"{row['loss']:.3f}", val=f"{score:.3f}")
        meta = _meta(cfg, fold, val_cases, val if val_items else None, best_epoch, history)
        if improved:
            save_model_folder(run_dir, net.state_dict(), meta)
        state = dict(model=net.state_dict(), optimizer=opt.state_dict(), scheduler=sched.state_dict(),
                     rng=_rng_state(), epoch=epoch, best=best, best_epoch=best_epoch, bad=bad, history=history)
        _save_checkpoint(last, **state)
        write_csv(history, run_dir / "history.csv")
        if val_items and bad >= cfg.train.patience:
            print(f"early stop at epoch {epoch}: no improvement of validation mean DSC for {bad} epochs")
            break
    if writer is not None:
        writer.close()
    if world > 1:
        torch.distributed.barrier()
    if rank == 0:
        # Final metadata: best-epoch validation metrics plus the full history.
        meta = read_model_meta(run_dir)
        meta["history_epochs"] = len(history)
        write_json(meta, run_dir / "model.json")
    return run_dir


def _meta(cfg: SegmentConfig, fold, val_cases, val: dict | None, best_epoch: int, history) -> dict:
    return {
        "kind": "segmenter",
        "name": cfg.name,
        "fold": fold,
        "model": to_dict(cfg.model),
        "preprocess": to_dict(cfg.preprocess),
        "predict": to_dict(cfg.predict),
        "patch": list(cfg.train.patch),
        "channels": list(cfg.preprocess.channels),
        "labels": {"0": "background", "1": "TZ", "2": "PZ"},
        "label_scheme": cfg.model.label_scheme,
        "outputs": "class probabilities (background, TZ, PZ); WG = TZ + PZ",
        "best_epoch": best_epoch,
        "validation": None if val is None else {
            "split": f"fold {fold} of {cfg.data.folds} (patient-level), expert labels '{cfg.data.label}'",
            "cases": [c.case_id for c in val_cases],
            "per_case": val["cases"],
            **{k: v for k, v in val.items() if k != "cases"}},
    }
