"""Fixtures for the training-data tests: a writer of tiny deterministic datasets (lossless FFV1 video, WAV, PNG)."""

from __future__ import annotations

import csv
import json
import wave
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

COLUMNS = (
    "prompt", "input_video", "motion_video", "audio", "person_image", "product_image", "scale",
    "hoi_video", "pose_video", "face", "hand_object", "height", "width",
)  # fmt: skip


def pattern(count: int, height: int, width: int, seed: int) -> np.ndarray:
    """uint8 [count, H, W, 3]: smooth per-pixel noise plus the frame index in channel 0 (frame order is visible)."""
    rng = np.random.RandomState(seed)
    base = rng.randint(0, 200, (height, width, 3)).astype(np.int64)
    t = np.arange(count)[:, None, None, None]
    frames = (base[None] + t * np.array([3, 1, 0])) % 256
    return frames.astype(np.uint8)


class DatasetKit:
    """Writes media and CSV rows under one root; every file name is unique per (name, kind)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)

    def video(self, rel: str, frames: np.ndarray, fps: float = 25.0) -> str:
        path = self.root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        rate = int(fps) if float(fps).is_integer() else Fraction(fps).limit_denominator(1001)
        with av.open(str(path), "w") as c:
            s = c.add_stream("ffv1", rate=rate)
            s.width, s.height, s.pix_fmt = frames.shape[2], frames.shape[1], "bgr0"
            for f in frames:
                c.mux(s.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(f), format="rgb24")))
            c.mux(s.encode())
        return rel

    def wav(self, rel: str, seconds: float, sample_rate: int = 16000, freq: float = 220.0) -> str:
        path = self.root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        n = int(round(seconds * sample_rate))
        t = np.arange(n) / sample_rate
        x = 0.3 * np.sin(2 * np.pi * freq * t) * (1 + 0.5 * np.sin(2 * np.pi * 3 * t))
        with wave.open(str(path), "wb") as f:
            f.setnchannels(1)
            f.setsampwidth(2)
            f.setframerate(sample_rate)
            f.writeframes(np.round(x * 32767).astype("<i2").tobytes())
        return rel

    def image(self, rel: str, array: np.ndarray) -> str:
        path = self.root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(array).save(path)
        return rel

    def row(
        self,
        name: str,
        *,
        size: tuple[int, int] = (32, 32),
        frames: int = 81,
        motion: bool = True,
        pose: bool = False,
        hoi: bool = False,
        product: bool = True,
        audio_seconds: float = 3.24,
        fps: float = 25.0,
        seed: int = 0,
        face: dict | None = None,
        hand: dict | None = None,
    ) -> dict[str, str]:
        """Write one clip's media and return its CSV row (paths relative to the root)."""
        h, w = size
        video = pattern(73 + frames, h, w, seed)
        r = {c: "" for c in COLUMNS}
        r["prompt"] = f"a person presents a product ({name})"
        r["input_video"] = self.video(f"{name}/input.mkv", video[73:], fps)
        if motion:
            r["motion_video"] = self.video(f"{name}/motion.mkv", video[:73], fps)
        r["audio"] = self.wav(f"{name}/audio.wav", audio_seconds, freq=200.0 + 10 * seed)
        r["person_image"] = self.image(f"{name}/person.png", pattern(1, h, w, seed + 100)[0])
        if product:
            r["product_image"] = self.image(f"{name}/product.png", pattern(1, h // 2, w, seed + 200)[0])
            r["scale"] = "1.0"
        if pose:
            r["pose_video"] = self.video(f"{name}/pose.mkv", pattern(frames, h, w, seed + 300), fps)
        if hoi:
            r["hoi_video"] = self.video(f"{name}/hoi.mkv", pattern(frames, h, w, seed + 400), fps)
        r["face"] = json.dumps(face if face is not None else {"frame_2": [8, 0, 15, 7]})
        r["hand_object"] = json.dumps(hand if hand is not None else {"frame_6": {"l_h": [0, 16, 7, 23], "r_h": None}})
        r["height"], r["width"] = str(h), str(w)
        return r

    def csv(self, rows: list[dict[str, str]], rel: str = "data.csv", columns=COLUMNS) -> Path:
        path = self.root / rel
        with open(path, "w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=list(columns), extrasaction="ignore")
            writer.writeheader()
            writer.writerows(rows)
        return path


@pytest.fixture
def kit(tmp_path: Path) -> DatasetKit:
    """A DatasetKit writing under a fresh `tmp_path / 'data'`."""
    return DatasetKit(tmp_path / "data")


@pytest.fixture(scope="session")
def kit_factory():
    """DatasetKit itself, for fixtures of a wider scope: kit_factory(root) -> DatasetKit."""
    return DatasetKit


@pytest.fixture
def frame_pattern():
    """The deterministic frame pattern the kit writes: pattern(count, H, W, seed) -> uint8 [count, H, W, 3]."""
    return pattern
