"""The review calibration out of sample: bench/qa_bench.py's failure set on the studies that some members never trained on.

bench/qa_bench.py runs the whole bundle on every study, and the bundle trained on nearly all of them
(expert, silver and teacher labels), so its maps are in-sample. Here each base study is segmented only by
the members that never trained on it, with the same combination rules and the bundle's locator:

- What a member trained on is rebuilt from its folder (segment.provenance: its config.yaml's datasets,
  silver label and teacher datalist, its fold checked against splits.json); a study is out of sample for
  a member when no study of its patient (patient ids compared across datasets) trained it or chose its
  epoch. The same is asked of the locator. Where the teacher datalist (runs/teacher/datalist.json) is not
  here, every T2W study of the datasets its writer draws from (bench.peer_accuracy.TEACHER_DATASETS) is
  taken to be in it: an upper bound, so no study is called out of sample wrongly.
- Studies with no out-of-sample member are left out and listed with the reason. No member is retrained.
- The corrupted variants are qa_bench's, drawn from the same seeded stream in the same study order (the
  studies left out still draw, unrun), so each variant here is the one qa_bench measured in sample.
- Halves are qa_bench's (by patient); the limits are re-fitted on half A and scored on half B, and
  swapped (qa_bench.calibrate / score). Detection, false alarms and the failure-score AUC come with
  bootstrap 95 % CIs that resample STUDIES (variants of one study are not independent), for the held-out
  halves pooled (each study scored by limits fitted without it), for the shipped limits (fitted in sample
  by qa_bench on its half A) on these maps, and for the shipped limits on the same studies' in-sample
  maps (bench/results/qa_bench.json's rows) for contrast. The CIs hold the fitted limits fixed.

When members trained for calibration folds exist (each trained without a group of these studies,
bench/calibration_folds.py), pass their ensemble config as --config and their locators as --locators:
every study then finds members, and a locator, that never saw it (a study the bundle's locator saw takes
the first of --locators that did not), with nothing else changed here.

    python -m bench.qa_oos [--data ../shared/data] [--config ENSEMBLE_YAML] [--locators DIR ...] [--rows JSON]
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from bench.common import RESULTS, ROOT, add_data, add_out, command, parser, write_result
from bench.qa_bench import FAIL_DSC, base_studies, calibrate, corruptions, halves, measure_study, review_of, score
from mricore.errors import ConfigError
from mricore.review_limits import FITTED, MARGIN, has_outcome

N_BOOT = 2000  # study-level bootstrap resamples (seeded)
IN_SAMPLE = RESULTS / "qa_bench.json"


# ----------------------------------------------------------------------------- who trained on what

def teacher_stand_in(cfg, data: Path) -> tuple[list | None, str]:
    """(teacher cases to assume, how the teacher set was known): None when the members' teacher datalist
    is here (segment.provenance reads it), else every T2W study of peer_accuracy's teacher datasets."""
    from bench.peer_accuracy import TEACHER_DATASETS
    from mricore.datasets import load_case_folders
    from segment.caseprep import TEACHER_LABEL
    from segment.provenance import teacher_path

    named = sorted({str(t) for m in [*cfg.members, cfg.locator] if m and (t := teacher_path(trained_folder(m), ROOT))})
    if all(Path(t).is_file() for t in named):
        return None, f"read from {', '.join(named) or 'none named'}"
    cases = []
    for ds in TEACHER_DATASETS:
        for c in load_case_folders(data / ds):
            if "T2W" in c.images:  # a stand-in label: only its presence is read (resolve_split)
                cases.append(replace(c, labels={TEACHER_LABEL: c.images["T2W"]}, dataset=f"{ds}_teacher"))
    return cases, (f"{', '.join(named)} not here: assumed to hold every T2W study of {list(TEACHER_DATASETS)} "
                   f"({len(cases)} studies; its writer keeps those TAPS segments: an upper bound)")


def trained_folder(member) -> Path:
    """The folder that holds what `member` trained on: itself, or for an `ensemble export` member the packed
    folder it was exported from (model.json onnx.exported_from, beside the export's onnx/ folder)."""
    from mricore.modelfolder import read_model

    member = Path(member)
    onnx = read_model(member).onnx
    return member.parent.parent / onnx["exported_from"] if onnx else member


def provenance(cfg, data: Path, locators: dict[str, str]) -> dict:
    """{"members": {name: {patient: studies}}, "locators": {name: {patient: studies}} (of `locators`, in
    their order), "teacher": how it was known}."""
    from segment.provenance import seen_studies

    teacher, how = teacher_stand_in(cfg, data)
    members = {member_name(m): seen_studies(trained_folder(m), ROOT, teacher) for m in cfg.members}
    located = {name: seen_studies(trained_folder(p), ROOT, teacher) for name, p in locators.items()}
    return {"members": members, "locators": located, "teacher": how}


def locator_paths(cfg, extra: list[Path]) -> dict[str, str]:
    """{name: folder} of the config's locator, then the `extra` ones (--locators)."""
    return {member_name(p): str(p) for p in [cfg.locator, *extra] if p}


def member_name(path) -> str:
    """A member's name in the JSON: its folder's, or for a `fold_all` training folder its run's
    (runs/bundle/unet2d_long_calA/fold_all -> unet2d_long_calA)."""
    path = Path(path)
    return path.parent.name if path.name.startswith("fold_") else path.name


def plan(studies: list[dict], patients: dict[str, str], seen: dict) -> tuple[dict, dict]:
    """For qa_bench's studies: ({study: {patient, members, locator, locator_out_of_sample}} of those with
    an out-of-sample member, {study: {patient, reason, trained_as}} of the others). The locator is the
    first of seen["locators"] that never saw the study, else the first (in sample)."""
    keep, left_out = {}, {}
    for s in studies:
        p = patients[s["id"]]
        free = [m for m, pats in seen["members"].items() if p not in pats]
        loc = next((lo for lo, pats in seen["locators"].items() if p not in pats), next(iter(seen["locators"]), None))
        if free:
            keep[s["id"]] = {"patient": p, "members": free, "locator": loc,
                             "locator_out_of_sample": loc is not None and p not in seen["locators"][loc]}
        else:
            left_out[s["id"]] = {"patient": p, "reason": "every member trained on a study of this patient",
                                 "trained_as": sorted({x for pats in seen["members"].values() for x in pats.get(p, [])})}
    return keep, left_out


# ----------------------------------------------------------------------------- measure

def measure(data: Path, studies: list[dict], half_of: dict, keep: dict, cfg, locators: dict[str, str],
            t0: float) -> list[dict]:
    """qa_bench's rows for the studies in `keep`, each segmented by its out-of-sample members only, with
    its locator (`keep`'s, a name of `locators`)."""
    from ensemble.members import read_members
    from mricore.io import read_nifti
    from mricore.volume import Volume

    by_name = {member_name(m): m for m in cfg.members}
    loaded: dict[tuple, list] = {}
    rows: list[dict] = []
    rng = np.random.default_rng(0)  # qa_bench's stream: every study draws, in qa_bench's order
    for n, b in enumerate(studies):
        if b["id"] not in keep:
            t2 = read_nifti(b["dir"] / "t2.nii.gz", "T2W", b["id"])
            empty = Volume(np.zeros((1, *t2.shape), np.uint8), t2.affine, ("WG",), b["id"])
            corruptions(t2, empty, n, rng)  # its draws only (which depend on the grid, not on the map)
            continue
        names = tuple(keep[b["id"]]["members"])
        if names not in loaded:  # one load per set of members
            loaded[names] = read_members([by_name[m] for m in names])
        members = loaded[names]
        located = replace(cfg, locator=locators.get(keep[b["id"]]["locator"]))
        study, _ = measure_study(b, n, half_of[b["id"]], members, located, rng)
        rows += study
        print(f"[{time.perf_counter() - t0:6.0f} s] {b['id']} ({len(names)} members): normal DSC "
              f"{study[0]['dsc_wg']:.3f}, {len(study) - 1} variants", flush=True)
    return rows


# ----------------------------------------------------------------------------- figures

def outcomes(rows: list[dict], limits_of, reference: dict) -> list[dict]:
    """Per row with a known outcome: its study, kind, failure, whether `limits_of(row)` (a ReviewConfig)
    flags it, and the failure score."""
    out = []
    for r in rows:
        if has_outcome(r):
            v = review_of(r, limits_of(r), reference)
            out.append({"case": r["case"], "kind": r["kind"], "failure": bool(r["failure"]),
                        "flagged": v["verdict"] != "ok", "score": v["score"]})
    return out


def rates(items: list[dict]) -> dict:
    """Detection (flagged failures / failures), false alarms (flagged uncorrupted non-failures / those)
    and the failure-score ROC AUC (failure vs not; NaN unless both occur), with their counts."""
    from mricore.metrics import roc_auc

    fails = [i for i in items if i["failure"]]
    normal = [i for i in items if i["kind"] == "normal" and not i["failure"]]
    det, fa = sum(i["flagged"] for i in fails), sum(i["flagged"] for i in normal)
    return {"failures": len(fails), "failures_detected": det, "detection_rate": det / len(fails) if fails else np.nan,
            "normal": len(normal), "false_alarms": fa, "false_alarm_rate": fa / len(normal) if normal else np.nan,
            "auc": roc_auc([i["score"] for i in items], [i["failure"] for i in items])}


def with_ci(items: list[dict], n_boot: int = N_BOOT, seed: int = 0) -> dict:
    """`rates(items)` and percentile 95 % CIs from resampling studies with replacement (each drawn study
    brings all its variants); a statistic undefined in a resample (no failure, no normal study, one
    class) skips it, and `n_resamples` counts the ones used."""
    cases = sorted({i["case"] for i in items})
    by_case = {c: [i for i in items if i["case"] == c] for c in cases}
    rng = np.random.default_rng(seed)
    boots: dict[str, list[float]] = {"detection_rate": [], "false_alarm_rate": [], "auc": []}
    for _ in range(n_boot):
        draw = [i for k in rng.integers(0, len(cases), len(cases)) for i in by_case[cases[k]]]
        r = rates(draw)
        for k, v in boots.items():
            if np.isfinite(r[k]):
                v.append(r[k])
    point = rates(items)
    out = {"n_studies": len(cases), "n_variants": len(items), **{k: _r(v) for k, v in point.items()}}
    for k, v in boots.items():
        out[f"{k}_ci95"] = [_r(float(np.quantile(v, q))) for q in (0.025, 0.975)] if v else None
        out[f"{k}_n_resamples"] = len(v)
    return {**out, **study_detection(by_case)}


def study_detection(by_case: dict[str, list[dict]]) -> dict:
    """Detection counted by study: of the studies with a failure, those whose every failure was flagged,
    with the exact (Clopper-Pearson) 95 % CI, a study one trial. Unlike the bootstrap's, this interval
    reaches below a rate of 1 when every failure seen was detected."""
    from scipy.stats import beta

    with_fail = [rs for rs in by_case.values() if any(i["failure"] for i in rs)]
    n, k = len(with_fail), sum(all(i["flagged"] for i in rs if i["failure"]) for rs in with_fail)
    lo = float(beta.ppf(0.025, k, n - k + 1)) if k else 0.0
    hi = float(beta.ppf(0.975, k + 1, n - k)) if k < n else 1.0
    return {"studies_with_failures": n, "studies_all_failures_detected": k,
            "study_detection_ci95_exact": [round(lo, 4), round(hi, 4)] if n else None}


def _r(x):
    """Rounded for the JSON; NaN as None (JSON has no NaN)."""
    return None if isinstance(x, float) and not np.isfinite(x) else round(x, 4) if isinstance(x, float) else x


def caveats(keep: dict, n_bundle: int, shipped_from_here: bool) -> list[str]:
    """What the out-of-sample figures still share with training, or how they differ from the bundle's, in words
    for the JSON and the docs (`n_bundle`: the bundle's member count; `shipped_from_here`: whether the shipped
    limits are this run's half-A fit)."""
    loc = sorted(s for s, k in keep.items() if not k["locator_out_of_sample"])
    used = sorted({str(k.get("locator", "locator")) for k in keep.values()})
    sizes = " or ".join(str(n) for n in sorted({len(k["members"]) for k in keep.values()}))
    return [("The locator trained on " + ", ".join(loc) + ": its crop of those studies is in sample") if loc
            else f"No study's crop comes from a locator that trained on it (locators used: {', '.join(used)}).",
            (f"A study's map comes from the {sizes} members that never saw it (the bundle has {n_bundle}); where "
             "fewer, its member disagreement and entropy are those of a smaller ensemble than the bundle's, which "
             "disagrees less, so limits on them fitted here are looser on the bundle's own maps."),
            ("The gland-volume and TZ-share checks use fixed margins around a reference that includes the Prostate158 "
             "expert zones (mricore/gland_reference.py); nothing of it is fitted here."),
            ("The shipped limits are this run's half-A fit on out-of-sample maps: half B's figures with them are held "
             "out, and the pooled figure scores each study with limits fitted without it.") if shipped_from_here else
            ("The shipped limits were fitted by bench/qa_bench.py on the in-sample maps of its half A, which holds some "
             "of these studies; half B's studies took no part in that fit."),
            "The CIs resample studies and hold the fitted limits fixed; with so few studies they are wide."]


def refit(rows: list[dict], cfg, reference: dict) -> dict:
    """qa_bench's swap: limits fitted on each half, scored on the other ("calibrate_A_test_B", ...), and
    "held_out_pooled": every study scored by the limits fitted without it, with study-level CIs."""
    out, fitted = {}, {}
    for cal, test in (("A", "B"), ("B", "A")):
        try:
            c = calibrate(rows, cal)
        except ConfigError as e:  # nothing to fit on: every uncorrupted study of the half failed
            out[f"calibrate_{cal}_test_{test}"] = {"calibration": None, "not_fitted": str(e)}
            continue
        fitted[cal] = replace(cfg.review, **c["limits"])
        out[f"calibrate_{cal}_test_{test}"] = {"calibration": c, "held_out": score(rows, test, fitted[cal], reference)}
    other = {"A": "B", "B": "A"}
    pooled = [r for r in rows if other[r["half"]] in fitted]
    return {**out, "held_out_pooled": with_ci(outcomes(pooled, lambda r: fitted[other[r["half"]]], reference))}


def shipped(rows: list[dict], ins: list[dict], cfg, reference: dict) -> dict:
    """The shipped limits (ensemble.yaml, fitted in sample) on the out-of-sample maps, on half B's alone,
    and on the same studies' in-sample maps (qa_bench's rows), with study-level CIs."""
    def fixed(rs):
        return with_ci(outcomes(rs, lambda r: cfg.review, reference)) if rs else None
    alarms = [r for r in rows if r["kind"] == "normal" and has_outcome(r) and not r["failure"]]
    alarms = {r["case"]: v["reasons"] for r in alarms if (v := review_of(r, cfg.review, reference))["verdict"] != "ok"}
    return {"shipped_limits": {k: getattr(cfg.review, k) for k in FITTED}, "shipped_false_alarms_out_of_sample": alarms,
            "shipped_on_out_of_sample_maps": fixed(rows),
            "shipped_on_out_of_sample_maps_half_B": fixed([r for r in rows if r["half"] == "B"]),
            "shipped_on_in_sample_maps_same_studies": fixed(ins)}


def bundle_size() -> int:
    from ensemble.config import load_ensemble_config
    return len(load_ensemble_config().members)


def report(rows, half_of, keep, left_out, how_teacher, cfg, reference, out_path, seconds, cmd: str) -> int:
    ins = [r for r in (json.loads(IN_SAMPLE.read_text())["rows"] if IN_SAMPLE.exists() else []) if r["case"] in keep]
    variants = [[(r["case"], r["kind"], r["shape"]) for r in rs] for rs in (rows, ins)]

    def normal_dsc(rs, s):
        return next((r["dsc_wg"] for r in rs if r["case"] == s and r["kind"] == "normal"), None)
    fits = refit(rows, cfg, reference)
    from_here = ((fits["calibrate_A_test_B"].get("calibration") or {}).get("limits")
                 == {k: getattr(cfg.review, k) for k in FITTED})
    out = {"command": cmd, "failure_rule": f"WG DSC < {FAIL_DSC} against the reference", "margin": MARGIN,
           "n_boot": N_BOOT, "teacher_datalist": how_teacher, "studies": keep, "left_out": left_out,
           "n_studies": len(keep), "n_patients": len({s["patient"] for s in keep.values()}), "n_variants": len(rows),
           "same_variants_as_qa_bench": variants[0] == variants[1], "halves": {s: half_of[s] for s in keep},
           **fits, **shipped(rows, ins, cfg, reference), "shipped_from_this_run": from_here,
           "caveats": caveats(keep, bundle_size(), from_here),
           "normal_dsc_wg": {s: {"out_of_sample": normal_dsc(rows, s), "in_sample": normal_dsc(ins, s)} for s in keep},
           "rows": [{k: v for k, v in r.items() if not k.startswith("_")} for r in rows], "seconds": seconds}
    write_result(out, out_path)
    for k in ("held_out_pooled", "shipped_on_out_of_sample_maps", "shipped_on_in_sample_maps_same_studies"):
        h = out[k] or {}
        print(f"{k}: {h.get('failures_detected')} of {h.get('failures')} failures detected, {h.get('false_alarms')} of "
              f"{h.get('normal')} false alarms, AUC {h.get('auc')} ({h.get('auc_ci95')}), {h.get('n_studies')} studies")
    print(f"wrote {out_path} (measured in {seconds} s)")
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = parser(__doc__)
    add_data(ap)
    ap.add_argument("--config", type=Path, default=None,
                    help="ensemble config whose members to draw from (default: the bundled one); e.g. one listing "
                         "calibration-fold members, so that every study has members that never saw it")
    ap.add_argument("--locators", type=Path, nargs="*", default=[],
                    help="more locator folders: a study the config's locator saw takes the first that did not")
    add_out(ap, RESULTS / "qa_oos.json")
    ap.add_argument("--rows", help="a JSON this script wrote: re-score its measured rows without running the ensemble")
    args = ap.parse_args(argv)
    bad = ([f"{args.data}: data folder not found"] if not args.data.exists() else []) + (
        [f"--config {args.config}: not a file"] if args.config and not args.config.is_file() else []) + [
        f"--locators {p}: no model.json" for p in args.locators if not (p / "model.json").is_file()]
    if bad:
        print(f"qa_oos: {bad[0]}; fix: pass an existing path (--data ../shared/data)", file=sys.stderr)
        return 2
    from ensemble.config import load_ensemble_config
    from mricore.datasets import load_dataset
    from mricore.gland_reference import load_reference

    t0, cfg, reference = time.perf_counter(), load_ensemble_config(args.config), load_reference()
    cmd = command("qa_oos", sys.argv[1:] if argv is None else argv, drop=("--data", "--out", "--rows"))
    studies = base_studies(args.data)
    half_of = halves(studies)
    if args.rows:
        p = json.loads(Path(args.rows).read_text())
        return report(p["rows"], half_of, p["studies"], p["left_out"], p["teacher_datalist"], cfg, reference,
                      args.out, p["seconds"], p["command"])
    patients = {f"{c.dataset}/{c.case_id}": c.patient_id for c in load_dataset(args.data)}
    locators = locator_paths(cfg, args.locators)
    seen = provenance(cfg, args.data, locators)
    keep, left_out = plan(studies, patients, seen)
    print(f"out of sample: {len(keep)} studies, left out: {len(left_out)}; teacher datalist {seen['teacher']}", flush=True)
    rows = measure(args.data, studies, half_of, keep, cfg, locators, t0)
    return report(rows, half_of, keep, left_out, seen["teacher"], cfg, reference, args.out,
                  round(time.perf_counter() - t0, 1), cmd)


if __name__ == "__main__":
    sys.exit(main())
