"""Quality checks around a zone map: is the input an axial T2W study, is the output a plausible gland,
and one review verdict (`ok` / `review` / `reject`) with its reasons.

Every check is a `Check`: its value, the expected range in words, a verdict and an `excess` (the value
measured against its limit: above 1 means outside the range; 0 when the check does not apply). The
case's verdict is the worst of its checks; the failure score for ranking cases (and for the
failure-detection ROC of bench/qa_bench.py) is the largest excess over the output checks and the input
checks that reject (`failure_score`).

Input checks (`input_checks`, on the T2W channel, before any network runs):
- geometry from the affine: slice normal within `max_tilt_deg` of the superior axis (else a sagittal or
  coronal series: reject), in-plane spacing (a 1.6-2 mm grid is a diffusion/ADC grid: reject), slice
  spacing, in-plane field of view, through-plane coverage (a slab thinner than `slab_mm` is not a whole
  study: the gland-volume checks do not apply to it);
- content, judged on the voxels and never on the file name (values measured on the normal cases in
  bench/qa_bench.py): `dark_fraction`, the share of body voxels darker than half the body median
  (muscle is dark on T2W: 0.18-0.27 on the Siemens and Philips studies here; ADC and DWI 0-0.16);
  `sharpness`, median |lag-1 difference| / median |lag-2 difference| in-plane (0.5 for a linearly
  interpolated image such as ADC/DWI on a T2 grid, 0.57-0.78 on T2W); both low together: reject;
  `noise`, median |lag-1 difference| / body IQR; `nonuniformity`, the larger ratio of mean body
  intensity between left and right halves (a bias field; anatomy is left-right symmetric).
Output checks (`output_checks`, on the combined map on the input grid, in mm from the affine): gland
volume and TZ share against a reference distribution of expert maps (mricore.gland_reference), gland
removed by the largest-component rule, empty slices inside the gland, holes, distance from the gland
to the in-plane border, PZ on mid-gland slices, PZ posterior to TZ, PZ brighter than TZ on the T2W
(an image read upside down, or not a T2W, breaks it), member disagreement and normalised entropy in
the gland region.
Limits: `ReviewConfig` (mricore.review_limits); a check whose fitted limit is not given reports n/a.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from .gland_reference import gland_statistics, load_reference
from .review_limits import NOT_CALIBRATED, ReviewConfig

VERDICTS = ("ok", "review", "reject")


@dataclass(frozen=True)
class Check:
    name: str
    value: float | None
    expected: str
    verdict: str          # ok | review | reject | n/a
    excess: float         # value against its limit: > 1 outside; 0 when not applicable
    stage: str = "output"  # input | output

    def reason(self) -> str:
        v = "n/a" if self.value is None else f"{self.value:.4g}"
        return f"{self.name} {v} (expected {self.expected})"


def _check(name, value, limit, kind: str, fail: str = "review", unit: str = "") -> Check:
    """kind: 'max' (value <= limit), 'min' (value >= limit). A fitted limit that is None (not
    calibrated, mricore.review_limits) gives n/a: the value is shown and decides nothing."""
    value = float(value)
    if limit is None:
        return Check(name, round(value, 4), NOT_CALIBRATED, "n/a", 0.0)
    if kind == "max":
        excess = value / limit if limit > 0 else (np.inf if value > 0 else 0.0)
        ok, expected = value <= limit, f"<= {limit:g}{unit}"
    else:
        excess = limit / value if value > 0 else (np.inf if limit > 0 else 0.0)
        ok, expected = value >= limit, f">= {limit:g}{unit}"
    return Check(name, round(value, 4), expected, "ok" if ok else fail, round(float(min(excess, 99.0)), 4))


def _range(name, value, lo, hi, unit: str = "") -> Check:
    value = float(value)
    excess = max(lo / value if value > 0 else 99.0, value / hi)
    return Check(name, round(value, 4), f"{lo:.3g}-{hi:.3g}{unit}", "ok" if lo <= value <= hi else "review",
                 round(float(min(excess, 99.0)), 4))


def _na(name, why: str) -> Check:
    return Check(name, None, why, "n/a", 0.0)


def slice_axis(affine: np.ndarray) -> int:
    """The voxel axis most nearly along superior-inferior (the through-plane axis of an axial study)."""
    cosines = np.abs(affine[:3, :3] / np.linalg.norm(affine[:3, :3], axis=0))
    return int(np.argmax(cosines[2]))


def through_plane_mm(affine: np.ndarray, shape) -> float:
    k = _thickest(affine)
    return float(shape[k] * np.linalg.norm(affine[:3, k]))


def _thickest(affine: np.ndarray) -> int:
    """The acquisition's slice axis: the coarsest voxel axis (the last one when spacings tie)."""
    sp = np.round(np.linalg.norm(affine[:3, :3], axis=0), 3)
    return int(len(sp) - 1 - np.argmax(sp[::-1]))


# ----------------------------------------------------------------------------- input

def content_features(x: np.ndarray, affine: np.ndarray) -> dict:
    """Intensity statistics of one (I, J, K) image (module docstring)."""
    x = np.asarray(x, np.float32)
    k = _thickest(affine)
    x = np.moveaxis(x, k, 2)                      # in-plane axes first
    aff = affine[:, [a for a in range(3) if a != k] + [k, 3]]
    hi = float(np.percentile(x, 99.5))
    body = x > 0.1 * hi
    if hi <= 0 or body.sum() < 100:
        return {"dark_fraction": 0.0, "sharpness": 0.0, "noise": 0.0, "nonuniformity": 1.0}
    vals = x[body]  # a copy: the order statistics below may reorder it (overwrite_input), the values stay
    med = float(np.median(vals, overwrite_input=True))
    q25, q75 = np.percentile(vals, [25, 75], overwrite_input=True)
    d1, d2 = [], []
    for ax in (0, 1):
        a = np.moveaxis(x, ax, 0)
        b = np.moveaxis(body, ax, 0)
        d1.append(np.abs(a[1:] - a[:-1])[b[1:]])
        d2.append(np.abs(a[2:] - a[:-2])[b[2:]])
    # Each median once, partitioning the concatenated copy in place (the same values, a third less time).
    step1 = np.median(np.concatenate(d1), overwrite_input=True)  # float32, as the ratios below were computed
    step2 = np.median(np.concatenate(d2), overwrite_input=True)
    # Left-right halves in patient space: the in-plane axis most along x (RAS), split at the body centre.
    lr = int(np.argmax(np.abs(aff[0, :2])))
    other = tuple(a for a in range(3) if a != lr)
    count = body.sum(axis=other).astype(np.float64)          # body voxels per position along lr
    total = np.where(body, x, 0).sum(axis=other, dtype=np.float64)
    pos = np.arange(x.shape[lr])
    left = pos < (pos * count).sum() / count.sum()
    means = [total[m].sum() / max(count[m].sum(), 1.0) for m in (left, ~left)]
    ratio = float(means[0] / means[1]) if min(means) > 0 else 99.0
    return {"dark_fraction": float((vals < 0.5 * med).mean()),
            "sharpness": float(step1 / max(float(step2), 1e-6)),
            "noise": float(step1 / max(float(q75 - q25), 1e-6)),
            "nonuniformity": max(ratio, 1.0 / ratio)}


def input_features(image: np.ndarray, affine: np.ndarray) -> dict:
    """What the input checks look at, for one T2W (I, J, K) image and its affine (module docstring)."""
    sp = np.linalg.norm(affine[:3, :3], axis=0)
    k = _thickest(affine)
    normal = affine[:3, k] / sp[k]
    inplane = [a for a in range(3) if a != k]
    return {"slice_tilt_deg": float(np.degrees(np.arccos(min(1.0, abs(normal[2]))))),
            "inplane_mm": float(max(sp[inplane])), "slice_mm": float(sp[k]),
            "fov_mm": float(min(image.shape[a] * sp[a] for a in inplane)),
            "coverage_mm": through_plane_mm(affine, image.shape), **content_features(image, affine)}


def input_checks(f: dict, cfg: ReviewConfig) -> list[Check]:
    """The input features `f` (input_features) against the limits of `cfg`."""
    return [replace(c, stage="input") for c in _input_checks(f, cfg)]


def _input_checks(f: dict, cfg: ReviewConfig) -> list[Check]:
    checks = [_check("slice_tilt_deg", f["slice_tilt_deg"], cfg.max_tilt_deg, "max", "reject", " deg (axial)"),
              _check("inplane_mm", f["inplane_mm"], cfg.max_inplane_mm, "max", "reject", " mm"),
              _check("slice_mm", f["slice_mm"], cfg.max_slice_mm, "max", "review", " mm"),
              _check("fov_mm", f["fov_mm"], cfg.min_fov_mm, "min", "review", " mm"),
              Check("coverage_mm", round(f["coverage_mm"], 2), f">= {cfg.slab_mm:g} mm for a whole study; a slab "
                    "skips the gland-volume checks", "ok", 0.0)]
    dark = _check("dark_fraction", f["dark_fraction"], cfg.min_dark_fraction, "min")
    sharp = _check("sharpness", f["sharpness"], cfg.min_sharpness, "min")
    if dark.verdict == sharp.verdict == "review":  # both: the contrast and texture of ADC/DWI
        dark = Check(dark.name, dark.value, dark.expected + " on T2W", "reject", dark.excess)
        sharp = Check(sharp.name, sharp.value, sharp.expected + " on T2W", "reject", sharp.excess)
    return checks + [dark, sharp, _check("noise", f["noise"], cfg.max_noise, "max"),
                     _check("nonuniformity", f["nonuniformity"], cfg.max_nonuniformity, "max")]


# ----------------------------------------------------------------------------- output

def _world_centroid(mask: np.ndarray, affine: np.ndarray) -> np.ndarray:
    idx = np.argwhere(mask).mean(axis=0)
    return affine[:3, :3] @ idx + affine[:3, 3]


def output_features(label: np.ndarray, affine: np.ndarray, *, entropy: float, disagreement: float,
                    removed_fraction: float = 0.0, slab_mm: float = 20.0, t2w: np.ndarray | None = None) -> dict:
    """What the output checks look at, for a combined zone map (I, J, K) on the input grid, in mm from the
    affine (module docstring); `t2w` is the T2W image on that grid. Values that do not exist for this map
    (no gland, no PZ, no T2W) are None."""
    from scipy import ndimage

    wg = label > 0
    f = {"disagreement": float(disagreement), "entropy": float(entropy), "removed_fraction": float(removed_fraction),
         "slab": through_plane_mm(affine, label.shape) < slab_mm, "empty": not wg.any()}
    if f["empty"]:
        return f
    f.update({k: float(v) for k, v in gland_statistics(label, affine).items()})
    k = slice_axis(affine)
    per_slice = np.moveaxis(wg, k, 0)
    present = np.flatnonzero(per_slice.any(axis=(1, 2)))
    f["slice_gaps"] = int(present[-1] - present[0] + 1 - len(present))
    filled = sum(int(ndimage.binary_fill_holes(s).sum()) for s in per_slice[present])
    f["hole_fraction"] = float(1 - per_slice.sum() / max(filled, 1))
    sp = np.linalg.norm(affine[:3, :3], axis=0)
    idx = np.argwhere(wg)
    f["border_mm"] = float(min(min(idx[:, a].min(), label.shape[a] - 1 - idx[:, a].max()) * sp[a]
                               for a in range(3) if a != k))
    third = max(1, len(present) // 3)
    mid = np.moveaxis(label == 2, k, 0)[present[third:len(present) - third] if len(present) >= 3 else present]
    f["pz_midgland"] = float(mid.any(axis=(1, 2)).mean())
    f["pz_posterior_mm"] = f["pz_tz_intensity"] = None
    if (label == 2).any() and (label == 1).any():
        if t2w is not None:  # PZ is the bright zone on T2W; an upside-down or wrong image breaks that
            f["pz_tz_intensity"] = float(np.median(t2w[label == 2]) / max(float(np.median(t2w[label == 1])), 1e-6))
        # RAS: +y is anterior, so the posterior offset of PZ is TZ_y - PZ_y.
        f["pz_posterior_mm"] = float(_world_centroid(label == 1, affine)[1] - _world_centroid(label == 2, affine)[1])
    return f


def output_checks(f: dict, cfg: ReviewConfig, reference: dict | None = None) -> list[Check]:
    """The output features `f` (output_features) against the limits of `cfg` and the reference maps."""
    checks = [_check("disagreement", f["disagreement"], cfg.max_disagreement, "max"),
              _check("entropy", f["entropy"], cfg.max_entropy, "max")]
    if f["empty"]:
        return checks + [Check("gland_ml", 0.0, "a gland", "review", 99.0)]
    if f["slab"]:
        checks += [_na("gland_ml", "a slab: partial gland"), _na("tz_share", "a slab: partial gland"),
                   _na("pz_midgland", "a slab: partial gland")]
    else:
        ref = reference or load_reference()
        vols = [m["WG_ml"] for m in ref["maps"]]
        shares = [m["TZ_share"] for m in ref["maps"]]
        checks += [_range("gland_ml", f["WG_ml"], min(vols) / cfg.volume_margin, max(vols) * cfg.volume_margin, " mL"),
                   _range("tz_share", max(f["TZ_share"], 1e-3), max(min(shares) - cfg.tz_share_margin, 1e-3),
                          min(max(shares) + cfg.tz_share_margin, 1.0)),
                   _check("pz_midgland", f["pz_midgland"], cfg.min_pz_midgland, "min")]
    gaps = f["slice_gaps"]
    checks += [_check("removed_fraction", f["removed_fraction"], cfg.max_removed_fraction, "max"),
               Check("slice_gaps", gaps, f"<= {cfg.max_slice_gaps}", "ok" if gaps <= cfg.max_slice_gaps else "review",
                     round((gaps + 1) / (cfg.max_slice_gaps + 1), 4)),
               _check("hole_fraction", f["hole_fraction"], cfg.max_hole_fraction, "max"),
               _check("border_mm", f["border_mm"], cfg.min_border_mm, "min", unit=" mm") if f["border_mm"] > 0 else
               Check("border_mm", 0.0, f">= {cfg.min_border_mm:g} mm", "review", 99.0)]
    post = f["pz_posterior_mm"]
    if post is None:
        checks.append(Check("pz_posterior_mm", None, "both TZ and PZ present", "review", 2.0))
    else:
        excess = 1.0 + (cfg.min_pz_posterior_mm - post) / 10.0
        checks.append(Check("pz_posterior_mm", round(post, 2), f">= {cfg.min_pz_posterior_mm:g} mm",
                            "ok" if post >= cfg.min_pz_posterior_mm else "review", round(max(excess, 0.0), 4)))
    if f.get("pz_tz_intensity") is not None:
        checks.append(_check("pz_tz_intensity", f["pz_tz_intensity"], cfg.min_pz_tz_intensity, "min"))
    return checks


def failure_score(checks: list[Check]) -> float:
    """How likely the map is wrong: the largest excess over the output checks and the input checks that
    reject. Input checks that only ask for review (noise, bias field, thick slices, a small field of
    view) say the study is out of specification, not that its map failed: many such studies are still
    segmented well, so they set the verdict but not this ranking (bench/qa_bench.py, README)."""
    return float(max((c.excess for c in checks if c.stage == "output" or c.verdict == "reject"), default=0.0))


def verdict(checks: list[Check], features: dict | None = None) -> dict:
    """The worst verdict of the checks, its reasons, the failure score, every check and the features
    they looked at (so other limits can be applied later, as bench/qa_bench.py does)."""
    worst = max((c.verdict for c in checks if c.verdict in VERDICTS), key=VERDICTS.index, default="ok")
    return {"verdict": worst,
            "reasons": [c.reason() for c in checks if c.verdict in ("review", "reject")],
            "score": round(failure_score(checks), 4),
            "score_definition": "largest value against its limit (> 1: outside) over the output checks and "
                                "the rejecting input checks",
            "checks": [{"name": c.name, "value": c.value, "expected": c.expected, "verdict": c.verdict,
                        "excess": c.excess, "stage": c.stage} for c in checks],
            "features": {k: (round(v, 5) if isinstance(v, float) else v) for k, v in (features or {}).items()}}


def merge(*reviews: dict) -> dict:
    """One verdict from the input and output reviews."""
    return verdict([Check(**c) for r in reviews for c in r["checks"]],
                   {k: v for r in reviews for k, v in r.get("features", {}).items()})
