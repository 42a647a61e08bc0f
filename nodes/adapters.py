"""ComfyUI objects seen through the core's protocols (cointeract_core/protocols.py).

- VAE (comfy.sd.VAE): `encode(IMAGE [N, H, W, 3] in 0..1)` gives the Wan VAE's raw posterior mean
  [1, 16, 1 + (N-1)/4, H/8, W/8] and `decode(raw)` gives frames [B, T, H, W, 3]; ComfyUI normalises latents
  only when a model takes them (latent_formats.Wan21.process_in). The core's VideoVAE speaks normalised
  latents and [-1, 1] video, so `ComfyVAE` converts both ways.
- CLIP (CLIPLoader type wan, umT5-XXL): `encode_from_tokens(tokenize(text))` gives [1, max(512, L), 4096] with the
  padding rows zeroed (attention mask + zero_out_masked); `ComfyTextEncoder` trims them, as the protocol asks
  (the DiT zero-pads to 512 again, so the numbers are the same).
- AUDIO_ENCODER_OUTPUT: `encoded_audio_all_layers` holds every hidden state (25 x [B, T_a, 1024] for
  wav2vec2-large, ~50 frames per second of 16 kHz audio); `audio_hidden_states` stacks them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch

from . import services

__all__ = ["ComfyVAE", "ComfyTextEncoder", "audio_hidden_states", "AUDIO_FRAME_RATE"]

AUDIO_FRAME_RATE = 50.0  # wav2vec2 features per second (320-sample hop at 16 kHz)
IDENTITY_LATENTS = "identity"  # a VAE with `cointeract_latent_format = "identity"` already gives normalised latents


def _factors(vae: Any) -> tuple[int, int, int]:
    """(latent channels, spatial factor, temporal factor) of a ComfyUI VAE."""
    spatial = vae.spacial_compression_encode()  # sic: ComfyUI's spelling
    return int(vae.latent_channels), int(spatial), int(vae.temporal_compression_decode() or 1)


class ComfyVAE:
    """VideoVAE over a ComfyUI VAE: [B, 3, T, H, W] in [-1, 1] <-> normalised latents [B, C, T', H/s, W/s]."""

    def __init__(self, vae: Any, after_call: Callable[[], None] | None = None) -> None:
        channels, spatial, temporal = _factors(vae)
        self.vae, self.after_call = vae, after_call
        self.latent_channels, self.spatial_factor, self.temporal_factor = channels, spatial, temporal
        if getattr(vae, "cointeract_latent_format", None) == IDENTITY_LATENTS:
            self.mean, self.std = torch.zeros(1, channels, 1, 1, 1), torch.ones(1, channels, 1, 1, 1)
        elif channels == 16 and temporal == 4:
            self.mean, self.std = services.wan21_latent_stats()
        else:
            raise ValueError(
                f"expected the Wan 2.1 VAE (16 latent channels, 4x in time); this VAE has {channels} channels, "
                f"{spatial}x in space and {temporal}x in time. Load wan_2.1_vae.safetensors with VAELoader "
                "(the Wan 2.2 VAE does not fit CoInteract)"
            )

    def _done(self) -> None:
        if self.after_call is not None:
            self.after_call()  # e.g. put the DiT back on the GPU if the VAE pushed it out

    def encode(self, video: torch.Tensor) -> torch.Tensor:
        """[B, 3, T, H, W] in [-1, 1] -> normalised latents [B, C, 1 + (T-1)/4, H/s, W/s] float32."""
        out = []
        for item in video:
            frames = ((item.float().cpu() + 1.0) / 2.0).clamp(0.0, 1.0).permute(1, 2, 3, 0)  # [T, H, W, 3]
            raw = self.vae.encode(frames).float()
            out.append((raw - self.mean.to(raw)) / self.std.to(raw))
        self._done()
        return torch.cat(out)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Normalised latents [B, C, T', h, w] -> [B, 3, 1 + 4(T'-1), h·s, w·s] in [-1, 1] (on the CPU)."""
        raw = latents.float().cpu() * self.std + self.mean
        frames = self.vae.decode(raw).float().cpu()  # [B, T, H, W, 3] in 0..1
        if frames.ndim == 4:  # a VAE that folds time into the batch
            frames = frames[None]
        self._done()
        return frames.permute(0, 4, 1, 2, 3)[:, :3] * 2.0 - 1.0

    def to_comfy_latent(self, latents: torch.Tensor) -> torch.Tensor:
        """Normalised latents -> ComfyUI's LATENT convention (the VAE's raw output, what VAEDecode takes)."""
        return latents.float().cpu() * self.std + self.mean


class ComfyTextEncoder:
    """TextEncoder over a ComfyUI CLIP object: one [L_i, D] embedding per prompt, padding rows trimmed."""

    def __init__(self, clip: Any) -> None:
        if clip is None or not hasattr(clip, "tokenize"):
            raise ValueError("no text encoder: connect a CLIP (CLIPLoader with the umT5-XXL file, type wan)")
        self.clip = clip
        self.text_dim = 0  # known after the first encode

    def encode(self, prompts: list[str]) -> list[torch.Tensor]:
        """Prompts -> [L_i, D] float32 on the CPU; trailing all-zero rows (ComfyUI's masked padding) removed."""
        out = []
        for prompt in prompts:
            cond = self.clip.encode_from_tokens(self.clip.tokenize(prompt))  # [1, L, D]
            rows = cond[0].float().cpu()
            nonzero = rows.abs().sum(dim=-1).nonzero()
            length = int(nonzero[-1]) + 1 if len(nonzero) else 1
            out.append(rows[:length])
            self.text_dim = rows.shape[-1]
        return out


def audio_hidden_states(encoder_output: Mapping[str, Any]) -> torch.Tensor:
    """AUDIO_ENCODER_OUTPUT -> [layers, T_a, D] float32 (batch item 0) at AUDIO_FRAME_RATE."""
    layers = encoder_output.get("encoded_audio_all_layers") if isinstance(encoder_output, Mapping) else None
    if not layers:
        raise ValueError(
            "expected an AUDIO_ENCODER_OUTPUT with every hidden state (AudioEncoderEncode of a wav2vec2 model); "
            "this one has no 'encoded_audio_all_layers'"
        )
    hidden = torch.stack([layer.float().cpu() for layer in layers])  # [L, B, T_a, D]
    if hidden.ndim != 4 or hidden.shape[1] != 1:
        raise ValueError(f"expected one audio clip (batch 1) of hidden states [B, T, D]; got {tuple(hidden.shape[1:])}")
    if hidden.shape[2] == 0:
        raise ValueError("the audio encoder output has no frames: the audio is too short (under 25 ms)")
    return hidden[:, 0]
