"""Flow-matching sampler as the official scheduler: shifted σ table, Euler on v = noise − x0, CFG.

Other solvers (`unipc`, `dpmpp_2m`: multistep.py; `lcm`: lcm.py) and tables (schedules.py) are picked by name in
`SamplerConfig`; every one calls the velocity once per step, at the official bf16-rounded timestep 1000·σ.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from .cache import StepCacheConfig
from .lcm import lcm, noise_stream
from .multistep import dpmpp_2m, unipc
from .protocols import FlowVelocity, NoiseSampler, Solver, StepCallback
from .schedules import SCHEDULERS, sigma_schedule, sigma_table

__all__ = [
    "SamplerConfig",
    "SAMPLERS",
    "SCHEDULERS",
    "CFG_BATCH",
    "sigma_schedule",
    "model_timesteps",
    "cfg_combine",
    "euler",
    "sample",
    "StepCallback",
]

CFG_BATCH = ("auto", "on", "off")


def euler(
    velocity: FlowVelocity,
    noise: torch.Tensor,
    sigmas: torch.Tensor,
    callback: StepCallback | None,
    renoise: NoiseSampler,
) -> torch.Tensor:
    """The official step x ← x + v·(σ' − σ) over sigmas [steps + 1]; noise [B, C, F, H, W]."""
    x, steps = noise, len(sigmas) - 1
    for i in range(steps):
        v = velocity(x, float(sigmas[i]))
        x = x + v * float(sigmas[i + 1] - sigmas[i])
        if callback is not None:
            callback(i + 1, steps, x)
    return x


SOLVERS: dict[str, Solver] = {"euler": euler, "unipc": unipc, "dpmpp_2m": dpmpp_2m, "lcm": lcm}
SAMPLERS = tuple(SOLVERS)


def _finite(name: str, value: float, low: float, strict: bool) -> None:
    bad = not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value)
    if bad or value < low or (strict and value == low):
        raise ValueError(f"{name} must be a finite number {'>' if strict else '>='} {low:g}, got {value!r}")


def _choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"unknown {name} {value!r}; choose one of {', '.join(choices)}")


@dataclass(frozen=True)
class SamplerConfig:
    """Run options of one generation (official batch_infer defaults)."""

    steps: int = 40
    shift: float = 7.0
    cfg: float = 7.0
    seed: int = 0
    quantize_timesteps: bool = True  # the official DiT receives bf16 timesteps (904.49 -> 904)
    sampler: str = "euler"  # one of SAMPLERS
    scheduler: str = "shifted"  # one of SCHEDULERS
    step_list: tuple[float, ...] = ()  # unshifted timesteps for scheduler "step_list" (lightx2v: 1000, 750, 500, 250)
    cfg_batch: str = "auto"  # both CFG passes as one batch of 2: "auto" (CUDA, when memory allows), "on", "off"
    cache: StepCacheConfig | None = None  # step cache (sampling/cache.py); None: every step runs the blocks

    def __post_init__(self) -> None:
        if isinstance(self.steps, bool) or not isinstance(self.steps, int) or self.steps < 1:
            raise ValueError(f"steps must be an integer >= 1, got {self.steps!r}")
        _finite("shift", self.shift, 0.0, strict=True)
        _finite("cfg", self.cfg, 0.0, strict=False)
        _choice("sampler", self.sampler, SAMPLERS)
        _choice("scheduler", self.scheduler, SCHEDULERS)
        _choice("cfg_batch", self.cfg_batch, CFG_BATCH)
        self._check_step_list()
        if self.cache is not None and not isinstance(self.cache, StepCacheConfig):
            raise TypeError(f"cache must be a StepCacheConfig or None, got {type(self.cache).__name__}")

    def _check_step_list(self) -> None:
        ts = self.step_list
        if self.scheduler != "step_list":
            if ts:
                raise ValueError(f"step_list is only read by scheduler 'step_list', not {self.scheduler!r}")
            return
        if len(ts) != self.steps:
            raise ValueError(f"scheduler 'step_list' needs steps == len(step_list); got {self.steps} and {len(ts)}")
        if not all(isinstance(t, (int, float)) and 0 < t <= 1000 for t in ts):
            raise ValueError(f"step_list timesteps must lie in (0, 1000], got {list(ts)}")
        if any(b >= a for a, b in zip(ts, ts[1:])):
            raise ValueError(f"step_list timesteps must decrease, got {list(ts)}")

    def sigmas(self) -> torch.Tensor:
        """[steps + 1] float32 sigma table of this config, from σ ≈ 1 to 0."""
        return sigma_table(self.scheduler, self.steps, self.shift, self.step_list)


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
    renoise: NoiseSampler | None = None,
    solver: Solver | None = None,
) -> torch.Tensor:
    """Integrate x [B, C, F, H, W] from noise (σ=1) to σ=0 with cfg.sampler over cfg's sigma table.

    velocity(x, t [1]) -> v (already guided), t = 1000·σ (bf16-rounded unless cfg.quantize_timesteps is off).
    renoise: fresh noise for `lcm` (default: a stream seeded by cfg.seed). solver: replaces cfg.sampler's solver
    (e.g. ComfyUI's implementation), still fed this table and these timesteps.
    """

    def at_sigma(x: torch.Tensor, sigma: float) -> torch.Tensor:
        t = torch.tensor([sigma], dtype=torch.float32) * 1000.0  # as model_timesteps: float32, then bf16
        t = t.to(torch.bfloat16).float() if cfg.quantize_timesteps else t
        return velocity(x, t.to(x.device))

    solve = solver or SOLVERS[cfg.sampler]
    return solve(at_sigma, noise, cfg.sigmas(), callback, renoise or noise_stream(cfg.seed))
