"""Outside ComfyUI: a small stand-in for comfy.model_patcher.ModelPatcher, in plain torch.

It holds the model, its load / offload devices and a list of weight patches per parameter; `clone()` shares the
model and copies the patch lists, so a clone with LoRA patches never changes what the original computes.
`load()` moves the model to the load device and swaps each patched parameter for a new tensor (original kept
aside), `unload()` puts the originals back and moves the model to the offload device: the weights of the
model itself are never written. Patches use ComfyUI's shapes: `(strength, ("lora", (up, down)))` adds
strength·(up @ down) to the weight, `(strength, ("set", (tensor,)))` replaces it, and `(strength, ("update",
(update,)))` adds strength·ΔW of a core `lora_delta.Update` (any LoRA layout; ComfyUI gets its own adapters).
All of a weight's patches are summed in float64 and rounded once (`lora_stack.merged_weight`).
"""

from __future__ import annotations

import copy
import logging
from typing import Any

import torch
from torch import nn

from ..cointeract_core.weights.lora_delta import Update
from ..cointeract_core.weights.lora_stack import merged_weight

log = logging.getLogger(__name__)

__all__ = ["FallbackPatcher"]


def _as_update(key: str, kind: str, tensors: tuple) -> Update:
    """A patch value as a core Update."""
    if kind == "set":
        return Update(key, "set", {"set_weight": tensors[0]})
    if kind == "lora":
        return Update(key, "lora", {"lora_up.weight": tensors[0], "lora_down.weight": tensors[1]})
    if kind == "update":
        return tensors[0]
    raise ValueError(f"unknown patch kind {kind!r} (expected 'lora', 'set' or 'update')")


def _patched(key: str, weight: torch.Tensor, patches: list[tuple[float, tuple[str, tuple]]]) -> torch.Tensor:
    """A new tensor: `weight` with `patches` applied in order, summed in float64, stored in weight's dtype."""
    return merged_weight(weight, [(strength, _as_update(key, *value)) for strength, value in patches])


class FallbackPatcher:
    """comfy.model_patcher.ModelPatcher's attributes and methods that the nodes use, in plain torch."""

    def __init__(self, model: nn.Module, load_device: torch.device, offload_device: torch.device) -> None:
        self.model = model
        self.load_device = load_device
        self.offload_device = offload_device
        self.patches: dict[str, list[tuple[float, tuple[str, tuple]]]] = {}
        self.model_options: dict[str, Any] = {"transformer_options": {}}  # run options; clone() copies them
        self.parent: FallbackPatcher | None = None
        self.loaded = False
        self._backup: dict[str, nn.Parameter] = {}

    def clone(self) -> FallbackPatcher:
        """A patcher over the same model with its own copy of the patch lists and model_options (as ComfyUI's)."""
        n = FallbackPatcher(self.model, self.load_device, self.offload_device)
        n.patches = {k: list(v) for k, v in self.patches.items()}
        n.model_options = copy.deepcopy(self.model_options)
        n.parent = self
        return n

    def is_clone(self, other: Any) -> bool:
        return getattr(other, "model", None) is self.model

    def add_patches(self, patches: dict[str, tuple[str, tuple]], strength_patch: float = 1.0) -> list[str]:
        """Record patches {parameter name: ("lora", (up, down)) | ("set", (tensor,)) | ("update", (Update,))};
        returns the names used."""
        names = dict(self.model.named_parameters())
        for key, value in patches.items():
            if key not in names:
                raise KeyError(f"{key} is not a parameter of the model")
            self.patches.setdefault(key, []).append((strength_patch, value))
        return list(patches)

    def load(self) -> nn.Module:
        """Move the model to the load device with this patcher's patches applied; returns the model."""
        if self.loaded:
            return self.model
        for other in _ACTIVE.pop(id(self.model), []):
            if other is not self:
                other.unload()
        self.model.to(self.load_device)
        for key, patches in self.patches.items():
            owner, _, name = key.rpartition(".")
            module = self.model.get_submodule(owner)
            original = module._parameters[name]
            self._backup[key] = original
            module._parameters[name] = nn.Parameter(_patched(key, original, patches), requires_grad=False)
        self.loaded = True
        _ACTIVE[id(self.model)] = [self]
        return self.model

    def unload(self) -> None:
        """Put the original parameters back and move the model to the offload device."""
        for key, original in self._backup.items():
            owner, _, name = key.rpartition(".")
            self.model.get_submodule(owner)._parameters[name] = original
        self._backup.clear()
        if self.loaded:
            self.model.to(self.offload_device)
        self.loaded = False
        if _ACTIVE.get(id(self.model)) == [self]:
            del _ACTIVE[id(self.model)]


# id(model) -> the patcher whose patches are applied to it now (one at a time, as in ComfyUI).
_ACTIVE: dict[int, list[FallbackPatcher]] = {}
