"""Generated training data and a stand-in "pretrained" base, so the trainer runs with no files (tests, smoke runs).

`synthetic_dataset` makes TrainSamples whose router labels are learnable from the input: every latent frame has a
face rectangle and a hand rectangle (hand over face, as the official labels), and the target / HOI latents carry
a fixed per-class pattern there. `random_base_init` gives every base weight a random value (so zero-initialised
Wan paths such as the head contribute, as in a trained model) and the CoInteract parts their official init.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from ..cointeract_core.model.config import DiTConfig
from ..cointeract_core.model.init import init_cointeract_parts, init_random
from .config import (
    DataConfig,
    LoRAConfig,
    ModelConfig,
    OptimConfig,
    RuntimeConfig,
    StageConfig,
    SyntheticConfig,
    TrainConfig,
)
from .sample import TrainSample

__all__ = ["random_base_init", "synthetic_sample", "synthetic_dataset", "smoke_config", "PATTERN_SCALE"]

PATTERN_SCALE = 1.5  # amplitude of the hand / face latent pattern against unit-variance content
FACE_WEIGHT = HAND_WEIGHT = 10.0  # official router CE weights (base 1)


def random_base_init(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random base weights (the fixtures' recipe, zero-init paths included) + the official CoInteract-part init."""
    init_random(model, seed)
    init_cointeract_parts(model)
    return model


def _rect(gen: torch.Generator, rows: int, cols: int, size: int) -> tuple[int, int, int, int]:
    """A random size×size token rectangle (r0, r1, c0, c1), end-exclusive, inside the grid."""
    r0 = int(torch.randint(0, rows - size + 1, (1,), generator=gen))
    c0 = int(torch.randint(0, cols - size + 1, (1,), generator=gen))
    return r0, r0 + size, c0, c0 + size


def _labels(gen: torch.Generator, frames: int, rows: int, cols: int) -> torch.Tensor:
    """[F, rows, cols] class ids (0 base, 1 hand, 2 face); hand is drawn after face, so it wins overlaps."""
    labels = torch.zeros(frames, rows, cols, dtype=torch.long)
    size = max(1, min(rows, cols) // 3)
    for f in range(frames):
        r0, r1, c0, c1 = _rect(gen, rows, cols, size)
        labels[f, r0:r1, c0:c1] = 2
        r0, r1, c0, c1 = _rect(gen, rows, cols, max(1, size - 1))
        labels[f, r0:r1, c0:c1] = 1
    return labels


def _paint(latent: torch.Tensor, labels: torch.Tensor, patterns: torch.Tensor, patch: tuple[int, int]) -> torch.Tensor:
    """Add patterns[class] [C] to every latent pixel of each labelled token. latent [C, F, h, w]."""
    up = labels.repeat_interleave(patch[0], 1).repeat_interleave(patch[1], 2)  # [F, h, w]
    return latent + patterns[:, up] * (up > 0)  # patterns[:, 0] is zero


def synthetic_sample(cfg: DiTConfig, syn: SyntheticConfig, index: int) -> TrainSample:
    """One deterministic sample (`index` seeds it); every optional stream present."""
    c, (ph, pw), f, h, w = cfg.in_dim, cfg.patch_size[1:], syn.frames, syn.height, syn.width
    fixed = torch.Generator().manual_seed(syn.pattern_seed)
    patterns = torch.cat([torch.zeros(c, 1), PATTERN_SCALE * torch.randn(c, 2, generator=fixed)], dim=1)  # [C, 3]
    gen = torch.Generator().manual_seed(syn.seed * 1_000_003 + index + 1)

    def rnd(*shape: int, scale: float = 1.0) -> torch.Tensor:
        return scale * torch.randn(*shape, generator=gen)

    labels = _labels(gen, f, h // ph, w // pw)
    target = _paint(rnd(c, f, h, w), labels, patterns, (ph, pw))
    flat = labels.flatten()
    weights = torch.where(flat == 0, 1.0, torch.where(flat == 1, HAND_WEIGHT, FACE_WEIGHT))
    return TrainSample(
        target_with_motion=target,
        motion=rnd(c, cfg.motion_frames[1], h, w),
        target_alone=target + rnd(c, f, h, w, scale=0.05),
        person=rnd(c, 1, h, w),
        product=rnd(c, 1, h, w),
        product_scale=1.0,
        pose=rnd(cfg.cond_dim, f, h, w, scale=0.5) if cfg.cond_dim else None,
        hoi=_paint(rnd(c, f, h, w, scale=0.5), (labels == 1).long(), patterns, (ph, pw)),
        prompt=rnd(5, cfg.text_dim),
        empty_prompt=rnd(2, cfg.text_dim, scale=0.1),
        hoi_prompt=rnd(7, cfg.text_dim),
        hoi_empty_prompt=rnd(4, cfg.text_dim, scale=0.1),
        audio=rnd(cfg.audio_layers, cfg.audio_dim, 4 * f, scale=0.5),
        router_targets=torch.nn.functional.one_hot(flat, 3).float(),
        router_weights=weights,
    )


def synthetic_dataset(cfg: DiTConfig, syn: SyntheticConfig) -> list[TrainSample]:
    """`syn.num_samples` samples; a held-out set with the same patterns is `replace(syn, seed=other)`."""
    if syn.height % cfg.patch_size[1] or syn.width % cfg.patch_size[2]:
        raise ValueError(f"synthetic latent size {syn.height}x{syn.width} must be divisible by the patch size")
    return [synthetic_sample(cfg, syn, i) for i in range(syn.num_samples)]


def smoke_config(
    output_dir: str, stage_steps: tuple[int, int] = (4, 4), lr: float = 1e-3, **sections: dict
) -> TrainConfig:
    """A tiny two-stage CPU run on generated data (tests, smoke checks); `sections` update config sections,
    e.g. `runtime={"checkpoint_every": 2}`."""
    cfg = TrainConfig(
        data=DataConfig(kind="synthetic", synthetic=SyntheticConfig(num_samples=8)),
        model=ModelConfig(
            preset="tiny_cointeract", base_dtype="fp32", attention_backend="sdpa", gradient_checkpointing=False
        ),
        lora=LoRAConfig(rank=4, alpha=8.0),
        optim=OptimConfig(warmup_steps=2),
        runtime=RuntimeConfig(
            output_dir=str(output_dir), mixed_precision="no", checkpoint_every=2, keep_last=2, progress=False, cpu=True
        ),
        stages=(
            StageConfig("stage1", "full", stage_steps[0], lr=lr),
            StageConfig("stage2", "asymmetric", stage_steps[1], lr=lr),
        ),
    )
    return dataclasses.replace(
        cfg, **{name: dataclasses.replace(getattr(cfg, name), **fields) for name, fields in sections.items()}
    )
