"""What the bench scripts share: where the repository, the data, the bundle and the results are, the
tools they run as a user would, timing helpers, argument helpers, and the one writer of result JSON,
which records the machine and the versions each figure came from.

Every script runs from the repository root as a module, e.g. `python -m bench.eval_bench --help`.
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
RESULTS = ROOT / "bench" / "results"
BUNDLE = ROOT / "ensemble" / "models" / "default"  # the bundled ensemble (its ensemble.yaml, onnx/)
ENSEMBLE = ROOT / ".venv" / "bin" / "ensemble"     # our CLI, run as a fresh process like a user
TAPS = ROOT / ".venv-taps" / "bin" / "taps"        # the peer TAPS (bash bench/setup_peers.sh)
# TAPS 1.1.2's WG DSC on three Prostate158 cases (the brief's figures; bench/peer_accuracy.py re-measures).
TAPS_WG_DSC = {"001": 0.871, "002": 0.903, "021": 0.874}
# Distributions whose versions a result records (the ones absent here are left out).
VERSIONED = ("prostate-zones", "numpy", "torch", "monai", "onnxruntime", "nibabel", "SimpleITK")


# ----------------------------------------------------------------------------- arguments

def parser(doc: str, **kwargs) -> argparse.ArgumentParser:
    """An argument parser whose description is the first line of the script's docstring; its usage
    line names the script as it is run (`python -m bench.<name>`)."""
    script = Path(sys.argv[0])
    if script.parent == ROOT / "bench":
        kwargs.setdefault("prog", f"python -m bench.{script.stem}")
    return argparse.ArgumentParser(description=doc.splitlines()[0], **kwargs)


def add_data(ap: argparse.ArgumentParser) -> None:
    """--data: the shared data folder (a Path)."""
    ap.add_argument("--data", type=Path, default=DATA, help="the data folder (default: ../shared/data)")


def data_missing(data: Path) -> bool:
    """True (after saying so) when the data folder is absent: a bench that needs it then skips."""
    if not Path(data).is_dir():
        print(f"skipped: no data folder at {data}")
        return True
    return False


def add_out(ap: argparse.ArgumentParser, default: Path | None = None) -> None:
    """--out: the result JSON (a Path); required when there is no default."""
    where = f" (default: {default.relative_to(ROOT)})" if default else " (bench/results/...)"
    ap.add_argument("--out", type=Path, default=default, required=default is None, help="JSON to write" + where)


def command(name: str, argv: list[str] | None = None, drop: tuple[str, ...] = ("--data",)) -> str:
    """`python -m bench.<name>` and the arguments `argv`, less the options in `drop` and their values
    (machine paths), as a result records how it was made."""
    keep, skip = [], False
    for a in argv or []:
        if not skip and a not in drop and not a.startswith(tuple(d + "=" for d in drop)):
            keep.append(a)
        skip = a in drop
    return " ".join([f"python -m bench.{name}", *keep])


# ----------------------------------------------------------------------------- results

def _cpu_model() -> str:
    import platform

    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        m = re.search(r"^model name\s*:\s*(.+)$", cpuinfo.read_text(), re.M)
        if m:
            return m.group(1).strip()
    return platform.processor() or platform.machine()


def _commit() -> str | None:
    import subprocess

    r = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=ROOT, capture_output=True, text=True)
    return (r.stdout.strip() or None) if r.returncode == 0 else None


def machine() -> dict:
    """The machine and software a result came from: CPU model and count, OS, Python, the versions
    of VERSIONED that are installed, the repository commit (`-dirty`: uncommitted changes) and the
    date it was measured (ISO, local)."""
    import datetime
    import os
    import platform
    from importlib import metadata

    versions = {}
    for dist in VERSIONED:
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    return {"cpu": _cpu_model(), "cpus": os.cpu_count(), "system": platform.platform(),
            "python": platform.python_version(), "versions": versions, "commit": _commit(),
            "date": datetime.date.today().isoformat()}


def write_result(result: dict, path: str | Path) -> Path:
    """Write a result JSON (atomically, replacing the last run's): paths made repository-relative
    (results name no machine's paths) and a "machine" entry (`machine()`) added."""
    from mricore.outputs import repo_relative, write_json

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_json({**repo_relative(result, ROOT), "machine": machine()}, path, force=True)


# ----------------------------------------------------------------------------- timing

def run_side_by_side(jobs: list[tuple[list[str], Path]], width: int = 2) -> list[int]:
    """Run each (command, log file) from the repository root, `width` at a time with one thread each (two
    trainings side by side share 2 cores better than one with two threads); their exit codes, in order."""
    import os
    import subprocess
    from concurrent.futures import ThreadPoolExecutor

    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}

    def run(job) -> int:
        cmd, log = job
        with open(log, "w") as f:
            return subprocess.run(cmd, cwd=ROOT, env=env, stdout=f, stderr=subprocess.STDOUT).returncode

    with ThreadPoolExecutor(width) as pool:
        return list(pool.map(run, jobs))


def best_seconds(fn, repeats: int = 5) -> float:
    """The fastest of `repeats` timed calls of `fn`, after one untimed warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def matmul_peak_gflops(n: int = 2048) -> float:
    """The fp32 matmul yardstick: GFLOP/s of an n x n torch.mm, best of 5 after a warm-up."""
    import torch

    a, b = torch.randn(n, n), torch.randn(n, n)
    return 2 * n**3 / best_seconds(lambda: torch.mm(a, b)) / 1e9


def parse_time(report: str) -> dict:
    """Wall, CPU and system seconds and peak RSS (GB) from GNU `/usr/bin/time -v`'s report (stderr)."""
    def field(name):
        return re.search(rf"{name}: (.+)", report).group(1).strip()
    h, m, s = ([0] + [float(x) for x in field(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\)").split(":")])[-3:]
    user, system = float(field("User time \\(seconds\\)")), float(field("System time \\(seconds\\)"))
    return {"wall_s": h * 3600 + m * 60 + s, "cpu_s": user + system, "system_s": system,
            "peak_rss_gb": int(field("Maximum resident set size \\(kbytes\\)")) / 1024 ** 2}
