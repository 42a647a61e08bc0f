"""A lossless toy codec behind the VideoVAE protocol: Wan's causal 4× time layout, pixel-unshuffle in space.

Latent frame 0 holds frame 0; latent frame k ≥ 1 holds frames 4k-3..4k stacked in channels; each frame is
pixel-unshuffled by `spatial_factor`. Channels = 4·3·s² (frame 0's three unused slots are zero).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["ToyCodec"]


class ToyCodec:
    """Exact inverse pair encode/decode; T = 1 + 4(T'-1) frames <-> T' latent frames."""

    temporal_factor = 4

    def __init__(self, spatial_factor: int = 4) -> None:
        self.spatial_factor = spatial_factor
        self.latent_channels = 4 * 3 * spatial_factor**2

    def encode(self, video: torch.Tensor) -> torch.Tensor:
        """[B, 3, T, H, W] in [-1, 1] -> [B, 12·s², 1 + (T-1)/4, H/s, W/s]."""
        b, c, t, h, w = video.shape
        s = self.spatial_factor
        if (t - 1) % 4 or h % s or w % s:
            raise ValueError(f"toy codec needs T = 1 + 4k frames and H, W divisible by {s}; got T={t}, {h}x{w}")
        first = F.pad(video[:, :, :1], (0, 0, 0, 0, 3, 0))  # [B, 3, 4, H, W]: frame 0 in the last slot
        frames = torch.cat([first, video[:, :, 1:]], dim=2).reshape(b, c, -1, 4, h, w)  # [B, 3, T', 4, H, W]
        frames = frames.permute(0, 2, 3, 1, 4, 5).reshape(b, -1, 12, h, w)  # [B, T', 4·3, H, W]
        lat = F.pixel_unshuffle(frames.flatten(0, 1), s)  # [B·T', 12·s², H/s, W/s]
        return lat.view(b, -1, self.latent_channels, h // s, w // s).transpose(1, 2)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """[B, 12·s², T', h, w] -> [B, 3, 1 + 4(T'-1), h·s, w·s]."""
        b, _, tl, h, w = latents.shape
        s = self.spatial_factor
        frames = F.pixel_shuffle(latents.transpose(1, 2).flatten(0, 1), s)  # [B·T', 12, H, W]
        frames = frames.view(b, tl, 4, 3, h * s, w * s).permute(0, 3, 1, 2, 4, 5).reshape(b, 3, 4 * tl, h * s, w * s)
        return frames[:, :, 3:]
