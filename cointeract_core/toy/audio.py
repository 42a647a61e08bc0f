"""Toy speech features behind the AudioEncoder protocol: band energies and voicing every 20 ms, 25 "layers".

Frames follow wav2vec2's framing (400-sample receptive field, 320-sample hop at 16 kHz, so 3.24 s gives 161
frames). Per frame: log energies in mel-spaced bands, log energy, voicing (the normalised autocorrelation
peak at 80-400 Hz pitch lags) and spectral centroid. The 25 layers are views of these at different time
scales — raw; centred moving averages over 3..25 frames; and slopes over 1..12 frames on either side — so
the DiT's learned 25-layer mix chooses how much context it sees, as it does with wav2vec2's hidden states.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = ["ToyAudioFeatures"]

_WINDOW, _HOP, _NFFT = 400, 320, 512


def _mel(hz: torch.Tensor) -> torch.Tensor:
    return 2595.0 * torch.log10(1.0 + hz / 700.0)


class ToyAudioFeatures:
    """Mono 16 kHz waveform [T] -> [25, T_feat, feature_dim] float32 at 50 frames per second."""

    sample_rate = 16000
    frame_rate = 50.0
    num_layers = 25

    def __init__(self, feature_dim: int = 16) -> None:
        if feature_dim < 4:
            raise ValueError(
                f"feature_dim must be >= 4 (at least one band + energy, voicing, centroid), got {feature_dim}"
            )
        self.feature_dim = feature_dim
        bands = feature_dim - 3
        freqs = torch.fft.rfftfreq(_NFFT, 1.0 / self.sample_rate)  # [257]
        edges = torch.linspace(_mel(torch.tensor(60.0)), _mel(torch.tensor(8000.0)), bands + 1)
        mel = _mel(freqs)
        member = (mel[:, None] >= edges[None, :-1]) & (mel[:, None] < edges[None, 1:])  # [257, bands]
        member[-1, -1] = True  # the Nyquist bin belongs to the top band
        self.band_matrix = member.float() / member.float().sum(0).clamp_min(1.0)
        self.window = torch.hann_window(_WINDOW, periodic=False)
        self.lags = (self.sample_rate // 400, self.sample_rate // 80)  # pitch periods of 400 Hz .. 80 Hz

    def frames(self, waveform: torch.Tensor) -> torch.Tensor:
        """[T] -> the 20 ms analysis frames [N, 400], N = (T - 400) // 320 + 1."""
        if waveform.dim() != 1:
            raise ValueError(f"expected a mono waveform [T], got shape {tuple(waveform.shape)}; mix channels first")
        if waveform.shape[0] < _WINDOW:
            raise ValueError(f"audio of {waveform.shape[0]} samples is shorter than one 25 ms frame ({_WINDOW})")
        return waveform.float().unfold(0, _WINDOW, _HOP)

    def base_features(self, waveform: torch.Tensor) -> torch.Tensor:
        """[T] -> [N, feature_dim]: log band energies, log energy, voicing in [0, 1], centroid in [0, 1]."""
        x = self.frames(waveform)
        power = torch.fft.rfft(x * self.window, n=_NFFT).abs().square()  # [N, 257]
        bands = torch.log10(power @ self.band_matrix + 1e-3) / 4.0  # floor: empty bands read -0.75
        energy = torch.log10(x.square().mean(1, keepdim=True) + 1e-10) / 4.0
        freqs = torch.fft.rfftfreq(_NFFT, 1.0 / self.sample_rate)
        centroid = (power * freqs).sum(1, keepdim=True) / power.sum(1, keepdim=True).clamp_min(1e-12) / 8000.0
        return torch.cat([bands, energy, self._voicing(x), centroid], dim=1)

    def _voicing(self, x: torch.Tensor) -> torch.Tensor:
        """Peak of the normalised (unbiased) autocorrelation over pitch lags, 0 for near-silent frames: [N, 1]."""
        x = x - x.mean(1, keepdim=True)
        ac = torch.fft.irfft(torch.fft.rfft(x, n=2 * _WINDOW).abs().square(), n=2 * _WINDOW)[:, :_WINDOW]
        r0 = ac[:, :1]
        lags = torch.arange(self.lags[0], self.lags[1] + 1)
        unbiased = ac[:, lags] * _WINDOW / (_WINDOW - lags)  # undo the shrinking overlap at longer lags
        peak = (unbiased / r0.clamp_min(1e-12)).amax(1, keepdim=True)
        loud = r0 > _WINDOW * 1e-6  # RMS above 1e-3
        return torch.where(loud, peak.clamp(0.0, 1.0), torch.zeros_like(peak))

    def hidden_states(self, waveform: torch.Tensor) -> torch.Tensor:
        """Mono float waveform [T] at 16 kHz -> [25, N, feature_dim] (layer 0 raw, 1-12 smoothed, 13-24 slopes)."""
        base = self.base_features(waveform)  # [N, F]
        layers = [base] + [self._smooth(base, k) for k in range(1, 13)] + [self._slope(base, k) for k in range(1, 13)]
        return torch.stack(layers)

    @staticmethod
    def _shifted_mean(x: torch.Tensor, first: int, last: int) -> torch.Tensor:
        """Mean of frames t + first .. t + last, edge frames repeated: [N, F] -> [N, F]."""
        n = x.shape[0]
        left, right = max(0, -first), max(0, last)
        padded = F.pad(x.T[None], (left, right), mode="replicate")[0].T  # [N + left + right, F]
        csum = torch.cat([torch.zeros_like(padded[:1]), padded.double().cumsum(0)])
        start = torch.arange(n) + first + left
        return ((csum[start + (last - first + 1)] - csum[start]) / (last - first + 1)).float()

    def _smooth(self, x: torch.Tensor, k: int) -> torch.Tensor:
        """Centred moving average over 2k + 1 frames."""
        return self._shifted_mean(x, -k, k)

    def _slope(self, x: torch.Tensor, k: int) -> torch.Tensor:
        """(Mean of the next k frames - mean of the previous k frames) / (k + 1), scaled by sqrt(k)."""
        ahead, behind = self._shifted_mean(x, 1, k), self._shifted_mean(x, -k, -1)
        return (ahead - behind) / (k + 1) * math.sqrt(k)
