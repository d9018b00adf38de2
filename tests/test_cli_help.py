"""The console scripts answer `--help` fast (heavy imports live inside commands), and
`segment --help` does not import torch."""

import subprocess
import sys
import time
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent
SCRIPTS = ["segment", "ensemble", "localize"]


@pytest.mark.parametrize("name", SCRIPTS)
def test_help_answers_quickly(name):
    exe = BIN / name
    if not exe.exists():
        pytest.fail(f"{exe} missing: run `.venv/bin/pip install -e .` after adding {name}/cli.py")
    t = time.perf_counter()
    r = subprocess.run([str(exe), "--help"], capture_output=True, text=True, timeout=30)
    seconds = time.perf_counter() - t
    assert r.returncode == 0, r.stderr
    assert "usage:" in r.stdout and name in r.stdout
    # "Well under a second" on an idle machine; the margin absorbs a loaded 2-core CI box.
    assert seconds < 1.5, f"{name} --help took {seconds:.2f} s"


HEAVY = ("torch", "monai", "SimpleITK", "scipy", "nibabel")


@pytest.mark.parametrize("module", ["segment.cli", "ensemble.cli", "localize.cli"])
def test_help_imports_no_heavy_library(module):
    code = (f"import sys\nfrom {module} import main\n"
            "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
            f"print('LOADED=' + ','.join(m for m in {HEAVY!r} if m in sys.modules))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    if "ModuleNotFoundError" in r.stderr and module.split(".")[0] in r.stderr:
        pytest.fail(f"{module} does not exist yet")
    assert r.returncode == 0, r.stderr
    assert "usage:" in r.stdout
    loaded = r.stdout.rsplit("LOADED=", 1)[1].strip()
    assert loaded == "", f"{module} --help imported {loaded}"
