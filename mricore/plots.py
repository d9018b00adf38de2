"""Report figures drawn with matplotlib (Agg backend, no display), returned as PNG bytes.

Every function returns the PNG as bytes so the report can inline it (base64) and never needs a
second file or a network fetch. Figures are closed after saving so long batches do not leak memory.
"""

from __future__ import annotations

import io

import numpy as np

# Reference drawn solid, prediction dashed; one colour per label value (1 TZ, 2 PZ, others grey).
LABEL_COLOURS = {1: "#f5c400", 2: "#00c8ff"}
MODEL_COLOURS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b"]


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # headless: CI has no display
    import matplotlib.pyplot as plt

    return plt


def _png(fig) -> bytes:
    plt = _pyplot()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def box_strip(values: dict, metric: str, zones: list[str]) -> bytes:
    """Box plot with the individual cases as jittered points, one panel per zone, one box per model.

    values: {zone: {model: [per-case values]}} (NaNs are dropped; an all-NaN group draws nothing).
    """
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(zones), figsize=(2.6 * len(zones) + 0.8, 3.0), squeeze=False)
    rng = np.random.default_rng(0)  # fixed jitter: the same data gives the same picture
    for ax, zone in zip(axes[0], zones):
        models = list(values.get(zone, {}))
        data = [np.asarray(values[zone][m], float) for m in models]
        data = [d[np.isfinite(d)] for d in data]
        if any(len(d) for d in data):
            ax.boxplot([d if len(d) else [np.nan] for d in data], widths=0.5, showfliers=False)
            for i, d in enumerate(data):
                ax.scatter(i + 1 + rng.uniform(-0.12, 0.12, len(d)), d, s=12, alpha=0.7,
                           color=MODEL_COLOURS[i % len(MODEL_COLOURS)], zorder=3)
        ax.set_xticks(range(1, len(models) + 1), models, rotation=20, fontsize=8)
        ax.set_title(zone, fontsize=10)
        ax.grid(axis="y", alpha=0.3)
    axes[0][0].set_ylabel(metric)
    fig.subplots_adjust(wspace=0.45)  # room for each panel's own y tick labels
    return _png(fig)


def curves(kind: str, per_model: dict) -> bytes:
    """ROC (kind 'roc': {model: (fpr, tpr, auc)}) or FROC (kind 'froc': {model: (fp_per_case,
    sensitivity[, ...])}) curves of several models on one axis."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(4.2, 3.6))
    for i, (model, c) in enumerate(per_model.items()):
        x, y = np.asarray(c[0], float), np.asarray(c[1], float)
        label = f"{model} (AUC {float(c[2]):.3f})" if kind == "roc" and len(c) > 2 else model
        ax.step(x, y, where="post", color=MODEL_COLOURS[i % len(MODEL_COLOURS)], label=label)
    if kind == "roc":
        ax.plot([0, 1], [0, 1], ls=":", color="grey")
        ax.set(xlabel="1 - specificity", ylabel="sensitivity", xlim=(0, 1), ylim=(0, 1.02))
    else:
        ax.set(xlabel="false positives per case", ylabel="lesion sensitivity", ylim=(0, 1.02))
        ax.set_xscale("symlog", linthresh=0.5)
    ax.set_title(kind.upper(), fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    return _png(fig)


def _canonical(image, ref, pred, affine):
    """Reorient the three arrays to RAS+ voxel order; returns them and the voxel spacing in that order."""
    import nibabel as nib

    ornt = nib.orientations.io_orientation(affine)
    arrays = [nib.orientations.apply_orientation(a, ornt) for a in (image, ref, pred)]
    spacing = np.linalg.norm(affine[:3, :3], axis=0)[ornt[:, 0].astype(int)]
    return arrays, spacing


def overlay(image: np.ndarray, ref: np.ndarray, pred: np.ndarray, affine: np.ndarray, title: str) -> bytes:
    """Three planes (axial, coronal, sagittal) through the gland centre with reference (solid) and
    prediction (dashed) contours of every label on the image.

    The centre is the centre of mass of the reference (of the prediction when the reference is
    empty, of the volume when both are); each view is cropped to the gland with a margin.
    """
    plt = _pyplot()
    from scipy import ndimage

    (img, r, p), sp = _canonical(np.asarray(image, np.float32), np.asarray(ref), np.asarray(pred), affine)
    fg = r > 0 if (r > 0).any() else p > 0
    centre = (np.round(ndimage.center_of_mass(fg)).astype(int) if fg.any()
              else np.array(img.shape) // 2)
    if fg.any():
        idx = np.argwhere(fg | (p > 0))
        lo, hi = idx.min(0), idx.max(0) + 1
    else:
        lo, hi = np.zeros(3, int), np.array(img.shape)
    margin = np.maximum((hi - lo) // 3, 2)
    lo, hi = np.maximum(lo - margin, 0), np.minimum(hi + margin, img.shape)
    lim = np.percentile(img[fg] if fg.any() else img, [1, 99.5])
    i, j, k = centre
    # (plane, 2D slices with rows = vertical axis, aspect = row spacing / column spacing, crop)
    planes = [("axial", lambda a: a[:, :, k].T, sp[1] / sp[0], (0, 1)),
              ("coronal", lambda a: a[:, j, :].T, sp[2] / sp[0], (0, 2)),
              ("sagittal", lambda a: a[i, :, :].T, sp[2] / sp[1], (1, 2))]
    fig, axes = plt.subplots(1, 3, figsize=(9.0, 3.4))
    for ax, (name, cut, aspect, (c_ax, r_ax)) in zip(axes, planes):
        ax.imshow(cut(img), cmap="gray", origin="lower", aspect=aspect, vmin=lim[0], vmax=lim[1],
                  interpolation="nearest")
        for labels, style in ((cut(r), "-"), (cut(p), "--")):
            for v in np.unique(labels[labels > 0]):
                ax.contour((labels == v).astype(float), levels=[0.5], colors=LABEL_COLOURS.get(int(v), "#bbbbbb"),
                           linestyles=style, linewidths=1.1)
        ax.set_xlim(lo[c_ax] - 0.5, hi[c_ax] - 0.5)
        ax.set_ylim(lo[r_ax] - 0.5, hi[r_ax] - 0.5)
        if name == "axial":
            ax.invert_xaxis()  # radiological convention: patient right on the image left
        ax.set_title(name, fontsize=9)
        ax.axis("off")
    fig.suptitle(f"{title}   (reference solid, prediction dashed; yellow TZ, cyan PZ)", fontsize=9)
    return _png(fig)
