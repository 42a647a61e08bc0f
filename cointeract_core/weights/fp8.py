"""fp8 weight storage: float8_e4m3fn weights with one fp32 scale per tensor, computing in the bias dtype (bf16).

W ≈ w8·s with s = amax|W| / 448. The forward dequantises the weight as ComfyUI's `scaled_fp8` ops do
(comfy/ops.py `scaled_fp8_op.Linear`: `weight.to(dtype) * scale_weight.to(dtype)`), so a model loaded from
ComfyUI's `*_fp8_scaled.safetensors` computes what ComfyUI computes. Those files carry a `scaled_fp8`
marker tensor (its dtype is the fp8 format; float32 means e4m3fn) and a `<linear>.scale_weight` fp32 scalar per
quantised Linear (a Linear without one has scale 1); `<linear>.scale_input` is used only by ComfyUI's fp8
matmul path and is ignored here. Module keys stay `weight` / `bias`, plus `scale_weight`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import replace

import torch
import torch.nn.functional as F
from torch import nn

from .lora import LoRALinear
from .safetensors_io import Checkpoint

__all__ = [
    "FP8",
    "FP8_MAX",
    "FP8Linear",
    "check_fp8_support",
    "quantize_tensor",
    "quantize_model_fp8",
    "dequantize",
    "split_scaled_fp8",
    "fp8_state_dict",
    "QUANTIZED_MODULES",
]
log = logging.getLogger(__name__)

FP8 = torch.float8_e4m3fn
FP8_MAX = 448.0  # largest finite float8_e4m3fn
FP8_TYPES = (torch.float8_e4m3fn, torch.float8_e5m2)
# The Linear layers stored in fp8 by default: every block (attention, FFN, MoE router and experts) and the audio
# injectors, ~99% of the 14B weights. Embeddings, time MLPs and heads stay in the compute dtype.
QUANTIZED_MODULES = ("blocks.", "audio_injector.")
MARKER = "scaled_fp8"


def check_fp8_support(device: torch.device | str, compute_dtype: torch.dtype = torch.bfloat16) -> None:
    """Raise a ValueError when `device` cannot store float8_e4m3fn or compute in `compute_dtype`."""
    device = torch.device(device)
    if device.type == "meta":
        return
    if device.type == "cuda" and compute_dtype == torch.bfloat16 and not torch.cuda.is_bf16_supported():
        raise ValueError(f"{device} has no bf16 support; fp8 storage computes in bf16 (use an Ampere or newer GPU)")
    try:
        probe = torch.ones(2, device=device).to(FP8).to(compute_dtype)
    except (RuntimeError, TypeError) as err:
        raise ValueError(
            f"fp8 (float8_e4m3fn) storage is not available on {device} in torch {torch.__version__}: "
            f"{err}; use bf16 weights"
        ) from err
    if not bool((probe == 1).all()):
        raise ValueError(f"float8_e4m3fn casts are wrong on {device}; use bf16 weights")


@torch.no_grad()
def quantize_tensor(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """W [out, in] -> (float8_e4m3fn [out, in], fp32 scale []) with W ≈ w8·scale, scale = amax|W|/448 (1 if W = 0)."""
    wf = w.float()
    amax = wf.abs().max()
    scale = torch.where(amax > 0, amax / FP8_MAX, torch.ones_like(amax))
    return (wf / scale).clamp(-FP8_MAX, FP8_MAX).to(FP8), scale.reshape(())


def dequantize(w: torch.Tensor, scale: torch.Tensor | None, dtype: torch.dtype | None = None) -> torch.Tensor:
    """w·scale in `dtype` (default: w's dtype, bf16 for fp8 w), rounded as ComfyUI: w.to(dtype) * scale.to(dtype)."""
    dtype = dtype or (torch.bfloat16 if w.dtype in FP8_TYPES else w.dtype)
    out = w.to(dtype)
    return out if scale is None else out * scale.to(device=out.device, dtype=dtype).reshape(())


class FP8Linear(nn.Module):
    """nn.Linear with `weight` [out, in] stored as float8_e4m3fn and a per-tensor fp32 `scale_weight` (buffers);
    `bias` is the only Parameter, so it sets the compute dtype (layers.cast_to)."""

    def __init__(self, in_features: int, out_features: int, dtype: torch.dtype = torch.bfloat16, device=None) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.register_buffer("weight", torch.empty(out_features, in_features, dtype=FP8, device=device))
        self.register_buffer("scale_weight", torch.ones((), dtype=torch.float32, device=device))
        self.bias = nn.Parameter(torch.empty(out_features, dtype=dtype, device=device), requires_grad=False)

    @classmethod
    @torch.no_grad()
    def from_linear(cls, linear: nn.Linear, dtype: torch.dtype | None = None) -> FP8Linear:
        """Quantise an nn.Linear (with bias); the bias keeps `dtype` (default: the layer's dtype)."""
        dtype = dtype or linear.bias.dtype
        out = cls(linear.in_features, linear.out_features, dtype, device="meta")
        w8, scale = quantize_tensor(linear.weight)
        out.weight, out.scale_weight = w8, scale.to(w8.device)
        out.bias = nn.Parameter(linear.bias.detach().to(dtype), requires_grad=False)
        return out

    def dequantized_weight(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        """[out, in] weight in `dtype` (default: the compute dtype)."""
        return dequantize(self.weight, self.scale_weight, dtype or self.bias.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[..., in] -> [..., out] in x's dtype."""
        return F.linear(x, dequantize(self.weight, self.scale_weight, x.dtype), self.bias.to(x.dtype))

    def _apply(self, fn: Callable, recurse: bool = True) -> FP8Linear:
        # `.to(dtype)` / `.half()` convert every floating buffer; put the storage format back so a dtype cast of the
        # model cannot silently drop the scale. e4m3 values are exact in bf16/fp16/fp32, so the round trip is lossless.
        super()._apply(fn, recurse)
        if self.weight.dtype != FP8 and not self.weight.is_meta:
            self.weight = self.weight.to(FP8)
        if self.scale_weight.dtype != torch.float32:
            self.scale_weight = self.scale_weight.float()
        return self

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, weight=float8_e4m3fn"


def _selected(name: str, modules: Sequence[str]) -> bool:
    return any(name.startswith(p) for p in modules)


def _set_module(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, module)


@torch.no_grad()
def quantize_model_fp8(
    model: nn.Module, modules: Sequence[str] = QUANTIZED_MODULES, dtype: torch.dtype | None = None
) -> list[str]:
    """Replace the nn.Linear layers under `modules` (name prefixes) by FP8Linear, layer by layer, in place.

    Compute dtype `dtype` (default: each layer's own; use a bf16 model). Returns the replaced module names.
    Raises before changing anything if the device cannot store fp8 or the model carries unmerged LoRA.
    """

    chosen = [(n, m) for n, m in model.named_modules() if _selected(n, modules)]
    if any(isinstance(m, LoRALinear) for _, m in chosen):
        raise ValueError("the model carries unmerged LoRA layers; merge_lora (or remove them) before quantising")
    linears = [(n, m) for n, m in chosen if type(m) is nn.Linear]
    if not linears:
        raise ValueError(f"no nn.Linear layers under {list(modules)}; nothing to quantise (already fp8?)")
    for device in {m.weight.device for _, m in linears}:
        check_fp8_support(device, dtype or linears[0][1].weight.dtype)
    no_bias = [n for n, m in linears if m.bias is None]
    for name, layer in linears:
        if layer.bias is not None:
            _set_module(model, name, FP8Linear.from_linear(layer, dtype))
    if no_bias:
        log.info(
            "kept %d Linear layers without bias in %s (e.g. %s)", len(no_bias), linears[0][1].weight.dtype, no_bias[0]
        )
    return [n for n, m in linears if m.bias is not None]


def fp8_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's state dict plus ComfyUI's `scaled_fp8` marker (an empty e4m3fn tensor), ready to save."""
    if not any(isinstance(m, FP8Linear) for m in model.modules()):
        raise ValueError("the model has no FP8Linear layers; quantize_model_fp8 first")
    return {**model.state_dict(), MARKER: torch.empty(0, dtype=FP8)}


def split_scaled_fp8(ckpt: Checkpoint) -> tuple[Checkpoint, dict[str, torch.Tensor]]:
    """A ComfyUI fp8_scaled checkpoint -> (the checkpoint without marker / scale keys, weight key -> fp32 scale).

    Files without the `scaled_fp8` marker come back unchanged with no scales (their scale keys, if any, stay and are
    reported as unexpected by the strict loader).
    """
    if MARKER not in ckpt.entries:
        return ckpt, {}
    fmt = ckpt.entries[MARKER].dtype
    scale_keys = [k for k in ckpt.entries if k.endswith((".scale_weight", ".scale_input"))]
    scales = {
        k.removesuffix(".scale_weight") + ".weight": ckpt.read(k).float().reshape(())
        for k in scale_keys
        if k.endswith(".scale_weight")
    }
    dropped = set(scale_keys) | {MARKER}
    entries = {k: e for k, e in ckpt.entries.items() if k not in dropped}
    orphans = sorted(k for k in scales if k not in entries)
    if orphans:
        raise ValueError(f"{ckpt.name}: scale_weight keys without their weight, e.g. {orphans[0]}; the file is damaged")
    log.info(
        "%s: ComfyUI scaled fp8 (%s, %d scaled weights)",
        ckpt.name,
        "e4m3fn" if fmt == torch.float32 else fmt,
        len(scales),
    )
    return replace(ckpt, entries=entries), scales
