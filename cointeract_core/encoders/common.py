"""Shared plumbing of the standalone encoders: read weights lazily from local paths, rename, name a file, assign.

Weights are read from `.safetensors` (single, sharded via `*.index.json`, or a folder holding them) or from
pickles (`.pth`, `.pt`, `.bin`, `.ckpt`) through `torch.load(weights_only=True)` only, which refuses code.
Safetensors are read tensor by tensor on access and pickles are memory-mapped, and key renamings are lazy
views, so loading holds about one copy of the weights (in the target dtype). Nothing here downloads.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import torch
from torch import nn

from ..weights.safetensors_io import PREFIXES, LazyStateDict, PathLike, open_checkpoint

log = logging.getLogger(__name__)

__all__ = ["KeyView", "read_weights", "shapes_of", "describe_weights", "strip_prefix", "assign_weights"]

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
Shapes = dict[str, tuple[int, ...]]


class KeyView(Mapping):
    """A lazy renamed view of a state dict: view[new] = transform(old, base[old]) for names {new: old}."""

    def __init__(
        self,
        base: Mapping[str, torch.Tensor],
        names: Mapping[str, str],
        transform: Callable[[str, torch.Tensor], torch.Tensor] | None = None,
    ) -> None:
        self.base, self.names, self.transform = base, dict(names), transform

    def __getitem__(self, key: str) -> torch.Tensor:
        old = self.names[key]
        tensor = self.base[old]
        return tensor if self.transform is None else self.transform(old, tensor)

    def __iter__(self) -> Iterator[str]:
        return iter(self.names)

    def __len__(self) -> int:
        return len(self.names)

    def shapes(self) -> Shapes:
        base = shapes_of(self.base)
        return {new: base[old] for new, old in self.names.items()}


def shapes_of(sd: Mapping[str, torch.Tensor]) -> Shapes:
    """Key -> shape without reading lazy tensors."""
    shapes = getattr(sd, "shapes", None)
    return shapes() if callable(shapes) else {k: tuple(v.shape) for k, v in sd.items()}


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


def _load_pickle(path: Path, mmap: bool) -> object:
    return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)


def _read_pickle(path: Path) -> dict[str, torch.Tensor]:
    try:
        try:
            sd = _load_pickle(path, mmap=True)
        except RuntimeError as err:  # files from torch < 1.6 (not zip) cannot be memory-mapped
            if "mmap" not in str(err):
                raise
            sd = _load_pickle(path, mmap=False)
    except Exception as err:  # torch raises UnpicklingError, RuntimeError, ... for refused or broken pickles
        raise ValueError(
            f"{path.name} could not be read as a weights-only torch pickle ({type(err).__name__}: {err}); "
            "it is damaged or holds code objects. Use the .safetensors release of the same weights"
        ) from err
    for key in ("state_dict", "model", "module"):  # training checkpoints wrap the weights one level down
        if isinstance(sd, dict) and isinstance(sd.get(key), dict):
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


def read_weights(path: PathLike) -> Mapping[str, torch.Tensor]:
    """A lazy state dict (tensors as stored, on CPU, read on access) of a local file, sharded set or model folder."""
    path = Path(path).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file or folder (everything is loaded from local paths)")
    if path.is_dir():
        path = _weights_in_folder(path)
    if path.name.lower().endswith(".bin.index.json"):
        return strip_prefix(_read_pickle_index(path), PREFIXES)
    if path.suffix.lower() in PICKLES:
        return strip_prefix(_read_pickle(path), PREFIXES)
    if path.suffix.lower() == ".gguf":
        raise ValueError(f"{path.name} is GGUF; the standalone encoders read .safetensors or .pth/.bin files")
    return LazyStateDict(open_checkpoint(path))


def strip_prefix(sd: Mapping[str, torch.Tensor], prefixes: tuple[str, ...]) -> Mapping[str, torch.Tensor]:
    """Drop the first of `prefixes` that some keys carry (keys without it are other components: dropped)."""
    for prefix in prefixes:
        names = {k[len(prefix) :]: k for k in sd if k.startswith(prefix)}
        if names:
            if len(names) < len(sd):
                log.info("ignored %d keys outside '%s' (other components)", len(sd) - len(names), prefix)
            return KeyView(sd, names)
    return sd


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
    """What a state dict looks like, for error messages: 'the Wan 2.1 VAE ...', 'a diffusion model (DiT) ...'."""
    for marker, label in _KINDS:
        if marker in sd:
            return label
    from ..weights.checkpoint import describe_family

    family, label = describe_family(shapes_of(sd))
    if family == "cointeract":
        return label
    if family != "unknown":
        return f"a diffusion model (DiT): {label}"
    if any("lora_" in k or ".lora." in k for k in sd):
        return "a LoRA"
    first = ", ".join(sorted(sd)[:3]) or "no tensors"
    return f"an unrecognised file (first keys: {first})"


def _check_fit(slots: Mapping[int, list[str]], expected: Shapes, given: Shapes, what: str) -> None:
    missing = sorted(keys[0] for keys in slots.values() if not any(k in given for k in keys))
    unexpected = sorted(set(given) - set(expected))
    wrong = sorted(k for k in set(given) & set(expected) if tuple(given[k]) != tuple(expected[k]))
    if missing or unexpected or wrong:
        problems = [
            f"{len(v)} {label}: {', '.join(v[:6])}{' ...' if len(v) > 6 else ''}"
            for label, v in (("missing", missing), ("unexpected", unexpected), ("with another shape", wrong))
            if v
        ]
        raise ValueError(f"{what}: the weights do not fit the model ({'; '.join(problems)})")


def assign_weights(
    factory: Callable[[], nn.Module],
    sd: Mapping[str, torch.Tensor],
    dtype: torch.dtype,
    device: torch.device | str,
    what: str,
) -> nn.Module:
    """Build `factory()` on the meta device and fill it strictly from `sd`, one tensor at a time, in eval mode.

    Tied parameters (one tensor under several keys, e.g. umT5's shared / encoder.embed_tokens) are read once,
    from whichever of their keys `sd` has. Floating tensors are cast to `dtype`.
    """
    with torch.device("meta"):
        model = factory()
    slots: dict[int, list[str]] = {}
    for key, tensor in model.state_dict(keep_vars=True).items():
        slots.setdefault(id(tensor), []).append(key)
    expected = {k: tuple(v.shape) for k, v in model.state_dict(keep_vars=True).items()}
    _check_fit(slots, expected, shapes_of(sd), what)
    for keys in slots.values():
        tensor = sd[next(k for k in keys if k in sd)]
        tensor = tensor.to(device=device, dtype=dtype if tensor.is_floating_point() else tensor.dtype)
        param = nn.Parameter(tensor, requires_grad=False)
        for key in keys:
            owner, _, name = key.rpartition(".")
            module = model.get_submodule(owner)
            if name in module._parameters:
                module._parameters[name] = param  # the same object in every slot keeps ties
            else:
                module._buffers[name] = tensor
    leftovers = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if leftovers:
        raise ValueError(f"{what}: tensors left uninitialised after loading: {', '.join(leftovers[:6])}")
    return model.eval().requires_grad_(False)
