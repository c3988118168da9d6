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


MAX_FUNCTION_LINES = 60
MAX_PARAMETERS = 8
# The public Python API takes its options as keyword-only arguments with defaults, as users of a library
# expect (``mmtl.evaluate(run, data=..., baselines=...)``); only its positional parameters are counted.
KEYWORD_API_FILES = ("mmtl/api.py",)


def oversized_functions(path: Path, relative: str) -> list[str]:
    """``file:line name (N lines / N parameters)`` for each function over the size limits."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        arguments = node.args
        positional = [a.arg for a in (*arguments.posonlyargs, *arguments.args) if a.arg not in ("self", "cls")]
        keyword = [] if relative.startswith(KEYWORD_API_FILES) else arguments.kwonlyargs
        parameters = len(positional) + len(keyword) + (arguments.vararg is not None) + (arguments.kwarg is not None)
        lines = node.end_lineno - node.lineno + 1
        if lines > MAX_FUNCTION_LINES or parameters > MAX_PARAMETERS:
            found.append(f"{relative}:{node.lineno} {node.name} ({lines} lines / {parameters} parameters)")
    return found


def test_functions_stay_short_and_take_few_parameters() -> None:
    assert [f for p in source_files() for f in oversized_functions(p, str(p.relative_to(REPO)))] == []


def test_the_size_check_sees_a_long_function_and_many_parameters(tmp_path: Path) -> None:
    body = "\n".join(f"    x{i} = {i}" for i in range(MAX_FUNCTION_LINES))
    source = tmp_path / "big.py"
    source.write_text(f"def long_one():\n{body}\n\n\ndef wide(a, b, c, d, e, f, g, h, *, i=0):\n    pass\n\n\n"
                      "def fine(self, a, b, c, d, e, f, g, h):\n    pass\n")
    assert [f.split(" ")[1] for f in oversized_functions(source, "big.py")] == ["long_one", "wide"]
