"""Lossless media files for the toy world: RGB H.264 at CRF 0 in mp4 (exact pixels), PNG images.

`cointeract_core.media.write_video` writes yuv420p H.264, which changes colours; the toy world's evaluation
segments frames by exact palette colours, so its videos must round-trip bit-exactly. libx264rgb at CRF 0 does,
in an ordinary mp4 that PyAV / FFmpeg (and so the trainer and the official code) read. Where the PyAV build
lacks libx264rgb, FFV1 in Matroska is used instead (also exact).
"""

from __future__ import annotations

import logging
import os
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from PIL import Image

from ...cointeract_core.media.fileio import atomic_output

__all__ = ["write_lossless_video", "write_png", "lossless_video_suffix", "frame_grid"]

logger = logging.getLogger(__name__)


def lossless_video_suffix() -> str:
    """'.mp4' when libx264rgb is available, else '.mkv' (FFV1)."""
    return ".mp4" if "libx264rgb" in av.codecs_available else ".mkv"


def write_lossless_video(path: str | os.PathLike, frames: np.ndarray, fps: float = 25.0) -> None:
    """Frames [T, H, W, 3] uint8 -> an exactly decodable video at `fps` (.mp4: libx264rgb CRF 0; .mkv: FFV1)."""
    path = Path(path)
    frames = np.asarray(frames)
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3 or not len(frames):
        raise ValueError(f"expected uint8 frames [T, H, W, 3] with T >= 1, got {frames.dtype} {frames.shape}")
    suffix = path.suffix.lower()
    if suffix == ".mp4":
        codec, pix_fmt, options, fmt = "libx264rgb", "rgb24", {"crf": "0", "preset": "medium"}, "mp4"
    elif suffix == ".mkv":
        codec, pix_fmt, options, fmt = "ffv1", "bgr0", {}, "matroska"
    else:
        raise ValueError(f"lossless video must be .mp4 or .mkv, got {path.name!r}")
    if codec not in av.codecs_available:
        raise ValueError(f"this PyAV build has no {codec} encoder; write {lossless_video_suffix()} instead")
    with atomic_output(path) as tmp, av.open(str(tmp), mode="w", format=fmt) as container:
        stream = container.add_stream(codec, rate=Fraction(fps).limit_denominator(1001))
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], pix_fmt
        stream.options = options
        for image in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")))
        container.mux(stream.encode(None))


def write_png(path: str | os.PathLike, image: np.ndarray) -> None:
    """An RGB image [H, W, 3] uint8 -> PNG (atomic)."""
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] != 3:
        raise ValueError(f"expected a uint8 RGB image [H, W, 3], got {image.dtype} {image.shape}")
    with atomic_output(path) as tmp:
        Image.fromarray(image).save(tmp, format="PNG")


def frame_grid(frames: np.ndarray, columns: int = 10, step: int = 8, scale: int = 1) -> np.ndarray:
    """Every `step`-th frame of [T, H, W, 3] uint8 tiled in rows of `columns` (black padding), enlarged `scale`x."""
    picked = np.asarray(frames)[::step]
    if picked.ndim != 4 or not len(picked) or columns < 1 or scale < 1:
        raise ValueError(
            f"expected frames [T, H, W, 3] and positive columns/scale, got {picked.shape}, {columns}, {scale}"
        )
    rows = -(-len(picked) // columns)
    pad = np.zeros((rows * columns - len(picked),) + picked.shape[1:], dtype=picked.dtype)
    tiles = np.concatenate([picked, pad]).reshape(rows, columns, *picked.shape[1:])
    grid = tiles.transpose(0, 2, 1, 3, 4).reshape(rows * picked.shape[1], columns * picked.shape[2], 3)
    return grid.repeat(scale, axis=0).repeat(scale, axis=1)
