"""DiTBlock: one Wan2.2-S2V transformer block with CoInteract's MoE FFN and HOI-stream modulation.

Per segment modulation (zero_timestep): target tokens use the real-t row of the time projection, person/product/
motion tokens the t=0 row, HOI tokens `depth_modulation` + the t=0 row (the official quirk).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .attention import CrossAttention, SelfAttention
from .config import DiTConfig
from .layers import FP32LayerNorm, cast_to, layer_norm, modulate
from .layout import SequenceLayout
from .moe import FeedForward, MoEFFN
from .shard import LocalCounts, SequenceShard, local_counts
from .visibility import AttentionGroup

__all__ = ["DiTBlock", "BlockContext"]

SHIFT_MSA, SCALE_MSA, GATE_MSA, SHIFT_MLP, SCALE_MLP, GATE_MLP = range(6)


@dataclass(frozen=True)
class BlockContext:
    """What every block of one forward shares (built once by the model; never stored on modules)."""

    e0: torch.Tensor  # [B, 6, 2, D] time projection for (t, 0), fp32
    layout: SequenceLayout
    groups: tuple[AttentionGroup, ...]
    freqs: torch.Tensor  # [S, head_dim/2] complex128
    text: torch.Tensor  # [B, text_len, D]
    hoi_text: torch.Tensor | None  # [B, text_len, D]
    experts_on: torch.Tensor  # [B] bool
    run_router: bool
    any_experts: bool = True  # experts_on.any(), read once per forward on the host
    backend: str = "sdpa"
    shard: SequenceShard | None = None  # sequence parallel: the tokens this process holds (None: all of them)

    @property
    def counts(self) -> LocalCounts:
        """Segment boundaries of the tokens this process holds (the whole layout without a shard)."""
        lay = self.layout
        return local_counts(lay.n_target, lay.n_main, lay.total, self.shard)


class DiTBlock(nn.Module):
    """x + gate·SelfAttn(mod(LN(x))); x + CrossAttn(LN3(x)); x + gate·FFN(mod(LN(x))) — residual stream in fp32."""

    def __init__(self, cfg: DiTConfig) -> None:
        super().__init__()
        dim, self.eps = cfg.dim, cfg.eps
        self.modulation = nn.Parameter(torch.randn(1, 6, dim) / dim**0.5)
        self.self_attn = SelfAttention(dim, cfg.num_heads, cfg.eps)
        self.norm3 = FP32LayerNorm(dim, eps=cfg.eps, elementwise_affine=True)
        self.cross_attn = CrossAttention(dim, cfg.num_heads, cfg.eps)
        self.ffn = MoEFFN(dim, cfg.ffn_dim, cfg.moe) if cfg.moe else FeedForward(dim, cfg.ffn_dim)
        if cfg.hoi:
            self.depth_modulation = nn.Parameter(torch.randn(1, 6, dim) / dim**0.5)

    def _segment_mods(self, ctx: BlockContext) -> list[tuple[int, torch.Tensor]]:
        """(token count, [B, 6, 1, D] modulation) per segment: target, other main tokens, HOI."""
        n = ctx.counts
        mod = self.modulation.float().unsqueeze(2) + ctx.e0  # [B, 6, 2, D]
        segs = [(n.n_target, mod[:, :, 0:1]), (n.n_main - n.n_target, mod[:, :, 1:2])]
        if ctx.layout.hoi:
            segs.append((n.total - n.n_main, (self.depth_modulation.float().unsqueeze(2) + ctx.e0)[:, :, 1:2]))
        return segs

    @staticmethod
    def _modulated(x: torch.Tensor, segs: list, shift: int, scale: int, eps: float) -> torch.Tensor:
        parts = torch.split(layer_norm(x, eps), [n for n, _ in segs], dim=1)
        return torch.cat([modulate(p, m[:, shift], m[:, scale]) for p, (_, m) in zip(parts, segs)], dim=1)

    @staticmethod
    def _gated(y: torch.Tensor, segs: list, gate: int) -> torch.Tensor:
        parts = torch.split(y.float(), [n for n, _ in segs], dim=1)
        return torch.cat([p * m[:, gate] for p, (_, m) in zip(parts, segs)], dim=1)

    def _cross(self, x: torch.Tensor, ctx: BlockContext) -> torch.Tensor:
        """Main tokens read the prompt, HOI tokens the HOI prompt, through the same weights."""
        h, n_main = self.norm3(x), ctx.counts.n_main
        out = self.cross_attn(h[:, :n_main], ctx.text, ctx.backend)
        if ctx.layout.hoi:
            out = torch.cat([out, self.cross_attn(h[:, n_main:], ctx.hoi_text, ctx.backend)], dim=1)
        return out.float()

    def forward(self, x: torch.Tensor, ctx: BlockContext) -> tuple[torch.Tensor, torch.Tensor | None]:
        """x [B, S, D] fp32 -> (x [B, S, D], router logits [B, N_target, 3] or None)."""
        segs, n = self._segment_mods(ctx), ctx.counts
        splits = (n.n_main, n.total - n.n_main) if ctx.layout.hoi else (n.n_main,)
        y = self._modulated(x, segs, SHIFT_MSA, SCALE_MSA, self.eps)
        y = self.self_attn(y, ctx.freqs, ctx.groups, ctx.backend, splits, ctx.shard)
        x = x + self._gated(y, segs, GATE_MSA)  # [B, S, D]
        x = x + self._cross(x, ctx)  # [B, S, D]
        y = self._modulated(x, segs, SHIFT_MLP, SCALE_MLP, self.eps)
        y, logits = self._ffn(y, ctx)
        return x + self._gated(y, segs, GATE_MLP), logits  # [B, S, D]

    def _ffn(self, y: torch.Tensor, ctx: BlockContext) -> tuple[torch.Tensor, torch.Tensor | None]:
        """MoE (experts on target tokens) or plain FFN; HOI tokens, when present, take the base FFN separately."""
        n = ctx.counts
        main, hoi = (y[:, : n.n_main], y[:, n.n_main :]) if ctx.layout.hoi else (y, None)
        if isinstance(self.ffn, MoEFFN):
            out, logits = self.ffn(main, n.n_target, ctx.experts_on, ctx.run_router, ctx.any_experts)
            base = self.ffn.ffn_base
        else:
            out, logits, base = self.ffn(cast_to(main, self.ffn)), None, self.ffn
        if hoi is not None:
            out = torch.cat([out, base(cast_to(hoi, base))], dim=1)
        return out, logits
