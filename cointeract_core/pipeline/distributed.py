"""`cointeract generate` / `batch` on several processes started by `torchrun` (or `python -m torch.distributed.run`).

The N·M processes form M sequence-parallel groups of N consecutive ranks (N = --sequence-parallel): each group
makes one video at a time with the DiT's tokens split over its N ranks (runtime/sequence_parallel.py); `batch`
shares the CSV rows out over the M groups. Encoders and the VAE run on every rank (the same numbers everywhere);
the first rank of a group writes the video and the sidecar, the others write nothing.

Errors. Until the models are loaded every rank reaches `agree`: if any failed, the lowest failing rank raises its
error (one message through the command's error boundary) and the others leave quietly (`ReportedElsewhere`).
A failure later on (out of memory while sampling) is reported by the rank it happens on; `torchrun` then stops
the others, which wait in a collective.
"""

from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import torch
import torch.distributed as dist

from ..errors import ReportedElsewhere, UserError

__all__ = ["Launch", "ONE_PROCESS", "add_args", "quiet_unless_first", "start", "prepare", "together", "agree", "finish"]
log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass(frozen=True)
class Launch:
    """This process's place in the launch: rank of `world`, its sequence-parallel group of `sequence_parallel`."""

    rank: int = 0
    world: int = 1
    sequence_parallel: int = 1
    group: dist.ProcessGroup | None = None  # the sequence-parallel group (None: one process)
    device: str = "cpu"

    @property
    def writes(self) -> bool:
        """The first rank of each sequence-parallel group writes its outputs."""
        return self.rank % self.sequence_parallel == 0

    @property
    def share(self) -> tuple[int, int]:
        """(index of this rank's group, number of groups): `batch` gives row i to group i mod groups."""
        return self.rank // self.sequence_parallel, self.world // self.sequence_parallel


ONE_PROCESS = Launch()


def add_args(p: argparse.ArgumentParser) -> None:
    """The --sequence-parallel option."""
    g = p.add_argument_group("several processes (under torchrun / python -m torch.distributed.run)")
    g.add_argument("--sequence-parallel", type=int, default=1, metavar="N",
                   help="split each video's DiT tokens over N processes (Ulysses; N divides the world size and the "
                   "DiT's heads); with more processes than N, `batch` shares rows out over the groups")  # fmt: skip


def quiet_unless_first(parser: argparse.ArgumentParser) -> None:
    """Under torchrun every rank parses the same arguments: only rank 0 prints a usage error (all exit 2)."""
    if int(os.environ.get("RANK", "0")) > 0:
        parser.error = lambda message: parser.exit(2)  # type: ignore[method-assign]


def start(sequence_parallel: int, device: str) -> Launch:
    """Join the launch torchrun started (a 1-process Launch without it); NCCL on CUDA (one GPU a local rank), gloo
    on the CPU. Raises UserError when --sequence-parallel does not fit the number of processes."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if sequence_parallel < 1 or world % sequence_parallel:
        how = f"{world} processes" if world > 1 else "1 process (start N with torchrun --nproc-per-node N)"
        raise UserError(f"--sequence-parallel {sequence_parallel} must divide the number of processes; this is {how}")
    if world == 1:
        return Launch(device=device)  # one process: nothing to join
    if torch.device(device).type == "cuda":
        device = f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
    rank = dist.get_rank()
    groups = [dist.new_group(list(range(g, g + sequence_parallel))) for g in range(0, world, sequence_parallel)]
    launch = Launch(rank, world, sequence_parallel, groups[rank // sequence_parallel], device)
    if not launch.writes:
        logging.getLogger().setLevel(logging.WARNING)  # one log, from the ranks that write
    return launch


def prepare(launch: Launch, setup: Callable[[], T]) -> T:
    """Every rank: `setup()` (checks, model loading; may give None), then the DiT of what it gives (`.model`) split
    over the rank's sequence-parallel group; a failure on any rank is reported once (`together`)."""

    def run() -> T:
        engines = setup()
        if engines is not None and launch.sequence_parallel > 1:
            from ..runtime.sequence_parallel import enable_sequence_parallel  # noqa: PLC0415 - only when used

            enable_sequence_parallel(engines.model, launch.group)
        return engines

    return together(launch, run)


def together(launch: Launch, fn: Callable[[], T], group_only: bool = False) -> T:
    """fn() on every rank (of the world, or of this rank's sequence-parallel group when `group_only`); an error on
    any of them is raised by the lowest failing rank and ends the others quietly (ReportedElsewhere)."""
    err, result = None, None
    try:
        result = fn()
    except Exception as caught:  # noqa: BLE001 - raised again by agree on this rank
        err = caught
    agree(launch, err, launch.group if group_only else None)
    return result


def agree(launch: Launch, err: BaseException | None, group: dist.ProcessGroup | None = None) -> None:
    """Every rank of `group` (None: all) calls this: returns when none failed; else raises `err` on the lowest
    failing rank and ReportedElsewhere on the others."""
    if launch.world == 1:
        if err is not None:
            raise err
        return
    first = torch.tensor([launch.rank if err is not None else launch.world], device=launch.device)
    dist.all_reduce(first, op=dist.ReduceOp.MIN, group=group)
    failed = int(first.item())
    if failed == launch.world:
        return
    if err is not None and launch.rank == failed:
        raise err
    raise ReportedElsewhere(f"rank {failed} failed and reports why")


def finish(launch: Launch) -> None:
    """Wait for every rank, then leave the process group."""
    if launch.world > 1:
        dist.barrier()
        dist.destroy_process_group()
