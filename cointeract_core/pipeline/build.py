"""Raw inputs -> Conditioning: reference images, prompts, speech and pose, preprocessed as batch_infer does.

Defaults reproduce the official inference preprocessing (person stretched to the frame, product fitted with the
1/1.25 margin and padded with black, no loudness normalisation); each is an option.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from ..errors import UserError
from ..media.audio import is_silent
from ..media.loudness import loudness_normalize
from ..media.preprocess import cover_crop, fit_product, resize_person, round_resolution, to_model_range
from .checks import check_reference_image, check_speech_duration
from .conditioning import HOI_PREFIX, NEGATIVE_PROMPT, Conditioning, clip_count, resample_features
from .protocols import AudioEncoder, TextEncoder, VideoVAE

__all__ = ["InputOptions", "build_conditioning", "frame_size", "encode_prompts", "audio_features", "pose_latents"]
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class InputOptions:
    """How raw inputs are prepared. Height × width in pixels (official default 832 × 480, portrait)."""

    height: int = 832
    width: int = 480
    person_fit: Literal["stretch", "cover"] = "stretch"  # training uses "cover"
    product_margin: float = 1.25  # training uses 1.0
    loudness_lufs: float | None = None  # training normalises to -23 LUFS
    negative_prompt: str = NEGATIVE_PROMPT
    allow_empty_prompt: bool = False
    allow_silence: bool = False
    clip_frames: int = 80
    max_clips: int | None = None


def frame_size(opts: InputOptions, vae: VideoVAE, patch: int = 2) -> tuple[int, int]:
    """(height, width) rounded up to multiples of VAE stride × patch; raises when too small for motion latents."""
    multiple = vae.spatial_factor * patch
    h, w, _ = round_resolution(opts.height, opts.width, multiple)
    if min(h, w) < 8 * vae.spatial_factor:
        raise ValueError(
            f"resolution {h}x{w} (HxW) is too small: motion latents need at least 8x8 cells, i.e. sides >= "
            f"{8 * vae.spatial_factor} pixels"
        )
    return h, w


def encode_prompts(encoder: TextEncoder, prompts: list[str], opts: InputOptions, hoi: bool) -> dict:
    """Per-clip prompts, negative, and (when `hoi`) the HOI-prefixed versions -> [1, L, text_dim] tensors."""
    if not prompts or any(not p.strip() for p in prompts):
        if not opts.allow_empty_prompt:
            raise UserError("a prompt is empty; describe the video (or allow empty prompts: --allow-empty-prompt)")
        prompts = prompts or [""]
    texts = list(prompts) + [opts.negative_prompt]
    if hoi:
        texts += [HOI_PREFIX + p for p in prompts] + [HOI_PREFIX + opts.negative_prompt]
    embs = [e[None].float() for e in encoder.encode(texts)]
    n = len(prompts)
    out = dict(prompts=tuple(embs[:n]), negative=embs[n])
    if hoi:
        out.update(hoi_prompts=tuple(embs[n + 1 : 2 * n + 1]), hoi_negative=embs[2 * n + 1])
    return out


def audio_features(encoder: AudioEncoder, waveform: torch.Tensor, sample_rate: int, opts: InputOptions) -> torch.Tensor:
    """Mono waveform [T] at `sample_rate` -> [1, layers, A, T25] features at 25 fps."""
    if waveform.ndim != 1 or waveform.numel() == 0:
        raise ValueError(f"expected a non-empty mono waveform [T]; got shape {tuple(waveform.shape)}")
    if sample_rate != encoder.sample_rate:
        raise ValueError(f"audio is {sample_rate} Hz but the encoder needs {encoder.sample_rate} Hz; resample it")
    check_speech_duration(waveform.numel(), sample_rate)
    if is_silent(waveform):
        if not opts.allow_silence:
            raise UserError(
                "the audio is silent (below -60 dBFS); give speech, or allow silence: --allow-silence (the lips "
                "will not move)"
            )
        log.warning("the audio is silent: the lips will not move")
    elif opts.loudness_lufs is not None:
        waveform = loudness_normalize(waveform, sample_rate, opts.loudness_lufs)
    with torch.no_grad():
        hidden = encoder.hidden_states(waveform.float())
    return resample_features(hidden, encoder.frame_rate)[None]


def pose_latents(vae: VideoVAE, frames: torch.Tensor, n_clips: int, hw: tuple[int, int], clip: int = 80) -> tuple:
    """Pose video [T, H0, W0, 3] uint8 at 25 fps -> per clip [1, C, clip/4, h, w]: 80 frames (black past the end),
    the first repeated in front (81 frames), encoded, latent 0 dropped (official)."""
    if tuple(frames.shape[1:3]) != tuple(hw):
        log.info("pose video %dx%d (WxH) -> %dx%d, scaled to cover and centre-cropped", frames.shape[2],
                 frames.shape[1], hw[1], hw[0])  # fmt: skip
    video = torch.stack([cover_crop(f.float() / 255.0, *hw) for f in frames])  # [T, H, W, 3]
    video = video.permute(3, 0, 1, 2)[None] * 2 - 1  # [1, 3, T, H, W]
    out = []
    for r in range(n_clips):
        chunk = video[:, :, r * clip : (r + 1) * clip]
        chunk = F.pad(chunk, (0, 0, 0, 0, 0, clip - chunk.shape[2]), value=-1.0)
        with torch.no_grad():
            out.append(vae.encode(torch.cat([chunk[:, :, :1], chunk], dim=2))[:, :, 1:])
    return tuple(out)


def _encode_image(vae: VideoVAE, image: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return vae.encode(to_model_range(image)).float()


def build_conditioning(
    vae: VideoVAE,
    text_encoder: TextEncoder,
    audio_encoder: AudioEncoder,
    person: torch.Tensor,
    prompts: list[str],
    waveform: torch.Tensor,
    sample_rate: int,
    *,
    product: torch.Tensor | None = None,
    product_scale: float = 1.0,
    pose: torch.Tensor | None = None,
    hoi: bool = False,
    opts: InputOptions | None = None,
) -> Conditioning:
    """Images [H0, W0, 3] in [0, 1], one prompt per clip (the last repeats), speech [T] -> Conditioning."""
    opts = opts or InputOptions()
    if not math.isfinite(product_scale) or product_scale <= 0:
        raise ValueError(f"product scale must be a positive number; got {product_scale}")
    check_reference_image(*person.shape[:2], "person")
    if product is not None:
        check_reference_image(*product.shape[:2], "product")
    h, w = frame_size(opts, vae)
    texts = encode_prompts(text_encoder, prompts, opts, hoi)
    audio = audio_features(audio_encoder, waveform, sample_rate, opts)
    n_clips = clip_count(audio.shape[-1], opts.clip_frames, opts.max_clips)
    return Conditioning(
        person=_encode_image(vae, resize_person(person, h, w, opts.person_fit)),
        product=None if product is None else _encode_image(vae, fit_product(product, h, w, opts.product_margin)),
        product_scale=product_scale,
        audio=audio,
        pose=None if pose is None else pose_latents(vae, pose, n_clips, (h, w), opts.clip_frames),
        **texts,
    )
