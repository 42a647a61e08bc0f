"""3-D rotary position embedding from explicit (t, h, w) position ids (interleaved pairs, Wan head-dim split)."""

from __future__ import annotations

import torch

__all__ = ["axis_dims", "rope_frequencies", "apply_rope"]


def axis_dims(head_dim: int) -> tuple[int, int, int]:
    """Real dims of a head given to (t, h, w): Wan's split d-4⌊d/6⌋, 2⌊d/6⌋, 2⌊d/6⌋ (44/42/42 at d=128)."""
    hw = 2 * (head_dim // 6)
    return head_dim - 2 * hw, hw, hw


def rope_frequencies(positions: torch.Tensor, head_dim: int, theta: float = 10000.0) -> torch.Tensor:
    """[S, 3] integer (t, h, w) positions -> [S, head_dim/2] complex128 multipliers exp(i·pos·θ_j).

    Each axis uses its own exponent denominator (θ_j = theta^(-2j/dim_axis)). Negative positions are true
    negative rotations (the conjugate of the positive entry), as Wan does for motion frames.
    """
    parts = []
    for axis, dim in enumerate(axis_dims(head_dim)):
        inv = 1.0 / torch.pow(theta, torch.arange(0, dim, 2, dtype=torch.float64, device=positions.device).div(dim))
        angles = torch.outer(positions[:, axis].to(torch.float64), inv)
        parts.append(torch.polar(torch.ones_like(angles), angles))
    return torch.cat(parts, dim=1)


def apply_rope(x: torch.Tensor, freqs: torch.Tensor) -> torch.Tensor:
    """Rotate [B, S, H, d] by [S, d/2] complex multipliers; channel pairs (2k, 2k+1) form complex k (float64)."""
    b, s, h, d = x.shape
    xc = torch.view_as_complex(x.to(torch.float64).reshape(b, s, h, d // 2, 2))
    return torch.view_as_real(xc * freqs[None, :, None, :]).reshape(b, s, h, d).type_as(x)
