"""A compact toy codec: the lossless ToyCodec followed by a PCA projection to a few channels.

Why: a flow-matching DiT predicts v = noise − x0 through a `dim`-wide body, so every token's input dimensions
(channels × patch) must fit in that width, or the noise it has to reproduce cannot pass (the loss then stalls near
the noise variance and samples stay noise). ToyCodec(8) gives 768 channels = 3072 per 2x2 token for a 128-wide toy
DiT; the `toy` preset's 32 PCA channels give 128. The toy world's frames are flat colours, so a few components keep
most of the variance, but small parts need more: after a 16-channel round trip of a ground-truth story the mouth's
area tracks the speech at r 0.58 and hands are lost or cut in 41% of gripping frames; with 32 channels r 0.82 and
12% (`bench/lips_toy.py`).
"""

from __future__ import annotations

import torch

from .codec import ToyCodec

__all__ = ["PCAToyCodec", "fit_pca_codec"]


class PCAToyCodec:
    """VideoVAE: [B, 3, T, H, W] in [-1, 1] <-> [B, k, 1 + (T-1)/4, H/s, W/s] (whitened PCA of ToyCodec's channels)."""

    temporal_factor = 4

    def __init__(
        self, basis: torch.Tensor, mean: torch.Tensor, scale: torch.Tensor | None = None, spatial_factor: int = 8
    ) -> None:
        self.inner = ToyCodec(spatial_factor)
        if basis.ndim != 2 or basis.shape[1] != self.inner.latent_channels or mean.shape != (basis.shape[1],):
            raise ValueError(
                f"basis [k, {self.inner.latent_channels}] and mean [{self.inner.latent_channels}] expected for spatial "
                f"factor {spatial_factor}; got {tuple(basis.shape)} and {tuple(mean.shape)}"
            )
        self.basis, self.mean = basis.float().contiguous(), mean.float().contiguous()
        # per-channel std of the data: latents are whitened to unit variance, as Wan's are normalised
        self.scale = torch.ones(basis.shape[0]) if scale is None else scale.float().contiguous()
        if self.scale.shape != (basis.shape[0],) or not bool((self.scale > 0).all()):
            raise ValueError(f"scale must be [{basis.shape[0]}] positive numbers; got {tuple(self.scale.shape)}")
        self.spatial_factor, self.latent_channels = spatial_factor, basis.shape[0]

    def encode(self, video: torch.Tensor) -> torch.Tensor:
        """[B, 3, T, H, W] -> [B, k, T', H/s, W/s]."""
        full = self.inner.encode(video.float()) - self.mean.to(video.device).view(1, -1, 1, 1, 1)
        lat = torch.einsum("kc,bcthw->bkthw", self.basis.to(video.device), full)
        return lat / self.scale.to(video.device).view(1, -1, 1, 1, 1)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """[B, k, T', h, w] -> [B, 3, 1 + 4(T'-1), h·s, w·s]."""
        dev = latents.device
        lat = latents.float() * self.scale.to(dev).view(1, -1, 1, 1, 1)
        full = torch.einsum("kc,bkthw->bcthw", self.basis.to(dev), lat)
        return self.inner.decode(full + self.mean.to(dev).view(1, -1, 1, 1, 1))


@torch.no_grad()
def fit_pca_codec(videos: list[torch.Tensor], channels: int = 16, spatial_factor: int = 8) -> PCAToyCodec:
    """Fit the top `channels` principal components of ToyCodec latents of videos [1, 3, T, H, W] in [-1, 1]."""
    inner = ToyCodec(spatial_factor)
    rows = torch.cat(
        [inner.encode(v.float()).permute(0, 2, 3, 4, 1).reshape(-1, inner.latent_channels) for v in videos]
    )
    if channels < 1 or channels > rows.shape[1]:
        raise ValueError(f"channels must be in [1, {rows.shape[1]}], got {channels}")
    mean = rows.double().mean(0)
    cov = torch.cov((rows.double() - mean).T)
    values, vectors = torch.linalg.eigh(cov)  # ascending
    basis = vectors.flip(1)[:, :channels].T  # [k, C], orthonormal rows
    signs = torch.sign(basis.sum(1, keepdim=True)).clamp_min(0) * 2 - 1  # a fixed sign per component
    scale = values.flip(0)[:channels].clamp_min(1e-8).sqrt()
    return PCAToyCodec((basis * signs).float(), mean.float(), scale.float(), spatial_factor)
