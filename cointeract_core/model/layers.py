"""Small shared layers: RMSNorm, fp32 LayerNorm, modulate(), the sinusoidal timestep embedding."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["RMSNorm", "layer_norm", "modulate", "sinusoidal_embedding", "Linear", "cast_to"]

Linear = nn.Linear


def cast_to(x: torch.Tensor, module: nn.Module) -> torch.Tensor:
    """`x` in the dtype of `module`'s first parameter (the compute dtype of that layer)."""
    return x.to(next(module.parameters()).dtype)


class RMSNorm(nn.Module):
    """RMSNorm over the last dim, computed in fp32 then cast back and scaled (Wan `WanRMSNorm`)."""

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[..., D] -> [..., D]"""
        xf = x.float()
        return (xf * torch.rsqrt(xf.pow(2).mean(dim=-1, keepdim=True) + self.eps)).type_as(x) * self.weight


class FP32LayerNorm(nn.LayerNorm):
    """LayerNorm evaluated in fp32 and cast back (Wan `WanLayerNorm`); affine only when asked."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[..., D] -> [..., D]"""
        weight = self.weight.float() if self.weight is not None else None
        bias = self.bias.float() if self.bias is not None else None
        return F.layer_norm(x.float(), self.normalized_shape, weight, bias, self.eps).type_as(x)


def layer_norm(x: torch.Tensor, eps: float) -> torch.Tensor:
    """Affine-free LayerNorm over the last dim in fp32: [..., D] -> [..., D] float32."""
    return F.layer_norm(x.float(), (x.shape[-1],), eps=eps)


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """AdaLN modulation x·(1+scale)+shift (broadcast over tokens)."""
    return x * (1 + scale) + shift


def sinusoidal_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """[N] timesteps -> [N, dim] float64 embedding [cos(t·ω), sin(t·ω)], ω_k = 10000^(-k/(dim/2)), cos first."""
    half = dim // 2
    pos = t.to(torch.float64)
    freqs = torch.pow(10000.0, -torch.arange(half, dtype=torch.float64, device=t.device).div(half))
    angles = torch.outer(pos, freqs)
    return torch.cat([torch.cos(angles), torch.sin(angles)], dim=1)
