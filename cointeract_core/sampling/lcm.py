"""The few-step sampler of step-distilled LoRAs (lightx2v StepDistill-CfgDistill, its `WanStepDistillScheduler`).

Each step predicts x0 = x − σ·v and, unless the next σ is 0, re-noises it with fresh noise:
x' = (1 − σ')·x0 + σ'·ε (ComfyUI's `lcm`; diffusers' FlowMatchEuler with stochastic_sampling). The fresh noise comes
from a seeded generator, so a seed gives the same video every time.
"""

from __future__ import annotations

import numpy as np
import torch

from .protocols import FlowVelocity, NoiseSampler, StepCallback

__all__ = ["lcm", "noise_stream"]


def noise_stream(seed: int, stream: int = 0) -> NoiseSampler:
    """Fresh N(0, 1) noise like x (drawn fp32 on the CPU, so the same on every device) from a generator seeded by
    (seed, stream) through numpy's SeedSequence: independent of torch.manual_seed(seed) and of other streams."""
    state = np.random.SeedSequence([seed % 2**64, stream]).generate_state(1, np.uint64)[0]
    gen = torch.Generator().manual_seed(int(state))

    def draw(x: torch.Tensor) -> torch.Tensor:
        return torch.randn(x.shape, generator=gen).to(device=x.device, dtype=x.dtype)

    return draw


def lcm(
    velocity: FlowVelocity,
    noise: torch.Tensor,
    sigmas: torch.Tensor,
    callback: StepCallback | None,
    renoise: NoiseSampler,
) -> torch.Tensor:
    """x0 prediction, then re-noise to the next σ with fresh noise; the last step returns x0. noise [B, C, F, H, W]."""
    x, steps = noise, len(sigmas) - 1
    for i in range(steps):
        sigma, nxt = float(sigmas[i]), float(sigmas[i + 1])
        x = x - sigma * velocity(x, sigma)  # x0
        if nxt > 0:
            x = nxt * renoise(x) + (1.0 - nxt) * x
        if callback is not None:
            callback(i + 1, steps, x)
    return x
