"""Toy-world nodes: a toy bundle as MODEL + VAE + CLIP + AUDIO_ENCODER, and the shipped sample inputs.

The bundle's codec and encoders travel on ComfyUI's own sockets, wrapped in the small interfaces ComfyUI's objects
have (VAE.encode/decode, CLIP.tokenize/encode_from_tokens, AudioEncoder.encode_audio), so the regular graph —
CoInteract References / Prompts, AudioEncoderEncode -> CoInteract Audio, CoInteract Sampler — runs on them with no
VAE / CLIP / audio-encoder loader and no download. Connect them only to CoInteract nodes and AudioEncoderEncode.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from ..cointeract_core.model.attention import resolve_backend
from ..cointeract_core.toy import ToyAudioFeatures, ToyCodec, ToyTextEncoder
from ..cointeract_core.toy.bundle import is_bundle, load_bundle
from . import services
from .adapters import IDENTITY_LATENTS
from .types import COINTERACT_MODEL

log = logging.getLogger(__name__)

__all__ = ["CoInteractToyBundleLoader", "CoInteractToySamples", "ToyVAE", "ToyClip", "ToyAudioEncoder", "ASSETS"]

ASSETS = Path(__file__).resolve().parent.parent / "cointeract_core" / "toy" / "assets"
SHIPPED = "shipped: toy_bundle.safetensors"
TOY_LOUDNESS_LUFS = -23.0  # the toy was trained on speech normalised to -23 LUFS


class ToyVAE:
    """ComfyUI VAE interface over the lossless toy codec (latents are already what the DiT sees)."""

    cointeract_latent_format = IDENTITY_LATENTS

    def __init__(self, codec: ToyCodec) -> None:
        self.codec, self.latent_channels = codec, codec.latent_channels

    def spacial_compression_encode(self) -> int:  # sic: ComfyUI's spelling
        return self.codec.spatial_factor

    def temporal_compression_decode(self) -> int:
        return self.codec.temporal_factor

    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        """IMAGE [N, H, W, 3] in 0..1 -> latents [1, C, 1 + (N-1)/4, H/s, W/s]."""
        return self.codec.encode(pixels[..., :3].float().permute(3, 0, 1, 2)[None] * 2 - 1)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents [B, C, T', h, w] -> frames [B, T, H, W, 3] in 0..1."""
        return ((self.codec.decode(latents.float()) + 1) / 2).clamp(0, 1).permute(0, 2, 3, 4, 1)


class ToyClip:
    """ComfyUI CLIP interface over the toy text encoder (no padding rows)."""

    def __init__(self, text: ToyTextEncoder) -> None:
        self.encoder = text

    def tokenize(self, text: str) -> dict:
        return {"text": text}

    def encode_from_tokens(self, tokens: dict, return_pooled: bool = False, return_dict: bool = False) -> Any:
        cond = self.encoder.encode([tokens["text"]])[0][None]  # [1, L, D]
        return {"cond": cond} if return_dict else cond


class ToyAudioEncoder:
    """ComfyUI AudioEncoder interface (AudioEncoderEncode calls encode_audio) over the toy speech features."""

    def __init__(self, audio: ToyAudioFeatures) -> None:
        self.features = audio

    def encode_audio(self, waveform: torch.Tensor, sample_rate: int) -> dict:
        """AUDIO waveform [1, C, T] at any rate -> AUDIO_ENCODER_OUTPUT (every 'layer', 50 frames per second)."""
        import soxr

        from ..cointeract_core.media.loudness import loudness_normalize

        mono = waveform[0].float().mean(dim=0).cpu().numpy()
        rate = self.features.sample_rate
        speech = torch.from_numpy(soxr.resample(mono, int(sample_rate), rate)).float() if sample_rate != rate else None
        speech = torch.from_numpy(mono) if speech is None else speech
        speech = loudness_normalize(speech, rate, TOY_LOUDNESS_LUFS)
        hidden = self.features.hidden_states(speech)  # [25, T_a, D]
        layers = tuple(h[None] for h in hidden)
        return {"encoded_audio": layers[-1], "encoded_audio_all_layers": layers, "audio_samples": speech.shape[-1]}


def _bundle_choices() -> list[str]:
    names = [n for n in services.model_file_list(services.COINTERACT_FOLDER) if n.endswith(".safetensors")]
    found = [n for n in names if is_bundle(services.model_file_path(services.COINTERACT_FOLDER, n))]
    return [SHIPPED, *found]


class CoInteractToyBundleLoader:
    CATEGORY = "CoInteract/loaders"
    DESCRIPTION = (
        "Loads a toy bundle (a tiny CoInteract trained on the procedural toy world by `cointeract demo`; one ships "
        "with the pack): the model plus its codec (as VAE), text encoder (as CLIP) and speech features (as "
        "AUDIO_ENCODER). Runs on a CPU in about a minute at 64x64; no downloads. Other bundles go in models/cointeract."
    )
    RETURN_TYPES = (COINTERACT_MODEL, "VAE", "CLIP", "AUDIO_ENCODER")
    RETURN_NAMES = ("model", "toy_vae", "toy_clip", "toy_audio_encoder")
    OUTPUT_TOOLTIPS = (
        "The toy CoInteract DiT, for CoInteract Sampler.",
        "The toy codec, for CoInteract References and CoInteract Sampler (not for ComfyUI's VAE nodes).",
        "The toy text encoder, for CoInteract Prompts.",
        "The toy speech features, for AudioEncoderEncode -> CoInteract Audio.",
    )
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {
            "required": {
                "bundle": (_bundle_choices(), {"default": SHIPPED, "tooltip": "The bundle shipped with the pack, or "
                           "one written by `cointeract demo` (toy_bundle.safetensors) copied to models/cointeract."}),
                "attention": (["auto", "sdpa"], {"default": "sdpa", "tooltip": "Attention kernel (sdpa on a CPU)."}),
            }
        }  # fmt: skip

    def load(self, bundle: str, attention: str) -> tuple:
        path = ASSETS / "toy_bundle.safetensors" if bundle == SHIPPED else None
        path = path or Path(services.model_file_path(services.COINTERACT_FOLDER, bundle))
        if not path.is_file():
            raise FileNotFoundError(f"the toy bundle {path} is missing: reinstall the pack or run `cointeract demo`")
        dit, codec, text, audio = load_bundle(path, services.unet_offload_device(), torch.float32)
        dit.attention_backend = resolve_backend(attention)
        log.info("CoInteract: loaded toy bundle %s", path)
        return (services.wrap_model(dit), ToyVAE(codec), ToyClip(text), ToyAudioEncoder(audio))


class CoInteractToySamples:
    CATEGORY = "CoInteract/toy"
    DESCRIPTION = (
        "The toy world's sample inputs shipped with the pack (a held-out story the shipped bundle never saw): the "
        "presenter, the product, 6.4 s of toy speech and one prompt per 80-frame clip. LoadImage / LoadAudio work "
        "too: copy cointeract_core/toy/assets/{person,product}.png and speech.wav into ComfyUI's input/ folder."
    )
    RETURN_TYPES = ("IMAGE", "IMAGE", "AUDIO", "STRING", "STRING")
    RETURN_NAMES = ("person", "product", "speech", "prompt", "timeline")
    OUTPUT_TOOLTIPS = (
        "The presenter (64x64).",
        "The product on black (64x64).",
        "Toy speech (16 kHz mono).",
        "The first clip's prompt.",
        "The later clips' prompts, one per line.",
    )
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {"required": {}}

    def load(self) -> tuple:
        services.optional_import("av", feature="CoInteract Toy Samples")
        from ..cointeract_core.media import load_audio, load_image

        missing = [n for n in ("person.png", "product.png", "speech.wav", "prompts.txt") if not (ASSETS / n).is_file()]
        if missing:
            raise FileNotFoundError(f"the toy samples {missing} are missing from {ASSETS}: reinstall the pack")
        person, product = (load_image(ASSETS / n)[None] for n in ("person.png", "product.png"))
        speech = load_audio(ASSETS / "speech.wav", sample_rate=None)
        prompts = [p for p in (ASSETS / "prompts.txt").read_text().splitlines() if p.strip()]
        audio = {"waveform": speech.waveform.reshape(1, 1, -1).float(), "sample_rate": speech.sample_rate}
        return (person, product, audio, prompts[0], "\n".join(prompts[1:]))


NODE_CLASS_MAPPINGS = {
    "CoInteractToyBundleLoader": CoInteractToyBundleLoader,
    "CoInteractToySamples": CoInteractToySamples,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "CoInteractToyBundleLoader": "CoInteract Toy Bundle Loader",
    "CoInteractToySamples": "CoInteract Toy Samples",
}
