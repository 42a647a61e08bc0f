"""Stages as data, and what a stage does to a batch: condition dropout (official), noising, the HOI stream.

A stage (`StageConfig`) names its attention mode, length, lr, trainable parameters (regexes) and whether the
HOI stream is co-generated. The parameters any stage trains get `requires_grad` once, before the model is wrapped
for distributed training (DDP registers its hooks then); a stage that trains fewer of them drops the other
gradients before the optimizer step, so AdamW leaves those parameters untouched.

Condition dropout as the official `forward_preprocess` (reference §4.3): prompt -> the empty prompt (p 0.1),
audio -> zero features (p 0.1), motion dropped (p 0.4: no motion tokens, target = `target_alone`), pose dropped
(p 0.5). Person and product are never dropped.
"""

from __future__ import annotations

import logging
import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .config import DropoutConfig, StageConfig
from .losses import FlowSchedule, add_noise
from .sample import TrainSample

log = logging.getLogger(__name__)

__all__ = [
    "StageSpan",
    "stage_spans",
    "stage_at",
    "set_trainable",
    "drop_frozen_grads",
    "Drops",
    "draw_drops",
    "Batch",
    "make_batch",
]


# ---------------------------------------------------------------------------------------------- stages


@dataclass(frozen=True)
class StageSpan:
    """A stage placed on the global step axis: steps [start, end)."""

    index: int
    stage: StageConfig
    start: int
    end: int


def stage_spans(stages: Sequence[StageConfig]) -> list[StageSpan]:
    """Consecutive [start, end) global-step ranges, one per stage, in order."""
    spans, start = [], 0
    for i, stage in enumerate(stages):
        spans.append(StageSpan(i, stage, start, start + stage.steps))
        start += stage.steps
    return spans


def stage_at(spans: Sequence[StageSpan], step: int) -> StageSpan:
    """The stage that global optimizer step `step` (0-based) belongs to."""
    for span in spans:
        if span.start <= step < span.end:
            return span
    raise ValueError(f"step {step} is past the last stage (total {spans[-1].end} steps)")


def _matching(names: Sequence[str], patterns: Sequence[str]) -> tuple[set[str], list[str]]:
    compiled = [(p, re.compile(p)) for p in patterns]
    hits = {n for n in names if any(rx.search(n) for _, rx in compiled)}
    unmatched = [p for p, rx in compiled if not any(rx.search(n) for n in names)]
    return hits, unmatched


def set_trainable(model: nn.Module, stages: Sequence[StageConfig]) -> dict[str, set[str]]:
    """requires_grad = the union of all stages' patterns, everything else frozen. Returns stage -> its names."""
    names = [n for n, _ in model.named_parameters()]
    per_stage: dict[str, set[str]] = {}
    for stage in stages:
        hits, unmatched = _matching(names, stage.trainable)
        if not hits:
            raise ValueError(
                f"stage {stage.name!r}: trainable patterns {list(stage.trainable)} match no parameter; "
                f"parameter names look like {names[:3]}"
            )
        for pattern in unmatched:
            log.warning("stage %r: trainable pattern %r matches no parameter of this model", stage.name, pattern)
        per_stage[stage.name] = hits
    union = set().union(*per_stage.values())
    for name, p in model.named_parameters():
        p.requires_grad_(name in union)
    return per_stage


def drop_frozen_grads(model: nn.Module, keep: set[str]) -> None:
    """grad = None for trainable parameters this stage does not train (AdamW then skips them entirely)."""
    for name, p in model.named_parameters():
        if p.requires_grad and name not in keep:
            p.grad = None


# ---------------------------------------------------------------------------------------------- batches


@dataclass(frozen=True)
class Drops:
    """Which conditions one sample loses this step."""

    prompt: bool
    audio: bool
    motion: bool
    pose: bool


def draw_drops(cfg: DropoutConfig, generator: torch.Generator) -> Drops:
    """Four independent coins with the configured probabilities (drawn first from the sample's generator)."""
    u = torch.rand(4, generator=generator)
    p = torch.tensor([cfg.prompt, cfg.audio, cfg.motion, cfg.pose])
    return Drops(*(bool(v) for v in u < p))


@dataclass(frozen=True)
class Batch:
    """DiT inputs (batch-first) and loss targets for one micro-batch."""

    x: torch.Tensor  # [B, C, F, h, w] noisy target
    timestep: torch.Tensor  # [B] float
    context: torch.Tensor  # [B, L, text_dim]
    audio: torch.Tensor  # [B, 25, A, 4F]
    person: torch.Tensor  # [B, C, 1, h, w]
    product: torch.Tensor | None
    product_scale: float
    motion: torch.Tensor | None  # [B, C, 19, h, w]
    pose: torch.Tensor | None  # [B, cond_dim, F, h, w]
    hoi: torch.Tensor | None  # [B, C, F, h, w] noisy HOI latents
    hoi_context: torch.Tensor | None
    velocity: torch.Tensor  # [B, C, F, h, w] target ε − x0
    hoi_velocity: torch.Tensor | None
    weight: torch.Tensor  # [B] w(t)
    router_targets: torch.Tensor  # [B, N, 3]
    router_weights: torch.Tensor  # [B, N]

    def to(self, device: torch.device | str) -> Batch:
        moved = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in self.__dict__.items()}
        return Batch(**moved)


def _stack_padded(seqs: Sequence[torch.Tensor]) -> torch.Tensor:
    """[L_i, D] -> [B, max L, D] with zero rows (the DiT zero-pads to text_len anyway)."""
    longest = max(s.shape[0] for s in seqs)
    return torch.stack([F.pad(s, (0, 0, 0, longest - s.shape[0])) for s in seqs])


def _agree(values: Sequence[bool], what: str) -> bool:
    if len(set(values)) > 1:
        raise ValueError(f"a batch mixes samples with and without {what}; use data.batch_size = 1 (official)")
    return values[0]


def _pose(samples: Sequence[TrainSample], drops: Sequence[Drops]) -> torch.Tensor | None:
    """Stacked pose latents; a dropped or missing pose in a mixed batch is zeros (= the no-pose input exactly)."""
    poses = [None if d.pose else s.pose for s, d in zip(samples, drops)]
    present = [p for p in poses if p is not None]
    if not present:
        return None
    return torch.stack([p if p is not None else torch.zeros_like(present[0]) for p in poses])


def _hoi_prompt(sample: TrainSample, drop_prompt: bool) -> torch.Tensor:
    """The HOI prompt; with the prompt dropped, the official one is the HOI prefix alone (`hoi_empty_prompt`)."""
    if drop_prompt and sample.hoi_empty_prompt is not None:
        return sample.hoi_empty_prompt
    if drop_prompt:  # shown once (Python's default warning filter): the cache stores no prefix-only HOI prompt
        warnings.warn(
            "prompt dropout: this sample has no `hoi_empty_prompt` (the official HOI prefix alone), so its HOI "
            "stream keeps the full HOI prompt while the RGB prompt is dropped; rebuild the cache to get it"
        )
    return sample.hoi_prompt


def make_batch(
    samples: Sequence[TrainSample],
    generators: Sequence[torch.Generator],
    schedule: FlowSchedule,
    dropout: DropoutConfig,
    stage: StageConfig,
) -> Batch:
    """Drop conditions, draw timesteps and noise (one generator per sample, in that order), noise the target.

    Motion is kept or dropped for the whole micro-batch by the first sample's coin (batches must share a token
    layout); with the official batch size 1 this is the per-sample rule.
    """
    drops = [draw_drops(dropout, g) for g in generators]
    keep_motion = not drops[0].motion and _agree([s.motion is not None for s in samples], "motion latents")
    draws = [schedule.draw(g) for g in generators]
    x0 = torch.stack([s.target_with_motion if keep_motion else s.target_alone for s in samples]).float()
    noise = torch.stack([torch.randn(s.target_alone.shape, generator=g) for s, g in zip(samples, generators)])
    sigma = torch.tensor([d.sigma for d in draws])
    use_hoi = stage.hoi and _agree([s.hoi is not None for s in samples], "HOI latents")
    hoi = hoi_velocity = hoi_context = None
    if use_hoi:
        h0 = torch.stack([s.hoi for s in samples]).float()
        h_noise = torch.stack([torch.randn(s.hoi.shape, generator=g) for s, g in zip(samples, generators)])
        hoi, hoi_velocity = add_noise(h0, h_noise, sigma), h_noise - h0  # same t, independent noise (official)
        hoi_context = _stack_padded([_hoi_prompt(s, d.prompt) for s, d in zip(samples, drops)])
    has_product = _agree([s.product is not None for s in samples], "a product image")
    scales = {float(s.product_scale) for s in samples}
    if has_product and len(scales) > 1:
        raise ValueError(f"a batch mixes product scales {sorted(scales)}; use data.batch_size = 1")
    return Batch(
        x=add_noise(x0, noise, sigma),
        timestep=torch.tensor([d.timestep for d in draws]),
        context=_stack_padded([s.empty_prompt if d.prompt else s.prompt for s, d in zip(samples, drops)]),
        audio=torch.stack([torch.zeros_like(s.audio) if d.audio else s.audio for s, d in zip(samples, drops)]),
        person=torch.stack([s.person for s in samples]),
        product=torch.stack([s.product for s in samples]) if has_product else None,
        product_scale=scales.pop() if has_product else 1.0,
        motion=torch.stack([s.motion for s in samples]) if keep_motion else None,
        pose=_pose(samples, drops),
        hoi=hoi,
        hoi_context=hoi_context,
        velocity=noise - x0,
        hoi_velocity=hoi_velocity,
        weight=torch.tensor([d.weight for d in draws]),
        router_targets=torch.stack([s.router_targets for s in samples]).float(),
        router_weights=torch.stack([s.router_weights for s in samples]).float(),
    )
