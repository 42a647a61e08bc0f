"""Media for training clips: probing (frame count, fps, size, duration) and loading at the training size.

Frames are uint8 [T, H, W, 3]. Resizing follows the official training (`ImageCropAndResize`): cover scale
s = max(W/w, H/h), resize to (round(h·s), round(w·s)) with LANCZOS when s < 1 else BILINEAR, center crop at
offset round((resized − target)/2). The product is resized to fit and padded with black (`ImageResizeAndPad`,
no /1.25 margin). Audio comes through `cointeract_core.media_audio.load_audio` (16 kHz mono, soxr).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np
import torch
from PIL import Image

__all__ = [
    "VideoInfo",
    "probe_video",
    "probe_audio_seconds",
    "iter_frames",
    "cover_crop",
    "fit_pad",
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


def _resample(scale: float) -> Image.Resampling:
    return Image.Resampling.LANCZOS if scale < 1 else Image.Resampling.BILINEAR


def cover_crop(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """uint8 [h, w, 3] -> [height, width, 3]: cover-resize then center crop (official ImageCropAndResize)."""
    h, w = image.shape[:2]
    s = max(width / w, height / h)
    rh, rw = round(h * s), round(w * s)
    im = Image.fromarray(image)
    if (rh, rw) != (h, w):
        im = im.resize((rw, rh), _resample(s))
    top, left = int(round((rh - height) / 2.0)), int(round((rw - width) / 2.0))
    return np.array(im.crop((left, top, left + width, top + height)))


def fit_pad(image: np.ndarray, height: int, width: int, margin: float = 1.0) -> np.ndarray:
    """uint8 [h, w, 3] -> [height, width, 3]: resize to fit (scale min(W/w, H/h)/margin), center-pad with black."""
    h, w = image.shape[:2]
    s = min(width / w, height / h) / margin
    nh, nw = max(1, round(h * s)), max(1, round(w * s))
    im = Image.fromarray(image)
    if (nh, nw) != (h, w):
        im = im.resize((nw, nh), _resample(s))
    out = np.zeros((height, width, 3), np.uint8)
    top, left = (height - nh) // 2, (width - nw) // 2
    out[top : top + nh, left : left + nw] = np.asarray(im)
    return out


def load_frames(path: str | os.PathLike, count: int, size: tuple[int, int]) -> torch.Tensor:
    """The first `count` frames, cover-cropped to size (H, W) -> uint8 [count, H, W, 3]; ValueError if shorter."""
    frames = []
    for frame in iter_frames(path):
        frames.append(cover_crop(frame, *size))
        if len(frames) == count:
            break
    if len(frames) < count:
        raise ValueError(f"{Path(path).name} decoded {len(frames)} frames; {count} are needed")
    return torch.from_numpy(np.stack(frames))


def _read_image(path: str | os.PathLike) -> np.ndarray:
    with Image.open(path) as im:
        return np.array(im.convert("RGB"))


def load_person(path: str | os.PathLike, size: tuple[int, int]) -> torch.Tensor:
    """Person image, cover-resized and center-cropped -> uint8 [H, W, 3]."""
    return torch.from_numpy(cover_crop(_read_image(path), *size))


def load_product(path: str | os.PathLike, size: tuple[int, int], margin: float = 1.0) -> torch.Tensor:
    """Product image, resized to fit and padded with black (training margin 1.0) -> uint8 [H, W, 3]."""
    return torch.from_numpy(fit_pad(_read_image(path), *size, margin))


def load_audio_mono(path: str | os.PathLike, sample_rate: int = 16000, lufs: float | None = -23.0) -> torch.Tensor:
    """Mono float32 waveform [T] at `sample_rate`, normalised to `lufs` (None: as decoded)."""
    from ..cointeract_core.loudness import loudness_normalize
    from ..cointeract_core.media_audio import load_audio

    clip = load_audio(path, sample_rate=sample_rate)
    wave = clip.waveform
    return wave if lufs is None else loudness_normalize(wave, sample_rate, lufs).float()
