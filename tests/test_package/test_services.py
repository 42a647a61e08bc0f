"""nodes/services.py: the plain-torch fallbacks outside ComfyUI, and delegation to ComfyUI inside it."""

from __future__ import annotations

import importlib.machinery
import sys
import types
from pathlib import Path

import pytest
import torch

from comfyui_cointeract.nodes import services


@pytest.fixture(autouse=True)
def clean_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(services, "_FALLBACK_FOLDERS", {})
    monkeypatch.delenv(services.MODELS_DIR_ENV, raising=False)


@pytest.fixture
def outside_comfy(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(services, "comfy_available", lambda: False)


def test_not_in_comfyui() -> None:
    if importlib.util.find_spec("folder_paths") is not None:
        pytest.skip("a ComfyUI is importable in this environment")
    assert services.comfy_available() is False


@pytest.mark.usefixtures("outside_comfy")
def test_progress_fallback() -> None:
    bar = services.progress_bar(10, desc="test")
    bar.update(3)
    bar.update_absolute(7, preview=None)
    assert bar.current == 7
    bar.update_absolute(12, total=12)
    assert (bar.current, bar.total) == (12, 12)
    bar.update(5)  # past the end: clamped, no error
    assert bar.current == 12


@pytest.mark.usefixtures("outside_comfy")
def test_progress_without_tqdm(monkeypatch: pytest.MonkeyPatch) -> None:
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "tqdm" else real_find_spec(n, *a))
    bar = services.progress_bar(4)
    bar.update(2)
    bar.update_absolute(9)
    assert bar.current == 4


@pytest.mark.usefixtures("outside_comfy")
def test_device_and_memory_fallbacks() -> None:
    services.check_interrupt()  # never raises outside ComfyUI
    services.soft_empty_cache()
    assert services.intermediate_device() == torch.device("cpu")
    assert services.unet_offload_device() == torch.device("cpu")
    expected = "cuda" if torch.cuda.is_available() else None
    assert services.get_torch_device().type in {expected, "mps", "cpu"} - {None}


@pytest.mark.usefixtures("outside_comfy")
def test_model_folders_from_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "cointeract" / "sub").mkdir(parents=True)
    for name in ("b.safetensors", "a.safetensors", "notes.txt", "sub/c.pt"):
        (tmp_path / "cointeract" / name).write_bytes(b"x")
    monkeypatch.setenv(services.MODELS_DIR_ENV, str(tmp_path))  # read at call time, not at import
    services.register_model_folder("cointeract", {".safetensors", "pt"})
    assert services.model_file_list("cointeract") == ["a.safetensors", "b.safetensors", "sub/c.pt"]
    assert services.model_file_path("cointeract", "sub/c.pt") == str(tmp_path / "cointeract" / "sub" / "c.pt")
    # An unregistered folder uses the usual model extensions.
    (tmp_path / "vae").mkdir()
    (tmp_path / "vae" / "wan_2.1_vae.safetensors").write_bytes(b"x")
    assert services.model_file_list("vae") == ["wan_2.1_vae.safetensors"]


@pytest.mark.usefixtures("outside_comfy")
def test_model_folders_in_memory(tmp_path: Path) -> None:
    (tmp_path / "m.safetensors").write_bytes(b"x")
    (tmp_path.parent / "outside.safetensors").write_bytes(b"x")
    services.register_model_folder("cointeract", paths=[str(tmp_path)])
    assert services.model_file_list("cointeract") == ["m.safetensors"]
    assert services.model_file_path("cointeract", "m.safetensors") == str(tmp_path / "m.safetensors")
    with pytest.raises(FileNotFoundError, match="'cointeract' with filename 'nope.safetensors' not found"):
        services.model_file_path("cointeract", "nope.safetensors")
    with pytest.raises(FileNotFoundError):  # no escaping the folder
        services.model_file_path("cointeract", "../outside.safetensors")
    with pytest.raises(FileNotFoundError, match=services.MODELS_DIR_ENV):
        services.model_file_path("unknown_folder", "x.safetensors")
    assert services.model_file_list("unknown_folder") == []


def test_optional_import() -> None:
    assert services.optional_import("json").__name__ == "json"
    with pytest.raises(services.MissingDependencyError) as err:
        services.optional_import("cointeract_missing_probe.sub", feature="CoInteractX")
    message = str(err.value)
    assert "CoInteractX needs" in message and "-m pip install" in message and "cointeract-missing-probe" in message
    assert isinstance(err.value, ImportError)
    assert services.requirement_for("PIL.Image") == "pillow"
    assert services.requirement_for("xformers.ops") == "xformers>=0.0.35"


def _fake_module(name: str, **attrs) -> types.ModuleType:
    module = types.ModuleType(name)
    module.__spec__ = importlib.machinery.ModuleSpec(name, None, is_package="." not in name)
    module.__dict__.update(attrs)
    return module


@pytest.fixture
def fake_comfy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> types.SimpleNamespace:
    """Stand-ins for comfy.utils, comfy.model_management and folder_paths, recording what they were asked."""
    calls: list[str] = []

    class ProgressBar:
        def __init__(self, total):
            self.total = total

    def interrupted():
        calls.append("interrupt")

    mm = _fake_module(
        "comfy.model_management",
        throw_exception_if_processing_interrupted=interrupted,
        get_torch_device=lambda: torch.device("meta"),
        intermediate_device=lambda: torch.device("meta"),
        unet_offload_device=lambda: torch.device("meta"),
        soft_empty_cache=lambda: calls.append("empty"),
    )
    folders = {"cointeract": (["/extra/cointeract"], set())}
    fp = _fake_module(
        "folder_paths",
        models_dir=str(tmp_path),
        folder_names_and_paths=folders,
        get_filename_list=lambda folder: ["from_comfy.safetensors"],
        get_full_path_or_raise=lambda folder, name: f"/comfy/{folder}/{name}",
    )
    comfy = _fake_module("comfy", model_management=mm)
    utils = _fake_module("comfy.utils", ProgressBar=ProgressBar)
    for name, module in {
        "comfy": comfy,
        "comfy.model_management": mm,
        "comfy.utils": utils,
        "folder_paths": fp,
    }.items():
        monkeypatch.setitem(sys.modules, name, module)
    return types.SimpleNamespace(calls=calls, folders=folders, ProgressBar=ProgressBar, models_dir=tmp_path)


def test_delegates_to_comfyui(fake_comfy: types.SimpleNamespace) -> None:
    assert services.comfy_available()
    assert isinstance(services.progress_bar(5), fake_comfy.ProgressBar)
    services.check_interrupt()
    services.soft_empty_cache()
    assert fake_comfy.calls == ["interrupt", "empty"]
    meta = torch.device("meta")
    assert services.get_torch_device() == services.intermediate_device() == services.unet_offload_device() == meta
    services.register_model_folder("cointeract", [".safetensors"])
    paths, exts = fake_comfy.folders["cointeract"]
    assert paths == [str(fake_comfy.models_dir / "cointeract"), "/extra/cointeract"]  # extra_model_paths kept
    assert exts == {".safetensors"}
    assert services.model_file_list("cointeract") == ["from_comfy.safetensors"]
    assert services.model_file_path("cointeract", "x.safetensors") == "/comfy/cointeract/x.safetensors"
