"""Training data: cases on the working grid, and a patch sampler with foreground oversampling and
paired augmentation.

Training reads its cases from an on-disk cache (segment.caseprep, mricore.cache), preprocessed once
per case and spec, in parallel over the cores; a `CachedItem` opens its arrays memory-mapped when a
patch is drawn and drops them after, so memory does not grow with the number of studies. Without a
cache folder the arrays live in memory (`Item`; small sets, tests). Each batch is a function of
(seed, epoch, rank, batch index) only: runs repeat exactly and `--resume` needs no data-loader state.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from mricore.cache import ArrayCache
from mricore.datasets import Case
from mricore.errors import InputError
from mricore.preprocess import PreprocessSpec

from .caseprep import GLAND_UNKNOWN, TEACHER_LABEL, TEACHER_ZONES, label_key_for  # noqa: F401  (home: caseprep)
from .caseprep import cached_cases, prepare_case, usable
from .acquisition import PatchGrid
from .transforms import augment_patch
from .config import AugmentConfig

MARGIN = 16  # voxels around a 2D/3D patch handed to the elastic deformation (pulls from outside)


@dataclass
class Item:
    case_id: str
    patient_id: str
    image: np.ndarray       # (C, I, J, K) float32, working grid
    label: np.ndarray       # (I, J, K) uint8
    fg: np.ndarray          # (N, 3) foreground voxel indices
    silver: bool = False    # label came from `silver_label` or a teacher


@dataclass
class CachedItem:
    """An Item whose arrays stay in the cache: each access maps the file anew (read-only pages of the
    page cache, private if written), and the map goes when the caller drops the array."""

    case_id: str
    patient_id: str
    cache: ArrayCache
    key: str
    silver: bool = False

    @property
    def image(self) -> np.ndarray:
        return self.cache.array(self.key, "image")

    @property
    def label(self) -> np.ndarray:
        return self.cache.array(self.key, "label")

    @property
    def fg(self) -> np.ndarray:
        return self.cache.array(self.key, "fg")


def load_items(cases: list[Case], spec: PreprocessSpec, label: str, silver: str | None = None,
               register: bool = False, progress: bool = False, cache_dir: str | Path | None = None,
               workers: int = 0) -> list[Item] | list[CachedItem]:
    """The labelled cases on the working grid (cases without the label or a channel are left out), in
    `cases` order, by segment.caseprep.prepare_case: CachedItems from the cache in `cache_dir` (built
    there by `workers` processes where missing or corrupt; 0: one per core), or Items in memory when
    `cache_dir` is None."""
    if cache_dir is not None:
        cache = ArrayCache(cache_dir)
        return [CachedItem(case.case_id, case.patient_id, cache, key, is_silver) for case, key, is_silver
                in cached_cases(cases, spec, label, silver, register, Path(cache_dir), workers, progress)]
    from tqdm import tqdm

    items = []
    for case in tqdm(cases, desc="preprocess", disable=not progress, leave=False):
        key, is_silver = usable(case, spec, label, silver)
        if key is not None:
            a = prepare_case(case, spec, key, label, register)
            items.append(Item(case.case_id, case.patient_id, a["image"], a["label"], a["fg"], is_silver))
    return items


def config_items(cfg, cases: list[Case], silver: str | None = None) -> list[CachedItem]:
    """`load_items` as a training config (segment.config.SegmentConfig) says: its label, registration,
    spec and cache (data.cache_dir, default output_dir/cache: shared by every run and fold, since an
    entry is keyed by the case, its source files and the spec) built by data.workers processes."""
    d = cfg.data
    cache = Path(d.cache_dir) if d.cache_dir else Path(cfg.output_dir) / "cache"
    return load_items(cases, cfg.preprocess, d.label, silver, d.register, cache_dir=cache, workers=d.workers)


def crop_pad(arr: np.ndarray, start: list[int], size: list[int], fill: float) -> np.ndarray:
    """arr[..., start:start+size] over the trailing len(size) axes, padding with `fill` outside."""
    lead = arr.ndim - len(size)
    src, pads = [slice(None)] * lead, []
    for s, n, dim in zip(start, size, arr.shape[lead:]):
        a, b = max(s, 0), min(s + n, dim)
        src.append(slice(a, max(a, b)))
        pads.append((a - s, n - (a - s) - max(0, b - a)))
    out = arr[tuple(src)]
    if any(p != (0, 0) for p in pads):
        out = np.pad(out, [(0, 0)] * lead + pads, constant_values=fill)
    return out


class PatchSampler:
    """Draws (image, label) training patches.

    2D (spatial_dims 2): a slice (with `context` neighbours each side as channels, 2.5D) and an
    in-plane patch; 3D: an (i, j, k) block. With probability `foreground_p` the patch is centred on a
    random foreground voxel (imbalance), else anywhere.
    """

    def __init__(self, items: list[Item], patch: list[int], spatial_dims: int, context: int,
                 foreground_p: float, augment: AugmentConfig | None, grid: PatchGrid | None = None):
        if not items:
            raise InputError("training set", "no labelled cases", 0, "check data.root, data.datasets and data.label")
        self.items, self.patch, self.dims = items, list(patch), spatial_dims
        self.context, self.fg_p, self.aug = context, foreground_p, augment
        self.grid = grid  # the working grid's spacing and posterior (segment.acquisition), for the coil field

    def sample(self, rng: np.random.Generator):
        it = self.items[rng.integers(len(self.items))]
        image, label, fg = it.image, it.label, it.fg  # a CachedItem maps its files once per sample
        I, J, K = label.shape
        if len(fg) and rng.random() < self.fg_p:
            ci, cj, ck = fg[rng.integers(len(fg))]
        else:
            ci, cj, ck = rng.integers(I), rng.integers(J), rng.integers(K)
        pi, pj = self.patch[0], self.patch[1]
        m = MARGIN if self.aug is not None else 0
        si, sj = ci - pi // 2 - m, cj - pj // 2 - m
        fill = float(image.min())
        if self.dims == 2:
            ks = np.clip(np.arange(ck - self.context, ck + self.context + 1), 0, K - 1)
            img = image[:, :, :, ks]                          # (C, I, J, 2c+1)
            img = np.moveaxis(img, 3, 1).reshape(-1, I, J)    # channels: seq-major, then slice
            lab = label[:, :, ck]
            img = crop_pad(img, [si, sj], [pi + 2 * m, pj + 2 * m], fill)
            lab = crop_pad(lab, [si, sj], [pi + 2 * m, pj + 2 * m], 0)
        else:
            pk = self.patch[2]
            sk = int(np.clip(ck - pk // 2, min(0, K - pk), max(0, K - pk)))
            img = crop_pad(image, [si, sj, sk], [pi + 2 * m, pj + 2 * m, pk], fill)
            lab = crop_pad(label, [si, sj, sk], [pi + 2 * m, pj + 2 * m, pk], 0)
        if self.aug is not None:
            img, lab = augment_patch(rng, self.aug, img, lab, (slice(m, m + pi), slice(m, m + pj)), self.grid)
        return img, lab

    def batch(self, rng: np.random.Generator, n: int):
        xs, ys = zip(*(self.sample(rng) for _ in range(n)))
        return torch.from_numpy(np.stack(xs)), torch.from_numpy(np.stack(ys)[:, None].astype(np.int64))


def batch_rng(seed: int, epoch: int, rank: int, index: int) -> np.random.Generator:
    """The generator for one batch: a pure function of its coordinates (repeatable, resumable)."""
    return np.random.default_rng([seed, epoch, rank, index])


class EpochBatches(torch.utils.data.IterableDataset):
    """The batches of one epoch, split across DataLoader workers by batch index."""

    def __init__(self, sampler: PatchSampler, seed, epoch, rank, n_batches, batch_size):
        self.s, self.seed, self.epoch, self.rank = sampler, seed, epoch, rank
        self.n, self.bs = n_batches, batch_size

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        wid, nw = (info.id, info.num_workers) if info else (0, 1)
        for b in range(wid, self.n, nw):
            yield self.s.batch(batch_rng(self.seed, self.epoch, self.rank, b), self.bs)

    def __len__(self):
        return self.n


class Prefetch:
    """Iterate `batches` in a background thread, `depth` batches ahead.

    With num_workers 0 the sampler would run between training steps; torch releases the GIL inside
    its kernels, so one thread preparing the next batch overlaps sampling with the step (measured in
    bench/segment_bench.py). Order is kept, so runs stay repeatable. Closing (or leaving the loop
    early, e.g. on an exception) stops the thread.
    """

    def __init__(self, batches, depth: int = 2):
        import queue
        import threading

        self._q: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._fill, args=(batches,), daemon=True)
        self._thread.start()

    def _fill(self, batches):
        import queue

        try:
            for b in batches:
                while not self._stop.is_set():
                    try:
                        self._q.put(("batch", b), timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if self._stop.is_set():
                    return
            self._q.put(("end", None))
        except BaseException as e:  # re-raised in the training thread
            self._q.put(("error", e))

    def __iter__(self):
        try:
            while True:
                kind, value = self._q.get()
                if kind == "end":
                    return
                if kind == "error":
                    raise value
                yield value
        finally:
            self.close()

    def close(self):
        self._stop.set()
