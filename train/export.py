"""Export the trained weights in the official CoInteract layout, loadable by our loaders and the official code.

- LoRA: `X.lora_A.default.weight` = A, `X.lora_B.default.weight` = (alpha/r)·B, so the official merge
  W += 1.0·B·A (DiffSynth GeneralLoRALoader, and `cointeract_core.weights.lora.merge_lora` at strength 1) gives the
  trained model. FFN factors sit under `ffn.ffn_base.{0,2}` as official.
- Full weights of every other trainable parameter: MoE router / experts, HOI `depth_*` (and `cond_encoder` if a
  stage trained it).
- Metadata: `cointeract_config` (the DiT config, which `from_state_dict` reads), stage, step, rank, alpha,
  `lora_scale_folded` and the training config.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path

import torch
from torch import nn

from ..cointeract_core.model.config import DiTConfig, config_to_json
from ..cointeract_core.weights.checkpoint import save_cointeract_checkpoint
from .config import LoRAConfig
from .lora_peft import ADAPTER, base_param_name, lora_scaling

__all__ = ["trainable_state_dict", "export_state_dict", "export_checkpoint"]


@torch.no_grad()
def trainable_state_dict(
    state: Mapping[str, torch.Tensor], trainable: Iterable[str], lora: LoRAConfig, dtype: torch.dtype = torch.float32
) -> dict[str, torch.Tensor]:
    """Official-layout tensors of the `trainable` names of a (peft) model state: LoRA with alpha/r folded into B,
    everything else in full. `state` uses the model's own names (`X.base_layer.weight`, `X.lora_A.default.weight`)."""
    scale = lora_scaling(lora)
    out: dict[str, torch.Tensor] = {}
    for name in sorted(trainable):
        tensor = state[name].detach().float()
        if f".lora_B.{ADAPTER}." in name:
            tensor = tensor * scale
        out[base_param_name(name)] = tensor.to(dtype).clone()
    return out


def export_state_dict(
    state: Mapping[str, torch.Tensor],
    trainable: Iterable[str],
    path: str | Path,
    *,
    dit_cfg: DiTConfig,
    lora: LoRAConfig,
    stage: str,
    step: int,
    dtype: torch.dtype = torch.float32,
    train_config_json: str | None = None,
) -> Path:
    """Write `trainable_state_dict` atomically to `path` (safetensors) with its metadata; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    metadata = {
        "cointeract_config": config_to_json(dit_cfg),
        "stage": stage,
        "step": str(step),
        "rank": str(lora.rank),
        "alpha": repr(float(lora.alpha)),
        "lora_scale_folded": "alpha/rank is folded into lora_B; merge with strength 1.0",
    }
    if train_config_json is not None:
        metadata["train_config"] = train_config_json
    save_cointeract_checkpoint(trainable_state_dict(state, trainable, lora, dtype), path, metadata)
    return path


def export_checkpoint(
    model: nn.Module, path: str | Path, *, lora: LoRAConfig, stage: str, step: int, dtype: torch.dtype = torch.float32
) -> Path:
    """`export_state_dict` of an (unwrapped) peft CoInteractDiT: its requires_grad parameters."""
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    return export_state_dict(
        model.state_dict(), trainable, path, dit_cfg=model.cfg, lora=lora, stage=stage, step=step, dtype=dtype
    )
