"""The bundled ensemble beyond its cross-validation: a truly held-out case, the peer's cases, the cost.

1. PROMISE12 Case00 (whole-gland label, endorectal coil; no member ever trained on it): `ensemble
   predict` with the bundle, WG DSC against `wg.nii.gz`, volume, uncertainty and the review verdict.
2. prostate158/001, 002, 021 (the cases the peer TAPS was measured on): their cross-validated WG DSC,
   read from the bundle's `cv_evaluate.json` (each case scored only by the members of the fold that
   held it out; the whole bundle has seen 2 of 3 folds of them, so it is not scored on them here).
3. Cost: `ensemble predict` on prostate158/001 as a fresh process (imports and model loading
   included), wall seconds and peak RSS of the child, median of --repeats runs.

Prints and writes bench/results/bundle_eval.json (or --out).

    python -m bench.bundle_eval [--bundle ensemble/models/default] [--repeats 3]
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.common import BUNDLE, DATA, ENSEMBLE, RESULTS, TAPS_WG_DSC, add_out, parser, write_result
from mricore.io import read_label
from mricore.metrics import dice


def held_out_case(config: Path) -> dict:
    from ensemble.predict import predict

    case = DATA / "promise12" / "Case00"
    with tempfile.TemporaryDirectory() as tmp:
        side = predict(case / "t2.nii.gz", Path(tmp) / "o", config=config, notify=False)
        pred = read_label(Path(tmp) / "o" / "zones.nii.gz").array[0] > 0
    ref = read_label(case / "wg.nii.gz").array[0] > 0
    return {"case": "promise12/Case00", "wg_dsc": round(float(dice(pred, ref)), 4),
            **side.headline()}


def cost(config: Path, repeats: int) -> dict:
    cmd = [str(ENSEMBLE), "predict", str(DATA / "prostate158/001/t2.nii.gz"),
           "--config", str(config), "-o", "OUT", "--force"]
    walls, rss = [], []
    for _ in range(repeats):
        with tempfile.TemporaryDirectory() as tmp:
            before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
            t = time.perf_counter()
            r = subprocess.run([c if c != "OUT" else tmp for c in cmd], capture_output=True, text=True)
            walls.append(time.perf_counter() - t)
            if r.returncode:
                raise SystemExit(r.stderr)
            # ru_maxrss of children is the largest child so far: runs are alike, so this is the peak.
            rss.append(max(before, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss) / 1024 ** 2)
    return {"case": "prostate158/001 (232x232x23)", "runs": repeats, "wall_s_median": round(float(np.median(walls)), 2),
            "wall_s": [round(w, 2) for w in walls], "peak_rss_gb": round(max(rss), 3)}


def main(argv: list[str] | None = None) -> int:
    ap = parser(__doc__)
    ap.add_argument("--bundle", type=Path, default=BUNDLE)
    ap.add_argument("--repeats", type=int, default=3)
    add_out(ap, RESULTS / "bundle_eval.json")
    args = ap.parse_args(argv)
    bundle = Path(args.bundle)
    config = bundle / "ensemble.yaml"
    cv = json.loads((bundle / "cv_evaluate.json").read_text())
    wg = cv.get("per_case_dsc", {}).get("WG", {}).get("ensemble", {})
    out = {
        "bundle": str(bundle.resolve()),
        "held_out": held_out_case(config),
        "peer_cases_cross_validated_wg_dsc": {c: {"bundle_cv": wg.get(c), "taps": v} for c, v in TAPS_WG_DSC.items()},
        "cost": cost(config, args.repeats),
    }
    write_result(out, args.out)
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
