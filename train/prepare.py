"""`cointeract prepare`: cut source videos into training clips and write the official training CSV.

Input: a JSON manifest (paths relative to the manifest's folder)::

    {"sources": [{
        "video": "raw/talk.mp4",              # required, 25 fps; its audio track is used unless "audio" is given
        "prompt": "A woman shows a bottle",   # required
        "detections": "raw/talk_boxes.json",  # required, see below
        "id": "talk",                         # optional (default: the video's file stem, made unique)
        "audio": "raw/talk.wav",              # optional speech track aligned with the video
        "person_image": "raw/person.png",     # optional (default: each clip's first frame)
        "product_image": "raw/bottle.png",    # optional
        "scale": 1.0,                         # optional product RoPE scale
        "body_video": "raw/talk_body.mp4",    # optional body rendering or silhouette on black, frame-aligned
        "object_mask": "raw/talk_mask.mp4",   # optional (needs body_video): a mask video, or a folder of
                                              #   per-frame mask images whose names end in the frame number
        "pose_video": "raw/talk_pose.mp4",    # optional, frame-aligned
        "starts": [73, 153]                   # optional first frame of each clip
    }]}

Detections: ``{"face": {"<frame>": [x1, y1, x2, y2] | null}, "hand_object": {"<frame>": {"l_h": box,
"r_h": box, "obj": box}}}`` in source pixels, keyed by absolute source frame (``"75"`` or ``"frame_75"``).

Clips: input = frames [s, s+81), motion = the 73 frames before (none when s < 73), audio = the same span at
16 kHz mono. Default starts: 73, 153, ... (stride 80, as clips chain at inference) while the clip fits.
HOI frame = body frame with the source's pixels under the object mask on top. Boxes are re-keyed per clip in
the official convention: latent t gets key ``frame_{4t+2}`` from source frame s+4t+2 (else s+4t+3, else
s+4t+1: the frames inside latent t in both target encodings). Output: ``clips/<id>_<start>/`` media,
``data.csv`` (only rows that pass `validate_csv`) and ``prepare_report.json`` (everything dropped and why).
Nothing is written outside OUT_DIR: a source whose id is not a plain name (a path separator, a leading ".",
"..", a drive colon) is dropped as ``unsafe_id``. A run that makes no clip at all is an error (exit 1).
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import re
import shutil
from collections import Counter, deque
from collections.abc import Iterator
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ..cointeract_core.media.fileio import atomic_output
from .clip_media import iter_frames, probe_video
from .data import COLUMNS, ClipSpec, DatasetReport, validate_csv
from .errors import UserError, user_errors

log = logging.getLogger(__name__)

__all__ = ["Source", "PrepareReport", "read_sources", "prepare_dataset", "main"]


class SourceError(ValueError):
    """A source or one clip of it cannot be used: `category` counts it in the report."""

    def __init__(self, category: str, message: str) -> None:
        super().__init__(message)
        self.category = category


@dataclass(frozen=True)
class Source:
    """One source video and what the user supplies with it (see the module docstring)."""

    id: str
    video: Path
    prompt: str
    detections: Path
    audio: Path | None = None
    person_image: Path | None = None
    product_image: Path | None = None
    scale: float | None = None
    body_video: Path | None = None
    object_mask: Path | None = None
    pose_video: Path | None = None
    starts: tuple[int, ...] | None = None


@dataclass
class PrepareReport:
    """What was written and what was dropped (per source or per clip), plus the CSV validation report."""

    csv: Path
    clips: int = 0
    dropped: list[dict[str, Any]] = field(default_factory=list)
    validation: DatasetReport | None = None

    def drop(self, source: str, start: int | None, err: SourceError) -> None:
        log.warning("prepare: %s%s dropped (%s): %s", source, "" if start is None else f" @{start}", err.category, err)
        self.dropped.append({"source": source, "start": start, "reason": err.category, "message": str(err)})

    def summary(self) -> str:
        kept = self.validation.kept if self.validation else 0
        bad = len(self.validation.dropped) if self.validation else 0
        cut, dropped = self.clips, len(self.dropped)
        return f"{kept} clips in {self.csv} ({cut} cut, {dropped} dropped while cutting, {bad} by validation)"

    def to_json(self) -> dict[str, Any]:
        validation = self.validation.to_json() if self.validation else None
        return {"csv": str(self.csv), "clips": self.clips, "dropped": self.dropped, "validation": validation}


def read_sources(manifest: str | Path) -> list[Source]:
    """Parse a prepare manifest (JSON); paths resolve against its folder; ValueError names what is wrong."""
    path = Path(manifest)
    try:
        data = json.loads(path.read_text())
        entries = data["sources"]
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise ValueError(f"{path} must be JSON of the form {{'sources': [...]}} ({err!r})") from None
    names = {f.name for f in fields(Source)}
    out, ids = [], set()
    for i, entry in enumerate(entries):
        unknown = set(entry) - names
        missing = {"video", "prompt", "detections"} - set(entry)
        if unknown or missing:
            raise ValueError(f"{path}: source {i} has unknown keys {sorted(unknown)} / lacks {sorted(missing)}")
        kw = {k: (path.parent / v if k not in ("id", "prompt", "scale", "starts") else v) for k, v in entry.items()}
        kw["starts"] = tuple(int(s) for s in entry["starts"]) if "starts" in entry else None
        sid = base = str(entry.get("id") or Path(entry["video"]).stem)
        n = 1
        while sid in ids:
            sid, n = f"{base}_{n}", n + 1
        ids.add(sid)
        out.append(Source(**{**kw, "id": sid}))
    return out


_NOT_IN_ID = re.compile(r"[/\\:\x00-\x1f]")  # separators, a drive colon, control characters


def _check_id(sid: str) -> None:
    """A source id names folders under the output root (clips/<id>_<start>, sources/<id>): it must be a plain name."""
    if not sid or sid.startswith(".") or _NOT_IN_ID.search(sid):
        raise SourceError(
            "unsafe_id",
            f"source id {sid!r} is not a plain name (no '/', '\\', ':', control characters or leading '.'); "
            "it would write outside the output folder",
        )


def _detections(path: Path) -> tuple[dict[int, Any], dict[int, Any]]:
    """(face, hand) entries keyed by absolute source frame."""
    try:
        data = json.loads(path.read_text())
        tables = [data.get("face") or {}, data.get("hand_object") or {}]
        return tuple({int(str(k).removeprefix("frame_")): v for k, v in t.items()} for t in tables)  # type: ignore
    except (OSError, ValueError, AttributeError) as err:
        raise SourceError("malformed_detections", f"detections {path.name} unreadable: {err}") from None


def rekey(entries: dict[int, Any], start: int, latent_frames: int = 20) -> dict[str, Any]:
    """Absolute-frame detections -> a clip's official keys: latent t -> frame_{4t+2} (from s+4t+2, +3 or +1)."""
    out = {}
    for t in range(latent_frames):
        for rel in (4 * t + 2, 4 * t + 3, 4 * t + 1):
            if start + rel in entries:
                out[f"frame_{4 * t + 2}"] = entries[start + rel]
                break
    return out


def _masks(src: Source) -> Iterator[np.ndarray | str] | None:
    """Per source frame: bool mask [H, W] of the object, or a string saying why there is none."""
    if src.object_mask is None:
        return None
    if src.object_mask.is_dir():
        files = {}
        for p in src.object_mask.iterdir():
            m = re.search(r"(\d+)$", p.stem)
            if m and p.suffix.lower() in (".png", ".jpg", ".jpeg", ".bmp", ".webp"):
                files[int(m.group(1))] = p

        def from_files() -> Iterator[np.ndarray | str]:
            i = 0
            while True:
                if i not in files:
                    yield f"no object mask file for frame {i}"
                else:
                    with Image.open(files[i]) as im:
                        yield np.asarray(im.convert("L")) > 127
                i += 1

        return from_files()
    return (f.mean(axis=2) > 127 for f in iter_frames(src.object_mask))


def _compose(body: np.ndarray | None, frame: np.ndarray, mask: np.ndarray | str | None) -> np.ndarray | str:
    """HOI frame: the body frame with the source pixels under the object mask on top (or why it cannot be made)."""
    if body is None:
        return "body_video ended before the clip"
    if isinstance(mask, str):
        return mask
    if body.shape != frame.shape or (mask is not None and mask.shape != frame.shape[:2]):
        (bh, bw), (fh, fw) = body.shape[:2], frame.shape[:2]
        return f"body/mask size {bw}x{bh} differs from the video's {fw}x{fh}"
    if mask is None:
        return body
    out = body.copy()
    out[mask] = frame[mask]
    return out


def _cut(src: Source, starts: list[int], spec: ClipSpec) -> Iterator[tuple[int, dict[str, Any]]]:
    """Stream the source once -> (start, {"video", "motion", "hoi", "pose"}) per clip, in start order."""
    n, hist = spec.frames, spec.motion_frames
    ends = {s + n - 1: s for s in starts}
    last = max(ends)
    video: deque = deque(maxlen=hist + n)
    hoi: deque = deque(maxlen=n)
    pose: deque = deque(maxlen=n)
    body_it = iter_frames(src.body_video) if src.body_video else None
    pose_it = iter_frames(src.pose_video) if src.pose_video else None
    mask_it = _masks(src)
    for i, frame in enumerate(iter_frames(src.video)):
        video.append(frame)
        if body_it is not None:
            mask = next(mask_it, "object_mask ended before the clip") if mask_it is not None else None
            hoi.append(_compose(next(body_it, None), frame, mask))
        if pose_it is not None:
            pose.append(next(pose_it, "pose_video ended before the clip"))
        if i in ends:
            s = ends[i]
            yield (
                s,
                {
                    "video": list(video)[-n:],
                    "motion": list(video)[:hist] if s >= hist else None,
                    "hoi": list(hoi) if body_it is not None else None,
                    "pose": list(pose) if pose_it is not None else None,
                },
            )
        if i >= last:
            return


def _starts(src: Source, frames: int, spec: ClipSpec, stride: int, first: int, report: PrepareReport) -> list[int]:
    """Clip starts: the manifest's (those that do not fit are dropped) or first, first+stride, ..."""
    if src.starts is None:
        return list(range(first, frames - spec.frames + 1, stride))
    ok = []
    for s in sorted(set(src.starts)):
        if s < 0 or s + spec.frames > frames:
            msg = f"frames [{s}, {s + spec.frames}) are not inside the video's {frames} frames"
            report.drop(src.id, s, SourceError("clip_out_of_range", msg))
        else:
            ok.append(s)
    return ok


def _copy_once(path: Path, out_root: Path, src: Source, name: str) -> str:
    dst = out_root / "sources" / src.id / f"{name}{path.suffix.lower()}"
    if not dst.exists():
        with atomic_output(dst) as tmp:
            shutil.copyfile(path, tmp)
    return dst.relative_to(out_root).as_posix()


def _write_clip(src: Source, start: int, clip: dict[str, Any], audio, ctx: dict[str, Any]) -> dict[str, str]:
    """Write one clip's media; its CSV row (paths relative to the output root)."""
    from ..cointeract_core.media import write_video, write_wav

    out_root, spec, crf = ctx["out_root"], ctx["spec"], ctx["crf"]
    for part in ("hoi", "pose"):
        bad = next((f for f in clip[part] or [] if isinstance(f, str)), None)
        if bad is not None:
            raise SourceError(f"bad_{part}", bad)
    sr, fps = spec.sample_rate, spec.fps
    a0 = round(start / fps * sr)
    a1 = a0 + round(spec.frames / fps * sr)
    if a1 > audio.shape[0]:
        raise SourceError("short_audio", f"audio ends at {audio.shape[0] / sr:.2f} s, before the clip's end")
    rel = Path("clips") / f"{src.id}_{start:06d}"
    (out_root / rel).mkdir(parents=True, exist_ok=True)
    row = {c: "" for c in COLUMNS}
    for part in ("video", "motion", "hoi", "pose"):
        if clip[part] is not None:
            column = {"video": "input_video", "motion": "motion_video"}.get(part, f"{part}_video")
            write_video(out_root / rel / f"{part}.mp4", np.stack(clip[part]), fps=fps, crf=crf)
            row[column] = (rel / f"{part}.mp4").as_posix()
    write_wav(out_root / rel / "audio.wav", audio[a0:a1], sr)
    row["audio"] = (rel / "audio.wav").as_posix()
    if src.person_image is not None:
        row["person_image"] = _copy_once(src.person_image, out_root, src, "person")
    else:
        with atomic_output(out_root / rel / "person.png") as tmp:
            Image.fromarray(clip["video"][0]).save(tmp, format="PNG")
        row["person_image"] = (rel / "person.png").as_posix()
    if src.product_image is not None:
        row["product_image"] = _copy_once(src.product_image, out_root, src, "product")
    row["scale"] = "" if src.scale is None else str(src.scale)
    face, hand = ctx["detections"]
    row["face"], row["hand_object"] = json.dumps(rekey(face, start)), json.dumps(rekey(hand, start))
    height, width = clip["video"][0].shape[:2]
    row["prompt"], row["height"], row["width"] = src.prompt, str(height), str(width)
    return row


def _prepare_source(src: Source, out_root: Path, opts: dict[str, Any], report: PrepareReport) -> list[dict[str, str]]:
    """All clips of one source -> CSV rows; clip-level problems are recorded in the report."""
    from ..cointeract_core.media import load_audio

    spec = opts["spec"]
    _check_id(src.id)
    for name in ("video", "detections", "audio", "person_image", "product_image", "body_video", "object_mask"):
        path = getattr(src, name)
        if path is not None and not path.exists():
            raise SourceError("missing_file", f"{name} {path} does not exist")
    if src.object_mask is not None and src.body_video is None:
        raise SourceError("missing_body_video", "object_mask needs body_video (the HOI frame is body + object)")
    try:
        info = probe_video(src.video)
    except (OSError, ValueError) as err:
        raise SourceError("unreadable_media", f"video {src.video.name}: {err}") from None
    if abs(info.fps - spec.fps) > spec.fps_tolerance:
        msg = f"{src.video.name} is {info.fps:.3f} fps; convert it to {spec.fps:g} fps first (ffmpeg -r 25)"
        raise SourceError("wrong_fps", msg)
    starts = _starts(src, info.frames, spec, opts["stride"], opts["first_start"], report)
    if not starts:
        raise SourceError("short_video", f"{src.video.name} has {info.frames} frames: no clip of {spec.frames} fits")
    try:
        audio = load_audio(src.audio or src.video, sample_rate=spec.sample_rate).waveform
    except (OSError, ValueError) as err:
        raise SourceError("unreadable_media", f"audio of {src.id}: {err}") from None
    ctx = {"out_root": out_root, "spec": spec, "crf": opts["crf"], "detections": _detections(src.detections)}
    rows, done = [], set()
    for start, clip in _cut(src, starts, spec):
        done.add(start)
        try:
            rows.append(_write_clip(src, start, clip, audio, ctx))
        except SourceError as err:
            report.drop(src.id, start, err)
    for start in sorted(set(starts) - done):
        report.drop(src.id, start, SourceError("short_video", "the video decoded fewer frames than its header says"))
    return rows


def prepare_dataset(
    sources: list[Source] | str | Path,
    out_root: str | Path,
    *,
    stride: int = 80,
    first_start: int = 73,
    crf: int = 18,
    spec: ClipSpec | None = None,
) -> PrepareReport:
    """Cut every source into clips under out_root, write data.csv (validated rows only) and prepare_report.json."""
    spec = spec or ClipSpec()
    out = Path(out_root)
    out.mkdir(parents=True, exist_ok=True)
    if not isinstance(sources, list):
        sources = read_sources(sources)
    report = PrepareReport(csv=out / "data.csv")
    opts = {"spec": spec, "stride": stride, "first_start": first_start, "crf": crf}
    rows = []
    for src in sources:
        try:
            rows += _prepare_source(src, out, opts, report)
        except SourceError as err:
            report.drop(src.id, None, err)
    report.clips = len(rows)
    _write_csv(report.csv, rows)
    kept, report.validation = validate_csv(report.csv, out, spec)
    _write_csv(report.csv, [rows[r.index] for r in kept])
    with atomic_output(out / "prepare_report.json") as tmp:
        tmp.write_text(json.dumps(report.to_json(), indent=1))
    log.info("prepare: %s", report.summary())
    return report


def _write_csv(path: Path, rows: list[dict[str, str]]) -> None:
    with atomic_output(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(COLUMNS))
        writer.writeheader()
        writer.writerows(rows)


@user_errors("cointeract prepare")
def main(argv: list[str] | None = None) -> int:
    """`cointeract prepare MANIFEST OUT_DIR`: returns 0 when at least one clip was written; no clip is an error."""
    parser = argparse.ArgumentParser(
        prog="cointeract prepare", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("manifest", type=Path, help="JSON manifest of source videos (format above)")
    parser.add_argument("out_dir", type=Path, help="dataset root to write (clips/, data.csv, prepare_report.json)")
    parser.add_argument("--stride", type=int, default=80, help="frames between clip starts (default 80)")
    parser.add_argument("--first-start", type=int, default=73, help="first clip start (default 73: has motion)")
    parser.add_argument("--crf", type=int, default=18, help="H.264 quality of the written clips (default 18)")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging; tracebacks with errors")
    args = parser.parse_args(argv)
    if args.verbose:
        logging.getLogger().setLevel(logging.DEBUG)
    report = prepare_dataset(
        args.manifest, args.out_dir, stride=args.stride, first_start=args.first_start, crf=args.crf
    )
    validation = report.validation or DatasetReport()
    if not validation.kept:
        reasons = Counter(d["reason"] for d in report.dropped) + Counter(c for _, c, _ in validation.dropped)
        listed = ", ".join(f"{n} {r}" for r, n in reasons.most_common()) or "no clip fits in any source"
        raise UserError(f"no clip was made ({listed}); the details are in {args.out_dir / 'prepare_report.json'}")
    log.info("%s", report.summary())
    return 0
