"""Finetunes applied on top of a loaded model: our trainer's exports (the official CoInteract layout).

A finetune file holds LoRA factors (`X.lora_A.default.weight`, `X.lora_B.default.weight`, alpha already folded
into B) and full tensors of the parts trained in full (MoE router / experts, HOI `depth_*`, `cond_encoder`).
`finetune_updates` matches them to a model's parameters: each LoRA pair becomes W += strength·(B @ A) on its
target, each full tensor replaces the parameter it names. Nothing here writes a weight: callers turn the updates
into patches (ComfyUI's ModelPatcher) or apply them to copies.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

from .checkpoint import detect_family, is_cointeract_key, to_model_key
from .lora import is_lora_key, match_lora

__all__ = ["FinetuneUpdates", "finetune_updates"]


@dataclass(frozen=True)
class FinetuneUpdates:
    """LoRA updates {parameter: (up = B [out, r], down = A [r, in])} and full replacements {parameter: tensor}."""

    lora: dict[str, tuple[torch.Tensor, torch.Tensor]]
    full: dict[str, torch.Tensor]


def _part_hint(keys: Sequence[str]) -> str:
    if any("depth_" in k for k in keys):
        return "the HOI stream (depth_* weights): load a CoInteract checkpoint with HOI weights in the model loader"
    if any(".ffn." in k and ("router" in k or "expert" in k) for k in keys):
        return "the Human-Aware MoE: load the CoInteract checkpoint in the model loader"
    return "modules this model does not have; it was trained for another model"


def finetune_updates(
    sd: Mapping[str, torch.Tensor], params: Mapping[str, Sequence[int]], has_moe: bool, name: str = "finetune"
) -> FinetuneUpdates:
    """Match a finetune state dict to a model's parameter shapes {name: shape}; raises a ValueError naming what
    does not fit (another model family, another size, parts the model lacks)."""
    shapes = {k: tuple(v.shape) for k, v in sd.items()}
    if not shapes or detect_family(shapes) != "cointeract":
        raise ValueError(
            f"{name} is not a CoInteract finetune (expected only LoRA / MoE / HOI / cond_encoder keys, as "
            "`cointeract train` exports); base models go in the model loader"
        )
    lora_keys = [k for k in sd if is_lora_key(k)]
    try:
        pairs = match_lora({k: shapes[k] for k in lora_keys}, params)
    except ValueError as err:
        raise ValueError(f"{name}: {err}") from err
    lora = {target: (sd[b], sd[a]) for target, (a, b) in pairs.items()}
    full, missing, mismatched = {}, [], []
    for key in (k for k in sd if not is_lora_key(k) and is_cointeract_key(k)):
        target = to_model_key(key, has_moe)
        if target not in params:
            missing.append(key)
        elif tuple(params[target]) != shapes[key]:
            mismatched.append(f"{key} {list(shapes[key])} vs model {list(params[target])}")
        else:
            full[target] = sd[key]
    if missing:
        raise ValueError(f"{name} carries {len(missing)} tensors for {_part_hint(missing)} (e.g. {missing[0]})")
    if mismatched:
        raise ValueError(f"{name} was trained for another model size: {', '.join(mismatched[:3])}")
    return FinetuneUpdates(lora, full)
