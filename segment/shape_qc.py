"""Quality control of shape pairs (segment.shapes): the Jacobian of the transform, the rejection rule,
and a QC sheet of every pair.

The rule (`verdict`) was fixed by looking at the distribution over all 90 label maps and at the sheet,
before any model trained on the pairs (numbers and reasons beside each constant, bench/results/
shape_pairs_qc.json for the run they came from). A pair is kept only when all hold:
- no fold: the full transform has no voxel with J <= 0 in its working box (a fold means the donor
  texture is mirrored or torn there);
- plausible stretch: at most MAX_OUT_OF_RANGE of the dilated target gland has J outside JACOBIAN_RANGE
  (J is donor volume per target volume: 0.5 doubles the donor's tissue, 2 halves it);
- the shape is reached: the warped donor zones match the target zones with at least MIN_DSC per zone
  (below it, the target zones would label texture of another zone).
"""

from __future__ import annotations

import numpy as np

# Fixed on the first run over all 89 pairs (median [p25, p75]: J outside the range on 6.9 % [3.1, 14.4] of
# the dilated gland; PZ DSC 0.74 [0.65, 0.79], TZ 0.90 [0.88, 0.92]) and its sheet, before any training.
JACOBIAN_RANGE = (0.5, 2.0)   # donor tissue at most halved or doubled in volume (1.26 x per axis)
MAX_OUT_OF_RANGE = 0.10       # the sheet: from ~11 % on, a dark-blue core (J < 0.1: the donor's centre blown
                              # up) shows in the TZ; at 2-7 % the stretch sits in small blobs at the rim
MIN_DSC = {"TZ": 0.85, "PZ": 0.65}  # near the two readers' agreement (TZ 0.887, PZ 0.776, nci_isbi manifest):
                                    # below, the sheet shows the PZ contour off the bright crescent
LEGEND = ("per pair: left, the warped donor T2W at mid-gland with the TARGET's TZ (yellow) and PZ (cyan); right, "
          "log2 J of the transform (blue: donor stretched, red: squeezed, limits +-1.5; black: fold).\n"
          "Title: TZ/PZ DSC of the warped donor zones, J range in the dilated gland, verdict (green kept, red rejected)")


def jacobian_determinant(shift: np.ndarray) -> np.ndarray:
    """det(I + grad s) of a displacement field s (3, Z, Y, X) given in voxels of an isotropic grid
    along the array axes (component c along axis c): the local volume change of x -> x + s(x)."""
    grads = [np.gradient(shift[c]) for c in range(3)]  # grads[c][a] = d s_c / d x_a
    m = np.empty(shift.shape[1:] + (3, 3), np.float64)
    for c in range(3):
        for a in range(3):
            m[..., c, a] = grads[c][a] + (1.0 if a == c else 0.0)
    return np.linalg.det(m).astype(np.float32)


def jacobian_stats(jac: np.ndarray, region: np.ndarray) -> dict:
    """min, max, median of J inside `region` (bool, same shape), the share of it with J <= 0 (folds)
    and the share outside JACOBIAN_RANGE."""
    v = jac[region]
    if v.size == 0:
        return {"min": float("nan"), "max": float("nan"), "median": float("nan"), "folds": 0.0, "out_of_range": 0.0}
    lo, hi = JACOBIAN_RANGE
    return {"min": round(float(v.min()), 4), "max": round(float(v.max()), 4), "median": round(float(np.median(v)), 4),
            "folds": float(np.mean(v <= 0)), "out_of_range": round(float(np.mean((v < lo) | (v > hi))), 4)}


def verdict(facts: dict) -> list[str]:
    """Reasons to reject a pair (empty: accepted), from ShapeFacts.to_json()."""
    reasons = []
    jac = facts["jacobian"]
    if jac["box_folds"] > 0 or jac["folds"] > 0:
        reasons.append(f"fold: J <= 0 in {jac['box_folds']:.2%} of the box")
    if jac["out_of_range"] > MAX_OUT_OF_RANGE:
        reasons.append(f"stretch: J outside {list(JACOBIAN_RANGE)} in {jac['out_of_range']:.1%} of the gland "
                       f"(limit {MAX_OUT_OF_RANGE:.0%})")
    for zone, low in MIN_DSC.items():
        got = facts["dsc"]["deformable"][zone]
        if not got >= low:  # NaN fails too
            reasons.append(f"{zone} DSC {got:.3f} < {low}")
    return reasons


def rule_text() -> str:
    lo, hi = JACOBIAN_RANGE
    return (f"reject if any J <= 0 in the working box, or J outside [{lo}, {hi}] on more than "
            f"{MAX_OUT_OF_RANGE:.0%} of the target gland dilated 5 mm, or warped-zone DSC below "
            + ", ".join(f"{z} {v}" for z, v in MIN_DSC.items()))


def summarise(records: list[dict]) -> dict:
    """Counts, and median [min, max] of the deformable DSC per zone, the Jacobian and the seconds."""
    made = [r for r in records if "dsc" in r]

    def spread(values):
        v = np.asarray([x for x in values if x is not None and np.isfinite(x)], float)
        return {"median": round(float(np.median(v)), 4), "min": round(float(v.min()), 4),
                "max": round(float(v.max()), 4), "n": int(v.size)} if v.size else {"n": 0}

    summary = {"targets_skipped": sum(r["pair_id"] is None for r in records), "pairs": len(made),
               "accepted": sum(r["accepted"] for r in made), "failed": sum("error" in r for r in records),
               "rejected_by": {}}
    for r in made:
        for reason in r["reasons"]:
            key = reason.split(":")[0].split(" DSC")[0]
            summary["rejected_by"][key] = summary["rejected_by"].get(key, 0) + 1
    for stage in ("affine", "deformable"):
        summary[f"dsc_{stage}"] = {z: spread(r["dsc"][stage][z] for r in made) for z in ("WG", "TZ", "PZ")}
    summary["jacobian"] = {k: spread(r["jacobian"][k] for r in made) for k in ("min", "max", "out_of_range")}
    summary["affine_scale"] = spread(r["affine_scale"] for r in made)
    summary["seconds_per_pair"] = spread(r["seconds"] for r in made)
    return summary


def sheet_title(r: dict) -> str:
    """A pair's heading on the sheet: id, DSC of TZ and PZ, J range, verdict."""
    d, j = r["dsc"]["deformable"], r["jacobian"]
    verdict = "OK" if r["accepted"] else "REJECT " + r["reasons"][0].split(":")[0].split(" <")[0]
    return (f"{r['pair_id']}\nTZ {d['TZ']:.2f} PZ {d['PZ']:.2f} | J {j['min']:.2f}-{j['max']:.2f} | {verdict}")


def preview(image, zones, jac_map) -> dict:
    """The mid-gland slice of a pair for the sheet: {"image", "zones", "jacobian"} 2D arrays cropped to
    the gland + 10 mm, shown with the patient's right on the left and anterior up. `image`, `zones`:
    Volumes on the target grid; `jac_map`: ShapeFacts.jacobian_map (resampled onto the slice)."""
    import nibabel as nib

    from mricore.align import resample_to

    gland = zones.array[0] > 0
    k = int(np.median(np.nonzero(gland)[2]))
    ij = np.argwhere(gland[..., k])
    pad = np.ceil(10.0 / np.asarray(zones.spacing[:2])).astype(int)
    lo = np.maximum(ij.min(0) - pad, 0)
    hi = np.minimum(ij.max(0) + pad + 1, zones.shape[:2])
    box = (slice(lo[0], hi[0]), slice(lo[1], hi[1]), k)
    affine = zones.affine.copy()
    affine[:3, 3] = zones.affine[:3, :3] @ [lo[0], lo[1], k] + zones.affine[:3, 3]
    jac = resample_to(jac_map, ((int(hi[0] - lo[0]), int(hi[1] - lo[1]), 1), affine)).array[0][..., 0]
    out = {"image": image.array[0][box], "zones": zones.array[0][box], "jacobian": jac}
    codes = nib.aff2axcodes(zones.affine)
    flip = (slice(None, None, -1 if codes[0] == "R" else 1), slice(None, None, -1 if codes[1] == "A" else 1))
    return {n: a[flip].T for n, a in out.items()}  # rows: anterior -> posterior, columns: right -> left


def write_sheet(entries: list[dict], path, per_page: int = 20) -> list:
    """QC sheet pages `<path stem>_NN.png`: per pair its warped image with the target's TZ (yellow) and
    PZ (cyan) contours, and log2 J of the transform (blue: donor stretched, red: squeezed; black: folds).
    entries: {"pair_id", "preview" (from `preview`), "title", "accepted"}. Returns the paths written."""
    from pathlib import Path

    from mricore.outputs import replace_atomically
    from mricore.plots import pyplot

    plt = pyplot()
    path = Path(path)
    written = []
    for page in range(0, len(entries), per_page):
        chunk = entries[page:page + per_page]
        rows = (len(chunk) + 3) // 4
        height = 3.0 * rows + 0.8
        fig, axes = plt.subplots(rows, 8, figsize=(20, height), squeeze=False)
        fig.subplots_adjust(left=0.005, right=0.995, bottom=0.01, top=1 - 0.8 / height, wspace=0.04, hspace=0.42)
        fig.suptitle(LEGEND, fontsize=11)
        for ax in axes.ravel():
            ax.axis("off")
        for n, e in enumerate(chunk):
            _draw_pair(axes[n // 4, 2 * (n % 4)], axes[n // 4, 2 * (n % 4) + 1], e)
        out = path.parent / f"{path.stem}_{page // per_page + 1:02d}.png"
        replace_atomically(out, lambda tmp: fig.savefig(tmp, dpi=100, format="png"))
        plt.close(fig)
        written.append(out)
    return written


def _draw_pair(ax_img, ax_jac, entry: dict) -> None:
    from mricore.zones import COLOURS

    p = entry["preview"]
    img = p["image"]
    lo, hi = np.percentile(img, [1, 99]) if img.size else (0, 1)
    ax_img.imshow(img, cmap="gray", vmin=lo, vmax=hi)
    logj = np.log2(np.clip(p["jacobian"], 1e-3, None))
    ax_jac.imshow(np.ma.masked_where(p["jacobian"] <= 0, logj), cmap="RdBu_r", vmin=-1.5, vmax=1.5)
    ax_jac.imshow(np.ma.masked_where(p["jacobian"] > 0, p["jacobian"]), cmap="gray", vmin=0, vmax=1)
    for ax in (ax_img, ax_jac):
        for code, colour in COLOURS.items():
            if (p["zones"] == code).any():
                ax.contour((p["zones"] == code).astype(float), levels=[0.5], colors=[colour], linewidths=0.8)
    colour = "darkgreen" if entry["accepted"] else "firebrick"
    ax_img.set_title(entry["title"], fontsize=10, color=colour, loc="left")  # runs over the J panel: no title there
