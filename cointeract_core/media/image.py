"""Reference images through Pillow -> float RGB tensors, converting every mode the way the official pipeline does.

The official code opens images with `Image.open(path).convert("RGB")`: alpha is dropped (not composited), palette
and grayscale images are expanded. We do the same, log each conversion, and additionally apply the EXIF
orientation (phone photos are stored sideways with a rotate tag) and scale 16-bit images by 1/65535 (Pillow's
own `convert("RGB")` clips 16-bit values at 255, which turns most 16-bit images white).
"""

from __future__ import annotations

import logging
import os

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from .fileio import require_file

__all__ = ["load_image", "image_to_tensor"]

logger = logging.getLogger(__name__)

_HIGH_DEPTH_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I", "F")


def _high_depth_to_rgb(image: Image.Image) -> np.ndarray:
    """16-bit / 32-bit integer or float grayscale -> float32 [H, W, 3] in [0, 1] (integers scaled by 1/65535)."""
    x = np.asarray(image).astype(np.float32)
    if image.mode != "F":
        x = x / 65535.0
    return np.repeat(np.clip(x, 0.0, 1.0)[..., None], 3, axis=-1)


def image_to_tensor(image: Image.Image, name: str = "image") -> torch.Tensor:
    """A PIL image of any mode -> float32 [H, W, 3] in [0, 1]; each conversion logs one INFO line."""
    if image.mode in _HIGH_DEPTH_MODES:
        logger.info("%s: %s grayscale -> RGB (values / 65535)", name, image.mode)
        return torch.from_numpy(_high_depth_to_rgb(image))
    if image.mode != "RGB":
        has_alpha = image.mode in ("RGBA", "LA", "PA", "La", "RGBa") or "transparency" in image.info
        what = "alpha dropped, as the official pipeline's convert('RGB')" if has_alpha else "converted"
        logger.info("%s: mode %s -> RGB (%s)", name, image.mode, what)
        image = image.convert("RGB")
    return torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0)


def load_image(path: str | os.PathLike) -> torch.Tensor:
    """Read an image file -> float32 [H, W, 3] in [0, 1] (EXIF orientation applied, any mode converted to RGB)."""
    path = require_file(path, "image")
    try:
        with Image.open(path) as image:
            image.load()
            orientation = image.getexif().get(0x0112, 1)  # EXIF Orientation tag
            if orientation != 1:
                image = ImageOps.exif_transpose(image)
                logger.info("image %s: EXIF orientation %d applied", path.name, orientation)
            return image_to_tensor(image, f"image {path.name}")
    except (UnidentifiedImageError, OSError, SyntaxError) as e:
        if isinstance(e, FileNotFoundError):
            raise
        raise ValueError(f"could not read image {str(path)!r} ({e}); give a PNG, JPEG or WebP file") from e
