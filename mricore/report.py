"""The one report engine behind `segment evaluate`, `ensemble evaluate` and `localize evaluate`.

    write_report(out_dir, rows, *, title, settings=None, overlays=None, curves=None, force=False) -> Path

writes into `out_dir`:
- `metrics.csv`: one row per case, model and zone, one column per metric (empty cell = NaN).
- `metrics.json`: summary per model / zone / metric (mean, median, IQR, bootstrap 95 % CI, n,
  n_excluded), paired comparisons between models on shared cases, settings, software version and
  case counts. NaN is written as null (JSON has no NaN).
- `report.html` (rendered by mricore.report_html): self-contained (PNG figures inline as base64,
  inline CSS, no scripts, no links to fetch), with the summary table, box/strip plots per metric
  and zone, ROC/FROC curves when given, the model-comparison table when there are several models,
  and best/median/worst overlays.

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
from .errors import InputError, OutputExistsError
from .outputs import write_json, write_text
from .report_html import render_html
from .results import REPORT_HTML
from .stats import compare_models, summarize

KEYS = ("case_id", "model", "zone")
OUTPUTS = ("metrics.csv", "metrics.json", REPORT_HTML)
# Metrics where lower is better (used to rank overlays best -> worst).
LOWER_IS_BETTER = {"hd95", "assd", "rvd_abs", "fp", "fn", "fp_per_case"}
# Raw counts stay in metrics.csv but are not summarised or plotted.
COUNT_COLUMNS = {"tp", "fp", "fn", "tn"}


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


def _clean(o):
    """NaN/inf -> None, numpy -> Python, recursively (JSON has no NaN)."""
    if isinstance(o, dict):
        return {str(k): _clean(v) for k, v in o.items()}
    if isinstance(o, (list, tuple, np.ndarray)):
        return [_clean(v) for v in o]
    if isinstance(o, (np.floating, float)):
        return float(o) if math.isfinite(o) else None
    if isinstance(o, np.integer):
        return int(o)
    return o


def _ordered(values) -> list[str]:
    return list(dict.fromkeys(values))


def _table(rows) -> dict:
    """{model: {zone: {metric: {case_id: value}}}} from the rows."""
    t: dict = {}
    for r in rows:
        z = t.setdefault(str(r["model"]), {}).setdefault(str(r["zone"]), {})
        for k, v in r.items():
            if k not in KEYS:
                z.setdefault(k, {})[str(r["case_id"])] = _num(v)
    return t


def _csv(rows, metrics) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow([*KEYS, *metrics])
    for r in rows:
        cells = []
        for m in metrics:
            v = r.get(m)
            # Counts stay integers; floats keep full precision (repr); NaN/None become empty cells.
            cells.append(str(int(v)) if isinstance(v, (int, np.integer)) else
                         "" if not math.isfinite(_num(v)) else repr(float(v)))
        w.writerow([r[k] for k in KEYS] + cells)
    return buf.getvalue()


def _rank_cases(table, model, zone, metric) -> list[str]:
    """Case ids with a finite value, best first."""
    vals = {c: v for c, v in table.get(model, {}).get(zone, {}).get(metric, {}).items() if math.isfinite(v)}
    return sorted(vals, key=lambda c: vals[c], reverse=metric not in LOWER_IS_BETTER)


def _pick_overlays(overlays, table, models, zones, metrics) -> list[tuple[str, dict]]:
    """(caption, entry) for the best, median and worst case of the first model by the headline metric
    (DSC of the first zone when present); entries for other cases are ignored."""
    by_case = {str(o["case_id"]): o for o in overlays}
    metric = "dsc" if "dsc" in metrics else next((m for m in metrics if m not in COUNT_COLUMNS), metrics[0])
    zone = "WG" if "WG" in zones else zones[0]
    ranked = [c for c in _rank_cases(table, models[0], zone, metric) if c in by_case]
    if not ranked:
        return [(f"case {c}", o) for c, o in list(by_case.items())[:3]]
    picks = {"best": ranked[0], "median": ranked[len(ranked) // 2], "worst": ranked[-1]}
    out, done = [], set()
    for name, c in picks.items():
        if c not in done:
            v = table[models[0]][zone][metric][c]
            out.append((f"{name}: {c} ({models[0]}, {zone} {metric} {v:.3f})", by_case[c]))
            done.add(c)
    return out


def _overlay_png(entry: dict, caption: str) -> bytes:
    from .errors import GeometryError
    from .io import read_label, read_nifti
    from .plots import overlay

    image = read_nifti(entry["image"], "image", str(entry["case_id"]))
    ref = read_label(entry["ref"], "ref", str(entry["case_id"]))
    pred = read_label(entry["pred"], "pred", str(entry["case_id"]))
    for v, name in ((ref, "ref"), (pred, "pred")):
        if v.shape != image.shape:
            raise GeometryError(entry[name], "overlay volumes must share the image grid",
                                f"shape {v.shape} vs image {image.shape}", "resample with nearest neighbour")
    return overlay(image.array[0], ref.array[0], pred.array[0], image.affine, caption)


def write_report(out_dir, rows, *, title, settings=None, overlays=None, curves=None, force=False) -> Path:
    """Summarise per-case metric rows into a report folder; returns the path of report.html.

    Args:
        out_dir: report folder (created).
        rows: list of dicts with "case_id", "model", "zone" and numeric metric columns (None/NaN =
            undefined, excluded from summaries and counted as excluded).
        title: report title.
        settings: JSON-able dict of what produced the numbers (paths, label key, thresholds...).
        overlays: list of {"case_id", "image", "ref", "pred"} NIfTI paths on one grid; the best,
            median and worst of these cases (first model, WG DSC or the first metric) are drawn.
        curves: {"roc": {model: (fpr, tpr, auc)}, "froc": {model: (fp_per_case, sensitivity)}}.
        force: overwrite existing report files.

    Raises:
        InputError: empty/invalid rows. OutputExistsError: a report file exists and force is False.
    """
    metrics = _validate(rows)
    out = _check_target(Path(out_dir), force)
    table = _table(rows)
    models, zones, cases = (_ordered(str(r[k]) for r in rows) for k in ("model", "zone", "case_id"))
    summarised = [m for m in metrics if m not in COUNT_COLUMNS]
    summary = _summaries(table, models, zones, summarised)
    comparisons = _comparisons(table, models, zones, summarised)
    counts = {"cases": len(cases), "models": models, "zones": zones, "rows": len(rows),
              "cases_per_model_zone": {mo: {z: len(next(iter(table[mo][z].values()), {})) for z in table[mo]}
                                       for mo in models}}
    figures = _figures(table, models, zones, summarised, curves)
    overlay_imgs = _overlays(overlays, table, models, zones, metrics)
    doc = {"title": title, "software": {"mricore": __version__}, "settings": settings or {}, "counts": counts,
           "summary": summary, "comparisons": comparisons,
           "curves_summary": {k: {mo: (float(c[2]) if k == "roc" and len(c) > 2 else None) for mo, c in v.items()}
                              for k, v in (curves or {}).items()}}
    write_text(_csv(rows, metrics), out / "metrics.csv", force=True)
    write_json(_clean(doc), out / "metrics.json", force=True)
    settings_text = json.dumps(_clean(settings or {}), indent=2, default=str)
    return write_text(render_html(title, summary, comparisons, settings_text, counts, figures, overlay_imgs),
                      out / REPORT_HTML, force=True)


def _check_target(out: Path, force: bool) -> Path:
    """`out` can take the report: not a file, and no report file in it unless `force`."""
    if out.exists() and not out.is_dir():
        raise InputError(out, "report output must be a folder", "a file", "choose a folder path")
    existing = [out / f for f in OUTPUTS if (out / f).exists()]
    if existing and not force:
        raise OutputExistsError(existing[0], "report exists", None, "pass --force to overwrite, or choose another folder")
    return out


def _summaries(table, models, zones, summarised) -> dict:
    """{model: {zone: {metric: mricore.stats.summarize(...)}}}."""
    from tqdm import tqdm

    summary: dict = {}
    jobs = [(mo, z, m) for mo in models for z in zones if z in table[mo] for m in summarised]
    for mo, z, m in tqdm(jobs, desc="summaries", disable=len(jobs) < 50, leave=False):
        vals = table[mo][z].get(m, {})
        summary.setdefault(mo, {}).setdefault(z, {})[m] = summarize(list(vals.values()))
    return summary


def _comparisons(table, models, zones, summarised) -> list[dict]:
    """Paired comparisons between models on shared cases, per zone and metric (none for one model)."""
    comparisons = []
    if len(models) > 1:
        for z in zones:
            for m in summarised:
                per_model = {mo: table[mo].get(z, {}).get(m, {}) for mo in models}
                for c in compare_models(per_model):
                    comparisons.append({"zone": z, "metric": m, **c})
    return comparisons


def _figures(table, models, zones, summarised, curves) -> list[tuple[str, bytes]]:
    """(alt text, PNG): a box/strip plot per metric with any finite value, then the given curves."""
    from tqdm import tqdm

    from . import plots

    figures = []
    plot_jobs = [m for m in summarised if any(math.isfinite(v) for mo in models for z in table[mo]
                                               for v in table[mo][z].get(m, {}).values())]
    for m in tqdm(plot_jobs, desc="plots", leave=False):
        vals = {z: {mo: list(table[mo].get(z, {}).get(m, {}).values()) for mo in models} for z in zones}
        figures.append((f"{m} per zone", plots.box_strip(vals, m, zones)))
    for kind, per_model in (curves or {}).items():
        figures.append((f"{kind} curves", plots.curves(kind, per_model)))
    return figures


def _overlays(overlays, table, models, zones, metrics) -> list[tuple[str, bytes]]:
    """(alt text, PNG) of the best, median and worst of the `overlays` cases (none without overlays)."""
    from tqdm import tqdm

    if not overlays:
        return []
    picks = _pick_overlays(overlays, table, models, zones, metrics)
    return [(f"overlay {caption}", _overlay_png(entry, caption))
            for caption, entry in tqdm(picks, desc="overlays", leave=False)]
