"""Studies per minute of `segment import` with 1 and 2 workers, on copies of the shared DICOM study.

The shared study ../shared/data/dicom/ProstateX-0000 (six series, 148 files) is copied N times (default
20) into a temporary folder, each copy another patient: its own PatientID, PatientName, study, series
and instance UIDs. `segment import ROOT -o DATASET --key-file K` then runs as a fresh process, as a
data provider runs it, once per worker count, each into a new dataset; the wall time covers the whole
command (start-up, header scan, classification, writing); the CPU seconds of the command and its
workers and the 1-minute load average before each run are recorded beside it (on a shared machine
whose cores are busy, a second worker cannot run in parallel). Target (issue 33): 2 workers at least 1.7x
as fast as 1. Prints and writes bench/results/import_bench.json.

    python -m bench.import_bench [--copies 20] [--workers 1 2]
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import RESULTS, ROOT, add_data, command, parser, write_result

SEGMENT = ROOT / ".venv" / "bin" / "segment"  # our CLI, run as a fresh process like a user
STUDY = Path("dicom") / "ProstateX-0000"
TARGET_SPEEDUP = 1.7


def make_copies(src: Path, dest: Path, n: int) -> Path:
    """`n` copies of the study folder `src` under `dest/patient_XX/`, each with distinct identifiers."""
    import pydicom
    from pydicom.uid import generate_uid

    for i in range(n):
        patient = f"BENCH-{i:03d}"
        for series in sorted(p for p in src.iterdir() if p.is_dir()):
            out = dest / f"patient_{i:02d}" / series.name
            out.mkdir(parents=True)
            for f in sorted(series.iterdir()):
                ds = pydicom.dcmread(f)
                ds.PatientID, ds.PatientName = patient, f"Bench^Patient{i:03d}"
                ds.StudyInstanceUID = generate_uid(entropy_srcs=[patient])
                ds.SeriesInstanceUID = generate_uid(entropy_srcs=[patient, series.name])
                ds.SOPInstanceUID = generate_uid(entropy_srcs=[patient, series.name, f.name])
                ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
                ds.save_as(out / f.name)
    return dest


def _children_cpu() -> float:
    import resource

    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def time_import(root: Path, out: Path, key: Path, workers: int) -> dict:
    """One `segment import` run: its wall time and studies per minute (the dataset must be complete)."""
    load = os.getloadavg()[0]  # the machine may be shared: a busy one cannot show the speed-up
    cpu = _children_cpu()
    t = time.perf_counter()
    r = subprocess.run([str(SEGMENT), "import", str(root), "-o", str(out), "--key-file", str(key),
                        "--workers", str(workers)], capture_output=True, text=True)
    seconds = time.perf_counter() - t
    cpu = _children_cpu() - cpu  # the command and its worker processes
    if r.returncode != 0:
        raise SystemExit(f"segment import failed: {r.stderr.strip()[-500:]}")
    written = sum(1 for p in out.iterdir() if (p / "t2.nii.gz").is_file())
    return {"seconds": round(seconds, 2), "cpu_seconds": round(cpu, 2), "studies_written": written,
            "load_average_before": round(load, 2),
            "studies_per_minute": round(written / seconds * 60, 2)}


def main(argv: list[str] | None = None) -> int:
    ap = parser(__doc__)
    add_data(ap)
    ap.add_argument("--copies", type=int, default=20, help="copies of the study (default 20)")
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="worker counts (default 1 2)")
    args = ap.parse_args(argv)

    result = {"command": command("import_bench", argv if argv is not None else sys.argv[1:]),
              "study": str(STUDY), "copies": args.copies, "runs": {}}
    with tempfile.TemporaryDirectory(prefix="import_bench_") as tmp:
        tmp = Path(tmp)
        t = time.perf_counter()
        root = make_copies(args.data / STUDY, tmp / "root", args.copies)
        print(f"{args.copies} copies made in {time.perf_counter() - t:.1f} s", flush=True)
        for w in args.workers:
            result["runs"][f"workers_{w}"] = run = time_import(root, tmp / f"dataset_w{w}", tmp / "k.key", w)
            print(f"--workers {w}: {run}", flush=True)
    runs = result["runs"]
    if "workers_1" in runs and "workers_2" in runs:
        speedup = runs["workers_2"]["studies_per_minute"] / runs["workers_1"]["studies_per_minute"]
        result["speedup_2_vs_1"] = round(speedup, 2)
        result["target_met"] = speedup >= TARGET_SPEEDUP
        print(f"2 workers vs 1: {speedup:.2f}x (target {TARGET_SPEEDUP}x)")
    path = write_result(result, RESULTS / "import_bench.json")
    print(f"wrote {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
