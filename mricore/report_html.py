"""The HTML page of a report (mricore.report): tables, figures and overlays as one self-contained file."""

from __future__ import annotations

import base64
import html
import math

from . import __version__


def _fmt(v, digits=3) -> str:
    return "–" if v is None or not math.isfinite(v) else f"{v:.{digits}f}"


def _img(png: bytes, alt: str) -> str:
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode()}">'


CSS = """body{font-family:sans-serif;margin:1.5em;color:#222}table{border-collapse:collapse;margin:.5em 0 1.5em}
td,th{border:1px solid #ccc;padding:2px 8px;font-size:13px;text-align:right}th{background:#eee}
td:first-child,td:nth-child(2),td:nth-child(3){text-align:left}img{max-width:100%;margin:4px}
pre{background:#f6f6f6;padding:.6em;font-size:12px}.note{color:#555;font-size:13px}"""


def render_html(title: str, summary: dict, comparisons: list[dict], settings_text: str, counts: dict,
                figures: list[tuple[str, bytes]], overlay_imgs: list[tuple[str, bytes]]) -> str:
    """report.html: one self-contained page (inline CSS, PNGs as base64, no scripts, nothing fetched)
    from the summaries, comparisons, figures and overlays mricore.report.write_report computed;
    `settings_text` is shown as is."""
    e = html.escape
    h = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{e(title)}</title><style>{CSS}</style>"
         f"</head><body><h1>{e(title)}</h1>",
         f"<p class='note'>mricore {e(__version__)} · {counts['cases']} cases · models: "
         f"{e(', '.join(counts['models']))}. Mean and median over cases; 95 % CI = case-level percentile "
         f"bootstrap of the mean; excluded = cases where the metric is undefined (empty masks).</p>",
         "<h2>Summary</h2><table id='summary'><tr><th>model</th><th>zone</th><th>metric</th><th>mean</th>"
         "<th>95 % CI</th><th>median</th><th>IQR</th><th>n</th><th>excluded</th></tr>"]
    for model, zones in summary.items():
        for zone, ms in zones.items():
            for m, s in ms.items():
                h.append(f"<tr><td>{e(model)}</td><td>{e(zone)}</td><td>{e(m)}</td><td>{_fmt(s['mean'])}</td>"
                         f"<td>{_fmt(s['ci_low'])} – {_fmt(s['ci_high'])}</td><td>{_fmt(s['median'])}</td>"
                         f"<td>{_fmt(s['q1'])} – {_fmt(s['q3'])}</td><td>{s['n']}</td><td>{s['n_excluded']}</td></tr>")
    h.append("</table>")
    if comparisons:
        h.append("<h2>Model comparison</h2><p class='note'>Paired on shared cases: mean of per-case differences "
                 "(a − b), bootstrap 95 % CI, Wilcoxon signed-rank p.</p><table id='comparison'><tr><th>zone</th>"
                 "<th>metric</th><th>a − b</th><th>mean difference</th><th>95 % CI</th><th>Wilcoxon p</th>"
                 "<th>n pairs</th><th>excluded</th></tr>")
        for c in comparisons:
            h.append(f"<tr><td>{e(c['zone'])}</td><td>{e(c['metric'])}</td><td>{e(c['a'])} − {e(c['b'])}</td>"
                     f"<td>{_fmt(c['mean'])}</td><td>{_fmt(c['ci_low'])} – {_fmt(c['ci_high'])}</td>"
                     f"<td>{_fmt(c['wilcoxon_p'], 4)}</td><td>{c['n']}</td><td>{c['n_excluded']}</td></tr>")
        h.append("</table>")
    if figures:
        h.append("<h2>Figures</h2>" + "".join(_img(png, alt) for alt, png in figures))
    if overlay_imgs:
        h.append("<h2>Best, median and worst cases</h2>" + "".join(_img(png, alt) for alt, png in overlay_imgs))
    h.append(f"<h2>Settings</h2><pre>{e(settings_text)}</pre></body></html>")
    return "\n".join(h)
