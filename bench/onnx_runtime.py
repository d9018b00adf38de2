"""Where one study's time goes, and what ONNX Runtime's memory arena and thread spinning cost.

Two parts, each in fresh processes:
- `settings`: the bundle's ten ONNX sessions (locator and nine members) built with each of four
  settings -- no arena (each layer's buffers freed and faulted in again), an arena per session (the ORT
  default), one arena shared by every session (segment.onnx_segmenter.shared_arena), and that with the
  worker threads not spinning (what the bundle ships) -- and run on inputs of the shapes the bundle feeds
  them on prostate158/001 (locator 23 x 80 x 80; members 23 slices of 168 x 168, one or three channels;
  batches of 8; random values: a convolution costs the same whatever the values). Per setting: the
  network seconds of one study (best of 3 after a warm-up), alone and while a second thread decodes
  001's NIfTI in a loop as the cohort's reader thread does (how many reads it got through), and the
  process's peak RSS.
- `end_to_end`: `ensemble predict prostate158/001` as a user runs it (fresh process, bundle as shipped),
  --repeats times under GNU time: wall, CPU and peak RSS, and the median of each stage in zones.json's
  timings_s (the rest of the wall is start-up: imports and loading the sessions). Target (issue 38): at
  most 3 s wall.
- `every_study`: the same, once, on every whole-gland T2W study of the data folder (bench.cohort_bench
  .sources: Prostate158, ProstateX, unlabelled, Philips, PROMISE12). Targets: Philips-03 at most 8 s,
  every study at most 10 s.

    python -m bench.onnx_runtime [--repeats 5]     # about 3 minutes on 2 cores

Writes bench/results/onnx_runtime.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from bench.common import BUNDLE, DATA, ENSEMBLE, RESULTS, add_data, add_out, command, parse_time, parser, write_result

SETTINGS = {"no_arena": "no arena, threads spin (before)", "session_arena": "an arena per session (ORT default)",
            "shared_arena": "one shared arena, threads spin", "shipped": "one shared arena, threads sleep (shipped)"}
CASE = "prostate158/001/t2.nii.gz"
SLICES, BATCH = 23, 8


def sessions(setting: str) -> list:
    """(session, input shape) for the bundle's ONNX locator and members, built with `setting`."""
    import onnxruntime as ort

    from segment.onnx_segmenter import shared_arena

    root = BUNDLE / "onnx"
    names = ["locator"] + sorted(p.name for p in root.iterdir() if (p / "model.onnx").is_file() and p.name != "locator")
    out = []
    for name in names:
        opts = ort.SessionOptions()
        opts.enable_cpu_mem_arena = setting != "no_arena"
        if setting in ("shared_arena", "shipped"):
            shared_arena(ort)
            opts.add_session_config_entry("session.use_env_allocators", "1")
        if setting == "shipped":
            opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        s = ort.InferenceSession(str(root / name / "model.onnx"), opts, providers=["CPUExecutionProvider"])
        shape = (SLICES, 1, 80, 80) if name == "locator" else (SLICES, 3 if "25d" in name else 1, 168, 168)
        out.append((s, shape))
    return out


def study(sess: list, rng) -> float:
    """Seconds to run every session over one study's slices, in batches of BATCH."""
    import numpy as np

    t = time.perf_counter()
    for s, shape in sess:
        x = rng.standard_normal(shape).astype(np.float32)
        name = s.get_inputs()[0].name
        for i in range(0, shape[0], BATCH):
            s.run(None, {name: x[i:i + BATCH]})
    return time.perf_counter() - t


def child(setting: str, data: Path) -> dict:
    """One setting, measured in this process (module docstring)."""
    import resource

    import nibabel as nib
    import numpy as np

    rng = np.random.default_rng(0)
    sess = sessions(setting)
    study(sess, rng)
    alone = min(study(sess, rng) for _ in range(3))
    stop, reads = threading.Event(), [0]

    def reader():
        while not stop.is_set():
            np.asarray(nib.load(str(data / CASE)).dataobj, dtype=np.float32)
            reads[0] += 1
    th = threading.Thread(target=reader, daemon=True)
    th.start()
    busy = min(study(sess, rng) for _ in range(3))
    stop.set()
    th.join()
    return {"setting": SETTINGS[setting], "network_s": round(alone, 3), "network_with_reader_s": round(busy, 3),
            "reader_reads": reads[0], "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)}


def timed_predict(t2: Path, out: Path) -> tuple[dict, dict]:
    """`ensemble predict t2 -o out` as a fresh process under GNU time -> (wall/CPU/RSS, zones.json timings_s)."""
    p = subprocess.run(["/usr/bin/time", "-v", str(ENSEMBLE), "predict", str(t2), "-o", str(out)],
                       capture_output=True, text=True)
    if p.returncode != 0:
        raise SystemExit(f"ensemble predict {t2} failed: {p.stderr[-500:]}")
    return parse_time(p.stderr), json.loads(next(out.rglob("zones.json")).read_text())["timings_s"]


def every_study(data: Path) -> dict:
    """Each whole-gland study of `data` once (module docstring): wall and peak RSS per study."""
    from bench.cohort_bench import sources

    per = {}
    with tempfile.TemporaryDirectory() as tmp:
        for i, t2 in enumerate(sources(data)):
            r, _ = timed_predict(t2, Path(tmp) / str(i))
            per[str(t2.parent.relative_to(data))] = {"wall_s": round(r["wall_s"], 2), "peak_rss_gb": round(r["peak_rss_gb"], 3)}
    walls = [v["wall_s"] for v in per.values()]
    return {"studies": per, "n": len(per), "wall_s_median": round(statistics.median(walls), 2), "wall_s_max": max(walls),
            "peak_rss_gb_max": max(v["peak_rss_gb"] for v in per.values()), "target_wall_s": 10.0,
            "target_philips_03_wall_s": 8.0}


def end_to_end(data: Path, repeats: int) -> dict:
    """`ensemble predict` on prostate158/001, fresh process, `repeats` times (module docstring)."""
    runs, stages = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(repeats):
            r, zones = timed_predict(data / CASE, Path(tmp) / f"run{i}")
            runs.append(r)
            for k, v in zones.items():
                stages.setdefault(k, []).append(sum(v.values()) if isinstance(v, dict) else v)
    med = {k: round(statistics.median(r[k] for r in runs), 3) for k in ("wall_s", "cpu_s", "peak_rss_gb")}
    stage = {k: round(statistics.median(v), 3) for k, v in stages.items()}
    return {"case": CASE, "repeats": repeats, **med, "stages_median_s": stage,
            "startup_and_other_s": round(med["wall_s"] - sum(stage.values()), 3),
            "walls_s": [round(r["wall_s"], 2) for r in runs], "target_wall_s": 3.0}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    ap = parser(__doc__)
    ap.add_argument("--repeats", type=int, default=5, help="end-to-end runs (median reported)")
    ap.add_argument("--child", choices=sorted(SETTINGS), help=argparse.SUPPRESS)  # one setting, run by main in a fresh process
    add_data(ap)
    add_out(ap, RESULTS / "onnx_runtime.json")
    args = ap.parse_args(argv)
    if not (args.data / CASE).is_file():
        print(f"skipped: no {CASE} under {args.data}")
        return 0
    if args.child:
        print(json.dumps(child(args.child, args.data)))
        return 0
    settings = {}
    for s in SETTINGS:
        p = subprocess.run([sys.executable, "-m", "bench.onnx_runtime", "--child", s, "--data", str(args.data)],
                           capture_output=True, text=True, check=True)
        settings[s] = json.loads(p.stdout.strip().splitlines()[-1])
        print(s, settings[s], flush=True)
    e2e = end_to_end(args.data, args.repeats)
    print("end to end", e2e, flush=True)
    every = every_study(args.data)
    print("every study", {k: v for k, v in every.items() if k != "studies"}, flush=True)
    write_result({"command": command("onnx_runtime", argv), "settings": settings, "end_to_end": e2e,
                  "every_study": every}, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
