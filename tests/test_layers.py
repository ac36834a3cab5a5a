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
