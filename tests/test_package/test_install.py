"""The pack as the installed package `comfyui_cointeract`, and the packaging metadata that makes it so."""

from __future__ import annotations

import importlib
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

# Folders at the root that are not part of the import package.
NOT_PACKAGED = {"tests", "bench", "example_workflows", "build", "dist"}
TORCH_FAMILY = {"torch", "torchvision", "torchaudio", "xformers"}


def pyproject(repo_root: Path) -> dict:
    return tomllib.loads((repo_root / "pyproject.toml").read_text())


def requirement_name(req: str) -> str:
    return re.split(r"[\s<>=!~;\[]", req.strip(), maxsplit=1)[0].lower()


def test_installed_package_is_this_checkout(repo_root: Path) -> None:
    import comfyui_cointeract

    assert Path(comfyui_cointeract.__file__).resolve() == repo_root / "__init__.py", (
        "comfyui_cointeract is not this checkout: run `pip install -e '.[dev]'` in this repository"
    )
    for sub in ("cointeract_core", "cointeract_core.model.config", "nodes", "nodes.services", "train", "cli"):
        importlib.import_module(f"comfyui_cointeract.{sub}")


def test_library_imports_do_not_load_the_node_layer() -> None:
    code = (
        "import sys, comfyui_cointeract.cointeract_core, comfyui_cointeract.train, comfyui_cointeract.cli\n"
        "assert 'comfyui_cointeract.nodes' not in sys.modules, sorted(sys.modules)\n"
    )
    subprocess.run([sys.executable, "-I", "-c", code], check=True, timeout=120)


@pytest.mark.parametrize("name", ["nodes", "train", "utils", "cli", "cointeract_core", "services"])
def test_no_top_level_module_from_the_pack(repo_root: Path, name: str) -> None:
    spec = importlib.util.find_spec(name)
    if spec is not None and spec.origin is not None:
        assert repo_root not in Path(spec.origin).resolve().parents, f"the pack made a top-level `{name}` importable"


def test_every_subpackage_is_listed(repo_root: Path) -> None:
    listed = set(pyproject(repo_root)["tool"]["setuptools"]["packages"])
    found = set()
    for folder, dirs, files in os.walk(repo_root):
        rel = Path(folder).relative_to(repo_root)
        dirs[:] = [d for d in dirs if not d.startswith((".", "__")) and not (rel == Path() and d in NOT_PACKAGED)]
        if "__init__.py" in files:
            found.add(".".join(("comfyui_cointeract", *rel.parts)))
    assert found == listed, f"[tool.setuptools] packages must list exactly the packages: missing {found - listed}"


def test_requirements_match_dependencies_without_torch(repo_root: Path) -> None:
    deps = {requirement_name(d): d for d in pyproject(repo_root)["project"]["dependencies"]}
    lines = [ln.strip() for ln in (repo_root / "requirements.txt").read_text().splitlines()]
    reqs = {requirement_name(ln): ln for ln in lines if ln and not ln.startswith("#")}
    assert not TORCH_FAMILY & set(reqs), "requirements.txt must never install torch (ComfyUI brings its own)"
    assert reqs == {k: v for k, v in deps.items() if k not in TORCH_FAMILY}


def test_version_and_registry_metadata(repo_root: Path) -> None:
    from comfyui_cointeract import __version__

    meta = pyproject(repo_root)
    assert meta["project"]["version"] == __version__
    assert meta["project"]["scripts"]["cointeract"] == "comfyui_cointeract.cli:main"
    comfy = meta["tool"]["comfy"]
    assert comfy["PublisherId"] and comfy["DisplayName"] and "includes" in comfy
    assert not any(requirement_name(d) == "torchaudio" for d in meta["project"]["dependencies"])


@pytest.mark.slow
def test_wheel_holds_only_the_package(repo_root: Path, tmp_path: Path) -> None:
    # Build from a copy so that build/ and *.egg-info never land in the checkout.
    src = tmp_path / "src"
    ignore = shutil.ignore_patterns(".git", ".venv", "__pycache__", "*.egg-info", "build", "dist", ".*_cache")
    shutil.copytree(repo_root, src, ignore=ignore, symlinks=True)
    cmd = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", tmp_path, src]
    proc = subprocess.run(cmd, timeout=300, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    (wheel,) = tmp_path.glob("comfyui_cointeract-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names} - {"comfyui_cointeract"}
    assert len(tops) == 1 and tops.pop().endswith(".dist-info"), names
    assert "comfyui_cointeract/__init__.py" in names and "comfyui_cointeract/cli.py" in names
    assert "comfyui_cointeract/cointeract_core/__init__.py" in names
    leaked = [n for n in names if n.split("/")[1:2] and n.split("/")[1] in {"tests", "bench", ".venv", ".ci"}]
    assert not leaked, leaked
