"""`ensemble predict --report`: a one-page HTML report of one prediction, self-contained (the overlay
is an inline base64 PNG drawn with matplotlib's Agg backend; no network, no second file)."""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path

import numpy as np

ZONE_COLOURS = {1: (0.96, 0.77, 0.0), 2: (0.0, 0.78, 1.0)}  # TZ yellow, PZ cyan


def overlay_png(image: np.ndarray, label: np.ndarray, affine: np.ndarray) -> bytes:
    """Axial, coronal and sagittal planes through the gland centre (volume centre if empty), zones
    filled at 40 % opacity. Axes are brought to RAS so every study is drawn the same way up."""
    import matplotlib

    matplotlib.use("Agg")  # headless
    import matplotlib.pyplot as plt
    import nibabel as nib
    from scipy import ndimage

    ornt = nib.orientations.io_orientation(affine)
    img = nib.orientations.apply_orientation(image, ornt)
    lab = nib.orientations.apply_orientation(label, ornt)
    sp = np.linalg.norm(affine[:3, :3], axis=0)[ornt[:, 0].astype(int)]
    centre = (np.round(ndimage.center_of_mass(lab > 0)).astype(int) if (lab > 0).any()
              else np.array(lab.shape) // 2)
    i, j, k = centre
    lim = np.percentile(img, [1, 99.5])
    planes = [("axial", img[:, :, k].T, lab[:, :, k].T, sp[1] / sp[0]),
              ("coronal", img[:, j, :].T, lab[:, j, :].T, sp[2] / sp[0]),
              ("sagittal", img[i, :, :].T, lab[i, :, :].T, sp[2] / sp[1])]
    fig, axes = plt.subplots(1, 3, figsize=(13.0, 5.0))
    for ax, (name, im, lb, aspect) in zip(axes, planes):
        ax.imshow(im, cmap="gray", origin="lower", aspect=aspect, vmin=lim[0], vmax=lim[1])
        rgba = np.zeros(lb.shape + (4,))
        for v, col in ZONE_COLOURS.items():
            rgba[lb == v] = (*col, 0.4)
        ax.imshow(rgba, origin="lower", aspect=aspect, interpolation="nearest")
        ax.set_title(name, fontsize=9)
        ax.axis("off")
    fig.suptitle("ensemble zones: yellow TZ, cyan PZ", fontsize=9)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def write_predict_report(path: Path, image, label: np.ndarray, sidecar: dict, force: bool = False) -> Path:
    """report.html: per-zone volumes, uncertainty and review flag, members used/skipped, overlay on
    the reference channel (T2W when present)."""
    from mricore.io import write_text

    e = html.escape
    png = base64.b64encode(overlay_png(image.array[0], label, image.affine)).decode()
    vols = "".join(f"<tr><td>{z}</td><td>{v:.2f}</td></tr>" for z, v in sidecar["volume_ml"].items())
    unc = sidecar["uncertainty"]
    used = "".join(f"<li>{e(m['member'])} ({e(', '.join(m['channels']))})</li>" for m in sidecar["members_used"])
    skipped = "".join(f"<li>{e(m['member'])}: {e(m['reason'])}</li>" for m in sidecar["members_skipped"]) or "<li>none</li>"
    flag = "<b style='color:#b00'>REVIEW</b>" if unc["review"] else "no review flag"
    text = f"""<!doctype html><html><head><meta charset="utf-8"><title>Zones: {e(sidecar['case_id'])}</title>
<style>body{{font-family:sans-serif;max-width:60em;margin:1em auto}}td,th{{padding:2px 10px}}</style></head><body>
<h1>Prostate zones: {e(sidecar['case_id'])}</h1>
<p>Method <b>{e(sidecar['method'])}</b>, software {e(sidecar['software_version'])}.</p>
<h2>Volumes (mL)</h2><table><tr><th>zone</th><th>mL</th></tr>{vols}</table>
<h2>Uncertainty</h2><p>score {unc['score']:.3f} (threshold {unc['threshold']}): {flag}.
{e(unc['definition'])}.</p>
<h2>Members</h2><p>Used:</p><ul>{used}</ul><p>Skipped:</p><ul>{skipped}</ul>
<h2>Overlay</h2><img alt="zones overlay" src="data:image/png;base64,{png}">
</body></html>"""
    return write_text(text, path, force=force)
