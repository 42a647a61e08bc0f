"""ITU-R BS.1770 integrated loudness and loudness normalisation, in torch (no scipy).

The official training normalises every clip to -23 LUFS with pyloudnorm (skipping clips whose measured loudness
is beyond +-100, i.e. silent ones). We implement the same measurement here rather than depend on pyloudnorm:
it pulls in scipy (~110 MB installed) for two biquads, and the core, the ComfyUI nodes and the CLI should not need
it. The numbers follow pyloudnorm's choices so training data match the official pipeline:
- K-weighting = a high shelf (+4 dB, f0 1500 Hz, Q 1/sqrt(2)) then a high pass (f0 38 Hz, Q 0.5), each designed
  at the signal's own rate with the RBJ audio-EQ-cookbook bilinear formulas (as pyloudnorm does; at 48 kHz they
  are within 0.01 dB of the BS.1770 table);
- 400 ms blocks with 75 % overlap, absolute gate -70 LUFS, relative gate -10 LU, channel weights 1.

The causal biquads are applied exactly up to a negligible tail: as a product of their frequency responses on an
FFT grid long enough that the impulse responses have decayed below 1e-20 (`_tail_length`).
"""

from __future__ import annotations

import logging
import math

import numpy as np
import torch

__all__ = ["k_weighting_biquads", "k_weight", "integrated_loudness", "loudness_normalize"]

logger = logging.getLogger(__name__)

BLOCK_SECONDS = 0.4
HOP_SECONDS = 0.1  # 75 % overlap
ABSOLUTE_GATE_LUFS = -70.0
RELATIVE_GATE_LU = -10.0
MAX_PLAUSIBLE_LUFS = 100.0  # the official training skips normalisation when |loudness| > 100


def _high_shelf(sample_rate: float, f0: float, gain_db: float, q: float) -> tuple[np.ndarray, np.ndarray]:
    """RBJ cookbook high shelf -> (b [3], a [3]) normalised so a[0] = 1."""
    big_a = 10.0 ** (gain_db / 40.0)
    w0 = 2.0 * math.pi * f0 / sample_rate
    cos_w0, alpha = math.cos(w0), math.sin(w0) / (2.0 * q)
    two_sqrt_a_alpha = 2.0 * math.sqrt(big_a) * alpha
    b = [
        big_a * ((big_a + 1) + (big_a - 1) * cos_w0 + two_sqrt_a_alpha),
        -2.0 * big_a * ((big_a - 1) + (big_a + 1) * cos_w0),
        big_a * ((big_a + 1) + (big_a - 1) * cos_w0 - two_sqrt_a_alpha),
    ]
    a = [
        (big_a + 1) - (big_a - 1) * cos_w0 + two_sqrt_a_alpha,
        2.0 * ((big_a - 1) - (big_a + 1) * cos_w0),
        (big_a + 1) - (big_a - 1) * cos_w0 - two_sqrt_a_alpha,
    ]
    return np.array(b) / a[0], np.array(a) / a[0]


def _high_pass(sample_rate: float, f0: float, q: float) -> tuple[np.ndarray, np.ndarray]:
    """RBJ cookbook high pass -> (b [3], a [3]) normalised so a[0] = 1."""
    w0 = 2.0 * math.pi * f0 / sample_rate
    cos_w0, alpha = math.cos(w0), math.sin(w0) / (2.0 * q)
    b = [(1 + cos_w0) / 2, -(1 + cos_w0), (1 + cos_w0) / 2]
    a = [1 + alpha, -2 * cos_w0, 1 - alpha]
    return np.array(b) / a[0], np.array(a) / a[0]


def k_weighting_biquads(sample_rate: float) -> list[tuple[np.ndarray, np.ndarray]]:
    """The two K-weighting stages [(b, a), (b, a)] at `sample_rate` (pre-filter shelf, then RLB high pass)."""
    return [_high_shelf(sample_rate, 1500.0, 4.0, 1.0 / math.sqrt(2.0)), _high_pass(sample_rate, 38.0, 0.5)]


def _tail_length(biquads: list[tuple[np.ndarray, np.ndarray]]) -> int:
    """Samples after which every stage's impulse response is below ~1e-20 (from the largest pole radius)."""
    radius = max(float(np.abs(np.roots(a)).max()) for _, a in biquads)
    if radius >= 1.0:
        raise ValueError(f"K-weighting filter is unstable (pole radius {radius}); the sample rate is too low")
    return int(math.ceil(50.0 / -math.log(radius))) + 16


def k_weight(waveform: torch.Tensor, sample_rate: float) -> torch.Tensor:
    """Causal K-weighting (zero initial state), as `scipy.signal.lfilter` would do: [..., T] -> [..., T] float64."""
    x = torch.as_tensor(waveform, dtype=torch.float64)
    biquads = k_weighting_biquads(sample_rate)
    n = x.shape[-1]
    n_fft = 1 << max(1, (n + _tail_length(biquads)) - 1).bit_length()
    z_inv = np.exp(-2j * np.pi * np.arange(n_fft // 2 + 1) / n_fft)  # e^{-iw} on the rfft grid
    response = np.ones_like(z_inv)
    for b, a in biquads:
        response *= (b[0] + z_inv * (b[1] + z_inv * b[2])) / (a[0] + z_inv * (a[1] + z_inv * a[2]))
    spectrum = torch.fft.rfft(x, n_fft) * torch.from_numpy(response).to(x.device)
    return torch.fft.irfft(spectrum, n_fft)[..., :n]


def _block_powers(weighted: torch.Tensor, sample_rate: float) -> torch.Tensor:
    """Mean square of each 400 ms block (hop 100 ms), summed over channels: [C, T] -> [n_blocks]."""
    block = int(BLOCK_SECONDS * sample_rate)
    n = weighted.shape[-1]
    if n < block:
        return weighted.new_zeros(0)
    n_blocks = int((n - block) / (HOP_SECONDS * sample_rate) + 1e-9) + 1
    starts = torch.floor(torch.arange(n_blocks, dtype=torch.float64) * HOP_SECONDS * sample_rate + 1e-9).long()
    cumsum = torch.nn.functional.pad(weighted.square().cumsum(-1), (1, 0))  # [C, T + 1]
    energy = cumsum[:, starts + block] - cumsum[:, starts]  # [C, n_blocks]
    return energy.sum(0) / (BLOCK_SECONDS * sample_rate)


def integrated_loudness(waveform: torch.Tensor, sample_rate: float) -> float:
    """Gated integrated loudness in LUFS of [T] mono or [C, T] audio; -inf if silent or shorter than 400 ms."""
    x = torch.as_tensor(waveform)
    x = x.reshape(1, -1) if x.ndim == 1 else x
    if x.ndim != 2:
        raise ValueError(f"expected a waveform [T] or [C, T]; got shape {tuple(x.shape)}")
    powers = _block_powers(k_weight(x, sample_rate), sample_rate)
    block_lufs = -0.691 + 10.0 * torch.log10(powers)  # -inf for digital silence
    gated = powers[block_lufs >= ABSOLUTE_GATE_LUFS]
    if gated.numel() == 0:
        return float("-inf")
    relative_gate = -0.691 + 10.0 * math.log10(gated.mean().item()) + RELATIVE_GATE_LU
    gated = powers[(block_lufs > relative_gate) & (block_lufs > ABSOLUTE_GATE_LUFS)]
    if gated.numel() == 0:
        return float("-inf")
    return -0.691 + 10.0 * math.log10(gated.mean().item())


def loudness_normalize(waveform: torch.Tensor, sample_rate: float, target_lufs: float = -23.0) -> torch.Tensor:
    """Scale [T] or [C, T] audio to `target_lufs` (BS.1770); returned unchanged if its loudness is -inf or absurd."""
    loudness = integrated_loudness(waveform, sample_rate)
    if not math.isfinite(loudness) or abs(loudness) > MAX_PLAUSIBLE_LUFS:
        logger.info("loudness normalisation skipped: measured loudness %.1f LUFS (silent or too short)", loudness)
        return waveform
    gain_db = target_lufs - loudness
    out = waveform * (10.0 ** (gain_db / 20.0))
    logger.info("loudness %.2f LUFS -> %.2f LUFS (gain %+.2f dB)", loudness, target_lufs, gain_db)
    peak = float(out.abs().max()) if out.numel() else 0.0
    if peak > 1.0:
        logger.warning("after loudness normalisation the peak is %.2f (above full scale); not clipped", peak)
    return out
