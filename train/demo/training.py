"""Toy training for `cointeract demo`: the trainer's batches, forward and losses, in a small loop with a time cap.

The toy model is trained from scratch in full (no LoRA, no accelerate) from Wan2.2-S2V's training init (zero head
and audio injection; the fixtures' all-random recipe reached a worse loss in the same steps): every parameter except
FramePack's 2x / 4x motion projections, which stay zero (see `cointeract_core.toy.bundle`).
Each stage is data (`StageConfig`); a stage ends at its step count or when its time budget is spent, whichever
comes first. With the step count reached first the run is deterministic for a seed and thread count.
"""

from __future__ import annotations

import logging
import math
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn
from tqdm.auto import tqdm

from ...cointeract_core.model.config import DiTConfig
from ...cointeract_core.model.dit import CoInteractDiT
from ...cointeract_core.model.init import init_wan_weights
from ..config import DropoutConfig, LossConfig, StageConfig
from ..evaluate import evaluate
from ..loop import compute_losses, forward_batch
from ..losses import FlowSchedule, router_counts, router_summary
from ..sample import TrainSample
from ..sampling import sample_generator, seeded_generator
from ..stages import make_batch, stage_spans

__all__ = [
    "TOY_TRAINABLE",
    "FROZEN_ZERO",
    "StageResult",
    "toy_model",
    "toy_stages",
    "zero_far_motion",
    "train_stages",
]

log = logging.getLogger(__name__)

FROZEN_ZERO = r"^frame_packer\.proj_[24]x\.weight$"
TOY_TRAINABLE = (r"^(?!frame_packer\.proj_[24]x\.weight$)",)  # everything but the zero projections
TOY_DROPOUT = DropoutConfig(prompt=0.1, audio=0.1, motion=0.4, pose=0.0)  # official, no pose in the toy world


@dataclass
class StageResult:
    """What one stage did: steps run, why it stopped, seconds, last losses (EMA) and held-out evaluation."""

    name: str
    steps: int
    planned_steps: int
    stopped_by: str  # "steps" | "time"
    seconds: float
    final: dict[str, float | None] = field(default_factory=dict)
    held_out: dict[str, float | None] = field(default_factory=dict)


def toy_stages(
    steps: tuple[int, int], lr: float = 5e-4, hoi: bool = True, stage2_attention: str = "asymmetric"
) -> tuple[StageConfig, StageConfig]:
    """Stage 1 (full attention) and stage 2 (asymmetric; "full" for the ablation) over the toy's trainable set."""
    return (
        StageConfig("stage1", "full", steps[0], lr=lr, trainable=TOY_TRAINABLE, hoi=hoi),
        StageConfig("stage2", stage2_attention, steps[1], lr=lr, trainable=TOY_TRAINABLE, hoi=hoi),
    )


def toy_model(cfg: DiTConfig, seed: int) -> CoInteractDiT:
    """A toy DiT to train from scratch: Wan2.2-S2V's training init (xavier, zero head and audio injection, the
    official CoInteract-part init; every draw from `seed`); FramePack's far projections zeroed."""
    torch.manual_seed(seed)  # the Wan and CoInteract-part inits draw from the global generator
    model = CoInteractDiT(cfg, "sdpa")
    init_wan_weights(model)
    zero_far_motion(model)
    return model


@torch.no_grad()
def zero_far_motion(model: nn.Module) -> None:
    """FramePack's 2x / 4x projection weights to zero (their tokens carry only the bias)."""
    for name, p in model.named_parameters():
        if re.search(FROZEN_ZERO, name):
            p.zero_()


def _lr(stage: StageConfig, step: int, warmup: int) -> float:
    """Linear warmup, then cosine to 10% of the stage lr."""
    if step < warmup:
        return stage.lr * (step + 1) / (warmup + 1)
    progress = (step - warmup) / max(1, stage.steps - warmup)
    return stage.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0))))


def _ema(old: float | None, new: float | None) -> float | None:
    return new if old is None or new is None else 0.9 * old + 0.1 * new


def _set_trainable(model: nn.Module, stage: StageConfig) -> list[nn.Parameter]:
    rx = [re.compile(p) for p in stage.trainable]
    params = []
    for name, p in model.named_parameters():
        p.requires_grad_(any(r.search(name) for r in rx))
        if p.requires_grad:
            params.append(p)
    return params


def _step(model, sample: TrainSample, gen, schedule, dropout, span, loss_cfg, optimizer, lr: float) -> dict:
    """One optimizer step on one sample -> its record (losses and router hits of the batch)."""
    batch = make_batch([sample], [gen], schedule, dropout, span.stage)
    out = forward_batch(model, batch, span)
    parts = compute_losses(out, batch, loss_cfg)
    optimizer.zero_grad(set_to_none=True)
    parts.total.backward()
    params = [p for g in optimizer.param_groups for p in g["params"]]
    grad_norm = float(torch.nn.utils.clip_grad_norm_(params, 1.0))
    if not math.isfinite(parts.total.item()) or not math.isfinite(grad_norm):
        raise FloatingPointError(f"the loss or gradient became non-finite ({float(parts.total)}, {grad_norm})")
    for group in optimizer.param_groups:
        group["lr"] = lr
    optimizer.step()
    record = {"loss": parts.total.item(), "flow": parts.flow.item(), "router": parts.router.item()}
    record["hoi"] = parts.hoi.item() if parts.hoi is not None else None
    if out.router_logits is not None:
        correct, labelled = router_counts(out.router_logits.detach(), batch.router_targets)
        record.update(router_summary(correct, labelled))
    return record


def train_stages(
    model: nn.Module,
    dataset: Sequence[TrainSample],
    stages: Sequence[StageConfig],
    budgets_s: Sequence[float],
    *,
    loss: LossConfig,
    seed: int,
    held_out: Sequence[TrainSample] = (),
    dropout: DropoutConfig = TOY_DROPOUT,
    warmup: int = 10,
    on_step: Callable[[dict], None] | None = None,
) -> list[StageResult]:
    """Train `model` in place through `stages`, each capped at its time budget; returns one result per stage."""
    schedule, results, order_gen = FlowSchedule(loss), [], seeded_generator(seed, 1)
    order: list[int] = []
    global_step = 0
    for span, budget in zip(stage_spans(stages), budgets_s):
        model.train()
        params = _set_trainable(model, span.stage)
        optimizer = torch.optim.AdamW(params, lr=span.stage.lr, weight_decay=0.01)
        start, ema, done, stopped = time.monotonic(), {}, 0, "steps"
        bar = tqdm(total=span.stage.steps, desc=f"train {span.stage.name} ({span.stage.attention})", dynamic_ncols=True)
        for s in range(span.stage.steps):
            if s > 0 and time.monotonic() - start > budget:
                stopped = "time"
                break
            if not order:
                order = torch.randperm(len(dataset), generator=order_gen).tolist()
            gen = sample_generator(seed, global_step, 0)
            record = _step(
                model, dataset[order.pop()], gen, schedule, dropout, span, loss, optimizer, _lr(span.stage, s, warmup)
            )
            ema = {
                k: v if k not in ema or ema[k] is None or v is None else 0.9 * ema[k] + 0.1 * v
                for k, v in record.items()
            }
            global_step, done = global_step + 1, s + 1
            bar.update(1)
            bar.set_postfix(
                flow=f"{ema['flow']:.3f}", hoi=f"{ema['hoi']:.3f}" if ema.get("hoi") else "-", refresh=False
            )
            if on_step is not None:
                on_step({"step": global_step, "stage": span.stage.name, "stage_step": done, **record})
        bar.close()
        result = StageResult(span.stage.name, done, span.stage.steps, stopped, time.monotonic() - start, final=ema)
        if held_out:
            result.held_out = evaluate(model, held_out, span.stage, loss, seed=seed)
        results.append(result)
        log.info(
            "%s: %d/%d steps in %.0f s (stopped by %s)", result.name, done, span.stage.steps, result.seconds, stopped
        )
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return results
