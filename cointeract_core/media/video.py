"""Video files through PyAV: read frames resampled to a frame rate, write H.264 + AAC mp4 atomically, probe.

Reading (`load_video`): the official pipeline reads pose videos frame by frame and ignores their frame rate (its
demo pose videos are 30 fps, played as 25 fps: motion runs 20 % slow and drifts from the speech). We resample the
frame timeline to `fps` instead: output frame k shows the source frame whose timestamp is nearest to k / fps
(ties go to the earlier frame), for every k / fps inside the source's duration. `fps=None` keeps every frame.

Writing (`write_video`): libx264 (yuv420p, CRF, `+faststart`) and AAC. yuv420p needs even sizes; an odd height or
width is padded by repeating the last row / column (logged), since cropping would lose content. With audio:
- `trim_to_audio=True`: frames beyond the audio are dropped; kept = ceil(audio seconds x fps), so the picture
  covers every audio sample and the video outlasts the audio by less than one frame;
- the audio is never longer than the kept frames: a longer track is cut at the last frame's end (as ffmpeg's
  `-shortest`, which the official mux uses).
The file is encoded under a temporary name in the same folder and renamed at the end (`fileio.atomic_output`).
"""

from __future__ import annotations

import itertools
import logging
import math
import os
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import torch

from .audio import audio_channels, audio_packets, configure_audio_stream, decode_audio
from .fileio import atomic_output, require_file

__all__ = ["load_video", "write_video", "probe"]

logger = logging.getLogger(__name__)

_VIDEO_CONTAINERS = {".mp4": "mp4", ".mov": "mov"}  # MP4 edit lists give exact AAC start and end
_SUBTICKS = 512  # time-base refinement for a shortened last frame (1/25 s -> 1/12800 s, the mp4 default)


def _timed_frames(frames: Iterator[av.VideoFrame], rate: float) -> Iterator[tuple[float, av.VideoFrame]]:
    """(seconds from the first frame, frame); frames without a timestamp are placed at index / rate."""
    t0 = None
    for i, frame in enumerate(frames):
        t = frame.time if frame.time is not None else i / rate
        t0 = t if t0 is None else t0
        yield t - t0, frame


def _rgb(frame: av.VideoFrame) -> np.ndarray:
    """Decoded frame -> uint8 [H, W, 3] RGB."""
    return frame.to_ndarray(format="rgb24")


def _resample_nearest(
    frames: Iterator[tuple[float, av.VideoFrame]], fps: float, max_frames: int | None, src_rate: float
) -> list[np.ndarray]:
    """Nearest-timestamp frames at times k / fps inside the source duration -> list of uint8 [H, W, 3]."""
    out: list[np.ndarray] = []
    prev_t, prev, prev_rgb = None, None, None
    k = 0
    limit = math.inf if max_frames is None else max_frames
    for t, frame in frames:
        while prev is not None and k < limit and k / fps <= (prev_t + t) / 2:  # prev is nearest (ties: earlier)
            prev_rgb = _rgb(prev) if prev_rgb is None else prev_rgb
            out.append(prev_rgb)
            k += 1
        if k >= limit:
            return out
        prev_t, prev, prev_rgb = t, frame, None
    if prev is not None:
        end = prev_t + 1.0 / src_rate  # the last frame is shown for one source frame period
        while k < limit and k / fps < end - 1e-9:
            prev_rgb = _rgb(prev) if prev_rgb is None else prev_rgb
            out.append(prev_rgb)
            k += 1
    return out


def load_video(
    path: str | os.PathLike, fps: float | None = 25.0, max_frames: int | None = None
) -> tuple[torch.Tensor, float]:
    """Decode a video -> (frames uint8 [T, H, W, 3], fps); resampled to `fps` by nearest timestamp unless None."""
    path = require_file(path, "video")
    if fps is not None and fps <= 0:
        raise ValueError(f"fps must be positive or None; got {fps}")
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise ValueError(f"{str(path)!r} has no video stream; give a video file (mp4, mov, mkv, webm, gif)")
            stream = container.streams.video[0]
            src_rate = float(stream.guessed_rate or stream.average_rate or 25)
            timed = _timed_frames(container.decode(stream), src_rate)
            if fps is None:
                frames = [_rgb(f) for _, f in itertools.islice(timed, max_frames)]
            else:
                frames = _resample_nearest(timed, float(fps), max_frames, src_rate)
    except av.FFmpegError as e:
        raise ValueError(f"could not decode video {str(path)!r} ({e}); re-encode it as H.264 mp4") from e
    if not frames:
        raise ValueError(f"video {str(path)!r} has no frames; give a non-empty video")
    if fps is not None and abs(src_rate - fps) > 1e-3:
        logger.info("video %s: %.3f fps -> %.3f fps (nearest frame), %d frames", path.name, src_rate, fps, len(frames))
    return torch.from_numpy(np.stack(frames)), src_rate if fps is None else float(fps)


def _uint8_frames(frames: torch.Tensor | np.ndarray) -> np.ndarray:
    """[T, H, W, 3] uint8, or float in [0, 1] (rounded, clamped) -> numpy uint8 [T, H, W, 3]."""
    x = frames.detach().cpu().numpy() if isinstance(frames, torch.Tensor) else np.asarray(frames)
    if x.ndim != 4 or x.shape[-1] != 3 or x.shape[0] == 0:
        raise ValueError(f"expected frames [T, H, W, 3] with T >= 1; got shape {tuple(x.shape)}")
    if x.dtype != np.uint8:
        if not np.issubdtype(x.dtype, np.floating):
            raise ValueError(f"frames must be uint8 or float in [0, 1]; got {x.dtype}")
        x = np.round(np.clip(x.astype(np.float32), 0.0, 1.0) * 255.0).astype(np.uint8)
    return x


def _pad_even(frames: np.ndarray) -> np.ndarray:
    """Repeat the last row / column so that H and W are even (yuv420p needs it)."""
    t, h, w, _ = frames.shape
    if h % 2 == 0 and w % 2 == 0:
        return frames
    logger.info("video %dx%d padded to %dx%d (H.264 yuv420p needs even sizes)", w, h, w + w % 2, h + h % 2)
    return np.pad(frames, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)), mode="edge")


def _video_frame(image: np.ndarray) -> av.VideoFrame:
    """uint8 [H, W, 3] -> an RGB VideoFrame (the encoder converts it to yuv420p)."""
    return av.VideoFrame.from_ndarray(image, format="rgb24")


def _trim(
    n_frames: int, fps: float, audio: np.ndarray | None, sample_rate: int, trim_to_audio: bool
) -> tuple[int, int, float | None]:
    """(frames kept, audio samples kept, end of the video track in seconds or None) per the module docstring."""
    if audio is None:
        return n_frames, 0, None
    audio_seconds = audio.shape[1] / sample_rate
    kept, end = n_frames, None
    if trim_to_audio and n_frames / fps > audio_seconds:
        kept = max(1, math.ceil(audio_seconds * fps - 1e-9))
        end = audio_seconds if kept / fps > audio_seconds else None  # the last frame is shortened to end there
        logger.info("video trimmed to the audio: %d -> %d frames (%.3f s of audio)", n_frames, kept, audio_seconds)
    samples = min(audio.shape[1], round(kept / fps * sample_rate))
    if samples < audio.shape[1]:
        logger.info("audio cut at the last frame: %.3f s -> %.3f s", audio_seconds, samples / sample_rate)
    return kept, samples, end


def _video_packets(
    stream: av.video.stream.VideoStream, video: np.ndarray, end_seconds: float | None
) -> list[av.Packet]:
    """Encode the frames; with `end_seconds`, shorten the last displayed frame so the track ends exactly there."""
    packets = [p for frame in video for p in stream.encode(_video_frame(frame))]
    packets += stream.encode(None)
    if end_seconds is None or not packets:
        return packets
    # The codec's time base is 1 / fps; a finer one lets the last frame last a fraction of a frame.
    fine = packets[0].time_base / _SUBTICKS
    for p in packets:
        p.pts, p.dts, p.duration, p.time_base = p.pts * _SUBTICKS, p.dts * _SUBTICKS, p.duration * _SUBTICKS, fine
    last = max(packets, key=lambda p: p.pts)
    end = round(Fraction(end_seconds).limit_denominator(1 << 20) / fine)
    if end > last.pts:
        last.duration = end - last.pts
    return packets


def write_video(
    path: str | os.PathLike,
    frames: torch.Tensor | np.ndarray,
    fps: float = 25.0,
    audio: torch.Tensor | np.ndarray | None = None,
    sample_rate: int = 16000,
    crf: int = 18,
    trim_to_audio: bool = True,
    preset: str = "medium",
) -> None:
    """Write frames [T, H, W, 3] (uint8 or float 0..1) as H.264 mp4 with optional audio [S] or [C, S], atomically."""
    path = Path(path)
    fmt = _VIDEO_CONTAINERS.get(path.suffix.lower())
    if fmt is None:
        raise ValueError(f"cannot write video as {path.suffix!r}; use one of {sorted(_VIDEO_CONTAINERS)}")
    video = _pad_even(_uint8_frames(frames))
    samples = None if audio is None else audio_channels(audio)
    kept, n_samples, end = _trim(video.shape[0], fps, samples, sample_rate, trim_to_audio)
    options = {"movflags": "+faststart"}  # index first: playable while downloading
    with atomic_output(path) as tmp, av.open(str(tmp), mode="w", format=fmt, options=options) as container:
        stream = container.add_stream("libx264", rate=Fraction(fps).limit_denominator(1001))
        stream.width, stream.height, stream.pix_fmt = video.shape[2], video.shape[1], "yuv420p"
        stream.options = {"crf": str(crf), "preset": preset}
        packets = _video_packets(stream, video[:kept], end)
        if samples is not None:
            audio_stream = container.add_stream("aac", rate=int(sample_rate))
            configure_audio_stream(audio_stream, samples.shape[0], sample_rate)
            packets += audio_packets(audio_stream, samples[:, :n_samples], sample_rate)
        packets.sort(key=lambda p: p.dts * p.time_base)  # interleave by decode time
        container.mux(packets)


def probe(path: str | os.PathLike) -> dict:
    """Stream facts of a media file, counted by decoding: {"format", "duration", "video": {...}, "audio": {...}}."""
    path = require_file(path, "media")
    info: dict = {"video": None, "audio": None}
    with av.open(str(path)) as container:
        info["format"] = container.format.name
        info["duration"] = None if container.duration is None else container.duration / av.time_base
        has_audio = bool(container.streams.audio)
        if container.streams.video:
            s = container.streams.video[0]
            n = sum(1 for _ in container.decode(s))
            rate = s.guessed_rate or s.average_rate
            seconds = float(s.duration * s.time_base) if s.duration is not None else None
            info["video"] = {"codec": s.codec_context.name, "width": s.width, "height": s.height,
                             "pix_fmt": s.codec_context.pix_fmt, "fps": float(rate) if rate else None,
                             "frames": n, "duration": seconds}  # fmt: skip
    if has_audio:
        samples, rate = decode_audio(path)  # MP4 tail padding removed, as load_audio does
        info["audio"] = {"sample_rate": rate, "channels": samples.shape[0], "samples": samples.shape[1],
                         "duration": samples.shape[1] / rate}  # fmt: skip
    return info
