"""Data for `cointeract demo`: toy-world clips in the official CSV layout, their latent cache, held-out inputs."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from ...cointeract_core.media.audio import write_wav
from ...cointeract_core.model.config import PRESETS, DiTConfig
from ...cointeract_core.toy import PCAToyCodec, ToyAudioFeatures, ToyCodec, ToyTextEncoder, fit_pca_codec
from ..cache import CachedDataset, build_cache
from ..data import RawClipDataset
from ..toyworld.dataset import clip_seed, write_world_dataset
from ..toyworld.files import write_png
from ..toyworld.render import render_product
from ..toyworld.world import PRODUCT_COLOURS, WorldConfig, WorldSequence, generate_sequence, person_image

__all__ = [
    "DEMO_PRODUCT_SIZE",
    "demo_world",
    "TOY_CHANNELS",
    "toy_config",
    "fit_toy_codec",
    "ToyEncoders",
    "toy_encoders",
    "write_clips",
    "cache_clips",
    "HeldOut",
    "held_out_inputs",
]


@dataclass(frozen=True)
class ToyEncoders:
    codec: ToyCodec | PCAToyCodec
    text: ToyTextEncoder
    audio: ToyAudioFeatures


# PCA channels of the demo's codec: 32 x 2x2 = 128 numbers per token for a 128-wide DiT
TOY_CHANNELS = PRESETS["toy"].in_dim


DEMO_PRODUCT_SIZE = 1.5  # products 12-27 px (default 8-18): several of the toy's 16-px tokens


def demo_world() -> WorldConfig:
    """The demo's toy world: the defaults (64x64, 25 fps, 81 + 73 frames) with products 1.5x the default size.

    At the default size a product (8-18 px) sits inside one or two 16-px tokens and is ~4% of the pixels; the
    demo's minutes of training then learn the presenter and leave the product as a smear of training colours.
    """
    return WorldConfig(product_size=DEMO_PRODUCT_SIZE)


def toy_config(channels: int = TOY_CHANNELS) -> DiTConfig:
    """The `toy` preset (32 PCA channels) with `channels` latent channels in, out and pose."""
    return dataclasses.replace(PRESETS["toy"], in_dim=channels, out_dim=channels, cond_dim=channels)


def fit_toy_codec(world: WorldConfig, seed: int, channels: int = TOY_CHANNELS, clips: int = 8) -> PCAToyCodec:
    """PCA codec fitted on `clips` rendered 81-frame stories (streams no training or held-out clip uses)."""
    videos = []
    for i in range(clips):
        frames = generate_sequence(world, clip_seed(seed, 10**6 + 1 + i), world.clip_frames).frames
        videos.append(torch.from_numpy(frames).float().permute(3, 0, 1, 2)[None] / 127.5 - 1)
    return fit_pca_codec(videos, channels)


def toy_encoders(cfg: DiTConfig, codec: ToyCodec | PCAToyCodec) -> ToyEncoders:
    """The codec and encoders that fit a toy DiT config (text width and length, audio feature width)."""
    if codec.latent_channels != cfg.in_dim:
        raise ValueError(f"the codec gives {codec.latent_channels} channels; the DiT takes {cfg.in_dim}")
    return ToyEncoders(codec, ToyTextEncoder(cfg.text_dim, cfg.text_len), ToyAudioFeatures(cfg.audio_dim))


def write_clips(root: Path, count: int, world: WorldConfig, seed: int, desc: str) -> Path:
    """Render `count` clips (streams clip_seed(seed, i)) into root in the official CSV layout -> data.csv."""
    return write_world_dataset(root, count, world, seed, progress=desc)


def cache_clips(
    csv_path: Path, out_dir: Path, world: WorldConfig, enc: ToyEncoders, patch: int, desc: str
) -> CachedDataset:
    """Encode every clip once (codec, text, audio; -23 LUFS as training does) -> the cache as a dataset."""
    dataset = RawClipDataset(
        csv_path, csv_path.parent, world.height, world.width, patch=enc.codec.spatial_factor * patch
    )
    rows = list(dataset.rows)
    for i in tqdm(range(len(rows)), desc=desc, unit="clip", dynamic_ncols=True):
        dataset.rows = rows[: i + 1]  # build_cache resumes: each call encodes the one new row
        build_cache(dataset, enc.codec, enc.text, enc.audio, out_dir, dtype=torch.bfloat16, dit_patch=patch)
    dataset.rows = rows
    return CachedDataset(out_dir)


@dataclass(frozen=True)
class HeldOut:
    """A held-out story to generate: reference images [H, W, 3] uint8, speech, one prompt per clip, the truth."""

    sequence: WorldSequence
    person: np.ndarray
    product: np.ndarray
    prompts: tuple[str, ...]


def held_out_inputs(world: WorldConfig, seed: int, clips: int, clip_frames: int = 80) -> HeldOut:
    """A story of clips × 80 frames from a seed no training clip uses, with its per-clip prompts."""
    seq = generate_sequence(world, clip_seed(seed, 10**6), clips * clip_frames)
    product = render_product(seq.kind, seq.size, PRODUCT_COLOURS[seq.colour], world.height, world.width)
    prompts = tuple(seq.prompt(r * clip_frames, (r + 1) * clip_frames) for r in range(clips))
    return HeldOut(seq, person_image(world), product, prompts)


def write_inputs(held: HeldOut, folder: Path) -> dict[str, str]:
    """person.png, product.png, speech.wav and prompts.txt (one per clip) -> their paths."""
    folder.mkdir(parents=True, exist_ok=True)
    write_png(folder / "person.png", held.person)
    write_png(folder / "product.png", held.product)
    write_wav(folder / "speech.wav", held.sequence.audio, held.sequence.config.sample_rate)
    (folder / "prompts.txt").write_text("\n".join(held.prompts) + "\n")
    return {n: str(folder / n) for n in ("person.png", "product.png", "speech.wav", "prompts.txt")}
