"""Run the members of an ensemble on one image and combine them on the image's own grid.

Cost model (what bench/ensemble_bench.py measures):
- the image is read and aligned once (by the caller), and preprocessed once per distinct
  PreprocessSpec (`PreprocessSpec.key()`) and TTA scale (a "pass"), never once per member;
- members are loaded once, before the input is read (ensemble.members.read_members), and run one
  after another; each member's probabilities are added to its pass's running weighted sum on the
  pass's working grid and its argmax is kept there (uint8), then the probabilities are dropped;
- the work box (`work_box`): the box of input-grid voxels that some pass's working grid reaches when
  restored (mricore.preprocess.footprint), cut to the locator's margin. Outside it every member says
  background with probability 1 and label 0, so the combined label is 0, the probabilities (1, 0, 0),
  entropy and disagreement 0 there, known without computing them;
- each pass's weighted sum is restored onto the box once (linear) and its members' labels carried
  there (nearest); combination, largest component, entropy and disagreement run on the box, and the
  results are embedded into the input grid (mricore.box.embed).
What is exact: restoring is linear, so restoring a pass's sum equals summing its restored members; a
box voxel gets exactly the value a restore onto the whole input grid gives it; each pass is
interpolated once, straight onto the input's own voxels. The maps therefore equal those of combining
every member on the whole input grid (to float32 rounding; STAPLE, which estimates each member's
performance from the voxels it is given, is given the box), at a fraction of the cost on a large grid
(Philips-03, 704 x 704 x 30: the box is 165 x 175 x 28, a twentieth of the grid). The box of the input
grid is the common grid of passes whose working grids differ; one pass's working grid as the common
grid would interpolate the others twice (onto it, then onto the input), smoothing their probabilities
and moving their nearest-neighbour labels.
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

from mricore import box as boxes
from mricore import zones
from mricore.bias import bias_corrected
from mricore.preprocess import PreprocessSpec, footprint, preprocess, restore
from mricore.results import mask_volume_ml, zone_volumes_ml
from mricore.review import output_checks, output_features, verdict
from mricore.timing import Timer
from mricore.volume import Volume
from segment.segmenter import BACKGROUND

from . import combine
from .config import EnsembleConfig
from .members import Member, read_locator
from .passes import Pass, member_probabilities, needed_slices, restore_passes, work_box


@dataclass
class EnsembleResult:
    """Outputs on the input grid (I, J, K): zones uint8, combined probabilities (3, ...) float32,
    normalised entropy and member disagreement float32, and the sidecar facts in `info`; the member
    label maps on the work `box` (`box_member_labels`, (M, *box shape) uint8, members in
    `info["members_used"]` order)."""

    label: np.ndarray
    prob: np.ndarray
    entropy: np.ndarray
    disagreement: np.ndarray
    box_member_labels: np.ndarray
    box: boxes.Box
    info: dict = field(default_factory=dict)

    @property
    def member_labels(self) -> np.ndarray:
        """(M, I, J, K) uint8 member label maps on the input grid (0 outside the box), built when asked
        (`ensemble evaluate` scores them; prediction never needs them whole)."""
        return boxes.embed(self.box_member_labels, self.box, self.label.shape, 0)


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


def locate(image: Volume, cfg: EnsembleConfig) -> tuple[np.ndarray | None, boxes.Box | None, dict]:
    """Stage one: the locator's largest gland component on the input grid -> (its bounding box centre
    in world mm, the box grown by `locator_margin_mm` as a box of input voxels (None without a margin),
    facts); (None, None, facts) when there is no locator, it lacks a channel of the input, or it finds
    no gland (one stage then)."""
    if not cfg.locator:
        return None, None, {"used": False}
    loc = read_locator(str(cfg.locator))
    if any(c not in image.channels for c in loc.channels):
        return None, None, {"used": False, "reason": f"locator needs {', '.join(loc.channels)}"}
    # Its largest gland component on its own coarse grid, carried to the input grid (nearest) on the
    # box its gland voxels reach only: the same voxels as a whole-grid restore, at a fraction of the cost.
    prep = preprocess(image, loc.spec)
    work = zones.keep_largest_component(zones.labels_from_probabilities(loc.segmenter.probabilities(prep.array))) > 0
    found = np.argwhere(work)
    at = footprint(prep, found.min(0), found.max(0) + 1) if len(found) else (slice(0, 0),) * 3
    gland = restore(work.astype(np.uint8)[None], prep, box=at)[0] > 0
    if not gland.any():
        return None, None, {"used": False, "reason": "the locator found no gland"}
    idx = np.argwhere(gland) + [s.start for s in at]
    lo, hi = idx.min(0), idx.max(0)
    keep = None
    if cfg.locator_margin_mm is not None:  # the grown box
        grow = np.ceil(cfg.locator_margin_mm / np.asarray(image.spacing)).astype(int)
        keep = tuple(slice(int(max(a - g, 0)), int(min(b + g + 1, n))) for n, a, b, g in zip(image.shape, lo, hi, grow))
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

    Steps: N4 (optional), locate, then per pass crop and run the members, restore every pass onto the
    work box, combine, review; each stage is timed into `info["timings_s"]` (TIMED_STAGES)."""
    timer = Timer(*TIMED_STAGES)
    weights = member_weights(cfg, used)
    sources = Sources(image)
    if cfg.n4 and "T2W" in image.channels:
        with timer("n4"):
            image = sources.image = sources.corrected = bias_corrected(image, "T2W")
    with timer("locator"):
        centre, keep, located = locate(image, cfg)
    groups = spec_groups(used)
    passes = run_members(sources, used, weights, groups, centre, keep, cfg, timer)
    with timer("restore"):
        box = work_box(passes, keep)
        total, member_labels = restore_passes(passes, len(used), box)
    del passes
    with timer("combine"):
        label, prob, staple_perf = combine_members(total, member_labels, cfg.method)
    del total
    with timer("postprocess"):
        label, ent, dis, reviewed = review(label, prob, member_labels, box, image, cfg)
        prob = boxes.embed(prob, box, image.shape, BACKGROUND)
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
    return EnsembleResult(label, prob, ent, dis, member_labels, box, info)


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
                centre: np.ndarray | None, keep: boxes.Box | None, cfg: EnsembleConfig, timer: Timer) -> list[Pass]:
    """Step "members": every spec group (times every TTA scale) cropped, its members run one after
    another (on the slices that reach the locator's box `keep`) into one weighted sum on its working
    grid; member label maps from scale 1."""
    passes = []
    for idxs, scale in itertools.product(groups.values(), cfg.tta_scales):
        with timer("preprocess"):
            one = Pass(crop(sources, used[idxs[0]].spec, centre, scale))
            zs = needed_slices(one.prep, keep)
        for i in idxs:
            with timer("network", used[i].name):
                prob = member_probabilities(used[i].segmenter, one.prep.array, zs, cfg.tta, cfg.whole_slice)
            with timer("combine"):
                one.work.add(prob, weights[i])
                if scale == 1.0:  # member label maps: each member at the input's own scale
                    one.labels[i] = zones.labels_from_probabilities(prob)
            del prob
        passes.append(one)
    return passes


def combine_members(total: combine.WeightedSum, member_labels: np.ndarray,
                    method: str) -> tuple[np.ndarray, np.ndarray, list | None]:
    """Step "combine": (label, probabilities, STAPLE's per-member performance or None) by `method`, on
    the work box. STAPLE estimates each member's performance over the box (the voxels some member's
    grid reaches), not over background no member saw."""
    prob = total.result()
    if method == "vote":
        return combine.majority_vote(member_labels, tie_break=prob), combine.vote_fractions(member_labels), None
    if method == "staple":
        label, perf = combine.staple(member_labels, undecided=combine.majority_vote(member_labels, prob))
        return label, combine.vote_fractions(member_labels), perf
    return zones.labels_from_probabilities(prob), prob, None


def review(label: np.ndarray, prob: np.ndarray, member_labels: np.ndarray, box: boxes.Box, image: Volume,
           cfg: EnsembleConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict]:
    """Step "review": the largest-component rule and the uncertainty maps on the work box (outside it
    there is no gland, entropy and disagreement are 0), embedded into the input grid, and the output
    checks -> (label, entropy, disagreement on the input grid, info entries "uncertainty",
    "gland_components", "review")."""
    kept, parts = zones.largest_component(label)
    if cfg.largest_component:
        label = kept
    ent = combine.entropy(prob)
    dis = combine.disagreement(member_labels, label)
    region = combine.gland_region(label, member_labels)
    score = float(ent[region].mean()) if region.any() else 0.0
    mean_dis = float(dis[region].mean()) if region.any() else 0.0
    label, ent, dis = (boxes.embed(a, box, image.shape, 0) for a in (label, ent, dis))
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
