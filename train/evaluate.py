"""Held-out evaluation: flow / HOI / router losses and router recall per class, every condition kept."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .config import DropoutConfig, LossConfig, StageConfig
from .loop import compute_losses, forward_batch
from .losses import FlowSchedule, router_counts, router_summary
from .sample import TrainSample
from .sampling import seeded_generator
from .stages import make_batch, stage_spans

__all__ = ["evaluate"]


@torch.no_grad()
def evaluate(
    model: nn.Module, samples: Sequence[TrainSample], stage: StageConfig, loss: LossConfig, seed: int = 0
) -> dict[str, float | None]:
    """Mean losses and router recall / prior / balanced accuracy over `samples` (eval mode; timesteps and noise
    drawn from `seed`, the same for every model evaluated)."""
    schedule, span, was_training = FlowSchedule(loss), stage_spans([stage])[0], model.training
    model.eval()
    sums, counts = torch.zeros(3, dtype=torch.float64), torch.zeros(6, dtype=torch.float64)
    device = next(model.parameters()).device
    for i, sample in enumerate(samples):
        batch = make_batch([sample], [seeded_generator(seed, 2, i)], schedule, DropoutConfig(0, 0, 0, 0), stage)
        batch = batch.to(device)
        out = forward_batch(model, batch, span)
        parts = compute_losses(out, batch, loss)
        hoi = parts.hoi if parts.hoi is not None else torch.zeros(())
        sums += torch.stack([parts.flow, parts.router, hoi]).double().cpu()
        if out.router_logits is not None:
            counts += torch.cat(router_counts(out.router_logits, batch.router_targets)).cpu()
    model.train(was_training)
    n = max(1, len(samples))
    return {
        "flow": float(sums[0]) / n,
        "router": float(sums[1]) / n,
        "hoi": float(sums[2]) / n,
        **router_summary(counts[:3], counts[3:]),
    }
