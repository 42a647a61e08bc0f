"""Ulysses sequence parallel for the DiT forward on torch.distributed (NCCL on GPUs, gloo on CPUs).

Each of N processes holds a contiguous share of the token sequence (uneven when N does not divide it: the first
S mod N processes hold one token more; nothing is padded). Around every self-attention one all-to-all gives each
process all S tokens of H/N heads and a second one gives them back, so the grouped asymmetric attention calls,
the HOI stream and the per-group RoPE run on whole sequences exactly as in one process; the heads' outputs are
gathered at the end. The hook in the model is `CoInteractDiT.sequence_parallel` (model/shard.py).

Why torch's collectives and not yunchang / xfuser (both install from PyPI): yunchang's all-to-all
(`all_to_all_4D`) needs S divisible by N and its attention layer makes one attention call over (q, k, v), while we
make one call per visibility group over a subset of the keys; xfuser wraps diffusers pipelines and brings
diffusers / transformers / accelerate / flash-attn machinery our model does not use. The whole exchange is two
`all_to_all_single` calls with uneven splits (below), which both NCCL and gloo support.
Inference only: the collectives are not differentiable (training shards weights with FSDP instead).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

log = logging.getLogger(__name__)

__all__ = ["token_splits", "UlyssesShard", "Ulysses", "enable_sequence_parallel"]


def token_splits(total: int, world: int) -> tuple[int, ...]:
    """Tokens per process: as even as possible, the first total mod world processes one more."""
    base, extra = divmod(total, world)
    return tuple(base + (r < extra) for r in range(world))


@dataclass(frozen=True)
class UlyssesShard:
    """This process's tokens [start, stop) of a `sum(sizes)`-token sequence, and the collectives over the group."""

    rank: int
    sizes: tuple[int, ...]  # tokens held by each process of the group, in rank order
    group: dist.ProcessGroup | None = None

    @property
    def start(self) -> int:
        return sum(self.sizes[: self.rank])

    @property
    def stop(self) -> int:
        return self.start + self.sizes[self.rank]

    def to_heads(self, xs: list[torch.Tensor]) -> list[torch.Tensor]:
        """Each [B, s, H, d] (local tokens, all heads) -> [B, S, H/N, d] (all tokens, heads of this rank)."""
        n, s = len(self.sizes), self.sizes[self.rank]
        x = torch.stack(xs)  # [K, B, s, H, d]
        k, b, _, h, d = x.shape
        send = x.view(k, b, s, n, h // n, d).permute(3, 2, 0, 1, 4, 5).contiguous()  # [N, s, K, B, H/N, d]
        recv = x.new_empty(sum(self.sizes), k, b, h // n, d)
        dist.all_to_all_single(recv, send.view(n * s, k, b, h // n, d), list(self.sizes), [s] * n, group=self.group)
        return list(recv.permute(1, 2, 0, 3, 4).unbind(0))  # K × [B, S, H/N, d]

    def to_tokens(self, x: torch.Tensor) -> torch.Tensor:
        """[B, S, H/N, d] -> [B, s, H, d]: the inverse of `to_heads`."""
        n, s = len(self.sizes), self.sizes[self.rank]
        b, _, hn, d = x.shape
        recv = x.new_empty(n * s, b, hn, d)
        send = x.permute(1, 0, 2, 3).contiguous()  # [S, B, H/N, d]
        dist.all_to_all_single(recv, send, [s] * n, list(self.sizes), group=self.group)
        return recv.view(n, s, b, hn, d).permute(2, 1, 0, 3, 4).reshape(b, s, n * hn, d)

    def gather(self, x: torch.Tensor, lo: int, hi: int, dim: int = 1) -> torch.Tensor:
        """The local part of tokens [lo, hi) along `dim` -> all hi-lo of them, in order, on every process."""
        starts = [sum(self.sizes[:r]) for r in range(len(self.sizes))]
        pieces = [max(0, min(hi, a + n) - max(lo, a)) for a, n in zip(starts, self.sizes)]
        pad = [0, 0] * (x.dim() - 1 - dim % x.dim()) + [0, max(pieces) - x.shape[dim]]
        padded = F.pad(x, pad).contiguous()  # all_gather needs equal shapes
        parts = [torch.empty_like(padded) for _ in pieces]
        dist.all_gather(parts, padded, group=self.group)
        return torch.cat([p.narrow(dim, 0, m) for p, m in zip(parts, pieces)], dim=dim)


@dataclass(frozen=True)
class Ulysses:
    """`SequenceParallel` over a process group (None: the default group): makes the shard of each forward."""

    group: dist.ProcessGroup | None = None

    def shard(self, total: int) -> UlyssesShard:
        """total tokens -> this process's UlyssesShard."""
        world = dist.get_world_size(self.group)
        return UlyssesShard(dist.get_rank(self.group), token_splits(total, world), self.group)


def enable_sequence_parallel(model: nn.Module, group: dist.ProcessGroup | None = None) -> Ulysses:
    """Run `model` (a CoInteractDiT) sequence parallel over `group`; ValueError when N does not divide the heads."""
    world = dist.get_world_size(group)
    heads = model.cfg.num_heads
    if heads % world:
        divisors = [n for n in range(1, heads + 1) if heads % n == 0]
        raise ValueError(f"--sequence-parallel {world}: the DiT has {heads} heads; use a divisor of it: {divisors}")
    model.sequence_parallel = Ulysses(group)
    log.info("DiT sequence parallel (Ulysses) over %d processes", world)
    return model.sequence_parallel
