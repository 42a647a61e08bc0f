"""Attention: one function over backends, plus the Wan self- and cross-attention modules."""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .layers import RMSNorm, cast_to
from .rope import apply_rope
from .shard import SequenceShard
from .visibility import AttentionGroup

__all__ = ["attention", "split_linear", "resolve_backend", "BACKENDS", "SelfAttention", "CrossAttention"]
log = logging.getLogger(__name__)


def _sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    return F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)).transpose(1, 2)


def _xformers(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    import xformers.ops  # noqa: PLC0415 - optional dependency, imported only when chosen

    return xformers.ops.memory_efficient_attention(q, k, v)


def _flash_attn(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    from flash_attn import flash_attn_func  # noqa: PLC0415 - optional dependency

    if q.dtype not in (torch.float16, torch.bfloat16) or not q.is_cuda:
        raise ValueError(f"flash_attn needs fp16/bf16 CUDA tensors, got {q.dtype} on {q.device}; use 'sdpa'")
    return flash_attn_func(q, k, v)


BACKENDS: dict[str, tuple[str | None, Callable]] = {
    "sdpa": (None, _sdpa),
    "xformers": ("xformers", _xformers),
    "flash_attn": ("flash_attn", _flash_attn),
}


def resolve_backend(name: str) -> str:
    """Validate a backend name; `auto` picks once (flash_attn > xformers > sdpa, by importability) and logs it."""
    if name == "auto":
        on_cuda = torch.cuda.is_available()
        for candidate in ("flash_attn", "xformers"):
            if on_cuda and importlib.util.find_spec(candidate) is not None:
                log.info("attention backend: %s (auto)", candidate)
                return candidate
        log.info("attention backend: sdpa (auto)")
        return "sdpa"
    if name not in BACKENDS:
        raise ValueError(f"unknown attention backend {name!r}; choose one of {sorted(BACKENDS)} or 'auto'")
    module = BACKENDS[name][0]
    if module is not None and importlib.util.find_spec(module) is None:
        raise ValueError(f"attention backend {name!r} needs the '{module}' package; install it or use 'sdpa'")
    return name


def split_linear(layer: nn.Module, x: torch.Tensor, splits: tuple[int, ...] | None) -> torch.Tensor:
    """`layer` applied to [B, S, D] token chunks of the given sizes (dim 1) and concatenated; whole when None.

    A single chunk still goes through `torch.split`, so the autograd graph of the main stream has the same shape
    (and sums its gradients in the same order) whether or not HOI chunks follow: stage-2 RGB gradients are then
    bit-identical with and without HOI tokens.
    """
    if not splits:
        return layer(x)
    parts = [layer(part) for part in torch.split(x, list(splits), dim=1)]
    return torch.cat(parts, dim=1) if len(parts) > 1 else parts[0]


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, backend: str = "sdpa") -> torch.Tensor:
    """Softmax attention with scale 1/√d. q [B, Sq, H, d], k/v [B, Sk, H, d] -> [B, Sq, H, d]."""
    return BACKENDS[backend][1](q, k, v)


class SelfAttention(nn.Module):
    """Wan self-attention: q/k RMSNorm over the full width, 3-D RoPE, grouped dense calls (see visibility.py)."""

    def __init__(self, dim: int, num_heads: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.q, self.k, self.v, self.o = (nn.Linear(dim, dim) for _ in range(4))
        self.norm_q, self.norm_k = RMSNorm(dim, eps), RMSNorm(dim, eps)

    def forward(
        self,
        x: torch.Tensor,
        freqs: torch.Tensor,
        groups: tuple[AttentionGroup, ...],
        backend: str = "sdpa",
        splits: tuple[int, ...] | None = None,
        shard: SequenceShard | None = None,
    ) -> torch.Tensor:
        """x [B, S, D], freqs [S, d/2] complex, groups tiling S in order -> [B, S, D].

        `splits` (token counts summing to S) runs the projections per chunk, so the main stream's numbers never
        depend on how many HOI tokens ride along (matmul kernels may differ with the row count on GPU).
        With a `shard` (sequence parallel), x and freqs hold this process's tokens only; q, k, v are exchanged for
        all tokens of H/N heads (Ulysses) so the groups, which index the whole sequence, run unchanged.
        """
        b, s, d = x.shape
        x = cast_to(x, self.q)
        q = apply_rope(self.norm_q(split_linear(self.q, x, splits)).view(b, s, self.num_heads, -1), freqs)
        k = apply_rope(self.norm_k(split_linear(self.k, x, splits)).view(b, s, self.num_heads, -1), freqs)
        v = split_linear(self.v, x, splits).view(b, s, self.num_heads, -1)
        if shard is not None:
            q, k, v = shard.to_heads([q, k, v])  # [B, S_all, H/N, d]
        outs = []
        for group in groups:
            keys = torch.cat([k[:, sl] for sl in group.keys], dim=1) if len(group.keys) > 1 else k[:, group.keys[0]]
            vals = torch.cat([v[:, sl] for sl in group.keys], dim=1) if len(group.keys) > 1 else v[:, group.keys[0]]
            outs.append(attention(q[:, group.queries], keys, vals, backend))
        out = torch.cat(outs, dim=1) if len(outs) > 1 else outs[0]
        if shard is not None:
            out = shard.to_tokens(out)  # [B, S, H, d]
        return split_linear(self.o, out.reshape(b, s, d), splits)


class CrossAttention(nn.Module):
    """Wan cross-attention (text or audio): q from x, k/v from context, q/k RMSNorm, no RoPE, no mask."""

    def __init__(self, dim: int, num_heads: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.q, self.k, self.v, self.o = (nn.Linear(dim, dim) for _ in range(4))
        self.norm_q, self.norm_k = RMSNorm(dim, eps), RMSNorm(dim, eps)

    def forward(self, x: torch.Tensor, context: torch.Tensor, backend: str = "sdpa") -> torch.Tensor:
        """x [B, S, D], context [B, L, D] -> [B, S, D]."""
        b, s, d = x.shape
        x, context = cast_to(x, self.q), cast_to(context, self.q)
        hd = d // self.num_heads  # explicit: a sequence-parallel share may hold 0 tokens of a segment
        q = self.norm_q(self.q(x)).view(b, s, self.num_heads, hd)
        k = self.norm_k(self.k(context)).view(b, context.shape[1], self.num_heads, hd)
        v = self.v(context).view(b, context.shape[1], self.num_heads, hd)
        return self.o(attention(q, k, v, backend).reshape(b, s, d))
