"""Endorectal coil, noise and field strength, measured: the numbers behind the coil augmentations.

For each study, through the gland's centroid and along the patient's anterior-posterior axis (taken
from the affine: posterior is -y in the RAS world of the NIfTI affine, +y in LPS; no axis order is
assumed), it samples two profiles at 1 mm steps, each the median over a 10 mm band left-right:
  - the image, divided by the gland's median intensity (`profile`);
  - the N4 bias field (mricore.bias, as `preprocess.n4` fits it), as a gain relative to the field at
    the gland's anterior edge (`gain`). N4 separates the smooth receive-coil shading from anatomy.
From them: the posterior-to-anterior ratio of gland-adjacent intensity (10 mm bands just outside the
gland on the line), the same ratio inside the gland (posterior vs anterior third), the field's gain
at its posterior peak and at the gland's posterior edge (both relative to the anterior edge), and the
falloff length: the distance anterior of the peak at which the field's excess gain halves. Noise
(`noise`): sigma from the most uniform tissue (the 10th percentile of the in-plane 5x5 standard
deviation) and, where the darkest corner is Rayleigh-like air, from the air; the SNR is
segment.acquisition.tissue_level over sigma, the rule the low-SNR augmentation draws its SNR by.
Contrast: the gland's interquartile range over its median. Softness: the Gaussian sigma that the
study's in-plane voxel adds on the 0.6 mm working grid (`extra_blur_vox`).

The gland: the expert label where there is one (`wg`, else `zones` > 0, else `zones_ai` > 0), else
the bundle's prediction (WG = TZ + PZ), which is what `gland_source` records.

What the measurements set (the defaults of segment.config.AugmentConfig; its comments repeat them),
Case00 against the median of the 3 T training-like studies (Prostate158 001, 021, ProstateX-0000):
  - coil_gain [1, 4] (the excess A at the peak): the gland's posterior/anterior-third ratio, 2.14 vs
    1.04 (x2.1, A about 1.1), and the gland-adjacent posterior/anterior ratio, 2.82 vs 0.53 (x5.3, A
    about 4.3). The N4 field says 1.71 at its peak, a smooth fit's lower bound.
  - coil_falloff_mm [6, 16]: 14 mm in the N4 field (smooth: the slow end); about 6 mm in the image
    (the gland's bright posterior part, 1.9 x its median, halves its excess over the anterior gland's
    1.0 within 6 mm).
  - coil_offset_mm [0, 10]: the dark balloon of the coil lies 4-8 mm behind Case00's gland.
  - lowsnr_snr [4, 12]: Case00's air SNR 4.1 (the one Rayleigh-like background here); the training-like
    studies' tissue SNR 9.6-16.7 (12: below their median 13.1, so the noise shows).
  - field_contrast [0.6, 1]: gland IQR/median, 1.5 T Philips median 0.54 over 3 T median 0.84 = 0.64
    (three studies each, and anatomy varies: a rough figure).
  - field_blur [0, 0.45]: extra_blur_vox, 0.44 for Case00's 1.094 mm voxels, 0.18 for Philips-02's
    0.703 mm, 0 for 0.47-0.5 mm.
Caveats: Case00 was resampled (512 to 128 in-plane) by its source, which smooths its noise: its tissue
SNR (13.7) is an overestimate; its air figure is used.

    python -m bench.coil_probe --out bench/results/coil_probe.json

About 2.5 CPU-minutes for the 7 default studies on 2 cores (the bundle predicts the Philips glands;
N4 on the 704-pixel Philips-03 is the slowest step).
"""

from __future__ import annotations

import sys

import numpy as np

from bench.common import RESULTS, add_data, add_out, command, data_missing, parser, write_result

# Case00: the endorectal-coil study; the others for contrast (a 3 T surface-coil training study each
# from Prostate158 and ProstateX, and the 1.5 T Philips studies of known scanner).
DEFAULT_CASES = ["promise12/Case00", "prostate158/001", "prostate158/021", "prostatex/ProstateX-0000",
                 "philips/Philips-02", "philips/Philips-03", "philips/Philips-04"]
REACH_MM = 60.0   # profile from 60 mm anterior to 60 mm posterior of the gland centroid
BAND_MM = 5.0     # half-width of the left-right band whose median each profile point is
ADJACENT_MM = 10.0  # gland-adjacent bands just outside the gland's edges on the line
RAS_POSTERIOR = np.array([0.0, -1.0, 0.0])  # NIfTI affines map to RAS+: posterior is -y
RAS_LEFT = np.array([1.0, 0.0, 0.0])


def line_profile(array: np.ndarray, affine: np.ndarray, centre: np.ndarray, order: int) -> tuple[np.ndarray, np.ndarray]:
    """(t, values): `array` (I, J, K) sampled at centre + t * posterior + s * left (world mm), the
    median over s in [-BAND_MM, BAND_MM] at each t in [-REACH_MM, REACH_MM] (1 mm steps); NaN outside."""
    from scipy.ndimage import map_coordinates

    t = np.arange(-REACH_MM, REACH_MM + 1.0)
    s = np.arange(-BAND_MM, BAND_MM + 1.0)
    world = centre[None, None] + t[:, None, None] * RAS_POSTERIOR + s[None, :, None] * RAS_LEFT
    vox = np.linalg.solve(affine, np.c_[world.reshape(-1, 3), np.ones(world.size // 3)].T)[:3]
    vals = map_coordinates(array.astype(np.float32), vox, order=order, mode="constant", cval=np.nan)
    return t, np.nanmedian(vals.reshape(len(t), len(s)), axis=1)


def gland_edges(t: np.ndarray, inside: np.ndarray) -> tuple[float, float]:
    """(anterior, posterior) positions (mm along t) of the gland on the line."""
    where = t[inside > 0.5]
    return float(where.min()), float(where.max())


def falloff_mm(t: np.ndarray, gain: np.ndarray, front: float, back: float) -> dict:
    """The field's posterior peak (within 30 mm of the gland's posterior edge, on either side) and
    the distance anterior of it at which its excess gain over the anterior edge halves."""
    near = (t >= back - 30) & (t <= back + 30) & np.isfinite(gain)
    k = int(np.flatnonzero(near)[np.argmax(gain[near])])
    peak = float(gain[k])
    half = 1 + (peak - 1) / 2
    below = [i for i in range(k, -1, -1) if t[i] >= front - 30 and gain[i] <= half]
    return {"peak_gain": round(peak, 3), "peak_mm_behind_posterior_edge": float(t[k] - back),
            "falloff_mm": float(t[k] - t[below[0]]) if below and peak > 1 else None}


def noise(image: np.ndarray) -> dict:
    """Noise sigma two ways, and the SNR (segment.acquisition.tissue_level over sigma):
    - local: the 10th percentile, over tissue voxels, of the in-plane 5x5 standard deviation (the
      most uniform tissue, where texture adds least; a sample of 25 scatters, so it is approximate);
    - air: the darkest in-plane corner (10 % of each side, every slice), valid only where it looks like
      Rayleigh noise (std / mean within 0.4-0.65 of 0.52; often the corner is body or zero-filled)."""
    from scipy.ndimage import uniform_filter

    from segment.acquisition import TISSUE_FRACTION, tissue_level

    x = image.astype(np.float64)
    mean = uniform_filter(x, (5, 5, 1))
    local = np.sqrt(np.maximum(uniform_filter(x * x, (5, 5, 1)) - mean * mean, 0))
    tissue = x > TISSUE_FRACTION * np.percentile(x, 99)
    sigma = float(np.percentile(local[tissue], 10))
    I, J = image.shape[:2]
    a, b = max(2, I // 10), max(2, J // 10)
    air = min([image[:a, :b], image[:a, -b:], image[-a:, :b], image[-a:, -b:]], key=lambda c: float(np.median(c)))
    shape = float(air.std() / air.mean()) if air.mean() > 0 else None
    rayleigh = shape is not None and 0.4 <= shape <= 0.65
    level = tissue_level(image)
    return {"tissue_level": round(level, 2), "sigma_local": round(sigma, 3), "snr": round(level / sigma, 1),
            "air_std_over_mean": None if shape is None else round(shape, 3),
            "snr_air": round(level / (float(air.mean()) / np.sqrt(np.pi / 2)), 1) if rayleigh else None}


def extra_blur_vox(spacing: float, working: float = 0.6) -> float:
    """The Gaussian sigma (working-grid voxels) that turns a `working`-mm box voxel into a `spacing`-mm
    one (a box of width w has sigma w / sqrt(12)): the in-plane softness a coarser acquisition adds."""
    return float(np.sqrt(max(0.0, (spacing / working) ** 2 - 1) / 12))


def probe(image, gland: np.ndarray) -> dict:
    """The measurements of one study (module docstring): `image` a one-channel mricore Volume,
    `gland` a boolean (I, J, K) mask on its grid."""
    from mricore.bias import n4_log_field

    x, aff = image.array[0], image.affine
    centre = (aff @ np.r_[np.argwhere(gland).mean(0), 1.0])[:3]
    t, inside = line_profile(gland.astype(np.float32), aff, centre, order=0)
    front, back = gland_edges(t, inside)
    med = float(np.median(x[gland]))
    _, prof = line_profile(x / med, aff, centre, order=1)
    _, logf = line_profile(n4_log_field(x, image.spacing), aff, centre, order=1)
    gain = np.exp(logf - logf[np.searchsorted(t, front)])

    def band(lo, hi):
        return float(np.nanmean(prof[(t >= lo) & (t <= hi)]))

    third = (back - front) / 3
    g = x[gland]
    q25, q75 = np.percentile(g, [25, 75])
    return {"spacing_mm": [round(float(s), 3) for s in image.spacing], "gland_ap_mm": back - front,
            "gland_edges_mm": [front, back],  # anterior, posterior on the profile's t axis (0: the centroid)
            "adjacent_posterior_over_anterior": round(band(back, back + ADJACENT_MM) / band(front - ADJACENT_MM, front), 3),
            "gland_posterior_over_anterior_third": round(band(back - third, back) / band(front, front + third), 3),
            "field_gain_at_posterior_edge": round(float(gain[np.searchsorted(t, back)]), 3),
            **falloff_mm(t, gain, front, back), **noise(x),
            "gland_iqr_over_median": round(float((q75 - q25) / med), 3),
            "extra_blur_vox": round(extra_blur_vox(min(image.spacing)), 3),  # in-plane: the finest axis here
            "profile_t_mm": t[::2].tolist(), "profile": np.round(prof[::2], 3).tolist(),
            "gain": np.round(gain[::2], 3).tolist()}


def gland_of(case, predict) -> tuple[np.ndarray, str]:
    """The study's gland on its T2W grid and where it came from: an expert or AI label, else `predict`."""
    from mricore.align import resample_to
    from mricore.datasets import read_ref

    t2 = read_ref(case.images["T2W"], "T2W", case.case_id)
    for key in ("wg", "zones", "zones_ai"):
        if key in case.labels:
            lab = read_ref(case.labels[key], key, case.case_id)
            return resample_to(lab, t2).array[0] > 0, key
    return predict(case) > 0, "bundle prediction"


def bundle_predictor():
    """A function case -> the bundle's label map on the case's T2W grid (ensemble.predict as a user's run)."""
    from bench.common import BUNDLE
    from ensemble.members import read_members
    from ensemble.predict import infer_case, read_case, resolve_config, source_from_case

    cfg = resolve_config(BUNDLE / "ensemble.yaml")
    members = read_members(cfg.members)

    def predict(case):
        read = read_case(source_from_case(case), members, cfg, notify=False, accept=True)
        return infer_case(read, cfg)[1].label
    return predict


def summary(studies: dict) -> dict:
    """Case00 against the 3 T training-like studies and the 1.5 T Philips ones: the ranges the
    augmentation defaults were read from."""
    ref = [v for k, v in studies.items() if k.split("/")[0] in ("prostate158", "prostatex")]
    philips = [v for k, v in studies.items() if k.startswith("philips/")]
    coil = studies.get("promise12/Case00")

    def spread(rows, key):  # [min, median, max]
        vals = [r[key] for r in rows if r.get(key) is not None]
        return [min(vals), round(float(np.median(vals)), 3), max(vals)] if vals else None
    keys = ("adjacent_posterior_over_anterior", "gland_posterior_over_anterior_third", "peak_gain",
            "field_gain_at_posterior_edge", "falloff_mm", "snr", "snr_air", "gland_iqr_over_median", "extra_blur_vox")
    return {"coil_case00": {k: coil[k] for k in keys} if coil else None,
            "reference_3t_min_median_max": {k: spread(ref, k) for k in keys},
            "philips_1_5t_min_median_max": {k: spread(philips, k) for k in keys}}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    ap = parser(__doc__)
    ap.add_argument("--cases", nargs="+", default=DEFAULT_CASES, help="dataset/case ids (default: %(default)s)")
    add_data(ap)
    add_out(ap, RESULTS / "coil_probe.json")
    args = ap.parse_args(argv)
    if data_missing(args.data):
        return 0
    from mricore.datasets import load_dataset, read_ref

    cases = {f"{c.dataset}/{c.case_id}": c for c in load_dataset(args.data)}
    missing = [c for c in args.cases if c not in cases]
    if missing:
        print(f"error: --cases: not in {args.data}: {', '.join(missing)} (e.g. promise12/Case00)", file=sys.stderr)
        return 2
    predict, studies = None, {}
    for name in args.cases:
        case = cases[name]
        if not {"wg", "zones", "zones_ai"} & set(case.labels) and predict is None:
            predict = bundle_predictor()
        gland, source = gland_of(case, predict)
        studies[name] = {"gland_source": source,
                         **probe(read_ref(case.images["T2W"], "T2W", case.case_id), gland)}
        print(name, {k: v for k, v in studies[name].items() if not k.startswith(("profile", "gain"))}, flush=True)
    write_result({"command": command("coil_probe", argv), "summary": summary(studies), "studies": studies}, args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
