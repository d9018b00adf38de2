"""Serving and cohort throughput of the bundled ensemble, against one `ensemble predict` process per case.

Measured on the same 4 real studies (prostate158/001, 002, 021, prostatex/ProstateX-0002), in one run:
- `ensemble serve` (uvicorn on 127.0.0.1, stdlib HTTP client): start-up (ensemble loaded once), the
  first request's latency and the median warm latency (one client, 1 worker); requests per minute
  with 2 clients against 1 and 2 workers (8 requests each);
- the CLI: one `ensemble predict` process per study (imports and model loading paid every time);
- a cohort: `ensemble predict DATASET --workers 1` and `--workers 2` (reading and writing overlapped
  with the networks), cases per hour.
Prints and writes bench/results/serve_bench.json.

    python -m bench.serve_bench [--data ../shared/data]
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from bench.common import ENSEMBLE, RESULTS, add_data, command, parser, write_result
from ensemble.config import load_ensemble_config

CASES = ["prostate158/001", "prostate158/002", "prostate158/021", "prostatex/ProstateX-0002"]


def main(argv: list[str] | None = None) -> int:
    ap = parser(__doc__)
    add_data(ap)
    args = ap.parse_args(argv)
    data = args.data
    from ensemble.batch import predict_batch
    from ensemble.serve import create_app
    from tests.ensemble.serve_client import Running, post  # the tests' loopback server and stdlib client

    files = [(data / c / "t2.nii.gz").read_bytes() for c in CASES]
    cfg = load_ensemble_config(None)
    out: dict = {"command": command("serve_bench"), "cases": CASES, "members": len(cfg.members)}
    tmp = Path(tempfile.mkdtemp(prefix="serve_bench_"))

    def request(url, i):
        t = time.perf_counter()
        status, j = post(url + "/predict", {"t2": ("t2.nii.gz", files[i % len(files)])})
        assert status == 200, j
        return time.perf_counter() - t

    for workers in (1, 2):
        t = time.perf_counter()
        app = create_app(cfg, tmp / f"results_w{workers}", workers=workers, queue=8)
        startup = time.perf_counter() - t
        srv = Running(app)
        entry = {"startup_s": round(startup, 2)}
        if workers == 1:
            lat = [request(srv.url, i) for i in range(5)]
            entry.update(first_request_s=round(lat[0], 2), warm_request_median_s=round(statistics.median(lat[1:]), 2))
        t = time.perf_counter()
        with ThreadPoolExecutor(2) as pool:
            list(pool.map(lambda i: request(srv.url, i), range(8)))
        entry["requests_per_minute_2_clients"] = round(8 / (time.perf_counter() - t) * 60, 2)
        srv.stop()
        out[f"serve_workers_{workers}"] = entry
        print(f"serve, {workers} worker(s): {entry}", flush=True)

    cli = []
    for i, c in enumerate(CASES):
        t = time.perf_counter()
        subprocess.run([str(ENSEMBLE), "predict", str(data / c / "t2.nii.gz"), "-o",
                        str(tmp / f"cli_{i}")], check=True, capture_output=True)
        cli.append(time.perf_counter() - t)
    out["cli_process_per_case"] = {"median_s": round(statistics.median(cli), 2), "per_case_s": [round(x, 2) for x in cli],
                                   "requests_per_minute": round(60 / statistics.mean(cli), 2)}
    print(f"CLI, one process per case: {out['cli_process_per_case']}", flush=True)

    ds = tmp / "cohort"
    for c in CASES:
        (ds / c.split("/")[1]).mkdir(parents=True)
        (ds / c.split("/")[1] / "t2.nii.gz").symlink_to(data / c / "t2.nii.gz")
    for workers in (1, 2):
        t = time.perf_counter()
        predict_batch(ds, tmp / f"cohort_w{workers}", cfg, progress=False, workers=workers)
        s = time.perf_counter() - t
        out[f"cohort_workers_{workers}"] = {"seconds": round(s, 2), "cases_per_hour": round(len(CASES) / s * 3600, 1)}
        print(f"cohort --workers {workers}: {out[f'cohort_workers_{workers}']}", flush=True)
    write_result(out, RESULTS / "serve_bench.json")
    print("wrote bench/results/serve_bench.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
