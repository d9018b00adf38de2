"""`ensemble predict DATASET -o OUT --resume`: a cohort killed halfway (SIGTERM, then SIGKILL) loses no
finished case and redoes none; a failed case is retried; a resume that is not the same run is refused.
(The same under torchrun across two "nodes": tests/ensemble/test_cohort.py.)"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import pytest
from test_cohort import ROOT, _nan_case, small_dataset, write_cfg

from ensemble.cli import main


def _dataset(data_dir, root: Path, n: int) -> list[str]:
    """n small real T2W cases: the 4 of small_dataset, then copies of them under new ids."""
    cases = small_dataset(data_dir, root, min(n, 4))
    for k in range(n - len(cases)):
        shutil.copytree(root / cases[k % 4], root / f"{cases[k % 4]}-copy{k}")
        cases.append(f"{cases[k % 4]}-copy{k}")
    return sorted(cases)


def _complete(out: Path) -> dict[str, tuple[int, str]]:
    """case -> (mtime in ns, text) of each zones.json in OUT: the complete cases and what they hold."""
    return {p.parent.name: (p.stat().st_mtime_ns, p.read_text()) for p in out.glob("*/zones.json")}


def _kill_after(cmd: list[str], out: Path, k: int, sig: int) -> dict:
    """Run `cmd` (a cohort into `out`) as a process, send it `sig` once at least k cases are complete,
    wait for it to end; the complete cases then."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while len(_complete(out)) < k and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode != 0, err[-2000:]  # killed, not finished
    return _complete(out)


def test_a_killed_cohort_resumes_without_losing_or_redoing_a_case(data_dir, members, tmp_path, capsys):
    """SIGTERM after 1 case, then a --resume killed by SIGKILL after 1 more, then a --resume to the end:
    every case finished before a kill keeps its zones.json untouched (same mtime, same timings), the
    rest are done, the summary lists all, and nothing half-written is left."""
    cases = _dataset(data_dir, tmp_path / "ds", 6)
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "ensemble.cli", "predict", str(tmp_path / "ds"), "-o", str(out),
           "--config", str(write_cfg(tmp_path, [members["t2_a"]]))]
    first = _kill_after(cmd, out, 1, signal.SIGTERM)
    assert 1 <= len(first) < len(cases) and not (out / "summary.json").exists(), first.keys()
    second = _kill_after([*cmd, "--resume"], out, len(first) + 1, signal.SIGKILL)
    assert len(first) < len(second) < len(cases) and second.items() >= first.items()
    todo = next(c for c in cases if c not in second)
    (out / f".{todo}.staging-0123456789ab").mkdir()  # as a SIGKILL while writing a case leaves it
    assert main(["predict", *cmd[4:], "--resume"]) == 0
    final = _complete(out)
    assert sorted(final) == cases and final.items() >= second.items()  # none redone
    summary = json.loads((out / "summary.json").read_text())
    assert [r["case_id"] for r in summary["cases"]] == cases and {r["status"] for r in summary["cases"]} == {"ok"}
    assert summary["resumed_cases"] == len(second)
    assert [p.name for p in out.iterdir() if p.name.startswith(".")] == []  # SIGKILL's staging cleared
    # the bar starts at the cases complete before: its rate and ETA count only the cases run now
    assert f"{len(second)}/{len(cases)} " in capsys.readouterr().err


def test_a_resume_retries_a_failed_case(data_dir, members, tmp_path, capsys):
    """A case that failed (NaN voxels) and was then fixed is run again by --resume; the good case is not;
    the log of the failure goes."""
    ds, out = tmp_path / "ds", tmp_path / "out"
    small_dataset(data_dir, ds, 1)
    _nan_case(data_dir, ds / "nan")
    cmd = ["predict", str(ds), "-o", str(out), "--config", str(write_cfg(tmp_path, [members["t2_a"]]))]
    assert main(cmd) == 2 and (out / "logs" / "nan.log").is_file()
    assert "run again with --resume" in capsys.readouterr().err
    before = _complete(out)
    shutil.copy(ds / "001" / "t2.nii.gz", ds / "nan" / "t2.nii.gz")  # the input fixed
    assert main([*cmd, "--resume"]) == 0
    assert _complete(out)["001"] == before["001"] and "nan" in _complete(out)
    assert not (out / "logs" / "nan.log").exists()
    rows = json.loads((out / "summary.json").read_text())["cases"]
    assert [(r["case_id"], r["status"]) for r in rows] == [("001", "ok"), ("nan", "ok")]


@pytest.fixture(scope="module")
def finished(data_dir, members, tmp_path_factory):
    """(command, OUT) of a finished 2-case cohort, to resume with other options."""
    tmp = tmp_path_factory.mktemp("finished")
    small_dataset(data_dir, tmp / "ds", 2)
    cmd = ["predict", str(tmp / "ds"), "-o", str(tmp / "out"), "--config", str(write_cfg(tmp, [members["t2_a"]]))]
    assert main(cmd) == 0
    return cmd, tmp / "out"


REFUSED = [
    # another config: the resolved ensemble.yaml saved in each case differs, named by its key
    (["--set", "method=vote"], "'method' 'mean' there, 'vote' now"),
    (["--probabilities"], "'probabilities' False there, True now"),
    # another output option, not in the config: report.html would be missing from the finished cases
    (["--report"], "'report.html' 'absent' there, 'written' now"),
    # both: --force recomputes every case, --resume keeps the finished ones
    (["--force"], "--resume: cannot be combined with --force"),
]


@pytest.mark.parametrize("extra,words", REFUSED)
def test_a_resume_of_another_run_is_refused(finished, capsys, extra, words):
    cmd, out = finished
    before = _complete(out)
    assert main([*cmd, "--resume", *extra]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and words in err[0] and "--force" in err[0], err
    assert _complete(out) == before


def test_a_resume_of_the_same_run_redoes_nothing(finished, capsys):
    cmd, out = finished
    before = _complete(out)
    assert main([*cmd, "--resume"]) == 0
    assert _complete(out) == before and json.loads((out / "summary.json").read_text())["resumed_cases"] == 2


def test_a_resume_refuses_a_folder_that_is_not_a_complete_case(finished, tmp_path, capsys):
    """A case folder without zones.json (someone else's files) is not taken for a finished case."""
    cmd, out = finished
    shutil.copytree(out, tmp_path / "out")
    (tmp_path / "out" / "002" / "zones.json").unlink()
    assert main([*cmd[:3], str(tmp_path / "out"), *cmd[4:], "--resume"]) == 2
    assert "not a complete case folder" in capsys.readouterr().err


def test_resume_is_for_a_batch(data_dir, members, tmp_path, capsys):
    nib.save(nib.load(str(data_dir / "prostate158/001/t2.nii.gz")), str(tmp_path / "t2.nii.gz"))
    assert main(["predict", str(tmp_path / "t2.nii.gz"), "-o", str(tmp_path / "out"), "--resume",
                 "--config", str(write_cfg(tmp_path, [members["t2_a"]]))]) == 2
    assert "--resume: applies to a batch" in capsys.readouterr().err
