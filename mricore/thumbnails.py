"""What a report's per-case rows show of one case: a small mid-gland axial thumbnail (reference solid,
prediction dashed; TZ yellow, PZ cyan), zone volumes of the prediction and the reference, the review
verdict with its reasons, the time it took and the case's own report.html.

A case is given as an entry {"case_id", "pred", "image", "ref"}: `pred` a zone label map in any layout
mricore.results.find_predictions returns; `image` and `ref` a path or mricore.datasets.ImageRef (either
may be None: no background image, or an unlabelled cohort). When the prediction sits in a case folder
(its zones.json beside it), the verdict, timings and report come from that record (mricore.results
.read_case). Thumbnails are JPEG (a few kB each), so a report of 100 cases stays small.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np

THUMB_IN, THUMB_DPI = 2.0, 80  # 160 px square
JPEG_QUALITY = 80
MAX_THUMBNAILS = 40  # reports draw thumbnails for this many cases at most (the worst / flagged first)


@dataclass(frozen=True)
class CaseView:
    """One case as the report shows it; volumes in mL by mricore.results.zone_volumes_ml."""

    case_id: str
    thumbnail: bytes | None          # JPEG; None when not drawn
    volume_ml: dict                  # prediction: WG, TZ, PZ
    ref_volume_ml: dict | None       # reference (None without one)
    verdict: str | None              # review verdict of the case record (None without a record)
    reasons: tuple = ()
    report: Path | None = None       # the case folder's report.html, when it was written
    seconds: float | None = None     # total of the record's timings


def _as_ref(x, kind: str):
    from .datasets import ImageRef

    return x if x is None or isinstance(x, ImageRef) else ImageRef(Path(x), kind=kind)


def case_view(entry: dict, thumbnail: bool = True, record=None) -> CaseView:
    """Read one case entry (module docstring) into a CaseView; draw the thumbnail when asked (over the
    image when it shares the prediction's grid). `record`: the case folder's ZonesRecord when the caller
    has read it already (then, without a thumbnail or a reference, the map itself is not read: its
    volumes are the record's). Raises GeometryError when the reference does not share the grid."""
    from .datasets import read_ref
    from .errors import GeometryError
    from .results import REPORT_HTML, ZONES_JSON, ZONES_NII, read_case, zone_volumes_ml

    cid, pred_path = str(entry["case_id"]), Path(entry["pred"])
    if record is None and pred_path.name == ZONES_NII and (pred_path.parent / ZONES_JSON).is_file():
        record = read_case(pred_path.parent)
    ref = _read_optional(entry.get("ref"), "label", cid)
    pred = (None if record is not None and ref is None and not thumbnail
            else read_ref(_as_ref(pred_path, "label"), "pred", cid))
    image = _read_optional(entry.get("image"), "image", cid) if thumbnail else None
    if ref is not None and ref.shape != pred.shape:
        raise GeometryError(entry["ref"], "the reference must lie on the prediction's grid",
                            f"shape {ref.shape} vs {pred.shape}", "resample with nearest neighbour")
    if image is not None and image.shape != pred.shape:
        image = None  # a channel on its own grid (e.g. ADC): the contours are drawn without it
    review = (record.review or {}) if record else {}
    report = pred_path.parent / REPORT_HTML if record and REPORT_HTML in record.outputs else None
    seconds = round(total_seconds(record.timings_s), 2) if record and record.timings_s else None
    thumb = None
    if thumbnail:
        thumb = axial_thumbnail(None if image is None else image.array[0], None if ref is None else ref.array[0],
                                pred.array[0], pred.affine)
    volume = record.volume_ml if pred is None else zone_volumes_ml(pred.array[0], pred.voxel_volume_ml)
    return CaseView(cid, thumb, volume,
                    None if ref is None else zone_volumes_ml(ref.array[0], ref.voxel_volume_ml),
                    review.get("verdict"), tuple(review.get("reasons", ())), report, seconds)


def total_seconds(timings) -> float:
    """The sum of a zones.json `timings_s` (stages may hold {name: seconds}, e.g. one per network)."""
    if isinstance(timings, dict):
        return float(sum(total_seconds(v) for v in timings.values()))
    return float(timings or 0.0)


def _read_optional(x, kind: str, cid: str):
    from .datasets import read_ref

    return None if x is None else read_ref(_as_ref(x, kind), kind, cid)


def axial_thumbnail(image: np.ndarray | None, ref: np.ndarray | None, pred: np.ndarray,
                    affine: np.ndarray) -> bytes:
    """JPEG of the axial slice through the gland's centre (of the reference, else the prediction),
    cropped to the gland with a margin, in radiological view (patient right on the image left):
    reference contours solid, prediction dashed, TZ yellow, PZ cyan. No gland: the middle slice."""
    import nibabel as nib

    from .plots import pyplot
    from .zones import COLOURS

    plt = pyplot()
    ornt = nib.orientations.io_orientation(affine)
    p = nib.orientations.apply_orientation(np.asarray(pred), ornt)
    r = None if ref is None else nib.orientations.apply_orientation(np.asarray(ref), ornt)
    img = (np.zeros(p.shape, np.float32) if image is None
           else nib.orientations.apply_orientation(np.asarray(image, np.float32), ornt))
    sp = np.linalg.norm(affine[:3, :3], axis=0)[ornt[:, 0].astype(int)]
    fg = r > 0 if r is not None and (r > 0).any() else p > 0
    k = int(round(np.argwhere(fg)[:, 2].mean())) if fg.any() else p.shape[2] // 2
    both = (p > 0) | (fg if r is None else r > 0)
    lo, hi = _crop(both[:, :, k] if both[:, :, k].any() else both.any(2), p.shape[:2], sp[:2])
    fig = plt.figure(figsize=(THUMB_IN, THUMB_IN))
    ax = fig.add_axes((0, 0, 1, 1))
    sl = img[:, :, k].T
    vmin, vmax = np.percentile(sl, [1, 99.5]) if sl.any() else (0.0, 1.0)
    ax.imshow(sl, cmap="gray", origin="lower", aspect=sp[1] / sp[0], vmin=vmin, vmax=vmax + 1e-6,
              interpolation="nearest")
    for labels, style in ((r, "-"), (p, "--")):
        if labels is None:
            continue
        cut = labels[:, :, k].T
        for v in (1, 2):
            if (cut == v).any():
                ax.contour((cut == v).astype(float), levels=[0.5], colors=[COLOURS[v]], linestyles=style,
                           linewidths=1.3)
    ax.set_xlim(hi[0] - 0.5, lo[0] - 0.5)  # inverted: radiological convention
    ax.set_ylim(lo[1] - 0.5, hi[1] - 0.5)
    ax.axis("off")
    buf = io.BytesIO()
    fig.savefig(buf, format="jpeg", dpi=THUMB_DPI, pil_kwargs={"quality": JPEG_QUALITY, "optimize": True})
    plt.close(fig)
    return buf.getvalue()


def _crop(mask2d: np.ndarray, shape, spacing) -> tuple[np.ndarray, np.ndarray]:
    """In-plane box around the mask with a third of its size as margin, widened to a square in mm so
    the thumbnail fills its square (clipped to the image; the whole slice when the mask is empty)."""
    if not mask2d.any():
        return np.zeros(2, int), np.array(shape[:2])
    idx = np.argwhere(mask2d)
    lo, hi = idx.min(0), idx.max(0) + 1
    margin = np.maximum((hi - lo) // 3, 4)
    lo, hi = lo - margin, hi + margin
    side_mm = float(((hi - lo) * spacing).max())
    centre, half = (lo + hi) / 2, side_mm / np.asarray(spacing, float) / 2
    lo, hi = np.floor(centre - half).astype(int), np.ceil(centre + half).astype(int)
    return np.maximum(lo, 0), np.minimum(hi, shape[:2])
