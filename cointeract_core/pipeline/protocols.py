"""The small interfaces through which the core sees encoders (ComfyUI objects, library models or the toy ones)."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch

__all__ = ["VideoVAE", "TextEncoder", "AudioEncoder"]


@runtime_checkable
class VideoVAE(Protocol):
    """A causal video autoencoder with Wan's layout: T frames <-> 1 + (T-1)/temporal_factor latent frames."""

    latent_channels: int
    spatial_factor: int  # pixels per latent cell (8 for the Wan 2.1 VAE)
    temporal_factor: int  # frames per latent frame after the first (4 for Wan)

    def encode(self, video: torch.Tensor) -> torch.Tensor:
        """[B, 3, T, H, W] in [-1, 1] -> normalised latents [B, C, 1 + (T-1)/4, H/s, W/s]."""
        ...

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """[B, C, T', h, w] normalised latents -> [B, 3, 1 + 4(T'-1), h·s, w·s] in [-1, 1]."""
        ...


@runtime_checkable
class TextEncoder(Protocol):
    """A prompt encoder (umT5-XXL for the real model): one [L_i, text_dim] tensor per prompt, trimmed to its length."""

    text_dim: int

    def encode(self, prompts: list[str]) -> list[torch.Tensor]:
        """Prompts -> embeddings [L_i, text_dim] (no padding rows; the DiT zero-pads to text_len)."""
        ...


@runtime_checkable
class AudioEncoder(Protocol):
    """A speech feature extractor (wav2vec2-large for the real model) returning every hidden state."""

    sample_rate: int  # expected input rate (16 kHz)
    num_layers: int  # hidden states returned (25 for wav2vec2-large: embeddings + 24 layers)
    feature_dim: int  # width of each hidden state (1024)
    frame_rate: float  # feature frames per second (50 for wav2vec2)

    def hidden_states(self, waveform: torch.Tensor) -> torch.Tensor:
        """Mono float waveform [T] at `sample_rate` -> [num_layers, T_feat, feature_dim] at `frame_rate`."""
        ...
