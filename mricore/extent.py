"""Where along the gland a zone map is right: DSC in the apex, mid-gland and base thirds, and the error
of its through-plane extent at each end, in millimetres.

A mean DSC hides where the error sits; on these studies it sits at the ends: the most inferior slices
(the apex) are often left empty and the most superior (the base) over-filled, which 2D members see
least. So each zone is also scored per third of the reference gland along the superior axis:

- the reference whole gland's slices (along the voxel axis nearest superior-inferior, from the affine:
  never an assumed axis order) are split into three runs of equal count, apex = the most inferior run
  (smallest world superior coordinate), base = the most superior; a slab of fewer than 3 slices gets
  no thirds (NaN);
- `dsc_<third>`: the zone's DSC on those slices only (whole slices, so a false positive beside the
  gland on an apex slice counts), under mricore.metrics' empty-mask rule (NaN when both are empty);
- `apex_error_mm`, `base_error_mm`: |prediction's end - reference's end| along the superior axis, in
  mm, from the centres of the last slices holding the zone (NaN when either map lacks the zone). A
  prediction that stops short of the apex and one that runs past it both count.
"""

from __future__ import annotations

import numpy as np

from .metrics import dice
from .review import slice_axis
from .zones import SELECTORS

THIRDS = ("apex", "mid", "base")
METRICS = tuple(f"dsc_{t}" for t in THIRDS) + ("apex_error_mm", "base_error_mm")


def superior_mm(affine: np.ndarray, shape) -> tuple[int, np.ndarray]:
    """(slice axis, the world superior coordinate in mm of each slice's centre along it)."""
    axis = slice_axis(affine)
    centre = (np.asarray(shape[:3], float) - 1) / 2
    idx = np.repeat(centre[None], shape[axis], 0)
    idx[:, axis] = np.arange(shape[axis])
    return axis, (affine[:3, :3] @ idx.T + affine[:3, 3:4])[2]


def _slices_with(mask: np.ndarray, axis: int) -> np.ndarray:
    return np.flatnonzero(np.moveaxis(mask, axis, 0).reshape(mask.shape[axis], -1).any(1))


def thirds(ref_gland: np.ndarray, affine: np.ndarray) -> dict[str, np.ndarray]:
    """{apex, mid, base: slice indices along the slice axis} of the reference gland (module docstring);
    {} for fewer than 3 gland slices."""
    axis, z = superior_mm(affine, ref_gland.shape)
    held = _slices_with(ref_gland, axis)
    if len(held) < 3:
        return {}
    ordered = held[np.argsort(z[held], kind="stable")]  # inferior to superior
    return dict(zip(THIRDS, np.array_split(ordered, 3)))


def extent_errors_mm(pred: np.ndarray, ref: np.ndarray, affine: np.ndarray) -> dict[str, float]:
    """{apex_error_mm, base_error_mm} of one zone's masks (module docstring)."""
    axis, z = superior_mm(affine, ref.shape)
    p, r = _slices_with(pred, axis), _slices_with(ref, axis)
    if not len(p) or not len(r):
        return {"apex_error_mm": float("nan"), "base_error_mm": float("nan")}
    return {"apex_error_mm": float(abs(z[p].min() - z[r].min())),
            "base_error_mm": float(abs(z[p].max() - z[r].max()))}


def extent_metrics(pred: np.ndarray, ref: np.ndarray, affine: np.ndarray) -> dict[str, dict[str, float]]:
    """{zone: {dsc_apex, dsc_mid, dsc_base, apex_error_mm, base_error_mm}} of two zone label maps
    (0 background, 1 TZ, 2 PZ) on one grid with its voxel-to-world `affine`."""
    pred, ref = np.asarray(pred), np.asarray(ref)
    parts = thirds(ref > 0, affine)
    axis = slice_axis(affine)
    out = {}
    for zone, select in SELECTORS.items():
        p, r = select(pred), select(ref)
        m = {f"dsc_{t}": float(dice(np.take(p, parts[t], axis), np.take(r, parts[t], axis))) if parts
             else float("nan") for t in THIRDS}
        out[zone] = {**m, **extent_errors_mm(p, r, affine)}
    return out


def scored(pred: np.ndarray, ref: np.ndarray, affine: np.ndarray) -> dict[str, dict[str, float]]:
    """Every per-zone metric an evaluation reports: mricore.metrics.zone_metrics (overlap and distances,
    spacing from `affine`) and the thirds and extent errors above, {zone: {metric: value}}."""
    from .metrics import zone_metrics

    spacing = np.linalg.norm(np.asarray(affine)[:3, :3], axis=0)
    ends = extent_metrics(pred, ref, affine)
    return {zone: {**m, **ends[zone]} for zone, m in zone_metrics(pred, ref, spacing).items()}
