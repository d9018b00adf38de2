"""Run the members of an ensemble on one image and combine them on the image's own grid.

Cost model (what bench/ensemble_bench.py measures):
- the image is read and aligned once (by the caller), and preprocessed once per distinct
  PreprocessSpec (`PreprocessSpec.key()`), never once per member;
- members are loaded once, before the input is read (ensemble.members.read_members), and run one
  after another; each member's probabilities are added to a running
  weighted sum on the working grid of its spec, then dropped, so peak memory is about one member plus
  the sums plus one uint8 label map per member;
- each spec group's weighted sum is restored onto the input grid once. Restoring is linear
  interpolation, so restoring the sum equals summing the restored members: the combination is the
  one on the input grid, in float32, at the cost of one restore per spec instead of one per member.
Two stages (`EnsembleConfig.locator`): a coarse segmenter finds the gland on the whole field of view
first; members whose spec crops around the gland (crop_centre "gland") are centred on its bounding
box, and everything farther than `locator_margin_mm` from that box is background. With `n4`, the T2W
channel is bias-corrected (mricore.bias) before both stages; members whose spec says `n4` (trained on
corrected images) share one correction per case either way.
Multi-scale test-time augmentation (`tta_scales`, off by default): every member also sees the image
with its in-plane voxel size times each factor (mricore.volume.Volume.inplane_scaled: same voxels, so
its gland looks that much smaller or larger) and the probabilities are averaged over the factors on
the input's own voxels; member label maps come from factor 1.
Member label maps (for vote, STAPLE and disagreement) are each member's argmax on its working grid,
carried to the input grid with nearest neighbour (masks are never interpolated).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field, replace

import numpy as np

from mricore import zones
from mricore.align import fill_outside_box
from mricore.bias import bias_corrected
from mricore.preprocess import PreprocessSpec, preprocess, restore
from mricore.results import mask_volume_ml, zone_volumes_ml
from mricore.review import output_checks, output_features, verdict
from mricore.timing import Timer
from mricore.volume import Volume
from segment.segmenter import BACKGROUND

from . import combine
from .config import EnsembleConfig
from .members import Member, read_locator


@dataclass
class EnsembleResult:
    """Outputs on the input grid (I, J, K): zones uint8, combined probabilities (3, ...) float32,
    normalised entropy and member disagreement float32, and the sidecar facts in `info`."""

    label: np.ndarray
    prob: np.ndarray
    entropy: np.ndarray
    disagreement: np.ndarray
    member_labels: np.ndarray          # (M, I, J, K) uint8, members in `info["members_used"]` order
    info: dict = field(default_factory=dict)


def member_weights(cfg: EnsembleConfig, used: list[Member]) -> np.ndarray:
    """(M, 3) per-class weights of the members that run (skipped members' weights are dropped)."""
    if cfg.method != "weighted":
        return np.ones((len(used), zones.N_CLASSES))
    if cfg.weights is None:
        return combine.weights_from_selection([m.meta.selection for m in used], [str(m.path) for m in used])
    by_path = {str(p): w for p, w in zip(cfg.members, cfg.weights)}
    w = np.array([by_path.get(str(m.path), 1.0) for m in used], dtype=np.float64)
    if w.sum() <= 0:
        from mricore.errors import ConfigError

        raise ConfigError("weights", "the members that can run all have weight 0", w.tolist(),
                          "give a positive weight to at least one usable member")
    return np.repeat(w[:, None], zones.N_CLASSES, axis=1)


def nearest_index_map(prep) -> np.ndarray:
    """(I, J, K) int32 map from each input-grid voxel to 1 + the flat index of its nearest working-grid
    voxel (0 outside the working grid): the nearest-neighbour restore of an integer map, computed once
    per spec, so carrying each member's labels onto the input grid is a gather instead of a resampling."""
    index = np.arange(1, prep.array[0].size + 1, dtype=np.int32).reshape(prep.array.shape[1:])
    return restore(index[None], prep)[0]


def carry_labels(work_label: np.ndarray, index_map: np.ndarray) -> np.ndarray:
    """Working-grid uint8 labels -> input grid through `nearest_index_map` (0 outside)."""
    return np.concatenate([np.zeros(1, np.uint8), work_label.ravel()])[index_map]


def locate(image: Volume, cfg: EnsembleConfig) -> tuple[np.ndarray | None, list[np.ndarray] | None, dict]:
    """Stage one: the locator's largest gland component on the input grid -> (its bounding box centre
    in world mm, the box grown by `locator_margin_mm` as one boolean vector per axis (None without a
    margin), facts); (None, None, facts) when there is no locator, it lacks a channel of the input, or
    it finds no gland (one stage then)."""
    if not cfg.locator:
        return None, None, {"used": False}
    loc = read_locator(str(cfg.locator))
    if any(c not in image.channels for c in loc.channels):
        return None, None, {"used": False, "reason": f"locator needs {', '.join(loc.channels)}"}
    # Its largest gland component on its own coarse grid, carried to the input grid as one uint8 map
    # (nearest): restoring its three probability maps onto a large input grid would cost more than it.
    prep = preprocess(image, loc.spec)
    work = zones.keep_largest_component(zones.labels_from_probabilities(loc.segmenter.probabilities(prep.array)))
    gland = restore((work > 0).astype(np.uint8)[None], prep)[0] > 0
    if not gland.any():
        return None, None, {"used": False, "reason": "the locator found no gland"}
    idx = np.argwhere(gland)
    lo, hi = idx.min(0), idx.max(0)
    keep = None
    if cfg.locator_margin_mm is not None:  # the grown box, one boolean vector per axis
        grow = np.ceil(cfg.locator_margin_mm / np.asarray(image.spacing)).astype(int)
        keep = [(np.arange(n) >= a - g) & (np.arange(n) <= b + g) for n, a, b, g in zip(image.shape, lo, hi, grow)]
    centre = (image.affine @ np.r_[(lo + hi) / 2.0, 1])[:3]
    return centre, keep, {"used": True, "model": loc.name, "centre_mm": [round(float(v), 2) for v in centre],
                          "gland_ml": mask_volume_ml(gland, image.voxel_volume_ml),
                          "margin_mm": cfg.locator_margin_mm}


# Stages of `info["timings_s"]`, in this order; "network" holds seconds per member name.
TIMED_STAGES = ("n4", "locator", "preprocess", "network", "restore", "combine", "postprocess")
UNCERTAINTY_DEFINITION = ("score: mean normalised entropy (0..1); disagreement: mean share of members disagreeing "
                          "with the combined label; both over the voxels any member or the ensemble labels gland")


def run_ensemble(image: Volume, used: list[Member], cfg: EnsembleConfig) -> EnsembleResult:
    """Members `used` (all of whose channels `image` has) on `image`; combination by `cfg.method`.

    Steps: N4 (optional), locate, then per spec group crop and run the members and restore their sum,
    combine, review; each stage is timed into `info["timings_s"]` (TIMED_STAGES)."""
    timer = Timer(*TIMED_STAGES)
    weights = member_weights(cfg, used)
    sources = Sources(image)
    if cfg.n4 and "T2W" in image.channels:
        with timer("n4"):
            image = sources.image = sources.corrected = bias_corrected(image, "T2W")
    with timer("locator"):
        centre, keep, located = locate(image, cfg)
    groups = spec_groups(used)
    total, member_labels = run_members(sources, used, weights, groups, centre, cfg, timer)
    with timer("combine"):
        label, prob, staple_perf = combine_members(total, member_labels, keep, cfg.method)
    del total
    with timer("postprocess"):
        label, ent, dis, reviewed = review(label, prob, member_labels, image, cfg)
    info = {
        "method": cfg.method,
        "members_used": [{"member": m.name, "path": str(m.path), "channels": m.channels} for m in used],
        "weights": {m.name: dict(zip(zones.CLASS_NAMES, map(float, w))) for m, w in zip(used, weights)},
        "preprocessing_passes": len(groups),
        "locator": located,
        "volume_ml": zone_volumes_ml(label, image.voxel_volume_ml),
        **reviewed,
        "timings_s": timer.rounded(4),
    }
    if staple_perf is not None:
        info["staple_performance"] = {m.name: p for m, p in zip(used, staple_perf)}
    return EnsembleResult(label, prob, ent, dis, member_labels, info)


@dataclass
class Sources:
    """The input a spec group is cropped from: `image` (N4-corrected already when the ensemble
    corrects every case) and its T2W-corrected copy, computed once per case at most."""

    image: Volume
    corrected: Volume | None = None

    def for_spec(self, spec: PreprocessSpec) -> tuple[Volume, PreprocessSpec]:
        """(volume, spec) to preprocess: a spec trained on corrected T2W (`spec.n4`) gets the shared
        corrected copy and a spec that no longer corrects."""
        if not spec.n4:
            return self.image, spec
        if self.corrected is None:
            self.corrected = bias_corrected(self.image, "T2W")
        return self.corrected, replace(spec, n4=False)


def spec_groups(used: list[Member]) -> dict[str, list[int]]:
    """Indices of `used` per distinct PreprocessSpec (`spec.key()`): one preprocessing pass each."""
    groups: dict[str, list[int]] = {}
    for i, m in enumerate(used):
        groups.setdefault(m.spec.key(), []).append(i)
    return groups


def crop(sources: Sources, spec: PreprocessSpec, centre: np.ndarray | None, scale: float):
    """Step "crop": the working-grid array of one spec group, centred on the located gland (if any),
    the input's in-plane voxel size times `scale` (multi-scale TTA; same voxels, so the anatomy is
    `scale` x its size and the results stay on the input's voxels)."""
    source, spec = sources.for_spec(spec)
    if scale != 1.0:
        unscaled, source = source, source.inplane_scaled(scale)
        centre = None if centre is None else world_on(centre, unscaled, source)
    return preprocess(source, spec, centre)


def run_members(sources: Sources, used: list[Member], weights: np.ndarray, groups: dict[str, list[int]],
                centre: np.ndarray | None, cfg: EnsembleConfig, timer: Timer) -> tuple[combine.WeightedSum, np.ndarray]:
    """Step "members": every spec group (times every TTA scale) cropped, its members run one after
    another into one weighted sum, restored onto the input grid -> (the running sum on the input grid,
    (M, I, J, K) uint8 member label maps from scale 1)."""
    acc = combine.WeightedSum()
    member_labels = np.zeros((len(used),) + sources.image.shape, np.uint8)
    for idxs, scale in itertools.product(groups.values(), cfg.tta_scales):
        with timer("preprocess"):
            prep = crop(sources, used[idxs[0]].spec, centre, scale)
        with timer("restore"):
            to_input = nearest_index_map(prep) if scale == 1.0 else None
        work = combine.WeightedSum()
        for i in idxs:
            with timer("network", used[i].name):
                prob = used[i].segmenter.probabilities(prep.array, tta_flip=cfg.tta, whole_slice=cfg.whole_slice)
            with timer("restore"):
                work.add(prob, weights[i])
                if to_input is not None:  # member label maps: each member at the input's own scale
                    member_labels[i] = carry_labels(zones.labels_from_probabilities(prob), to_input)
            del prob
        with timer("restore"):
            # Outside the working grid every member says background with probability 1 (BACKGROUND).
            acc.add_sum(restore(work.total, prep, fill=[float(work.weight[0]) * v for v in BACKGROUND]), work.weight)
    return acc, member_labels


def combine_members(total: combine.WeightedSum, member_labels: np.ndarray, keep: list[np.ndarray] | None,
                    method: str) -> tuple[np.ndarray, np.ndarray, list | None]:
    """Step "combine": (label, probabilities, STAPLE's per-member performance or None) by `method`;
    everything farther than the locator's margin (`keep`) becomes background, in `member_labels` too."""
    prob = total.result()
    if keep is not None:  # farther than the margin from the located gland: background
        fill_outside_box(prob, keep, BACKGROUND)
        fill_outside_box(member_labels, keep, [0] * len(member_labels))
    if method == "vote":
        return combine.majority_vote(member_labels, tie_break=prob), combine.vote_fractions(member_labels), None
    if method == "staple":
        label, perf = combine.staple(member_labels, undecided=combine.majority_vote(member_labels, prob))
        return label, combine.vote_fractions(member_labels), perf
    return zones.labels_from_probabilities(prob), prob, None


def review(label: np.ndarray, prob: np.ndarray, member_labels: np.ndarray, image: Volume,
           cfg: EnsembleConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict]:
    """Step "review": the largest-component rule, the uncertainty maps and the output checks ->
    (label, entropy, disagreement, info entries "uncertainty", "gland_components", "review")."""
    kept, parts = zones.largest_component(label)
    if cfg.largest_component:
        label = kept
    ent = combine.entropy(prob)
    dis = combine.disagreement(member_labels, label)
    region = combine.gland_region(label, member_labels)
    score = float(ent[region].mean()) if region.any() else 0.0
    mean_dis = float(dis[region].mean()) if region.any() else 0.0
    features = output_features(label, image.affine, entropy=score, disagreement=mean_dis,
                                  removed_fraction=parts["removed_fraction"], slab_mm=cfg.review.slab_mm,
                                  t2w=image.channel("T2W") if "T2W" in image.channels else None)
    review = verdict(output_checks(features, cfg.review), features)
    uncertainty = {"score": round(score, 4), "disagreement": round(mean_dis, 4), "definition": UNCERTAINTY_DEFINITION}
    return label, ent, dis, {"uncertainty": uncertainty, "gland_components": parts, "review": review}


def world_on(point_mm: np.ndarray, grid: Volume, other: Volume) -> np.ndarray:
    """The world point of `other` at the voxel where `point_mm` lies on `grid` (same voxel array, other
    affine: an in-plane rescaled copy)."""
    voxel = np.linalg.solve(grid.affine, np.append(point_mm, 1.0))
    return (other.affine @ voxel)[:3]
