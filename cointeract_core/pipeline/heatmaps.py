"""Router heatmaps: hand and face probabilities per token, upsampled and overlaid on the frames."""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["router_probabilities", "overlay_heatmaps"]

HAND_COLOUR = (1.0, 0.15, 0.1)
FACE_COLOUR = (0.1, 0.4, 1.0)


def router_probabilities(logits: torch.Tensor) -> torch.Tensor:
    """[layers, B, N, 3] router logits -> [N, 3] softmax probabilities averaged over layers (batch item 0)."""
    return torch.softmax(logits.float(), dim=-1).mean(dim=0)[0]


def overlay_heatmaps(frames: torch.Tensor, maps: torch.Tensor, strength: float = 0.6) -> torch.Tensor:
    """frames [T, H, W, 3] in [0,1], maps [T, h', w', 2] (hand, face) -> overlaid frames [T, H, W, 3]."""
    t, h, w, _ = frames.shape
    up = F.interpolate(maps.permute(0, 3, 1, 2).float(), size=(h, w), mode="nearest").permute(0, 2, 3, 1)
    colours = torch.tensor([HAND_COLOUR, FACE_COLOUR])  # [2, 3]
    tint = (up[..., :, None] * colours).sum(dim=-2).clamp(0, 1)  # [T, H, W, 3]
    alpha = (up.max(dim=-1, keepdim=True).values * strength).clamp(0, 1)
    return frames * (1 - alpha) + tint * alpha
