"""The software behind a result: Python and package versions and this project's git commit."""

import importlib.metadata
import platform
import subprocess
from pathlib import Path
from typing import Any

PROJECT_DIR = Path(__file__).resolve().parents[1]
VERSIONED_PACKAGES = ("torch", "triton", "optuna")


def _git(*arguments: str) -> str | None:
    try:
        result = subprocess.run(["git", *arguments], cwd=PROJECT_DIR, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return result.stdout.strip() if result.returncode == 0 else None


def software_versions() -> dict[str, Any]:
    """Python, torch, triton and optuna versions and this project's git commit (None where unknown)."""
    versions: dict[str, Any] = {"python": platform.python_version()}
    for package in VERSIONED_PACKAGES:
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = None
    versions["git_commit"] = _git("rev-parse", "HEAD")
    status = _git("status", "--porcelain", "--untracked-files=no")
    versions["git_uncommitted_changes"] = None if status is None else bool(status)
    return versions
