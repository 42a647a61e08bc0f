"""The pack's own socket types, declared once, and the values that travel on them between our nodes.

COINTERACT_MODEL carries a ModelPatcher (inside ComfyUI) or a FallbackPatcher (outside) whose `.model` is the
CoInteractDiT. The others carry the frozen dataclasses below. Latents are normalised (what the DiT sees).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = [
    "COINTERACT_MODEL",
    "COINTERACT_REFS",
    "COINTERACT_PROMPTS",
    "COINTERACT_AUDIO",
    "References",
    "Prompts",
    "AudioFeatures",
]

COINTERACT_MODEL = "COINTERACT_MODEL"
COINTERACT_REFS = "COINTERACT_REFS"
COINTERACT_PROMPTS = "COINTERACT_PROMPTS"
COINTERACT_AUDIO = "COINTERACT_AUDIO"


@dataclass(frozen=True)
class References:
    """Person (and product) reference latents [1, C, 1, h, w] at the video's size height x width (pixels)."""

    person: torch.Tensor
    product: torch.Tensor | None
    product_scale: float
    height: int
    width: int


@dataclass(frozen=True)
class Prompts:
    """Text embeddings [1, L, text_dim]: one per clip (the last repeats), the negative, and the HOI-stream versions."""

    prompts: tuple[torch.Tensor, ...]
    negative: torch.Tensor
    hoi_prompts: tuple[torch.Tensor, ...]
    hoi_negative: torch.Tensor
    texts: tuple[str, ...]


@dataclass(frozen=True)
class AudioFeatures:
    """Speech features [1, layers, width, frames] at 25 fps, and the AUDIO they came from (for the output)."""

    features: torch.Tensor
    waveform: torch.Tensor  # [channels, samples], float in [-1, 1]
    sample_rate: int
    fps: float = 25.0

    @property
    def frames(self) -> int:
        return self.features.shape[-1]
