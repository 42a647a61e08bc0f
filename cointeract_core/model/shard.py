"""The optional hook of sequence parallelism: which tokens this process holds, and the exchanges it needs.

`CoInteractDiT.sequence_parallel` is None for one process (the default path, untouched). When set (see
`runtime/sequence_parallel.py`), every process embeds the whole sequence, keeps the contiguous token range
[start, stop), runs the token-wise parts (modulation, FFN / MoE, cross-attention, audio injection, the heads) on
it, and around each self-attention exchanges tokens for heads (Ulysses), so the grouped attention calls of
`visibility.py`, the HOI stream and RoPE see whole sequences, unchanged.
"""

from __future__ import annotations

from typing import NamedTuple, Protocol

import torch

__all__ = ["SequenceShard", "SequenceParallel", "LocalCounts", "held", "local_counts"]


class SequenceShard(Protocol):
    """This process's share of one forward's token sequence, and the collectives over all shares."""

    start: int  # first token of the whole sequence held here
    stop: int  # one past the last

    def to_heads(self, xs: list[torch.Tensor]) -> list[torch.Tensor]:
        """Each [B, stop-start, H, d] (local tokens, all heads) -> [B, S, H/N, d] (all tokens, local heads)."""

    def to_tokens(self, x: torch.Tensor) -> torch.Tensor:
        """[B, S, H/N, d] -> [B, stop-start, H, d]: the inverse of `to_heads`."""

    def gather(self, x: torch.Tensor, lo: int, hi: int, dim: int = 1) -> torch.Tensor:
        """The local part of tokens [lo, hi) (size `held(lo, hi)` along `dim`) -> all of them, hi-lo along `dim`."""


class SequenceParallel(Protocol):
    """Makes the shard of a sequence of `total` tokens (the layout differs per call)."""

    def shard(self, total: int) -> SequenceShard:
        """total tokens -> this process's SequenceShard."""


class LocalCounts(NamedTuple):
    """Token counts held here: target tokens, main tokens (target first), all tokens (main, then HOI)."""

    n_target: int
    n_main: int
    total: int


def held(shard: SequenceShard, lo: int, hi: int) -> tuple[int, int]:
    """[lo, hi) of the whole sequence ∩ this shard, as a local (start, stop); empty ranges give start == stop."""
    start, stop = max(lo, shard.start), min(hi, shard.stop)
    start = min(start, shard.stop)
    return start - shard.start, max(start, stop) - shard.start


def local_counts(n_target: int, n_main: int, total: int, shard: SequenceShard | None) -> LocalCounts:
    """The segment boundaries of the tokens held here (all of them when `shard` is None)."""
    if shard is None:
        return LocalCounts(n_target, n_main, total)
    return LocalCounts(held(shard, 0, n_target)[1], held(shard, 0, n_main)[1], shard.stop - shard.start)
