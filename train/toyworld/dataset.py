"""Write toy-world clips as a training dataset in the official CSV layout (reference §4.1, §1.11).

Layout under `root`::

    data.csv                      prompt,input_video,motion_video,audio,person_image,product_image,scale,
                                  hoi_video,pose_video,face,hand_object,height,width (paths relative to root)
    world.json                    the WorldConfig, base seed and clip count
    person.png                    the presenter in a neutral pose (one presenter for every clip)
    clips/000000/input.mp4        81 frames at 25 fps (lossless RGB H.264, see toy_io)
                 motion.mp4       the 73 frames before them
                 hoi.mp4          the HOI stream of the 81 frames
                 audio.wav        16 kHz mono, 81 frames long (3.24 s)
                 product.png      the product alone on black
                 truth.json       ClipTruth: hands-on-product flags, contact, penetration, envelope, ...

Boxes are inclusive pixel rectangles in the clip's own frame, keyed as the official code reads them:
`frame_k` for k = 2, 6, ..., 78 (latent frame ⌊(k−2)/4⌋ = 0..19), each the box in frame k of input.mp4.
"""

from __future__ import annotations

import csv
import json
import logging
import os
from dataclasses import asdict
from pathlib import Path

import numpy as np
from tqdm import tqdm

from ...cointeract_core.media.audio import write_wav
from .evaluation import ClipTruth
from .files import lossless_video_suffix, write_lossless_video, write_png
from .render import SILHOUETTE_COLOUR, render_product
from .world import PRODUCT_COLOURS, WorldClip, WorldConfig, WorldSequence, generate_sequence, make_clip, person_image

__all__ = [
    "COLUMNS",
    "official_boxes",
    "clip_seed",
    "write_clip",
    "write_world_dataset",
    "read_truth",
    "write_prepare_sources",
]

logger = logging.getLogger(__name__)

COLUMNS = (
    "prompt", "input_video", "motion_video", "audio", "person_image", "product_image", "scale",
    "hoi_video", "pose_video", "face", "hand_object", "height", "width",
)  # fmt: skip


def _box(row: np.ndarray) -> list[int] | None:
    return None if row[0] < 0 else [int(v) for v in row]


def official_boxes(seq: WorldSequence) -> tuple[dict, dict]:
    """Face and hand_object JSON objects {"frame_k": ...} for k = 2, 6, ... inside the sequence's frames."""
    face, hands = {}, {}
    for k in range(2, len(seq.frames), 4):
        key = f"frame_{k}"
        if (box := _box(seq.face_box[k])) is not None:
            face[key] = box
        entry = {name: _box(b) for name, b in zip(("l_h", "r_h", "obj"), (*seq.hand_box[k], seq.obj_box[k]))}
        hands[key] = {name: b for name, b in entry.items() if b is not None}
    return face, hands


def clip_seed(seed: int, index: int) -> int:
    """The world seed of clip `index` of a dataset built from `seed` (independent streams per clip)."""
    return int(np.random.SeedSequence([seed, index]).generate_state(1)[0])


def write_clip(root: Path, folder: str, clip: WorldClip, person_path: str) -> dict[str, str]:
    """Write one clip's media under root/folder and return its CSV row (paths relative to root)."""
    cfg = clip.clip.config
    ext = lossless_video_suffix()
    rel = {name: f"{folder}/{name}{ext}" for name in ("input", "motion", "hoi")}
    write_lossless_video(root / rel["input"], clip.clip.frames, cfg.fps)
    write_lossless_video(root / rel["hoi"], clip.clip.hoi, cfg.fps)
    if len(clip.motion):
        write_lossless_video(root / rel["motion"], clip.motion, cfg.fps)
    write_wav(root / folder / "audio.wav", clip.clip.audio, cfg.sample_rate)
    write_png(root / folder / "product.png", clip.product_image)
    (root / folder / "truth.json").write_text(ClipTruth.from_sequence(clip.clip).to_json())
    face, hands = official_boxes(clip.clip)
    return {
        "prompt": clip.prompt,
        "input_video": rel["input"],
        "motion_video": rel["motion"] if len(clip.motion) else "",
        "audio": f"{folder}/audio.wav",
        "person_image": person_path,
        "product_image": f"{folder}/product.png",
        "scale": "1.0",
        "hoi_video": rel["hoi"],
        "pose_video": "",
        "face": json.dumps(face),
        "hand_object": json.dumps(hands),
        "height": str(cfg.height),
        "width": str(cfg.width),
    }


def write_world_dataset(
    root: str | os.PathLike, count: int, cfg: WorldConfig | None = None, seed: int = 0, progress: str | None = None
) -> Path:
    """Render `count` clips into `root` (see the module docstring) and return the path of data.csv.

    `progress` names a tqdm bar over the clips (None: no bar).
    """
    cfg = cfg or WorldConfig()
    if count <= 0:
        raise ValueError(f"count must be a positive number of clips, got {count}")
    if cfg.clip_frames != 81 or cfg.motion_frames != 73:
        logger.warning(
            "clips of %d + %d motion frames differ from the official 81 + 73", cfg.clip_frames, cfg.motion_frames
        )
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in tqdm(range(count), desc=progress, unit="clip", dynamic_ncols=True, disable=progress is None):
        clip = make_clip(cfg, clip_seed(seed, i))
        if i == 0:
            write_png(root / "person.png", clip.person_image)
        rows.append(write_clip(root, f"clips/{i:06d}", clip, "person.png"))
    (root / "world.json").write_text(json.dumps({"config": asdict(cfg), "seed": seed, "count": count}, indent=1))
    csv_path = root / "data.csv"
    tmp = csv_path.with_suffix(".csv.tmp")
    with open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp, csv_path)
    logger.info("wrote %d toy-world clips to %s", count, root)
    return csv_path


def read_truth(csv_path: str | os.PathLike, row: dict[str, str]) -> ClipTruth:
    """The ClipTruth beside a row's input video."""
    folder = (Path(csv_path).parent / row["input_video"]).parent
    return ClipTruth.from_json((folder / "truth.json").read_text())


def _absolute_detections(seq: WorldSequence) -> dict:
    """Face and hand boxes of every frame, keyed by absolute frame (the `cointeract prepare` detections file)."""
    face, hands = {}, {}
    for k in range(len(seq.frames)):
        if (box := _box(seq.face_box[k])) is not None:
            face[str(k)] = box
        entry = {name: _box(b) for name, b in zip(("l_h", "r_h", "obj"), (*seq.hand_box[k], seq.obj_box[k]))}
        hands[str(k)] = {name: b for name, b in entry.items() if b is not None}
    return {"face": face, "hand_object": hands}


def _write_source(root: Path, name: str, seq: WorldSequence) -> dict:
    """Raw media of one long sequence as `cointeract prepare` takes it; returns its manifest entry."""
    cfg, ext = seq.config, lossless_video_suffix()
    product = ~((seq.hoi == 0).all(-1) | (seq.hoi == SILHOUETTE_COLOUR).all(-1))  # [T, H, W]
    body = seq.hoi.copy()
    body[product] = 0  # prepare puts the video's pixels under the object mask on top: the HOI frame again
    mask = np.repeat(product[..., None] * np.uint8(255), 3, axis=-1)
    entry = {"id": name, "prompt": seq.prompt(), "scale": 1.0, "person_image": "person.png"}
    for key, rel, frames in (
        ("video", "video", seq.frames),
        ("body_video", "body", body),
        ("object_mask", "mask", mask),
    ):
        entry[key] = f"raw/{name}_{rel}{ext}"
        write_lossless_video(root / entry[key], frames, cfg.fps)
    entry["audio"] = f"raw/{name}.wav"
    write_wav(root / entry["audio"], seq.audio, cfg.sample_rate)
    entry["product_image"] = f"raw/{name}_product.png"
    write_png(
        root / entry["product_image"],
        render_product(seq.kind, seq.size, PRODUCT_COLOURS[seq.colour], cfg.height, cfg.width),
    )
    entry["detections"] = f"raw/{name}_boxes.json"
    (root / entry["detections"]).write_text(json.dumps(_absolute_detections(seq)))
    return entry


def write_prepare_sources(
    root: str | os.PathLike, count: int, seconds: float = 10.0, cfg: WorldConfig | None = None, seed: int = 0
) -> Path:
    """Render `count` long sequences as raw sources (video, speech, boxes by absolute frame, body video and object
    mask for the HOI stream) plus a manifest for `cointeract prepare`; returns the manifest path."""
    cfg = cfg or WorldConfig()
    frames = int(round(seconds * cfg.fps))
    if count <= 0 or frames <= 0:
        raise ValueError(f"need a positive count and duration, got count={count}, seconds={seconds}")
    root = Path(root)
    (root / "raw").mkdir(parents=True, exist_ok=True)
    write_png(root / "person.png", person_image(cfg))
    sources = [
        _write_source(root, f"world_{i:04d}", generate_sequence(cfg, clip_seed(seed, i), frames)) for i in range(count)
    ]
    manifest = root / "manifest.json"
    manifest.write_text(json.dumps({"sources": sources}, indent=1))
    return manifest
