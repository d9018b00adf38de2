"""Would a candidate ensemble beat the bundled one? Both under the same honest cross-validation.

Runs `ensemble evaluate --cv` on the 5 expert-labelled patients for the bundled default ensemble
(ensemble/models/default, as packed) and for a candidate ensemble config (e.g. the bundle plus a new
member family, configs/bundle/member3d_ablation.yaml), each case scored only by the members of the fold
that held it out. Prints and writes, per zone (WG, TZ, PZ), paired per-case DSC differences (mean,
bootstrap 95 % CI, Wilcoxon p, cases improved; mricore.stats) of the candidate ensemble and of each of
its member families against the bundle, the candidate's ensemble minus its best member, and the rule
fixed before the scores are seen: the candidate ships only if no zone's CV mean is lower than the
bundle's and at least one is higher.

    .venv/bin/python bench/candidate_cv.py --config configs/bundle/member3d_ablation.yaml \
        --out bench/results/member3d_cv.json [--reuse]

Reports go to runs/candidates/bundle and runs/candidates/<config stem>; --reuse reads them if there. A few
minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from bundle_ablations import ZONES, paired  # noqa: E402
from mricore.io import repo_relative, write_json  # noqa: E402

DATA = ROOT.parent / "shared" / "data"
ENSEMBLE = ROOT / ".venv" / "bin" / "ensemble"
BUNDLE = ROOT / "ensemble" / "models" / "default" / "ensemble.yaml"


def evaluate(config: Path, data: Path, out: Path, reuse: bool) -> dict:
    if not (reuse and (out / "evaluate.json").exists()):
        subprocess.run([str(ENSEMBLE), "evaluate", "--config", str(config), "--cv", "--ref", str(data),
                        "-o", str(out), "--force"], check=True, stdout=subprocess.DEVNULL)
    return json.loads((out / "evaluate.json").read_text())


def rows(report: dict, name: str) -> dict:
    return {z: report["per_case_dsc"][z][name] for z in ZONES}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", type=Path, required=True, help="candidate ensemble config")
    ap.add_argument("--out", type=Path, required=True, help="JSON to write (bench/results/...)")
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--reuse", action="store_true", help="read existing runs/candidates reports")
    args = ap.parse_args()
    folder = ROOT / "runs" / "candidates"
    bundle = evaluate(BUNDLE, args.data, folder / "bundle", args.reuse)
    cand = evaluate(args.config.resolve(), args.data, folder / args.config.stem, args.reuse)
    base = rows(bundle, "ensemble")
    comparisons = {f"{m}_minus_bundle": paired(rows(cand, m), base) for m in cand["per_case_dsc"]["WG"]}
    ens = comparisons["ensemble_minus_bundle"]
    rule = {"no_zone_lower": all(ens[z]["mean_diff"] >= 0 for z in ZONES),
            "one_zone_higher": any(ens[z]["mean_diff"] > 0 for z in ZONES)}
    rule["ships"] = rule["no_zone_lower"] and rule["one_zone_higher"]
    best = {z: {"best_member": cand["zones"][z]["best_member"],
                **{k: round(v, 4) if isinstance(v, float) else v
                   for k, v in cand["zones"][z]["ensemble_minus_best_member_dsc"].items()
                   if k in ("mean", "ci_low", "ci_high", "wilcoxon_p", "n")}} for z in ZONES}
    per_case = {z: {c: {"bundle": round(base[z][c], 4), **{m: round(v[c], 4) for m, v in cand["per_case_dsc"][z].items()}}
                    for c in sorted(base[z])} for z in ZONES}
    out = {"command": f"python bench/candidate_cv.py --config {repo_relative(str(args.config.resolve()), ROOT)} "
                      f"--out {repo_relative(str(args.out.resolve()), ROOT)}",
           "cases": f"{bundle['n_cases']} expert-labelled patients, 3 patient-level folds, each case scored by its "
                    "fold's members", "bundle": "ensemble/models/default (as packed)",
           "candidate_members": cand["members"], "comparisons": comparisons, "rule": rule,
           "candidate_minus_best_member": best, "per_case_dsc": per_case}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_json(repo_relative(out, ROOT), args.out)
    for name, comp in comparisons.items():
        print(name, " ".join(f"{z} {c['a_mean']:.3f}-{c['b_mean']:.3f}={c['mean_diff']:+.3f} ({c['improved']}/{c['n']})"
                             for z, c in comp.items()))
    for z, b in best.items():
        print(f"candidate - best member ({b['best_member']}) {z}: {b['mean']:+.3f} ({b['ci_low']:+.3f} to {b['ci_high']:+.3f})")
    print("rule (no zone lower, one higher):", "ships" if rule["ships"] else "does not ship", rule)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
