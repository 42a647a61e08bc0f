"""Conditioning: the encoded inputs of one generation, per-clip views of them, and official prompt constants."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

__all__ = ["Conditioning", "NEGATIVE_PROMPT", "HOI_PREFIX", "resample_features", "clip_count"]

# The official batch_infer negative prompt (reference official-cointeract.md §3.3).
NEGATIVE_PROMPT = (
    "Blurry, worst quality, blurred details, static frame, violent emotions, rapid hand shaking, subtitles, ugly, "
    "deformed, extra fingers, poorly drawn hands, poorly drawn face"
)
# Prepended with no separator to the prompt (and to the negative prompt) for the HOI stream (reference §1.9).
HOI_PREFIX = (
    "a rendered video on a black background showing a 3D human body mesh interacting with an object. The scene "
    "features the human body represented as a polygonal mesh with visible surface geometry, alongside a 3D object. "
    "Following is the RGB description:"
)


def resample_features(
    hidden: torch.Tensor, frame_rate: float = 50.0, fps: float = 25.0, n_frames: int | None = None
) -> torch.Tensor:
    """[L, T_feat, A] features at `frame_rate` -> [L, A, N] (linear, align_corners), N = int(T/frame_rate·fps)."""
    n = int(hidden.shape[1] / float(frame_rate) * fps) if n_frames is None else int(n_frames)  # official float expr
    if n < 1 or hidden.shape[1] < 1:
        raise ValueError(f"cannot resample {hidden.shape[1]} feature frames to {n} video frames; audio too short?")
    return F.interpolate(hidden.transpose(1, 2).float(), size=n, mode="linear", align_corners=True)


def clip_count(audio_frames: int, clip_frames: int = 80, max_clips: int | None = None) -> int:
    """ceil(audio frames / clip frames), capped by `max_clips`."""
    n = max(1, math.ceil(audio_frames / clip_frames))
    return min(n, max_clips) if max_clips else n


@dataclass(frozen=True)
class Conditioning:
    """Encoded inputs of one video. Latents [1, C, 1, h, w]; text [1, L, text_dim]; audio [1, 25, A, T] at 25 fps."""

    person: torch.Tensor
    prompts: tuple[torch.Tensor, ...]  # one per clip; the last repeats
    negative: torch.Tensor
    audio: torch.Tensor
    product: torch.Tensor | None = None
    product_scale: float = 1.0
    pose: tuple[torch.Tensor, ...] | None = None  # per clip [1, C, F, h, w] pose latents; the last repeats
    hoi_prompts: tuple[torch.Tensor, ...] | None = None  # HOI_PREFIX + each prompt
    hoi_negative: torch.Tensor | None = None  # HOI_PREFIX + the negative prompt

    @property
    def audio_frames(self) -> int:
        return self.audio.shape[-1]

    def prompt(self, clip: int) -> torch.Tensor:
        return self.prompts[min(clip, len(self.prompts) - 1)]

    def hoi_prompt(self, clip: int) -> torch.Tensor:
        if self.hoi_prompts is None or self.hoi_negative is None:
            raise ValueError("the HOI preview needs HOI prompts; build the conditioning with hoi=True")
        return self.hoi_prompts[min(clip, len(self.hoi_prompts) - 1)]

    def pose_for(self, clip: int) -> torch.Tensor | None:
        return None if self.pose is None else self.pose[min(clip, len(self.pose) - 1)]

    def audio_window(self, clip: int, frames: int = 80, stride: int = 80) -> torch.Tensor:
        """[1, 25, A, frames] columns [clip·stride, clip·stride + frames), zero past the end of the audio."""
        start = clip * stride
        window = self.audio[..., start : start + frames]
        return F.pad(window, (0, frames - window.shape[-1]))
