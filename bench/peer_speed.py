"""Side by side, in one run, on one study (prostate158/001, 232x232x23): our bundled ensemble, the peer
TAPS (one SegResNet in ONNX Runtime, whole gland) and an nnU-Net v2 ensemble of the same size.

Each tool runs as a fresh process, as a user would (start-up, imports and model loading included),
under /usr/bin/time: wall seconds, CPU seconds (user + system) and peak RSS, median of --repeats runs.
- ours: `ensemble predict t2.nii.gz -o OUT` with the bundle as shipped (its ONNX export when ONNX
  Runtime is installed) and, for reference, with the PyTorch members (`--config` the PyTorch bundle);
- TAPS: `taps segment t2.nii.gz out.nii.gz --device cpu` from .venv-taps (bench/setup_peers.sh);
- nnU-Net v2: `nnUNetv2_predict ... -c 2d -f 0..8 --disable_tta -device cpu` from .venv-nnunet, with
  9 folds (our member count) of its own 2D network as its planner plans it for our data (fingerprint
  and plans made here from 3 Prostate158 studies; untrained weights: they cost the same time).
A peer that is not installed is reported as skipped with the reason. WG DSC against the expert gland
is given for our bundle and TAPS (nnU-Net's weights are untrained). Prints and writes
bench/results/peers.json. (Accuracy against TAPS on every study: bench/peer_accuracy.py.)

    bash bench/setup_peers.sh && python -m bench.peer_speed [--repeats 3]
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from bench.common import DATA, ENSEMBLE, RESULTS, ROOT, TAPS, command, parse_time, parser, write_result

CASE = "prostate158/001"
NNUNET = ROOT / ".venv-nnunet" / "bin"
N_FOLDS = 9


def timed(cmd: list[str], env: dict | None = None) -> dict:
    r = subprocess.run(["/usr/bin/time", "-v", *cmd], capture_output=True, text=True, env=env)
    if r.returncode != 0:
        raise RuntimeError(f"{cmd[0]} failed: {r.stderr.strip().splitlines()[-1] if r.stderr.strip() else r.returncode}")
    return parse_time(r.stderr)


def median_of(runs: list[dict]) -> dict:
    return {k: round(statistics.median(r[k] for r in runs), 3) for k in runs[0]} | {"runs": len(runs)}


def wg_dsc(pred_path: Path) -> float:
    from mricore.io import read_label
    from mricore.metrics import dice

    ref = read_label(DATA / CASE / "zones.nii.gz").array[0] > 0
    pred = np.asarray(read_label(pred_path).array[0]) > 0
    return round(float(dice(pred, ref)), 4)


def ours(tmp: Path, repeats: int, config: Path | None) -> dict:
    cmd = [str(ENSEMBLE), "predict", str(DATA / CASE / "t2.nii.gz"), "-o", str(tmp / "ours"), "--force"]
    cmd += ["--config", str(config)] if config else []
    runs = [timed(cmd) for _ in range(repeats)]
    return median_of(runs) | {"wg_dsc": wg_dsc(tmp / "ours" / "zones.nii.gz")}


def taps(tmp: Path, repeats: int) -> dict:
    if not TAPS.exists():
        return {"skipped": f"{TAPS} not found: run bash bench/setup_peers.sh"}
    out = tmp / "taps.nii.gz"
    runs = [timed([str(TAPS), "segment", str(DATA / CASE / "t2.nii.gz"), str(out), "--device", "cpu"]) for _ in range(repeats)]
    return median_of(runs) | {"wg_dsc": wg_dsc(out)}


NNUNET_MODEL = r'''
import json, sys, torch
from pathlib import Path
from nnunetv2.utilities.plans_handling.plans_handler import PlansManager
from nnunetv2.utilities.get_network_from_plans import get_network_from_plans
pre, out, n = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
plans = json.loads((pre / "nnUNetPlans.json").read_text())
ds = json.loads((pre / "dataset.json").read_text())
cm = PlansManager(plans).get_configuration("2d")
torch.manual_seed(0)
net = get_network_from_plans(cm.network_arch_class_name, cm.network_arch_init_kwargs, cm.network_arch_init_kwargs_req_import,
                             1, 3, allow_init=True, deep_supervision=False)
out.mkdir(parents=True)
for name in ("nnUNetPlans.json", "dataset.json", "dataset_fingerprint.json"):
    (out / name.replace("nnUNetPlans", "plans")).write_bytes((pre / name).read_bytes())
for f in range(n):
    (out / f"fold_{f}").mkdir()
    torch.save({"network_weights": net.state_dict(), "trainer_name": "nnUNetTrainer", "inference_allowed_mirroring_axes": None,
                "init_args": {"plans": plans, "configuration": "2d", "fold": f, "dataset_json": ds, "device": "cpu"}},
               out / f"fold_{f}" / "checkpoint_final.pth")
print(json.dumps({"patch_size": cm.patch_size, "spacing": cm.spacing, "features": cm.network_arch_init_kwargs.get("features_per_stage")}))
'''


def nnunet(tmp: Path, repeats: int) -> dict:
    if not (NNUNET / "nnUNetv2_predict").exists():
        return {"skipped": f"{NNUNET}/nnUNetv2_predict not found: run bash bench/setup_peers.sh"}
    raw, pre, res = tmp / "nnUNet_raw", tmp / "nnUNet_preprocessed", tmp / "nnUNet_results"
    env = {**os.environ, "nnUNet_raw": str(raw), "nnUNet_preprocessed": str(pre), "nnUNet_results": str(res),
           "nnUNet_n_proc_DA": "1", "OMP_NUM_THREADS": "2"}  # nnU-Net's own convention: paths in the environment
    ds = raw / "Dataset501_Prostate"
    for sub in ("imagesTr", "labelsTr"):
        (ds / sub).mkdir(parents=True)
    cases = ["001", "002", "021"]
    for c in cases:
        (ds / "imagesTr" / f"p{c}_0000.nii.gz").symlink_to(DATA / "prostate158" / c / "t2.nii.gz")
        (ds / "labelsTr" / f"p{c}.nii.gz").symlink_to(DATA / "prostate158" / c / "zones.nii.gz")
    (ds / "dataset.json").write_text(json.dumps({"channel_names": {"0": "T2"}, "labels": {"background": 0, "TZ": 1, "PZ": 2},
                                                 "numTraining": len(cases), "file_ending": ".nii.gz"}))
    for cmd in (["nnUNetv2_extract_fingerprint", "-d", "501", "-np", "1"], ["nnUNetv2_plan_experiment", "-d", "501"]):
        subprocess.run([str(NNUNET / cmd[0]), *cmd[1:]], check=True, capture_output=True, env=env)
    shutil.copy(ds / "dataset.json", pre / "Dataset501_Prostate" / "dataset.json")
    model = res / "Dataset501_Prostate" / "nnUNetTrainer__nnUNetPlans__2d"
    info = subprocess.run([str(NNUNET / "python"), "-c", NNUNET_MODEL, str(pre / "Dataset501_Prostate"), str(model), str(N_FOLDS)],
                          check=True, capture_output=True, text=True, env=env).stdout.strip().splitlines()[-1]
    inp = tmp / "nn_in"
    inp.mkdir()
    (inp / "p001_0000.nii.gz").symlink_to(DATA / CASE / "t2.nii.gz")
    cmd = [str(NNUNET / "nnUNetv2_predict"), "-i", str(inp), "-o", str(tmp / "nn_out"), "-d", "501", "-c", "2d",
           "-f", *map(str, range(N_FOLDS)), "--disable_tta", "-device", "cpu", "-npp", "1", "-nps", "1"]
    runs = []
    for _ in range(repeats):
        shutil.rmtree(tmp / "nn_out", ignore_errors=True)
        runs.append(timed(cmd, env))
    return median_of(runs) | {"plan": json.loads(info), "folds": N_FOLDS, "weights": "untrained (timing only)"}


def main(argv: list[str] | None = None) -> int:
    ap = parser(__doc__)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args(argv)
    from ensemble.config import BUNDLED, bundled_config

    tmp = Path(tempfile.mkdtemp(prefix="peers_"))
    out = {"command": command("peer_speed", argv), "case": CASE,
           "ours_default": {"config": str(bundled_config().relative_to(ROOT))} | ours(tmp, args.repeats, None)}
    print("ours (default):", out["ours_default"], flush=True)
    out["ours_pytorch"] = ours(tmp, args.repeats, BUNDLED)
    print("ours (PyTorch members):", out["ours_pytorch"], flush=True)
    out["taps"] = taps(tmp, args.repeats)
    print("TAPS:", out["taps"], flush=True)
    out["nnunet_v2_9_folds"] = nnunet(tmp, args.repeats)
    print("nnU-Net v2:", out["nnunet_v2_9_folds"], flush=True)
    ref = out["ours_default"]
    out["ratios_wall"] = {k: round(v["wall_s"] / ref["wall_s"], 2) for k, v in out.items()
                          if isinstance(v, dict) and "wall_s" in v and k != "ours_default"}
    print("wall time relative to ours:", out["ratios_wall"])
    write_result(out, RESULTS / "peers.json")
    shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
