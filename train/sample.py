"""TrainSample: one cached training example as the loop consumes it (the contract between cache and loop)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["TrainSample"]


@dataclass(frozen=True)
class TrainSample:
    """Encoded tensors of one clip; latents are [C, frames, h, w] (no batch dim), embeddings unpadded.

    The official trainer encodes the target twice: jointly with its 73-frame motion history (153 frames ->
    19 motion + 20 target latents, used when motion is kept) and alone with the person image as frame 0
    (81 frames -> 21 latents, latents 1..20 used when motion is dropped).
    """

    target_with_motion: torch.Tensor  # [C, F, h, w] target latents from the joint 153-frame pass
    motion: torch.Tensor | None  # [C, 19, h, w] motion latents from that pass (None: no motion video)
    target_alone: torch.Tensor  # [C, F, h, w] latents 1..F of the 81-frame pass with the person frame first
    person: torch.Tensor  # [C, 1, h, w]
    product: torch.Tensor | None  # [C, 1, h, w]
    product_scale: float
    pose: torch.Tensor | None  # [C, F, h, w]
    hoi: torch.Tensor | None  # [C, F, h, w] (latent 0 of the 81-frame HOI pass dropped)
    prompt: torch.Tensor  # [L, text_dim]
    empty_prompt: torch.Tensor  # [L0, text_dim] (prompt dropout)
    hoi_prompt: torch.Tensor | None  # [L, text_dim]: the official HOI prefix + prompt
    audio: torch.Tensor  # [25, A, 4F] wav2vec2 features at 25 fps
    router_targets: torch.Tensor  # [F·h'·w', 3] one-hot over (base, hand, face)
    router_weights: torch.Tensor  # [F·h'·w'] per-token CE weights (base 1, face 10, hand 10)
    # [L1, text_dim]: the official HOI prefix alone, i.e. the HOI prompt when the prompt is dropped (None: not cached)
    hoi_empty_prompt: torch.Tensor | None = None
