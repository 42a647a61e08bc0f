"""The one adapter to ComfyUI's services, with plain-torch fallbacks so the nodes also run in tests and the CLI.

Everything the pack needs from ``comfy.utils``, ``comfy.model_management`` and ``folder_paths`` goes through
this module. ComfyUI is imported lazily and only when it is present; without it, progress goes to tqdm,
interrupts are never raised, devices come from torch, and model folders are looked up under the folder named
by the ``COINTERACT_MODELS_DIR`` environment variable (read at call time) or in paths registered in memory.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import os
import sys
from collections.abc import Iterable
from types import ModuleType
from typing import Any, Protocol

import torch

log = logging.getLogger(__name__)

__all__ = [
    "MODELS_DIR_ENV",
    "MODEL_EXTENSIONS",
    "MissingDependencyError",
    "check_interrupt",
    "comfy_available",
    "get_torch_device",
    "intermediate_device",
    "model_file_list",
    "model_file_path",
    "optional_import",
    "pip_install_command",
    "progress_bar",
    "register_model_folder",
    "requirement_for",
    "soft_empty_cache",
    "unet_offload_device",
]

MODELS_DIR_ENV = "COINTERACT_MODELS_DIR"
# ComfyUI's folder_paths.supported_pt_extensions, minus pickles we never load.
MODEL_EXTENSIONS = frozenset({".safetensors", ".sft", ".ckpt", ".pt", ".pth", ".bin"})

# Without ComfyUI: folder name -> (search paths, extensions). Filled by register_model_folder().
_FALLBACK_FOLDERS: dict[str, tuple[list[str], frozenset[str]]] = {}


# ---------------------------------------------------------------------------------------------------------------
# Optional dependencies


class MissingDependencyError(ImportError):
    """An optional Python package is missing; the message names the pip command that installs it."""


# Import name -> pip requirement, where they differ or where a minimum version matters.
_REQUIREMENTS = {
    "PIL": "pillow",
    "av": "av",
    "soxr": "soxr",
    "yaml": "pyyaml",
    "cv2": "opencv-python",
    "xformers": "xformers>=0.0.35",
    "flash_attn": "flash-attn",
    "huggingface_hub": "huggingface-hub",
}


def requirement_for(module: str) -> str:
    """The pip requirement that provides importable `module` (e.g. "PIL.Image" -> "pillow")."""
    top = module.split(".")[0]
    return _REQUIREMENTS.get(top, top.replace("_", "-"))


def pip_install_command(requirement: str) -> str:
    """The pip command that installs `requirement` into the running Python (ComfyUI's, when inside ComfyUI)."""
    return f'"{sys.executable}" -m pip install "{requirement}"'


def optional_import(module: str, requirement: str | None = None, feature: str = "this node") -> ModuleType:
    """Import `module` or raise MissingDependencyError naming the pip command (call it where the module is used)."""
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as err:
        if err.name is None or module.split(".")[0] != err.name.split(".")[0]:
            raise  # the package is there but something inside it is broken: show the real error
        req = requirement or requirement_for(module)
        raise MissingDependencyError(
            f"{feature} needs the Python package '{req}', which is not installed. "
            f"Install it with: {pip_install_command(req)}"
        ) from err


# ---------------------------------------------------------------------------------------------------------------
# ComfyUI detection


def comfy_available() -> bool:
    """True when running inside ComfyUI (its `comfy` package and `folder_paths` module are importable)."""
    try:
        return all(
            importlib.util.find_spec(name) is not None
            for name in ("folder_paths", "comfy", "comfy.model_management", "comfy.utils")
        )
    except (ImportError, ValueError):  # a same-named but unrelated `comfy` package, or a half-set-up module
        return False


def _comfy(name: str) -> ModuleType | None:
    """The ComfyUI module `name` (e.g. "comfy.model_management"), or None outside ComfyUI."""
    return importlib.import_module(name) if comfy_available() else None


# ---------------------------------------------------------------------------------------------------------------
# Progress and interruption


class ProgressBar(Protocol):
    def update(self, value: int) -> None: ...

    def update_absolute(self, value: int, total: int | None = None, preview: Any = None) -> None: ...


class _NoProgress:
    """comfy.utils.ProgressBar's interface, doing nothing (tqdm missing)."""

    def __init__(self, total: int):
        self.total = total
        self.current = 0

    def update(self, value: int) -> None:
        self.current = min(self.current + value, self.total)

    def update_absolute(self, value: int, total: int | None = None, preview: Any = None) -> None:
        self.total = self.total if total is None else total
        self.current = min(value, self.total)


class _TqdmProgress:
    """comfy.utils.ProgressBar's interface over tqdm (closes itself when it reaches the total)."""

    def __init__(self, total: int, desc: str | None = None):
        from tqdm.auto import tqdm

        self.total = total
        self.current = 0
        self._bar = tqdm(total=total, desc=desc, leave=False, disable=None)  # disable=None: off when not a tty

    def update(self, value: int) -> None:
        self.update_absolute(self.current + value)

    def update_absolute(self, value: int, total: int | None = None, preview: Any = None) -> None:
        if total is not None and total != self.total:
            self.total = self._bar.total = total
        value = min(value, self.total)
        self._bar.update(value - self.current)
        self.current = value
        if self.current >= self.total:
            self._bar.close()


def progress_bar(total: int, desc: str | None = None) -> ProgressBar:
    """ComfyUI's ProgressBar (UI progress + previews) inside ComfyUI, a tqdm bar outside (or nothing)."""
    comfy_utils = _comfy("comfy.utils")
    if comfy_utils is not None:
        return comfy_utils.ProgressBar(total)
    if importlib.util.find_spec("tqdm") is None:
        return _NoProgress(total)
    return _TqdmProgress(total, desc)


def check_interrupt() -> None:
    """Raise ComfyUI's InterruptProcessingException if the user pressed cancel; a no-op outside ComfyUI."""
    mm = _comfy("comfy.model_management")
    if mm is not None:
        mm.throw_exception_if_processing_interrupted()


# ---------------------------------------------------------------------------------------------------------------
# Devices and memory


def _default_device() -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def get_torch_device() -> torch.device:
    """Where the model computes: ComfyUI's choice (honours --cpu etc.), else CUDA / MPS / CPU."""
    mm = _comfy("comfy.model_management")
    return mm.get_torch_device() if mm is not None else _default_device()


def intermediate_device() -> torch.device:
    """Where node outputs (IMAGE, LATENT, AUDIO) live between nodes: ComfyUI's choice, else the CPU."""
    mm = _comfy("comfy.model_management")
    return mm.intermediate_device() if mm is not None else torch.device("cpu")


def unet_offload_device() -> torch.device:
    """Where an idle diffusion model is parked: ComfyUI's choice, else the CPU."""
    mm = _comfy("comfy.model_management")
    return mm.unet_offload_device() if mm is not None else torch.device("cpu")


def soft_empty_cache() -> None:
    """Return cached accelerator memory to the driver (ComfyUI's soft_empty_cache, else torch's)."""
    mm = _comfy("comfy.model_management")
    if mm is not None:
        mm.soft_empty_cache()
    elif torch.cuda.is_available():
        torch.cuda.empty_cache()


# ---------------------------------------------------------------------------------------------------------------
# Model folders


def register_model_folder(folder: str, extensions: Iterable[str] = MODEL_EXTENSIONS, paths: Iterable[str] = ()) -> None:
    """Make `models/<folder>` (plus `paths`) a model folder listing files with `extensions`.

    Inside ComfyUI this registers the folder with folder_paths (keeping paths that extra_model_paths.yaml
    already gave it); outside, it records the folder in memory, defaulting to $COINTERACT_MODELS_DIR/<folder>.
    """
    exts = frozenset(e if e.startswith(".") else f".{e}" for e in extensions)
    fp = _comfy("folder_paths")
    if fp is None:
        old_paths, old_exts = _FALLBACK_FOLDERS.get(folder, ([], frozenset()))
        _FALLBACK_FOLDERS[folder] = (_unique([*paths, *old_paths]), old_exts | exts)
        return
    old_paths, old_exts = fp.folder_names_and_paths.get(folder, ([], set()))
    default = os.path.join(fp.models_dir, folder)
    fp.folder_names_and_paths[folder] = (_unique([*paths, default, *old_paths]), set(old_exts) | exts)


def _unique(items: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(items))


def _fallback_folder(folder: str) -> tuple[list[str], frozenset[str]]:
    paths, exts = _FALLBACK_FOLDERS.get(folder, ([], MODEL_EXTENSIONS))
    env_dir = os.environ.get(MODELS_DIR_ENV)
    if env_dir:
        paths = _unique([*paths, os.path.join(env_dir, folder)])
    return paths, exts


def model_file_list(folder: str) -> list[str]:
    """Sorted file names (relative, '/'-separated, subfolders included) in model folder `folder`."""
    fp = _comfy("folder_paths")
    if fp is not None:
        return list(fp.get_filename_list(folder))
    paths, exts = _fallback_folder(folder)
    names: set[str] = set()
    for base in paths:
        for root, _dirs, files in os.walk(base, followlinks=True):
            for f in files:
                if not exts or os.path.splitext(f)[1].lower() in exts:
                    names.add(os.path.relpath(os.path.join(root, f), base).replace(os.sep, "/"))
    return sorted(names)


def model_file_path(folder: str, name: str) -> str:
    """The full path of model file `name` (as listed by model_file_list) in folder `folder`; raises if absent."""
    fp = _comfy("folder_paths")
    if fp is not None:
        return fp.get_full_path_or_raise(folder, name)
    rel = os.path.relpath(os.path.join("/", name), "/")  # as ComfyUI does: "../x" cannot leave the folder
    paths = _fallback_folder(folder)[0]
    for base in paths:
        full = os.path.join(base, rel)
        if os.path.isfile(full):
            return full
    where = ", ".join(paths) if paths else f"nowhere: set {MODELS_DIR_ENV} to a folder holding {folder}/"
    raise FileNotFoundError(f"Model in folder '{folder}' with filename '{name}' not found (looked in {where}).")
