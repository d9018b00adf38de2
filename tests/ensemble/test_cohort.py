"""DICOM-SEG round trip and cohort runs: --workers overlap gives the same outputs as one worker, and
torchrun over two "nodes" resumes a cohort of 4 cases, predicting each missing one exactly once, with
one merged summary (resuming in one process: tests/ensemble/test_resume.py)."""

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
    assert main(["predict", str(series), "--config", str(write_cfg(tmp_path, [members["t2_a"]])), "-o", str(out),
                 "--keep-identity"]) == 0  # the source UIDs, to match frames to source files (default: de-identified)
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


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_torchrun_two_nodes_resume_each_case_once(data_dir, members, tmp_path):
    """`torchrun --nnodes 2 --nproc_per_node 1`, c10d rendezvous on loopback (two "nodes" on one machine),
    resuming a cohort of 4 whose first case is complete: the other 3 are predicted once each over the two
    ranks, the first is not touched, and rank 0 writes one summary of all 4."""
    ds = tmp_path / "ds"
    cases = small_dataset(data_dir, ds, 4)
    out, cfg = tmp_path / "out", write_cfg(tmp_path, [members["t2_a"]])
    small_dataset(data_dir, tmp_path / "first", 1)
    assert main(["predict", str(tmp_path / "first"), "--config", str(cfg), "-o", str(out)]) == 0
    first = (out / cases[0] / "zones.json").stat().st_mtime_ns
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    node = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc_per_node", "1",
            "--rdzv_backend", "c10d", "--rdzv_endpoint", f"127.0.0.1:{_free_port()}", "--rdzv_id", "cohort",
            "-m", "ensemble.cli", "predict", str(ds), "--config", str(cfg), "-o", str(out), "--resume"]
    nodes = [subprocess.Popen(node, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
             for _ in range(2)]
    results = [(p.communicate(timeout=600), p.returncode) for p in nodes]
    for (_, err), code in results:
        assert code == 0, err[-3000:]
    with open(out / "summary.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [x["case_id"] for x in rows] == sorted(cases) and all(x["status"] == "ok" for x in rows)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["resumed_cases"] == 1
    for c in cases:
        assert (out / c / "zones.nii.gz").is_file()
    assert (out / cases[0] / "zones.json").stat().st_mtime_ns == first
    # each rank showed only its own progress; rank 0 (on either node) printed every case's line once
    lines = "".join(o for (o, _), _ in results).splitlines()
    for c in cases:
        assert sum(line.startswith(f"{c}: WG") for line in lines) == 1, lines
    bars = "".join(e for (_, e), _ in results)
    assert "rank 0 of 2" in bars and "rank 1 of 2" in bars


def _nan_case(data_dir, folder: Path) -> None:
    """A small real T2W with NaN voxels: the reader refuses it (a UserError inside the cohort)."""
    img = nib.load(str(data_dir / "prostate158/002/t2.nii.gz")).slicer[40:-40, 40:-40, :]
    a = np.asarray(img.dataobj, dtype=np.float32)
    a[0, 0, 0] = np.nan
    folder.mkdir(parents=True)
    nib.save(nib.Nifti1Image(a, img.affine), str(folder / "t2.nii.gz"))


def _rows(out: Path) -> dict:
    with open(out / "summary.csv", newline="") as f:
        return {r["case_id"]: r for r in csv.DictReader(f)}


def _bug_for(case_id: str, real):
    """`real`, except that it raises a bug (not a UserError) for `case_id`: a fault no input can cause
    any more (the stray file of issue 33 is now read without one), to prove any exception is caught."""
    def wrapped(*args, **kw):
        case = args[0].source if hasattr(args[0], "source") else args[2]  # infer_case(read), predict_case(.., case)
        if case.case_id == case_id:
            raise ZeroDivisionError("a bug in the writer\nits second line")
        return real(*args, **kw)
    return wrapped


def _check_failed(out: Path, rows: dict, failed: dict) -> None:
    """Each failed case: its row says why in one line, its log holds the traceback, no folder is left."""
    assert {c for c, r in rows.items() if r["status"] == "failed"} == set(failed), rows
    for case, words in failed.items():
        assert words in rows[case]["error"] and "\n" not in rows[case]["error"], rows[case]
        assert "Traceback" in (out / "logs" / f"{case}.log").read_text() and not (out / case).exists()


def test_ensemble_cohort_goes_on_past_any_failing_case(data_dir, members, tmp_path, capsys, monkeypatch):
    """A datalist of a good case, a DICOM series with a stray non-DICOM file, a case with NaN voxels and
    a case that meets a bug: the bad ones fail alone (a one-line reason in summary.csv, the traceback
    in OUT/logs/<case_id>.log), the others are written, exit code 2 with one error line."""
    import shutil

    import ensemble.predict

    small_dataset(data_dir, tmp_path / "ds", 2)
    series = tmp_path / "stray" / "t2"
    shutil.copytree(data_dir / DICOM_T2, series)
    (series / "zz_notes.bin").write_bytes(b"scanner export notes, not DICOM\n" * 20)
    _nan_case(data_dir, tmp_path / "ds" / "nan")
    datalist = tmp_path / "list.csv"
    datalist.write_text(f"patient_id,T2W\n001,{tmp_path / 'ds/001/t2.nii.gz'}\nstray,{series}\n"
                        f"nan,{tmp_path / 'ds/nan/t2.nii.gz'}\nbug,{tmp_path / 'ds/002/t2.nii.gz'}\n")
    monkeypatch.setattr(ensemble.predict, "infer_case", _bug_for("bug", ensemble.predict.infer_case))
    out = tmp_path / "out"
    code = main(["predict", str(datalist), "--config", str(write_cfg(tmp_path, [members["t2_a"]])), "-o", str(out)])
    err = [line for line in capsys.readouterr().err.splitlines() if "Traceback" in line or line.startswith("error:")]
    assert code == 2 and len(err) == 1 and "2 of 4 cases failed" in err[0], err
    rows = _rows(out)
    _check_failed(out, rows, {"nan": "voxels must be finite", "bug": "ZeroDivisionError: a bug in the writer "
                              "(traceback in logs/bug.log)"})
    assert (out / "001" / "zones.nii.gz").is_file() and (out / "stray" / "zones.nii.gz").is_file()
    assert not (out / "logs" / "001.log").exists()


def test_segment_cohort_goes_on_past_a_case_with_nan_voxels(data_dir, members, tmp_path, capsys, monkeypatch):
    """`segment predict DATASET` whose second case has NaN voxels and third meets a bug: the first is
    written, the others are listed as failed in the summary with their logs, exit code 2, one error line."""
    import segment.predict
    from segment.cli import main as segment_main

    ds = tmp_path / "ds"
    small_dataset(data_dir, ds, 1)
    _nan_case(data_dir, ds / "nan")
    __import__("shutil").copytree(ds / "001", ds / "zbug")
    monkeypatch.setattr(segment.predict, "predict_case", _bug_for("zbug", segment.predict.predict_case))
    out = tmp_path / "out"
    code = segment_main(["predict", "--model", str(members["t2_a"]), str(ds), "-o", str(out)])
    err = [line for line in capsys.readouterr().err.splitlines() if "Traceback" in line or line.startswith("error:")]
    assert code == 2 and len(err) == 1 and "2 of 3 cases failed" in err[0], err  # (and the progress bar)
    rows = _rows(out)
    _check_failed(out, rows, {"nan": "voxels must be finite", "zbug": "ZeroDivisionError"})
    assert rows["001"]["status"] == "ok" and (out / "001" / "zones.nii.gz").is_file()
    assert [c["case_id"] for c in json.loads((out / "summary.json").read_text())["cases"]] == ["001", "nan", "zbug"]
