"""Report figures drawn with matplotlib (Agg backend, no display), returned as `Plot` records.

Every figure is drawn for the report's width (`WIDTH_IN` at `DPI`, shown at its natural size, never
scaled down), with text of `FONT_PT` points: 10 pt at 100 dpi is 13.9 px on screen, above the 11 px a
report must keep. Model names sit on the vertical axis, written horizontally, one row each, so ten
models never smear into each other; `tick_label_boxes` measures the drawn labels and every `Plot`
carries the count of overlapping pairs (zero by construction, checked by the tests). Figures are
closed after saving so long batches do not leak memory.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np

DPI = 100           # pixels per inch of the PNG: the figure is shown 1:1 in the page
FONT_PT = 10        # every label, tick and title; 10 pt * 100 dpi / 72 = 13.9 px
WIDTH_IN = 12.0     # 1200 px: the page's content width (mricore.report_html.CSS max-width)
ROW_IN = 0.34       # height of one model row
PALETTE = 64        # colours kept in a figure's PNG (flat plot colours need few)
MODEL_COLOURS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf"]


@dataclass(frozen=True)
class Plot:
    """A drawn figure: PNG bytes, alt text, its size in pixels, the smallest text in pixels and the
    number of overlapping tick-label pairs (mricore.report records all of it in metrics.json)."""

    png: bytes
    alt: str
    width_px: int
    height_px: int
    min_text_px: float
    overlapping_ticks: int


def pyplot():
    """matplotlib.pyplot on the Agg backend, with the report's font sizes."""
    import matplotlib

    matplotlib.use("Agg")  # headless: CI has no display
    import matplotlib.pyplot as plt

    plt.rcParams.update({"font.size": FONT_PT, "axes.titlesize": FONT_PT, "axes.labelsize": FONT_PT,
                         "xtick.labelsize": FONT_PT, "ytick.labelsize": FONT_PT, "legend.fontsize": FONT_PT})
    return plt


def tick_label_boxes(fig) -> list[list[tuple[float, float, float, float]]]:
    """The drawn tick labels of `fig` in pixels (x0, y0, x1, y1), one list per axis (x and y of every
    panel), labels without text left out. Draws the figure first, so the boxes are what the PNG shows."""
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    out = []
    for ax in fig.axes:
        for labels in (ax.get_xticklabels(), ax.get_yticklabels()):
            boxes = [t.get_window_extent(renderer) for t in labels if t.get_visible() and t.get_text().strip()]
            out.append([(b.x0, b.y0, b.x1, b.y1) for b in boxes])
    return out


def overlapping_pairs(boxes: list[tuple[float, float, float, float]]) -> int:
    """How many pairs of boxes overlap by more than a pixel in both directions."""
    n = 0
    for i, a in enumerate(boxes):
        for b in boxes[i + 1:]:
            if min(a[2], b[2]) - max(a[0], b[0]) > 1 and min(a[3], b[3]) - max(a[1], b[1]) > 1:
                n += 1
    return n


def finish(fig, alt: str) -> Plot:
    """Measure the tick labels and the smallest text of `fig`, save it as PNG and close it."""
    plt = pyplot()
    overlaps = sum(overlapping_pairs(b) for b in tick_label_boxes(fig))
    sizes = [t.get_fontsize() for t in fig.findobj(lambda o: hasattr(o, "get_fontsize") and hasattr(o, "get_text")
                                                    and o.get_visible() and str(o.get_text()).strip())]
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, bbox_inches="tight", pad_inches=0.08)
    plt.close(fig)
    png = _palette_png(buf.getvalue())
    w, h = int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")  # the PNG IHDR chunk
    return Plot(png, alt, w, h, min(sizes, default=FONT_PT) * DPI / 72, overlaps)


def _horizontal() -> dict:
    """boxplot's keyword for horizontal boxes: `orientation` from matplotlib 3.10, `vert` before."""
    import matplotlib

    major, minor = (int(x) for x in matplotlib.__version__.split(".")[:2])
    return {"orientation": "horizontal"} if (major, minor) >= (3, 10) else {"vert": False}


_HORIZONTAL = _horizontal()


def _palette_png(png: bytes) -> bytes:
    """The PNG with a 64-colour palette: line plots look the same at a third to a quarter of the bytes."""
    from PIL import Image

    out = io.BytesIO()
    Image.open(io.BytesIO(png)).convert("RGB").quantize(colors=PALETTE).save(out, "PNG", optimize=True)
    return out.getvalue()


def _model_axes(plt, n_models: int, zones: list[str], sharey: bool = True):
    """One panel per zone side by side, models as rows (first model on top)."""
    height = max(1.6, ROW_IN * n_models + 1.0)
    fig, axes = plt.subplots(1, len(zones), figsize=(WIDTH_IN, height), squeeze=False, sharey=sharey)
    return fig, axes[0]


def _label_models(ax, models: list[str]) -> None:
    ax.set_yticks(range(len(models)), models)
    ax.set_ylim(len(models) - 0.5, -0.5)  # first model on top


def forest(diffs: dict, lead: str, metric: str, zones: list[str]) -> Plot:
    """Paired differences lead − model per zone: mean with its 95 % CI as a bar, a line at zero.

    diffs: {zone: {model: summary}} (mricore.stats.paired_difference: mean, ci_low, ci_high, n)."""
    plt = pyplot()
    models = list(dict.fromkeys(m for z in zones for m in diffs.get(z, {})))
    fig, axes = _model_axes(plt, len(models), zones)
    for ax, zone in zip(axes, zones):
        for i, m in enumerate(models):
            s = diffs.get(zone, {}).get(m)
            if s is None or not np.isfinite(s["mean"]):
                continue
            lo, hi = s["ci_low"], s["ci_high"]
            if np.isfinite(lo):
                ax.plot([lo, hi], [i, i], color="#444", lw=1.6)
            colour = "#2a7" if np.isfinite(lo) and lo > 0 else "#c33" if np.isfinite(hi) and hi < 0 else "#888"
            ax.plot(s["mean"], i, "o", color=colour, ms=6, zorder=3)
        ax.axvline(0, color="#999", lw=1, ls="--")
        ax.set_title(f"{zone}: {lead} − model")
        ax.set_xlabel(f"paired {metric} difference")
        ax.grid(axis="x", alpha=0.3)
    _label_models(axes[0], models)
    fig.tight_layout()
    return finish(fig, f"forest plot: paired {metric} difference {lead} minus each model, 95 % CI, per zone")


def paired_cases(values: dict, metric: str, zones: list[str], models: list[str]) -> Plot:
    """Per zone, every case as a line through its value in each model (models as rows): a case that
    fails in every model is a line far left all the way down; one that fails in one model is a kink.

    values: {zone: {model: {case_id: value}}} (NaN and missing values break the line)."""
    plt = pyplot()
    fig, axes = _model_axes(plt, len(models), zones)
    cases = list(dict.fromkeys(c for z in zones for m in models for c in values.get(z, {}).get(m, {})))
    colours = plt.get_cmap("tab10" if len(cases) <= 10 else "viridis")
    for ax, zone in zip(axes, zones):
        for k, c in enumerate(cases):
            x = [values.get(zone, {}).get(m, {}).get(c, np.nan) for m in models]
            colour = colours(k % 10 if len(cases) <= 10 else k / max(len(cases) - 1, 1))
            ax.plot(x, range(len(models)), "-o", ms=4, lw=1.2, alpha=0.8, color=colour,
                    label=c if zone == zones[-1] else None)
        ax.set_title(zone)
        ax.set_xlabel(metric)
        ax.grid(axis="x", alpha=0.3)
    _label_models(axes[0], models)
    if 0 < len(cases) <= 10:
        axes[-1].legend(loc="center left", bbox_to_anchor=(1.02, 0.5), frameon=False, title="case")
    fig.tight_layout()
    return finish(fig, f"{metric} per case and model, one line per case, per zone")


def distributions(values: dict, metric: str, zones: list[str]) -> Plot:
    """Box plot with the cases as points, models as rows, one panel per zone.

    values: {zone: {model: [per-case values]}} (NaNs dropped; an all-NaN model draws nothing)."""
    plt = pyplot()
    models = list(dict.fromkeys(m for z in zones for m in values.get(z, {})))
    fig, axes = _model_axes(plt, len(models), zones, sharey=True)
    rng = np.random.default_rng(0)  # fixed jitter: the same data gives the same picture
    for ax, zone in zip(axes, zones):
        data = [np.asarray(values.get(zone, {}).get(m, []), float) for m in models]
        data = [d[np.isfinite(d)] for d in data]
        if any(len(d) for d in data):
            ax.boxplot([d if len(d) else [np.nan] for d in data], positions=range(len(models)), widths=0.5,
                       showfliers=False, **_HORIZONTAL)
            for i, d in enumerate(data):
                ax.scatter(d, i + rng.uniform(-0.12, 0.12, len(d)), s=14, alpha=0.7,
                           color=MODEL_COLOURS[i % len(MODEL_COLOURS)], zorder=3)
        ax.set_title(zone)
        ax.set_xlabel(metric)
        ax.grid(axis="x", alpha=0.3)
    _label_models(axes[0], models)
    fig.tight_layout()
    return finish(fig, f"{metric} per zone and model")


def ranges(values: dict, reference: dict, unit: str) -> Plot:
    """One panel per zone: every case's value as a point on one row, the reference range shaded and
    its median a line. values: {zone: [values]}; reference: {zone: (low, median, high)}."""
    plt = pyplot()
    zones = list(values)
    fig, axes = plt.subplots(1, len(zones), figsize=(WIDTH_IN, 2.0), squeeze=False)
    rng = np.random.default_rng(0)
    for ax, zone in zip(axes[0], zones):
        v = np.asarray(values[zone], float)
        v = v[np.isfinite(v)]
        if zone in reference:
            lo, med, hi = reference[zone]
            ax.axvspan(lo, hi, color="#9c9", alpha=0.35, label="expert range")
            ax.axvline(med, color="#474", lw=1.2)
        ax.scatter(v, rng.uniform(-0.3, 0.3, len(v)), s=16, alpha=0.7, color="#1f77b4", zorder=3)
        ax.set_ylim(-0.6, 0.6)
        ax.set_yticks([])
        ax.set_title(f"{zone} ({len(v)} cases)")
        ax.set_xlabel(unit)
        ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    return finish(fig, "volumes per zone with the expert reference range")


def curves(kind: str, per_model: dict) -> Plot:
    """ROC (kind 'roc': {model: (fpr, tpr, auc)}) or FROC (kind 'froc': {model: (fp_per_case,
    sensitivity[, ...])}) curves of several models on one axis."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5.0, 4.2))
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
    ax.set_title(kind.upper())
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    return finish(fig, f"{kind} curves")
