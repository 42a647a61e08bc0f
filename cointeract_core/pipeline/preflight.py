"""Checks `cointeract generate` / `batch` run before any model loads (output path, device, model paths) and
before sampling (memory): each refusal is a UserError whose message names the input and what to do."""

from __future__ import annotations

import argparse
import logging
import math
import os
from pathlib import Path
from typing import Any

import torch

from ..errors import UserError
from ..model.config import DiTConfig
from ..runtime.memory_plan import GiB, activation_bytes, device_free_bytes, video_layout
from .build import InputOptions, frame_size

__all__ = [
    "OUTPUT_SUFFIXES",
    "check_output_file",
    "check_output_dir",
    "check_device",
    "check_model_path",
    "check_models",
    "check_engines_memory",
    "available_bytes",
    "check_memory",
]
log = logging.getLogger(__name__)

OUTPUT_SUFFIXES = (".mp4",)  # what write_video writes for `generate` (H.264 + AAC)


def _writable_folder(folder: Path, what: str) -> None:
    if not os.access(folder, os.W_OK | os.X_OK):
        raise UserError(f"{what} {str(folder)!r} is not writable; choose another folder or fix its permissions")


def check_output_file(path: Path) -> None:
    """Refuse an --out that is a folder, is not .mp4, or whose folder is missing or not writable."""
    if path.is_dir():
        raise UserError(f"--out {str(path)!r} is a folder; give a file name inside it, e.g. {path / 'video.mp4'}")
    if path.suffix.lower() not in OUTPUT_SUFFIXES:
        raise UserError(f"--out {str(path)!r} must end in {' or '.join(OUTPUT_SUFFIXES)} (an H.264 + AAC video)")
    parent = path.parent
    if not parent.is_dir():
        what = "is a file, not a folder" if parent.exists() else "does not exist"
        raise UserError(f"the folder of --out, {str(parent)!r}, {what}; create it first (mkdir -p {parent})")
    _writable_folder(parent, "the folder of --out,")


def check_output_dir(path: Path) -> None:
    """Refuse an --out-dir that is a file or that cannot be created / written (it is created when missing)."""
    if path.exists() and not path.is_dir():
        raise UserError(f"--out-dir {str(path)!r} is a file; give a folder")
    existing = next(p for p in (path, *path.parents) if p.exists())
    if not existing.is_dir():
        raise UserError(f"--out-dir {str(path)!r} cannot be created: {str(existing)!r} is a file")
    _writable_folder(existing, "--out-dir" if existing == path else "the folder that would hold --out-dir,")


def check_device(text: str) -> torch.device:
    """The --device string as a torch.device; UserError when torch does not know it or it is not available."""
    try:
        device = torch.device(text)
    except RuntimeError:
        raise UserError(f"--device {text!r} is not a torch device; use cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(f"--device {text}: CUDA is not available here (no GPU, or torch {torch.__version__} "
                            "built without CUDA); use --device cpu")  # fmt: skip
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise UserError(f"--device {text}: this machine has {count} CUDA device(s), cuda:0 to cuda:{count - 1}")
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise UserError(f"--device {text}: Apple MPS is not available here; use --device cpu")
    elif device.type not in ("cpu", "cuda", "mps"):
        raise UserError(f"--device {text}: only cpu, cuda and mps are supported")
    return device


def check_model_path(path: str, flag: str, folder: str | None = None) -> None:
    """Refuse a missing model path, or a folder where a file is needed (`folder`: what to give instead)."""
    p = Path(path)
    if not p.exists():
        raise UserError(f"{flag} {path!r} does not exist; check the path")
    if p.is_dir() and folder is not None:
        raise UserError(f"{flag} {path!r} is a folder; {folder}")


def available_bytes(device: torch.device) -> int | None:
    """Memory free for activations: CUDA free memory, or the RAM available on a CPU (None when unknown)."""
    if device.type == "cuda":
        return device_free_bytes(device)
    if device.type != "cpu":
        return None
    try:
        with open("/proc/meminfo") as f:
            info = dict(line.split(":", 1) for line in f)
        return int(info["MemAvailable"].split()[0]) * 1024
    except (OSError, KeyError, ValueError):
        try:
            return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError):
            return None


def _need(cfg: DiTConfig, h: int, w: int, stride: int, hoi: bool) -> int:
    layout = video_layout(h, w, product=True, hoi=hoi, vae_stride=stride, patch=tuple(cfg.patch_size[1:]))
    return activation_bytes(cfg, layout)


def _size(n: int) -> str:
    return f"{n / GiB:.1f} GiB" if n >= GiB else f"{n / (1 << 20):.0f} MiB"


def check_memory(cfg: DiTConfig, height: int, width: int, stride: int, device: torch.device, hoi: bool) -> None:
    """Refuse a frame size whose activations (memory_plan estimate) exceed the free memory; say what size fits."""
    free = available_bytes(device)
    need = _need(cfg, height, width, stride, hoi)
    if free is None or need <= free:
        return
    multiple, scale = stride * cfg.patch_size[1], 1.0
    h, w = height, width
    while scale > 0.01 and (h > multiple or w > multiple) and _need(cfg, h, w, stride, hoi) > free:
        scale *= 0.9
        h = max(multiple, math.floor(height * scale / multiple) * multiple)
        w = max(multiple, math.floor(width * scale / multiple) * multiple)
    fits = _need(cfg, h, w, stride, hoi) <= free
    where = "RAM available" if device.type == "cpu" else f"memory free on {device}"
    raise UserError(
        f"{height}x{width} (HxW) needs about {_size(need)} for the model's activations but {_size(free)} of {where}; "
        + (f"about --height {h} --width {w} fits" if fits else "no frame size fits: free memory first")
        + (" (or turn off --hoi-preview)" if hoi else "")
    )


def _has_safetensors(path: str) -> bool:
    """A --dit folder is read when it holds .safetensors files (one file, or shards with an index)."""
    p = Path(path)
    return not p.is_dir() or any(p.glob("*.safetensors")) or any(p.glob("*.safetensors.index.json"))


def check_models(args: argparse.Namespace) -> None:
    """--device and the model paths of `generate` / `batch`, before anything loads; each refusal names the flag."""
    check_device(args.device)
    if args.bundle:
        check_model_path(args.bundle, "--bundle", "give the bundle file (.safetensors)")
        return
    shards = "it holds no .safetensors; give one shard or the .safetensors.index.json of a sharded checkpoint"
    for path in args.dit:
        check_model_path(path, "--dit", None if _has_safetensors(path) else shards)
    for flag in ("cointeract", "vae", "text_encoder", "audio_encoder"):
        if getattr(args, flag):
            check_model_path(getattr(args, flag), "--" + flag.replace("_", "-"))


def check_engines_memory(model: Any, vae: Any, inputs: InputOptions, hoi: bool, device: str) -> None:
    """check_memory for the loaded DiT (`model.cfg`) at the frame size of `inputs` (skipped without a cfg)."""
    cfg = getattr(model, "cfg", None)
    if isinstance(cfg, DiTConfig):
        h, w = frame_size(inputs, vae, cfg.patch_size[1])
        check_memory(cfg, h, w, vae.spatial_factor, torch.device(device), hoi)
