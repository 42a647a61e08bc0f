"""Fresh noise for the re-noising samplers (lcm), per clip: the RGB and HOI latents draw from separate seeded
streams, so the RGB frames stay bit-identical with the HOI preview on or off."""

from __future__ import annotations

import torch

from ..sampling.lcm import noise_stream
from ..sampling.protocols import NoiseSampler

__all__ = ["clip_renoise"]


def clip_renoise(seed: int, frames: int) -> NoiseSampler:
    """Noise like the clip state [1, C, F (+F HOI), h, w]: RGB from stream (seed, 0), HOI from (seed, 1)."""
    rgb, hoi = noise_stream(seed, 0), noise_stream(seed, 1)

    def draw(x: torch.Tensor) -> torch.Tensor:
        if x.shape[2] == frames:
            return rgb(x)
        return torch.cat([rgb(x[:, :, :frames]), hoi(x[:, :, frames:])], dim=2)

    return draw
