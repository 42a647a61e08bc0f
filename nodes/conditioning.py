"""Conditioning nodes: reference images -> latents, prompts -> text embeddings, speech features -> 25 fps windows."""

from __future__ import annotations

import logging
from typing import Any

import torch

from ..cointeract_core.pipeline.checks import MAX_SIDE, check_reference_image, check_speech_duration
from ..cointeract_core.pipeline.conditioning import NEGATIVE_PROMPT, clip_count, resample_features
from . import services
from .adapters import AUDIO_FRAME_RATE, ComfyTextEncoder, ComfyVAE, audio_hidden_states
from .types import COINTERACT_AUDIO, COINTERACT_PROMPTS, COINTERACT_REFS, AudioFeatures, Prompts, References

log = logging.getLogger(__name__)

__all__ = ["CoInteractReferences", "CoInteractPrompts", "CoInteractAudio", "NODE_CLASS_MAPPINGS"]

CLIP_FRAMES = 80  # video frames per clip (25 fps)
ENCODER_RATE = 16000  # ComfyUI's wav2vec2 resamples to 16 kHz; `audio_samples` counts at this rate


def _one_image(image: torch.Tensor, what: str) -> torch.Tensor:
    """IMAGE [1, H, W, C] -> [H, W, 3]; a batch of several frames raises."""
    if image.ndim != 4 or image.shape[-1] < 3:
        raise ValueError(f"the {what} image must be an IMAGE [batch, height, width, 3]; got {tuple(image.shape)}")
    if image.shape[0] != 1:
        raise ValueError(
            f"the {what} image is a batch of {image.shape[0]} images; CoInteract takes one {what} image. "
            "Pick one (e.g. with ImageFromBatch, length 1)"
        )
    check_reference_image(image.shape[1], image.shape[2], what)
    return image[0, :, :, :3].float().cpu()


def _check_size(height: int, width: int, vae: ComfyVAE) -> None:
    multiple, smallest = 2 * vae.spatial_factor, 8 * vae.spatial_factor  # VAE stride x DiT patch; 8x8 latents
    if height % multiple or width % multiple:
        raise ValueError(f"width x height {width}x{height} must be multiples of {multiple} (VAE stride x patch 2)")
    if min(height, width) < smallest:
        raise ValueError(f"width x height {width}x{height} is too small: sides must be >= {smallest} pixels")
    if max(height, width) > MAX_SIDE:
        raise ValueError(f"width x height {width}x{height} is too large: sides must be <= {MAX_SIDE} pixels")


class CoInteractReferences:
    CATEGORY = "CoInteract"
    DESCRIPTION = (
        "Encodes the person image (and the product image) with the Wan 2.1 VAE at the video's size, preprocessed as "
        "the official inference does: the person is resized to the frame (or cover-cropped), the product is fitted "
        "with a margin and centred on black."
    )
    RETURN_TYPES = (COINTERACT_REFS,)
    RETURN_NAMES = ("references",)
    OUTPUT_TOOLTIPS = ("Reference latents for CoInteract Sampler.",)
    FUNCTION = "encode"

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        size = {"min": 64, "max": MAX_SIDE, "step": 16}
        return {
            "required": {
                "vae": ("VAE", {"tooltip": "The Wan 2.1 VAE (VAELoader, wan_2.1_vae.safetensors)."}),
                "person": ("IMAGE", {"tooltip": "One image of the person who will speak and show the product."}),
                "width": ("INT", {"default": 480, "tooltip": "Video width in pixels (multiple of 16).", **size}),
                "height": ("INT", {"default": 832, "tooltip": "Video height in pixels (multiple of 16).", **size}),
                "product_scale": (
                    "FLOAT",
                    {
                        "default": 1.0,
                        "min": 0.1,
                        "max": 4.0,
                        "step": 0.05,
                        "tooltip": "How large the product appears relative to the person (1.0 = as trained; "
                        "the official `scale` column).",
                    },
                ),  # fmt: skip
                "person_fit": (
                    ["stretch", "cover"],
                    {
                        "default": "stretch",
                        "tooltip": "stretch: resize to the "
                        "frame, ignoring the aspect ratio (official inference); cover: scale and centre-crop "
                        "(as in training).",
                    },
                ),  # fmt: skip
            },
            "optional": {
                "product": ("IMAGE", {"tooltip": "One image of the product (optional; without it, a talking video)."}),
            },
        }

    def encode(
        self, vae: Any, person: torch.Tensor, width: int, height: int, product_scale: float, person_fit: str,
        product: torch.Tensor | None = None,
    ) -> tuple[References]:  # fmt: skip
        services.optional_import("PIL", feature="CoInteract References")
        from ..cointeract_core.media.preprocess import fit_product, resize_person, to_model_range

        cvae = ComfyVAE(vae)
        _check_size(height, width, cvae)
        if not product_scale > 0:
            raise ValueError(f"product_scale must be > 0; got {product_scale}")
        person_img = _one_image(person, "person")
        product_img = None if product is None else _one_image(product, "product")
        with torch.no_grad():
            person_lat = cvae.encode(to_model_range(resize_person(person_img, height, width, person_fit)))
            product_lat = None
            if product_img is not None:
                product_lat = cvae.encode(to_model_range(fit_product(product_img, height, width)))
        return (References(person_lat, product_lat, float(product_scale), height, width),)


class CoInteractPrompts:
    CATEGORY = "CoInteract"
    DESCRIPTION = (
        "Encodes the prompt (and, for long videos, one prompt per following clip) with umT5-XXL, plus the negative "
        "prompt and the HOI-stream versions (the official HOI prefix + each prompt) used by the HOI preview."
    )
    RETURN_TYPES = (COINTERACT_PROMPTS,)
    RETURN_NAMES = ("prompts",)
    OUTPUT_TOOLTIPS = ("Text conditioning for CoInteract Sampler.",)
    FUNCTION = "encode"

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {
            "required": {
                "clip": ("CLIP", {"tooltip": "The umT5-XXL text encoder (CLIPLoader, type wan)."}),
                "prompt": ("STRING", {"multiline": True, "default": "", "tooltip": "What happens in the video "
                           "(the first clip's prompt; also every later clip's when the timeline is empty)."}),
                "negative_prompt": ("STRING", {"multiline": True, "default": NEGATIVE_PROMPT,
                                    "tooltip": "What to avoid (the official negative prompt by default)."}),
            },
            "optional": {
                "timeline": ("STRING", {"multiline": True, "default": "", "tooltip": "Long videos: the prompts of "
                             "clips 2, 3, ... one per line (a clip is 80 frames = 3.2 s); the last line holds for "
                             "the remaining clips. Empty lines are skipped."}),
            },
        }  # fmt: skip

    def encode(self, clip: Any, prompt: str, negative_prompt: str, timeline: str = "") -> tuple[Prompts]:
        from ..cointeract_core.pipeline.build import InputOptions, encode_prompts

        prompts = [prompt.strip()] + [line.strip() for line in (timeline or "").splitlines() if line.strip()]
        if not prompts[0]:
            raise ValueError("the prompt is empty: describe what the person says and does with the product")
        opts = InputOptions(negative_prompt=negative_prompt)
        texts = encode_prompts(ComfyTextEncoder(clip), prompts, opts, hoi=True)
        return (
            Prompts(texts["prompts"], texts["negative"], texts["hoi_prompts"], texts["hoi_negative"], tuple(prompts)),
        )


class CoInteractAudio:
    CATEGORY = "CoInteract"
    DESCRIPTION = (
        "Turns the speech features of AudioEncoderEncode (every wav2vec2 hidden state, ~50 per second) into 25 fps "
        "features, one per video frame, and counts the 80-frame clips the video needs. The AUDIO itself is kept "
        "for the final video's sound track."
    )
    RETURN_TYPES = (COINTERACT_AUDIO, "INT")
    RETURN_NAMES = ("audio", "clips")
    OUTPUT_TOOLTIPS = ("Speech features for CoInteract Sampler.", "Number of 80-frame clips the speech needs.")
    FUNCTION = "encode"

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {
            "required": {
                "audio_encoder_output": ("AUDIO_ENCODER_OUTPUT", {"tooltip": "From AudioEncoderEncode with the "
                                         "wav2vec2-large audio encoder (AudioEncoderLoader)."}),
                "audio": ("AUDIO", {"tooltip": "The speech AUDIO that went into AudioEncoderEncode (its sound is "
                          "passed on, trimmed to the video)."}),
                "allow_silence": ("BOOLEAN", {"default": False, "tooltip": "Accept silent audio (the lips will not "
                                  "move); off: silent audio is an error, as it is usually a wrong input."}),
            }
        }  # fmt: skip

    def encode(self, audio_encoder_output: dict, audio: dict, allow_silence: bool) -> tuple[AudioFeatures, int]:
        waveform, rate = _speech(audio)
        check_speech_duration(waveform.shape[-1], rate)
        hidden = audio_hidden_states(audio_encoder_output)
        encoded = audio_encoder_output.get("audio_samples")
        if encoded is not None and abs(encoded / ENCODER_RATE - waveform.shape[-1] / rate) > 0.1:
            raise ValueError(
                f"the audio encoder output covers {encoded / ENCODER_RATE:.2f} s but the AUDIO lasts "
                f"{waveform.shape[-1] / rate:.2f} s: connect the same AUDIO to AudioEncoderEncode and CoInteract Audio"
            )
        services.optional_import("av", feature="CoInteract Audio")
        from ..cointeract_core.media.audio import is_silent

        if is_silent(waveform.mean(dim=0)):
            if not allow_silence:
                raise ValueError("the audio is silent (below -60 dBFS): give speech, or turn on allow_silence")
            log.warning("CoInteract: the audio is silent; the lips will not move")
        features = resample_features(hidden, AUDIO_FRAME_RATE)[None]  # [1, L, D, T25]
        return (AudioFeatures(features, waveform, rate), clip_count(features.shape[-1], CLIP_FRAMES))


def _speech(audio: dict) -> tuple[torch.Tensor, int]:
    """AUDIO {"waveform": [B, C, T], "sample_rate"} -> ([C, T] float32, rate); empty or batched audio raises."""
    if not isinstance(audio, dict) or "waveform" not in audio or "sample_rate" not in audio:
        raise ValueError("expected an AUDIO input ({'waveform': [batch, channels, samples], 'sample_rate': int})")
    waveform, rate = audio["waveform"], int(audio["sample_rate"])
    if waveform.ndim != 3 or waveform.shape[0] != 1:
        raise ValueError(f"expected one audio clip [1, channels, samples]; got {tuple(waveform.shape)}")
    if waveform.shape[-1] == 0 or waveform.shape[1] == 0 or rate <= 0:
        raise ValueError("the audio has zero samples: load a speech file (LoadAudio) with sound in it")
    return waveform[0].float().cpu(), rate


NODE_CLASS_MAPPINGS = {
    "CoInteractReferences": CoInteractReferences,
    "CoInteractPrompts": CoInteractPrompts,
    "CoInteractAudio": CoInteractAudio,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "CoInteractReferences": "CoInteract References",
    "CoInteractPrompts": "CoInteract Prompts",
    "CoInteractAudio": "CoInteract Audio",
}
