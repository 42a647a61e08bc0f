"""Shared plumbing of the standalone encoders: read weights from local paths, name what a file holds, assign.

Weights are read from `.safetensors` (single, sharded via `*.index.json`, or a folder holding them) or from
pickles (`.pth`, `.pt`, `.bin`, `.ckpt`) through `torch.load(weights_only=True)` only, which refuses code.
Nothing here downloads.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

import torch
from torch import nn

from ..safetensors_io import PREFIXES, PathLike, read_state_dict

log = logging.getLogger(__name__)

__all__ = ["read_weights", "describe_weights", "strip_prefix", "assign_weights", "cast_floats"]

PICKLES = (".pth", ".pt", ".bin", ".ckpt")
# Weight files of a model folder, most preferred first (transformers / diffusers conventions).
FOLDER_WEIGHTS = (
    "model.safetensors.index.json",
    "model.safetensors",
    "diffusion_pytorch_model.safetensors.index.json",
    "diffusion_pytorch_model.safetensors",
    "pytorch_model.bin.index.json",
    "pytorch_model.bin",
    "diffusion_pytorch_model.bin",
)


def _weights_in_folder(folder: Path) -> Path:
    for name in FOLDER_WEIGHTS:
        if (folder / name).is_file():
            return folder / name
    files = sorted(p for p in folder.iterdir() if p.suffix in (".safetensors", *PICKLES))
    if len(files) == 1:
        return files[0]
    raise FileNotFoundError(
        f"{folder} holds {len(files)} weight files and none of the standard names ({', '.join(FOLDER_WEIGHTS[:4])}, "
        "...); pass the weight file itself"
    )


def _read_pickle(path: Path) -> dict[str, torch.Tensor]:
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as err:  # torch raises UnpicklingError, RuntimeError, ... for refused or broken pickles
        raise ValueError(
            f"{path.name} could not be read as a weights-only torch pickle ({type(err).__name__}: {err}); "
            "it is damaged or holds code objects. Use the .safetensors release of the same weights"
        ) from err
    for key in ("state_dict", "model", "module"):  # training checkpoints wrap the weights one level down
        if isinstance(sd, dict) and isinstance(sd.get(key), dict) and not isinstance(sd.get(key), torch.Tensor):
            sd = sd[key]
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise ValueError(f"{path.name} is a torch pickle but not a state dict of tensors")
    return dict(sd)


def _read_pickle_index(index: Path) -> dict[str, torch.Tensor]:
    try:
        names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
        raise ValueError(f"{index.name} is not a weights index (need a JSON 'weight_map'): {err!r}") from err
    sd: dict[str, torch.Tensor] = {}
    for name in names:
        if not (index.parent / name).is_file():
            raise FileNotFoundError(f"{index.name} lists {name}, which is missing from {index.parent}")
        sd.update(_read_pickle(index.parent / name))
    return sd


def read_weights(path: PathLike) -> dict[str, torch.Tensor]:
    """A state dict (tensors as stored, on CPU) from a local file, sharded set or model folder."""
    path = Path(path).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file or folder (everything is loaded from local paths)")
    if path.is_dir():
        path = _weights_in_folder(path)
    name = path.name.lower()
    if name.endswith(".bin.index.json"):
        return _read_pickle_index(path)
    if path.suffix.lower() in PICKLES:
        sd = _read_pickle(path)
        return strip_prefix(sd, PREFIXES)
    if path.suffix.lower() == ".gguf":
        raise ValueError(f"{path.name} is GGUF; the standalone encoders read .safetensors or .pth/.bin files")
    sd, _ = read_state_dict(path)
    return sd


def strip_prefix(sd: Mapping[str, torch.Tensor], prefixes: Iterable[str]) -> dict[str, torch.Tensor]:
    """Drop the first of `prefixes` that some keys carry; keys without it are dropped too (other components)."""
    for prefix in prefixes:
        if any(k.startswith(prefix) for k in sd):
            kept = {k[len(prefix) :]: v for k, v in sd.items() if k.startswith(prefix)}
            if len(kept) < len(sd):
                log.info("ignored %d keys outside '%s' (other components)", len(sd) - len(kept), prefix)
            return kept
    return dict(sd)


# (marker key, what the file is) in the order they are checked; the first marker present wins.
_KINDS = (
    ("decoder.upsamples.0.upsamples.0.residual.2.weight", "the Wan 2.2 VAE (48 latent channels, 16x16 spatial)"),
    ("decoder.middle.0.residual.0.gamma", "the Wan 2.1 VAE (original / ComfyUI key names)"),
    ("decoder.mid_block.resnets.0.norm1.gamma", "a Wan VAE in diffusers key names"),
    ("encoder.block.0.layer.0.SelfAttention.q.weight", "a T5 / umT5 text encoder (transformers / ComfyUI names)"),
    ("blocks.0.attn.q.weight", "a T5 text encoder in Wan's own key names (models_t5_umt5-xxl-enc-bf16.pth)"),
    ("encoder.layers.0.attention.q_proj.weight", "a wav2vec2 audio encoder"),
    ("wav2vec2.encoder.layers.0.attention.q_proj.weight", "a wav2vec2 audio encoder"),
    ("model.encoder.embed_positions.weight", "a Whisper audio encoder"),
    ("text_model.encoder.layers.0.mlp.fc1.weight", "a CLIP text encoder"),
    ("vision_model.encoder.layers.0.mlp.fc1.weight", "a CLIP vision encoder"),
    ("visual.transformer.resblocks.0.mlp.c_fc.weight", "a CLIP vision encoder (open_clip names)"),
)


def describe_weights(sd: Mapping[str, torch.Tensor]) -> str:
    """What a state dict looks like, for error messages: 'the Wan 2.1 VAE ...', 'a Wan2.2-S2V DiT ...', ..."""
    for marker, label in _KINDS:
        if marker in sd:
            return label
    from ..checkpoint import describe_family

    family, label = describe_family({k: tuple(v.shape) for k, v in sd.items()})
    if family == "cointeract":
        return label
    if family != "unknown":
        return f"a diffusion model (DiT): {label}"
    if any("lora_" in k or ".lora." in k for k in sd):
        return "a LoRA"
    first = ", ".join(sorted(sd)[:3]) or "no tensors"
    return f"an unrecognised file (first keys: {first})"


def cast_floats(sd: Mapping[str, torch.Tensor], dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Floating tensors cast to `dtype` (integer / bool tensors kept)."""
    return {k: v.to(dtype) if v.is_floating_point() else v for k, v in sd.items()}


def assign_weights(
    factory: Callable[[], nn.Module],
    sd: Mapping[str, torch.Tensor],
    dtype: torch.dtype,
    device: torch.device | str,
    what: str,
) -> nn.Module:
    """Build `factory()` on the meta device and assign `sd` strictly (one copy of the weights), in eval mode."""
    with torch.device("meta"):
        model = factory()
    expected = model.state_dict()
    missing = sorted(set(expected) - set(sd))
    unexpected = sorted(set(sd) - set(expected))
    wrong = sorted(k for k in set(sd) & set(expected) if tuple(sd[k].shape) != tuple(expected[k].shape))
    if missing or unexpected or wrong:
        problems = [
            f"{len(v)} {label}: {', '.join(v[:6])}{' ...' if len(v) > 6 else ''}"
            for label, v in (("missing", missing), ("unexpected", unexpected), ("with another shape", wrong))
            if v
        ]
        raise ValueError(f"{what}: the weights do not fit the model ({'; '.join(problems)})")
    converted: dict[int, torch.Tensor] = {}  # tensors shared by several keys (tied weights) are converted once
    for v in sd.values():
        if id(v) not in converted:
            converted[id(v)] = v.to(device=device, dtype=dtype if v.is_floating_point() else v.dtype)
    model.load_state_dict({k: converted[id(v)] for k, v in sd.items()}, strict=True, assign=True)
    leftovers = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if leftovers:
        raise ValueError(f"{what}: tensors left uninitialised after loading: {', '.join(leftovers[:6])}")
    return model.eval().requires_grad_(False)
