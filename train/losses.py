"""Flow-matching training schedule and losses: w(t)·MSE on RGB and HOI velocities, the router's weighted CE.

Official procedure (reference §4.4, DiffSynth FlowMatchScheduler with shift 5, sigma_min 0, extra_one_step):
sigma_i = s·u_i / (1 + (s−1)·u_i) with u = linspace(1, 0, n+1)[:n]; t_i = 1000·sigma_i; t_id ~ U{0..n−1}; the
timestep is cast to bf16 and sigma and w(t) are looked up at the schedule entry nearest that bf16 value.
x_t = (1−σ)·x0 + σ·ε on the target only; the model predicts v = ε − x0.
w_i = y_i − min(y), y = exp(−2·((t_i − n/2)/n)²), normalised so Σ_i w_i = n.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..cointeract_core.model.moe import ROUTER_CLASSES
from .config import LossConfig

__all__ = [
    "FlowSchedule",
    "TimestepDraw",
    "LossParts",
    "add_noise",
    "flow_loss",
    "region_weights",
    "router_loss",
    "total_loss",
    "router_counts",
    "router_summary",
]


@dataclass(frozen=True)
class TimestepDraw:
    """One sampled training timestep: what the DiT sees, the noise level and the loss weight."""

    index: int  # schedule entry that sigma and weight come from
    timestep: float  # passed to the DiT (bf16-quantised when the schedule says so)
    sigma: float
    weight: float


class FlowSchedule:
    """The official training timesteps (shift 5 by default) with their weights w(t)."""

    def __init__(self, cfg: LossConfig) -> None:
        n = cfg.num_timesteps
        u = torch.linspace(1.0, 0.0, n + 1)[:-1]  # float32, as the official scheduler
        self.sigmas = cfg.shift * u / (1 + (cfg.shift - 1) * u)  # [n]
        self.timesteps = self.sigmas * 1000.0  # [n], num_train_timesteps = 1000
        y = torch.exp(-2 * ((self.timesteps - n / 2) / n) ** 2)
        y = y - y.min()
        self.weights = y * (n / y.sum()) if cfg.timestep_weighting else torch.ones(n)
        self.quantize = cfg.quantize_timestep

    def __len__(self) -> int:
        return len(self.sigmas)

    def draw(self, generator: torch.Generator) -> TimestepDraw:
        """A uniform schedule entry; with quantisation, t = bf16(t_id) and sigma/w from the entry nearest t."""
        index = int(torch.randint(0, len(self), (1,), generator=generator))
        t = self.timesteps[index]
        if self.quantize:
            t = t.to(torch.bfloat16).float()
            index = int(torch.argmin((self.timesteps - t).abs()))
        return TimestepDraw(index, float(t), float(self.sigmas[index]), float(self.weights[index]))


def add_noise(x0: torch.Tensor, noise: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """x_t = (1−σ)·x0 + σ·ε. x0/noise [B, ...], sigma [B] -> [B, ...]."""
    s = sigma.to(x0.dtype).view(-1, *([1] * (x0.ndim - 1)))
    return (1 - s) * x0 + s * noise


def flow_loss(
    pred: torch.Tensor, target: torch.Tensor, weight: torch.Tensor, cells: torch.Tensor | None = None
) -> torch.Tensor:
    """mean_b w_b·MSE_b. pred/target [B, C, F, H, W], weight [B] -> scalar (official: w(t)·MSE at batch 1).

    `cells` [B, 1, F, H, W] (from `region_weights`) weights each latent cell: MSE_b = Σ cells·se / Σ cells.
    """
    se = (pred.float() - target.float()).square()
    if cells is None:
        mse = se.flatten(1).mean(1)  # [B]
    else:
        cells = cells.to(se).expand_as(se)
        mse = (cells * se).flatten(1).sum(1) / cells.flatten(1).sum(1)
    return (weight.to(mse) * mse).mean()


def region_weights(
    targets: torch.Tensor, latent_shape: tuple[int, ...], face: float, hand: float
) -> torch.Tensor | None:
    """Router targets [B, N, 3] (base, hand, face; N = F·h·w tokens) -> per-cell weights [B, 1, F, H, W] of
    the latents [B, C, F, H, W]: 1 + hand·p_hand + face·p_face, each token's value over its patch. None when both
    weights are 0 (the official, unweighted loss)."""
    if face == 0 and hand == 0:
        return None
    b, _, f, h, w = latent_shape
    n = targets.shape[1]
    if n % f or (h * w) % (n // f):
        raise ValueError(f"{n} router targets do not tile latents of {f}x{h}x{w}")
    area = (h * w) // (n // f)  # latent cells per token (the DiT's spatial patch)
    ph = int(round(area**0.5))
    if ph * ph != area or h % ph or w % ph:
        raise ValueError(f"{n} router targets over {f}x{h}x{w} latents: not a square patch; give matching boxes")
    t = targets.float()
    token = 1.0 + hand * t[..., 1] + face * t[..., 2]  # [B, N]
    grid = token.view(b, 1, f, h // ph, w // ph)
    return grid.repeat_interleave(ph, dim=3).repeat_interleave(ph, dim=4)


def router_loss(logits: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Weighted soft-target CE, mean over B·N tokens per block, then mean over blocks (reference §1.11).

    logits [L, B, N, 3], targets [B, N, 3] (base, hand, face), weights [B, N] -> scalar.
    """
    logp = torch.log_softmax(logits.float(), dim=-1)
    nll = -(targets.to(logp)[None] * logp).sum(-1)  # [L, B, N]
    return (nll * weights.to(logp)[None]).mean(dim=(1, 2)).mean()


@dataclass(frozen=True)
class LossParts:
    """The total loss and its parts (hoi is None when the HOI stream was not co-generated)."""

    total: torch.Tensor
    flow: torch.Tensor
    router: torch.Tensor
    hoi: torch.Tensor | None = None


def total_loss(flow: torch.Tensor, router: torch.Tensor, hoi: torch.Tensor | None, cfg: LossConfig) -> LossParts:
    """L = L_flow + hoi_weight·L_hoi + router_weight·L_router."""
    total = flow + cfg.router_weight * router
    if hoi is not None:
        total = total + cfg.hoi_weight * hoi
    return LossParts(total, flow, router, hoi)


@torch.no_grad()
def router_counts(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(correct [3], labelled [3]) summed over blocks: argmax hits per class, and tokens per class × blocks.

    logits [L, B, N, 3], targets [B, N, 3]. Counts add up over batches and processes.
    """
    labels = targets.argmax(-1)  # [B, N]
    pred = logits.argmax(-1)  # [L, B, N]
    classes = torch.arange(len(ROUTER_CLASSES), device=labels.device)
    is_c = labels[..., None] == classes  # [B, N, 3]
    correct = ((pred[..., None] == classes) & is_c[None]).sum(dim=(0, 1, 2))
    return correct.double(), is_c.sum(dim=(0, 1)).double() * logits.shape[0]


def router_summary(correct: torch.Tensor, labelled: torch.Tensor) -> dict[str, float | None]:
    """Recall per class (mean over blocks), class prior, and balanced accuracy over the classes present."""
    out: dict[str, float | None] = {}
    recalls = []
    for c, name in enumerate(ROUTER_CLASSES):
        n = float(labelled[c])
        recall = float(correct[c]) / n if n else None
        out[f"router_recall_{name}"] = recall
        out[f"router_prior_{name}"] = n / float(labelled.sum()) if float(labelled.sum()) else None
        if recall is not None:
            recalls.append(recall)
    out["router_balanced_acc"] = sum(recalls) / len(recalls) if recalls else None
    return out
