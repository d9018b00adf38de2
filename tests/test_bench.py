"""The lab runs as modules of the `bench` package (`python -m bench.<name>` from the repository root):
every script imports and answers --help (the long measurements themselves are never run here)."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LIBRARIES = ("__init__", "common", "card_notes")  # imported by the scripts (card_notes: by bench.figures)
SCRIPTS = sorted(p.stem for p in (ROOT / "bench").glob("*.py") if p.stem not in LIBRARIES)

# One process for all of them (imports are the cost): each main(["--help"]) must exit 0 with a usage line.
PROBE = r'''
import contextlib, importlib, io, json, sys
out = {}
for name in sys.argv[1:]:
    buf = io.StringIO()
    try:
        with contextlib.redirect_stdout(buf):
            importlib.import_module(f"bench.{name}").main(["--help"])
        code = None
    except SystemExit as e:
        code = e.code
    out[name] = {"code": code, "usage": buf.getvalue().startswith("usage:")}
print(json.dumps(out))
'''


def test_every_bench_script_answers_help():
    assert len(SCRIPTS) >= 15
    r = subprocess.run([sys.executable, "-c", PROBE, *SCRIPTS], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    got = json.loads(r.stdout.strip().splitlines()[-1])
    bad = {n: g for n, g in got.items() if g != {"code": 0, "usage": True}}
    assert not bad, bad


def test_command_line_of_a_result_drops_machine_paths():
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_common", ROOT / "bench" / "common.py")
    common = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(common)
    command = common.command
    assert command("x", ["--data", "/d", "--cases", "a", "--out=o.json"]) == "python -m bench.x --cases a --out=o.json"
    assert command("x", ["--data=/d", "--out", "o"], drop=("--data", "--out")) == "python -m bench.x"


def test_side_by_side_runs_give_exit_codes_in_order_with_one_thread_each(tmp_path):
    from bench.common import run_side_by_side

    probe = "import os, sys; print(os.environ['OMP_NUM_THREADS'], os.getcwd()); sys.exit(int(sys.argv[1]))"
    jobs = [([sys.executable, "-c", probe, str(code)], tmp_path / f"{i}.log") for i, code in enumerate((0, 3, 0))]
    assert run_side_by_side(jobs) == [0, 3, 0]
    assert [(tmp_path / f"{i}.log").read_text().split() for i in range(3)] == [["1", str(ROOT)]] * 3
