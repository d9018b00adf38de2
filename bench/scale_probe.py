"""Is a case missed because of its gland's size? The bundle's held-out members on rescaled voxels.

Each expert-labelled case is predicted by the members of an ensemble that held it out
(ensemble.evaluate.cv_groups, as `ensemble evaluate --cv` does), with its in-plane voxel size
multiplied by each --factors value: the image, and so its gland, then measures that factor of its true
size, while voxels and reference stay as they are. DSC per zone against the expert reference, voxel by
voxel. A case whose DSC rises as it is shrunk has a gland larger than its members learned to see: a
scale gap, which scale augmentation in training addresses (SCALE_AUG in the Makefile).
A diagnostic, never a selection: it chose no factor of the ensemble's multi-scale test-time
augmentation (`tta_scales`, scored by bench/candidate_cv.py --set).

    python -m bench.scale_probe --cases 001 --out bench/results/scale_probe.json

About 10 s per case and factor on 2 cores.
"""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path

from bench.common import BUNDLE, add_data, add_out, command, data_missing, parser, write_result
from ensemble.evaluate import cv_groups
from ensemble.members import read_members
from ensemble.predict import infer_case, read_case, resolve_config, source_from_case
from mricore.datasets import load_dataset, read_ref
from mricore.metrics import zone_metrics


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    ap = parser(__doc__)
    ap.add_argument("--config", type=Path, default=BUNDLE / "ensemble.yaml", help="ensemble config (default: bundle)")
    ap.add_argument("--cases", nargs="*", help="case ids (default: every expert-labelled case held out)")
    ap.add_argument("--factors", nargs="+", type=float, default=[0.6, 0.7, 0.8, 0.9, 1.0, 1.1, 1.2])
    add_data(ap)
    add_out(ap)
    args = ap.parse_args(argv)
    if data_missing(args.data):
        return 0
    cfg = resolve_config(args.config)
    members = read_members(cfg.members)
    cases = [c for c in load_dataset(args.data) if "zones" in c.labels]
    groups = cv_groups(members, [c.case_id for c in cases])
    cases = [c for c in cases if c.case_id in groups and (not args.cases or c.case_id in args.cases)]
    results = {}
    for case in cases:
        used = [members[i] for i in groups[case.case_id]]
        read = read_case(source_from_case(case), used, cfg, notify=False, accept=True)
        ref = read_ref(case.labels["zones"], "zones", case.case_id).array[0]
        results[case.case_id] = {"members": [m.name for m in used], "dsc": {}}
        for f in args.factors:
            _, result, _ = infer_case(replace(read, image=read.image.inplane_scaled(f)), cfg)
            m = zone_metrics(result.label, ref, read.image.spacing)
            results[case.case_id]["dsc"][str(f)] = {z: round(float(v["dsc"]), 4) for z, v in m.items()}
            print(case.case_id, f, results[case.case_id]["dsc"][str(f)], flush=True)
    report = {"command": command("scale_probe", argv, drop=()),
              "config": str(args.config), "factors": args.factors,
              "meaning": "in-plane voxel size times factor: the gland measures factor x its size; DSC vs the "
                         "expert zones by the members that held the case out", "cases": results}
    write_result(report, args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
