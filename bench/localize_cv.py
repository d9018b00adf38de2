"""Lesion localisation, patient-level cross-validation under the honest protocol, as a command.

For each fold of `configs/localize/lesion_t2w_2d.yaml`: `localize train --fold K` (the weights are
chosen on an inner split of the fold's training patients; the held-out patients decide nothing), then
`localize predict` on each of that fold's held-out cases with its zone map (expert `zones` where
present, else the AI `zones_ai`), then one `localize evaluate` over all held-out predictions. Prints
and writes bench/results/localize_cv.json: patient-level AUC, sensitivity/specificity, lesion hits,
with the case counts and the split.

    .venv/bin/python bench/localize_cv.py [--runs runs/localize_cv] [--set key=value ...]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from localize.cli import main as localize  # noqa: E402
from mricore.config import load_config  # noqa: E402
from mricore.datasets import load_dataset  # noqa: E402
from mricore.io import write_json  # noqa: E402
from localize.config import LocalizeConfig  # noqa: E402

CONFIG = ROOT / "configs/localize/lesion_t2w_2d.yaml"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", default=str(ROOT / "runs/localize_cv"))
    ap.add_argument("--data", default=str(ROOT.parent / "shared/data"))
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    args = ap.parse_args()
    runs = Path(args.runs)
    sets = [f"output_dir={runs}", f"data.root={args.data}", *args.overrides]
    cfg = load_config(LocalizeConfig, CONFIG, sets)
    cases = {c.case_id: c for c in load_dataset(args.data)}
    t0 = time.perf_counter()
    folds = []
    for k in range(cfg.data.folds):
        argv = ["train", "--config", str(CONFIG), "--fold", str(k), "--force"]
        if localize(argv + [a for s in sets for a in ("--set", s)]) != 0:
            return 2
        model = runs / cfg.name / f"fold_{k}"
        meta = json.loads((model / "model.json").read_text())
        held = meta["validation"]["cases"]
        folds.append({"fold": k, "held_out": held, "selection": meta["selection"]})
        for cid in held:
            c = cases[cid]
            zones = next(c.labels[z].path for z in cfg.data.zones if z in c.labels)
            if localize(["predict", "--model", str(model), "--zones", str(zones), str(c.images["T2W"].path),
                         "-o", str(runs / "pred" / cid), "--force"]) != 0:
                return 2
    if localize(["evaluate", "--pred", str(runs / "pred"), "--ref", args.data, "-o", str(runs / "report"),
                 "--force"]) != 0:
        return 2
    summary = json.loads((runs / "report" / "localize.json").read_text())
    out = {"what": "lesion localisation, patient-level cross-validation (outer folds only; weights chosen "
                   "on inner splits of the training patients)",
           "command": "python bench/localize_cv.py", "config": str(CONFIG.relative_to(ROOT)),
           "overrides": args.overrides, "datasets": cfg.data.datasets, "folds": folds,
           "seconds": round(time.perf_counter() - t0, 1), **summary}
    write_json(out, ROOT / "bench/results/localize_cv.json")
    wg = summary["patient_level"]["WG"]
    print(json.dumps({"n_cases": summary["n_cases"], "patient_auc_WG": wg.get("auc"),
                      "sensitivity": wg.get("sensitivity"), "specificity": wg.get("specificity")}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
