"""`ensemble evaluate`: the ensemble and each member scored side by side on the same cases.

Per case, model (the ensemble and every member that could run) and zone (WG, TZ, PZ): DSC,
sensitivity, specificity and HD95 (mm) from mricore.metrics.zone_metrics on the input grid, under its
written empty-mask rule, and where along the gland it is right: DSC in the apex, mid-gland and base
thirds and the through-plane extent error at each end in mm (mricore.extent). Members are scored as they enter the ensemble (argmax on their working grid,
nearest neighbour onto the input grid) with the ensemble's largest-component rule, so the comparison
isolates the combination. Per zone, the best member is the one with the highest mean DSC over the
cases; the per-case paired differences ensemble − best member get a mean, median, case-level
bootstrap 95 % CI and Wilcoxon p (mricore.stats.paired_difference).

Every case is predicted even when its input checks say reject (the verdict is reported, not obeyed):
the ensemble's rows carry `review_score` and `flagged` (1 when the verdict is not ok) beside its
metrics, so the report shows how the flag relates to the DSC.

Members of one architecture (the folds of a config) are pooled per case into one headline row, and
the best member is the best such family (mricore.report_data); the single folds stay in the report's
detail and in metrics.csv. With `compare` (a folder of zone maps in any layout mricore.results
.find_predictions reads: a peer's predictions, an earlier `ensemble predict` batch or an earlier
evaluation's REPORT_DIR) those maps are scored as one more model and the ensemble is compared with them.

Writes, in REPORT_DIR: the report files of mricore.report.write_report (report.html first), evaluate.json
(summaries, paired differences, per-case verdicts and reasons), review.csv (case, verdict, score,
reasons) and one case folder per case, REPORT_DIR/<case_id>/ (mricore.results: the ensemble's zones,
uncertainty, zones.json and its report.html), which the report's thumbnails link to.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from mricore.errors import GeometryError, InputError
from mricore.extent import METRICS as EXTENT_METRICS
from mricore.zones import ZONES

METRICS = ("dsc", "sensitivity", "specificity", "hd95", *EXTENT_METRICS)


def score_case(result, ref: np.ndarray, affine, member_names: list[str], largest_component: bool) -> list[dict]:
    """Rows {case_id?, model, zone, metrics} for the ensemble and each member of one case, on the grid of
    voxel-to-world `affine`."""
    from mricore.extent import scored
    from mricore.zones import keep_largest_component

    preds = {"ensemble": result.label}
    for name, lab in zip(member_names, result.member_labels):
        preds[name] = keep_largest_component(lab) if largest_component else lab
    rows = []
    for model, pred in preds.items():
        for zone, m in scored(pred, ref, affine).items():
            rows.append({"model": model, "zone": zone, **{k: m[k] for k in METRICS}})
    return rows


def paired_summary(rows: list[dict], groups: dict | None = None, peers: tuple = ()) -> dict:
    """Per zone: DSC summary per headline model (the ensemble, compared maps, member families with their
    folds pooled), the best member family, ensemble − best member and ensemble − each compared map
    (mricore.report_data.headline, the numbers the report's first screen shows)."""
    from mricore.report_data import headline, per_case_table

    table = per_case_table(rows)
    head = headline(table, list(table), list(ZONES), list(METRICS), groups, peers)
    out = {}
    for zone in ZONES:
        z = {"dsc": {r["model"]: r["zones"][zone]["dsc"] for r in head["rows"]}}
        for v in head["versus"][zone]:
            if v["role"] == "best member":
                z.update(best_member=v["model"], ensemble_minus_best_member_dsc=v["difference"])
            else:
                z.setdefault("ensemble_minus_compared_dsc", {})[v["model"]] = v["difference"]
        z["sentences"] = [v["sentence"] for v in head["versus"][zone]]
        out[zone] = z
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
             cross_validated: bool = False, compare=None) -> dict:
    """Score the ensemble of `config` and its members on every case of `ref` that has `label`.

    cross_validated: score each case only with the members that held it out (see `cv_groups`); members
    are then named by their training config name (e.g. unet2d), pooled over folds, so the paired
    comparison is ensemble-of-fold-k vs each architecture of fold k on the same held-out cases.
    compare: a folder of zone maps to score beside them and compare the ensemble with (module docstring).
    Every input and output is checked before the first network runs.
    """
    from mricore.outputs import check_absent, check_output_dir, write_csv, write_json
    from mricore.report import OUTPUTS
    from mricore.results import case_dir, check_case

    from .members import read_members
    from .predict import resolve_config

    cfg = resolve_config(config)
    members = read_members(cfg.members)
    cases = labelled_cases(ref, label)
    out = check_output_dir(out_dir)
    check_absent([out / name for name in (*OUTPUTS, "evaluate.json", "review.csv")], force)
    held = {c.case_id: list(range(len(members))) for c in cases}
    if cross_validated:
        held = cv_groups(members, [c.case_id for c in cases])
        cases = [c for c in cases if c.case_id in held]
        if not cases:
            raise InputError(ref, "no reference case is a validation case of any member", 0,
                             "evaluate cross-validated members on the dataset they were trained from")
    peer = compared_maps(compare, cases)
    for c in cases:
        check_case(case_dir(out, c.case_id, batch=True), force)
    rows, skipped, reviews = score_cases(cases, [[members[i] for i in held[c.case_id]] for c in cases], cfg,
                                         label, cross_validated, progress, out, peer)
    families = None if cross_validated else {m.name: m.meta.name or m.name for m in members}
    peers = (peer[0],) if peer else ()
    summary = {"reference": str(ref), "label": label, "method": cfg.method, "n_cases": len(cases),
               "cross_validated": cross_validated,
               "folds": {c: sorted({str(members[i].meta.fold) for i in g}) for c, g in held.items()}
               if cross_validated else None,
               "members": [m.name for m in members], "compare": str(compare) if compare else None,
               "skipped": skipped, "zones": paired_summary(rows, families, peers),
               "per_case_dsc": _per_case_dsc(rows), "review": reviews}
    _write_report(out, rows, summary, _case_entries(out, cases, label), families, peers, force)
    write_csv([{"case_id": c, "verdict": r["verdict"], "score": r["score"], "reasons": "; ".join(r["reasons"])}
               for c, r in reviews.items()], out / "review.csv", force=True)
    write_json(summary, out / "evaluate.json", force=True)
    return summary


def compared_maps(compare, cases: list) -> tuple[str, dict] | None:
    """(model name, {case_id: zone map}) of the `compare` folder's maps for `cases`; None without one.
    Raises InputError when the folder holds no map of any of the cases."""
    from mricore.results import find_predictions

    if compare is None:
        return None
    preds = find_predictions(compare)
    mine = {c.case_id: preds[c.case_id] for c in cases if c.case_id in preds}
    if not mine:
        raise InputError(compare, "--compare maps must include some of the evaluated cases",
                         f"maps of {sorted(preds)[:5]}", "pass the predictions of the same dataset")
    return f"{Path(compare).resolve().name} (compared)", mine


def labelled_cases(ref, label: str) -> list:
    """The cases of dataset `ref` that have the reference label `label` (at least one, else InputError)."""
    from mricore.datasets import load_dataset

    cases = [c for c in load_dataset(ref) if label in c.labels]
    if not cases:
        raise InputError(ref, f"no case has the reference label '{label}'", 0,
                         "point --ref to labelled cases, or choose --label (zones, zones_ai)")
    return cases


def score_cases(cases: list, case_members: list[list], cfg, label: str, cross_validated: bool,
                progress: bool, out: Path, peer: tuple[str, dict] | None = None) -> tuple[list[dict], dict, dict]:
    """Predict every case with its members (all planned before the first network runs), write its
    case folder out/<case_id>/ and score it, and the `peer` maps beside it ->
    (metric rows, {case_id: skipped members}, {case_id: verdict, reasons, score})."""
    from dataclasses import replace

    from tqdm import tqdm

    from mricore.datasets import read_ref
    from mricore.results import case_dir

    from .predict import plan_members, run_case, source_from_case, write_outputs

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
        write_outputs(case_dir(out, case.case_id, batch=True), image, result, skipped[case.case_id], s,
                      replace(cfg, probabilities=False), False, True)
        names = [m["member"] for m in result.info["members_used"]]
        if cross_validated:  # one name per architecture/config, pooled over folds
            by_name = {m.name: m.meta.name or m.name for m in used}
            names = [by_name[n] for n in names]
        rev = result.info["review"]
        for r in score_case(result, reference.array[0], image.affine, names, cfg.largest_component):
            if r["model"] == "ensemble":  # the verdict beside the metrics it should predict
                r.update(review_score=rev["score"], flagged=float(rev["verdict"] != "ok"))
            rows.append({"case_id": case.case_id, **r})
        if peer and case.case_id in peer[1]:
            rows += _score_map(peer[0], peer[1][case.case_id], reference)
        reviews[case.case_id] = {k: rev[k] for k in ("verdict", "reasons", "score")}
    return rows, skipped, reviews


def _score_map(model: str, path: Path, reference) -> list[dict]:
    """Rows of one compared zone map against its reference (it must lie on the reference grid)."""
    from mricore.extent import scored
    from mricore.io import read_label

    pred = read_label(path, "compared map", reference.case_id)
    if not pred.same_grid(reference):
        raise GeometryError(path, "a compared map must lie on its reference's grid",
                            f"shape {pred.shape} vs {reference.shape}", "compare maps predicted on the same images")
    return [{"case_id": reference.case_id, "model": model, "zone": zone, **{k: m[k] for k in METRICS}}
            for zone, m in scored(pred.array[0], reference.array[0], reference.affine).items()]


def _per_case_dsc(rows: list[dict]) -> dict:
    """{zone: {model: {case_id: DSC}}}: the numbers behind every summary, kept beside it."""
    out: dict = {}
    for r in rows:
        out.setdefault(r["zone"], {}).setdefault(r["model"], {})[r["case_id"]] = r["dsc"]
    return out


def _case_entries(out: Path, cases: list, label: str) -> list[dict]:
    """The report's case entries (mricore.thumbnails): the ensemble's map in its case folder over the
    reference channel, against the reference."""
    from mricore.results import ZONES_NII, case_dir

    return [{"case_id": c.case_id, "pred": case_dir(out, c.case_id, batch=True) / ZONES_NII,
             "image": c.images.get("T2W") or next(iter(c.images.values())), "ref": c.labels[label]} for c in cases]


def _write_report(out: Path, rows: list[dict], summary: dict, cases: list[dict], families: dict | None,
                  peers: tuple, force: bool) -> None:
    from mricore.report import write_report

    settings = {"method": summary["method"], "reference": summary["reference"], "label": summary["label"],
                "members": ", ".join(summary["members"]), "cross_validated": summary["cross_validated"],
                "compare": summary["compare"]}
    write_report(out, rows, title="Ensemble vs members", settings=settings, cases=cases, groups=families,
                 peers=peers, force=force)
