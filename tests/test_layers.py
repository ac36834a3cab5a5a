"""The layers of ARCHITECTURE.md, enforced: import-linter's contracts (pyproject.toml, [tool.importlinter])."""

import subprocess
import sys
from pathlib import Path

PROJECT_DIR = Path(__file__).resolve().parents[1]


def test_every_import_contract_is_kept():
    # In a subprocess: import-linter builds its graph from the files, in the project's root.
    command = [sys.executable, "-c", "import sys, importlinter.cli as c; sys.exit(c.lint_imports(no_cache=True))"]
    result = subprocess.run(command, cwd=PROJECT_DIR, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


def test_no_module_imports_one_that_imports_it_back():
    """No import circle among the project's modules, lazy imports inside functions included (grimp, the graph
    import-linter reads, sees those too)."""
    import grimp

    graph = grimp.build_graph("data", "model", "kernels", "training", "hpo", cache_dir=None)
    state: dict[str, str] = {}  # module -> "open" while on the search path, "done" after
    circles = []

    def visit(module: str, path: list[str]) -> None:
        state[module] = "open"
        for imported in sorted(graph.find_modules_directly_imported_by(module)):
            if state.get(imported) == "open":
                circles.append(" -> ".join([*path[path.index(imported) :], module, imported]))
            elif imported not in state:
                visit(imported, [*path, module])
        state[module] = "done"

    for module in sorted(graph.modules):
        if module not in state:
            visit(module, [])
    assert circles == []
