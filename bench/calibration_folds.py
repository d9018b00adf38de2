"""Calibration folds: members and locators that never saw half of the silver and teacher studies, so that every
study of the review calibration (bench/qa_bench.py's 23) has an out-of-sample map (bench/qa_oos.py).

The bundle's members train on every silver (ProstateX zones_ai) and teacher (TAPS glands of unlabelled/ and
philips/) study, and its locator on nothing else, so none of those 17 studies has a member that never saw it.
The expert studies already have one: each cross-validation fold's members never saw the fold's held-out
patients. So, per calibration half H of bench/qa_bench.py's halves (the same seeded split by patient, A and B):

- the two cheaper bundle families, configs/bundle/unet2d_long.yaml and dynunet2d_long.yaml, and the locator
  (configs/bundle/locator.yaml) are trained once more with `--fold all` (every expert patient) and
  `data.exclude_patients` = the patients of half H's silver and teacher studies (segment.folds.resolve_split
  leaves them out of every dataset), named <family>_cal<H>;
- the 2.5D family (dynunet25d_scale, about 2 h per training here) is not retrained: every study's out-of-sample
  map therefore comes from the two families (one cross-validation member of each, or one calibration member
  of each), never from all three.

It then writes ENSEMBLE_YAML (default runs/bundle/calibration/ensemble.yaml): the bundle's config with
those members, the two families' cross-validation members and the four calibration members, and without the
fitted review limits (they are filled from the bundle's, so bench/qa_oos.py's "shipped" rows stay the
bundle's). The calibration locators are passed to bench/qa_oos.py by --locators:

    python -m bench.calibration_folds [--jobs 2] [--dry-run]      # about 70 min on 2 cores with --jobs 2
    python -m bench.qa_oos --config runs/bundle/calibration/ensemble.yaml \\
        --locators runs/bundle/locator_calA/fold_all runs/bundle/locator_calB/fold_all
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import yaml

from bench.common import BUNDLE, ROOT, add_data, parser, run_side_by_side

FAMILIES = ("unet2d_long", "dynunet2d_long")  # the bundle's families retrained (not dynunet25d_scale)
RUNS = ROOT / "runs" / "bundle"
SEGMENT = ROOT / ".venv" / "bin" / "segment"


def excluded(data: Path) -> dict[str, list[str]]:
    """{half: patient ids of that half's silver and teacher studies} under bench/qa_bench.py's halves."""
    from bench.qa_bench import base_studies, halves
    from mricore.datasets import load_dataset

    studies = base_studies(data)
    half_of = halves(studies)
    patient = {f"{c.dataset}/{c.case_id}": c.patient_id for c in load_dataset(data)}
    out: dict[str, list[str]] = {"A": [], "B": []}
    for s in studies:
        if s["ref"][1] != "expert":  # silver or teacher: every bundle member trained on it
            out[half_of[s["id"]]].append(patient[s["id"]])
    return out


def commands(exclude: dict[str, list[str]]) -> dict[str, list[str]]:
    """{run name: its `segment train`}, one per family and half, the locator's last (they are the shortest)."""
    out = {}
    for family in (*FAMILIES, "locator"):
        for half, patients in exclude.items():
            name = f"{family}_cal{half}"
            out[name] = [str(SEGMENT), "train", "--config", f"configs/bundle/{family}.yaml", "--fold", "all", "--force",
                         "--set", f"name={name}", "--set", f"data.exclude_patients=[{', '.join(patients)}]"]
    return out


def write_config(path: Path) -> Path:
    """The calibration ensemble config: the bundle's, with the families' CV members and the calibration
    members, and no fitted review limits (bench/qa_oos.py takes those from the bundle)."""
    from mricore.review_limits import FITTED

    cfg = yaml.safe_load((BUNDLE / "ensemble.yaml").read_text())
    cv = [BUNDLE / m for m in cfg["members"] if m.rsplit("_fold", 1)[0] in FAMILIES]
    cal = [RUNS / f"{f}_cal{h}" / "fold_all" for f in FAMILIES for h in "AB"]
    path.parent.mkdir(parents=True, exist_ok=True)
    cfg["members"] = [os.path.relpath(m, path.parent) for m in cv + cal]
    cfg["locator"] = os.path.relpath(BUNDLE / cfg["locator"], path.parent)
    cfg["review"] = {k: v for k, v in cfg["review"].items() if k not in FITTED}
    path.write_text("# Written by python -m bench.calibration_folds: members for bench/qa_oos.py, not for use.\n"
                    + yaml.safe_dump(cfg, sort_keys=False))
    return path


def main(argv: list[str] | None = None) -> int:
    ap = parser(__doc__)
    add_data(ap)
    ap.add_argument("--jobs", type=int, default=2, help="trainings side by side, one thread each (default: 2)")
    ap.add_argument("--config-out", type=Path, default=RUNS / "calibration" / "ensemble.yaml",
                    help="the ensemble config to write (default: runs/bundle/calibration/ensemble.yaml)")
    ap.add_argument("--dry-run", action="store_true", help="print the trainings and write the config only")
    args = ap.parse_args(argv)
    if not args.data.is_dir():
        print(f"calibration_folds: {args.data}: data folder not found; fix: pass --data ../shared/data", file=sys.stderr)
        return 2
    exclude = excluded(args.data)
    for half, patients in exclude.items():
        print(f"half {half}: {len(patients)} silver and teacher patients left out: {', '.join(patients)}")
    cmds = commands(exclude)
    if not args.dry_run:
        RUNS.mkdir(parents=True, exist_ok=True)
        codes = run_side_by_side([(c, RUNS / f"{name}.log") for name, c in cmds.items()], args.jobs)
        if failed := [f"{RUNS / name}.log" for name, code in zip(cmds, codes) if code]:
            print(f"calibration_folds: failed: {', '.join(failed)}", file=sys.stderr)
            return 1
    for c in cmds.values():
        print(" ".join(c[1:]))
    print(f"wrote {write_config(args.config_out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
