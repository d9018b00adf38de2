"""What a report's first screen says, computed from its per-case table (mricore.report): the headline
table, the lead model against its best member and any compared maps, the paired differences behind
the forest plot and the order of the worst cases.

- The lead is the model named "ensemble" when there is one, else the first model.
- Models of one family (e.g. the folds of one architecture: `groups` maps model -> family) are pooled
  per case: a family's value for a case is the mean over its models that scored the case, so n counts
  cases and the bootstrap resamples cases, as for every other row.
- Peers (`peers`: a peer's or an earlier run's maps, `ensemble evaluate --compare`) are rows of their
  own and never the "best member".
- The best member, per zone, is the family with the best mean of the headline metric; the paired
  difference lead − model is taken on the cases both scored (mricore.stats.paired_difference).
"""

from __future__ import annotations

import math

import numpy as np

from .stats import paired_difference, summarize

KEYS = ("case_id", "model", "zone")  # what identifies a report row; every other key is a metric
LEAD = "ensemble"
LOWER_IS_BETTER = {"hd95", "assd", "rvd_abs", "fp", "fn", "fp_per_case", "false_positives", "apex_error_mm",
                   "base_error_mm"}


def per_case_table(rows: list[dict]) -> dict:
    """{model: {zone: {metric: {case_id: value}}}} of report rows (None -> NaN; a metric a row lacks
    is not there)."""
    t: dict = {}
    for r in rows:
        z = t.setdefault(str(r["model"]), {}).setdefault(str(r["zone"]), {})
        for k, v in r.items():
            if k not in KEYS:
                z.setdefault(k, {})[str(r["case_id"])] = float("nan") if v is None else float(v)
    return t


def headline_metric(metrics: list[str]) -> str:
    """DSC when scored, else the first metric with 'dsc' in its name, else the first metric."""
    return "dsc" if "dsc" in metrics else next((m for m in metrics if "dsc" in m), metrics[0])


def lead_model(models: list[str]) -> str:
    return LEAD if LEAD in models else models[0]


def pool(table: dict, groups: dict | None) -> tuple[dict, dict]:
    """(pooled table {family: {zone: {metric: {case: mean over its models}}}}, {family: [models]}),
    families in the order their first model appears."""
    groups = groups or {}
    members: dict[str, list[str]] = {}
    for model in table:
        members.setdefault(groups.get(model, model), []).append(model)
    pooled: dict = {}
    for fam, models in members.items():
        for model in models:
            for zone, ms in table[model].items():
                for metric, cases in ms.items():
                    for case, v in cases.items():
                        pooled.setdefault(fam, {}).setdefault(zone, {}).setdefault(metric, {}).setdefault(
                            case, []).append(v)
    for fam in pooled.values():
        for ms in fam.values():
            for metric, cases in ms.items():
                ms[metric] = {c: _mean_finite(v) for c, v in cases.items()}
    return pooled, members


def _mean_finite(values: list[float]) -> float:
    ok = [v for v in values if math.isfinite(v)]
    return float(np.mean(ok)) if ok else float("nan")


def headline(table: dict, models: list[str], zones: list[str], metrics: list[str], groups: dict | None = None,
             peers: tuple = ()) -> dict:
    """The first screen's numbers: {"lead", "metric", "secondary", "rows": [{"model", "models", "zones":
    {zone: {metric: summary}}}], "versus": {zone: [{"model", "role", "difference", "sentence"}]},
    "forest": {zone: {model: paired difference lead − model}}}. Rows: the lead, the peers, then the
    member families; `secondary` is hd95 when scored (None otherwise)."""
    pooled, members = pool(table, groups)
    metric = headline_metric(metrics)
    secondary = "hd95" if "hd95" in metrics and metric != "hd95" else None
    lead = groups.get(lead_model(models), lead_model(models)) if groups else lead_model(models)
    order = [lead] + [p for p in peers if p in pooled] + [f for f in pooled if f != lead and f not in peers]
    rows = [{"model": f, "models": members[f], "zones": {
        z: {m: summarize(list(pooled[f].get(z, {}).get(m, {}).values())) for m in (metric, secondary) if m}
        for z in zones}} for f in order]
    forest = {z: {f: _paired(pooled, lead, f, z, metric) for f in order[1:]} for z in zones}
    versus = {z: _versus(rows, forest[z], lead, z, metric, peers) for z in zones}
    return {"lead": lead, "metric": metric, "secondary": secondary, "rows": rows, "versus": versus,
            "forest": forest}


def _paired(pooled: dict, a: str, b: str, zone: str, metric: str) -> dict:
    va, vb = pooled[a].get(zone, {}).get(metric, {}), pooled[b].get(zone, {}).get(metric, {})
    shared = [c for c in va if c in vb]
    return paired_difference([va[c] for c in shared], [vb[c] for c in shared])


def _versus(rows: list[dict], forest: dict, lead: str, zone: str, metric: str, peers: tuple) -> list[dict]:
    """The lead against its best member (by mean `metric`) and against every peer, each with a sentence."""
    sign = -1.0 if metric in LOWER_IS_BETTER else 1.0
    means = {r["model"]: r["zones"][zone][metric]["mean"] for r in rows}
    members = [m for m in means if m != lead and m not in peers and math.isfinite(means[m])]
    out = []
    if members:
        best = max(members, key=lambda m: sign * means[m])
        out.append({"model": best, "role": "best member", "difference": forest[best]})
    out += [{"model": p, "role": "compared maps", "difference": forest[p]} for p in peers if p in forest]
    for v in out:
        v["sentence"] = sentence(zone, lead, v["model"], v["role"], metric, v["difference"])
    return out


def sentence(zone: str, lead: str, other: str, role: str, metric: str, d: dict) -> str:
    """One sentence, in words, on lead − other: which is better, by how much, the 95 % CI and n."""
    label = metric.upper() if metric in ("dsc", "hd95") else metric
    who = f"{other} ({role})"
    if d["n"] == 0:
        return f"{zone}: no case was scored by both the {lead} and {who}."
    if not math.isfinite(d["ci_low"]):
        return (f"{zone}: the {lead} and {who} differ by {d['mean']:+.3f} {label} on {d['n']} case; "
                f"one paired case gives no confidence interval.")
    ci = f"95 % CI {d['ci_low']:+.3f} to {d['ci_high']:+.3f}, {d['n']} paired cases"
    better = d["ci_low"] > 0 if metric not in LOWER_IS_BETTER else d["ci_high"] < 0
    worse = d["ci_high"] < 0 if metric not in LOWER_IS_BETTER else d["ci_low"] > 0
    if better:
        return f"{zone}: the {lead} beats {who} by {abs(d['mean']):.3f} {label} ({ci})."
    if worse:
        return f"{zone}: the {lead} is worse than {who} by {abs(d['mean']):.3f} {label} ({ci})."
    direction = "higher" if d["mean"] > 0 else "lower"
    return (f"{zone}: no clear difference between the {lead} and {who}: the {lead}'s {label} is "
            f"{abs(d['mean']):.3f} {direction} on average, and the {ci} of the paired difference includes 0.")


def worst_first(table: dict, model: str, zones: list[str], metric: str) -> list[tuple[str, str | None, float]]:
    """(case, zone, value) of `model`'s cases, worst zone value first (highest when lower is better);
    cases with no finite value last, zone None."""
    sign = -1.0 if metric in LOWER_IS_BETTER else 1.0
    cases = list(dict.fromkeys(c for z in zones for c in table.get(model, {}).get(z, {}).get(metric, {})))
    out = []
    for c in cases:
        vals = [(sign * table[model][z][metric][c], z) for z in zones
                if math.isfinite(table[model].get(z, {}).get(metric, {}).get(c, float("nan")))]
        worst = min(vals) if vals else (float("inf"), None)
        out.append((c, worst[1], sign * worst[0] if vals else float("nan")))
    return sorted(out, key=lambda t: (t[1] is None, sign * t[2] if t[1] else 0.0))
