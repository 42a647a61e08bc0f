"""FramePack motion tokens: the 19 history latents packed at 1×, 2× and 4× compression (Wan2.2-S2V)."""

from __future__ import annotations

import torch
from torch import nn

from .layers import cast_to

__all__ = ["FramePackMotioner"]


class FramePackMotioner(nn.Module):
    """Right-align history latents in a zero buffer, split oldest-first 16 | 2 | 1, embed with strided convs.

    Token order is nearest first: [1× (proj) | 2× (proj_2x) | 4× (proj_4x)].
    """

    def __init__(self, in_dim: int, dim: int, buckets: tuple[int, int, int] = (1, 2, 16)) -> None:
        super().__init__()
        self.in_dim, self.buckets = in_dim, buckets
        self.proj = nn.Conv3d(in_dim, dim, kernel_size=(1, 2, 2), stride=(1, 2, 2))
        self.proj_2x = nn.Conv3d(in_dim, dim, kernel_size=(2, 4, 4), stride=(2, 4, 4))
        self.proj_4x = nn.Conv3d(in_dim, dim, kernel_size=(4, 8, 8), stride=(4, 8, 8))

    def forward(self, motion: torch.Tensor) -> torch.Tensor:
        """motion [B, C, T, H, W] latents, oldest first -> [B, n_motion, D] tokens."""
        b, c, t, h, w = motion.shape
        total = sum(self.buckets)
        keep = min(total, t)
        buf = motion.new_zeros(b, c, total, h, w)
        buf[:, :, total - keep :] = motion[:, :, t - keep :]
        far, mid, near = cast_to(buf, self.proj).split(self.buckets[::-1], dim=2)
        groups = (self.proj(near), self.proj_2x(mid), self.proj_4x(far))
        return torch.cat([g.flatten(2).transpose(1, 2) for g in groups], dim=1)
