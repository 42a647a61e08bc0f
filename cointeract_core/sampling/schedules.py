"""Sigma tables [steps + 1] from σ = 1 down to a final 0, every one shifted s·σ/(1+(s−1)·σ).

- `shifted` (official, default): σ = shift(linspace(1, 0, steps+1)[:-1]). ComfyUI's `simple` gives the same table
  whenever `steps` divides 1000; 4 steps at shift 5 is the step-distill table [1, .9375, .8333, .625] that
  Wan2.2-Lightning (euler) and lightx2v (lcm) were distilled on.
- `simple`: ComfyUI's `simple` scheduler exactly: σ at the integer timesteps t_i = 1000 − ⌊i·1000/steps⌋ of the
  1000-entry discrete table (differs from `shifted` by up to shift/1000 when `steps` does not divide 1000).
- `step_list`: an explicit list of unshifted timesteps in (0, 1000], lightx2v's `denoising_step_list`
  (e.g. [1000, 750, 500, 250]); σ_i = shift(t_i / 1000).

ComfyUI's `beta` is left out: it needs scipy's inverse incomplete beta function and drops duplicate steps.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

__all__ = ["SCHEDULERS", "shift_sigmas", "sigma_schedule", "simple_schedule", "step_list_schedule", "sigma_table"]

SCHEDULERS = ("shifted", "simple", "step_list")


def shift_sigmas(sigma: torch.Tensor, shift: float) -> torch.Tensor:
    """σ [N] -> s·σ / (1 + (s−1)·σ) (Wan / SD3 time shift), same shape and dtype."""
    return shift * sigma / (1 + (shift - 1) * sigma)


def sigma_schedule(steps: int, shift: float) -> torch.Tensor:
    """[steps + 1] float32: σ = linspace(1, 0, steps+1)[:-1] shifted s·σ/(1+(s−1)σ), then a final 0."""
    sigma = shift_sigmas(torch.linspace(1.0, 0.0, steps + 1)[:-1], shift)
    return torch.cat([sigma, sigma.new_zeros(1)])


def step_list_schedule(timesteps: Sequence[float], shift: float) -> torch.Tensor:
    """Unshifted timesteps [N] in (0, 1000], decreasing -> [N + 1] float32 sigmas shift(t/1000), then 0."""
    sigma = shift_sigmas(torch.tensor([float(t) for t in timesteps], dtype=torch.float64) / 1000.0, shift)
    return torch.cat([sigma, sigma.new_zeros(1)]).float()


def simple_schedule(steps: int, shift: float) -> torch.Tensor:
    """[steps + 1] float32: ComfyUI's `simple`, σ at integer timesteps 1000 − ⌊i·1000/steps⌋, then 0."""
    stride = 1000 / steps
    return step_list_schedule([1000 - math.floor(i * stride) for i in range(steps)], shift)


def sigma_table(scheduler: str, steps: int, shift: float, step_list: Sequence[float] = ()) -> torch.Tensor:
    """The [steps + 1] float32 sigma table of a scheduler name (see the module docstring)."""
    if scheduler == "shifted":
        return sigma_schedule(steps, shift)
    if scheduler == "simple":
        return simple_schedule(steps, shift)
    if scheduler == "step_list":
        return step_list_schedule(step_list, shift)
    raise ValueError(f"unknown scheduler {scheduler!r}; choose one of {', '.join(SCHEDULERS)}")
