"""Scale: training start-up, step time and peak memory at 25, 250 and 1,000 studies (issue 38).

A synthetic cohort is written under runs/scale_bench/ (git-ignored): replicas of the shared studies
with an expert or AI zone map, each with its own case and patient id and its own random paired
augmentation (left-right flip, gamma, contrast, brightness, noise, bias field: segment.augment
.augment_volume), as uncompressed NIfTI. For each --sizes N, `segment train` (the default 2D config,
fold all, one epoch of --iters steps, selection fixed) runs twice in a fresh process on the first N
studies: cold (an empty case cache: every study preprocessed, in parallel over the cores) and warm
(the cache built; only its checks run). Per run:
- startup_s: from the training process's start to the start of its first step (the end of the
  first step less the median step);
- step_s: median seconds per step;
- peak_rss_gb: the training process's peak resident memory (its cache maps come and go per patch);
  workers_peak_rss_gb: the largest preprocessing worker's.

    python -m bench.scale_bench --sizes 25 250 --out bench/results/scale_bench.json

The result's `training` entry is replaced; other entries of the file (the cohort part) are kept.
About 2 minutes at 25 and 250 studies on 2 cores, and about 10 at 1,000 (most of it writing the
cohort and preprocessing it once).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from bench.common import RESULTS, ROOT, add_data, add_out, command, data_missing, parser, write_result

WORK = ROOT / "runs" / "scale_bench"
CONFIG = ROOT / "configs" / "segment" / "zonal_t2w_2d.yaml"


def write_cohort(data: Path, n: int, seed: int = 0) -> Path:
    """runs/scale_bench/cohort/<id>/{t2,zones}.nii and datalist.csv: `n` augmented replicas of the
    labelled shared studies (existing replicas are kept: ids and draws depend on the index only)."""
    import numpy as np

    from mricore.datasets import load_case, load_dataset
    from mricore.io import write_nifti
    from mricore.outputs import write_csv
    from segment.augment import augment_volume
    from segment.config import AugmentConfig

    sources = [(c, "zones" if "zones" in c.labels else "zones_ai") for c in load_dataset(data)
               if "T2W" in c.images and ({"zones", "zones_ai"} & set(c.labels))]
    aug = AugmentConfig(elastic_p=0.0, rotate_p=0.0, scale_p=0.0, gamma_p=0.5, contrast_p=0.5,
                        brightness_p=0.5, noise_p=0.5, bias_p=0.5)
    loaded, rows = {}, []
    for i in range(n):
        case, key = sources[i % len(sources)]
        cid = f"synth{i:05d}"
        folder = WORK / "cohort" / cid
        if not (folder / "zones.nii").exists():
            if case.case_id not in loaded:
                loaded[case.case_id] = load_case(case, ["T2W"], key)[:2]
            image, label = loaded[case.case_id]
            img, lab = augment_volume(np.random.default_rng([seed, i]), aug, image.array, label.array[0])
            folder.mkdir(parents=True, exist_ok=True)
            write_nifti(np.clip(np.round(img[0]), -32768, 32767), image, folder / "t2.nii", dtype=np.int16, force=True)
            write_nifti(lab, image, folder / "zones.nii", dtype=np.uint8, force=True)
        rows.append({"case_id": cid, "patient_id": cid, "dataset": "synth", "T2W": f"{cid}/t2.nii",
                     "zones": f"{cid}/zones.nii"})
    datalist = WORK / "cohort" / f"datalist_{n}.csv"
    write_csv(rows, datalist)
    return datalist


def one_run(datalist: Path, cache: Path, out: Path, iters: int) -> dict:
    """In this process (a fresh one, started by `measure`): `segment train` on `datalist`; the figures
    of the module docstring as a dict."""
    import resource

    import numpy as np

    from mricore.config import load_config
    from segment.config import SegmentConfig
    from segment.train import train

    t0 = time.perf_counter()
    sets = [f"data.root={datalist}", "data.datasets=[synth]", "data.label=zones", f"data.cache_dir={cache}",
            f"output_dir={out}", "train.epochs=1", f"train.iters_per_epoch={iters}", "train.selection=fixed",
            "train.tensorboard=false"]
    cfg = load_config(SegmentConfig, CONFIG, sets)
    ends = []
    train(cfg, "all", force=True, progress=False, on_iteration=lambda epoch, it: ends.append(time.perf_counter()))
    steps = np.diff(ends)
    step = float(np.median(steps)) if len(steps) else float("nan")
    gb = 1024 ** 2  # ru_maxrss is in kB on Linux
    return {"startup_s": round(ends[0] - t0 - step, 2), "step_s": round(step, 3), "steps": len(ends),
            "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / gb, 3),
            "workers_peak_rss_gb": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / gb, 3)}


def measure(n: int, datalist: Path, iters: int) -> dict:
    """Cold, then warm: each `one_run` in a fresh process (`--one-run`); the process's wall time too."""
    import shutil

    cache = WORK / f"cache_{n}"
    shutil.rmtree(cache, ignore_errors=True)
    out = {}
    for phase in ("cold", "warm"):
        t = time.perf_counter()
        r = subprocess.run([sys.executable, "-m", "bench.scale_bench", "--one-run", str(datalist), str(cache),
                            str(WORK / f"train_{n}"), str(iters)], cwd=ROOT, capture_output=True, text=True, check=False)
        if r.returncode != 0:
            raise RuntimeError(f"training on {n} studies failed:\n{r.stderr[-3000:]}")
        out[phase] = {**json.loads(r.stdout.strip().splitlines()[-1]), "process_wall_s": round(time.perf_counter() - t, 2)}
        print(n, phase, out[phase], flush=True)
    return out


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--one-run"]:  # the training process of `measure`
        datalist, cache, out, iters = argv[1:5]
        print(json.dumps(one_run(Path(datalist), Path(cache), Path(out), int(iters))))
        return 0
    ap = parser(__doc__)
    ap.add_argument("--sizes", nargs="+", type=int, default=[25, 250, 1000], help="studies per training run")
    ap.add_argument("--iters", type=int, default=10, help="training steps per run (batch 8, 160x160 patches)")
    add_data(ap)
    add_out(ap, RESULTS / "scale_bench.json")
    args = ap.parse_args(argv)
    if data_missing(args.data):
        return 0
    runs = {}
    for n in args.sizes:
        t = time.perf_counter()
        datalist = write_cohort(args.data, n)
        print(f"cohort of {n}: {time.perf_counter() - t:.1f} s", flush=True)
        runs[str(n)] = measure(n, datalist, args.iters)
    previous = json.loads(args.out.read_text()) if args.out.exists() else {}
    previous.pop("machine", None)
    training = {"command": command("scale_bench", argv, drop=("--data", "--out")), "config": str(CONFIG),
                "iters": args.iters, "data": "replicas of the labelled studies of ../shared/data", "runs": runs}
    write_result({**previous, "training": training}, args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
