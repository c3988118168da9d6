"""The layers of docs/architecture.md hold: the import-linter contract, no import cycles, size limits."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import grimp
import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("mmtl", "data_pipelines")
MAX_LINES = 450
MAX_LOOP_LINES = 300
# Function-level project imports allowed only where they keep `mmtl --help` and `import mmtl` from importing torch.
LAZY_IMPORT_FILES = ("mmtl/__init__.py", "mmtl/__main__.py", "mmtl/cli/")


def source_files() -> list[Path]:
    """Every Python file of the two packages."""
    return sorted(p for package in PACKAGES for p in (REPO / package).rglob("*.py"))


def test_import_linter_contract_is_kept() -> None:
    lint_imports = Path(sys.executable).parent / "lint-imports"
    # a missing linter fails: the README's install (the [dev] extra) brings it, and a skip would let CI pass unchecked
    assert lint_imports.exists(), "import-linter is not installed: pip install -e '.[dev]'"
    result = subprocess.run([str(lint_imports), "--no-cache"], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]


def strongly_connected(graph: grimp.ImportGraph) -> list[list[str]]:
    """Tarjan's components of the module graph with more than one module (each is an import cycle)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(module: str) -> None:
        index[module] = low[module] = len(index)
        stack.append(module)
        on_stack.add(module)
        for imported in graph.find_modules_directly_imported_by(module):
            if imported not in index:
                visit(imported)
                low[module] = min(low[module], low[imported])
            elif imported in on_stack:
                low[module] = min(low[module], index[imported])
        if low[module] == index[module]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == module:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for module in sorted(graph.modules):
        if module not in index:
            visit(module)
    return cycles


def test_no_import_cycles() -> None:
    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))
    graph = grimp.build_graph(*PACKAGES, cache_dir=None)
    assert strongly_connected(graph) == []


def test_the_cycle_finder_sees_a_cycle(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    package = tmp_path / "cyclic_pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("from cyclic_pkg import b\n")
    (package / "b.py").write_text("def f():\n    from cyclic_pkg import a\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert strongly_connected(grimp.build_graph("cyclic_pkg", cache_dir=None)) == [["cyclic_pkg.a", "cyclic_pkg.b"]]


def test_source_files_stay_small() -> None:
    too_long = {str(p.relative_to(REPO)): n for p in source_files() if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert too_long == {}
    assert len((REPO / "mmtl" / "training" / "loop.py").read_text().splitlines()) <= MAX_LOOP_LINES


def function_level_project_imports(path: Path) -> list[str]:
    """``file:line module`` for each import of mmtl/data_pipelines made inside a function."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        for inner in ast.walk(node):
            names = []
            if isinstance(inner, ast.Import):
                names = [alias.name for alias in inner.names]
            elif isinstance(inner, ast.ImportFrom) and inner.level == 0 and inner.module:
                names = [inner.module]
            found += [f"{path.relative_to(REPO)}:{inner.lineno} {n}" for n in names if n.split(".")[0] in PACKAGES]
    return found


def test_no_function_level_project_imports() -> None:
    checked = [p for p in source_files() if not str(p.relative_to(REPO)).startswith(LAZY_IMPORT_FILES)]
    assert sorted({i for p in checked for i in function_level_project_imports(p)}) == []
