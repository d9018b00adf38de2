"""Pre-training data: every study's images on the working grid (no label is ever opened), and
masked-image-reconstruction batches drawn like the segmenter's training patches.

`image_items` preprocesses each study once per spec into the on-disk cache (mricore.cache, the same
folder as the training cache; an image-only entry has its own key) and returns label-free items the
segmenter's `PatchSampler` draws from: with no label there is no foreground, so every patch is
centred anywhere in the volume. The crop follows the segment config's spec, centred on the field of
view (no gland centre without a label, as in `segment predict` of one member).

`MaskedPatches` corrupts each clean patch as the MONAI self-supervised recipe does
(RandCoarseDropout, then RandCoarseShuffle) and yields (corrupted, clean) batches: the network
learns to give back the clean patch (L1), so it must model anatomy to fill the holes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from mricore.cache import ArrayCache, entry_key
from mricore.config import ConfigError
from mricore.datasets import Case, load_case
from mricore.preprocess import PreprocessSpec, preprocess

from .caseprep import default_workers, source_stamps
from .data import PatchSampler

NO_FOREGROUND = np.empty((0, 3), np.int64)


@dataclass(frozen=True)
class MaskConfig:
    """The corruption of each patch (MONAI SSL recipe: RandCoarseDropout, then RandCoarseShuffle)."""
    ratio: float = 0.4              # share of the patch the dropout holes aim to cover (holes may overlap,
                                    # so a little less): the number of holes follows from the mean hole size
    hole_min: int = 5               # hole side drawn in [hole_min, hole_max] voxels per axis (recipe: 5..32)
    hole_max: int = 32
    shuffle_p: float = 0.8          # probability of the coarse shuffle (recipe: 0.8, 10 regions of 8 voxels)
    shuffle_holes: int = 10
    shuffle_size: int = 8

    def validate(self, where):
        if not 0 < self.ratio < 1:
            raise ConfigError(where, "mask.ratio must be in (0, 1)", self.ratio, "e.g. mask.ratio: 0.4")
        if not 1 <= self.hole_min <= self.hole_max:
            raise ConfigError(where, "mask.hole_min must be >= 1 and <= mask.hole_max",
                              (self.hole_min, self.hole_max), "e.g. hole_min: 5, hole_max: 32")
        if not 0 <= self.shuffle_p <= 1 or self.shuffle_holes < 1 or self.shuffle_size < 1:
            raise ConfigError(where, "mask.shuffle_p must be in [0, 1], shuffle_holes and shuffle_size >= 1",
                              (self.shuffle_p, self.shuffle_holes, self.shuffle_size), "e.g. shuffle_p: 0.8")

    def holes(self, patch: list[int]) -> int:
        """Dropout holes per patch: ratio x patch size / mean hole size (each side clipped to the patch)."""
        mean_side = (self.hole_min + self.hole_max) / 2
        hole = math.prod(min(mean_side, p) for p in patch)
        return max(1, round(self.ratio * math.prod(patch) / hole))


@dataclass
class ImageItem:
    """A study for the sampler, without a label: all background, no foreground voxel. The image stays
    in the cache and is mapped on each access (as segment.data.CachedItem)."""
    case_id: str
    patient_id: str
    cache: ArrayCache
    key: str
    shape: tuple            # (I, J, K) of the working grid

    @property
    def image(self) -> np.ndarray:
        return self.cache.array(self.key, "image")

    @property
    def label(self) -> np.ndarray:
        return np.broadcast_to(np.uint8(0), self.shape)  # zero strides: no memory

    @property
    def fg(self) -> np.ndarray:
        return NO_FOREGROUND


def image_key(case: Case, spec: PreprocessSpec, register: bool) -> str:
    """The cache key of a study's image-only entry: its channels' source files, the spec, registration."""
    return entry_key({"case": case.case_id, "spec": spec.key(), "register": register, "content": "image only",
                      "sources": source_stamps({c: case.images[c] for c in spec.channels})})


def ensure_image(root: str, key: str, case: Case, spec: PreprocessSpec, register: bool) -> tuple:
    """The entry `key` checked, or built when absent or corrupt (a worker's task); returns its shape."""
    cache = ArrayCache(root)
    info = cache.read(key)
    if info is None:
        image, _, _ = load_case(case, spec.channels, None, register=register)  # no label key: none is read
        array = preprocess(image, spec).array  # no centre: the crop is centred on the field of view
        info = cache.write(key, {"image": array}, {"case_id": case.case_id, "shape": list(array.shape[1:])})
    return tuple(info["shape"])


def image_items(cases: list[Case], spec: PreprocessSpec, register: bool, root: Path, workers: int = 0) -> list[ImageItem]:
    """An ImageItem per case (every case must have spec.channels), in `cases` order, its entry built in
    the cache `root` by `workers` processes where missing (0: one per core; 1: in this process)."""
    keys = [image_key(c, spec, register) for c in cases]
    args = [(str(root), k, c, spec, register) for k, c in zip(keys, cases)]
    workers = min(workers or default_workers(), len(args))
    if workers <= 1:
        shapes = [ensure_image(*a) for a in args]
    else:
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(workers) as pool:  # fork, as segment.caseprep: workers run no torch
            shapes = list(pool.map(ensure_image, *zip(*args)))
    cache = ArrayCache(root)
    return [ImageItem(c.case_id, c.patient_id, cache, k, s) for c, k, s in zip(cases, keys, shapes)]


class MaskedPatches:
    """(corrupted, clean) batches of the segmenter's patches, both (N, C, *patch) float32 tensors.

    `batch(rng, n)` is a function of the generator alone (the MONAI transforms are reseeded from it for
    every patch), so epochs repeat exactly, as the segmenter's batches do (segment.data.EpochBatches).
    """

    def __init__(self, sampler: PatchSampler, mask: MaskConfig):
        from monai.transforms import RandCoarseDropout, RandCoarseShuffle

        self.sampler = sampler
        # fill_value None: each dropped voxel takes a uniform value in the patch's [min, max) (recipe)
        self.dropout = RandCoarseDropout(holes=mask.holes(sampler.patch), spatial_size=mask.hole_min,
                                         max_spatial_size=mask.hole_max, dropout_holes=True, prob=1.0)
        self.shuffle = RandCoarseShuffle(holes=mask.shuffle_holes, spatial_size=mask.shuffle_size, prob=mask.shuffle_p)

    def corrupt(self, x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """A corrupted copy of one (C, *patch) patch; `x` is left as it is."""
        from monai.utils import convert_to_numpy

        out = x.copy()
        for t in (self.dropout, self.shuffle):
            t.set_random_state(seed=int(rng.integers(2**31)))
            out = convert_to_numpy(t(out))
        return out.astype(np.float32, copy=False)

    def batch(self, rng: np.random.Generator, n: int):
        clean = [self.sampler.sample(rng)[0] for _ in range(n)]
        corrupted = [self.corrupt(x, rng) for x in clean]
        return torch.from_numpy(np.stack(corrupted)), torch.from_numpy(np.stack(clean))
