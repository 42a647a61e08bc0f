"""Score generated toy-world videos by colour segmentation against the clip's ground truth.

Each pixel is assigned the nearest colour of the world palette (body parts, the clip's product colour and
its white pattern); pixels far from every palette colour are `unknown` (-1). On that class map:

- contact error: for every (frame, hand) where the truth says the hand holds the product, the gap in pixels
  between the nearest hand and product pixels (0 when they touch; the frame diagonal when either is missing).
- penetration: the world always draws hands in front of the product, so the product can only enter a hand's
  area by passing through it. For each holding hand we fit a hand-sized disk to its visible pixels (the
  centre that covers the most of them; of equally good centres, the one holding the most product) and call
  the hand penetrated when product pixels fill more than 10% of that disk (radius shrunk by one pixel).
  The rate is over holding (frame, hand) pairs.
- lip–audio correlation: Pearson r between the mouth's pixel area and the audio RMS, per video frame.
- smoothness: mean absolute frame-to-frame change, and the mean second difference (px/frame²) of the head,
  hand and product centroids.
- router recall: per class (hand, face), the share of box-labelled target tokens whose router argmax is it.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

import numpy as np
import torch

from ..labels import router_labels
from .render import BODY, BODY_COLOURS, CLASSES, LABEL_COLOUR
from .world import WorldConfig, WorldSequence

__all__ = [
    "ClipTruth",
    "EvalReport",
    "segment",
    "contact_error",
    "penetration",
    "lip_audio_correlation",
    "smoothness",
    "box_labels",
    "router_recall",
    "evaluate_clip",
]

UNKNOWN = -1
_PART = {name: i for i, name in enumerate(CLASSES)}
_HANDS = (_PART["left_hand"], _PART["right_hand"])


@dataclass(frozen=True)
class ClipTruth:
    """What the evaluation needs to know about a clip: product, hands-on-product [T, 2] flags, geometric
    contact and penetration [T, 2], mouth envelope [T], frame size and rates, prompt and action spans."""

    kind: str
    colour: str
    rgb: tuple[int, int, int]
    grip: list[list[bool]]
    contact: list[list[bool]]
    penetration: list[list[bool]]
    envelope: list[float]
    height: int
    width: int
    fps: int
    sample_rate: int
    prompt: str
    actions: list[tuple[str, int, int]]

    @classmethod
    def from_sequence(cls, seq: WorldSequence) -> ClipTruth:
        """Truth of a rendered sequence (penetration: more than 5% of a hand hidden by the product)."""
        cfg = seq.config
        return cls(
            kind=seq.kind,
            colour=seq.colour,
            rgb=tuple(int(c) for c in seq.rgb),
            grip=seq.grip.tolist(),
            contact=seq.contact.tolist(),
            penetration=(seq.hand_hidden > 0.05).tolist(),
            envelope=[round(float(e), 5) for e in seq.envelope],
            height=cfg.height,
            width=cfg.width,
            fps=cfg.fps,
            sample_rate=cfg.sample_rate,
            prompt=seq.prompt(),
            actions=[tuple(a) for a in seq.actions],
        )

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> ClipTruth:
        raw = json.loads(text)
        raw["rgb"] = tuple(raw["rgb"])
        raw["actions"] = [tuple(a) for a in raw["actions"]]
        return cls(**raw)


@dataclass(frozen=True)
class EvalReport:
    """Scores of one clip (see the module docstring for definitions)."""

    contact_error_px: float
    contact_rate: float
    missing_rate: float
    penetration_rate: float
    lip_audio_r: float
    frame_difference: float
    centroid_jerk_px: float


def palette(rgb: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Colours [K, 3] and their class ids [K] for a clip whose product has colour `rgb`."""
    items = [(BODY_COLOURS[name], _PART[name]) for name in BODY_COLOURS]
    items += [(rgb, _PART["product"]), (LABEL_COLOUR, _PART["product"])]
    return np.array([c for c, _ in items], dtype=np.float32), np.array([i for _, i in items], dtype=np.int8)


def segment(frames: np.ndarray, rgb: tuple[int, int, int], max_distance: float = 60.0) -> np.ndarray:
    """Frames [T, H, W, 3] uint8 -> class ids [T, H, W] int8 by nearest palette colour (-1 beyond max_distance)."""
    colours, ids = palette(rgb)
    x = frames.astype(np.float32)
    dist = ((x[..., None, :] - colours) ** 2).sum(-1)  # [T, H, W, K]
    nearest = dist.argmin(-1)
    out = ids[nearest]
    out[np.take_along_axis(dist, nearest[..., None], -1)[..., 0] > max_distance**2] = UNKNOWN
    return out


def _points(mask: np.ndarray) -> np.ndarray:
    """Pixel centres [N, 2] (x, y) of a mask [H, W]."""
    ys, xs = np.nonzero(mask)
    return np.stack([xs, ys], axis=1).astype(np.float32)


def contact_error(classes: np.ndarray, grip: np.ndarray) -> tuple[float, float, float]:
    """Mean hand–product gap in px, share of touching pairs, share with a part missing, over gripping pairs."""
    h, w = classes.shape[1:]
    gaps, missing = [], 0
    for t, i in zip(*np.nonzero(grip)):
        hand, prod = _points(classes[t] == _HANDS[i]), _points(classes[t] == _PART["product"])
        if not len(hand) or not len(prod):
            gaps.append(float(np.hypot(h, w)))
            missing += 1
            continue
        d = np.sqrt(((hand[:, None] - prod[None]) ** 2).sum(-1)).min()
        gaps.append(max(0.0, float(d) - np.sqrt(2.0)))  # 8-neighbours touch
    if not gaps:
        return 0.0, 1.0, 0.0
    gaps_a = np.array(gaps)
    return float(gaps_a.mean()), float((gaps_a == 0).mean()), missing / len(gaps)


def _hand_disks(points: np.ndarray, radius: float) -> np.ndarray:
    """Centres [M, 2] on a half-pixel grid whose disks (radius + 0.25) cover the most of a hand's pixels."""
    lo, hi = points.min(0) - radius, points.max(0) + radius
    gx, gy = np.meshgrid(np.arange(lo[0], hi[0] + 0.5, 0.5), np.arange(lo[1], hi[1] + 0.5, 0.5))
    cands = np.stack([gx.ravel(), gy.ravel()], axis=1)
    covered = (((cands[:, None] - points[None]) ** 2).sum(-1) <= (radius + 0.25) ** 2).sum(1)
    return cands[covered == covered.max()]


def penetration(classes: np.ndarray, grip: np.ndarray, hand_radius_px: float, threshold: float = 0.1) -> np.ndarray:
    """Per (frame, hand) flags [T, 2]: product pixels fill more than `threshold` of a gripping hand's disk.

    The disk (radius - 1 px) is centred where a hand-sized disk covers the most hand pixels; of equally good
    centres the one holding the most product is taken. A whole hand admits only centres within a fraction of
    a pixel of its own, whose shrunken disks hold hand pixels only; a hand cut by the product admits centres
    up to its true one, whose disk holds the cut-off part. (Tuned on 64x64 world clips: ground truth scores
    0, the product pasted over the hands scores 1.)
    """
    inner = max(hand_radius_px - 1.0, 0.5)
    flags = np.zeros(grip.shape, dtype=bool)
    for t, i in zip(*np.nonzero(grip)):
        hand, prod = _points(classes[t] == _HANDS[i]), _points(classes[t] == _PART["product"])
        if not len(hand) or not len(prod):
            continue
        centres = _hand_disks(hand, hand_radius_px)
        inside = (((centres[:, None] - prod[None]) ** 2).sum(-1) <= inner**2).sum(1).max()
        flags[t, i] = inside > threshold * np.pi * inner**2
    return flags


def lip_audio_correlation(classes: np.ndarray, audio: np.ndarray, samples_per_frame: int) -> float:
    """Pearson r between mouth area [T] and audio RMS per frame; 0 when either does not vary."""
    area = (classes == _PART["mouth"]).sum((1, 2)).astype(np.float64)
    n = min(len(area), len(audio) // samples_per_frame)
    rms = np.sqrt((audio[: n * samples_per_frame].astype(np.float64).reshape(n, -1) ** 2).mean(1))
    area = area[:n]
    if n < 2 or area.std() == 0 or rms.std() == 0:
        return 0.0
    return float(np.corrcoef(area, rms)[0, 1])


def smoothness(frames: np.ndarray, classes: np.ndarray) -> tuple[float, float]:
    """Mean |frame[t+1] - frame[t]| / 255, and mean centroid second difference (px/frame²) of head/hands/product."""
    diff = float(np.abs(np.diff(frames.astype(np.int16), axis=0)).mean() / 255.0) if len(frames) > 1 else 0.0
    jerks = []
    for part in ("head", "left_hand", "right_hand", "product"):
        mask = classes == _PART[part]
        count = mask.sum((1, 2))
        ys, xs = np.mgrid[0 : classes.shape[1], 0 : classes.shape[2]]
        cx = (mask * xs).sum((1, 2)) / np.maximum(count, 1)
        cy = (mask * ys).sum((1, 2)) / np.maximum(count, 1)
        ok = (count[:-2] > 0) & (count[1:-1] > 0) & (count[2:] > 0)
        acc = np.hypot(cx[2:] - 2 * cx[1:-1] + cx[:-2], cy[2:] - 2 * cy[1:-1] + cy[:-2])
        jerks.extend(acc[ok].tolist())
    return diff, float(np.mean(jerks)) if jerks else 0.0


def box_labels(
    face: str | dict, hand_object: str | dict, frame_hw: tuple[int, int], token_px: int, frames: int = 20
) -> np.ndarray:
    """Router class per target token [frames·h·w] (0 base, 1 hand, 2 face) from a row's box JSON cells.

    The trainer's rules (`train.labels.router_labels`: official keys, inclusive token rectangles, hand over
    face), at the clip's own size; `token_px` = codec spatial factor × DiT patch (8 × 2 for the toy preset).
    """
    targets, _ = router_labels(face, hand_object, frame_hw, frame_hw, frames, token_px)
    return targets.argmax(-1).numpy()


def router_recall(logits: torch.Tensor, labels: np.ndarray) -> dict[str, float]:
    """Router logits [L, B, N, 3] or [N, 3] (averaged over layers/batch) -> recall of hand and face tokens."""
    lg = logits.float()
    while lg.dim() > 2:
        lg = lg.mean(0)
    pred = lg.argmax(-1).cpu().numpy()
    if pred.shape[0] != labels.shape[0]:
        raise ValueError(f"router gives {pred.shape[0]} tokens but the labels cover {labels.shape[0]}")
    out = {}
    for name, cls in (("hand", 1), ("face", 2)):
        sel = labels == cls
        out[name] = float((pred[sel] == cls).mean()) if sel.any() else float("nan")
    return out


def evaluate_clip(frames: np.ndarray, fps: float, audio: np.ndarray, sample_rate: int, truth: ClipTruth) -> EvalReport:
    """Score generated frames [T, H, W, 3] uint8 (with their audio) against a clip's truth."""
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"expected uint8 frames [T, H, W, 3], got {frames.dtype} {tuple(frames.shape)}")
    if frames.shape[1:3] != (truth.height, truth.width):
        raise ValueError(
            f"frames are {frames.shape[2]}x{frames.shape[1]} but the clip is {truth.width}x{truth.height}; "
            "generate at the world's size (no resizing: colours must stay exact)"
        )
    if abs(fps - truth.fps) > 1e-6 or sample_rate != truth.sample_rate:
        raise ValueError(
            f"video at {fps} fps / audio at {sample_rate} Hz; the world is {truth.fps} fps / {truth.sample_rate} Hz"
        )
    grip = np.array(truth.grip, dtype=bool)
    if len(frames) != len(grip):
        raise ValueError(f"{len(frames)} frames but the truth covers {len(grip)}; score the clip's own frames")
    classes = segment(frames, truth.rgb)
    gap, touch, missing = contact_error(classes, grip)
    cfg = WorldConfig(height=truth.height, width=truth.width, fps=truth.fps, sample_rate=truth.sample_rate)
    radius = BODY.hand_r * min(truth.height, truth.width)
    pen = penetration(classes, grip, radius)
    diff, jerk = smoothness(frames, classes)
    return EvalReport(
        contact_error_px=gap,
        contact_rate=touch,
        missing_rate=missing,
        penetration_rate=float(pen[grip].mean()) if grip.any() else 0.0,
        lip_audio_r=lip_audio_correlation(classes, audio, cfg.samples_per_frame),
        frame_difference=diff,
        centroid_jerk_px=jerk,
    )
