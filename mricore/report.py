"""The one evaluation report writer behind `segment evaluate`, `ensemble evaluate` and `localize evaluate`.

    write_report(out_dir, rows, *, title, settings=None, cases=None, curves=None, groups=None,
                 peers=(), force=False) -> Path

writes into `out_dir`:
- `metrics.csv`: one row per case, model and zone, one column per metric (empty cell = NaN).
- `metrics.json`: the headline (mricore.report_data.headline), summaries per model / zone / metric
  (mean, median, IQR, bootstrap 95 % CI, n, n_excluded), every paired comparison, the worst-first case
  order, each figure's size and tick-label check, settings, software version, counts. NaN -> null.
- `metrics_summary.csv`, `comparisons.csv`: the summary and every pairwise comparison, flat.
- `report.html` (mricore.report_html): first the headline table (zones x models, the lead first, folds
  pooled per family) and one sentence per zone on the lead against its best member and any compared
  maps; then the forest plot of paired differences, the cases joined across models, the per-case table
  worst first (thumbnail linked to the case's report, review verdict and reasons, volumes against the
  reference); then, collapsed, single folds, the full summary, every pair and every metric's plot.
  Summary or comparison rows with no value are left out.

Nothing is written when any of these files exists and `force` is False, or when the rows are invalid.
"""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path

import numpy as np

from . import __version__
from . import report_html as H
from .errors import InputError, OutputExistsError
from .outputs import finite_json, write_json, write_text
from .report_data import KEYS, headline, per_case_table, worst_first
from .results import REPORT_HTML
from .stats import compare_models, summarize

OUTPUTS = ("metrics.csv", "metrics.json", "metrics_summary.csv", "comparisons.csv", REPORT_HTML)
COUNT_COLUMNS = {"tp", "fp", "fn", "tn"}  # raw counts stay in metrics.csv, not summarised or plotted


def _validate(rows) -> list[str]:
    """Check the rows and return the metric columns, in first-seen order."""
    if not isinstance(rows, (list, tuple)) or not rows:
        raise InputError("report rows", "need at least one row", f"{type(rows).__name__} of length "
                         f"{len(rows) if hasattr(rows, '__len__') else '?'}", "evaluate at least one case")
    metrics: list[str] = []
    seen = set()
    for n, row in enumerate(rows):
        missing = [k for k in KEYS if not str(row.get(k, "")).strip()] if isinstance(row, dict) else list(KEYS)
        if missing:
            raise InputError(f"report row {n}", f"every row needs {', '.join(KEYS)}", f"missing {missing}",
                             "add the missing keys")
        key = tuple(str(row[k]) for k in KEYS)
        if key in seen:
            raise InputError(f"report row {n}", "one row per case, model and zone", f"duplicate {key}",
                             "merge or rename the duplicate rows")
        seen.add(key)
        for k, v in row.items():
            if k in KEYS:
                continue
            if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)) and v is not None:
                raise InputError(f"report row {n}", "metric values must be numbers (or None for missing)",
                                 f"{k}={v!r}", "convert the value or drop the column")
            if k not in metrics:
                metrics.append(k)
    return metrics


def _num(v) -> float:
    return float("nan") if v is None else float(v)


def _ordered(values) -> list[str]:
    return list(dict.fromkeys(values))


def _csv(header: list[str], lines: list[list]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    w.writerows(lines)
    return buf.getvalue()


def _cell(v) -> str:
    """Counts stay integers; floats keep full precision (repr); NaN/None become empty cells."""
    if isinstance(v, (int, np.integer)) and not isinstance(v, bool):
        return str(int(v))
    return "" if v is None or not math.isfinite(_num(v)) else repr(float(v))


def write_report(out_dir, rows, *, title, settings=None, cases=None, curves=None, groups=None, peers=(),
                 force=False) -> Path:
    """Summarise per-case metric rows into a report folder; returns the path of report.html.

    Args:
        out_dir: report folder (created).
        rows: list of dicts with "case_id", "model", "zone" and numeric metric columns (None/NaN =
            undefined, excluded from summaries and counted as excluded).
        title: report title.
        settings: JSON-able dict of what produced the numbers (paths, label key, thresholds...).
        cases: the lead model's cases as mricore.thumbnails entries {"case_id", "pred", "image", "ref"}:
            thumbnails, volumes, review and links of the per-case table (without: metrics only).
        curves: {"roc": {model: (fpr, tpr, auc)}, "froc": {model: (fp_per_case, sensitivity)}}.
        groups: {model: family}: models pooled per case into one headline row (e.g. the folds of one
            architecture); the single models stay in the collapsed detail.
        peers: models that are compared maps (`--compare`), not members.
        force: overwrite existing report files.

    Raises:
        InputError: empty/invalid rows. OutputExistsError: a report file exists and force is False.
    """
    metrics = _validate(rows)
    out = _check_target(Path(out_dir), force)
    table = per_case_table(rows)
    models, zones, case_ids = (_ordered(str(r[k]) for r in rows) for k in ("model", "zone", "case_id"))
    summarised = [m for m in metrics if m not in COUNT_COLUMNS]
    summary = _summaries(table, models, zones, summarised)
    comparisons = _comparisons(table, models, zones, summarised)
    head = headline(table, models, zones, summarised, groups, tuple(peers))
    worst = worst_first(table, models[0] if head["lead"] not in table else head["lead"], zones, head["metric"])
    figures = _figures(table, head, zones, summarised, curves)
    views = _views(cases, worst)  # reads every case's files: a bad one stops here, before anything is written
    counts = {"cases": len(case_ids), "models": models, "zones": zones, "rows": len(rows)}
    doc = {"title": title, "software": {"mricore": __version__}, "settings": settings or {}, "counts": counts,
           "headline": head, "summary": summary, "comparisons": comparisons,
           "cases_worst_first": [{"case_id": c, "zone": z, head["metric"]: v} for c, z, v in worst],
           "figures": {k: [{"alt": p.alt, "width_px": p.width_px, "height_px": p.height_px,
                            "min_text_px": p.min_text_px, "overlapping_ticks": p.overlapping_ticks} for p in ps]
                       for k, ps in figures.items()},
           "curves_summary": {k: {mo: (float(c[2]) if k == "roc" and len(c) > 2 else None) for mo, c in v.items()}
                              for k, v in (curves or {}).items()}}
    write_text(_csv([*KEYS, *metrics], [[r[k] for k in KEYS] + [_cell(r.get(m)) for m in metrics] for r in rows]),
               out / "metrics.csv", force=True)
    write_text(_summary_csv(summary), out / "metrics_summary.csv", force=True)
    write_text(_comparisons_csv(comparisons), out / "comparisons.csv", force=True)
    write_json(doc, out / "metrics.json", force=True)
    text = H.evaluation_page(title, out, head, summary, comparisons, figures, worst, views, table, zones,
                             json.dumps(finite_json(settings or {}), indent=2, default=str))
    return write_text(text, out / REPORT_HTML, force=True)


def _check_target(out: Path, force: bool) -> Path:
    """`out` can take the report: not a file, and no report file in it unless `force`."""
    if out.exists() and not out.is_dir():
        raise InputError(out, "report output must be a folder", "a file", "choose a folder path")
    existing = [out / f for f in OUTPUTS if (out / f).exists()]
    if existing and not force:
        raise OutputExistsError(existing[0], "report exists", "an existing file", "pass --force to overwrite, or choose another folder")
    return out


def _summaries(table, models, zones, summarised) -> dict:
    """{model: {zone: {metric: mricore.stats.summarize(...)}}}, only where the model has the metric."""
    summary: dict = {}
    for mo in models:
        for z in zones:
            for m in summarised:
                vals = table[mo].get(z, {}).get(m)
                if vals:
                    summary.setdefault(mo, {}).setdefault(z, {})[m] = summarize(list(vals.values()))
    return summary


def _comparisons(table, models, zones, summarised) -> list[dict]:
    """Paired comparisons between models on shared cases, per zone and metric (none for one model;
    pairs with no shared finite case left out)."""
    comparisons = []
    if len(models) > 1:
        for z in zones:
            for m in summarised:
                per_model = {mo: table[mo].get(z, {}).get(m, {}) for mo in models}
                comparisons += [{"zone": z, "metric": m, **c} for c in compare_models(per_model) if c["n"] > 0]
    return comparisons


def _summary_csv(summary: dict) -> str:
    cols = ["mean", "ci_low", "ci_high", "median", "q1", "q3", "n", "n_excluded"]
    return _csv(["model", "zone", "metric", *cols], [[mo, z, m, *(_cell(s[c]) for c in cols)]
                                                    for mo, zs in summary.items() for z, ms in zs.items()
                                                    for m, s in ms.items()])


def _comparisons_csv(comparisons: list[dict]) -> str:
    cols = ["mean", "ci_low", "ci_high", "median", "wilcoxon_p", "n", "n_excluded"]
    return _csv(["zone", "metric", "a", "b", *cols], [[c["zone"], c["metric"], c["a"], c["b"],
                                                       *(_cell(c[k]) for k in cols)] for c in comparisons])


def _figures(table, head, zones, summarised, curves) -> dict:
    """{"first": forest plot and cases across models, "curves": ROC/FROC, "detail": every metric's
    distribution}, each a list of mricore.plots.Plot."""
    from . import plots
    from .report_data import pool

    names = [r["model"] for r in head["rows"]]
    pooled, _ = pool(table, {m: r["model"] for r in head["rows"] for m in r["models"]})
    first = []
    if len(names) > 1:
        first.append(plots.forest(head["forest"], head["lead"], head["metric"], zones))
    per_case = {z: {n: pooled[n].get(z, {}).get(head["metric"], {}) for n in names} for z in zones}
    first.append(plots.paired_cases(per_case, head["metric"], zones, names))
    detail = []
    for m in summarised:  # every metric some model has a value for, with only those models
        has = [mo for mo in table if any(math.isfinite(v) for z in zones for v in table[mo].get(z, {}).get(m, {}).values())]
        if has:
            detail.append(plots.distributions({z: {mo: list(table[mo].get(z, {}).get(m, {}).values()) for mo in has}
                                               for z in zones}, m, zones))
    return {"first": first, "curves": [plots.curves(k, c) for k, c in (curves or {}).items()], "detail": detail}


def _views(cases, worst) -> dict:
    """{case_id: mricore.thumbnails.CaseView} of the given case entries, thumbnails for the worst first."""
    from .thumbnails import MAX_THUMBNAILS, case_view

    if not cases:
        return {}
    by_id = {str(c["case_id"]): c for c in cases}
    order = [c for c, _, _ in worst if c in by_id] + [c for c in by_id if c not in {w[0] for w in worst}]
    return {c: case_view(by_id[c], thumbnail=i < MAX_THUMBNAILS) for i, c in enumerate(order)}
