"""Each bundled member on a real study's working grid: which runtime is fastest, and how close to the
machine's fp32 peak it runs.

For one member of each family of the bundle on prostate158/001 as the ensemble feeds it (whole slices,
or 160-px tiles with 0.25 overlap where the bundle's `whole_slice` is null and the member uses instance
norm; 8 slices or tiles per forward), the network part of `probabilities` is timed (best of 5) in:
- eager PyTorch (oneDNN), `segment.torch_segmenter.Segmenter`;
- TorchScript frozen with `torch.jit.freeze` + `optimize_for_inference` (the network swapped in);
- ONNX Runtime on the member's `ensemble export` (`segment.onnx_segmenter.OnnxSegmenter`).
FLOPs of one pass over the study come from PyTorch's FlopCounterMode on the same inputs; GFLOP/s is
that over the time, against the fp32 matmul peak (2048^2 torch.mm, best of 5). Also: start-up of a
fresh `ensemble predict` process up to the first network (imports and model loading), per runtime.
Prints and writes bench/results/member_speed.json.

    python -m bench.member_speed
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from bench.common import DATA, ENSEMBLE, RESULTS, best_seconds, command, matmul_peak_gflops, parser, write_result
from ensemble.config import load_ensemble_config
from segment.windows import padded_slice, size_divisor, uses_whole_slices, with_whole_slice

# The first fold of each member family, read from the bundle (`ensemble pack` lists them family by family),
# and the bundle's whole_slice setting (None: each member's own).
BUNDLE = load_ensemble_config()
KINDS = tuple(Path(m).name for m in BUNDLE.members[::3])
WHOLE = BUNDLE.whole_slice


def flops_of(seg, array) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    fc = FlopCounterMode(display=False)
    with fc:
        seg.probabilities(array, whole_slice=WHOLE)
    return fc.get_total_flops()


def whole(seg) -> bool:
    """Whether the bundle runs this member on whole slices (its own setting, unless the bundle sets one)."""
    return uses_whole_slices(seg.model_cfg, with_whole_slice(seg.predict_cfg, WHOLE))


def frozen(seg, array):
    """The segmenter with its network replaced by a frozen TorchScript trace (same inputs shape class)."""
    import copy

    s = copy.copy(seg)
    c = len(seg.spec.channels) * (2 * seg.model_cfg.context + 1)
    shape = padded_slice(array.shape[1:3], size_divisor(seg.model_cfg)) if whole(seg) else seg.patch
    x = torch.zeros(min(8, array.shape[-1]), c, *shape)
    with torch.inference_mode():
        s.net = torch.jit.optimize_for_inference(torch.jit.freeze(torch.jit.trace(seg.net.eval(), x).eval()))
    return s


def startup(config: Path) -> float:
    """Seconds from process start to the first network call of `ensemble predict` (imports, config,
    members loaded, input read and preprocessed): total wall minus the stages zones.json times."""
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        subprocess.run([str(ENSEMBLE), "predict", str(DATA / "prostate158/001/t2.nii.gz"),
                        "--config", str(config), "-o", tmp + "/o"], check=True, capture_output=True)
        wall = time.perf_counter() - t
        tim = json.loads(Path(tmp, "o", "zones.json").read_text())["timings_s"]
    stages = sum(v if not isinstance(v, dict) else sum(v.values()) for v in tim.values())
    return {"wall_s": round(wall, 3), "timed_stages_s": round(stages, 3), "startup_and_rest_s": round(wall - stages, 3)}


def main(argv: list[str] | None = None) -> int:
    parser(__doc__).parse_args(argv)  # no options: --help only
    from ensemble.config import BUNDLED, BUNDLED_ONNX
    from ensemble.members import read_members
    from mricore.io import read_nifti
    from mricore.modelfolder import read_model
    from mricore.preprocess import preprocess
    from segment.onnx_segmenter import OnnxSegmenter

    peak = max(matmul_peak_gflops(), matmul_peak_gflops())
    t2 = read_nifti(DATA / "prostate158/001/t2.nii.gz", "T2W")
    members = {m.name: m for m in read_members([str(BUNDLED.parent / k) for k in KINDS])}
    out = {"command": command("member_speed"), "case": "prostate158/001", "fp32_matmul_peak_gflops": round(peak, 1),
           "torch_threads": torch.get_num_threads(), "members": {}}
    for name, m in members.items():
        seg = m.segmenter
        arr = preprocess(t2, seg.spec).array
        onnx_dir = BUNDLED_ONNX.parent / name
        ort = OnnxSegmenter(onnx_dir, read_model(onnx_dir, "segmenter"))
        gflop = flops_of(seg, arr) / 1e9
        runs = {"eager": seg, "jit_freeze": frozen(seg, arr), "onnxruntime": ort}
        ref = seg.probabilities(arr, whole_slice=WHOLE)
        row = {"working_grid": list(arr.shape[1:]), "mode": "whole slices" if whole(seg) else "tiles",
               "gflop_per_study": round(gflop, 2)}
        for rt, s in runs.items():
            sec = best_seconds(lambda: s.probabilities(arr, whole_slice=WHOLE))
            row[rt] = {"seconds": round(sec, 4), "gflops": round(gflop / sec, 1),
                       "percent_of_peak": round(100 * gflop / sec / peak, 1),
                       "max_abs_diff_vs_eager": float(np.abs(s.probabilities(arr, whole_slice=WHOLE) - ref).max())}
        row["fastest"] = min(runs, key=lambda r: row[r]["seconds"])
        out["members"][name] = row
        print(name, json.dumps(row), flush=True)
    out["startup"] = {"pytorch_members": startup(BUNDLED), "onnx_members": startup(BUNDLED_ONNX)}
    print("start-up:", out["startup"])
    write_result(out, RESULTS / "member_speed.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
