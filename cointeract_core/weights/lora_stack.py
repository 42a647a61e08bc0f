"""Stack LoRA files, each at its own strength, onto a freshly loaded model: W = round(W + Σ strength·ΔW).

Every target is updated once: its rows are taken to float64, every file's delta for them is added in float64,
and the sum is rounded once to the weight's dtype. So the same delta written as kohya (lora_down / lora_up +
alpha), as PEFT with alpha folded into lora_B, or as a full `.diff` merges to the same weights (bit for bit when
the three files hold the same numbers), and the order of the files does not matter beyond float64 rounding.
A strength of 0 skips a file without reading it. The files are only read.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from .lora_delta import Update, flat_shape
from .lora_formats import LoRAError, LoRASource, read_lora

log = logging.getLogger(__name__)

__all__ = ["apply_loras", "merged_weight", "parse_lora_spec", "LoRAError"]

_CHUNK = 1 << 22  # float64 elements of W per step (32 MB), bounds the merge's extra memory
_SPEC = re.compile(r"^(?P<path>.+):(?P<strength>[-+]?(\d+(\.\d*)?|\.\d+)([eE][-+]?\d+)?)$")


def parse_lora_spec(text: str) -> tuple[str, float]:
    """`FILE[:STRENGTH]` -> (FILE, strength, 1.0 by default); only a trailing `:number` is a strength, so
    `C:\\loras\\a.safetensors` stays a path."""
    m = _SPEC.match(text)
    return (m["path"], float(m["strength"])) if m else (text, 1.0)


def _work_device(weight: torch.Tensor) -> torch.device:
    """Where the float64 sums are made: the weight's device, except MPS (no float64 there)."""
    return torch.device("cpu") if weight.device.type == "mps" else weight.device


@torch.no_grad()
def _merge_rows(src: torch.Tensor, dst: torch.Tensor, items: Sequence[tuple[float, Update]]) -> None:
    """dst = round(src + Σ strength·ΔW) row chunk by row chunk; a `set` update replaces what came before it."""
    rows, cols = flat_shape(src.shape)
    for u in (u for _, u in items if u.kind != "set"):
        if u.shape != (rows, cols):
            raise ValueError(f"{u.target}: the update is {list(u.shape)}, the weight {[rows, cols]}")
    flat_src, flat_dst, device = src.reshape(rows, cols), dst.view(rows, cols), _work_device(src)
    step = max(1, _CHUNK // max(1, cols))
    for i in range(0, rows, step):
        j = min(rows, i + step)
        acc = flat_src[i:j].to(device, torch.float64, copy=True)
        for strength, u in items:
            if u.kind == "set":
                acc = u.rows(i, j, device)
            else:
                acc += strength * u.rows(i, j, device)
        flat_dst[i:j].copy_(acc.to(dst.dtype))


def merged_weight(weight: torch.Tensor, items: Sequence[tuple[float, Update]]) -> torch.Tensor:
    """A new tensor: `weight` with the updates [(strength, Update)] applied (float64 sum, one rounding)."""
    out = torch.empty_like(weight, memory_format=torch.contiguous_format)
    _merge_rows(weight.detach(), out, items)
    return out


def _refuse_fp8(model: nn.Module) -> None:
    if any(b.dtype.is_floating_point and b.element_size() == 1 for b in model.buffers()):
        raise LoRAError(
            "the model stores weights in fp8; merging LoRAs there would lose them to fp8 rounding. Merge before "
            "quantising, or apply them in ComfyUI with CoInteract LoRA (patched on the fly)"
        )


def apply_loras(model: nn.Module, loras: Sequence[tuple[LoRASource, float]]) -> list[str]:
    """Merge LoRA files [(path or state dict, strength)] into `model`'s weights in place; returns the updated
    parameter names. Every file is parsed (and refused with a LoRAError) before any weight changes."""
    params = dict(model.named_parameters())
    shapes = {k: tuple(p.shape) for k, p in params.items()}
    items: dict[str, list[tuple[float, Update]]] = {}
    for source, strength in loras:
        name = "LoRA state dict" if not isinstance(source, (str, Path)) else Path(source).name
        if strength == 0:
            log.info("%s: strength 0, skipped", name)
            continue
        updates = read_lora(source, shapes, name)
        for target, update in updates.items():
            items.setdefault(target, []).append((strength, update))
        log.info("%s: %d parameters updated at strength %g", name, len(updates), strength)
    if not items:
        return []
    _refuse_fp8(model)
    dora = [u.target for lst in items.values() for _, u in lst if "dora_scale" in u.tensors]
    if dora:
        raise LoRAError(
            f"{len(dora)} updates use DoRA (dora_scale, e.g. {dora[0]}), which CoInteract does not merge; "
            "ComfyUI's own loader applies DoRA: use the CoInteract LoRA node inside ComfyUI"
        )
    for target, lst in items.items():
        weight = params[target].data
        _merge_rows(weight, weight, lst)
    return sorted(items)
