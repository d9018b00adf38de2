"""Combination of member outputs into one zone map, in float32, plus the uncertainty maps.

Axis convention: member probabilities are (M, 3, ...) float32 with classes (background, TZ, PZ);
label maps are (M, ...) uint8 with 0 background, 1 TZ, 2 PZ. WG = TZ ∪ PZ = label > 0, so every
combined *label map* is zone-consistent by construction (one label per voxel); the zone codes, masks
and argmax are mricore.zones'.

Methods (registry `METHODS` in ensemble.config):
- mean: average of probabilities (nnU-Net / MONAI ensembling); label = argmax, ties to the lower label.
- weighted: per member and per class weights w[m, c]; p_c = Σ_m w_mc p_mc / Σ_m w_mc, then renormalised
  over classes (per-class weights break the sum-to-one otherwise). Weights come from the config or
  per zone from each member's inner-validation DSC (model.json `selection`: background <- WG_mean,
  TZ <- TZ_mean, PZ <- PZ_mean). Never from the held-out `validation` block: a held-out case decides
  nothing, ensemble weights included.
- vote: majority of member label maps. Tie rule: among labels with the most votes, the one with the
  highest mean member probability wins; if that also ties (or no probabilities are given), the
  lowest label value wins (background < TZ < PZ, i.e. ties lean conservative).
- staple: SimpleITK MultiLabelSTAPLE on the member label maps; voxels STAPLE leaves undecided take the
  majority-vote label. The per-member confusion matrices it estimates are returned.
For vote and staple the probability map is the fraction of members voting for each label.
"""

from __future__ import annotations

import numpy as np

from mricore.zones import CLASS_NAMES, N_CLASSES

# model.json `selection` key (inner-validation DSC) giving each class's weight in `weighted` with weights: null.
SELECTION_KEYS = ("WG_mean", "TZ_mean", "PZ_mean")


class WeightedSum:
    """Running weighted sum of (3, ...) probability maps: memory is one map plus one sum, whatever M.

    add(prob, w): w is a scalar or (3,) per-class weight. `result()` gives the combined, renormalised
    float32 probabilities, once: it hands over its buffer (one full map less at the peak). Sums of
    several running sums (e.g. restored onto one grid) merge with `add_sum`.
    """

    def __init__(self):
        self.total: np.ndarray | None = None
        self.weight = np.zeros(N_CLASSES, np.float64)

    def add(self, prob: np.ndarray, w=1.0) -> None:
        w = np.broadcast_to(np.asarray(w, np.float64), (N_CLASSES,))
        self.add_sum(prob * w.astype(np.float32).reshape((N_CLASSES,) + (1,) * (prob.ndim - 1)), w)

    def add_sum(self, weighted_total: np.ndarray, weight) -> None:
        """Adds an already weighted sum. The first one is adopted, not copied (one full map less at the
        peak): the caller hands over `weighted_total` and must not write to it afterwards."""
        weighted_total = weighted_total.astype(np.float32, copy=False)
        if self.total is None:
            self.total = weighted_total
        else:
            self.total += weighted_total
        self.weight += np.asarray(weight, np.float64)

    def result(self) -> np.ndarray:
        if self.total is None:
            raise ValueError("nothing was added, or result() was already taken")
        if np.any(self.weight <= 0):
            raise ValueError(f"every class needs a positive total weight, got {self.weight.tolist()}")
        shape = (N_CLASSES,) + (1,) * (self.total.ndim - 1)
        p, self.total = self.total, None  # divided in place: the sum is handed out, not copied
        p /= self.weight.astype(np.float32).reshape(shape)
        p /= np.maximum(p.sum(axis=0, keepdims=True), 1e-12)
        return p


def weights_from_selection(selections: list[dict | None], names: list[str]) -> np.ndarray:
    """(M, 3) per-class weights from each member's model.json "selection" (inner-validation DSC on
    training patients; see SELECTION_KEYS).

    Raises ConfigError naming the member when a value is missing or not a positive number.
    """
    from mricore.errors import ConfigError

    out = np.zeros((len(names), N_CLASSES))
    for m, (val, name) in enumerate(zip(selections, names)):
        for c, key in enumerate(SELECTION_KEYS):
            v = (val or {}).get(key)
            if not isinstance(v, (int, float)) or not np.isfinite(v) or v <= 0:
                raise ConfigError(f"member {name}", f"weighted with weights: null needs inner-validation {key} > 0",
                                  repr(v), "train it with train.selection: inner, or give weights: [...] explicitly")
            out[m, c] = v
    return out


def vote_fractions(labels: np.ndarray) -> np.ndarray:
    """(M, ...) label maps -> (3, ...) float32 fraction of members voting for each label."""
    counts = np.stack([(labels == c).sum(axis=0) for c in range(N_CLASSES)])
    return (counts / float(len(labels))).astype(np.float32)


def majority_vote(labels: np.ndarray, tie_break: np.ndarray | None = None) -> np.ndarray:
    """(M, ...) uint8 label maps -> (...) uint8 majority label (tie rule in the module docstring).

    tie_break: optional (3, ...) mean member probabilities used only among labels tied on votes.
    """
    counts = np.stack([(labels == c).sum(axis=0) for c in range(N_CLASSES)]).astype(np.float32)
    if tie_break is not None:
        # Votes are whole numbers and 0.5 * p < 1, so probabilities only ever decide exact ties.
        counts += 0.5 * np.clip(tie_break, 0.0, 1.0)
    return np.argmax(counts, axis=0).astype(np.uint8)


def staple(labels: np.ndarray, undecided: np.ndarray | None = None) -> tuple[np.ndarray, list[dict]]:
    """SimpleITK MultiLabelSTAPLE of (M, ...) uint8 label maps -> (label map, per-member performance).

    undecided: labels for voxels STAPLE cannot decide (default: majority vote).
    Performance per member: `confusion` rows = the member's label (0, 1, 2, then "undecided"),
    columns = the estimated true label; `sensitivity` per label is its diagonal.
    """
    from mricore.dicom import sitk_module

    sitk = sitk_module()  # ITK prints no WARNING lines of its own

    flt = sitk.MultiLabelSTAPLEImageFilter()
    flt.SetLabelForUndecidedPixels(255)
    images = [sitk.GetImageFromArray(np.ascontiguousarray(m.astype(np.uint8))) for m in labels]
    out = sitk.GetArrayFromImage(flt.Execute(*images)).astype(np.uint8)
    undecided_mask = out == 255
    if undecided_mask.any():
        fill = majority_vote(labels) if undecided is None else undecided
        out[undecided_mask] = fill[undecided_mask]
    n_labels = int(max(int(m.max()) for m in labels)) + 1
    perf = []
    for m in range(len(labels)):
        cm = np.array(flt.GetConfusionMatrix(m), dtype=float).reshape(n_labels + 1, n_labels)
        perf.append({"confusion": cm.round(4).tolist(),
                     "sensitivity": {CLASS_NAMES[c]: round(float(cm[c, c]), 4) for c in range(n_labels)}})
    return out, perf


def entropy(prob: np.ndarray) -> np.ndarray:
    """(3, ...) probabilities -> (...) float32 Shannon entropy normalised to [0, 1] (divided by ln 3)."""
    h = np.zeros(prob.shape[1:], np.float32)
    for p in prob:  # one class at a time: two single-channel temporaries, not three-channel ones
        h -= p * np.log(np.clip(p, 1e-12, 1.0))
    h /= np.float32(np.log(N_CLASSES))
    return np.clip(h, 0.0, 1.0, out=h)


def disagreement(member_labels: np.ndarray, label: np.ndarray) -> np.ndarray:
    """(M, ...) member labels and (...) combined label -> (...) float32 fraction of members disagreeing."""
    count = np.zeros(label.shape, np.uint16)
    for m in member_labels:  # one member at a time: no (M, ...) boolean array
        count += m != label
    return count.astype(np.float32) / np.float32(max(len(member_labels), 1))


def gland_region(label: np.ndarray, member_labels: np.ndarray) -> np.ndarray:
    """Where per-case uncertainty is averaged: voxels any member or the combined map calls gland.
    Background far from the gland is left out because it is confidently empty in every case and would
    drown the signal."""
    region = label > 0
    for m in member_labels:
        region |= m > 0
    return region
