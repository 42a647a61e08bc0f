"""Which token segments each query segment may see (co-generation attention, Eq. 4 of arXiv 2604.19636).

    queries \\ keys   target  person  product  motion  hoi
    full (stage 1)    all queries see all keys
    asymmetric (stage 2, inference):
      main (target, person, product, motion)   ✓  ✓  ✓  ✓  ✗
      hoi                                       ✓  ✗  ✓  ✗  ✓     (keys ordered [hoi, target, product])

The table is executed as dense attention calls over segment groups; an N×N mask is never built for the model
(`dense_mask` exists for tests and benchmarks only).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from .layout import SequenceLayout

__all__ = ["AttentionGroup", "attention_groups", "dense_mask", "AttentionMode"]

AttentionMode = Literal["full", "asymmetric"]


@dataclass(frozen=True)
class AttentionGroup:
    """One dense attention call: queries from a contiguous slice, keys/values from the listed slices."""

    queries: slice
    keys: tuple[slice, ...]


def attention_groups(layout: SequenceLayout, mode: AttentionMode) -> tuple[AttentionGroup, ...]:
    """The attention calls for `layout` under `mode`; their query slices tile the sequence in order."""
    if mode not in ("full", "asymmetric"):
        raise ValueError(f"unknown attention mode {mode!r}; expected 'full' or 'asymmetric'")
    everything = slice(0, layout.total)
    if mode == "full" or not layout.hoi:
        return (AttentionGroup(everything, (everything,)),)
    seg = layout.segments()
    main = slice(0, layout.n_main)
    hoi_keys = (seg["hoi"], seg["target"]) + ((seg["product"],) if layout.product else ())
    return AttentionGroup(main, (main,)), AttentionGroup(seg["hoi"], hoi_keys)


def dense_mask(layout: SequenceLayout, mode: AttentionMode) -> torch.Tensor:
    """[total, total] bool mask (True = may attend) equivalent to `attention_groups` (tests/benchmarks only)."""
    mask = torch.zeros(layout.total, layout.total, dtype=torch.bool)
    for group in attention_groups(layout, mode):
        for keys in group.keys:
            mask[group.queries, keys] = True
    return mask
