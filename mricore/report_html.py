"""The HTML of every batch report (mricore.report's evaluation report and mricore.cohort_report's
cohort report): one page builder and its sections, so both read alike.

Pages are self-contained and offline-safe: inline CSS, figures as inline base64 PNG, thumbnails as
inline JPEG, no script, nothing fetched. What a reader needs first comes first; the rest sits in
<details> elements, collapsed ("on demand"). Text is at least 12 px.
"""

from __future__ import annotations

import base64
import html
import math
import os
from pathlib import Path
from urllib.parse import quote

from . import __version__
from .stats import N_BOOT

e = html.escape
CSS = """body{font-family:sans-serif;margin:12px auto;max-width:1240px;padding:0 16px;color:#222;font-size:14px}
h1{font-size:22px;margin:4px 0}h2{font-size:17px;margin:18px 0 6px}p{margin:4px 0}
table{border-collapse:collapse;margin:4px 0 12px}td,th{border:1px solid #ccc;padding:3px 8px;font-size:13px;
text-align:right;vertical-align:middle}th{background:#eee}td.l,th.l{text-align:left}small{font-size:12px;color:#555}
.note{color:#555;font-size:13px}ul.verdicts{margin:4px 0 8px;padding-left:20px}ul.verdicts li{margin:2px 0}
img.fig{display:block;margin:6px 0;max-width:100%}img.thumb{width:120px;height:120px;display:block}
details{margin:8px 0}summary{cursor:pointer;font-weight:bold;font-size:15px}
.ok{color:#070}.review{color:#b60}.reject,.failed{color:#b00}pre{background:#f6f6f6;padding:6px;font-size:12px}"""


def fmt(v, digits: int = 3) -> str:
    """A number for a table cell; "–" for None / NaN."""
    return "–" if v is None or not math.isfinite(v) else f"{v:.{digits}f}"


def img(data: bytes, alt: str, cls: str = "fig", kind: str = "png", width: int | None = None) -> str:
    """An inline image (base64 data URL): nothing is fetched."""
    size = f' width="{width}"' if width else ""
    return (f'<img class="{cls}"{size} alt="{e(alt)}" '
            f'src="data:image/{kind};base64,{base64.b64encode(data).decode()}">')


def figure(plot) -> str:
    """A mricore.plots.Plot at its natural size, so its text stays as drawn (>= 11 px)."""
    return img(plot.png, plot.alt, width=plot.width_px)


def details(title: str, inner: str, ident: str = "") -> str:
    """A collapsed section: detail on demand."""
    return f"<details{f' id={ident!r}' if ident else ''}><summary>{e(title)}</summary>{inner}</details>"


def html_table(ident: str, header: list[str], rows: list[list[str]], left: int | tuple = 1) -> str:
    """A table whose cells are given as HTML; left-aligned: the first `left` columns, or those listed."""
    lefts = set(range(left)) if isinstance(left, int) else set(left)

    def row(cells, tag):
        return "<tr>" + "".join(f"<{tag}{' class=l' if i in lefts else ''}>{c}</{tag}>"
                                for i, c in enumerate(cells)) + "</tr>"
    return f"<table id='{ident}'>" + row([e(h) for h in header], "th") + "".join(row(r, "td") for r in rows) + "</table>"


def page(title: str, note: str, sections: list[str]) -> str:
    """The whole page: title, one line saying what it is, the sections in order."""
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{e(title)}</title><style>{CSS}</style>"
            f"</head><body><h1>{e(title)}</h1><p class='note'>{note} · mricore {e(__version__)}</p>"
            + "\n".join(s for s in sections if s) + "</body></html>")


def link(target: Path | None, out: Path, text: str, inner: str | None = None) -> str:
    """`text` (or the HTML `inner`) linked to `target` by a path relative to the report folder `out`,
    so the page and its case folders can move together; unlinked without a target."""
    inner = e(text) if inner is None else inner
    return inner if target is None else f"<a href='{quote(os.path.relpath(target, out))}'>{inner}</a>"


def headline_table(h: dict, zones: list[str], ident: str = "headline") -> str:
    """Zones as columns, the lead / peers / member families as rows; each cell the headline metric's
    mean [95 % CI] and median, and the secondary metric's mean."""
    m, sec = h["metric"], h["secondary"]
    rows = []
    for r in h["rows"]:
        name = e(r["model"]) + (f"<br><small>{len(r['models'])} folds pooled</small>" if len(r["models"]) > 1 else "")
        cells = [name]
        for z in zones:
            s = r["zones"][z][m]
            cell = (f"<b>{fmt(s['mean'])}</b> [{fmt(s['ci_low'])}, {fmt(s['ci_high'])}]"
                    f"<br><small>median {fmt(s['median'])}")
            if sec:
                cell += f" · {sec.upper()} {fmt(r['zones'][z][sec]['mean'], 1)}"
            cells.append(cell + f" · n {s['n']}</small>")
        rows.append(cells)
    return html_table(ident, ["model", *zones], rows)


def headline_caption(h: dict, n_cases: int) -> str:
    m, sec = h["metric"].upper(), h["secondary"]
    extra = f"; {sec.upper()} mean{' (mm)' if sec == 'hd95' else ''}" if sec else ""
    return (f"<p class='note'>{m} mean [95 % CI] and median over {n_cases} cases{extra}; n = cases scored. "
            f"CI: percentile bootstrap of the mean over cases ({N_BOOT} resamples)."
            + (" Folds of one architecture are pooled per case (the mean of its folds); single folds below."
               if any(len(r["models"]) > 1 for r in h["rows"]) else "") + "</p>")


def verdict_list(h: dict) -> str:
    """One sentence per zone and comparison (mricore.report_data.sentence)."""
    items = [v["sentence"] for z in h["versus"] for v in h["versus"][z]]
    if not items:
        return "<p class='note'>One model: nothing to compare it with.</p>"
    return "<ul class='verdicts' id='verdicts'>" + "".join(f"<li>{e(s)}</li>" for s in items) + "</ul>"


def review_cell(view) -> str:
    """Verdict in its colour, and its reasons."""
    if view is None or view.verdict is None:
        return "–"
    reasons = "; ".join(view.reasons) or "every check passed"
    return f"<b class='{e(view.verdict)}'>{e(view.verdict)}</b><br><small>{e(reasons)}</small>"


def volume_cell(view, zones=("WG", "TZ", "PZ")) -> str:
    """Predicted mL per zone, with the reference's beside it when there is one."""
    if view is None:
        return "–"
    ref = view.ref_volume_ml
    return "<br>".join(f"{z} {view.volume_ml[z]:.1f}" + (f" <small>/ ref {ref[z]:.1f}</small>" if ref else "")
                       for z in zones if z in view.volume_ml)


def thumb_cell(view, out: Path) -> str:
    """The case's thumbnail, linked to its own report when it has one."""
    if view is None or view.thumbnail is None:
        return "–"
    pic = img(view.thumbnail, f"{view.case_id}: mid-gland axial, reference solid, prediction dashed",
              "thumb", "jpeg")
    return link(view.report, out, view.case_id, pic)


def _metric_cells(table: dict, model: str, case: str, zones: list[str], metric: str) -> str:
    vals = [(z, table.get(model, {}).get(z, {}).get(metric, {}).get(case)) for z in zones]
    return "<br>".join(f"{z} {fmt(v)}" for z, v in vals if v is not None)


def worst_cases(out: Path, worst: list, views: dict, table: dict, lead: str, zones: list[str], metric: str) -> str:
    """The per-case table, worst case first (mricore.report_data.worst_first)."""
    rows = []
    for case, zone, value in worst:
        v = views.get(case)
        rows.append([link(v.report if v else None, out, case), thumb_cell(v, out),
                     f"{fmt(value)}<br><small>{e(zone or '–')}</small>", _metric_cells(table, lead, case, zones, metric),
                     review_cell(v), volume_cell(v)])
    return (f"<h2>Cases, worst first</h2><p class='note'>Sorted by the lowest zone {e(metric.upper())} of the "
            f"{e(lead)}. Thumbnail: mid-gland axial slice, reference solid, prediction dashed (TZ yellow, PZ "
            "cyan); click it for the case's own report. Volumes in mL, prediction / reference.</p>"
            + html_table("cases", ["case", "mid-gland axial", f"lowest {metric.upper()}", f"{metric.upper()} per zone",
                                   "review", "volume (mL)"], rows, left=(0, 1, 4)))


def _summary_rows(summary: dict) -> list[list[str]]:
    return [[e(mo), e(z), e(m), fmt(s["mean"]), f"{fmt(s['ci_low'])} – {fmt(s['ci_high'])}", fmt(s["median"]),
             f"{fmt(s['q1'])} – {fmt(s['q3'])}", str(s["n"]), str(s["n_excluded"])]
            for mo, zs in summary.items() for z, ms in zs.items() for m, s in ms.items()]


def _comparison_rows(comparisons: list[dict]) -> list[list[str]]:
    return [[e(c["zone"]), e(c["metric"]), f"{e(c['a'])} − {e(c['b'])}", fmt(c["mean"]),
             f"{fmt(c['ci_low'])} – {fmt(c['ci_high'])}", fmt(c["wilcoxon_p"], 4), str(c["n"]), str(c["n_excluded"])]
            for c in comparisons]


_EMPTY = {"mean": float("nan"), "ci_low": float("nan"), "ci_high": float("nan"), "median": float("nan"), "n": 0}


def _single_models(head: dict, summary: dict, zones: list[str]) -> str:
    """The headline table of every single model (folds unpooled), when some headline row pools several."""
    if all(len(r["models"]) == 1 for r in head["rows"]):
        return ""
    keys = [k for k in (head["metric"], head["secondary"]) if k]
    rows = [{"model": mo, "models": [mo], "zones": {z: {k: summary[mo].get(z, {}).get(k, _EMPTY) for k in keys}
                                                    for z in zones}} for mo in summary]
    return details("Single folds", headline_table({**head, "rows": rows}, zones, "folds"), "folds-detail")


def evaluation_page(title: str, out: Path, head: dict, summary: dict, comparisons: list[dict], figures: dict,
                    worst: list, views: dict, table: dict, zones: list[str], settings_text: str) -> str:
    """report.html of mricore.report.write_report (its module docstring gives the order)."""
    lead, metric = head["lead"], head["metric"]
    first = "".join(figure(p) for p in figures["first"])
    sections = [headline_table(head, zones), headline_caption(head, len(worst)), verdict_list(head),
                f"<h2>{e(lead)} against each model, and every case across models</h2>{first}"
                if len(head["rows"]) > 1 else f"<h2>Every case</h2>{first}",
                worst_cases(out, worst, views, table, lead, zones, metric),
                "".join(figure(p) for p in figures["curves"]),
                _single_models(head, summary, zones),
                details("Every metric: summary", "<p class='note'>Also in metrics_summary.csv.</p>" + html_table(
                    "summary", ["model", "zone", "metric", "mean", "95 % CI", "median", "IQR", "n", "excluded"],
                    _summary_rows(summary), left=3), "summary-detail"),
                details("Every pair of models", "<p class='note'>Paired on shared cases: mean of per-case "
                        "differences (a − b), bootstrap 95 % CI, Wilcoxon signed-rank p. Also in comparisons.csv."
                        "</p>" + html_table("comparison", ["zone", "metric", "a − b", "mean difference", "95 % CI",
                                                           "Wilcoxon p", "n pairs", "excluded"],
                                            _comparison_rows(comparisons), left=3), "comparison-detail")
                if comparisons else "",
                details("Every metric: distributions", "".join(figure(p) for p in figures["detail"]), "plots-detail"),
                details("Settings", f"<pre>{e(settings_text)}</pre>", "settings-detail")]
    models = ", ".join(r["model"] for r in head["rows"])
    return page(title, f"{len(worst)} cases · {e(models)}", sections)
