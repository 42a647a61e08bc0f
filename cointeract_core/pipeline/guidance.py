"""Classifier-free guidance as one DiT call on a batch of 2 (positive, negative) instead of two calls.

The two branches differ only in the text context, the audio features (zeroed in the negative) and the HOI context;
person, product, motion and pose are shared. Batching halves the calls and feeds the GPU larger matmuls, at twice
the activation memory: `auto` batches on CUDA when the memory planner's doubled activations fit in free memory,
and keeps two calls on the CPU (measured no faster batched there: README "Samplers and fast settings").
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F

from ..model.dit import DiTOutput
from ..model.layout import SequenceLayout
from ..runtime.memory_plan import DEFAULT_RESERVE, activation_bytes, device_free_bytes

__all__ = ["use_batched_cfg", "stack_branches", "split_branches"]


def use_batched_cfg(mode: str, model: torch.nn.Module, layout: SequenceLayout, device: torch.device | str) -> bool:
    """Whether to run CFG as a batch of 2: "on" / "off" as asked; "auto" on CUDA when 2× the activations of
    `layout` (memory_plan.activation_bytes) plus the planner's reserve fit in the device's free memory."""
    if mode in ("on", "off"):
        return mode == "on"
    if mode != "auto":
        raise ValueError(f"unknown cfg_batch {mode!r}; choose one of auto, on, off")
    device = torch.device(device)
    if device.type != "cuda":
        return False
    return 2 * activation_bytes(model.cfg, layout) + DEFAULT_RESERVE <= device_free_bytes(device)


def _pad_rows(a: torch.Tensor, rows: int) -> torch.Tensor:
    """Text [1, L, D] -> [1, rows, D] with zero rows (the DiT zero-pads the context to text_len itself)."""
    return F.pad(a, (0, 0, 0, rows - a.shape[1]))


def stack_branches(pos: dict, neg: dict) -> dict:
    """DiT keyword inputs of the two branches (tensors [1, ...]) -> one batch [2, ...]; non-tensors must agree."""
    if pos.keys() != neg.keys():
        raise ValueError(f"the CFG branches take different inputs: {sorted(pos)} vs {sorted(neg)}")
    out = {}
    for key, a in pos.items():
        b = neg[key]
        if not isinstance(a, torch.Tensor):
            if a != b:
                raise ValueError(f"the CFG branches differ in {key!r} ({a!r} vs {b!r}); they cannot share a batch")
            out[key] = a
        elif key in ("context", "hoi_context"):
            rows = max(a.shape[1], b.shape[1])
            out[key] = torch.cat([_pad_rows(a, rows), _pad_rows(b, rows)])
        else:
            out[key] = torch.cat([a, b])
    return out


def split_branches(out: DiTOutput) -> tuple[DiTOutput, DiTOutput]:
    """Output of a batch of 2 -> (positive, negative), each with batch 1 (router logits [layers, 1, N, 3])."""

    def half(i: int) -> DiTOutput:
        return dataclasses.replace(
            out,
            velocity=out.velocity[i : i + 1],
            hoi_velocity=None if out.hoi_velocity is None else out.hoi_velocity[i : i + 1],
            router_logits=None if out.router_logits is None else out.router_logits[:, i : i + 1],
        )

    return half(0), half(1)
