"""Loading a DiT with fp8 weight storage: `load_dit_fp8` (checkpoint.load_dit, Linear layers kept in fp8).

Kept apart from fp8.py (the storage format) so that the dependency points one way: checkpoint -> fp8 for the
scaled-fp8 hook, fp8_load -> checkpoint + fp8 for loading.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch
from torch import nn

from . import checkpoint as ck
from . import lora as lora_lib
from .fp8 import (
    FP8,
    FP8_TYPES,
    QUANTIZED_MODULES,
    FP8Linear,
    _selected,
    _set_module,
    check_fp8_support,
    dequantize,
    quantize_model_fp8,
    quantize_tensor,
)
from .safetensors_io import PathLike

__all__ = ["load_dit_fp8"]
log = logging.getLogger(__name__)


def _assign(model: nn.Module, key: str, tensor: torch.Tensor) -> None:
    """Put `tensor` in place of the (meta) parameter or buffer `key`."""
    owner, _, name = key.rpartition(".")
    module = model.get_submodule(owner)
    if name in module._parameters:
        module._parameters[name] = nn.Parameter(tensor, requires_grad=False)
    else:
        module._buffers[name] = tensor


def _fp8_layers(model: nn.Module, plan) -> set[str]:
    """Linear layers stored in fp8: those a scaled_fp8 file stores in fp8 (the file decides, as in ComfyUI), else
    those under QUANTIZED_MODULES."""
    linears = {n for n, m in model.named_modules() if type(m) is nn.Linear and m.bias is not None}
    if not plan.fp8_scales:
        return {n for n in linears if _selected(n, QUANTIZED_MODULES)}
    stored = {mk for mk, (c, fk) in plan.sources.items() if c is plan.base and c.entries[fk].dtype in FP8_TYPES}
    return {n for n in linears if f"{n}.weight" in stored}


def _to_meta_fp8(model: nn.Module, names: set[str], dtype: torch.dtype) -> None:
    for name in names:
        m = model.get_submodule(name)
        _set_module(model, name, FP8Linear(m.in_features, m.out_features, dtype, device="meta"))


def _to_stored(tensor: torch.Tensor, scale: torch.Tensor | None, is_fp8_weight: bool, dtype: torch.dtype) -> list:
    """(suffix, tensor) pairs to assign for one file tensor: fp8 weights keep the file's bytes and scale."""
    if not is_fp8_weight:
        return [("", dequantize(tensor, scale, dtype) if tensor.is_floating_point() else tensor)]
    if tensor.dtype == FP8:
        return [("", tensor), ("scale", torch.ones(()) if scale is None else scale)]
    w8, new_scale = quantize_tensor(dequantize(tensor, scale, torch.float32))
    return [("", w8), ("scale", new_scale)]


def load_dit_fp8(
    base_paths: PathLike | Sequence[PathLike],
    cointeract_path: PathLike | None = None,
    lora_strength: float = 1.0,
    device: torch.device | str = "cpu",
    cfg=None,
    dtype: torch.dtype = torch.bfloat16,
) -> nn.Module:
    """`checkpoint.load_dit` with fp8 weight storage for the Linear layers.

    A ComfyUI fp8_scaled file decides which layers are fp8 and keeps their bytes and scales exactly (its other
    layers stay in `dtype`, as ComfyUI computes them); other files have the Linear layers of QUANTIZED_MODULES
    quantised as they are read. LoRA targets are loaded in `dtype`, merged, then quantised. Other tensors are cast
    to `dtype`. Peak host memory is about the fp8 model plus the LoRA targets in `dtype`.
    """
    check_fp8_support(device, dtype)
    plan, model = ck.plan_load(base_paths, cointeract_path, cfg)
    if not plan.ok:
        raise ValueError(f"cannot load {plan.base.name}:\n  " + "\n  ".join(plan.problems()))
    weights = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    lora_shapes = {k: plan.extra.entries[k].shape for k in plan.lora_keys}
    targets = lora_lib.match_lora(lora_shapes, weights) if lora_shapes and lora_strength else {}
    lora_layers = {k.removesuffix(".weight") for k in targets}
    quantized = _fp8_layers(model, plan)
    fp8_layers = quantized - lora_layers
    _to_meta_fp8(model, fp8_layers, dtype)
    for ckpt in [c for c in (plan.base, plan.extra) if c is not None]:
        wanted = {fk: mk for mk, (c, fk) in plan.sources.items() if c is ckpt}
        for file_key, tensor in ckpt.iter(list(wanted), dtype=None, device=device):
            key = wanted[file_key]
            scale = plan.fp8_scales.get(file_key) if ckpt is plan.base else None
            is_fp8_weight = key.endswith(".weight") and key.removesuffix(".weight") in fp8_layers
            for suffix, value in _to_stored(tensor, scale, is_fp8_weight, dtype):
                _assign(model, key.removesuffix("weight") + "scale_weight" if suffix else key, value.to(device))
    if targets:
        merged = lora_lib.merge_lora(model, ck.LazyStateDict(plan.extra, plan.lora_keys), lora_strength)
        if lora_layers & quantized:
            quantize_model_fp8(model, modules=tuple(sorted(lora_layers & quantized)), dtype=dtype)
        log.info("merged %d LoRA updates at strength %g, then quantised them", len(merged), lora_strength)
    left = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if left:
        raise RuntimeError(f"{len(left)} tensors were not materialised, e.g. {left[:5]}")
    return model.eval()
