"""Evaluation speed: 100 synthetic cases of 256x256x24 with 3 zones, all metrics and summaries.

Times (wall clock, on whatever cores the machine has) the per-case, per-zone metrics of
mricore.metrics.zone_metrics (confusion counts, HD95, ASSD) and the summaries of mricore.stats
(bootstrap 95 % CI with N_BOOT resamples for every zone and metric), then the report writing
(CSV, JSON, box/strip plots, HTML) separately. Data generation is not timed. Target: metrics +
summaries <= 30 s on 2 cores. Prints the result and writes bench/results/eval_bench.json.

    python -m bench.eval_bench [--cases 100]
"""

from __future__ import annotations

import json
import os
import resource
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.common import RESULTS, parser, write_result
from mricore.metrics import zone_metrics
from mricore.report import write_report
from mricore.stats import N_BOOT, summarize

SHAPE, SPACING = (256, 256, 24), (0.5, 0.5, 3.0)


def synthetic_case(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Reference: an ellipsoid gland (TZ = 1) with a posterior crescent (PZ = 2) at a random place and
    size; prediction: the same with its own jittered centre and radii plus speckle noise."""
    def zones(c, r):
        x = (np.arange(SHAPE[0]) - c[0]) / r[0]
        y = (np.arange(SHAPE[1]) - c[1]) / r[1]
        z = (np.arange(SHAPE[2]) - c[2]) / r[2]
        d = x[:, None, None] ** 2 + y[None, :, None] ** 2 + z[None, None, :] ** 2
        lab = (d <= 1).astype(np.uint8)
        lab[(d <= 1) & (y[None, :, None] < -0.3)] = 2  # posterior part of the gland is PZ
        return lab

    c = np.array([128, 128, 12]) + rng.normal(0, [10, 10, 1])
    r = np.array([40, 32, 7]) * rng.uniform(0.8, 1.2, 3)
    ref = zones(c, r)
    pred = zones(c + rng.normal(0, [3, 3, 0.5]), r * rng.uniform(0.9, 1.1, 3))
    speckle = rng.random(SHAPE) < 0.0005
    pred[speckle] = rng.integers(0, 3, int(speckle.sum()))
    return pred, ref


def main(argv: list[str] | None = None) -> int:
    ap = parser(__doc__)
    ap.add_argument("--cases", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    rng = np.random.default_rng(args.seed)
    t0 = time.perf_counter()
    data = [synthetic_case(rng) for _ in range(args.cases)]
    t_gen = time.perf_counter() - t0

    t0 = time.perf_counter()
    rows = []
    for i, (pred, ref) in enumerate(data):
        for zone, m in zone_metrics(pred, ref, SPACING).items():
            rows.append({"case_id": f"case{i:03d}", "model": "synthetic", "zone": zone,
                         **{k: m[k] for k in ("dsc", "sensitivity", "specificity", "precision", "hd95", "assd", "rvd")}})
    t_metrics = time.perf_counter() - t0

    t0 = time.perf_counter()
    summaries = {(z, k): summarize([r[k] for r in rows if r["zone"] == z])
                 for z in ("WG", "TZ", "PZ") for k in ("dsc", "sensitivity", "specificity", "precision", "hd95", "assd", "rvd")}
    t_summary = time.perf_counter() - t0

    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        write_report(Path(tmp) / "report", rows, title="eval bench")
        t_report = time.perf_counter() - t0

    total = t_metrics + t_summary
    result = {
        "bench": "eval_bench", "cases": args.cases, "shape": list(SHAPE), "spacing_mm": list(SPACING),
        "zones": 3, "bootstrap_resamples": N_BOOT,
        "seconds_generate_untimed": round(t_gen, 2),
        "seconds_metrics": round(t_metrics, 2), "seconds_summaries": round(t_summary, 2),
        "seconds_metrics_plus_summaries": round(total, 2), "seconds_report_files": round(t_report, 2),
        "target_seconds": 30.0, "meets_target": bool(total <= 30.0),
        "mean_wg_dsc": round(summaries[("WG", "dsc")]["mean"], 4),
        "mean_wg_hd95_mm": round(summaries[("WG", "hd95")]["mean"], 3),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "load_avg_1min": round(os.getloadavg()[0], 2),
    }
    out = write_result(result, RESULTS / "eval_bench.json")
    print(json.dumps(result, indent=2))
    print(f"written {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
