"""Reference-image preprocessing of the official inference (batch_infer.py) and training, plus resolution checks.

Images travel as float32 [H, W, 3] in [0, 1] (what `media_image.load_image` returns and ComfyUI's IMAGE holds);
resizing goes through Pillow in uint8, exactly as the official code resizes its PIL images (torchvision's resize of
a PIL image is Pillow's `Image.resize`), so 8-bit inputs give the official pixels.

| step    | official inference (our default)              | official training                 |
|---------|-----------------------------------------------|-----------------------------------|
| person  | `resize((W, H))`, Pillow's default (BICUBIC)  | cover scale + center crop         |
| product | fit with margin 1.25, centered on black       | fit with margin 1.0, same padding |
Cover and fit resize with LANCZOS when the scale is < 1, else BILINEAR (both official codes).
"""

from __future__ import annotations

import logging
import math
from typing import Literal

import numpy as np
import torch
from PIL import Image

__all__ = [
    "resize_person",
    "cover_crop",
    "fit_product",
    "round_resolution",
    "check_resolution",
    "to_model_range",
    "frames_to_uint8",
    "MIN_SIDE",
]

logger = logging.getLogger(__name__)

SIZE_MULTIPLE = 16  # VAE stride 8 x DiT patch 2
MIN_SIDE = 64  # the motion packer's 4x branch is an 8x8-latent strided conv: latents >= 8 cells = 64 pixels


def _to_pil(image: torch.Tensor) -> Image.Image:
    """[H, W, 3] float in [0, 1] (rounded to 8 bits) or uint8 -> RGB PIL image."""
    if image.ndim != 3 or image.shape[-1] != 3:
        raise ValueError(f"expected an image [H, W, 3]; got shape {tuple(image.shape)}")
    x = image.detach().cpu()
    if x.dtype != torch.uint8:
        x = (x.float().clamp(0.0, 1.0) * 255.0).round().to(torch.uint8)
    return Image.fromarray(x.numpy())  # uint8 [H, W, 3] -> mode RGB


def _from_pil(image: Image.Image) -> torch.Tensor:
    """RGB PIL image -> float32 [H, W, 3] in [0, 1]."""
    return torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0)


def _filter(scale: float) -> Image.Resampling:
    """The official choice: LANCZOS when shrinking, BILINEAR when enlarging (or keeping the size)."""
    return Image.Resampling.LANCZOS if scale < 1 else Image.Resampling.BILINEAR


def cover_crop(image: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Scale [H0, W0, 3] to cover height x width (aspect kept), center-crop -> [height, width, 3] (training)."""
    h0, w0 = image.shape[:2]
    scale = max(width / w0, height / h0)
    new_h, new_w = max(height, round(h0 * scale)), max(width, round(w0 * scale))
    resized = _to_pil(image).resize((new_w, new_h), _filter(scale))
    top, left = int(round((new_h - height) / 2.0)), int(round((new_w - width) / 2.0))  # as torchvision center_crop
    return _from_pil(resized.crop((left, top, left + width, top + height)))


def resize_person(
    image: torch.Tensor, height: int, width: int, mode: Literal["stretch", "cover"] = "stretch"
) -> torch.Tensor:
    """Person reference [H0, W0, 3] -> [height, width, 3]: "stretch" (official inference) or "cover" (training)."""
    if mode not in ("stretch", "cover"):
        raise ValueError(f"person resize mode must be 'stretch' or 'cover'; got {mode!r}")
    h0, w0 = image.shape[:2]
    if (h0, w0) != (height, width):
        how = "stretched (aspect ratio not kept)" if mode == "stretch" else "scaled to cover and centre-cropped"
        logger.info("person image %dx%d (WxH) -> %dx%d, %s", w0, h0, width, height, how)
    if mode == "cover":
        return cover_crop(image, height, width)
    # batch_infer's `.resize((W, H))` uses Pillow's default filter, BICUBIC for RGB images; named here so that a
    # future Pillow default cannot change our numbers.
    return _from_pil(_to_pil(image).resize((width, height), Image.Resampling.BICUBIC))


def fit_product(image: torch.Tensor, height: int, width: int, margin: float = 1.25) -> torch.Tensor:
    """Product [H0, W0, 3] scaled by min(W/W0, H/H0)/margin, centered on black -> [height, width, 3]."""
    if margin < 1.0:
        raise ValueError(f"product margin must be >= 1 (1.25 official inference, 1.0 training); got {margin}")
    h0, w0 = image.shape[:2]
    scale = min(width / w0, height / h0) / margin
    new_h, new_w = max(1, round(h0 * scale)), max(1, round(w0 * scale))
    logger.info(
        "product image %dx%d (WxH) -> %dx%d, centred on a black %dx%d frame (margin %g)",
        w0, h0, new_w, new_h, width, height, margin,
    )  # fmt: skip
    if min(new_h, new_w) < 8:
        logger.warning("the product is only %dx%d pixels in the frame; a less elongated image shows more", new_w, new_h)
    resized = _to_pil(image).resize((new_w, new_h), _filter(scale))
    canvas = Image.new("RGB", (width, height), (0, 0, 0))
    canvas.paste(resized, ((width - new_w) // 2, (height - new_h) // 2))
    return _from_pil(canvas)


def round_resolution(height: int, width: int, multiple: int = SIZE_MULTIPLE) -> tuple[int, int, bool]:
    """Round height and width UP to multiples of `multiple` (as batch_infer) -> (height, width, changed)."""
    new_h, new_w = math.ceil(height / multiple) * multiple, math.ceil(width / multiple) * multiple
    changed = (new_h, new_w) != (height, width)
    if changed:
        logger.info("resolution %dx%d (HxW) rounded up to %dx%d", height, width, new_h, new_w)
    return new_h, new_w, changed


def check_resolution(height: int, width: int) -> None:
    """Raise ValueError for a frame size the model cannot take (not multiples of 16, or a side below 64)."""
    if height % SIZE_MULTIPLE or width % SIZE_MULTIPLE:
        raise ValueError(
            f"resolution {height}x{width} (HxW) is not a multiple of {SIZE_MULTIPLE} (VAE stride 8 x patch 2); "
            f"round it up with round_resolution, e.g. {math.ceil(height / 16) * 16}x{math.ceil(width / 16) * 16}"
        )
    if min(height, width) < MIN_SIDE:
        raise ValueError(
            f"resolution {height}x{width} (HxW) is too small: the motion frames need latents of at least 8x8, "
            f"i.e. sides >= {MIN_SIDE} pixels; the model was trained at 832x480 and 1280x720"
        )


def to_model_range(image: torch.Tensor) -> torch.Tensor:
    """[H, W, 3] in [0, 1] (or uint8) -> [1, 3, 1, H, W] float32 in [-1, 1], the VAE's input layout."""
    x = image.float() / 255.0 if image.dtype == torch.uint8 else image.float()
    return (x * 2.0 - 1.0).permute(2, 0, 1)[None, :, None]


def frames_to_uint8(video: torch.Tensor, rounding: Literal["floor", "round"] = "floor") -> torch.Tensor:
    """VAE output [1, 3, T, H, W] or [3, T, H, W] in [-1, 1] -> uint8 [T, H, W, 3].

    "floor" truncates (x + 1) * 127.5 as the official `vae_output_to_video` does (`.to(torch.uint8)`);
    "round" rounds to nearest (no half-level darkening).
    """
    if video.ndim == 5:
        if video.shape[0] != 1:
            raise ValueError(f"expected one video [1, 3, T, H, W]; got batch {video.shape[0]}")
        video = video[0]
    if video.ndim != 4 or video.shape[0] != 3:
        raise ValueError(f"expected a video [3, T, H, W] in [-1, 1]; got shape {tuple(video.shape)}")
    x = ((video.detach().float() + 1.0) * 127.5).clamp(0.0, 255.0)
    x = x.floor() if rounding == "floor" else x.round()
    return x.to(torch.uint8).permute(1, 2, 3, 0).contiguous()
