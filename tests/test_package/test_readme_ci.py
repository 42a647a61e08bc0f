"""The README's Quick start has exactly two commands, and CI runs the second one verbatim."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

BEGIN, END = "<!-- quickstart:begin -->", "<!-- quickstart:end -->"


def quickstart_commands(readme: str) -> list[str]:
    block = readme.split(BEGIN, 1)[1].split(END, 1)[0]
    return [ln for ln in block.splitlines() if ln.strip() and not ln.lstrip().startswith(("#", "```"))]


def test_quickstart_has_two_commands(repo_root: Path) -> None:
    readme = (repo_root / "README.md").read_text()
    assert readme.count(BEGIN) == 1 and readme.count(END) == 1
    demo, tests = quickstart_commands(readme)
    assert "cointeract demo" in demo
    assert "-c .ci/constraints.txt" in tests and "'.[dev]'" in tests and tests.endswith("pytest")


def test_ci_runs_the_readme_test_command(repo_root: Path) -> None:
    proc = subprocess.run(
        ["bash", ".ci/run", "--print-test-command"], cwd=repo_root, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    readme_test_command = quickstart_commands((repo_root / "README.md").read_text())[1]
    assert proc.stdout.strip() == readme_test_command


def test_ci_script_fails_loudly(repo_root: Path) -> None:
    script = (repo_root / ".ci" / "run").read_text()
    assert script.startswith("#!/usr/bin/env bash") and "set -euo pipefail" in script
    assert os.access(repo_root / ".ci" / "run", os.X_OK)
    assert re.search(r"status -eq 5", script), "pytest's 'no tests ran' (exit 5) must fail CI"


def test_constraints_pin_everything(repo_root: Path) -> None:
    lines = (repo_root / ".ci" / "constraints.txt").read_text().splitlines()
    pins = [ln for ln in lines if ln.strip() and not ln.startswith("#")]
    assert "torch==2.13.0" in pins
    bad = [ln for ln in pins if not re.fullmatch(r"[A-Za-z0-9_.\-]+==[A-Za-z0-9_.+\-]+", ln)]
    assert not bad, f"constraints must be exact pins: {bad}"
    names = {ln.split("==")[0].lower().replace("_", "-") for ln in pins}
    for needed in ("numpy", "safetensors", "einops", "av", "soxr", "pillow", "tqdm", "pytest", "ruff", "peft"):
        assert needed in names, f"{needed} is not pinned in .ci/constraints.txt"
    assert "comfyui-cointeract" not in names, "the package itself is installed from the checkout, not pinned"
