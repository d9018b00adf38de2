"""Passes of an ensemble onto the input grid (ensemble.engine): a pass is one preprocessing of the
input (a spec group at one TTA scale) and its members' outputs on its working grid; all passes are
restored onto one box of the input grid, the work box, once each.

Probabilities are restored linearly (a pass's weighted sum at once: restoring is linear, so that
equals restoring each member), member label maps by nearest neighbour through one index map per
pass; outside a pass's working grid every member says background (probability 1, label 0).

2D and 2.5D members run only on the working slices that restoring onto the work box reads
(`needed_slices`): a slice's output depends on that slice and its `context` neighbours alone, and the
other slices' outputs never reach the box, so the maps are those of running every slice (22 studies
of ../shared/data: every label voxel equal) at less cost where the locator's margin box is thinner than
the field of view (PROMISE12 Case00: 34 of 64 slices).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from mricore import box as boxes
from mricore.preprocess import Prepared, footprint, restore
from segment.segmenter import BACKGROUND

from . import combine


@dataclass
class Pass:
    """One preprocessing pass (a spec group at one TTA scale) after its members ran: its working grid,
    the weighted sum of their probabilities there, and (scale 1 only) each member's argmax there."""

    prep: Prepared
    work: combine.WeightedSum = field(default_factory=combine.WeightedSum)
    labels: dict[int, np.ndarray] = field(default_factory=dict)  # member index -> (i, j, k) uint8


def nearest_index_map(prep: Prepared, box: boxes.Box | None = None) -> np.ndarray:
    """Map from each voxel of `prep`'s original grid (the input grid, or a `box` of it) to 1 + the flat
    index of its nearest working-grid voxel (0 outside the working grid): the nearest-neighbour restore
    of an integer map, computed once per pass, so carrying each member's labels is a gather instead
    of a resampling."""
    index = np.arange(1, prep.array[0].size + 1, dtype=np.int32).reshape(prep.array.shape[1:])
    return restore(index[None], prep, box=box)[0]


def carry_labels(work_label: np.ndarray, index_map: np.ndarray) -> np.ndarray:
    """Working-grid uint8 labels -> the grid of `nearest_index_map` (0 outside)."""
    return np.concatenate([np.zeros(1, np.uint8), work_label.ravel()])[index_map]


def needed_slices(prep: Prepared, keep: boxes.Box | None) -> slice:
    """The working-grid slices (axis k) that restoring onto the box `keep` of the input grid can read:
    `keep`'s voxels mapped into the working grid (mricore.box.footprint, the other way round, with its
    voxel of slack), one more slice each side for linear interpolation; every slice without a box."""
    k = prep.array.shape[3]
    if keep is None or boxes.is_empty(keep):
        return slice(0, k)
    z = boxes.footprint(prep.original_affine, [s.start for s in keep], [s.stop for s in keep], prep.affine,
                        prep.array.shape[1:])[2]
    return slice(max(z.start - 1, 0), min(z.stop + 1, k))


def member_probabilities(segmenter, array: np.ndarray, zs: slice, tta_flip: bool, whole_slice) -> np.ndarray:
    """A member's (3, I, J, K) probabilities on the working grid, computed on the slices `zs` (with its
    context neighbours) when it is a 2D/2.5D network, background (BACKGROUND) on the others."""
    k, cfg = array.shape[3], segmenter.model_cfg
    if cfg.spatial_dims != 2 or (zs.start == 0 and zs.stop == k):
        return segmenter.probabilities(array, tta_flip=tta_flip, whole_slice=whole_slice)
    lo, hi = max(zs.start - cfg.context, 0), min(zs.stop + cfg.context, k)
    part = segmenter.probabilities(array[..., lo:hi], tta_flip=tta_flip, whole_slice=whole_slice)
    out = np.empty((len(BACKGROUND),) + array.shape[1:], np.float32)
    out[:] = np.asarray(BACKGROUND, np.float32)[:, None, None, None]
    out[..., zs] = part[..., zs.start - lo:zs.stop - lo]
    return out


def work_box(passes: list[Pass], keep: boxes.Box | None) -> boxes.Box:
    """The input-grid voxels some pass's working grid reaches, within the locator's margin box `keep`."""
    box = boxes.union([footprint(p.prep) for p in passes])
    return box if keep is None else boxes.intersection(box, keep)


def restore_passes(passes: list[Pass], n_members: int, box: boxes.Box) -> tuple[combine.WeightedSum, np.ndarray]:
    """Step "restore": every pass's weighted sum restored onto `box` of the input grid (linear) and its
    member labels carried there (nearest) -> (the running sum on the box, (M, *box shape) uint8
    member label maps, 0 where a member's working grid does not reach)."""
    acc = combine.WeightedSum()
    member_labels = np.zeros((n_members,) + boxes.shape(box), np.uint8)
    for one in passes:
        # Outside the working grid every member says background with probability 1 (BACKGROUND).
        fill = [float(one.work.weight[0]) * v for v in BACKGROUND]
        acc.add_sum(restore(one.work.total, one.prep, fill=fill, box=box), one.work.weight)
        if one.labels:
            to_box = nearest_index_map(one.prep, box)
            for i, work_label in one.labels.items():
                member_labels[i] = carry_labels(work_label, to_box)
    return acc, member_labels
