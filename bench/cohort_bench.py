"""Cohort throughput and memory: `ensemble predict DATASET` on a synthetic cohort, studies per hour and RSS.

    python -m bench.cohort_bench                                # measured here: 43 studies, 10 to 43
    python -m bench.cohort_bench --n 504 --marks 10 50 504     # the issue's full run (hours on 2 cores)

The cohort (under runs/cohort_bench/, git-ignored; rebuilt only when --n, --seed or the sources change)
holds --n replicas of the shared whole-gland T2W studies (every `DATA/*/*/t2.nii.gz` of 16 slices or
more: Prostate158, ProstateX, unlabelled, Philips, PROMISE12; the 3-5-slice I2CVB slabs left out) in
one shuffled order repeated, so any run of P consecutive cases (P: the number of sources, the period)
holds each source once and memory can be compared like with like. Each replica gets a
small random augmentation (intensity x U(0.9, 1.1), Gaussian noise of 1 % of the 99th percentile, 0-4
voxels cropped from each in-plane edge, so the grids differ too) and its own case id.

For each --workers value the bundled ensemble as `ensemble predict` runs it (its ONNX export; or --config) predicts the whole cohort in a fresh process,
the CLI as a user runs it, into a fresh OUT. A thread samples that process's RSS (/proc/PID/status
VmRSS) and counts the complete case folders every 0.2 s. Recorded, to bench/results/cohort_bench.json:
- studies per hour over the whole run, start-up included, and in the steady state (from the first
  mark to the end);
- at each mark (a count of complete cases): the RSS then, and the highest and lowest RSS over the
  period of cases ending there (the peak of the largest grid; the floor held between cases); their
  growth from the first mark with a whole period before it to the last (target: at most 10 % from
  case 50 to case 500, i.e. `--marks 50 500` and more);
- the RSS as each case completed (`rss_mb_by_case`), and the cases failed (from summary.json).
Target (issue 38): at least 2,000 studies per hour. Nothing is extrapolated: the result holds what ran.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

from bench.common import DATA, ENSEMBLE, RESULTS, ROOT, add_data, add_out, command, data_missing, parser, write_result
from ensemble.config import bundled_config

WORK = ROOT / "runs" / "cohort_bench"
MIN_SLICES = 16  # a whole-gland study; the I2CVB slabs have 3-5
SAMPLE_S = 0.2
TARGET_PER_HOUR = 2000
TARGET_GROWTH = 0.10


def sources(data: Path) -> list[Path]:
    """The shared whole-gland T2W studies, in a fixed order."""
    import nibabel as nib

    return [p for p in sorted(data.glob("*/*/t2.nii.gz")) if nib.load(str(p)).shape[2] >= MIN_SLICES]


def replica(src: Path, dst: Path, rng) -> None:
    """`src` with a small random augmentation (module docstring), written as `dst` (float32)."""
    import nibabel as nib
    import numpy as np

    img = nib.load(str(src))
    lo, hi = rng.integers(0, 5, size=2), rng.integers(0, 5, size=2)
    img = img.slicer[lo[0]:img.shape[0] - hi[0], lo[1]:img.shape[1] - hi[1], :]
    a = np.asarray(img.dataobj, dtype=np.float32)
    a = a * rng.uniform(0.9, 1.1) + rng.normal(0, 0.01 * np.percentile(a, 99), a.shape).astype(np.float32)
    dst.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.clip(a, 0, None), img.affine), str(dst))


def build_cohort(data: Path, n: int, seed: int) -> tuple[Path, dict]:
    """The synthetic cohort folder (module docstring) and its manifest {case_id: source}; reused when
    its manifest matches."""
    import numpy as np

    folder, manifest_path = WORK / "cohort", WORK / "cohort.json"
    srcs = sources(data)
    rng = np.random.default_rng(seed)
    perm = rng.permutation(len(srcs))
    order = [srcs[perm[i % len(srcs)]] for i in range(n)]
    manifest = {"n": n, "seed": seed, "cases": {f"c{i:04d}": str(p.relative_to(data)) for i, p in enumerate(order)}}
    if manifest_path.is_file() and json.loads(manifest_path.read_text()) == manifest:
        return folder, manifest
    shutil.rmtree(folder, ignore_errors=True)
    for case_id, src in manifest["cases"].items():
        replica(data / src, folder / case_id / "t2.nii.gz", rng)
    manifest_path.write_text(json.dumps(manifest, indent=1))
    return folder, manifest


class Sampler(threading.Thread):
    """Samples (seconds since start, RSS in MB, complete cases in `out`) of process `pid` every SAMPLE_S."""

    def __init__(self, pid: int, out: Path):
        super().__init__(daemon=True)
        self.pid, self.out, self.samples, self.done = pid, out, [], set()
        self.t0, self.stop = time.perf_counter(), threading.Event()

    def rss_mb(self) -> float | None:
        try:
            status = Path(f"/proc/{self.pid}/status").read_text()
        except OSError:
            return None
        kb = next((int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:")), None)
        return None if kb is None else kb / 1024

    def count(self) -> int:
        if self.out.is_dir():
            self.done |= {e.name for e in os.scandir(self.out) if e.name not in self.done and e.is_dir()
                          and os.path.isfile(os.path.join(e.path, "zones.json"))}
        return len(self.done)

    def run(self) -> None:
        while not self.stop.wait(SAMPLE_S):
            rss = self.rss_mb()
            if rss is not None:
                self.samples.append((time.perf_counter() - self.t0, rss, self.count()))


def run_cohort(cohort: Path, config: Path, workers: int, marks: list[int], period: int) -> dict:
    """One `ensemble predict COHORT -o OUT --workers N` in a fresh process, sampled (module docstring)."""
    out = WORK / f"out_w{workers}"
    shutil.rmtree(out, ignore_errors=True)
    log = WORK / f"out_w{workers}.log"
    t = time.perf_counter()
    with open(log, "w") as err:
        proc = subprocess.Popen([str(ENSEMBLE), "predict", str(cohort), "-o", str(out), "--config", str(config),
                                 "--workers", str(workers)], stdout=subprocess.DEVNULL, stderr=err)
        sampler = Sampler(proc.pid, out)
        sampler.start()
        code = proc.wait()
        wall = time.perf_counter() - t
        sampler.stop.set()
        sampler.join()
    summary = out / "summary.json"
    if not summary.is_file():
        raise SystemExit(f"ensemble predict ended with code {code} and no summary; see {log}")
    rows = json.loads(summary.read_text())["cases"]
    return {"workers": workers, "exit_code": code, **measures(sampler.samples, len(rows), wall, marks, period),
            "failed": sum(r["status"] != "ok" for r in rows)}


def measures(samples: list[tuple], n: int, wall: float, marks: list[int], period: int) -> dict:
    """Studies per hour and RSS at the marks (module docstring), from the samples (seconds, RSS MB,
    complete cases)."""
    def first(mark):
        return next((i for i, s in enumerate(samples) if s[2] >= mark), None)

    at = {m: first(m) for m in marks if first(m) is not None}
    per = {}
    for m, i in at.items():
        window = samples[first(m - period) if m > period else 0:i + 1]
        low = [s[1] for s in window if s[2] >= 1]  # the floor between cases: not the start-up's
        per[str(m)] = {"rss_mb": round(samples[i][1]), "window_from_case": max(m - period, 0),
                       "window_peak_mb": round(max(s[1] for s in window)),
                       "window_low_mb": round(min(low)) if low else None}
    result = {"cases": n, "wall_s": round(wall, 1), "studies_per_hour": round(n / wall * 3600),
              "at_case": per, "peak_rss_mb": round(max(s[1] for s in samples)) if samples else None,
              "rss_mb_by_case": [round(samples[i][1]) for m in range(1, n + 1) if (i := first(m)) is not None]}
    if len(at) >= 2:
        (m0, i0), (m1, i1) = min(at.items()), max(at.items())
        result["steady_studies_per_hour"] = round((m1 - m0) / (samples[i1][0] - samples[i0][0]) * 3600)
    full = sorted(m for m in at if m >= period)
    if len(full) >= 2:
        a, b = per[str(full[0])], per[str(full[-1])]
        result["growth"] = {"from_to": [full[0], full[-1]],
                            "window_peak": round(b["window_peak_mb"] / a["window_peak_mb"] - 1, 3),
                            "window_low": round(b["window_low_mb"] / a["window_low_mb"] - 1, 3)
                            if a["window_low_mb"] and b["window_low_mb"] else None}
    return result


def _args(argv: list[str]):
    ap = parser(__doc__)
    ap.add_argument("--n", type=int, default=43, help="studies in the cohort (default 43: two periods of the "
                    "21 shared studies after the first case)")
    ap.add_argument("--marks", type=int, nargs="+", default=[10, 22, 43], help="cases at which RSS is "
                    "read (default 10 22 43; the issue: 50 500)")
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="--workers values (default 1 2)")
    ap.add_argument("--config", type=Path, default=bundled_config(), help="ensemble config (default: the bundle as "
                    "`ensemble predict` runs it: its ONNX export when ONNX Runtime is installed)")
    ap.add_argument("--seed", type=int, default=0, help="the cohort's order and augmentation")
    add_data(ap)
    add_out(ap, RESULTS / "cohort_bench.json")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = _args(argv)
    if data_missing(args.data):
        return 0
    cohort, manifest = build_cohort(args.data, args.n, args.seed)
    print(f"cohort: {args.n} studies in {cohort}", flush=True)
    runs = []
    period = len(set(manifest["cases"].values()))
    for w in args.workers:
        runs.append(run_cohort(cohort, args.config, w, sorted(args.marks), period))
        print(json.dumps(runs[-1]), flush=True)
    best = max(r["studies_per_hour"] for r in runs)
    report = {"command": command("cohort_bench", argv), "config": str(args.config),
              "cohort": {"n": args.n, "seed": args.seed, "period": period,
                         "sources": sorted(set(manifest["cases"].values())),
                         "augmentation": "intensity x U(0.9, 1.1), Gaussian noise 1 % of p99, 0-4 voxels cropped "
                                         "per in-plane edge"},
              "runs": runs,
              "targets": {"studies_per_hour": TARGET_PER_HOUR, "met": best >= TARGET_PER_HOUR,
                          "rss_growth_at_most": TARGET_GROWTH,
                          "rss_flat": all("growth" in r and r["growth"]["window_peak"] <= TARGET_GROWTH
                                          and (r["growth"]["window_low"] or 0) <= TARGET_GROWTH for r in runs)},
              "full_run": "python -m bench.cohort_bench --n 504 --marks 10 50 504"}
    write_result(report, args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
