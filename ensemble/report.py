"""`ensemble predict --report`: a one-page HTML report of one prediction, self-contained (the overlay
is an inline base64 PNG drawn with matplotlib's Agg backend; no network, no second file)."""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path

import numpy as np

from mricore.zones import COLOURS


def overlay_png(image: np.ndarray, label: np.ndarray, affine: np.ndarray, heat: np.ndarray | None = None,
                title: str = "ensemble zones: yellow TZ, cyan PZ") -> bytes:
    """Axial, coronal and sagittal planes through the gland centre (volume centre if empty), zones
    filled at 40 % opacity, or with `heat` (0..1, e.g. member disagreement) drawn in red where > 0 and
    the gland outlined. Axes are brought to RAS so every study is drawn the same way up."""
    import matplotlib

    matplotlib.use("Agg")  # headless
    import matplotlib.pyplot as plt
    import nibabel as nib
    from scipy import ndimage

    ornt = nib.orientations.io_orientation(affine)
    img = nib.orientations.apply_orientation(image, ornt)
    lab = nib.orientations.apply_orientation(label, ornt)
    hot = None if heat is None else nib.orientations.apply_orientation(heat, ornt)
    sp = np.linalg.norm(affine[:3, :3], axis=0)[ornt[:, 0].astype(int)]
    centre = (np.round(ndimage.center_of_mass(lab > 0)).astype(int) if (lab > 0).any()
              else np.array(lab.shape) // 2)
    i, j, k = centre
    lim = np.percentile(img, [1, 99.5])
    cut = [(slice(None), slice(None), k), (slice(None), j, slice(None)), (i, slice(None), slice(None))]
    aspects = [sp[1] / sp[0], sp[2] / sp[0], sp[2] / sp[1]]
    fig, axes = plt.subplots(1, 3, figsize=(13.0, 5.0))
    for ax, name, c, aspect in zip(axes, ("axial", "coronal", "sagittal"), cut, aspects):
        lb = lab[c].T
        ax.imshow(img[c].T, cmap="gray", origin="lower", aspect=aspect, vmin=lim[0], vmax=lim[1])
        rgba = np.zeros(lb.shape + (4,))
        if hot is None:
            for v, col in COLOURS.items():
                rgba[lb == v] = (*col, 0.4)
        else:
            h = np.clip(hot[c].T, 0, 1)
            rgba[..., 0], rgba[..., 3] = 1.0, 0.8 * h
            ax.contour(lb > 0, levels=[0.5], colors="lime", linewidths=0.6)
        ax.imshow(rgba, origin="lower", aspect=aspect, interpolation="nearest")
        ax.set_title(name, fontsize=9)
        ax.axis("off")
    fig.suptitle(title, fontsize=9)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def write_predict_report(path: Path, image, label: np.ndarray, record, disagreement: np.ndarray,
                         zones_png: bytes, force: bool = False) -> Path:
    """report.html of a case's zones.json record (mricore.results.ZonesRecord): per-zone volumes, the
    review verdict with its reasons and every check, uncertainty, members used/skipped, the zones and
    the member disagreement over the reference channel (T2W when present). `zones_png` is `overlay_png`
    of the zones, drawn once by the caller (it is also overlay.png)."""
    from mricore.outputs import write_text

    e = html.escape
    png = base64.b64encode(zones_png).decode()
    dis_png = base64.b64encode(overlay_png(image.array[0], label, image.affine, heat=disagreement,
                                           title="member disagreement (red, 0-1); gland outline green")).decode()
    vols = "".join(f"<tr><td>{z}</td><td>{v:.2f}</td></tr>" for z, v in record.volume_ml.items())
    unc = record.uncertainty
    used = "".join(f"<li>{e(m['member'])} ({e(', '.join(m['channels']))})</li>" for m in record.members_used)
    skipped = "".join(f"<li>{e(m['member'])}: {e(m['reason'])}</li>" for m in record.members_skipped) or "<li>none</li>"
    rev = record.review
    colour = {"ok": "#070", "review": "#b60", "reject": "#b00"}[rev["verdict"]]
    reasons = "".join(f"<li>{e(r)}</li>" for r in rev["reasons"]) or "<li>every check passed</li>"
    checks = "".join(f"<tr><td>{e(c['name'])}</td><td>{'n/a' if c['value'] is None else c['value']}</td>"
                     f"<td>{e(c['expected'])}</td><td>{e(c['verdict'])}</td></tr>" for c in rev["checks"])
    text = f"""<!doctype html><html><head><meta charset="utf-8"><title>Zones: {e(record.case_id)}</title>
<style>body{{font-family:sans-serif;max-width:60em;margin:1em auto}}td,th{{padding:2px 10px}}</style></head><body>
<h1>Prostate zones: {e(record.case_id)}</h1>
<p>Method <b>{e(record.method)}</b>, software {e(record.software_version)}.</p>
<h2>Volumes (mL)</h2><table><tr><th>zone</th><th>mL</th></tr>{vols}</table>
<h2>Review: <b style='color:{colour}'>{e(rev['verdict'])}</b></h2><ul>{reasons}</ul>
<details><summary>all checks</summary><table><tr><th>check</th><th>value</th><th>expected</th><th>verdict</th></tr>
{checks}</table></details>
<h2>Uncertainty</h2><p>entropy {unc['score']:.3f}, member disagreement {unc['disagreement']:.3f}.
{e(unc['definition'])}.</p>
<h2>Members</h2><p>Used:</p><ul>{used}</ul><p>Skipped:</p><ul>{skipped}</ul>
<h2>Overlay</h2><img alt="zones overlay" src="data:image/png;base64,{png}">
<h2>Member disagreement</h2><img alt="member disagreement" src="data:image/png;base64,{dis_png}">
</body></html>"""
    return write_text(text, path, force=force)
