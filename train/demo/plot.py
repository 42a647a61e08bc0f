"""Loss and router-recall curves drawn with Pillow (no plotting library): one PNG with two panels."""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw

__all__ = ["draw_curves", "smooth"]

_COLOURS = {
    "flow": (31, 119, 180),
    "hoi": (255, 127, 14),
    "router_recall_hand": (44, 160, 44),
    "router_recall_face": (214, 39, 40),
    "router_prior_hand": (44, 160, 44),
    "router_prior_face": (214, 39, 40),
}


def smooth(values: Sequence[float | None], alpha: float = 0.1) -> list[float | None]:
    """Exponential moving average that skips None."""
    out, state = [], None
    for v in values:
        if v is not None:
            state = v if state is None else (1 - alpha) * state + alpha * v
        out.append(state if v is not None else None)
    return out


def _panel(
    draw: ImageDraw.ImageDraw,
    box: tuple[int, int, int, int],
    series: dict,
    title: str,
    log_y: bool,
    legend_y: float = 0.0,
) -> None:
    """Plot {name: [(x, y), ...]} inside box (x0, y0, x1, y1) with axes, a title and a legend on a white patch
    at `legend_y` (0 top .. 1 bottom of the box; put it where the curves are not)."""
    x0, y0, x1, y1 = box
    draw.rectangle(box, outline=(0, 0, 0))
    draw.text((x0 + 4, y0 - 14), title, fill=(0, 0, 0))
    points = [(x, y) for pts in series.values() for x, y in pts if y is not None and (y > 0 or not log_y)]
    if not points:
        return
    xs, ys = np.array([p[0] for p in points], float), np.array([p[1] for p in points], float)
    tf = np.log10 if log_y else (lambda v: v)
    lo, hi = (float(tf(ys.min())), float(tf(ys.max()))) if log_y else (0.0, max(1.0, float(ys.max())))
    hi = hi if hi > lo else lo + 1.0
    xmax = max(1.0, float(xs.max()))

    def to_px(x: float, y: float) -> tuple[float, float]:
        return x0 + (x1 - x0) * x / xmax, y1 - (y1 - y0) * (float(tf(y)) - lo) / (hi - lo)

    for frac in (0.0, 0.5, 1.0):
        value = lo + frac * (hi - lo)
        label = f"{10**value:.3g}" if log_y else f"{value:.2f}"
        draw.text((x0 - 38, y1 - (y1 - y0) * frac - 6), label, fill=(60, 60, 60))
    draw.text((x1 - 30, y1 + 4), f"{int(xmax)}", fill=(60, 60, 60))
    for name, pts in series.items():
        colour = _COLOURS.get(name, (0, 0, 0))
        pix = [to_px(x, y) for x, y in pts if y is not None and (y > 0 or not log_y)]
        if name.startswith("router_prior"):
            for px in pix[::4]:
                draw.point(px, fill=colour)
        elif len(pix) > 1:
            draw.line(pix, fill=colour, width=2)
    top = y0 + 4 + (y1 - y0 - 8 - 12 * len(series)) * legend_y
    draw.rectangle(
        (x1 - 150, top - 2, x1 - 4, top + 12 * len(series) + 2), fill=(255, 255, 255), outline=(200, 200, 200)
    )
    for i, name in enumerate(series):
        draw.text((x1 - 146, top + 12 * i), name, fill=_COLOURS.get(name, (0, 0, 0)))


def draw_curves(
    records: Sequence[dict], path: str | os.PathLike, stage_starts: Sequence[int] = (), size=(900, 360)
) -> None:
    """Training records (step, flow, hoi, router_recall_*, router_prior_*) -> PNG: losses (log) | router recall."""
    img = Image.new("RGB", size, (255, 255, 255))
    draw = ImageDraw.Draw(img)
    w, h = size
    steps = [r["step"] for r in records]

    def series(keys: Sequence[str], alpha: float) -> dict:
        return {k: list(zip(steps, smooth([r.get(k) for r in records], alpha))) for k in keys}

    left, right = (50, 30, w // 2 - 10, h - 30), (w // 2 + 50, 30, w - 10, h - 30)
    _panel(draw, left, series(("flow", "hoi"), 0.1), "training loss (EMA, log scale)", log_y=True, legend_y=0.0)
    keys = ("router_recall_hand", "router_recall_face", "router_prior_hand", "router_prior_face")
    title = "router recall on training tokens (dots: class prior)"
    _panel(draw, right, series(keys, 0.1), title, log_y=False, legend_y=0.55)
    xmax = max(steps) if steps else 1
    for s in stage_starts:
        for x0, y0, x1, y1 in (left, right):
            x = x0 + (x1 - x0) * s / max(1, xmax)
            draw.line([(x, y0), (x, y1)], fill=(150, 150, 150))
    img.save(path, format="PNG")
