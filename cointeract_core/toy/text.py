"""A deterministic toy text encoder behind the TextEncoder protocol: fixed word vectors + position encoding.

Every word of the toy world's prompts (and of the official HOI prefix and negative prompt) has its own
vector drawn once from a seeded generator; other words share hashed buckets. A sinusoidal position code
is added, and an end-of-sequence token closes every prompt (as umT5's </s>), so "" encodes to one row.
"""

from __future__ import annotations

import math
import re
import zlib

import torch

__all__ = ["ToyTextEncoder", "TOY_VOCABULARY", "tokenize"]

_WORLD = (
    "a person picks up reaches for gestures next to on the table turns in both hands holds and shows it puts "
    "down then while talking red green yellow purple orange blue box bottle ball can"
)
# The official HOI prompt prefix and negative prompt (reference §1.9, §3.3), so the real strings embed too.
_HOI_PREFIX = (
    "a rendered video on a black background showing a 3d human body mesh interacting with an object . the scene "
    "features the human body represented as a polygonal mesh with visible surface geometry , alongside a 3d "
    "object . following is the rgb description :"
)
_NEGATIVE = (
    "blurry , worst quality , blurred details , static frame , violent emotions , rapid hand shaking , subtitles "
    ", ugly , deformed , extra fingers , poorly drawn hands , poorly drawn face"
)
TOY_VOCABULARY: tuple[str, ...] = tuple(dict.fromkeys(f"{_WORLD} {_HOI_PREFIX} {_NEGATIVE}".split()))
_TOKEN = re.compile(r"[a-z0-9]+|[^\sa-z0-9]")


def tokenize(prompt: str) -> list[str]:
    """Lower-cased words and single punctuation marks."""
    return _TOKEN.findall(prompt.lower())


class ToyTextEncoder:
    """Prompts -> [L, text_dim] float32: word vector (vocabulary or hashed bucket) + 0.5·position code."""

    def __init__(self, text_dim: int = 32, max_length: int = 96, buckets: int = 64, seed: int = 0) -> None:
        if text_dim < 2 or text_dim % 2:
            raise ValueError(f"text_dim must be an even number >= 2, got {text_dim}")
        if max_length < 1:
            raise ValueError(f"max_length must be >= 1, got {max_length}")
        self.text_dim, self.max_length, self.buckets, self.seed = text_dim, max_length, buckets, seed
        self.index = {word: i for i, word in enumerate(TOY_VOCABULARY)}
        gen = torch.Generator().manual_seed(seed)
        # rows: vocabulary, end-of-sequence, then the hash buckets for unknown words
        self.table = torch.randn(len(TOY_VOCABULARY) + 1 + buckets, text_dim, generator=gen)
        self.eos = len(TOY_VOCABULARY)
        pos = torch.arange(max_length, dtype=torch.float64)[:, None]
        freq = torch.exp(-math.log(10000.0) * torch.arange(0, text_dim, 2, dtype=torch.float64) / text_dim)
        self.positions = torch.cat([torch.sin(pos * freq), torch.cos(pos * freq)], dim=1).float()  # [max_length, D]

    def token_ids(self, prompt: str) -> list[int]:
        """Row ids of a prompt's tokens (+ end of sequence), cut to max_length."""
        ids = [self.index.get(w, self.eos + 1 + zlib.crc32(w.encode()) % self.buckets) for w in tokenize(prompt)]
        return (ids[: self.max_length - 1] + [self.eos])[: self.max_length]

    def encode(self, prompts: list[str]) -> list[torch.Tensor]:
        """Prompts -> embeddings [L_i, text_dim] (L_i = tokens + 1, at most max_length)."""
        if isinstance(prompts, str):
            raise TypeError("encode takes a list of prompts, not a single string; wrap it in a list")
        out = []
        for prompt in prompts:
            ids = torch.tensor(self.token_ids(prompt), dtype=torch.long)
            out.append(self.table[ids] + 0.5 * self.positions[: len(ids)])
        return out
