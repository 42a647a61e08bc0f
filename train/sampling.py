"""Which samples a step reads and the randomness each one gets, independent of how many processes run.

The sample order is a fixed stream (one seeded permutation per epoch, or the identity); optimizer step s reads
stream positions s·G .. s·G+G−1 (G = processes × gradient accumulation × batch). Global slot
j = (micro_step·world + rank)·batch + b gets `sample_generator(seed, s, j)` for its dropout coins, timestep and
noise. So a resumed run repeats an uninterrupted one exactly, and N processes see the same samples and noise as
one process with N-fold gradient accumulation.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Sampler

from .config import TrainConfig
from .sample import TrainSample

__all__ = ["sample_generator", "seeded_generator", "StepIndices", "step_loader", "global_slot"]


def global_slot(micro_step: int, world: int, rank: int, batch: int, b: int) -> int:
    """Global slot of sample b of this process's micro-step within an optimizer step."""
    return (micro_step * world + rank) * batch + b


def seeded_generator(*entropy: int) -> torch.Generator:
    """A CPU generator seeded from a tuple of non-negative ints (numpy SeedSequence mixing)."""
    words = np.random.SeedSequence(list(entropy)).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed(int(words[0]) << 32 | int(words[1]))


def sample_generator(seed: int, step: int, slot: int) -> torch.Generator:
    """The generator of global sample slot `slot` at optimizer step `step` (independent of process layout)."""
    return seeded_generator(seed, 0, step, slot)


class StepIndices(Sampler):
    """Dataset indices of this process for each optimizer step from `start`: the step's slice of a fixed stream.

    Global slot j = (micro_step·world + rank)·batch + b of step s reads stream position s·G + j (G = global batch);
    the stream is one permutation per epoch (seeded) or the identity.
    """

    def __init__(self, n: int, cfg: TrainConfig, world: int, rank: int, start: int) -> None:
        self.n, self.seed, self.shuffle = n, cfg.runtime.seed, cfg.data.shuffle
        self.world, self.rank, self.start, self.total = world, rank, start, cfg.total_steps
        self.batch, self.accum = cfg.data.batch_size, cfg.optim.gradient_accumulation_steps
        self._perm: tuple[int, torch.Tensor] | None = None

    def __len__(self) -> int:
        return self.total - self.start

    def index(self, position: int) -> int:
        epoch, offset = divmod(position, self.n)
        if not self.shuffle:
            return offset
        if self._perm is None or self._perm[0] != epoch:
            self._perm = (epoch, torch.randperm(self.n, generator=seeded_generator(self.seed, 1, epoch)))
        return int(self._perm[1][offset])

    def __iter__(self):
        g = self.world * self.accum * self.batch
        for step in range(self.start, self.total):
            slots = [
                global_slot(m, self.world, self.rank, self.batch, b)
                for m in range(self.accum)
                for b in range(self.batch)
            ]
            yield [self.index(step * g + j) for j in slots]


def _as_list(samples: list) -> list:
    return samples


def step_loader(dataset: Sequence[TrainSample], cfg: TrainConfig, world: int, rank: int, start: int) -> DataLoader:
    """Yields, per optimizer step from `start`, this process's samples (accumulation × batch TrainSamples)."""
    sampler = StepIndices(len(dataset), cfg, world, rank, start)
    return DataLoader(dataset, batch_sampler=sampler, collate_fn=_as_list, num_workers=cfg.data.num_workers)
