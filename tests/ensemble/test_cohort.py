"""DICOM-SEG round trip and cohort runs: --workers overlap gives the same outputs as one worker, and
torchrun with 2 processes predicts each of 4 cases exactly once with one merged summary."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import yaml

from ensemble.cli import main

ROOT = Path(__file__).resolve().parents[2]
DICOM_T2 = "dicom/ProstateX-0000/4.000000-t2tsetra-00702"


def write_cfg(tmp_path, members):
    path = tmp_path / "ens.yaml"
    path.write_text(yaml.safe_dump({"members": [str(m) for m in members]}))
    return path


def test_dicom_seg_matches_zones_voxel_for_voxel(data_dir, members, tmp_path):
    """seg.dcm read back with highdicom, frame by source SOP instance, equals zones.nii.gz on the grid."""
    import highdicom as hd
    import pydicom

    series = data_dir / DICOM_T2
    out = tmp_path / "out"
    assert main(["predict", str(series), "--config", str(write_cfg(tmp_path, [members["t2_a"]])), "-o", str(out)]) == 0
    zones = np.asarray(nib.load(str(out / "zones.nii.gz")).dataobj)
    assert (zones > 0).any()
    seg = hd.seg.segread(str(out / "seg.dcm"))
    assert [d.SegmentedPropertyTypeCodeSequence[0].CodeValue for d in seg.SegmentSequence] == ["399384005", "279706003"]
    from ensemble.dicomseg import source_datasets
    from mricore.dicom import read_dicom_series

    vol = read_dicom_series(series)
    sources = source_datasets(series, vol.affine, vol.shape[2])
    uids = [ds.SOPInstanceUID for ds in sources]
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == sources[0].SeriesInstanceUID
    frames = seg.get_pixels_by_source_instance(source_sop_instance_uids=uids, combine_segments=True)
    for k, ds in enumerate(sources):
        assert np.array_equal(frames[k], zones[:, :, k].T), f"slice {k}"
        # the frame's geometry is the source slice's
        assert isinstance(ds, pydicom.Dataset)


def small_dataset(data_dir, root: Path, n: int) -> list[str]:
    cases = [("prostate158", "001"), ("prostate158", "002"), ("prostate158", "021"), ("prostatex", "ProstateX-0002")][:n]
    for ds, c in cases:
        (root / c).mkdir(parents=True)
        nib.save(nib.load(str(data_dir / ds / c / "t2.nii.gz")).slicer[40:-40, 40:-40, :], str(root / c / "t2.nii.gz"))
    return [c for _, c in cases]


def test_workers_overlap_gives_the_same_outputs(data_dir, members, tmp_path):
    ds = tmp_path / "ds"
    cases = small_dataset(data_dir, ds, 3)
    cfg = write_cfg(tmp_path, [members["t2_a"]])
    assert main(["predict", str(ds), "--config", str(cfg), "-o", str(tmp_path / "w1")]) == 0
    assert main(["predict", str(ds), "--config", str(cfg), "-o", str(tmp_path / "w2"), "--workers", "2"]) == 0
    for c in cases:
        a = np.asarray(nib.load(str(tmp_path / "w1" / c / "zones.nii.gz")).dataobj)
        b = np.asarray(nib.load(str(tmp_path / "w2" / c / "zones.nii.gz")).dataobj)
        assert np.array_equal(a, b), c
    summary = json.loads((tmp_path / "w2" / "summary.json").read_text())
    assert [r["case_id"] for r in summary["cases"]] == cases and summary["workers"] == 2


def test_torchrun_two_processes_each_case_once(data_dir, members, tmp_path):
    ds = tmp_path / "ds"
    cases = small_dataset(data_dir, ds, 4)
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                        "-m", "ensemble.cli", "predict", str(ds), "--config", str(write_cfg(tmp_path, [members["t2_a"]])),
                        "-o", str(out)], capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    with open(out / "summary.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert sorted(x["case_id"] for x in rows) == sorted(cases) and all(x["status"] == "ok" for x in rows)
    assert json.loads((out / "summary.json").read_text())["world_size"] == 2
    for c in cases:
        assert (out / c / "zones.nii.gz").is_file()
    # each rank printed only its own progress; rank 0 printed every case's line once
    lines = r.stdout.splitlines()
    for c in cases:
        assert sum(line.startswith(f"{c}: WG") for line in lines) == 1, r.stdout
