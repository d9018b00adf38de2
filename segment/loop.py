"""The segmenter's training loop: one epoch of steps, validation, the learning-rate schedule, the RNG
state a checkpoint keeps, and the torchrun plumbing (process group, rank 0's decisions, DDP wrapper).

Each epoch's batches are a function of (seed, epoch, rank, batch index) (segment.data), and the global
RNGs are reseeded from (seed, epoch) before it, so a resumed run repeats an uninterrupted one.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from mricore.outputs import replace_atomically
from mricore.metrics import dice
from mricore.zones import SELECTORS, ZONES, labels_from_probabilities

from .data import EpochBatches, PatchSampler, Prefetch
from .torch_segmenter import Segmenter
from .networks import targets_for


@dataclass
class Optimisation:
    """What a training step needs beside the network and the batch."""
    loss_fn: torch.nn.Module
    opt: torch.optim.Optimizer
    sched: torch.optim.lr_scheduler.LambdaLR
    scaler: torch.amp.GradScaler
    amp: bool                 # autocast (CUDA only)


def train_one_epoch(model: torch.nn.Module, loader, optim: Optimisation, device: torch.device, scheme: str,
                    frozen: list, on_step=None) -> dict:
    """One pass over `loader`'s (x, y) batches in train mode; the modules in `frozen` stay in eval mode
    (frozen norm layers keep the source model's running statistics). `on_step(it)` runs after each step.
    Returns {"loss": mean loss, "seconds": epoch time, "wait": seconds spent waiting for batches}."""
    model.train()
    for m in frozen:
        m.eval()
    t0, wait, losses = time.perf_counter(), 0.0, []
    t_data = time.perf_counter()
    for it, (x, y) in enumerate(loader):
        wait += time.perf_counter() - t_data
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        with torch.autocast(device.type, enabled=optim.amp):
            loss = optim.loss_fn(model(x), targets_for(y, scheme))
        optim.opt.zero_grad(set_to_none=True)
        optim.scaler.scale(loss).backward()
        optim.scaler.step(optim.opt)
        optim.scaler.update()
        optim.sched.step()
        losses.append(float(loss.detach()))
        if on_step is not None:
            on_step(it)
        t_data = time.perf_counter()
    return {"loss": float(np.mean(losses)), "seconds": time.perf_counter() - t0, "wait": wait}


def epoch_loader(sampler: PatchSampler, cfg, epoch: int, rank: int):
    """The batches of one epoch (cfg: a TrainConfig): a prefetching thread with num_workers 0, else a
    DataLoader over worker processes; the batches are the same either way."""
    batches = EpochBatches(sampler, cfg.seed, epoch, rank, cfg.iters_per_epoch, cfg.batch_size)
    if cfg.num_workers == 0 and cfg.prefetch:
        return Prefetch(batches)
    return torch.utils.data.DataLoader(batches, batch_size=None, num_workers=cfg.num_workers)


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
            pred, label = labels_from_probabilities(seg.probabilities(it.image)), it.label  # a CachedItem maps once
            rows.append({"case_id": it.case_id, **{z: dice(f(pred), f(label)) for z, f in SELECTORS.items()}})
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


def schedule(cfg, total_iters: int):
    """The learning-rate factor per iteration (cfg: a TrainConfig): cosine, poly (0.9) or constant."""
    if cfg.schedule == "cosine":
        return lambda it: 0.5 * (1 + math.cos(math.pi * min(it, total_iters) / total_iters))
    if cfg.schedule == "poly":
        return lambda it: (1 - min(it, total_iters) / total_iters) ** 0.9
    return lambda it: 1.0


def seed_epoch(seed: int, epoch: int) -> None:
    """Each epoch's global randomness (dropout, ...) depends only on (seed, epoch)."""
    torch.manual_seed(seed * 100003 + epoch)
    np.random.seed((seed * 100003 + epoch) % 2**32)


def rng_state() -> dict:
    st = np.random.get_state()
    return {"torch": torch.get_rng_state(), "numpy": [st[0], torch.from_numpy(st[1].astype(np.int64)), st[2], st[3], st[4]]}


def set_rng_state(s: dict) -> None:
    torch.set_rng_state(s["torch"])
    n = s["numpy"]
    np.random.set_state((n[0], n[1].numpy().astype(np.uint32), n[2], n[3], n[4]))


def save_checkpoint(path: Path, **state) -> None:
    replace_atomically(path, lambda tmp: torch.save(state, tmp))


def dist_rank() -> tuple[int, int]:
    """(rank, world size); under torchrun the process group is started here (NCCL on CUDA, else gloo)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))  # set by torchrun
    if world > 1 and not torch.distributed.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        torch.distributed.init_process_group(backend)
    return (torch.distributed.get_rank(), world) if world > 1 else (0, 1)


def from_rank0(values: list[int], world: int) -> list[int]:
    """Rank 0's decision (stop, improved, ...) sent to every rank, so all ranks leave the loop together."""
    if world == 1:
        return values
    t = torch.tensor(values, dtype=torch.int64, device="cuda" if torch.cuda.is_available() else "cpu")
    torch.distributed.broadcast(t, src=0)
    return [int(v) for v in t.tolist()]


def barrier(world: int) -> None:
    if world > 1:
        torch.distributed.barrier()


def rank0_first(rank: int, world: int, fn):
    """fn() on rank 0 first, then on the other ranks: rank 0 fills what they share (the preprocessed-case
    cache) before they read it. Returns this rank's fn()."""
    if rank != 0:
        barrier(world)
    out = fn()
    if rank == 0:
        barrier(world)
    return out


def wrap(net: torch.nn.Module, world: int, device: torch.device) -> torch.nn.Module:
    """DistributedDataParallel over the parameters that train now (rebuilt when the trainable set changes)."""
    if world == 1:
        return net
    ids = [device.index] if device.type == "cuda" else None
    return torch.nn.parallel.DistributedDataParallel(net, device_ids=ids)
