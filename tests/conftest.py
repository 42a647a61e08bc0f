"""Shared pytest setup: the pack is imported as the installed `comfyui_cointeract`, never from the repo root.

Markers (declared in pyproject.toml): `slow` tests run by default (CI runs them too; deselect with
`-m "not slow"`); `gpu` tests are skipped when torch sees no CUDA device.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


def _drop_repo_root_from_sys_path() -> None:
    # `python -m pytest` puts the working directory first on sys.path; from the repo root that would make the
    # pack's folders importable as top-level `nodes`, `train`, `cli`, ... and hide import bugs that ComfyUI
    # (which imports the pack by file location) would hit. Tests see the pack only as `comfyui_cointeract`.
    sys.path[:] = [p for p in sys.path if Path(os.path.abspath(p or os.curdir)).resolve() != REPO_ROOT]


_drop_repo_root_from_sys_path()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    gpu_items = [item for item in items if item.get_closest_marker("gpu") is not None]
    if not gpu_items:
        return
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (torch.cuda.is_available() is False)")
    for item in gpu_items:
        item.add_marker(skip)


@pytest.fixture(scope="session")
def repo_root() -> Path:
    """The repository root (which is also the ComfyUI node pack folder)."""
    return REPO_ROOT


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    """tests/fixtures: reference runs and the 14B key list, copied from the project's shared/ folder."""
    return REPO_ROOT / "tests" / "fixtures"


@pytest.fixture
def generator():
    """A seeded CPU torch.Generator, so random tensors are the same on every run."""
    import torch

    return torch.Generator(device="cpu").manual_seed(0)


@pytest.fixture
def tiny_cfg():
    """The `tiny` DiT preset: the config of shared/fixtures/wan_s2v_tiny.safetensors."""
    from comfyui_cointeract.cointeract_core.model.config import PRESETS

    return PRESETS["tiny"]


def _single_thread() -> Iterator[None]:
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# Tiny models gain nothing from intra-op threads, and on a busy machine OpenMP's spinning threads made every op ~30x
# slower (measured: 2.4 s vs 0.09 s per tiny forward on 2 loaded cores); reference runs that must match 1-thread
# subprocesses bit for bit need it too. Use with `pytestmark = pytest.mark.usefixtures("one_thread")`.
one_thread = pytest.fixture(_single_thread, name="one_thread")
one_thread_per_module = pytest.fixture(_single_thread, name="one_thread_per_module", scope="module")
