"""Audio files in and out through PyAV (any container/codec FFmpeg decodes), resampling with soxr.

`load_audio` returns what the official pipeline gets from `librosa.load(path, sr=16000)`: float32 mono (channel
mean) resampled with soxr's HQ quality (librosa's default resampler), with integer samples scaled by 1/2^(bits-1).
"""

from __future__ import annotations

import logging
import math
import os
import struct
import wave
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import soxr
import torch

from .fileio import atomic_output, require_file

__all__ = ["AudioClip", "load_audio", "write_wav", "write_audio", "rms_dbfs", "is_silent", "AUDIO_CODECS"]

logger = logging.getLogger(__name__)

# Encoder picked by `write_audio` from the file extension (all ship in PyAV's wheels).
AUDIO_CODECS = {".wav": "pcm_s16le", ".flac": "flac", ".mp3": "libmp3lame", ".m4a": "aac", ".ogg": "libopus"}
_CONTAINERS = {".wav": "wav", ".flac": "flac", ".mp3": "mp3", ".m4a": "ipod", ".ogg": "ogg"}


@dataclass(frozen=True)
class AudioClip:
    """Decoded audio: waveform float32 [T] (mono) or [C, T], plus what the file held before conversion."""

    waveform: torch.Tensor
    sample_rate: int
    source_path: str
    source_rate: int
    source_channels: int
    source_duration: float  # seconds, as decoded

    @property
    def duration(self) -> float:
        """Length of `waveform` in seconds."""
        return self.waveform.shape[-1] / self.sample_rate


def _declared_samples(container: av.container.InputContainer, stream: av.audio.stream.AudioStream) -> int | None:
    """Sample count an MP4/MOV track declares (edit list), or None for other containers or when unknown."""
    if "mp4" not in container.format.name and "mov" not in container.format.name:
        return None
    if stream.duration is None or stream.time_base is None or not stream.codec_context.sample_rate:
        return None
    return round(float(stream.duration * stream.time_base) * stream.codec_context.sample_rate)


def decode_audio(path: Path) -> tuple[np.ndarray, int]:
    """All samples of the first audio stream as float32 [C, T] and the stream's sample rate."""
    chunks: list[np.ndarray] = []
    with av.open(str(path)) as container:
        if not container.streams.audio:
            raise ValueError(f"{str(path)!r} has no audio stream; give a speech file (wav, mp3, m4a, flac, ogg)")
        stream = container.streams.audio[0]
        declared = _declared_samples(container, stream)
        resampler = av.AudioResampler(format="fltp")  # float planar; layout and rate unchanged
        rate = stream.codec_context.sample_rate
        for frame in container.decode(stream):
            rate = frame.sample_rate
            chunks.extend(f.to_ndarray() for f in resampler.resample(frame))
        chunks.extend(f.to_ndarray() for f in resampler.resample(None))
    samples = np.concatenate(chunks, axis=1) if chunks else np.zeros((1, 0), np.float32)
    if declared is not None and 0 < samples.shape[1] - declared <= 2048:
        # FFmpeg applies an MP4 edit list's start (AAC priming) but not its end: drop the encoder's tail padding.
        samples = samples[:, :declared]
    return samples.astype(np.float32, copy=False), rate


def _wav_truncation(path: Path) -> str | None:
    """For a RIFF/WAVE file: why it is truncated (it ends inside its header, or holds less sample data than its
    header declares), else None. Streamed WAVs that declare 0 or 0xFFFFFFFF data bytes are not judged."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(12)
        if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
            return None
        byte_rate = 0
        while True:
            chunk = f.read(8)
            if len(chunk) < 8:
                return "it ends inside its header, before any sample data"
            name, length = chunk[:4], struct.unpack("<I", chunk[4:])[0]
            if name == b"fmt ":
                fmt = f.read(min(length, 16))
                byte_rate = struct.unpack("<I", fmt[8:12])[0] if len(fmt) >= 12 else 0
                f.seek(length - len(fmt) + length % 2, os.SEEK_CUR)
            elif name == b"data":
                held = size - f.tell()
                if length in (0, 0xFFFFFFFF) or held >= length:
                    return None
                if not byte_rate:
                    return f"it holds {held} of the {length} data bytes its header declares"
                return f"it holds {held / byte_rate:.2f} s of the {length / byte_rate:.2f} s its header declares"
            else:
                f.seek(length + length % 2, os.SEEK_CUR)


def load_audio(path: str | os.PathLike, sample_rate: int | None = 16000, mono: bool = True) -> AudioClip:
    """Decode any audio file -> AudioClip (float32 [T] mono by default, resampled to `sample_rate` if not None)."""
    path = require_file(path, "audio")
    truncated = _wav_truncation(path)
    if truncated:
        raise ValueError(f"audio file {str(path)!r} is truncated: {truncated}; copy or export it again")
    try:
        samples, rate = decode_audio(path)
    except av.FFmpegError as e:
        what = "is not a valid WAV file (damaged header?)" if path.suffix.lower() == ".wav" else "could not be decoded"
        raise ValueError(f"audio file {str(path)!r} {what} ({e}); convert it to WAV or MP3") from e
    channels, n = samples.shape
    if n == 0:
        raise ValueError(f"audio file {str(path)!r} holds no samples; give a non-empty speech file")
    if mono and channels > 1:
        samples = samples.mean(axis=0, keepdims=True)
        logger.info("audio %s: %d channels -> mono (mean of channels)", path.name, channels)
    target = rate if sample_rate is None else int(sample_rate)
    if target != rate:
        samples = soxr.resample(samples.T, rate, target, quality="HQ").T
        logger.info("audio %s: resampled %d Hz -> %d Hz (soxr HQ)", path.name, rate, target)
    waveform = torch.from_numpy(np.ascontiguousarray(samples, dtype=np.float32))
    return AudioClip(
        waveform=waveform[0] if mono else waveform,
        sample_rate=target,
        source_path=str(path),
        source_rate=rate,
        source_channels=channels,
        source_duration=n / rate,
    )


def audio_channels(waveform: torch.Tensor | np.ndarray) -> np.ndarray:
    """[T] or [C, T] float audio -> float32 numpy [C, T]."""
    x = waveform.detach().cpu().float().numpy() if isinstance(waveform, torch.Tensor) else np.asarray(waveform)
    x = x.astype(np.float32, copy=False)
    x = x[None] if x.ndim == 1 else x
    if x.ndim != 2 or x.shape[1] == 0:
        raise ValueError(f"expected a non-empty waveform [T] or [C, T]; got shape {tuple(x.shape)}")
    return x


def write_wav(path: str | os.PathLike, waveform: torch.Tensor | np.ndarray, sample_rate: int) -> None:
    """Write [T] or [C, T] float audio in [-1, 1] as 16-bit PCM WAV (stdlib `wave`, atomic; clipped to full scale)."""
    x = audio_channels(waveform)
    # x * 32768 is the inverse of the decoders' int16 / 32768 (soundfile, librosa, FFmpeg); +1.0 clips to 32767.
    pcm = np.clip(np.round(x * 32768.0), -32768, 32767).astype("<i2").T  # [T, C] interleaved
    with atomic_output(path) as tmp, wave.open(str(tmp), "wb") as f:
        f.setnchannels(x.shape[0])
        f.setsampwidth(2)
        f.setframerate(int(sample_rate))
        f.writeframes(pcm.tobytes())


def write_audio(
    path: str | os.PathLike, waveform: torch.Tensor | np.ndarray, sample_rate: int, codec: str | None = None
) -> None:
    """Encode [T] or [C, T] float audio with PyAV (codec from the extension, see AUDIO_CODECS), atomically."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in _CONTAINERS:
        raise ValueError(f"cannot write audio as {suffix!r}; use one of {sorted(_CONTAINERS)}")
    x = audio_channels(waveform)
    with atomic_output(path) as tmp, av.open(str(tmp), mode="w", format=_CONTAINERS[suffix]) as container:
        stream = container.add_stream(codec or AUDIO_CODECS[suffix], rate=int(sample_rate))
        configure_audio_stream(stream, x.shape[0], sample_rate)
        container.mux(audio_packets(stream, x, sample_rate))


def configure_audio_stream(stream: av.audio.stream.AudioStream, channels: int, sample_rate: int) -> None:
    """Set the channel layout and, for lossy codecs, a bit rate the encoder accepts."""
    stream.layout = "mono" if channels == 1 else "stereo" if channels == 2 else f"{channels}c"
    if stream.codec_context.codec.name in ("aac", "libmp3lame", "libopus"):
        # 192k as the official mux, capped at AAC's 6 bits per sample per channel (96k for 16 kHz mono).
        stream.bit_rate = min(192_000, 6 * int(sample_rate) * channels)


def audio_packets(stream: av.audio.stream.AudioStream, samples: np.ndarray, sample_rate: int) -> list[av.Packet]:
    """Encode float32 [C, S] samples into packets of `stream`, flushed (PyAV re-chunks to the codec's frame size)."""
    packets = []
    for start in range(0, samples.shape[1], 4096):
        chunk = np.ascontiguousarray(samples[:, start : start + 4096])
        frame = av.AudioFrame.from_ndarray(chunk, format="fltp", layout=stream.layout.name)
        frame.sample_rate, frame.pts, frame.time_base = int(sample_rate), start, Fraction(1, int(sample_rate))
        packets += stream.encode(frame)
    return packets + stream.encode(None)


def rms_dbfs(waveform: torch.Tensor) -> float:
    """RMS level of the samples in dB relative to full scale (a full-scale sine is -3.01); -inf for silence."""
    x = torch.as_tensor(waveform, dtype=torch.float64)
    if x.numel() == 0:
        return float("-inf")
    rms = math.sqrt(x.square().mean().item())
    return 20.0 * math.log10(rms) if rms > 0 else float("-inf")


def is_silent(waveform: torch.Tensor, threshold_db: float = -60.0) -> bool:
    """True when the RMS level of the waveform is below `threshold_db` dBFS (or it has no samples)."""
    return rms_dbfs(waveform) < threshold_db
