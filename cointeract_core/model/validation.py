"""Shape checks for DiT inputs, raised before any compute with a message that says what to change."""

from __future__ import annotations

import torch

from .config import DiTConfig

__all__ = ["check_inputs"]


def _need(ok: bool, message: str) -> None:
    if not ok:
        raise ValueError(message)


def check_inputs(
    cfg: DiTConfig,
    x: torch.Tensor,
    product: torch.Tensor | None,
    motion: torch.Tensor | None,
    hoi: torch.Tensor | None,
    hoi_context: torch.Tensor | None,
) -> None:
    """Raise ValueError for latents the patch / motion convs cannot take or streams the model does not have."""
    _need(
        x.ndim == 5 and x.shape[1] == cfg.in_dim, f"x must be [B, {cfg.in_dim}, F, H, W] latents, got {tuple(x.shape)}"
    )
    _, _, _, h, w = x.shape
    ph, pw = cfg.patch_size[1:]
    _need(
        h % ph == 0 and w % pw == 0,
        f"latent size {h}x{w} is not divisible by the patch {ph}x{pw}; use a pixel size that is a multiple of 16",
    )
    if product is not None:
        _need(product.shape[-2:] == (h, w), f"product latent {tuple(product.shape)} must match the target's {h}x{w}")
    if motion is not None:
        _need(
            h >= 4 * ph and w >= 4 * pw,
            f"latent size {h}x{w} is too small for the 4x motion conv (needs >= {4 * ph}x{4 * pw}); drop motion",
        )
        _need(motion.shape[-2:] == (h, w), f"motion latents {tuple(motion.shape)} must match the target's {h}x{w}")
    if hoi is not None:
        _need(cfg.hoi is not None, "HOI latents were given but this model has no HOI stream (no depth_* weights)")
        _need(hoi.shape == x.shape, f"HOI latents {tuple(hoi.shape)} must have the target's shape {tuple(x.shape)}")
        _need(hoi_context is not None, "HOI latents need hoi_context (the HOI prompt's text embeddings)")
