"""LoRA: parse the official PEFT keys, merge / unmerge W += strength·(B @ A), and unmerged LoRALinear layers.

Official rule (reference §2, DiffSynth `GeneralLoRALoader`): every `X.lora_B.<adapter>.weight` (or
`X.lora_B.weight`) updates module X by strength·(B @ A); a leading `diffusion_model.` / `pipe.dit.` is dropped,
and the 1×1 conv variant is flattened. With the MoE on, the base FFN is `ffn.ffn_base.{0,2}`; `ffn.{0,2}`
keys are mapped to it (and back when there is no MoE). Unlike the official loader, a key that matches no
module, or does not fit it, raises. No alpha/rank scaling: the official training used alpha = rank, and our
trainer folds alpha/rank into B, so strength 1.0 reproduces training.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, MutableMapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "LoRALinear",
    "is_lora_key",
    "official_lora_key",
    "lora_pairs",
    "match_lora",
    "merge_lora",
    "unmerge_lora",
    "apply_lora_unmerged",
    "remove_lora_unmerged",
    "lora_state_dict",
]

_LORA = re.compile(r"(^|\.)lora_[AB](\.|$)")
_PREFIXES = ("model.diffusion_model.", "diffusion_model.", "pipe.dit.")
_FFN = re.compile(r"(\.ffn\.)(ffn_base\.)?([02])$")
_CHUNK = 1 << 24  # elements of W updated per float32 step (bounds the merge's extra memory)


def is_lora_key(key: str) -> bool:
    """True for PEFT LoRA factor keys (`….lora_A.default.weight`, `….lora_B.weight`)."""
    return bool(_LORA.search(key))


def _split(key: str) -> tuple[str, str]:
    """(module name, 'A' or 'B') of a LoRA key, by the official rule."""
    key = next((key[len(p) :] for p in _PREFIXES if key.startswith(p)), key)
    tokens = key.split(".")
    idx = next(i for i, t in enumerate(tokens) if t in ("lora_A", "lora_B"))
    if not 0 < idx or len(tokens) - idx > 3 or tokens[-1] != "weight":
        raise ValueError(f"'{key}' is not a LoRA key of the form X.lora_A[.adapter].weight")
    return ".".join(tokens[:idx]), tokens[idx][-1]


def official_lora_key(key: str) -> str:
    """`X.lora_A.weight` / `X.lora_A.default.weight` -> the official `X.lora_A.default.weight`, FFN as ffn_base."""
    module, side = _split(key)
    module = _FFN.sub(r"\1ffn_base.\3", module)
    return f"{module}.lora_{side}.default.weight"


def lora_pairs(keys: Sequence[str]) -> dict[str, tuple[str, str]]:
    """Module name -> (A key, B key); an A without its B (or the reverse) raises."""
    found: dict[str, dict[str, str]] = {}
    for key in keys:
        module, side = _split(key)
        if side in found.setdefault(module, {}):
            raise ValueError(f"two lora_{side} tensors for module {module}: {found[module][side]}, {key}")
        found[module][side] = key
    unpaired = sorted(next(iter(v.values())) for v in found.values() if len(v) != 2)
    if unpaired:
        raise ValueError(f"{len(unpaired)} LoRA factors have no partner (lora_A needs lora_B), e.g. {unpaired[0]}")
    return {module: (v["A"], v["B"]) for module, v in found.items()}


def _target(module: str, weights: Mapping[str, Sequence[int]]) -> str | None:
    """The weight key LoRA module `module` updates; `ffn.{0,2}` and `ffn.ffn_base.{0,2}` stand for each other."""
    for name in (module, _FFN.sub(r"\1ffn_base.\3", module), _FFN.sub(r"\1\3", module)):
        if f"{name}.weight" in weights:
            return f"{name}.weight"
    return None


def _fits(a: Sequence[int], b: Sequence[int], w: Sequence[int]) -> bool:
    if len(a) < 2 or len(b) < 2:
        return False
    rank, fan_in = a[0], math.prod(a[1:])
    return b[1] == rank and math.prod(b[2:]) == 1 and b[0] == w[0] and fan_in == math.prod(w[1:])


def match_lora(
    lora_shapes: Mapping[str, Sequence[int]], weight_shapes: Mapping[str, Sequence[int]]
) -> dict[str, tuple[str, str]]:
    """Weight key -> (A key, B key), checking that each target exists and B @ A has its shape."""
    pairs, out, unknown = lora_pairs(list(lora_shapes)), {}, []
    for module, (a_key, b_key) in pairs.items():
        target = _target(module, weight_shapes)
        if target is None:
            unknown.append(module)
            continue
        a, b, w = tuple(lora_shapes[a_key]), tuple(lora_shapes[b_key]), tuple(weight_shapes[target])
        if not _fits(a, b, w):
            raise ValueError(
                f"LoRA {a_key} {list(a)} / {b_key} {list(b)} does not fit {target} {list(w)}; "
                "this LoRA was trained for another model size"
            )
        out[target] = (a_key, b_key)
    if unknown:
        more = f" ... ({len(unknown) - 10} more)" if len(unknown) > 10 else ""
        raise ValueError(f"{len(unknown)} LoRA targets are not modules of the model: {', '.join(unknown[:10])}{more}")
    return out


def _shapes(sd: Mapping[str, torch.Tensor]) -> dict[str, tuple[int, ...]]:
    return sd.shapes() if hasattr(sd, "shapes") else {k: tuple(v.shape) for k, v in sd.items()}


@torch.no_grad()
def _add_delta(w: torch.Tensor, a: torch.Tensor, b: torch.Tensor, scale: float) -> None:
    """In place: w += scale·(B @ A), computed in float32 by row chunks, stored in w's dtype."""
    a2 = a.reshape(a.shape[0], -1).to(w.device, torch.float32)
    b2 = b.reshape(b.shape[0], -1).to(w.device, torch.float32)
    flat = w.view(w.shape[0], -1)
    step = max(1, _CHUNK // max(1, flat.shape[1]))
    for i in range(0, flat.shape[0], step):
        chunk = flat[i : i + step].float()
        chunk.addmm_(b2[i : i + step], a2, alpha=scale)
        flat[i : i + step].copy_(chunk)


def merge_lora(
    target: nn.Module | MutableMapping[str, torch.Tensor], lora_sd: Mapping[str, torch.Tensor], strength: float = 1.0
) -> list[str]:
    """W += strength·(B @ A) for every LoRA pair; returns the updated weight keys.

    A module is updated in place; a state dict gets new tensors (the caller's tensors are not modified).
    """
    is_model = isinstance(target, nn.Module)
    weights = dict(target.named_parameters()) if is_model else target
    if is_model:
        _refuse_fp8_targets(target, _shapes(lora_sd))
    pairs = match_lora(_shapes(lora_sd), {k: tuple(v.shape) for k, v in weights.items()})
    for key, (a_key, b_key) in pairs.items():
        w = weights[key] if is_model else weights[key].clone()
        _add_delta(w.data, lora_sd[a_key], lora_sd[b_key], strength)
        if not is_model:
            target[key] = w
    return sorted(pairs)


def _refuse_fp8_targets(model: nn.Module, lora_shapes: Mapping[str, Sequence[int]]) -> None:
    """A LoRA whose targets hold fp8 weights (FP8Linear buffers) cannot be merged: say so and what to do instead."""
    fp8 = {k: tuple(v.shape) for k, v in model.named_buffers() if v.dtype.is_floating_point and v.element_size() == 1}
    hits = [m for m in lora_pairs(list(lora_shapes)) if _target(m, fp8) is not None]
    if hits:
        raise ValueError(
            f"{len(hits)} LoRA targets (e.g. {hits[0]}) store their weights in fp8; merging a LoRA there would lose "
            "it to fp8 rounding. Merge before quantising: load with fp8_load.load_dit_fp8(base, checkpoint, "
            "lora_strength) (it merges in bf16, then quantises), or in ComfyUI apply it with CoInteract LoRA "
            "(patched on the fly)"
        )


def unmerge_lora(
    target: nn.Module | MutableMapping[str, torch.Tensor], lora_sd: Mapping[str, torch.Tensor], strength: float = 1.0
) -> list[str]:
    """Undo `merge_lora` (W -= strength·(B @ A)); exact up to the weight dtype's rounding."""
    return merge_lora(target, lora_sd, -strength)


class LoRALinear(nn.Module):
    """An nn.Linear with an unmerged low-rank update: y = x Wᵀ + b + strength·(x Aᵀ) Bᵀ.

    Shares the wrapped layer's `weight` / `bias` Parameters, so the base keys are unchanged; the factors are
    `lora_A.weight` [r, in] and `lora_B.weight` [out, r] (PEFT init: A kaiming-uniform, B zero).
    """

    def __init__(self, base: nn.Linear, rank: int, strength: float = 1.0, dtype: torch.dtype | None = None) -> None:
        super().__init__()
        self.in_features, self.out_features, self.strength = base.in_features, base.out_features, strength
        self.register_parameter("weight", base.weight)
        self.register_parameter("bias", base.bias)
        kw = {"device": base.weight.device, "dtype": dtype or base.weight.dtype}
        self.lora_A = nn.Linear(self.in_features, rank, bias=False, **kw)  # kaiming-uniform(a=√5), as PEFT
        self.lora_B = nn.Linear(rank, self.out_features, bias=False, **kw)
        nn.init.zeros_(self.lora_B.weight)  # zero: the wrapped layer starts equal to the base layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[..., in] -> [..., out]"""
        y = F.linear(x, self.weight, self.bias)
        delta = self.lora_B(self.lora_A(x.to(self.lora_A.weight.dtype)))
        return y + self.strength * delta.to(y.dtype)

    def extra_repr(self) -> str:
        return (
            f"in={self.in_features}, out={self.out_features}, rank={self.lora_A.out_features}, strength={self.strength}"
        )


def _replace(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent), child, module)


@torch.no_grad()
def apply_lora_unmerged(model: nn.Module, lora_sd: Mapping[str, torch.Tensor], strength: float = 1.0) -> list[str]:
    """Wrap every LoRA target nn.Linear in a LoRALinear holding (A, B); W is not touched. Returns module names."""
    pairs = match_lora(_shapes(lora_sd), {k: tuple(v.shape) for k, v in model.named_parameters()})
    names = []
    for key, (a_key, b_key) in pairs.items():
        name = key.removesuffix(".weight")
        base = model.get_submodule(name)
        if not isinstance(base, nn.Linear):
            raise ValueError(
                f"unmerged LoRA needs an nn.Linear target; {name} is {type(base).__name__} (merge it instead)"
            )
        layer = LoRALinear(base, lora_sd[a_key].shape[0], strength)
        layer.lora_A.weight.copy_(lora_sd[a_key].reshape(layer.lora_A.weight.shape))
        layer.lora_B.weight.copy_(lora_sd[b_key].reshape(layer.lora_B.weight.shape))
        _replace(model, name, layer)
        names.append(name)
    return sorted(names)


def remove_lora_unmerged(model: nn.Module) -> list[str]:
    """Put plain nn.Linear layers (same Parameters) back in place of every LoRALinear. Returns module names."""
    names = [n for n, m in model.named_modules() if isinstance(m, LoRALinear)]
    for name in names:
        layer = model.get_submodule(name)
        plain = nn.Linear(layer.in_features, layer.out_features, bias=layer.bias is not None, device="meta")
        plain.weight, plain.bias = layer.weight, layer.bias
        _replace(model, name, plain)
    return sorted(names)


def lora_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The factors of every LoRALinear under the official keys (`X.lora_A.default.weight`)."""
    out = {}
    for name, m in model.named_modules():
        if isinstance(m, LoRALinear):
            out[official_lora_key(f"{name}.lora_A.weight")] = m.lora_A.weight.detach()
            out[official_lora_key(f"{name}.lora_B.weight")] = m.lora_B.weight.detach()
    return out
