"""Step cache: skip the DiT's block stack on steps where its output is predicted to change little (off by default).

Why EasyCache (arXiv 2507.02860) and not the others. TeaCache (arXiv 2411.19108) decides from a polynomial fitted
per model on ~70 prompts; no fit exists for Wan2.2-S2V, and CoInteract's MoE fine-tune would invalidate one anyway.
MagCache (arXiv 2506.09045) reads a per-model table of residual-norm ratios recorded by a calibration run at one
step count. EasyCache needs neither: after a warm-up it measures, at run time, how fast the model output changes
relative to its input (k) and skips while the predicted change accumulated since the last full step stays small.

What is reused. The block-stack residual R_b = tokens after the blocks − tokens before them, per CFG branch b (the
whole token sequence: target, references, motion and HOI tokens). On a skipped step the blocks and the audio
injectors inside them do not run: tokens = tokens_in + R_b, then the head runs with the current timestep.

The rule, per clip (x: the RGB latents the sampler passes in, v: the cond branch's RGB velocity):
    k   = mean|v_i − v_j| / mean|x_i − x_j| over the two most recent full steps i, j (None until there are two);
    ε_t = k · mean|x_t − x_{t−1}| / mean|v_last full|, E += ε_t;
    skip step t  iff  start_step ≤ t < steps − end_steps_full, k is known, E < threshold and fewer than
    max_consecutive skips precede it; otherwise run it in full and set E = 0.
The decision is made once per step (`begin_step`, before the guided passes) and applied to every branch; only RGB
tokens enter it, so the HOI preview never changes which steps are skipped. State belongs to one clip: the clip
sampler makes a new `StepCache` per clip (k starts as None, never 0). Steps are counted as velocity calls, which is
one per step for every solver here; a solver calling it more often only shortens the window where skips may happen.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

__all__ = ["StepCacheConfig", "StepCache", "BlocksFn", "BlocksHook"]

# run_blocks(tokens [B, N, D]) -> (tokens [B, N, D], router logits or None): the DiT's block stack
BlocksFn = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor | None]]
# hook(tokens, run_blocks) -> what run_blocks(tokens) would give: CoInteractDiT.forward(blocks_hook=...)
BlocksHook = Callable[[torch.Tensor, BlocksFn], tuple[torch.Tensor, torch.Tensor | None]]


@dataclass(frozen=True)
class StepCacheConfig:
    """Options of the step cache: skip threshold τ, first skippable step, last steps kept full, skip-run cap."""

    threshold: float = 0.05  # on the accumulated predicted relative change E (EasyCache's Wan default); 0: no skip
    start_step: int = 10  # steps 0 .. start_step − 1 always run in full (warm-up; k needs two full steps)
    end_steps_full: int = 2  # the last steps always run in full
    max_consecutive: int | None = 3  # at most this many skipped steps in a row; None: no cap

    def __post_init__(self) -> None:
        t = self.threshold
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not math.isfinite(t) or t < 0:
            raise ValueError(f"step cache threshold must be a finite number >= 0 (0 never skips), got {t!r}")
        for name in ("start_step", "end_steps_full"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"step cache {name} must be an int >= 0, got {value!r}")
        cap = self.max_consecutive
        if cap is not None and (isinstance(cap, bool) or not isinstance(cap, int) or cap < 1):
            raise ValueError(f"step cache max_consecutive must be an int >= 1, or None for no cap, got {cap!r}")


def _mean_abs(a: torch.Tensor) -> float:
    """mean |a| as a Python float (one host sync)."""
    return float(a.abs().mean())


class StepCache:
    """State of one clip: the per-step decision (from the cond pass) and a block residual per CFG branch."""

    def __init__(self, cfg: StepCacheConfig, steps: int) -> None:
        self.cfg, self.steps = cfg, steps
        self.step = -1  # index of the current step
        self.skip = False  # the current step's decision
        self.k: float | None = None  # output change per input change, from the last two full steps
        self.accumulated = 0.0  # E: predicted relative change since the last full step
        self.consecutive = 0  # skipped steps in a row up to the current one
        self.passes_run = self.passes_skipped = 0
        self.decisions: list[bool] = []  # per step: skipped
        self._x: torch.Tensor | None = None  # the current step's RGB latents
        self._x_full: torch.Tensor | None = None  # RGB latents and cond velocity of the last full step
        self._v_full: torch.Tensor | None = None
        self._residual: dict[str, torch.Tensor] = {}

    def begin_step(self, x: torch.Tensor) -> bool:
        """Decide the next step from its RGB latents x [B, C, F, H, W]; returns True when its blocks are skipped."""
        self.step += 1
        x = x.detach().float().clone()
        eps = self._predicted_change(x)
        self._x = x
        skip = eps is not None and self._window_open() and self.accumulated + eps < self.cfg.threshold
        self.accumulated = self.accumulated + eps if skip else 0.0
        self.consecutive = self.consecutive + 1 if skip else 0
        self.skip = skip
        self.decisions.append(skip)
        return skip

    def observe(self, velocity: torch.Tensor) -> None:
        """The cond branch's RGB velocity [B, C, F, H, W] of the current step; a full step updates k."""
        if self.skip or self._x is None:
            return
        v = velocity.detach().float().clone()
        self.k = None
        if self._x_full is not None and self._v_full is not None and self._v_full.shape == v.shape:
            dx = _mean_abs(self._x - self._x_full)
            self.k = _mean_abs(v - self._v_full) / dx if dx > 0 else None
        self._x_full, self._v_full = self._x, v

    def hook(self, branch: str, passes: int = 1) -> BlocksHook:
        """The blocks hook of one CFG branch ("cond", "uncond", or "cfg" for both as one batch of `passes` rows)
        for CoInteractDiT.forward(blocks_hook=...)."""

        def run(tokens: torch.Tensor, blocks: BlocksFn) -> tuple[torch.Tensor, torch.Tensor | None]:
            cached = self._residual.get(branch)
            if self.skip and cached is not None and cached.shape == tokens.shape:
                self.passes_skipped += passes
                return tokens + cached, None  # [B, N, D]
            out, logits = blocks(tokens)
            if cached is not None and cached.shape == out.shape and cached.dtype == out.dtype:
                torch.sub(out, tokens, out=cached)  # memory: reuse the buffer, no second residual alive
            else:
                self._residual[branch] = out - tokens
            self.passes_run += passes
            return out, logits

        return run

    def _window_open(self) -> bool:
        """True when the current step may be skipped: past the warm-up, before the tail, under the skip cap."""
        cfg = self.cfg
        in_window = cfg.start_step <= self.step < self.steps - cfg.end_steps_full
        capped = cfg.max_consecutive is not None and self.consecutive >= cfg.max_consecutive
        return in_window and not capped and self.k is not None and bool(self._residual)

    def _predicted_change(self, x: torch.Tensor) -> float | None:
        """ε = k · mean|x − x_prev| / mean|v_full| (None when it cannot be predicted yet)."""
        if self.k is None or self._x is None or self._v_full is None or self._x.shape != x.shape:
            return None
        scale = _mean_abs(self._v_full)
        return self.k * _mean_abs(x - self._x) / scale if scale > 0 else None
