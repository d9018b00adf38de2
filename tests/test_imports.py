"""Import direction, checked on the AST of every module: mricore <- segment <- ensemble; mricore <- localize.

mricore imports none of segment/ensemble/localize; segment imports no ensemble/localize; localize
imports no segment/ensemble (it reads the zone mask FILE). Relative imports stay in their package.
"""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FORBIDDEN = {
    "mricore": {"segment", "ensemble", "localize"},
    "segment": {"ensemble", "localize"},
    "localize": {"segment", "ensemble"},
    "ensemble": {"localize"},
}


def imported_packages(path: Path) -> set[str]:
    """Top-level package names imported anywhere in a module (inside functions too)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.add(node.module.split(".")[0])
    return out


def modules(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_import_direction(package):
    bad = {str(p.relative_to(ROOT)): sorted(imported_packages(p) & FORBIDDEN[package])
           for p in modules(package)}
    bad = {k: v for k, v in bad.items() if v}
    assert not bad, f"{package} must not import {sorted(FORBIDDEN[package])}: {bad}"


def test_packages_have_modules():
    assert modules("mricore") and modules("segment")


def test_checker_sees_imports_inside_functions(tmp_path):
    """The walk must catch the lazy imports CLIs use, or the test could never fail."""
    p = tmp_path / "m.py"
    p.write_text("import os\n\ndef f():\n    from segment.train import train\n    import ensemble.cli\n")
    assert imported_packages(p) == {"os", "segment", "ensemble"}
