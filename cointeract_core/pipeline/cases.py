"""What to generate: a `Case` (one video's files and prompts), and the rows of the official demos CSV as Cases."""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path

from ..errors import UserError

__all__ = ["Case", "read_demo_csv"]


@dataclass(frozen=True)
class Case:
    """One video to make: file paths and prompts (one per clip; the last repeats)."""

    audio: Path
    person: Path
    prompts: tuple[str, ...]
    product: Path | None = None
    scale: float = 1.0
    pose: Path | None = None


def read_demo_csv(path: Path) -> list[Case]:
    """Rows of the official demos CSV (audio, person_image, prompt[, product_image, prompt2, prompt3, scale,
    pose_video]); relative paths resolve against the CSV's folder."""
    base = path.parent
    cases = []
    with path.open(newline="", encoding="utf-8") as f:
        for i, row in enumerate(csv.DictReader(f), start=2):
            missing = [c for c in ("audio", "person_image", "prompt") if not (row.get(c) or "").strip()]
            if missing:
                raise ValueError(f"{path.name} line {i}: missing {', '.join(missing)}")
            keys = ("product_image", "prompt2", "prompt3", "scale", "pose_video")
            opt = {k: (row.get(k) or "").strip() for k in keys}
            cases.append(
                Case(
                    audio=base / row["audio"].strip(),
                    person=base / row["person_image"].strip(),
                    prompts=tuple(p for p in (row["prompt"].strip(), opt["prompt2"], opt["prompt3"]) if p),
                    product=base / opt["product_image"] if opt["product_image"] else None,
                    scale=_csv_scale(opt["scale"], path.name, i),
                    pose=base / opt["pose_video"] if opt["pose_video"] else None,
                )
            )
    return cases


def _csv_scale(text: str, name: str, line: int) -> float:
    """The CSV `scale` column: a finite number > 0 (1.0 when empty)."""
    try:
        value = float(text) if text else 1.0
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value <= 0:
        raise UserError(f"{name} line {line}: scale must be a number > 0, got {text!r}")
    return value
