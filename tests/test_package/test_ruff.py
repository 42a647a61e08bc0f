"""ruff lint and format check over the whole repository (configured in pyproject.toml)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.parametrize("args", [["check"], ["format", "--check"]], ids=["lint", "format"])
def test_ruff(repo_root: Path, args: list[str]) -> None:
    cmd = [sys.executable, "-m", "ruff", *args, "--no-cache", "--output-format", "concise", "."]
    proc = subprocess.run(cmd, cwd=repo_root, capture_output=True, text=True, timeout=300)
    fix = "ruff check --fix ." if args == ["check"] else "ruff format ."
    assert proc.returncode == 0, f"`ruff {' '.join(args)}` failed (try `{fix}`):\n{proc.stdout}{proc.stderr}"
