"""The toy world: a procedural presenter handling a product while speaking (the embedded default's data).

`generate_sequence` renders any number of frames of one presenter + product story (RGB frames, HOI stream,
16 kHz speech whose envelope drives the mouth, boxes, ground truth); `make_clip` cuts a training example
from it the way the real data is laid out (73 motion frames, then an 81-frame clip with its own audio and
prompt) and adds the person and product reference images. Everything is deterministic given the seed.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

from .audio import frame_envelope, synthesize_speech
from .render import Geometry, Raster, colourize, hoi_colourize, rasterize, render_product
from .script import ACTION_PHRASES, Track, rest_hands, script

__all__ = [
    "WorldConfig",
    "PRODUCT_COLOURS",
    "PRODUCT_SIZES",
    "WorldSequence",
    "WorldClip",
    "generate_sequence",
    "make_clip",
    "describe",
    "slice_sequence",
    "person_image",
]

PRODUCT_COLOURS = {
    "red": (225, 35, 35),
    "green": (70, 200, 40),
    "yellow": (240, 220, 30),
    "purple": (150, 60, 220),
    "orange": (250, 140, 20),
    "blue": (30, 50, 235),
}
PRODUCT_SIZES = {"box": (0.22, 0.19), "bottle": (0.12, 0.28), "ball": (0.19, 0.19), "can": (0.14, 0.21)}
_CHUNK = 128  # frames rasterised at once (bounds memory for long sequences)


@dataclass(frozen=True)
class WorldConfig:
    """Frame size, rates and clip layout of the toy world (defaults: the official 81 + 73 frames at 25 fps)."""

    height: int = 64
    width: int = 64
    fps: int = 25
    sample_rate: int = 16000
    clip_frames: int = 81
    motion_frames: int = 73
    product_size: float = 1.0  # multiplier on every product's size

    def __post_init__(self) -> None:
        if self.height < 32 or self.width < 32:
            raise ValueError(f"frames of {self.height}x{self.width} are too small to draw a face; use at least 32x32")
        if self.fps <= 0 or self.sample_rate <= 0 or self.sample_rate % self.fps:
            raise ValueError(f"sample_rate {self.sample_rate} must be a positive multiple of fps {self.fps}")
        if self.clip_frames <= 0 or (self.clip_frames - 1) % 4:
            raise ValueError(
                f"clip_frames must be 1 + 4k (Wan's causal time layout) and positive, got {self.clip_frames}"
            )
        if self.motion_frames < 0:
            raise ValueError(f"motion_frames must be >= 0, got {self.motion_frames}")
        largest = self.product_size * max(max(s) for s in PRODUCT_SIZES.values())
        if self.product_size <= 0 or largest > 0.45:
            raise ValueError(
                f"product_size {self.product_size} gives products {largest:.2f} of the frame's short side; they must "
                "fit between the presenter's hands (use a value in (0, 2])"
            )

    @property
    def samples_per_frame(self) -> int:
        return self.sample_rate // self.fps


@dataclass(frozen=True)
class WorldSequence:
    """T frames of one story: RGB and HOI frames [T, H, W, 3] uint8, audio [T·spf] float32, mouth envelope
    [T], hands on the grip points [T, 2], hand–product contact [T, 2], hidden hand fraction [T, 2], boxes
    (inclusive pixels, -1 when absent): face [T, 4], hands [T, 2, 4] (left, right), product [T, 4]."""

    config: WorldConfig
    seed: int
    kind: str
    colour: str
    size: tuple[float, float]
    frames: np.ndarray
    hoi: np.ndarray
    audio: np.ndarray
    envelope: np.ndarray
    grip: np.ndarray
    contact: np.ndarray
    hand_hidden: np.ndarray
    face_box: np.ndarray
    hand_box: np.ndarray
    obj_box: np.ndarray
    actions: list[tuple[str, int, int]] = field(default_factory=list)

    @property
    def rgb(self) -> tuple[int, int, int]:
        return PRODUCT_COLOURS[self.colour]

    def prompt(self, start: int = 0, end: int | None = None) -> str:
        """The prompt for frames [start, end): the product's colour and kind and the actions seen there."""
        return describe(self.actions, self.colour, self.kind, start, len(self.frames) if end is None else end)


@dataclass(frozen=True)
class WorldClip:
    """One training example: the clip's sequence slice, its motion history [M, H, W, 3], the prompt, the
    person reference (neutral pose, no product) and the product reference (alone on black), [H, W, 3]."""

    clip: WorldSequence
    motion: np.ndarray
    prompt: str
    person_image: np.ndarray
    product_image: np.ndarray


def describe(actions: list[tuple[str, int, int]], colour: str, kind: str, start: int, end: int) -> str:
    """'a person picks up a red bottle, then shows it while talking' for the actions overlapping [start, end)."""
    seen = [(min(e, end) - max(s, start), n) for n, s, e in actions if min(e, end) - max(s, start) > 0]
    keep = [n for overlap, n in seen if overlap >= 12] or [max(seen)[1]]
    names = [n for i, n in enumerate(keep) if i == 0 or n != keep[i - 1]][:3]
    phrases = [ACTION_PHRASES[n][0 if i == 0 else 1].format(np=f"a {colour} {kind}") for i, n in enumerate(names)]
    joined = ", then ".join(phrases)
    return f"a person {joined} while talking"


def _render(cfg: WorldConfig, geom: Geometry, product_over_hands: bool) -> list[Raster]:
    """Rasterise in chunks of frames (bounds memory for long sequences); returns the chunks' rasters."""
    out = []
    for i in range(0, len(geom.mouth), _CHUNK):
        window = slice(i, i + _CHUNK)
        part = replace(geom, centre=geom.centre[window], angle=geom.angle[window], hands=geom.hands[window],
                       mouth=geom.mouth[window])  # fmt: skip
        out.append(rasterize(part, cfg.height, cfg.width, product_over_hands=product_over_hands))
    return out


def _joined(rasters: list[Raster], name: str) -> np.ndarray:
    return np.concatenate([getattr(r, name) for r in rasters])


def generate_sequence(
    cfg: WorldConfig, seed: int, num_frames: int, *, product_over_hands: bool = False
) -> WorldSequence:
    """Render `num_frames` of a random story (product, actions, speech) chosen by `seed`.

    `product_over_hands` draws the product in front of the hands (a penetration artefact, for tests).
    """
    if num_frames <= 0:
        raise ValueError(f"num_frames must be positive, got {num_frames}")
    rng = np.random.default_rng(seed)
    kind = str(rng.choice(sorted(PRODUCT_SIZES)))
    colour = str(rng.choice(sorted(PRODUCT_COLOURS)))
    scale = cfg.product_size * rng.uniform(0.9, 1.1)
    size = (PRODUCT_SIZES[kind][0] * scale, PRODUCT_SIZES[kind][1] * scale)
    track: Track = script(rng, kind, size, num_frames)
    speech = synthesize_speech(rng, num_frames * cfg.samples_per_frame, cfg.sample_rate)
    envelope = frame_envelope(speech.envelope, cfg.samples_per_frame)
    geom = Geometry(kind, size, track.centre, track.angle, track.hands, envelope)
    rgb_parts = _render(cfg, geom, product_over_hands)
    return WorldSequence(
        config=cfg,
        seed=seed,
        kind=kind,
        colour=colour,
        size=size,
        frames=np.concatenate([colourize(r, PRODUCT_COLOURS[colour]) for r in rgb_parts]),
        hoi=np.concatenate([hoi_colourize(r, PRODUCT_COLOURS[colour]) for r in rgb_parts]),
        audio=speech.waveform,
        envelope=envelope.astype(np.float32),
        grip=np.repeat(track.grip[:, None], 2, 1),
        contact=_joined(rgb_parts, "contact"),
        hand_hidden=_joined(rgb_parts, "hand_hidden").astype(np.float32),
        face_box=_joined(rgb_parts, "face_box"),
        hand_box=_joined(rgb_parts, "hand_box"),
        obj_box=_joined(rgb_parts, "obj_box"),
        actions=track.actions,
    )


def slice_sequence(seq: WorldSequence, start: int, end: int) -> WorldSequence:
    """Frames [start, end) of a sequence, with its audio and action spans shifted to start at 0."""
    spf = seq.config.samples_per_frame
    arrays = {
        k: getattr(seq, k)[start:end]
        for k in ("frames", "hoi", "envelope", "grip", "contact", "hand_hidden", "face_box", "hand_box", "obj_box")
    }
    actions = [(n, max(s, start) - start, min(e, end) - start) for n, s, e in seq.actions if s < end and e > start]
    return WorldSequence(
        config=seq.config,
        seed=seq.seed,
        kind=seq.kind,
        colour=seq.colour,
        size=seq.size,
        audio=seq.audio[start * spf : end * spf],
        actions=actions,
        **arrays,
    )


def person_image(cfg: WorldConfig) -> np.ndarray:
    """The presenter in a neutral pose (hands on the table, mouth closed), no product: [H, W, 3] uint8."""
    hands = rest_hands()[None]
    geom = Geometry("ball", (0.1, 0.1), np.zeros((1, 2)), np.zeros(1), hands, np.zeros(1), show_product=False)
    return colourize(rasterize(geom, cfg.height, cfg.width), (0, 0, 0))[0]


def make_clip(cfg: WorldConfig, seed: int, *, product_over_hands: bool = False) -> WorldClip:
    """A training example: `motion_frames` of history, then `clip_frames` described by the prompt."""
    m = cfg.motion_frames
    seq = generate_sequence(cfg, seed, m + cfg.clip_frames, product_over_hands=product_over_hands)
    clip = slice_sequence(seq, m, m + cfg.clip_frames)
    return WorldClip(
        clip=clip,
        motion=seq.frames[:m],
        prompt=clip.prompt(),
        person_image=person_image(cfg),
        product_image=render_product(seq.kind, seq.size, PRODUCT_COLOURS[seq.colour], cfg.height, cfg.width),
    )
