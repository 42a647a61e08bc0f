"""The `gpu` marker skips without CUDA (tests/conftest.py); `slow` tests are not deselected by default."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import torch


def test_gpu_tests_skip_without_cuda(repo_root: Path, tmp_path: Path) -> None:
    shutil.copy(repo_root / "tests" / "conftest.py", tmp_path / "conftest.py")
    (tmp_path / "test_probe.py").write_text(
        "import pytest\n\n@pytest.mark.gpu\ndef test_on_gpu():\n    pass\n\n"
        "@pytest.mark.slow\ndef test_slow():\n    pass\n"
    )
    (tmp_path / "pytest.ini").write_text("[pytest]\nmarkers =\n    gpu: gpu\n    slow: slow\n")
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", "--strict-markers", str(tmp_path)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    expected = "2 passed" if torch.cuda.is_available() else "1 passed, 1 skipped"
    assert expected in proc.stdout, proc.stdout + proc.stderr
    if not torch.cuda.is_available():
        assert "needs a CUDA GPU" in proc.stdout


def test_slow_runs_by_default(repo_root: Path) -> None:
    text = (repo_root / "pyproject.toml").read_text()
    assert "not slow" not in text.split("[tool.pytest.ini_options]", 1)[1].split("markers", 1)[0]
