"""Speech path of Wan2.2-S2V: 25-layer wav2vec2 mix, causal conv encoder, per-latent-frame audio cross-attention.

Module and attribute names equal the checkpoint keys (`casual_audio_encoder` keeps Wan's misspelling).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from .attention import CrossAttention
from .layers import cast_to, layer_norm, modulate

__all__ = ["CausalConv1d", "MotionEncoderTC", "CausalAudioEncoder", "AdaLayerNorm", "AudioInjector"]


class CausalConv1d(nn.Module):
    """Conv1d with (k-1) frames of replicate padding on the left only: [B, C, T] -> [B, C', ceil(T/stride)]."""

    def __init__(self, c_in: int, c_out: int, kernel: int = 3, stride: int = 1) -> None:
        super().__init__()
        self.pad = kernel - 1
        self.conv = nn.Conv1d(c_in, c_out, kernel, stride=stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[B, C, T] -> [B, C', T']"""
        return self.conv(F.pad(cast_to(x, self.conv), (self.pad, 0), mode="replicate"))


class MotionEncoderTC(nn.Module):
    """Wan `MotionEncoder_tc`: local tokens (n per frame + a learned padding token) and one global token per frame.

    conv2/conv3 and their norms are shared by the local and global paths; time is downsampled 4×.
    """

    def __init__(self, in_dim: int, dim: int, num_tokens: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.num_tokens, self.eps = num_tokens, eps
        self.conv1_local = CausalConv1d(in_dim, dim // 4 * num_tokens)
        self.conv1_global = CausalConv1d(in_dim, dim // 4)
        self.conv2 = CausalConv1d(dim // 4, dim // 2, stride=2)
        self.conv3 = CausalConv1d(dim // 2, dim, stride=2)
        self.final_linear = nn.Linear(dim, dim)
        self.padding_tokens = nn.Parameter(torch.zeros(1, 1, 1, dim))

    def _norm_act(self, x: torch.Tensor) -> torch.Tensor:
        """[B', C, T] -> [B', T, C]: LayerNorm (no affine) over channels, then SiLU."""
        x = x.transpose(1, 2)
        return F.silu(layer_norm(x, self.eps).type_as(x))

    def _tail(self, x: torch.Tensor) -> torch.Tensor:
        """[B', D/4, T] after conv1 -> LN, SiLU, conv2, LN, SiLU, conv3, LN, SiLU -> [B', T'', D]."""
        x = self._norm_act(x)
        x = self._norm_act(self.conv2(x.transpose(1, 2)))
        return self._norm_act(self.conv3(x.transpose(1, 2)))

    def forward(self, feat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """feat [B, A, T] -> (local [B, T'', n+1, D], global [B, T'', 1, D])."""
        b = feat.shape[0]
        local = rearrange(self.conv1_local(feat), "b (n c) t -> (b n) c t", n=self.num_tokens)
        local = rearrange(self._tail(local), "(b n) t c -> b t n c", b=b)
        pad = self.padding_tokens.to(local.dtype).expand(b, local.shape[1], 1, -1)
        local = torch.cat([local, pad], dim=2)
        glob = self.final_linear(cast_to(self._tail(self.conv1_global(feat)), self.final_linear))
        return local, glob[:, :, None]


class CausalAudioEncoder(nn.Module):
    """Mix the wav2vec2 hidden states with SiLU-normalised learned weights, then encode (Wan `CausalAudioEncoder`)."""

    def __init__(self, in_dim: int, dim: int, num_tokens: int, num_layers: int = 25, eps: float = 1e-6) -> None:
        super().__init__()
        self.weights = nn.Parameter(torch.full((1, num_layers, 1, 1), 0.01))
        self.encoder = MotionEncoderTC(in_dim, dim, num_tokens, eps)

    def forward(self, audio: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """audio [B, L, A, T] -> (local [B, T'', n+1, D], global [B, T'', 1, D])."""
        w = F.silu(self.weights.float())
        feat = ((audio.float() * w) / w.sum(dim=1, keepdim=True)).sum(dim=1)  # [B, A, T]
        return self.encoder(feat)


class AdaLayerNorm(nn.Module):
    """LN(x; eps 1e-5, no affine)·(1+scale)+shift with [shift, scale] = Linear(SiLU(g)) (diffusers AdaLayerNorm)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.linear = nn.Linear(dim, 2 * dim)

    def shift_scale(self, g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """g [N, D] -> (shift, scale), each [N, D]."""
        return self.linear(cast_to(F.silu(g), self.linear)).chunk(2, dim=-1)

    def forward(self, x: torch.Tensor, g: torch.Tensor, mod: tuple | None = None) -> torch.Tensor:
        """x [N, S, D], g [N, D] (or `mod`: its shift_scale rows, computed beforehand) -> [N, S, D]"""
        shift, scale = self.shift_scale(g) if mod is None else mod
        return modulate(layer_norm(x, 1e-5).type_as(shift), shift[:, None], scale[:, None])


class AudioInjector(nn.Module):
    """Per-latent-frame audio cross-attention after selected blocks; target tokens only, no gate."""

    def __init__(self, dim: int, num_heads: int, count: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.injector = nn.ModuleList(CrossAttention(dim, num_heads, eps) for _ in range(count))
        self.injector_adain_layers = nn.ModuleList(AdaLayerNorm(dim) for _ in range(count))

    def forward(
        self,
        x: torch.Tensor,
        j: int,
        frames: int,
        tokens: torch.Tensor,
        glob: torch.Tensor,
        backend: str = "sdpa",
        mod: tuple | None = None,
    ) -> torch.Tensor:
        """x [B, F·h'w', D] target tokens, tokens [B, F, n+1, D], glob [B, F, 1, D] -> residual [B, F·h'w', D].

        `mod`: the AdaLN (shift, scale) rows [B·F, D] of these frames, when computed beforehand (`forward_span`)."""
        b = x.shape[0]
        xf = rearrange(x, "b (f n) c -> (b f) n c", f=frames)
        y = self.injector_adain_layers[j](xf, rearrange(glob, "b f n c -> (b f) n c")[:, 0], mod)
        out = self.injector[j](y, rearrange(tokens, "b f n c -> (b f) n c"), backend)
        return rearrange(out, "(b f) n c -> b (f n) c", b=b)

    def forward_span(
        self,
        x: torch.Tensor,
        j: int,
        start: int,
        per_frame: int,
        tokens: torch.Tensor,
        glob: torch.Tensor,
        backend: str = "sdpa",
    ) -> torch.Tensor:
        """x [B, m, D]: target tokens [start, start+m) (frame-major, `per_frame` a frame) -> residual [B, m, D].

        A sequence-parallel shard may begin or end inside a frame. Its partial frames are filled up with zero rows
        to whole frames, so every token sits at the row it has in `forward` (attention kernels round a row by
        where it falls in their blocks), and the AdaLN projection runs over all frames, as in `forward`.
        """
        if x.shape[1] == 0:
            return torch.zeros_like(x)
        b, frames = glob.shape[:2]
        f0, f1 = start // per_frame, -(-(start + x.shape[1]) // per_frame)
        lead = start - f0 * per_frame
        xp = F.pad(x, (0, 0, lead, f1 * per_frame - start - x.shape[1]))  # [B, (f1-f0)·per_frame, D]
        shift, scale = self.injector_adain_layers[j].shift_scale(rearrange(glob, "b f n c -> (b f) n c")[:, 0])
        mod = tuple(t.view(b, frames, -1)[:, f0:f1].reshape(b * (f1 - f0), -1) for t in (shift, scale))
        out = self(xp, j, f1 - f0, tokens[:, f0:f1], glob[:, f0:f1], backend, mod)
        return out[:, lead : lead + x.shape[1]]
