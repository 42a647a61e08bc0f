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
from collections.abc import Callable, Iterable
from types import ModuleType, SimpleNamespace
from typing import Any, Protocol

import torch

from ..cointeract_core.sampling.protocols import FlowVelocity, Solver
from ..cointeract_core.weights.lora_delta import Update, to_kohya_state_dict
from ..cointeract_core.weights.lora_stack import merged_weight
from ._patcher import FallbackPatcher

log = logging.getLogger(__name__)

__all__ = [
    "COMFY_SAMPLERS",
    "MODELS_DIR_ENV",
    "MODEL_EXTENSIONS",
    "COINTERACT_FOLDER",
    "MissingDependencyError",
    "ProcessingInterrupted",
    "check_interrupt",
    "comfy_available",
    "comfy_solver",
    "get_torch_device",
    "interrupt_processing",
    "intermediate_device",
    "latent_preview_callback",
    "load_model",
    "add_update_patches",
    "lora_patch",
    "release_model",
    "set_patch",
    "unload_model",
    "wan21_latent_stats",
    "wrap_model",
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
COINTERACT_FOLDER = "cointeract"  # models/cointeract: the official CoInteract checkpoints
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


class ProcessingInterrupted(Exception):
    """Outside ComfyUI: raised by check_interrupt() after interrupt_processing() (ComfyUI raises its own)."""


_interrupt_requested = False


def interrupt_processing(value: bool = True) -> None:
    """Ask the running generation to stop at its next step (ComfyUI's cancel button; its /interrupt route)."""
    global _interrupt_requested
    mm = _comfy("comfy.model_management")
    if mm is not None:
        mm.interrupt_current_processing(value)
    else:
        _interrupt_requested = value


def check_interrupt() -> None:
    """Raise ComfyUI's InterruptProcessingException if the user pressed cancel (outside ComfyUI:
    ProcessingInterrupted once after interrupt_processing(); otherwise never)."""
    global _interrupt_requested
    mm = _comfy("comfy.model_management")
    if mm is not None:
        mm.throw_exception_if_processing_interrupted()
    elif _interrupt_requested:
        _interrupt_requested = False
        raise ProcessingInterrupted("generation cancelled")


def latent_preview_callback(total: int, wan21_latents: bool) -> Callable[[int, torch.Tensor], None]:
    """A callback(done, x) that moves a progress bar of `total` steps; inside ComfyUI with Wan 2.1 latents
    x [1, 16, F, h, w] (normalised) it also sends a preview of the first latent frame (per --preview-method)."""
    bar = progress_bar(total, desc="CoInteract")
    previewer = None
    if wan21_latents and comfy_available():
        latent_preview, formats = (
            importlib.import_module("latent_preview"),
            importlib.import_module("comfy.latent_formats"),
        )
        previewer = latent_preview.get_previewer(get_torch_device(), formats.Wan21())

    def callback(done: int, x: torch.Tensor) -> None:
        preview = None if previewer is None else previewer.decode_latent_to_preview_image("JPEG", x[:1].float())
        bar.update_absolute(done, total, preview)

    return callback


# ---------------------------------------------------------------------------------------------------------------
# Samplers: ComfyUI's own, driven by a core velocity (euler stays the core's official step, bit-identical to the CLI)

COMFY_SAMPLERS = {"unipc": "uni_pc_bh2", "dpmpp_2m": "dpmpp_2m", "lcm": "lcm"}  # core name -> comfy.samplers name


class _FlowDenoiser:
    """What ComfyUI's samplers call as the model: x0 = x − σ·v(x, σ); it carries the flow model_sampling object
    that KSAMPLER (noise scaling) and some samplers (lcm's re-noising) read."""

    def __init__(self, velocity: FlowVelocity, model_sampling: Any) -> None:
        self.velocity = velocity
        self.inner_model = SimpleNamespace(model_sampling=model_sampling)
        self.model_patcher = SimpleNamespace(get_model_object=lambda name: model_sampling)

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, model_options: Any = None, seed: Any = None):
        s = float(sigma.reshape(-1)[0])
        return x - s * self.velocity(x, s)


def comfy_solver(sampler: str, shift: float) -> Solver | None:
    """ComfyUI's implementation of core sampler `sampler` (COMFY_SAMPLERS) as a core Solver over our sigma table;
    None outside ComfyUI and for euler. Its step callback gets the x0 estimate, as ComfyUI's previews show."""
    if sampler not in COMFY_SAMPLERS or not comfy_available():
        return None
    samplers, ms = importlib.import_module("comfy.samplers"), importlib.import_module("comfy.model_sampling")

    class FlowSampling(ms.ModelSamplingDiscreteFlow, ms.CONST):  # what ComfyUI's ModelSamplingSD3 node builds
        pass

    model_sampling = FlowSampling()
    model_sampling.set_parameters(shift=shift, multiplier=1000)

    def solve(velocity, noise, sigmas, callback, renoise) -> torch.Tensor:
        if sampler == "lcm":  # our seeded noise streams, so a seed gives the same video as the CLI
            ksampler = samplers.ksampler("lcm", {"noise_sampler": lambda s, s_next: renoise(noise)})
        else:
            ksampler = samplers.sampler_object(COMFY_SAMPLERS[sampler])
        total = len(sigmas) - 1
        step = None if callback is None else (lambda i, x0, x, n: callback(i + 1, total, x0))
        table = sigmas.to(noise.device, copy=True)  # uni_pc writes into the table it is given
        denoiser = _FlowDenoiser(velocity, model_sampling)
        return ksampler.sample(denoiser, table, {}, step, noise, torch.zeros_like(noise), disable_pbar=True)

    return solve


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


# The Wan 2.1 VAE's per-channel latent statistics (Wan's vae.py; ComfyUI's latent_formats.Wan21): the DiT sees
# (mu - mean) / std, ComfyUI's VAE returns mu.
_WAN21_MEAN = (-0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508,
               0.4134, -0.0715, 0.5517, -0.3632, -0.1922, -0.9497, 0.2503, -0.2921)  # fmt: skip
_WAN21_STD = (2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743,
              3.2687, 2.1526, 2.8652, 1.5579, 1.6382, 1.1253, 2.8251, 1.9160)  # fmt: skip


def wan21_latent_stats() -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, std) [1, 16, 1, 1, 1] float32 of Wan 2.1 VAE latents: ComfyUI's latent_formats.Wan21, else Wan's."""
    formats = _comfy("comfy.latent_formats")
    if formats is not None:
        fmt = formats.Wan21()
        return fmt.latents_mean.float().view(1, -1, 1, 1, 1), fmt.latents_std.float().view(1, -1, 1, 1, 1)
    return torch.tensor(_WAN21_MEAN).view(1, -1, 1, 1, 1), torch.tensor(_WAN21_STD).view(1, -1, 1, 1, 1)


# ---------------------------------------------------------------------------------------------------------------
# Models: ModelPatcher inside ComfyUI (its model management loads, offloads and frees them), else FallbackPatcher


def wrap_model(model: torch.nn.Module) -> Any:
    """Wrap a loaded nn.Module so it is managed like a native model: a comfy ModelPatcher, or a FallbackPatcher."""
    load, offload = get_torch_device(), unet_offload_device()
    if not comfy_available():
        return FallbackPatcher(model, load, offload)
    patcher_mod = importlib.import_module("comfy.model_patcher")
    return patcher_mod.ModelPatcher(model, load_device=load, offload_device=offload)


def load_model(patcher: Any, memory_required: int = 0) -> torch.nn.Module:
    """Put the patcher's model (with its patches) on the compute device, freeing others as needed; returns it."""
    mm = _comfy("comfy.model_management")
    if mm is None:
        return patcher.load()
    mm.load_models_gpu([patcher], memory_required=memory_required, force_full_load=True)
    return patcher.model


def release_model(patcher: Any) -> None:
    """After a generation: inside ComfyUI keep it loaded for the next run (model management offloads it when
    memory is needed); outside, restore the unpatched weights and park it on the offload device."""
    if not comfy_available():
        patcher.unload()


def unload_model(patcher: Any) -> None:
    """Unload the patcher's model (and any clone of it) from the compute device now and free cached memory."""
    mm = _comfy("comfy.model_management")
    if mm is None:
        patcher.unload()
    else:
        for loaded in list(mm.current_loaded_models):
            other = loaded.model
            if other is not None and (other is patcher or patcher.is_clone(other)):
                loaded.model_unload()
                mm.current_loaded_models.remove(loaded)
    soft_empty_cache()
    log.info("CoInteract: unloaded %s from %s", type(patcher.model).__name__, patcher.load_device)


def lora_patch(up: torch.Tensor, down: torch.Tensor) -> Any:
    """A weight patch adding strength·(up @ down): ComfyUI's LoRAAdapter (no alpha scaling), else ("lora", ...)."""
    if comfy_available() and importlib.util.find_spec("comfy.weight_adapter") is not None:
        adapter = importlib.import_module("comfy.weight_adapter.lora").LoRAAdapter
        return adapter(set(), (up, down, None, None, None, None))
    return ("lora", (up, down))


def add_update_patches(patcher: Any, updates: dict[str, Update], strength: float) -> int:
    """Add core updates {parameter: Update} (LoRA of any layout, or `set`) to `patcher` at `strength`; returns how
    many. Inside ComfyUI its own loader builds the patches (`comfy.lora.load_lora` over the updates written in
    kohya / LyCORIS keys, so its adapters compute and offload them, DoRA included); parameters its ModelPatcher
    never patches become object patches. Outside, ("update", (Update,)) patches for FallbackPatcher."""
    if not comfy_available():
        return len(patcher.add_patches({k: ("update", (u,)) for k, u in updates.items()}, strength))
    skipped = _unpatched_by_comfy(patcher.model)
    weights = {k: u for k, u in updates.items() if k not in skipped and u.kind != "set"}
    sets = {k: set_patch(u.tensors["set_weight"]) for k, u in updates.items() if k not in skipped and u.kind == "set"}
    state_dict, key_map = to_kohya_state_dict(weights)
    patches = importlib.import_module("comfy.lora").load_lora(state_dict, key_map, log_missing=False)
    lost = sorted(set(weights) - set(patches))
    if lost:
        raise RuntimeError(f"ComfyUI's LoRA loader built no patch for {len(lost)} updates, e.g. {lost[0]}")
    patcher.add_patches({**patches, **sets}, strength)
    for key in sorted(set(updates) & skipped):  # computed now from the weights as this patcher sees them
        current = patcher.get_model_object(key).detach()
        new = merged_weight(current, [(strength, updates[key])])
        patcher.add_object_patch(key, torch.nn.Parameter(new, requires_grad=False))
    return len(updates)


def _unpatched_by_comfy(model: torch.nn.Module) -> set[str]:
    """Parameters ComfyUI's ModelPatcher never patches: those held by a module that also has sub-modules with
    parameters (its `_load_list` skips such modules), e.g. `blocks.N.modulation`, `head.modulation`."""
    out = set()
    for name, module in model.named_modules():
        own = [n for n, _ in module.named_parameters(recurse=False)]
        if own and len(list(module.parameters())) > len(own):
            out.update(f"{name}.{n}" if name else n for n in own)
    return out


def set_patch(tensor: torch.Tensor) -> tuple[str, tuple[torch.Tensor]]:
    """A weight patch replacing the weight by `tensor` (ComfyUI's "set" patch)."""
    return ("set", (tensor,))


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


register_model_folder(COINTERACT_FOLDER)
