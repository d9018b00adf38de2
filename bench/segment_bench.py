"""Speed of `segment`: training throughput and data wait, prediction time, achieved GFLOP/s, peak RSS.

Run: python -m bench.segment_bench [--data ../shared/data] [--iters 15] [--compile]
Writes bench/results/segment_bench.json and prints:
- fp32 matmul peak (2048x2048 torch.mm, best of 5, the better of before and after): the yardstick;
- training at the default config (configs/segment/zonal_t2w_2d.yaml, fold 'all', one epoch of
  --iters steps): steps/s and share of step time waiting for data, with num_workers 0 and 1;
- `segment predict` seconds for prostate158/001 with the default 2D and 3D configs (models from a
  short training run: speed does not depend on the weights), first call and a repeat;
- network GFLOP/s at the configured sliding-window batch (FLOPs from FlopCounterMode, time of the
  forward), for 3D also at batch 1 eager (the slow_conv3d path) and, with --compile, torch.compile
  with inductor freezing: compile seconds, per-window seconds and break-even window count;
- peak RSS of this process (and of finished children: DataLoader workers).
The machine is shared: the load average at start and end is saved beside the figures.
"""

from __future__ import annotations

import json
import os
import resource
import tempfile
import time
from pathlib import Path

import torch

from bench.common import RESULTS, ROOT, add_data, best_seconds, matmul_peak_gflops, parser, write_result

OUT = RESULTS / "segment_bench.json"
CONFIGS = {"2d": ROOT / "configs/segment/zonal_t2w_2d.yaml", "3d": ROOT / "configs/segment/zonal_t2w_3d.yaml"}


def network_gflops(net, shape) -> dict:
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.randn(*shape)
    with torch.inference_mode():
        fc = FlopCounterMode(display=False)
        with fc:
            net(x)
        flops = fc.get_total_flops()
        s = best_seconds(lambda: net(x))
    return {"batch_shape": list(shape), "gflop_per_batch": flops / 1e9, "seconds_per_batch": s,
            "gflops": flops / 1e9 / s}


def compiled_gflops(net, shape, eager: dict) -> dict:
    import torch._inductor.config as ic

    ic.freezing = True  # fold weights into the graph: inference only
    x = torch.randn(*shape)
    with torch.inference_mode():
        t = time.perf_counter()
        cnet = torch.compile(net)
        y = cnet(x)
        compile_s = time.perf_counter() - t
        diff = float((y - net(x)).abs().max())
        s = best_seconds(lambda: cnet(x))
    gain = eager["seconds_per_batch"] - s
    return {"compile_plus_first_call_s": compile_s, "seconds_per_batch": s,
            "gflops": eager["gflop_per_batch"] / s, "max_abs_diff_vs_eager": diff,
            "break_even_batches": (compile_s / gain) if gain > 0 else None}


def main(argv=None) -> dict:
    ap = parser(__doc__)
    add_data(ap)
    ap.add_argument("--iters", type=int, default=15)
    ap.add_argument("--compile", action="store_true", help="also measure torch.compile (minutes on 2 cores)")
    a = ap.parse_args(argv)

    from mricore.config import load_config
    from segment.config import SegmentConfig
    from segment.torch_segmenter import Segmenter
    from segment.predict import predict
    from segment.train import train

    res: dict = {"load_avg_start": os.getloadavg(), "threads": torch.get_num_threads()}
    res["matmul_fp32_peak_gflops"] = matmul_peak_gflops()
    case = a.data / "prostate158" / "001" / "t2.nii.gz"
    tmp = Path(tempfile.mkdtemp(prefix="segment_bench_"))
    common = [f"data.root={a.data}", f"output_dir={tmp}", "train.epochs=1", "train.tensorboard=false"]

    res["train"] = {}
    # The default (0 workers, prefetch thread), the plain main-thread loop, and one worker process.
    for key, nw, pf in (("num_workers_0", 0, True), ("num_workers_0_no_prefetch", 0, False), ("num_workers_1", 1, False)):
        cfg = load_config(SegmentConfig, CONFIGS["2d"], common + [f"train.iters_per_epoch={a.iters}",
                                                                  f"train.num_workers={nw}", f"train.prefetch={pf}",
                                                                  f"name=bench_{key}"])
        folder = train(cfg, "all", force=True, progress=False)
        row = json.loads((folder / "model.json").read_text())
        import csv

        h = list(csv.DictReader(open(folder / "history.csv")))[-1]
        res["train"][key] = {
            "steps": a.iters, "batch_size": cfg.train.batch_size, "patch": cfg.train.patch,
            "epoch_s": float(h["seconds"]), "steps_per_s": a.iters / float(h["seconds"]),
            "data_wait_share": float(h["data_wait_share"])}
        del row
    model_2d = tmp / "bench_num_workers_0" / "fold_all"
    cfg3 = load_config(SegmentConfig, CONFIGS["3d"], common + ["train.iters_per_epoch=2", "name=bench_3d"])
    model_3d = train(cfg3, "all", force=True, progress=False)

    res["predict"], res["network"] = {}, {}
    for dim, model in (("2d", model_2d), ("3d", model_3d)):
        times = []
        for i in range(2):
            t = time.perf_counter()
            predict(str(model), [str(case)], str(tmp / f"pred_{dim}"), force=True, progress=False)
            times.append(time.perf_counter() - t)
        seg = Segmenter.load(model)
        res["predict"][dim] = {"case": "prostate158/001", "first_s": times[0], "repeat_s": times[1],
                               "sw_batch_size": seg.predict_cfg.sw_batch_size, "patch": seg.patch}
        c_in = len(seg.channels) * (2 * seg.model_cfg.context + 1)
        shape = (seg.predict_cfg.sw_batch_size, c_in, *seg.patch)
        net = seg.net.eval()
        res["network"][dim] = {"configured_batch": network_gflops(net, shape)}
        if dim == "3d":
            res["network"][dim]["batch_1_eager"] = network_gflops(net, (1, c_in, *seg.patch))
            if a.compile:
                res["network"][dim]["compiled_freezing"] = compiled_gflops(
                    net, shape, res["network"][dim]["configured_batch"])

    # The machine is shared: take the better of the peak measured before and after the runs.
    res["matmul_fp32_peak_gflops"] = max(res["matmul_fp32_peak_gflops"], matmul_peak_gflops())
    for dim in res["network"]:
        for v in res["network"][dim].values():
            v["share_of_peak"] = v["gflops"] / res["matmul_fp32_peak_gflops"]

    self_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    child_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    res["peak_rss_mb"] = {"self": self_kb / 1024, "children": child_kb / 1024}
    res["load_avg_end"] = os.getloadavg()
    write_result(res, OUT)
    print(json.dumps(res, indent=2))
    print(f"wrote {OUT}")
    return res


if __name__ == "__main__":
    main()
