"""The platform's zone vocabulary, in one place: codes, names, the whole-gland rule, masks, the argmax
of probabilities, the largest-component rule and the colours reports draw them in.

Label maps are uint8 with 0 background, 1 transition zone / central gland (TZ), 2 peripheral zone
(PZ); the whole gland is WG = TZ ∪ PZ = label > 0, so a label map is zone-consistent by construction.
Probabilities are (3, ...) float32 in class order background, TZ, PZ.
"""

from __future__ import annotations

import numpy as np

CLASS_NAMES = ("background", "TZ", "PZ")          # class order of probabilities and label values 0, 1, 2
N_CLASSES = len(CLASS_NAMES)
LABEL_NAMES = {str(v): n for v, n in enumerate(CLASS_NAMES)}  # as model.json stores them
ZONES = ("WG", "TZ", "PZ")                          # the zones every metric and volume is given for
SELECTORS = {"WG": lambda y: y > 0, "TZ": lambda y: y == 1, "PZ": lambda y: y == 2}
COLOURS = {1: (0.96, 0.77, 0.0), 2: (0.0, 0.78, 1.0)}  # TZ yellow, PZ cyan


def masks(label: np.ndarray) -> dict[str, np.ndarray]:
    """Boolean WG, TZ, PZ masks of a zone label map; WG = TZ ∪ PZ exactly."""
    return {z: SELECTORS[z](label) for z in ZONES}


def labels_from_probabilities(prob: np.ndarray) -> np.ndarray:
    """(3, ...) background/TZ/PZ probabilities -> uint8 zone labels (argmax; ties go to the lower label)."""
    # np.argmax would build an int64 map (8 bytes a voxel); this keeps uint8 labels and one running
    # maximum, same result: a later class wins only when strictly greater.
    label = np.zeros(prob.shape[1:], np.uint8)
    best = prob[0].copy()
    for c in range(1, prob.shape[0]):
        np.copyto(label, np.uint8(c), where=prob[c] > best)
        np.maximum(best, prob[c], out=best)
    return label


def largest_component(label: np.ndarray) -> tuple[np.ndarray, dict]:
    """The map with only the largest 3D connected component of the gland (WG = label > 0; zones outside
    it -> 0, WG = TZ ∪ PZ holds before and after), and what it removed: {"components": number of gland
    components before, "removed_fraction": share of gland voxels outside the largest}. One labelling
    serves both, so the ensemble's review feature costs nothing extra."""
    from scipy import ndimage

    wg = label > 0
    if not wg.any():
        return label, {"components": 0, "removed_fraction": 0.0}
    cc, n = ndimage.label(wg)
    if n <= 1:
        return label, {"components": int(n), "removed_fraction": 0.0}
    sizes = np.bincount(cc.ravel())
    sizes[0] = 0
    stats = {"components": int(n), "removed_fraction": float(1 - sizes.max() / sizes.sum())}
    return np.where(cc == sizes.argmax(), label, 0).astype(np.uint8), stats


def keep_largest_component(label: np.ndarray) -> np.ndarray:
    """The map with only the largest gland component (see `largest_component`)."""
    return largest_component(label)[0]
