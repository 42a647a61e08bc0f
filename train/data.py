"""The training CSV over raw media (reference §4.1–4.2): row validation with a report, path safety, loading.

Schema (official): prompt, input_video, motion_video, audio, person_image, product_image, scale, hoi_video,
pose_video, face, hand_object, height, width. Empty cells are allowed only for product_image, pose_video,
motion_video, hoi_video and scale. Every row is checked when the dataset is built; a bad row is skipped,
logged and counted in `report()`, never loaded with a silently wrong label. Decisions on bad input:

- A path is resolved inside the dataset root (symlinks followed); one that escapes it is refused.
- Videos shorter than they must be (input/pose/HOI 81 frames, motion 73) are refused; the official code pads by
  repeating the last frame, which trains on a frozen tail. Longer videos are cut to their first frames.
- Every video must be 25 fps (± 0.01); audio must last ≥ 80.5 frames (3.22 s) so the clip has its 80 columns.
- `height`/`width` are the size of the box coordinates' frame; the input video may be a scaled copy, but its
  aspect must match (± 1 %), and the pose / HOI / motion videos must have the input video's aspect.
- Box cells that are not JSON objects of frame_k -> box are refused (the official code reads them as {}).
  A box partly outside the original frame is clipped (counted as a warning); a box fully outside it means
  the coordinates are in another space, and the row is refused. Boxes the training crop cuts away are
  skipped as in the official labels. Keys that contradict `box_keys` stop the whole dataset. Keys past the
  clip's latent frames are ignored as official (a warning), but a row whose every key lies past the clip
  (e.g. absolute frame numbers of a longer video) is refused: it would train on all-base labels.

Loading: first N frames, cover-resize (LANCZOS when downscaling, else BILINEAR) + center crop to H×W for
videos and the person image, resize-and-pad for the product (margin 1.0, no /1.25 as official training),
16 kHz mono audio, optionally normalised to −23 LUFS (official training).
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import math
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .clip_media import load_audio_mono, load_frames, load_person, load_product, probe_audio_seconds, probe_video
from .labels import (
    BoxKeyConventionError,
    BoxKeys,
    MalformedBoxes,
    boxes_outside_frame,
    check_box_keys,
    latent_frame,
    parse_boxes,
)
from .labels import router_labels as _router_labels

log = logging.getLogger(__name__)

__all__ = ["COLUMNS", "ClipSpec", "ClipRow", "RawClip", "DatasetReport", "RowError", "RawClipDataset", "validate_csv"]

COLUMNS = (
    "prompt", "input_video", "motion_video", "audio", "person_image", "product_image", "scale",
    "hoi_video", "pose_video", "face", "hand_object", "height", "width",
)  # fmt: skip
OPTIONAL = frozenset({"product_image", "pose_video", "motion_video", "hoi_video", "scale"})
PATHS = ("input_video", "motion_video", "audio", "person_image", "product_image", "hoi_video", "pose_video")


@dataclass(frozen=True)
class ClipSpec:
    """What every clip must be: frame counts, frame rate, audio rate and the box-key convention."""

    frames: int = 81  # input / pose / HOI frames (1 + 4·20)
    motion_frames: int = 73
    fps: float = 25.0
    fps_tolerance: float = 0.01
    sample_rate: int = 16000
    box_keys: BoxKeys = "official"
    aspect_tolerance: float = 0.01

    @property
    def latent_frames(self) -> int:
        return (self.frames - 1) // 4

    @property
    def min_audio_seconds(self) -> float:
        return (self.frames - 0.5) / self.fps


class RowError(ValueError):
    """A row that cannot be used: `category` counts it in the report, the message says what to fix."""

    def __init__(self, category: str, message: str) -> None:
        super().__init__(message)
        self.category = category


@dataclass(frozen=True)
class ClipRow:
    """One validated CSV row: absolute paths inside the root, parsed numbers, the raw box cells."""

    index: int  # 0-based data row (the header is not counted)
    key: str  # stable id: hash of the row's cells (+ occurrence number for duplicate rows)
    prompt: str
    input_video: Path
    motion_video: Path | None
    audio: Path
    person_image: Path
    product_image: Path | None
    scale: float
    hoi_video: Path | None
    pose_video: Path | None
    face: str
    hand_object: str
    height: int  # size of the frame the box coordinates refer to
    width: int


@dataclass(frozen=True)
class RawClip:
    """One loaded training clip: frames uint8 [T, H, W, 3] at the training size, audio float32 [T_s] mono."""

    key: str
    index: int
    prompt: str
    video: torch.Tensor  # [81, H, W, 3]
    motion: torch.Tensor | None  # [73, H, W, 3]
    person: torch.Tensor  # [H, W, 3]
    product: torch.Tensor | None  # [H, W, 3]
    product_scale: float
    pose: torch.Tensor | None  # [81, H, W, 3]
    hoi: torch.Tensor | None  # [81, H, W, 3]
    audio: torch.Tensor  # [T_s] at spec.sample_rate
    router_targets: torch.Tensor  # [F·h'·w', 3]
    router_weights: torch.Tensor  # [F·h'·w']


@dataclass
class DatasetReport:
    """Kept / dropped rows with reasons, and warnings on kept rows."""

    total: int = 0
    kept: int = 0
    dropped: list[tuple[int, str, str]] = field(default_factory=list)  # (row, category, message)
    warnings: list[tuple[int, str]] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        """Dropped rows per category."""
        return dict(Counter(category for _, category, _ in self.dropped))

    def summary(self) -> str:
        """One line: kept/total and the dropped counts by reason."""
        reasons = ", ".join(f"{k}: {v}" for k, v in sorted(self.counts().items())) or "none"
        dropped, warned = len(self.dropped), len(self.warnings)
        return f"kept {self.kept}/{self.total} rows; dropped {dropped} ({reasons}); {warned} warnings"

    def to_json(self) -> dict:
        return {
            "total": self.total,
            "kept": self.kept,
            "dropped": [{"row": r, "reason": c, "message": m} for r, c, m in self.dropped],
            "warnings": [{"row": r, "message": m} for r, m in self.warnings],
        }


def resolve_inside(root: Path, value: str, column: str) -> Path:
    """A CSV path (relative to root, or absolute) -> the real file path; RowError if it escapes root or is absent."""
    candidate = Path(value)
    path = (candidate if candidate.is_absolute() else root / candidate).resolve()
    if not path.is_relative_to(root):
        raise RowError("path_escapes_root", f"{column} '{value}' resolves to {path}, outside the dataset root {root}")
    if not path.is_file():
        raise RowError("missing_file", f"{column} '{value}' does not exist (looked for {path})")
    return path


def _number(raw: dict[str, str], column: str, kind: type) -> float:
    try:
        value = kind(raw[column].strip())
    except ValueError:
        raise RowError("bad_value", f"{column} must be a {kind.__name__}, got '{raw[column]}'") from None
    if not math.isfinite(value) or value <= 0:
        raise RowError("bad_value", f"{column} must be a positive number, got '{raw[column]}'")
    return value


def _parse_fields(index: int, key: str, raw: dict[str, str], root: Path) -> ClipRow:
    """Required cells present, numbers valid, every path inside root and existing."""
    empty = [c for c in COLUMNS if c not in OPTIONAL and not raw.get(c, "").strip()]
    if empty:
        raise RowError("missing_field", f"required cells are empty: {', '.join(empty)}")
    paths = {c: resolve_inside(root, raw[c].strip(), c) if raw.get(c, "").strip() else None for c in PATHS}
    scale = _number(raw, "scale", float) if raw.get("scale", "").strip().lower() not in ("", "nan") else 1.0
    return ClipRow(
        index=index,
        key=key,
        prompt=raw["prompt"],
        scale=scale,
        face=raw["face"],
        hand_object=raw["hand_object"],
        height=int(_number(raw, "height", int)),
        width=int(_number(raw, "width", int)),
        **paths,
    )


def _check_boxes(row: ClipRow, spec: ClipSpec) -> list[str]:
    """Parse the box cells; RowError if malformed or fully outside the frame; returns warnings."""
    try:
        face, hand = parse_boxes(row.face, "face"), parse_boxes(row.hand_object, "hand")
    except MalformedBoxes as err:
        raise RowError("malformed_boxes", str(err)) from None
    try:
        check_box_keys([*face, *hand], spec.box_keys, spec.latent_frames)
    except BoxKeyConventionError as err:
        raise BoxKeyConventionError(f"row {row.index}: {err}") from None
    keys = {*face, *hand}
    outside = sorted(k for k in keys if not 0 <= latent_frame(k, spec.box_keys) < spec.latent_frames)
    if outside and len(outside) == len(keys):
        raise RowError(
            "boxes_outside_clip",
            f"no box key falls inside the clip (keys frame_{outside[0]}..frame_{outside[-1]}): keys must count frames "
            "from the clip's first frame",
        )
    partial, full = (sum(n) for n in zip(*(boxes_outside_frame(b, (row.height, row.width)) for b in (face, hand))))
    if full:
        raise RowError(
            "box_outside_frame",
            f"{full} box(es) lie fully outside the {row.width}x{row.height} frame given by width/height: "
            "the boxes must be pixel coordinates of that frame",
        )
    warnings = [f"{partial} box(es) extend past the {row.width}x{row.height} frame and are clipped"] if partial else []
    if outside:
        warnings.append(f"box keys {outside} lie past the clip's latent frames and are ignored")
    return warnings


def _check_media(row: ClipRow, spec: ClipSpec) -> None:
    """Frame counts, frame rates and aspect ratios of the videos; the audio's length."""
    need = {"input_video": spec.frames, "motion_video": spec.motion_frames, "pose_video": spec.frames}
    need["hoi_video"] = spec.frames
    aspect = None
    for column, frames in need.items():
        path = getattr(row, column)
        if path is None:
            continue
        try:
            info = probe_video(path)
        except (OSError, ValueError) as err:
            raise RowError("unreadable_media", f"{column} {path.name} cannot be read as a video: {err}") from None
        if abs(info.fps - spec.fps) > spec.fps_tolerance:
            raise RowError(
                "wrong_fps", f"{column} {path.name} is {info.fps:.3f} fps; training clips must be {spec.fps:g} fps"
            )
        if info.frames < frames:
            raise RowError("short_video", f"{column} {path.name} has {info.frames} frames; it needs at least {frames}")
        ratio = info.width / info.height
        if aspect is None:
            aspect = ratio
            expected, what = row.width / row.height, f"width/height columns ({row.width}x{row.height})"
        else:
            expected, what = aspect, "input video"
        if abs(ratio / expected - 1) > spec.aspect_tolerance:
            raise RowError(
                "size_mismatch", f"{column} {path.name} is {info.width}x{info.height}, not the aspect of the {what}"
            )
    try:
        seconds = probe_audio_seconds(row.audio)
    except (OSError, ValueError) as err:
        raise RowError("unreadable_media", f"audio {row.audio.name} cannot be read: {err}") from None
    if seconds < spec.min_audio_seconds:
        raise RowError(
            "short_audio",
            f"audio {row.audio.name} lasts {seconds:.3f} s; the clip needs {spec.min_audio_seconds:.2f} s",
        )


def _check_images(row: ClipRow) -> None:
    from PIL import Image, UnidentifiedImageError

    for column in ("person_image", "product_image"):
        path = getattr(row, column)
        if path is None:
            continue
        try:
            with Image.open(path) as im:
                im.verify()
        except (OSError, UnidentifiedImageError, SyntaxError) as err:
            raise RowError("unreadable_media", f"{column} {path.name} is not a readable image: {err}") from None


def _row_keys(rows: list[dict[str, str]]) -> list[str]:
    """A stable id per row: hash of its cells, with an occurrence suffix for duplicate rows."""
    seen: Counter[str] = Counter()
    keys = []
    for raw in rows:
        digest = hashlib.sha1(json.dumps([raw.get(c, "") for c in COLUMNS]).encode()).hexdigest()[:16]
        keys.append(f"{digest}-{seen[digest]}")
        seen[digest] += 1
    return keys


def read_csv(csv_path: Path) -> list[dict[str, str]]:
    """The CSV's rows as dicts; ValueError if required columns are missing from the header."""
    with open(csv_path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        header = reader.fieldnames or []
        rows = [{k: (v or "") for k, v in r.items() if k is not None} for r in reader]
    missing = [c for c in COLUMNS if c not in header and c not in OPTIONAL]
    if missing:
        raise ValueError(f"{csv_path} lacks the columns {missing}; the training CSV needs {list(COLUMNS)}")
    if "depth_video" in header and "hoi_video" not in header:
        log.warning("%s: column depth_video is ignored; the HOI video column is hoi_video", csv_path)
    return rows


def validate_csv(
    csv_path: str | os.PathLike, root: str | os.PathLike | None, spec: ClipSpec = ClipSpec()
) -> tuple[list[ClipRow], DatasetReport]:
    """Check every row; (usable rows, report). Raises BoxKeyConventionError when the keys contradict box_keys."""
    csv_path = Path(csv_path)
    root_dir = Path(root if root is not None else csv_path.parent).resolve()
    raws = read_csv(csv_path)
    report, kept = DatasetReport(total=len(raws)), []
    for index, (raw, key) in enumerate(zip(raws, _row_keys(raws))):
        try:
            row = _parse_fields(index, key, raw, root_dir)
            warnings = _check_boxes(row, spec)
            _check_images(row)
            _check_media(row, spec)
        except RowError as err:
            log.warning("%s row %d skipped (%s): %s", csv_path.name, index, err.category, err)
            report.dropped.append((index, err.category, str(err)))
            continue
        for w in warnings:
            log.info("%s row %d: %s", csv_path.name, index, w)
            report.warnings.append((index, w))
        kept.append(row)
    report.kept = len(kept)
    log.info("%s: %s", csv_path.name, report.summary())
    return kept, report


class RawClipDataset(torch.utils.data.Dataset):
    """The official training CSV over raw media; rows validated at construction, clips loaded on access."""

    def __init__(
        self,
        csv_path: str | os.PathLike,
        root: str | os.PathLike | None,
        height: int,
        width: int,
        *,
        spec: ClipSpec = ClipSpec(),
        patch: int = 16,
        loudness_lufs: float | None = -23.0,
    ) -> None:
        if height % patch or width % patch:
            raise ValueError(f"training size {height}x{width} must be a multiple of {patch} (VAE factor x patch)")
        self.height, self.width, self.spec, self.patch, self.loudness_lufs = height, width, spec, patch, loudness_lufs
        self.rows, self._report = validate_csv(csv_path, root, spec)

    def report(self) -> DatasetReport:
        """Kept and dropped rows with reasons (filled at construction)."""
        return self._report

    def __len__(self) -> int:
        return len(self.rows)

    def labels(self, row: ClipRow) -> tuple[torch.Tensor, torch.Tensor]:
        """Router (targets [N, 3], weights [N]) of a row at this dataset's training size."""
        return _router_labels(
            row.face, row.hand_object, (row.height, row.width), (self.height, self.width),
            self.spec.latent_frames, self.patch, self.spec.box_keys,
        )  # fmt: skip

    def __getitem__(self, i: int) -> RawClip:
        """Load and preprocess row i (frames cover-cropped to H×W, audio 16 kHz mono)."""
        row, size = self.rows[i], (self.height, self.width)
        targets, weights = self.labels(row)
        opt = lambda p, n: None if p is None else load_frames(p, n, size)  # noqa: E731
        return RawClip(
            key=row.key,
            index=row.index,
            prompt=row.prompt,
            video=load_frames(row.input_video, self.spec.frames, size),
            motion=opt(row.motion_video, self.spec.motion_frames),
            person=load_person(row.person_image, size),
            product=None if row.product_image is None else load_product(row.product_image, size),
            product_scale=row.scale,
            pose=opt(row.pose_video, self.spec.frames),
            hoi=opt(row.hoi_video, self.spec.frames),
            audio=load_audio_mono(row.audio, self.spec.sample_rate, self.loudness_lufs),
            router_targets=targets,
            router_weights=weights,
        )
