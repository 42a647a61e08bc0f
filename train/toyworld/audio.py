"""Speech-like audio for the toy world: voiced syllables (harmonics shaped by vowel formants) under an envelope.

The presenter's mouth opening is the envelope, so audio -> lips is learnable: a frame's RMS level is
proportional to its mean envelope. Everything is deterministic given a numpy Generator.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["Speech", "synthesize_speech", "frame_envelope"]

# (F1, F2) formants in Hz of five vowels; each syllable picks one.
_VOWELS = ((800.0, 1200.0), (300.0, 2300.0), (320.0, 800.0), (500.0, 1900.0), (500.0, 900.0))
_PEAK = 0.3  # waveform amplitude at envelope 1
_NOISE = 0.002  # noise floor, so silence is not exactly zero


@dataclass(frozen=True)
class Speech:
    """A waveform [S] float32 in [-1, 1] at `sample_rate`, its envelope [S] in [0, 1], and voicing [S] bool."""

    waveform: np.ndarray
    envelope: np.ndarray
    voiced: np.ndarray
    sample_rate: int


def _syllable_spans(rng: np.random.Generator, n: int, sr: int) -> list[tuple[int, int]]:
    """Start/end samples of syllables: 120-260 ms long, 30-150 ms gaps, sometimes a 300-600 ms pause."""
    spans, pos = [], int(rng.uniform(0.0, 0.3) * sr)
    while pos < n:
        length = int(rng.uniform(0.12, 0.26) * sr)
        spans.append((pos, min(n, pos + length)))
        gap = rng.uniform(0.3, 0.6) if rng.random() < 0.15 else rng.uniform(0.03, 0.15)
        pos += length + int(gap * sr)
    return spans


def _syllable_envelope(length: int, sr: int, peak: float) -> np.ndarray:
    """Raised-cosine attack (30 ms) and release (50 ms) around a flat top: [length] in [0, peak]."""
    env = np.full(length, peak, dtype=np.float64)
    attack, release = min(length // 2, int(0.03 * sr)), min(length // 2, int(0.05 * sr))
    if attack:
        env[:attack] *= 0.5 - 0.5 * np.cos(np.pi * np.arange(attack) / attack)
    if release:
        env[length - release :] *= 0.5 + 0.5 * np.cos(np.pi * (np.arange(release) + 1) / release)
    return env


def _voiced(rng: np.random.Generator, length: int, sr: int, f0: float) -> np.ndarray:
    """A unit-RMS harmonic tone [length] with a gliding pitch and a random vowel's formant shape."""
    f1, f2 = _VOWELS[rng.integers(len(_VOWELS))]
    glide = f0 * rng.uniform(0.85, 1.15) * np.linspace(1.0, rng.uniform(0.9, 1.1), length)
    phase = 2 * np.pi * np.cumsum(glide) / sr
    tone = np.zeros(length)
    for k in range(1, int(4000 // f0) + 1):
        freq = k * f0
        amp = np.exp(-(((freq - f1) / 150.0) ** 2)) + 0.7 * np.exp(-(((freq - f2) / 200.0) ** 2)) + 0.1 / k
        tone += amp * np.sin(k * phase + rng.uniform(0, 2 * np.pi))
    return tone / max(np.sqrt(np.mean(tone**2)), 1e-8)


def synthesize_speech(rng: np.random.Generator, num_samples: int, sample_rate: int = 16000) -> Speech:
    """`num_samples` of speech-like audio from one speaker (a fixed base pitch of 100-200 Hz)."""
    if num_samples <= 0:
        raise ValueError(f"num_samples must be positive, got {num_samples}")
    f0 = rng.uniform(100.0, 200.0)
    envelope = np.zeros(num_samples)
    wave = np.zeros(num_samples)
    for start, end in _syllable_spans(rng, num_samples, sample_rate):
        env = _syllable_envelope(end - start, sample_rate, rng.uniform(0.6, 1.0))
        envelope[start:end] = env
        wave[start:end] = env * _voiced(rng, end - start, sample_rate, f0)
    wave = _PEAK * wave + _NOISE * rng.standard_normal(num_samples)
    return Speech(np.clip(wave, -1, 1).astype(np.float32), envelope.astype(np.float32), envelope > 0, sample_rate)


def frame_envelope(envelope: np.ndarray, samples_per_frame: int) -> np.ndarray:
    """Per-sample envelope [S] -> mean envelope per video frame [S // samples_per_frame]."""
    n = len(envelope) // samples_per_frame
    return envelope[: n * samples_per_frame].reshape(n, samples_per_frame).mean(axis=1)
