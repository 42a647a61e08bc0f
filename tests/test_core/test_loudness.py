"""BS.1770 loudness: equals pyloudnorm (the official training's meter), exact causal filtering, gating, normalising."""

from __future__ import annotations

import logging
import math

import numpy as np
import pytest
import torch

from comfyui_cointeract.cointeract_core.media.loudness import (
    integrated_loudness,
    k_weight,
    k_weighting_biquads,
    loudness_normalize,
)


def _signal(name: str, sr: int) -> np.ndarray:
    """3 s deterministic test signals ([T], or [2, T] for the stereo one)."""
    t = np.arange(int(3.0 * sr)) / sr
    if name == "sine997":
        return 0.5 * np.sin(2 * np.pi * 997 * t)
    if name == "chirp_then_hum":  # a loud sweep for 1.5 s, then a hum 30 dB down (exercises the relative gate)
        return 0.3 * np.sin(2 * np.pi * (50 + 2000 * t) * t) * (t < 1.5) + 0.01 * np.sin(2 * np.pi * 100 * t)
    if name == "bass40":  # near the RLB high-pass corner
        return 0.5 * np.sin(2 * np.pi * 40 * t)
    return np.stack([0.2 * np.sin(2 * np.pi * 5000 * t), 0.1 * np.sin(2 * np.pi * 7000 * t)])  # on the shelf


# pyloudnorm 0.2.0 `Meter(sr).integrated_loudness(x)` (x as [T, C]) for the signals above, recorded once.
PYLOUDNORM = [
    ("sine997", 16000, -9.103815596744589),
    ("chirp_then_hum", 16000, -11.218062977383218),
    ("bass40", 16000, -15.310891115172057),
    ("treble_stereo", 16000, -12.717372180258215),
    ("sine997", 44100, -9.073003682607293),
    ("chirp_then_hum", 44100, -11.252884112061142),
    ("bass40", 44100, -15.310888635910423),
    ("treble_stereo", 44100, -12.735974772565696),
    ("sine997", 48000, -9.072280603851064),
    ("chirp_then_hum", 48000, -11.253830836411536),
    ("bass40", 48000, -15.31088821525238),
    ("treble_stereo", 48000, -12.736634147862874),
]


@pytest.mark.parametrize(("name", "sr", "expected"), PYLOUDNORM, ids=[f"{n}@{sr}" for n, sr, _ in PYLOUDNORM])
def test_matches_pyloudnorm(name, sr, expected):
    assert integrated_loudness(torch.from_numpy(_signal(name, sr)), sr) == pytest.approx(expected, abs=1e-6)


def _lfilter(b: np.ndarray, a: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Direct-form biquad recursion with zero initial state (what scipy.signal.lfilter computes)."""
    y = np.zeros_like(x)
    for n in range(len(x)):
        acc = b[0] * x[n]
        if n >= 1:
            acc += b[1] * x[n - 1] - a[1] * y[n - 1]
        if n >= 2:
            acc += b[2] * x[n - 2] - a[2] * y[n - 2]
        y[n] = acc
    return y


@pytest.mark.parametrize("sr", [8000, 16000, 48000])
def test_fft_filtering_equals_the_causal_recursion(sr):
    x = np.random.default_rng(1).standard_normal(3000)
    expected = x
    for b, a in k_weighting_biquads(sr):
        expected = _lfilter(b, a, expected)
    assert np.abs(k_weight(torch.from_numpy(x), sr).numpy() - expected).max() < 1e-12


def test_k_weighting_shape_of_the_response():
    # Gain of a long steady sine through the filter, in dB: the shelf lifts highs by ~4 dB, the RLB cuts lows.
    sr = 48000
    t = np.arange(sr * 2) / sr

    def gain_db(freq: float) -> float:
        y = k_weight(torch.from_numpy(np.sin(2 * np.pi * freq * t)), sr)[sr:]
        return 20 * math.log10(float(y.square().mean().sqrt()) * math.sqrt(2))

    assert gain_db(997) == pytest.approx(0.69, abs=0.05)  # why BS.1770 subtracts 0.691
    assert gain_db(10000) == pytest.approx(4.0, abs=0.1)
    assert gain_db(20) < -10


def test_level_scaling_and_normalisation(caplog):
    sr = 16000
    x = torch.from_numpy(_signal("chirp_then_hum", sr)).float()
    assert integrated_loudness(2 * x, sr) - integrated_loudness(x, sr) == pytest.approx(20 * math.log10(2), abs=1e-4)
    with caplog.at_level(logging.INFO):
        y = loudness_normalize(x, sr, target_lufs=-23.0)
    assert y.dtype == torch.float32 and y.shape == x.shape
    assert integrated_loudness(y, sr) == pytest.approx(-23.0, abs=1e-4)
    assert "-> -23.00 LUFS" in caplog.text


def test_gates():
    sr = 16000
    loud = _signal("sine997", sr)[: 2 * sr]
    quiet = 10 ** (-30 / 20) * loud  # 30 LU down: below the relative gate
    with_quiet = np.concatenate([loud, quiet])
    with_silence = np.concatenate([loud, np.zeros(4 * sr)])  # below the absolute gate
    reference = integrated_loudness(torch.from_numpy(loud), sr)
    # Ungated, the quiet half would pull the mean power down ~3 dB; gated, only blocks straddling the edge count.
    assert abs(integrated_loudness(torch.from_numpy(with_quiet), sr) - reference) < 0.6
    assert abs(integrated_loudness(torch.from_numpy(with_silence), sr) - reference) < 0.6


def test_silent_or_short_audio_is_not_normalised(caplog):
    sr = 16000
    assert integrated_loudness(torch.zeros(sr), sr) == -math.inf
    assert integrated_loudness(torch.ones(sr // 4) * 0.5, sr) == -math.inf  # shorter than one 400 ms block
    silence = torch.zeros(2 * sr)
    with caplog.at_level(logging.INFO):
        out = loudness_normalize(silence, sr)
    assert out is silence and "skipped" in caplog.text
    whisper = torch.from_numpy(_signal("sine997", sr)).float() * 1e-4  # ~ -89 LUFS: every block under -70
    assert integrated_loudness(whisper, sr) == -math.inf and loudness_normalize(whisper, sr) is whisper
