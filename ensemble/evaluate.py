"""`ensemble evaluate`: the ensemble and each member scored side by side on the same cases.

Per case, model (the ensemble and every member that could run) and zone (WG, TZ, PZ): DSC,
sensitivity, specificity and HD95 (mm) from mricore.metrics.zone_metrics on the input grid, under its
written empty-mask rule. Members are scored as they enter the ensemble (argmax on their working grid,
nearest neighbour onto the input grid) with the ensemble's largest-component rule, so the comparison
isolates the combination. Per zone, the best member is the one with the highest mean DSC over the
cases; the per-case paired differences ensemble − best member get a mean, median, case-level
bootstrap 95 % CI and Wilcoxon p (mricore.stats.paired_difference).

Every case is predicted even when its input checks say reject (the verdict is reported, not obeyed):
the ensemble's rows carry `review_score` and `flagged` (1 when the verdict is not ok) beside its
metrics, so the report shows how the flag relates to the DSC.

Writes, in REPORT_DIR: metrics.csv, metrics.json, report.html (mricore.report.write_report),
evaluate.json (summaries, paired differences, per-case verdicts and reasons) and review.csv (case,
verdict, score, reasons).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from mricore.errors import GeometryError, InputError
from mricore.results import REPORT_HTML
from mricore.zones import ZONES

METRICS = ("dsc", "sensitivity", "specificity", "hd95")


def score_case(result, ref: np.ndarray, spacing, member_names: list[str], largest_component: bool) -> list[dict]:
    """Rows {case_id?, model, zone, metrics} for the ensemble and each member of one case."""
    from mricore.metrics import zone_metrics
    from mricore.zones import keep_largest_component

    preds = {"ensemble": result.label}
    for name, lab in zip(member_names, result.member_labels):
        preds[name] = keep_largest_component(lab) if largest_component else lab
    rows = []
    for model, pred in preds.items():
        for zone, m in zone_metrics(pred, ref, spacing).items():
            rows.append({"model": model, "zone": zone, **{k: m[k] for k in METRICS}})
    return rows


def paired_summary(rows: list[dict]) -> dict:
    """Per zone: mean DSC per model, the best member, and ensemble − best member paired differences."""
    from mricore.stats import paired_difference, summarize

    out = {}
    for zone in ZONES:
        by_model: dict[str, dict[str, float]] = {}
        for r in rows:
            if r["zone"] == zone:
                by_model.setdefault(r["model"], {})[r["case_id"]] = r["dsc"]
        summaries = {m: summarize(list(v.values())) for m, v in by_model.items()}
        members = [m for m in by_model if m != "ensemble"]
        if not members or "ensemble" not in by_model:
            out[zone] = {"dsc": summaries}
            continue
        best = max(members, key=lambda m: np.nan_to_num(summaries[m]["mean"], nan=-1.0))
        cases = [c for c in by_model["ensemble"] if c in by_model[best]]
        diff = paired_difference([by_model["ensemble"][c] for c in cases], [by_model[best][c] for c in cases])
        out[zone] = {"dsc": summaries, "best_member": best, "ensemble_minus_best_member_dsc": diff}
    return out


def cv_groups(members, case_ids: list[str]) -> dict[str, list[int]]:
    """Cross-validated scoring: case id -> indices of the members that held it out.

    Each member's model.json lists its held-out (outer) cases (`validation.cases`, written by `segment
    train`); a case is scored only by the members that held it out, so the fold-k ensemble is judged on
    fold k's held-out patients. Those patients decided nothing in training: the inner-validation cases
    that chose a member's epoch (`selection.cases`) are training patients and never count here. Cases no
    member held out are left out.
    """
    out: dict[str, list[int]] = {}
    for i, m in enumerate(members):
        for c in (m.validation or {}).get("cases", []):
            if c in case_ids:
                out.setdefault(c, []).append(i)
    return out


def evaluate(config, ref, out_dir, label: str = "zones", force: bool = False, progress: bool = True,
             cross_validated: bool = False) -> dict:
    """Score the ensemble of `config` and its members on every case of `ref` that has `label`.

    cross_validated: score each case only with the members that held it out (see `cv_groups`); members
    are then named by their training config name (e.g. unet2d), pooled over folds, so the paired
    comparison is ensemble-of-fold-k vs each architecture of fold k on the same held-out cases.
    """
    from mricore.outputs import check_absent, check_output_dir, write_csv, write_json

    from .members import read_members
    from .predict import resolve_config

    cfg = resolve_config(config)
    members = read_members(cfg.members)
    cases = labelled_cases(ref, label)
    out = check_output_dir(out_dir)
    check_absent([out / name for name in ("evaluate.json", "metrics.csv", "metrics.json", REPORT_HTML,
                                          "review.csv")], force)
    groups = {c.case_id: list(range(len(members))) for c in cases}
    if cross_validated:
        groups = cv_groups(members, [c.case_id for c in cases])
        cases = [c for c in cases if c.case_id in groups]
        if not cases:
            raise InputError(ref, "no reference case is a validation case of any member", 0,
                             "evaluate cross-validated members on the dataset they were trained from")
    rows, skipped, reviews = score_cases(cases, [[members[i] for i in groups[c.case_id]] for c in cases], cfg,
                                         label, cross_validated, progress)
    summary = {"reference": str(ref), "label": label, "method": cfg.method, "n_cases": len(cases),
               "cross_validated": cross_validated,
               "folds": {c: sorted({str(members[i].meta.fold) for i in g}) for c, g in groups.items()}
               if cross_validated else None,
               "members": [m.name for m in members], "skipped": skipped, "zones": paired_summary(rows),
               "per_case_dsc": _per_case_dsc(rows), "review": reviews}
    _write_report(out, rows, summary, force)
    write_csv([{"case_id": c, "verdict": r["verdict"], "score": r["score"], "reasons": "; ".join(r["reasons"])}
               for c, r in reviews.items()], out / "review.csv", force=True)
    write_json(summary, out / "evaluate.json", force=True)
    return summary


def labelled_cases(ref, label: str) -> list:
    """The cases of dataset `ref` that have the reference label `label` (at least one, else InputError)."""
    from mricore.datasets import load_dataset

    cases = [c for c in load_dataset(ref) if label in c.labels]
    if not cases:
        raise InputError(ref, f"no case has the reference label '{label}'", 0,
                         "point --ref to labelled cases, or choose --label (zones, zones_ai)")
    return cases


def score_cases(cases: list, case_members: list[list], cfg, label: str, cross_validated: bool,
                progress: bool) -> tuple[list[dict], dict, dict]:
    """Predict every case with its members (all planned before the first network runs) and score it ->
    (metric rows, {case_id: skipped members}, {case_id: verdict, reasons, score})."""
    from tqdm import tqdm

    from mricore.datasets import read_ref

    from .predict import plan_members, run_case, source_from_case

    sources = [source_from_case(c) for c in cases]
    for s, used in zip(sources, case_members):
        plan_members(s, used, cfg, notify=False)
    rows, skipped, reviews = [], {}, {}
    for case, s, used in tqdm(list(zip(cases, sources, case_members)), desc="ensemble evaluate",
                              disable=not progress, file=sys.stderr):
        image, result, skipped[case.case_id] = run_case(s, used, cfg, notify=False, accept=True)
        reference = read_ref(case.labels[label], label, case.case_id)
        if not reference.same_grid(image):
            raise GeometryError(case.labels[label].path, "reference label grid must equal the image grid",
                                f"shape {reference.shape} vs {image.shape}",
                                "resample the label onto the T2W with nearest neighbour")
        names = [m["member"] for m in result.info["members_used"]]
        if cross_validated:  # one name per architecture/config, pooled over folds
            by_name = {m.name: m.meta.name or m.name for m in used}
            names = [by_name[n] for n in names]
        rev = result.info["review"]
        for r in score_case(result, reference.array[0], image.spacing, names, cfg.largest_component):
            if r["model"] == "ensemble":  # the verdict beside the metrics it should predict
                r.update(review_score=rev["score"], flagged=float(rev["verdict"] != "ok"))
            rows.append({"case_id": case.case_id, **r})
        reviews[case.case_id] = {k: rev[k] for k in ("verdict", "reasons", "score")}
    return rows, skipped, reviews


def _per_case_dsc(rows: list[dict]) -> dict:
    """{zone: {model: {case_id: DSC}}}: the numbers behind every summary, kept beside it."""
    out: dict = {}
    for r in rows:
        out.setdefault(r["zone"], {}).setdefault(r["model"], {})[r["case_id"]] = r["dsc"]
    return out


def _write_report(out: Path, rows: list[dict], summary: dict, force: bool) -> None:
    from mricore.report import write_report

    settings = {"method": summary["method"], "reference": summary["reference"], "label": summary["label"],
                "members": ", ".join(summary["members"])}
    write_report(out, rows, title="Ensemble vs members", settings=settings, force=force)
