"""The callables the solvers speak: a velocity at σ, a step callback, fresh noise, and a solver itself."""

from __future__ import annotations

from collections.abc import Callable

import torch

__all__ = ["FlowVelocity", "NoiseSampler", "Solver", "StepCallback"]

# velocity(x [B, C, F, H, W], σ) -> v = noise − x0, same shape; σ is a value of the sigma table (the sampler turns
# it into the DiT's timestep 1000·σ, bf16-rounded as the official code does).
FlowVelocity = Callable[[torch.Tensor, float], torch.Tensor]

# Called as callback(step, total, x) after every step (1-based step); raise (e.g. ComfyUI's interrupt) to cancel.
StepCallback = Callable[[int, int, torch.Tensor], None]

# noise(x) -> fresh standard normal noise shaped like x, on x's device and dtype, drawn from a seeded generator.
NoiseSampler = Callable[[torch.Tensor], torch.Tensor]

# solve(velocity, noise [σ0 = 1 state], sigmas [steps + 1] ending in 0, callback, renoise) -> x at σ = 0.
# Every solver calls `velocity` exactly once per step (a step cache relies on it).
Solver = Callable[[FlowVelocity, torch.Tensor, torch.Tensor, "StepCallback | None", NoiseSampler], torch.Tensor]
