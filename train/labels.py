"""Router labels from face / hand boxes (reference §1.10–1.11): per-token one-hot (base, hand, face) + CE weights.

The official rules (`bbox_utils`): a box JSON maps `frame_k` to pixel boxes [x1, y1, x2, y2] in the original
video; `frame_k` is latent frame ⌊(k−2)/4⌋ (the README instead says `frame_t` is latent t: `box_keys`
chooses). Boxes go through the training resize (cover scale s = max(W_t/W_o, H_t/H_o), then the float
center-crop offset), boxes fully outside the crop are skipped, the rest clipped, and the inclusive token
rectangle [⌊y1/16⌋..⌊y2/16⌋] × [⌊x1/16⌋..⌊x2/16⌋] is marked, clamped to the grid. Hand (`l_h`, `r_h`;
`obj` is ignored) overrides face. Weights: base 1, face 10, hand 10.

Where the official code silently reads bad input as "no boxes" (malformed JSON, odd values), we raise
`MalformedBoxes`; the dataset skips that row and counts it. Keys that contradict `box_keys` raise
`BoxKeyConventionError`, which stops the whole dataset (it means the setting is wrong, not the row).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping
from typing import Any, Literal

import torch

__all__ = [
    "BASE",
    "HAND",
    "FACE",
    "BoxKeys",
    "BoxKeyConventionError",
    "MalformedBoxes",
    "parse_boxes",
    "check_box_keys",
    "latent_frame",
    "box_to_token_rect",
    "boxes_outside_frame",
    "router_labels",
]

BASE, HAND, FACE = 0, 1, 2  # router class order, as the official router's logits
BoxKeys = Literal["official", "latent"]
Box = tuple[float, float, float, float]
HAND_KEYS = ("l_h", "r_h")  # `obj` is ignored, as in the official labels
_KEY = re.compile(r"frame_(\d+)")


class MalformedBoxes(ValueError):
    """A face / hand box cell that cannot be read as boxes (the row is skipped and counted, never read as {})."""


class BoxKeyConventionError(ValueError):
    """The dataset's `frame_k` keys contradict the `box_keys` setting (stops the dataset: the setting is wrong)."""


def _box(value: Any, where: str) -> Box | None:
    """[x1, y1, x2, y2] -> floats; None / [] mean "no box"; anything else is malformed."""
    if value is None or (isinstance(value, list) and not value):
        return None
    if not isinstance(value, list) or len(value) != 4:
        raise MalformedBoxes(f"{where}: expected a box [x1, y1, x2, y2] (or null), got {value!r}")
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in value):
        raise MalformedBoxes(f"{where}: box coordinates must be finite numbers, got {value!r}")
    x1, y1, x2, y2 = (float(v) for v in value)
    if x2 < x1 or y2 < y1:
        raise MalformedBoxes(f"{where}: box {value!r} has x2 < x1 or y2 < y1 (expected [x1, y1, x2, y2])")
    return (x1, y1, x2, y2)


def _frame_boxes(value: Any, kind: str, where: str) -> list[Box]:
    """One frame's value -> its boxes: face [x1,y1,x2,y2]; hand {"l_h": box, "r_h": box, "obj": ignored}."""
    if kind == "hand" and isinstance(value, dict):
        boxes = [_box(value.get(k), f"{where}.{k}") for k in HAND_KEYS]
    else:  # a bare box is also accepted in the hand column, as the official parser does
        boxes = [_box(value, where)]
    return [b for b in boxes if b is not None]


def parse_boxes(cell: str | Mapping[str, Any] | None, kind: Literal["face", "hand"]) -> dict[int, list[Box]]:
    """A `face` / `hand_object` cell (JSON text or parsed) -> {frame index k: [boxes]}; raises MalformedBoxes."""
    if isinstance(cell, Mapping):
        data: Any = dict(cell)
    else:
        if cell is None or not str(cell).strip():
            raise MalformedBoxes(f"the {kind} box cell is empty (it is a required field)")
        try:
            data = json.loads(cell)
        except json.JSONDecodeError as err:
            raise MalformedBoxes(f"the {kind} box cell is not valid JSON ({err.msg} at char {err.pos})") from None
    if not isinstance(data, dict):
        raise MalformedBoxes(f"the {kind} box cell must be a JSON object keyed by frame_k, got {type(data).__name__}")
    out: dict[int, list[Box]] = {}
    for key, value in data.items():
        m = _KEY.fullmatch(str(key))
        if m is None:
            raise MalformedBoxes(f"the {kind} box cell has key {key!r}; expected keys frame_0, frame_1, ...")
        boxes = _frame_boxes(value, kind, f"{kind}[{key}]")
        if boxes:
            out.setdefault(int(m.group(1)), []).extend(boxes)
    return out


def check_box_keys(frame_indices: Iterable[int], box_keys: BoxKeys, frames: int = 20) -> None:
    """Raise BoxKeyConventionError when the keys cannot come from the `box_keys` convention."""
    keys = sorted(set(frame_indices))
    if box_keys == "official":
        bad = [k for k in keys if k < 2]
        if bad:
            raise BoxKeyConventionError(
                f"box JSON has key frame_{bad[0]}, but box_keys='official' maps frame_k to latent (k-2)//4, which "
                "drops frame_0 and frame_1: these keys look like latent-frame indices. Set box_keys='latent' if "
                "the dataset keys boxes by latent frame, or re-key it by video frame (frame_2, frame_6, ..., frame_78)"
            )
    elif box_keys == "latent":
        bad = [k for k in keys if k >= frames]
        if bad:
            raise BoxKeyConventionError(
                f"box JSON has key frame_{bad[-1]}, but box_keys='latent' allows only frame_0..frame_{frames - 1} "
                "(one key per latent frame): these keys look like video-frame indices. Set box_keys='official' if "
                "the dataset keys boxes by video frame (frame_k -> latent (k-2)//4)"
            )
    else:
        raise ValueError(f"box_keys must be 'official' or 'latent', got {box_keys!r}")


def latent_frame(k: int, box_keys: BoxKeys) -> int:
    """Frame key index -> latent frame: official ⌊(k−2)/4⌋, latent k."""
    return (k - 2) // 4 if box_keys == "official" else k


def box_to_token_rect(
    box: Box, orig_hw: tuple[int, int], train_hw: tuple[int, int], patch: int = 16
) -> tuple[int, int, int, int] | None:
    """Original-pixel box -> inclusive token rectangle (row0, row1, col0, col1), or None when cropped away."""
    (ho, wo), (ht, wt) = orig_hw, train_hw
    s = max(wt / wo, ht / ho)
    off_x, off_y = (round(wo * s) - wt) / 2, (round(ho * s) - ht) / 2  # float offsets, as the official labels
    x1, y1, x2, y2 = box[0] * s - off_x, box[1] * s - off_y, box[2] * s - off_x, box[3] * s - off_y
    if x2 < 0 or y2 < 0 or x1 > wt or y1 > ht:
        return None
    x1, y1, x2, y2 = max(0.0, x1), max(0.0, y1), min(float(wt), x2), min(float(ht), y2)
    gh, gw = ht // patch, wt // patch

    def cell(v: float, n: int) -> int:
        return min(max(int(v / patch), 0), n - 1)

    return cell(y1, gh), cell(y2, gh), cell(x1, gw), cell(x2, gw)


def boxes_outside_frame(boxes: Mapping[int, list[Box]], orig_hw: tuple[int, int]) -> tuple[int, int]:
    """(boxes partly outside the original frame, boxes fully outside it); the first are clipped, the second refused."""
    h, w = orig_hw
    partial = full = 0
    for frame_boxes in boxes.values():
        for x1, y1, x2, y2 in frame_boxes:
            if x2 < 0 or y2 < 0 or x1 > w or y1 > h:
                full += 1
            elif x1 < 0 or y1 < 0 or x2 > w or y2 > h:
                partial += 1
    return partial, full


def _mask(
    boxes: Mapping[int, list[Box]],
    box_keys: BoxKeys,
    frames: int,
    orig_hw: tuple[int, int],
    train_hw: tuple[int, int],
    patch: int,
) -> torch.Tensor:
    """Boxes -> bool token mask [frames, H_t/patch, W_t/patch]."""
    mask = torch.zeros(frames, train_hw[0] // patch, train_hw[1] // patch, dtype=torch.bool)
    for k, frame_boxes in boxes.items():
        t = latent_frame(k, box_keys)
        if not 0 <= t < frames:
            continue
        for box in frame_boxes:
            rect = box_to_token_rect(box, orig_hw, train_hw, patch)
            if rect is not None:
                r0, r1, c0, c1 = rect
                mask[t, r0 : r1 + 1, c0 : c1 + 1] = True
    return mask


def router_labels(
    face_json: str | Mapping[str, Any],
    hand_json: str | Mapping[str, Any],
    orig_hw: tuple[int, int],
    train_hw: tuple[int, int],
    frames: int = 20,
    patch: int = 16,
    box_keys: BoxKeys = "official",
    *,
    weights: tuple[float, float, float] = (1.0, 10.0, 10.0),
) -> tuple[torch.Tensor, torch.Tensor]:
    """Box cells -> (targets [N, 3] one-hot over (base, hand, face), weights [N]); N = frames·(H_t/patch)·(W_t/patch).

    `patch` is pixels per token side (VAE factor × DiT patch: 8 × 2 = 16 for Wan); `weights` are (base, hand,
    face). Raises MalformedBoxes for unreadable cells and BoxKeyConventionError for keys contradicting box_keys.
    """
    if min(orig_hw) <= 0 or min(train_hw) < patch:
        raise ValueError(f"bad sizes: original {orig_hw}, training {train_hw} (training must be >= {patch} px)")
    face = parse_boxes(face_json, "face")
    hand = parse_boxes(hand_json, "hand")
    check_box_keys([*face, *hand], box_keys, frames)
    face_mask = _mask(face, box_keys, frames, orig_hw, train_hw, patch).flatten()
    hand_mask = _mask(hand, box_keys, frames, orig_hw, train_hw, patch).flatten()
    targets = torch.zeros(face_mask.numel(), 3)
    targets[:, BASE] = 1.0
    targets[face_mask] = torch.tensor([0.0, 0.0, 1.0])
    targets[hand_mask] = torch.tensor([0.0, 1.0, 0.0])  # hand overrides face
    w = torch.full((face_mask.numel(),), weights[BASE])
    w[face_mask & ~hand_mask] = weights[FACE]
    w[hand_mask] = weights[HAND]
    return targets, w
