"""Named sampler settings (`cointeract generate --preset NAME`); flags given beside a preset override it.

- `official`: CoInteract's batch_infer (euler, 40 steps, shift 7, cfg 7).
- `distill`: lightx2v's step-distill + CFG-distill LoRAs (Wan2.1 StepDistill-CfgDistill; their config
  `denoising_step_list` [1000, 750, 500, 250], shift 5, no CFG): lcm, 4 steps, shift 5, cfg 1 — one DiT call a step.
- `lightning`: Wan2.2-Lightning LoRAs, distilled with deterministic Euler on the same 4 sigmas
  [1, .9375, .8333, .625]: euler, 4 steps, shift 5, cfg 1.
"""

from __future__ import annotations

from .sampler import SamplerConfig

__all__ = ["SAMPLER_PRESETS"]

SAMPLER_PRESETS: dict[str, SamplerConfig] = {
    "official": SamplerConfig(),
    "distill": SamplerConfig(steps=4, shift=5.0, cfg=1.0, sampler="lcm"),
    "lightning": SamplerConfig(steps=4, shift=5.0, cfg=1.0, sampler="euler"),
}
