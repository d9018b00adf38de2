"""The shape the next engineer can see whole (issue 36's "done when"), checked on the source:

- no library module over 300 lines and no function over 60;
- no import cycle between the modules of a package (segment, ensemble, localize, mricore);
- the lab apart: no `sys.path` edit in bench/, which runs as `python -m bench.<name>`.

Each rule has a case built to break it, so the checker can fail.
"""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("mricore", "segment", "ensemble", "localize")
MAX_MODULE_LINES = 300
MAX_FUNCTION_LINES = 60


def library_modules() -> list[Path]:
    return sorted(p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py"))


def long_functions(path: Path) -> list[str]:
    """`name (lines)` of every function or method longer than MAX_FUNCTION_LINES, decorators excluded."""
    tree = ast.parse(path.read_text(), str(path))
    return [f"{n.name} ({n.end_lineno - n.lineno + 1})" for n in ast.walk(tree)
            if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))
            and n.end_lineno - n.lineno + 1 > MAX_FUNCTION_LINES]


def module_imports(path: Path, package: str) -> set[str]:
    """Modules of `package` that `path` imports (absolute or relative, inside functions too)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom):
            base = package if node.level == 1 else (node.module or "").split(".")[0]
            if base != package:
                continue
            sub = (node.module or "") if node.level == 1 else ".".join((node.module or "").split(".")[1:])
            if sub:
                out.add(sub.split(".")[0])
            else:  # from . import a, b  /  from package import a
                out |= {a.name for a in node.names}
        elif isinstance(node, ast.Import):
            out |= {a.name.split(".")[1] for a in node.names
                    if a.name.startswith(package + ".") and a.name.count(".") >= 1}
    return out


def find_cycle(graph: dict[str, set[str]]) -> list[str]:
    """One import cycle in `graph` (module -> modules it imports), or [] if there is none."""
    state, stack = {}, []

    def visit(m):
        state[m] = "open"
        stack.append(m)
        for n in sorted(graph.get(m, ())):
            if state.get(n) == "open":
                return stack[stack.index(n):] + [n]
            if n not in state and (c := visit(n)):
                return c
        state[m] = "done"
        stack.pop()
        return []

    for m in sorted(graph):
        if m not in state and (c := visit(m)):
            return c
    return []


def test_modules_are_small():
    big = {str(p.relative_to(ROOT)): n for p in library_modules()
           if (n := len(p.read_text().splitlines())) > MAX_MODULE_LINES}
    assert not big, f"modules over {MAX_MODULE_LINES} lines: {big}"


def test_functions_fit_a_screen():
    long = {str(p.relative_to(ROOT)): f for p in library_modules() if (f := long_functions(p))}
    assert not long, f"functions over {MAX_FUNCTION_LINES} lines: {long}"


@pytest.mark.parametrize("package", PACKAGES)
def test_no_import_cycle(package):
    graph = {p.stem: module_imports(p, package) - {p.stem} for p in (ROOT / package).glob("*.py")}
    assert not find_cycle(graph), f"{package} import cycle: {' -> '.join(find_cycle(graph))}"


def test_bench_does_not_edit_sys_path():
    bad = [str(p.relative_to(ROOT)) for p in sorted((ROOT / "bench").rglob("*.py"))
           if "sys.path" in p.read_text()]
    assert not bad, f"bench scripts run as `python -m bench.<name>`; these edit sys.path: {bad}"


# The checkers themselves, each shown a case that breaks its rule.
def test_checkers_can_fail(tmp_path):
    p = tmp_path / "m.py"
    p.write_text("def f():\n" + "    x = 1\n" * MAX_FUNCTION_LINES + "\ndef g():\n    return 1\n")
    assert long_functions(p) == [f"f ({MAX_FUNCTION_LINES + 1})"]
    a, b = tmp_path / "a.py", tmp_path / "b.py"
    a.write_text("from .b import x\n")
    b.write_text("def y():\n    from pkg.a import z\n")
    assert module_imports(a, "pkg") == {"b"} and module_imports(b, "pkg") == {"a"}
    assert find_cycle({"a": {"b"}, "b": {"a"}}) == ["a", "b", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) == []
