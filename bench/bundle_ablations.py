"""What each step of the retrained bundle did, under the same honest cross-validation.

Every variant is `ensemble evaluate --cv` on the 5 expert-labelled patients (each case scored only by
the members of the fold that held it out), with the bundle's members (runs/bundle, `make bundle`):
- shipped: configs/ensemble/default.yaml as is (locator, 15 mm margin);
- one_stage: no locator (crops around the image centre, nothing bounded);
- centre_only: the locator centres the crops but bounds nothing (locator_margin_mm null);
- tta: shipped plus left-right flip test-time augmentation;
- n4: shipped plus N4 bias-field correction of the T2W input (members trained without it);
- teacher: configs/bundle/teacher_ablation.yaml, the 2D U-Net with and without the teacher's glands;
- schedule: configs/bundle/schedule_ablation.yaml, the 2D and the 2.5D U-Net on 50 x 40 and on 250 x 40
  steps, and the 2D DynUNet on 30 x 40 and on 90 x 40 steps;
- dynunet: configs/bundle/dynunet_ablation.yaml, the DynUNet on its short schedule as trained for the
  bundle and with one change each: the per-zone intensity shift (augment.zone_p), self-training on the
  fold's own confident zones (segment.pseudo), N4 in its preprocessing (preprocess.n4);
- selftrain: configs/bundle/selftrain_ablation.yaml, the 2.5D U-Net and the DynUNet on their long
  schedules as in the fourth bundle and self-trained (*_long_pseudo).
Then per-case paired DSC differences (mean, bootstrap 95 % CI, Wilcoxon p; mricore.stats) for:
shipped vs the first bundle (bench/results/bundle_previous_cv.json, its `ensemble evaluate --cv`
summary: fixed 120 mm centre crop, no teacher, weaker intensity augmentation), shipped vs the second
(bench/results/bundle_stop21_cv.json: two stages and teacher, every member on the short schedule),
shipped vs the third (bench/results/bundle_stop22_cv.json: the 2D U-Net on the long schedule), shipped
vs the fourth (bench/results/bundle_stop24_cv.json: every family on its long schedule), shipped vs each
variant, unet2d vs unet2d_noteacher, each member family on its long vs its short schedule, each DynUNet
variant vs the plain DynUNet, each self-trained long family vs its fourth-bundle run, and the ensemble
vs its best member. PROMISE12 Case00 (endorectal coil, never trained on) is predicted by the shipped
and n4 ensembles and by each short DynUNet family alone (3 folds each), WG DSC. TAPS's WG DSC on the
Prostate158 cases (the brief's figures, measured again by bench/peer_accuracy.py) sits beside ours.

    python -m bench.bundle_ablations [--reuse]   # --reuse: read runs/bundle/ablations/* if there

Prints and writes bench/results/bundle_ablations.json (about 15 min on 2 quiet cores). A variant whose
members are not trained is skipped and says so.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from bench.common import ENSEMBLE, RESULTS, ROOT, TAPS_WG_DSC, add_data, command, parser, write_result
from ensemble.config import load_ensemble_config
from mricore.io import read_label
from mricore.metrics import dice
from mricore.outputs import repo_relative
from mricore.stats import paired_difference

DEFAULT = "configs/ensemble/default.yaml"
VARIANTS = {
    "shipped": (DEFAULT, []),
    "one_stage": (DEFAULT, ["locator=null"]),
    "centre_only": (DEFAULT, ["locator_margin_mm=null"]),
    "tta": (DEFAULT, ["tta=true"]),
    "n4": (DEFAULT, ["n4=true"]),
    "teacher": ("configs/bundle/teacher_ablation.yaml", []),
    "schedule": ("configs/bundle/schedule_ablation.yaml", []),
    "dynunet": ("configs/bundle/dynunet_ablation.yaml", []),
    "selftrain": ("configs/bundle/selftrain_ablation.yaml", []),
}


def family(name: str) -> list[str]:
    """--set making an ensemble of one member family's 3 folds (paths from the working directory)."""
    return ["members=[" + ",".join(str(ROOT / "runs" / "bundle" / name / f"fold_{f}") for f in range(3)) + "]"]


# PROMISE12 Case00 (endorectal coil, another site, never trained on), whole-gland reference: every
# fold's members together, as `ensemble predict` runs them.
CASE00 = {
    "shipped": (DEFAULT, []),
    "n4": (DEFAULT, ["n4=true"]),
    "dynunet2d": (DEFAULT, family("dynunet2d")),
    "dynunet2d_zone": (DEFAULT, family("dynunet2d_zone")),
    "dynunet2d_pseudo": (DEFAULT, family("dynunet2d_pseudo")),
    "dynunet2d_n4": (DEFAULT, family("dynunet2d_n4")),
    # n4=true corrects the locator's input as well (a member whose spec has n4 is corrected once)
    "dynunet2d_n4input": (DEFAULT, family("dynunet2d") + ["n4=true"]),
    "dynunet2d_n4_n4input": (DEFAULT, family("dynunet2d_n4") + ["n4=true"]),
}
ZONES = ("WG", "TZ", "PZ")
# Earlier bundles' `ensemble evaluate --cv` reports (the first is named "previous" in the JSON).
EARLIER = {"previous": "bundle_previous_cv.json", "second": "bundle_stop21_cv.json",
           "third": "bundle_stop22_cv.json", "fourth": "bundle_stop24_cv.json"}


def untrained(config: str, sets: list[str]) -> list[str]:
    """Member folders of `config` (with `sets`) that hold no trained model."""
    cfg = load_ensemble_config(ROOT / config, sets)
    return [repo_relative(m, ROOT) for m in cfg.members if not (Path(m) / "model.json").exists()]


def evaluate(name: str, data: Path, reuse: bool) -> dict | None:
    """The variant's `ensemble evaluate --cv` report; None (and a note) if a member is not trained."""
    config, sets = VARIANTS[name]
    if missing := untrained(config, sets):
        print(f"{name}: skipped, not trained: {', '.join(missing[:3])} (make bundle-train)")
        return None
    return cv_report(ROOT / config, sets, data, ROOT / "runs" / "bundle" / "ablations" / name, reuse)


def cv_report(config: Path, sets: list[str], data: Path, out: Path, reuse: bool) -> dict:
    """`ensemble evaluate --cv` of `config` (with `sets`) into `out`; with `reuse`, an existing report."""
    if not (reuse and (out / "evaluate.json").exists()):
        cmd = [str(ENSEMBLE), "evaluate", "--config", str(config), "--cv", "--ref", str(data), "-o", str(out),
               "--force", *[a for s in sets for a in ("--set", s)]]
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return json.loads((out / "evaluate.json").read_text())


def case00(name: str, data: Path, reuse: bool) -> float | None:
    """WG DSC of variant `name` on PROMISE12 Case00 (None without the case)."""
    case = data / "promise12" / "Case00"
    if not (case / "wg.nii.gz").exists():
        return None
    config, sets = CASE00[name]
    if untrained(config, sets):
        return None
    out = ROOT / "runs" / "bundle" / "ablations" / "case00" / name
    if not (reuse and (out / "zones.nii.gz").exists()):
        cmd = [str(ENSEMBLE), "predict", str(case / "t2.nii.gz"), "--config", str(ROOT / config), "-o", str(out),
               "--force", *[a for s in sets for a in ("--set", s)]]
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    pred = read_label(out / "zones.nii.gz").array[0] > 0
    ref = read_label(case / "wg.nii.gz").array[0] > 0
    return round(float(dice(pred, ref)), 4)


def paired(a: dict, b: dict) -> dict:
    """a - b per zone over the cases both scored."""
    out = {}
    for z in ZONES:
        cases = sorted(set(a[z]) & set(b[z]))
        d = paired_difference([a[z][c] for c in cases], [b[z][c] for c in cases])
        out[z] = {"a_mean": round(sum(a[z][c] for c in cases) / len(cases), 4),
                  "b_mean": round(sum(b[z][c] for c in cases) / len(cases), 4),
                  "mean_diff": round(d["mean"], 4), "ci": [round(d["ci_low"], 4), round(d["ci_high"], 4)],
                  "median_diff": round(d["median"], 4), "improved": sum(a[z][c] > b[z][c] for c in cases),
                  "wilcoxon_p": round(d["wilcoxon_p"], 4) if d["wilcoxon_p"] == d["wilcoxon_p"] else None,
                  "n": len(cases)}
    return out


def model(report: dict, name: str) -> dict:
    return {z: report["per_case_dsc"][z][name] for z in ZONES}


def rounded(summary: dict, keys: tuple[str, ...]) -> dict:
    """The `keys` of a mricore.stats summary, floats to 4 decimals."""
    return {k: round(v, 4) if isinstance(v, float) else v for k, v in summary.items() if k in keys}


def minus_best_member(report: dict) -> dict:
    """Per zone: the report's best member and its ensemble-minus-best-member summary."""
    return {z: {"best_member": report["zones"][z]["best_member"],
                **rounded(report["zones"][z]["ensemble_minus_best_member_dsc"],
                          ("mean", "ci_low", "ci_high", "wilcoxon_p", "n"))} for z in ZONES}


def print_comparisons(comparisons: dict) -> None:
    for name, comp in comparisons.items():
        if "skipped" in comp:
            print(name, comp["skipped"])
            continue
        print(name, " ".join(f"{z} {c['a_mean']:.3f}-{c['b_mean']:.3f}={c['mean_diff']:+.3f} ({c['improved']}/{c['n']})"
                             for z, c in comp.items()))


def compare(a: tuple[dict | None, str], b: tuple[dict | None, str]) -> dict:
    """Member or ensemble row a minus row b, each (report, row name); skipped if a report is missing."""
    if a[0] is None or b[0] is None:
        return {"skipped": "a variant is not trained (make bundle-train)"}
    return paired(model(*a), model(*b))


def main(argv: list[str] | None = None) -> int:
    ap = parser(__doc__)
    add_data(ap)
    ap.add_argument("--reuse", action="store_true", help="read existing runs/bundle/ablations/* reports")
    args = ap.parse_args(argv)
    reports = {n: evaluate(n, args.data, args.reuse) for n in VARIANTS}
    case00s = {n: case00(n, args.data, args.reuse) for n in CASE00}
    earlier = {n: model(json.loads((RESULTS / f).read_text()), "ensemble") for n, f in EARLIER.items()}
    shipped = model(reports["shipped"], "ensemble")
    r = reports
    comparisons = {
        **{f"shipped_minus_{n}_bundle": paired(shipped, e) for n, e in earlier.items()},
        **{f"shipped_minus_{n}": compare((r["shipped"], "ensemble"), (r[n], "ensemble"))
           for n in ("one_stage", "centre_only", "tta", "n4")},
        "unet2d_minus_unet2d_noteacher": compare((r["teacher"], "unet2d"), (r["teacher"], "unet2d_noteacher")),
        **{f"{m}_long_minus_{m}": compare((r["schedule"], f"{m}_long"), (r["schedule"], m))
           for m in ("unet2d", "unet25d", "dynunet2d")},
        **{f"{m}_minus_dynunet2d": compare((r["dynunet"], m), (r["dynunet"], "dynunet2d"))
           for m in ("dynunet2d_zone", "dynunet2d_pseudo", "dynunet2d_n4")},
        **{f"{m}_long_pseudo_minus_{m}_long": compare((r["selftrain"], f"{m}_long_pseudo"), (r["selftrain"], f"{m}_long"))
           for m in ("unet25d", "dynunet2d")},
    }
    summaries = {n: {z: {m: rounded(stats, ("mean", "median", "ci_low", "ci_high", "n"))
                         for m, stats in r["zones"][z]["dsc"].items()} for z in ZONES}
                 for n, r in reports.items() if r}
    best = minus_best_member(reports["shipped"])
    peer = {c: {"ours_cv": round(shipped["WG"][c], 4), **{f"{n}_cv": round(e["WG"][c], 4) for n, e in earlier.items()},
                "taps": t, "ours_beats_taps": shipped["WG"][c] > t} for c, t in TAPS_WG_DSC.items() if c in shipped["WG"]}
    out = {"command": command("bundle_ablations"), "cases": "5 expert-labelled patients (prostate158 001, 002, "
           "021; i2cvb Patient_52209036, Patient_68619), 3 patient-level folds, each case scored by its fold's members",
           "variants": {n: {"config": c, "set": s} for n, (c, s) in VARIANTS.items()},
           "summaries": summaries, "ensemble_minus_best_member": best, "comparisons": comparisons,
           "taps_cases_wg": peer, "promise12_case00_wg": case00s}
    write_result(out, RESULTS / "bundle_ablations.json")
    print_comparisons(comparisons)
    for z, b in best.items():
        print(f"ensemble - best member ({b['best_member']}) {z}: {b['mean']:+.3f} ({b['ci_low']:+.3f} to {b['ci_high']:+.3f})")
    for c, p in peer.items():
        print(f"prostate158/{c}: WG ours (CV) {p['ours_cv']:.3f}, "
              + ", ".join(f"{n} bundle {p[f'{n}_cv']:.3f}" for n in earlier) + f", TAPS {p['taps']:.3f}")
    print("PROMISE12 Case00 WG DSC:", ", ".join(f"{n} {v}" for n, v in case00s.items()))
    print("wrote bench/results/bundle_ablations.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
