"""Second-order multistep solvers from diffusers, fed exactly our sigma table (diffusers is imported lazily).

- `unipc`: UniPCMultistepScheduler, flow sigmas, bh2, order 2, x0 prediction (Wan2.2's default `unipc` solver).
  The corrector reuses the next step's velocity, so it costs no extra call.
- `dpmpp_2m`: DPMSolverMultistepScheduler, flow sigmas, dpmsolver++ midpoint order 2 (Wan2.2's `dpm++`).

Both step the state in fp32 and need a final σ of 0. Pitfalls of diffusers 0.42 handled here: `set_timesteps`
applies `flow_shift` to given sigmas (so flow_shift = 1), takes them only as a numpy array and edits that array in
place (σ0 = 1 becomes 1 − 1e-6 in UniPC), DPM-Solver takes no sigmas at all (its table is overwritten), and the
step index is looked up from int timesteps that repeat at high shift (so `set_begin_index(0)`).
"""

from __future__ import annotations

import importlib
from typing import Any

import numpy as np
import torch

from .protocols import FlowVelocity, NoiseSampler, StepCallback

__all__ = ["unipc", "dpmpp_2m"]


def _scheduler_class(name: str) -> type:
    """diffusers.<name>, or an ImportError that says how to get diffusers."""
    try:
        diffusers = importlib.import_module("diffusers")
    except ModuleNotFoundError as err:
        raise ModuleNotFoundError(
            f"the unipc and dpmpp_2m samplers use diffusers' {name}; install it with "
            f"pip install 'diffusers>=0.35' (the `cli` extra), or use the euler or lcm sampler"
        ) from err
    return getattr(diffusers, name)


def _integrate(
    scheduler: Any, velocity: FlowVelocity, noise: torch.Tensor, sigmas: torch.Tensor, callback: StepCallback | None
) -> torch.Tensor:
    """Run a prepared diffusers scheduler over our table: one velocity call per step, state in fp32."""
    scheduler.set_begin_index(0)
    x, steps = noise.float(), len(sigmas) - 1
    for i in range(steps):
        v = velocity(x, float(sigmas[i])).float()
        x = scheduler.step(v, scheduler.timesteps[i], x, return_dict=False)[0]
        if callback is not None:
            callback(i + 1, steps, x)
    return x.to(noise.dtype)


def _check(sigmas: torch.Tensor) -> None:
    if len(sigmas) < 2 or float(sigmas[-1]) != 0.0:
        raise ValueError(f"the multistep solvers need a sigma table ending in 0 (got {len(sigmas)} values)")


def unipc(
    velocity: FlowVelocity,
    noise: torch.Tensor,
    sigmas: torch.Tensor,
    callback: StepCallback | None,
    renoise: NoiseSampler,
) -> torch.Tensor:
    """UniPC-bh2 (order 2, predictor + free corrector) over sigmas [steps + 1]; noise [B, C, F, H, W]."""
    _check(sigmas)
    sched = _scheduler_class("UniPCMultistepScheduler")(
        num_train_timesteps=1000, prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=1.0,
        solver_order=2, solver_type="bh2", predict_x0=True, lower_order_final=True, final_sigmas_type="zero",
    )  # fmt: skip
    sched.set_timesteps(sigmas=np.array(sigmas[:-1].tolist(), dtype=np.float64))  # a copy: it is edited in place
    return _integrate(sched, velocity, noise, sigmas, callback)


def dpmpp_2m(
    velocity: FlowVelocity,
    noise: torch.Tensor,
    sigmas: torch.Tensor,
    callback: StepCallback | None,
    renoise: NoiseSampler,
) -> torch.Tensor:
    """DPM-Solver++(2M), midpoint, over sigmas [steps + 1]; first and last steps first order. noise [B, C, F, H, W]."""
    _check(sigmas)
    sched = _scheduler_class("DPMSolverMultistepScheduler")(
        num_train_timesteps=1000, prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=1.0,
        solver_order=2, algorithm_type="dpmsolver++", solver_type="midpoint", lower_order_final=True,
        final_sigmas_type="zero",
    )  # fmt: skip
    sched.set_timesteps(num_inference_steps=len(sigmas) - 1)
    sched.sigmas = sigmas.detach().float().cpu().clone()
    sched.timesteps = (sigmas[:-1].double() * 1000).long()
    return _integrate(sched, velocity, noise, sigmas, callback)
