"""Media for training clips: cheap probing (frame count, fps, size, duration) and loading at the training size.

Frames are uint8 [T, H, W, 3]. Loading goes through the core's media and preprocessing: videos and the person
are cover-resized and center-cropped as the official training (`preprocess.cover_crop`), the product is fitted
and padded with black with the training margin 1.0 (`preprocess.fit_product`), audio is 16 kHz mono
(`media_audio.load_audio`). Probing reads headers (and counts packets when the header has no frame count)
instead of decoding, so validating a large CSV stays fast.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np
import torch

__all__ = [
    "VideoInfo",
    "probe_video",
    "probe_audio_seconds",
    "iter_frames",
    "load_frames",
    "load_person",
    "load_product",
    "load_audio_mono",
]


@dataclass(frozen=True)
class VideoInfo:
    frames: int
    fps: float
    height: int
    width: int


def probe_video(path: str | os.PathLike) -> VideoInfo:
    """Frame count (from the header, else by counting packets), frame rate and size of the first video stream."""
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise ValueError("no video stream")
            stream = container.streams.video[0]
            rate = stream.average_rate or stream.guessed_rate or stream.base_rate
            if not rate:
                raise ValueError("the stream has no frame rate")
            frames = stream.frames or sum(1 for p in container.demux(stream) if p.size)
            return VideoInfo(int(frames), float(rate), stream.codec_context.height, stream.codec_context.width)
    except av.FFmpegError as err:
        raise ValueError(str(err)) from None


def probe_audio_seconds(path: str | os.PathLike) -> float:
    """Duration of the first audio stream in seconds (decodes the stream when the header has no duration)."""
    try:
        with av.open(str(path)) as container:
            if not container.streams.audio:
                raise ValueError("no audio stream")
            stream = container.streams.audio[0]
            if stream.duration and stream.time_base:
                return float(stream.duration * stream.time_base)
            samples = sum(f.samples for f in container.decode(stream))
            return samples / stream.codec_context.sample_rate
    except av.FFmpegError as err:
        raise ValueError(str(err)) from None


def iter_frames(path: str | os.PathLike) -> Iterator[np.ndarray]:
    """Decode the first video stream frame by frame -> uint8 [H, W, 3] RGB."""
    with av.open(str(path)) as container:
        for frame in container.decode(video=0):
            yield frame.to_ndarray(format="rgb24")


def _uint8(image: torch.Tensor) -> torch.Tensor:
    """float [..., 3] in [0, 1] holding 8-bit values -> uint8 (exact; numpy: torch's small-tensor round can be slow)."""
    return torch.from_numpy(np.rint(image.numpy() * 255.0).astype(np.uint8))


def load_frames(path: str | os.PathLike, count: int, size: tuple[int, int]) -> torch.Tensor:
    """The first `count` frames, cover-cropped to size (H, W) -> uint8 [count, H, W, 3]; ValueError if shorter."""
    from ..cointeract_core.media.preprocess import cover_crop
    from ..cointeract_core.media.video import load_video

    frames, _ = load_video(path, fps=None, max_frames=count)  # rows are validated to be 25 fps
    if frames.shape[0] < count:
        raise ValueError(f"{Path(path).name} decoded {frames.shape[0]} frames; {count} are needed")
    if tuple(frames.shape[1:3]) == tuple(size):
        return frames
    return torch.stack([_uint8(cover_crop(f, *size)) for f in frames])


def load_person(path: str | os.PathLike, size: tuple[int, int]) -> torch.Tensor:
    """Person image, cover-resized and center-cropped (training) -> uint8 [H, W, 3]."""
    from ..cointeract_core.media.image import load_image
    from ..cointeract_core.media.preprocess import resize_person

    return _uint8(resize_person(load_image(path), *size, mode="cover"))


def load_product(path: str | os.PathLike, size: tuple[int, int], margin: float = 1.0) -> torch.Tensor:
    """Product image, resized to fit and padded with black (training margin 1.0) -> uint8 [H, W, 3]."""
    from ..cointeract_core.media.image import load_image
    from ..cointeract_core.media.preprocess import fit_product

    return _uint8(fit_product(load_image(path), *size, margin))


def load_audio_mono(path: str | os.PathLike, sample_rate: int = 16000, lufs: float | None = -23.0) -> torch.Tensor:
    """Mono float32 waveform [T] at `sample_rate`, normalised to `lufs` (None: as decoded)."""
    from ..cointeract_core.media.audio import load_audio
    from ..cointeract_core.media.loudness import loudness_normalize

    clip = load_audio(path, sample_rate=sample_rate)
    wave = clip.waveform
    return wave if lufs is None else loudness_normalize(wave, sample_rate, lufs).float()
