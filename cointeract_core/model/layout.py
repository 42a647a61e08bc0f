"""SequenceLayout: the named token segments of one DiT call, their lengths and their RoPE position ids.

Order: [target | person | product? | motion (1x, 2x, 4x)? | hoi?]. Position ids (t, h, w), arXiv 2604.19636 and
Wan2.2-S2V: target t=0..F-1; person t=30; product t=31 with h/w compressed by `product_scale`; FramePack motion at
true negative times (-1; -3; -19,-14,-9,-4) with stretched coarse grids; HOI like the target but with width
positions wrapped to the end of the 1024-row RoPE table (the official quirk) or truly negative.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

__all__ = ["SequenceLayout", "PERSON_T", "PRODUCT_T", "ROPE_TABLE"]

PERSON_T = 30
PRODUCT_T = 31
ROPE_TABLE = 1024  # rows of the official RoPE table; the HOI width wrap lands at its end


def _trunc_linspace(start: float, stop: float, num: int) -> np.ndarray:
    """int(np.linspace(...)) as the reference does: truncation toward zero."""
    return np.linspace(start, stop, num).astype(np.int64)


def _grid(ts: np.ndarray, hs: np.ndarray, ws: np.ndarray) -> np.ndarray:
    """Raster (t, h, w) positions, w fastest: [len(ts)·len(hs)·len(ws), 3]."""
    t, h, w = np.meshgrid(ts, hs, ws, indexing="ij")
    return np.stack([t.ravel(), h.ravel(), w.ravel()], axis=1)


@dataclass(frozen=True)
class SequenceLayout:
    """Token segments of one call. `grid` is the target token grid (h', w'); `latent_hw` the latent size."""

    frames: int
    latent_hw: tuple[int, int]
    patch_hw: tuple[int, int] = (2, 2)
    product: bool = False
    product_scale: float = 1.0
    motion: bool = False
    motion_buckets: tuple[int, int, int] = (1, 2, 16)  # latents per FramePack group, nearest first
    hoi: bool = False
    hoi_width: Literal["wrap", "negative"] = "wrap"

    @property
    def grid(self) -> tuple[int, int]:
        return self.latent_hw[0] // self.patch_hw[0], self.latent_hw[1] // self.patch_hw[1]

    @property
    def motion_grids(self) -> tuple[tuple[int, int, int], ...]:
        """(frames, h, w) token grids of the 1x, 2x, 4x FramePack groups (strided convs floor partial patches)."""
        if not self.motion:
            return ()
        (ph, pw), (lh, lw) = self.patch_hw, self.latent_hw
        grids = []
        for factor, count in zip((1, 2, 4), self.motion_buckets):
            grids.append((count // factor, lh // (ph * factor), lw // (pw * factor)))
        return tuple(grids)

    @property
    def n_target(self) -> int:
        return self.frames * self.grid[0] * self.grid[1]

    @property
    def n_image(self) -> int:
        return self.grid[0] * self.grid[1]

    @property
    def n_motion(self) -> int:
        return sum(f * h * w for f, h, w in self.motion_grids)

    @property
    def n_main(self) -> int:
        return self.n_target + self.n_image * (1 + int(self.product)) + self.n_motion

    @property
    def n_hoi(self) -> int:
        return self.n_target if self.hoi else 0

    @property
    def total(self) -> int:
        return self.n_main + self.n_hoi

    def segments(self) -> dict[str, slice]:
        """Name -> slice of the token sequence, in sequence order (absent segments are left out)."""
        lengths = [("target", self.n_target), ("person", self.n_image)]
        lengths += [("product", self.n_image)] if self.product else []
        lengths += [("motion", self.n_motion)] if self.motion else []
        lengths += [("hoi", self.n_hoi)] if self.hoi else []
        out, start = {}, 0
        for name, n in lengths:
            out[name] = slice(start, start + n)
            start += n
        return out

    def type_ids(self) -> torch.Tensor:
        """[n_main] `trainable_cond_mask` ids: 0 target, 1 person and product, 2 motion."""
        n_ref = self.n_image * (1 + int(self.product))
        return torch.cat([torch.zeros(self.n_target), torch.ones(n_ref), torch.full((self.n_motion,), 2)]).long()

    def positions(self) -> torch.Tensor:
        """[total, 3] int64 RoPE positions (t, h, w) of every token, in sequence order."""
        h, w = self.grid
        ident_h, ident_w = np.arange(h), np.arange(w)
        parts = [_grid(np.arange(self.frames), ident_h, ident_w), _grid(np.array([PERSON_T]), ident_h, ident_w)]
        if self.product:
            sh = max(1, round(self.product_scale * h))
            sw = max(1, round(self.product_scale * w))
            parts.append(_grid(np.array([PRODUCT_T]), _trunc_linspace(0, sh - 1, h), _trunc_linspace(0, sw - 1, w)))
        parts += self._motion_positions()
        if self.hoi:
            hoi_w = ident_w - w + (ROPE_TABLE if self.hoi_width == "wrap" else 0)
            parts.append(_grid(np.arange(self.frames), ident_h, hoi_w))
        return torch.from_numpy(np.concatenate(parts, axis=0))

    def _motion_positions(self) -> list[np.ndarray]:
        h, w = self.grid
        parts, end = [], 0
        for (nf, nh, nw), count in zip(self.motion_grids, self.motion_buckets):
            start = end - count  # this group covers latent frames [start, end) before the target
            ts = _trunc_linspace(start, end - 1, nf)
            parts.append(_grid(ts, _trunc_linspace(0, h - 1, nh), _trunc_linspace(0, w - 1, nw)))
            end = start
        return parts
