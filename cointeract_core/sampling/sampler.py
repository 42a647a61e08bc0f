"""Flow-matching sampler as the official scheduler: shifted σ table, Euler on v = noise − x0, CFG."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from .cache import StepCacheConfig

__all__ = ["SamplerConfig", "sigma_schedule", "model_timesteps", "cfg_combine", "sample", "StepCallback"]

# Called as callback(step, total, x) after every step; raise (e.g. ComfyUI's interrupt) to cancel.
StepCallback = Callable[[int, int, torch.Tensor], None]


@dataclass(frozen=True)
class SamplerConfig:
    """Run options of one generation (official batch_infer defaults)."""

    steps: int = 40
    shift: float = 7.0
    cfg: float = 7.0
    seed: int = 0
    quantize_timesteps: bool = True  # the official DiT receives bf16 timesteps (904.49 -> 904)
    cache: StepCacheConfig | None = None  # step cache (sampling/cache.py); None: every step runs the blocks

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise ValueError(f"steps must be >= 1, got {self.steps}")
        if self.shift <= 0:
            raise ValueError(f"shift must be > 0, got {self.shift}")
        if self.cache is not None and not isinstance(self.cache, StepCacheConfig):
            raise TypeError(f"cache must be a StepCacheConfig or None, got {type(self.cache).__name__}")


def sigma_schedule(steps: int, shift: float) -> torch.Tensor:
    """[steps + 1] float32: σ = linspace(1, 0, steps+1)[:-1] shifted s·σ/(1+(s−1)σ), then a final 0."""
    sigma = torch.linspace(1.0, 0.0, steps + 1)[:-1]
    sigma = shift * sigma / (1 + (shift - 1) * sigma)
    return torch.cat([sigma, sigma.new_zeros(1)])


def model_timesteps(sigmas: torch.Tensor, quantize: bool = True) -> torch.Tensor:
    """[steps] timesteps 1000·σ fed to the DiT, rounded through bf16 when `quantize` (the official behaviour)."""
    t = sigmas[:-1] * 1000.0
    return t.to(torch.bfloat16).float() if quantize else t


def cfg_combine(v_pos: torch.Tensor, v_neg: torch.Tensor, scale: float) -> torch.Tensor:
    """Classifier-free guidance v_neg + g·(v_pos − v_neg)."""
    return v_neg + scale * (v_pos - v_neg)


def sample(
    velocity: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    noise: torch.Tensor,
    cfg: SamplerConfig,
    callback: StepCallback | None = None,
) -> torch.Tensor:
    """Integrate x from noise (σ=1) to σ=0 with Euler steps; velocity(x, t [1]) -> v (already guided)."""
    sigmas = sigma_schedule(cfg.steps, cfg.shift)
    timesteps = model_timesteps(sigmas, cfg.quantize_timesteps)
    x = noise
    for i in range(cfg.steps):
        v = velocity(x, timesteps[i : i + 1].to(x.device))
        x = x + v * float(sigmas[i + 1] - sigmas[i])
        if callback is not None:
            callback(i + 1, cfg.steps, x)
    return x
