"""Ensemble prediction cost per case, split by stage, and peak RSS, for 1, 3 and 5 members.

    python -m bench.ensemble_bench [--members DIR ...] [--case FOLDER] [--repeats 2]

Members: default-size 2D U-Nets (channels [16, 32, 64, 128], strides [2, 2, 2]) on T2W + ADC, trained
for 1 epoch of 2 iterations into a temporary folder (their accuracy is irrelevant here; their size
is what costs time), or the model folders given with --members. Case: a real 2-channel study,
unlabelled/ProstateX-0218 (T2W 320x320x20, ADC on its own grid) by default.
Each member count runs in a fresh process (so peak RSS is its own), after one warm-up prediction
(imports, first-call allocations); the fastest of --repeats timed runs is reported.

Targets (issue 4), checked and written to bench/results/ensemble_bench.json:
- compute(5) <= 5.5 x network(1) + preprocess(1), where compute = preprocess + networks + restore +
  combine + postprocess (reading and writing files are reported separately);
- 5 members end to end (read, align, ..., write) <= 8 s on this machine.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import DATA, RESULTS, ROOT, add_out, parser, write_result

COUNTS = (1, 3, 5)


def train_members(out: Path, n: int = 5) -> list[str]:
    from mricore.config import from_dict
    from segment.config import SegmentConfig
    from segment.train import train

    paths = []
    for i in range(n):
        cfg = from_dict(SegmentConfig, {
            "name": f"member{i}", "output_dir": str(out),
            "data": {"root": str(DATA / "prostatex" / "ProstateX-0000"), "label": "zones_ai"},
            "preprocess": {"channels": ["T2W", "ADC"], "target_spacing": [0.6, 0.6, None], "crop_mm": [120.0, 120.0]},
            "model": {"name": "unet", "spatial_dims": 2, "channels": [16, 32, 64, 128], "strides": [2, 2, 2]},
            "augment": {"mode": "none"},
            "train": {"epochs": 1, "iters_per_epoch": 2, "batch_size": 2, "patch": [160, 160], "seed": i,
                      "tensorboard": False},
        }, "bench")
        paths.append(str(train(cfg, "all", progress=False)))
    return paths


def worker(case: str, members: list[str], repeats: int) -> dict:
    """One member count in this process: warm up, then time `repeats` predictions."""
    import torch

    from ensemble.config import EnsembleConfig
    from ensemble.predict import predict

    with tempfile.TemporaryDirectory() as tmp:
        predict(case, Path(tmp) / "warm", EnsembleConfig(members=members[:1]), notify=False)
        runs = []
        cfg = EnsembleConfig(members=members)
        for r in range(repeats):
            t = time.perf_counter()
            side = predict(case, Path(tmp) / f"run{r}", cfg, notify=False)
            runs.append({"end_to_end_s": time.perf_counter() - t, "stages_s": side.timings_s})
    best = min(runs, key=lambda x: x["end_to_end_s"])
    st = best["stages_s"]
    compute = st["preprocess"] + sum(st["network"].values()) + st["restore"] + st["combine"] + st["postprocess"]
    return {"members": len(members), "end_to_end_s": round(best["end_to_end_s"], 3), "compute_s": round(compute, 3),
            "stages_s": st, "network_total_s": round(sum(st["network"].values()), 3),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            "torch_threads": torch.get_num_threads(), "all_runs_end_to_end_s": [round(x["end_to_end_s"], 3) for x in runs]}


def main(argv=None) -> int:
    p = parser(__doc__)
    p.add_argument("--members", nargs="*", help="model folders (default: train 5 default-size members)")
    p.add_argument("--case", default=str(DATA / "unlabelled" / "ProstateX-0218"))
    p.add_argument("--repeats", type=int, default=2)
    add_out(p, RESULTS / "ensemble_bench.json")
    p.add_argument("--worker", type=int, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args.case, args.members[:args.worker], args.repeats)))
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        members = args.members or train_members(Path(tmp))
        if len(members) < max(COUNTS):
            raise SystemExit(f"need {max(COUNTS)} members, got {len(members)}")
        results = {}
        for n in COUNTS:
            cmd = [sys.executable, "-m", "bench.ensemble_bench", "--worker", str(n), "--case", args.case, "--repeats", str(args.repeats),
                   "--members", *members]
            out = subprocess.run(cmd, capture_output=True, text=True, check=True, cwd=ROOT).stdout
            results[n] = json.loads(out.strip().splitlines()[-1])
            print(f"{n} member(s): end to end {results[n]['end_to_end_s']:.2f} s, compute {results[n]['compute_s']:.2f} s, "
                  f"networks {results[n]['network_total_s']:.2f} s, peak RSS {results[n]['peak_rss_mb']:.0f} MB")
    one, five = results[1], results[5]
    budget = 5.5 * one["network_total_s"] + one["stages_s"]["preprocess"]
    import nibabel as nib

    shapes = {f.name: list(nib.load(str(f)).shape) for f in sorted(Path(args.case).glob("*.nii*"))
              if f.name.split(".")[0] in ("t2", "adc")}
    report = {
        "case": str(Path(args.case).resolve()), "case_shapes": shapes,
        "load_average_at_end": os.getloadavg(),
        "members": "given" if args.members else "trained: 2D U-Net [16,32,64,128], T2W+ADC, 0.6 mm, 120 mm FOV",
        "results": {str(k): v for k, v in results.items()},
        "targets": {
            "compute_5_vs_budget": {"compute_5_s": five["compute_s"], "budget_s": round(budget, 3),
                                    "definition": "5.5 x network(1 member) + preprocess(1 member)",
                                    "met": five["compute_s"] <= budget},
            "end_to_end_5_le_8s": {"end_to_end_5_s": five["end_to_end_s"], "met": five["end_to_end_s"] <= 8.0},
        },
    }
    write_result(report, args.out)
    print(json.dumps(report["targets"], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
