"""Outputs on real cases, before and after a refactor: run the commands with one checkout's `bin/`
and compare every NIfTI voxel by voxel with another run's.

    python -m bench.refactor_check run  OUT_DIR [--bin ../other-checkout/.venv/bin]   # writes OUT_DIR/<job>/
    python -m bench.refactor_check compare BEFORE_DIR AFTER_DIR                 # exit 1 on any difference

Jobs: `segment predict --probabilities` with one bundled 2D, 2.5D and DynUNet member, and `ensemble predict
--probabilities` with the bundled PyTorch members and the ONNX export, each on the Prostate158 T2W file and
on the ProstateX DICOM series. The bundle is this checkout's (ensemble/models/default).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np

from bench.common import BUNDLE, DATA, parser
from ensemble.config import load_ensemble_config

INPUTS = {"p158_001": DATA / "prostate158/001/t2.nii.gz", "dicom_px0000": DATA / "dicom/ProstateX-0000/4.000000-t2tsetra-00702"}
# Fold k of member family k (`ensemble pack` lists the bundle's members family by family, folds 0-2).
MEMBERS = tuple(Path(m).name for m in load_ensemble_config(BUNDLE / "ensemble.yaml").members[0::4][:3])


def jobs() -> dict[str, list[str]]:
    out = {}
    for case, path in INPUTS.items():
        for m in MEMBERS:
            out[f"segment_{m}_{case}"] = ["segment", "predict", "--model", str(BUNDLE / m), str(path), "--probabilities"]
        for name, cfg in (("torch", BUNDLE / "ensemble.yaml"), ("onnx", BUNDLE / "onnx/ensemble.yaml")):
            out[f"ensemble_{name}_{case}"] = ["ensemble", "predict", str(path), "--config", str(cfg), "--probabilities"]
    return out


def run(out_dir: Path, bin_dir: Path) -> None:
    for name, cmd in jobs().items():
        dest = out_dir / name
        r = subprocess.run([str(bin_dir / cmd[0])] + cmd[1:] + ["-o", str(dest), "--force"],
                           capture_output=True, text=True)
        print(name, "rc", r.returncode, (r.stderr.strip().splitlines() or [""])[-1][:160], flush=True)


def compare(before: Path, after: Path) -> int:
    bad = 0
    files = sorted(p.relative_to(before) for p in before.rglob("*.nii.gz"))
    for rel in files:
        a, b = nib.load(before / rel), nib.load(after / rel) if (after / rel).exists() else None
        if b is None:
            print("MISSING", rel)
            bad += 1
            continue
        same = (a.shape == b.shape and np.array_equal(a.affine, b.affine)
                and np.array_equal(np.asarray(a.dataobj), np.asarray(b.dataobj)))
        print("identical" if same else "DIFFERENT", rel)
        bad += not same
    print(f"{len(files) - bad}/{len(files)} files identical")
    return 1 if bad or not files else 0


def main(argv: list[str] | None = None) -> int:
    ap = parser(__doc__)
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("out", type=Path)
    r.add_argument("--bin", type=Path, default=Path(sys.executable).parent)
    c = sub.add_parser("compare")
    c.add_argument("before", type=Path)
    c.add_argument("after", type=Path)
    a = ap.parse_args(argv)
    return run(a.out, a.bin) if a.cmd == "run" else compare(a.before, a.after)


if __name__ == "__main__":
    sys.exit(main())
