"""Would other members make the bundled ensemble better? Both under the same honest cross-validation.

Runs `ensemble evaluate --cv` on the 5 expert-labelled patients for the bundled default ensemble
(ensemble/models/default, as packed) and for the same ensemble with the --add member folders beside
its own (e.g. the three folds of a new member family), or with --replace in place of its own (the
same locator and settings), each case scored only by the members of the fold that held it out.
Prints and writes, per zone (WG, TZ, PZ), paired per-case DSC differences (mean, bootstrap 95 % CI,
Wilcoxon p, cases improved; mricore.stats) of the candidate ensemble and of each of its member
families against the bundle, the candidate's ensemble minus its best member, and the rule
fixed before the scores are seen: the candidate ships only if no zone's CV mean is lower than the
bundle's and at least one is higher.

    python -m bench.candidate_cv --name member3d --add runs/bundle/dynunet3d/fold_{0,1,2} \
        --out bench/results/member3d_cv.json [--reuse]
    python -m bench.candidate_cv --name selftrained_dynunet --replace \
        --add runs/bundle/dynunet2d_long_pseudo/fold_{0,1,2} --out bench/results/selftrained_dynunet_cv.json
    python -m bench.candidate_cv --name scale_tta --set "tta_scales=[0.8,1.0,1.25]" \
        --out bench/results/scale_tta_cv.json

Reports go to runs/candidates/bundle and runs/candidates/NAME; --reuse reads them if there. A few
minutes on 2 cores.
"""

from __future__ import annotations

import sys
from pathlib import Path

from bench.bundle_ablations import ZONES, cv_report, minus_best_member, model, paired, print_comparisons
from bench.common import BUNDLE, ROOT, add_data, add_out, command, parser, write_result
from ensemble.config import load_ensemble_config

CONFIG = BUNDLE / "ensemble.yaml"


def main(argv: list[str] | None = None) -> int:
    ap = parser(__doc__)
    ap.add_argument("--name", required=True, help="the candidate's name (its report folder)")
    ap.add_argument("--add", nargs="+", type=Path, default=[], help="member folders to add to the bundle's")
    ap.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE",
                    help="ensemble settings of the candidate, e.g. tta_scales=[0.8,1.0,1.25]")
    add_out(ap)
    add_data(ap)
    ap.add_argument("--replace", action="store_true", help="the --add members replace the bundle's")
    ap.add_argument("--reuse", action="store_true", help="read existing runs/candidates reports")
    args = ap.parse_args(argv)
    if not args.add and not args.set:
        ap.error("give --add member folders, --set settings, or both")
    own = [] if args.replace else load_ensemble_config(CONFIG).members
    members = own + [str(m.resolve()) for m in args.add]
    folder = ROOT / "runs" / "candidates"
    bundle = cv_report(CONFIG, [], args.data, folder / "bundle", args.reuse)
    cand = cv_report(CONFIG, [f"members=[{','.join(members)}]", *args.set], args.data, folder / args.name, args.reuse)
    base = model(bundle, "ensemble")
    comparisons = {f"{m}_minus_bundle": paired(model(cand, m), base) for m in cand["per_case_dsc"]["WG"]}
    ens = comparisons["ensemble_minus_bundle"]
    rule = {"no_zone_lower": all(ens[z]["mean_diff"] >= 0 for z in ZONES),
            "one_zone_higher": any(ens[z]["mean_diff"] > 0 for z in ZONES)}
    rule["ships"] = rule["no_zone_lower"] and rule["one_zone_higher"]
    best = minus_best_member(cand)
    per_case = {z: {c: {"bundle": round(base[z][c], 4), **{m: round(v[c], 4) for m, v in cand["per_case_dsc"][z].items()}}
                    for c in sorted(base[z])} for z in ZONES}
    flags = ["--replace"] * args.replace + (["--add", *(str(m.resolve()) for m in args.add)] if args.add else []) \
        + (["--set", *args.set] if args.set else [])
    out = {"command": command("candidate_cv", ["--name", args.name, *flags, "--out", str(args.out.resolve())]),
           "cases": f"{bundle['n_cases']} expert-labelled patients, 3 patient-level folds, each case scored by its "
                    "fold's members", "bundle": "ensemble/models/default (as packed)",
           "candidate": ("the --add members alone" if args.replace else "the bundle's members and the --add members")
                        + (", with " + ", ".join(args.set) if args.set else ""),
           "candidate_members": cand["members"], "comparisons": comparisons, "rule": rule,
           "candidate_minus_best_member": best, "per_case_dsc": per_case}
    write_result(out, args.out)
    print_comparisons(comparisons)
    for z, b in best.items():
        print(f"candidate - best member ({b['best_member']}) {z}: {b['mean']:+.3f} ({b['ci_low']:+.3f} to {b['ci_high']:+.3f})")
    print("rule (no zone lower, one higher):", "ships" if rule["ships"] else "does not ship", rule)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
