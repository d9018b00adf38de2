"""The report of a cohort without labels (`ensemble predict DATASET --report`): OUT/report.html, beside
the batch's summary files and its case folders, on the same page builder as the evaluation report
(mricore.report_html) and the same per-case thumbnails (mricore.thumbnails).

    write_cohort_report(out, rows, images) -> Path

It shows, in this order: the verdict counts (ok, review, reject, and failed cases); the volume of
every zone (WG, TZ, PZ) against the expert reference range of mricore.gland_reference; the flagged
cases (verdict not ok), reject first, each with a thumbnail linked to its own report, its reasons and
volumes; failed cases with their error; time per case; then, collapsed, every case.
Everything is read from the case folders (mricore.results.read_case); the page stays small (thumbnails
as JPEG, only for flagged cases, at most mricore.thumbnails.MAX_THUMBNAILS).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from . import report_html as H
from .report_html import e, fmt

VERDICTS = ("ok", "review", "reject")
RANK = {"reject": 0, "review": 1, "ok": 2}


def reference_ranges() -> dict[str, tuple[float, float, float]]:
    """{zone: (min, median, max) mL} of the expert zone maps of mricore.gland_reference; TZ and PZ
    from each map's WG volume and TZ share."""
    from .gland_reference import load_reference

    maps = load_reference()["maps"]
    wg = np.array([m["WG_ml"] for m in maps])
    share = np.array([m["TZ_share"] for m in maps])
    return {z: (float(v.min()), float(np.median(v)), float(v.max()))
            for z, v in (("WG", wg), ("TZ", wg * share), ("PZ", wg * (1 - share)))}


def write_cohort_report(out, rows: list[dict], images: dict, title: str = "Cohort report") -> Path:
    """Write out/report.html (module docstring) for a batch in `out` (layout of mricore.results).

    rows: the batch's rows, {"case_id", "status" ("ok" / "failed"), "error"?}; images: {case_id: {channel:
    mricore.datasets.ImageRef}}, the T2W (else the first channel) drawn under the thumbnails. Overwrites an
    earlier report.html of the batch (the batch's own output checks ran before it started)."""
    from .outputs import write_text
    from .results import REPORT_HTML, ZONES_NII, case_dir, read_case
    from .thumbnails import MAX_THUMBNAILS, case_view

    out = Path(out)
    ok = [r["case_id"] for r in rows if r["status"] == "ok"]
    failed = [r for r in rows if r["status"] != "ok"]
    records = {c: read_case(case_dir(out, c, batch=True)) for c in ok}
    verdict = {c: (rec.review or {}).get("verdict", "ok") for c, rec in records.items()}
    flagged = sorted((c for c in ok if verdict[c] != "ok"),
                     key=lambda c: (RANK[verdict[c]], -(records[c].review or {}).get("score", 0.0)))
    views = {c: case_view({"case_id": c, "pred": case_dir(out, c, batch=True) / ZONES_NII, "image": _background(images.get(c))},
                          thumbnail=i < MAX_THUMBNAILS, record=records[c]) for i, c in enumerate(flagged)}
    sections = [_counts(verdict, failed), _volumes(records), _flagged(out, flagged, views), _failed(failed),
                _timing(records), H.details("Every case", _every_case(out, records, verdict), "cases-detail")]
    text = H.page(title, f"{len(rows)} studies · no reference labels: what the ensemble found, and which cases to "
                  "look at", sections)
    return write_text(text, out / REPORT_HTML, force=True)


def _background(channels: dict | None):
    return None if not channels else channels.get("T2W") or next(iter(channels.values()))


def _counts(verdict: dict, failed: list) -> str:
    counts = {v: sum(1 for x in verdict.values() if x == v) for v in VERDICTS}
    cells = [[f"<b class='{v}'>{v}</b>", str(counts[v])] for v in VERDICTS] + [["<b class='failed'>failed</b>",
                                                                                str(len(failed))]]
    return ("<h2>Verdicts</h2>" + H.html_table("verdicts", ["verdict", "cases"], cells)
            + "<p class='note'>ok: every check passed; review: look before use; reject: not usable as is; "
            "failed: no output (the error is listed below).</p>")


def _volumes(records: dict) -> str:
    from .plots import ranges

    ref = reference_ranges()
    vols = {z: [rec.volume_ml[z] for rec in records.values()] for z in ("WG", "TZ", "PZ")}
    rows = []
    for z, v in vols.items():
        lo, med, hi = ref[z]
        x = np.asarray(v, float)
        q = np.percentile(x, [25, 50, 75]) if len(x) else [np.nan] * 3
        outside = int(((x < lo) | (x > hi)).sum())
        rows.append([z, f"{fmt(q[1], 1)} [{fmt(q[0], 1)} – {fmt(q[2], 1)}]", str(len(x)),
                     f"{lo:.1f} – {hi:.1f} (median {med:.1f})", str(outside)])
    plot = ranges(vols, ref, "mL") if records else None
    return ("<h2>Volumes</h2>" + H.html_table("volumes", ["zone", "median [IQR] mL", "cases", "expert range mL",
                                                          "outside the range"], rows)
            + "<p class='note'>Expert range: min – max of the expert zone maps of mricore.gland_reference "
            "(MSD Task05 and Prostate158).</p>" + (H.figure(plot) if plot else ""))


def _flagged(out: Path, flagged: list, views: dict) -> str:
    if not flagged:
        return "<h2>Flagged cases</h2><p>None: every case passed its checks.</p>"
    rows = [[H.link(views[c].report, out, c), H.thumb_cell(views[c], out), H.review_cell(views[c]),
             H.volume_cell(views[c])] for c in flagged]
    return (f"<h2>Flagged cases ({len(flagged)})</h2><p class='note'>Reject first. Thumbnail: mid-gland axial "
            "slice with the predicted zones (TZ yellow, PZ cyan); click it for the case's own report.</p>"
            + H.html_table("flagged", ["case", "mid-gland axial", "review", "volume (mL)"], rows, left=3))


def _failed(failed: list) -> str:
    if not failed:
        return ""
    return f"<h2>Failed cases ({len(failed)})</h2>" + H.html_table(
        "failed", ["case", "error"], [[e(r["case_id"]), e(r.get("error", ""))] for r in failed], left=2)


def _timing(records: dict) -> str:
    """Seconds per case: each stage's median and max (a stage of several parts, e.g. one per network,
    summed), and the total."""
    from .thumbnails import total_seconds

    timed = [rec.timings_s for rec in records.values() if rec.timings_s]
    stages = list(dict.fromkeys(k for t in timed for k in t))
    per = {s: [total_seconds(t[s]) for t in timed if s in t] for s in stages}
    total = [total_seconds(t) for t in timed]
    rows = [[e(s), fmt(float(np.median(v)), 2), fmt(float(np.max(v)), 2)] for s, v in per.items() if v]
    if total:
        rows.append(["<b>total</b>", f"<b>{fmt(float(np.median(total)), 2)}</b>", f"<b>{fmt(float(np.max(total)), 2)}</b>"])
    return ("<h2>Time per case</h2>" + H.html_table("timing", ["stage", "median s", "max s"], rows)
            + f"<p class='note'>{len(total)} cases, {sum(total):.0f} s in all (as each case's zones.json records).</p>")


def _every_case(out: Path, records: dict, verdict: dict) -> str:
    from .results import REPORT_HTML, case_dir
    from .thumbnails import total_seconds

    rows = []
    for c, rec in records.items():
        report = case_dir(out, c, batch=True) / REPORT_HTML if REPORT_HTML in rec.outputs else None
        vol = " · ".join(f"{z} {v:.1f}" for z, v in rec.volume_ml.items())
        secs = total_seconds(rec.timings_s) if rec.timings_s else float("nan")
        rows.append([H.link(report, out, c), f"<b class='{e(verdict[c])}'>{e(verdict[c])}</b>", vol, fmt(secs, 1)])
    return H.html_table("all-cases", ["case", "verdict", "volume (mL)", "seconds"], rows, left=3)
