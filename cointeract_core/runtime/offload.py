"""Block swapping with prefetch: some DiT blocks keep their weights in (pinned) host memory and stream into a few
device slots just before they run, on a side CUDA stream, while the blocks before them compute.

    install_block_swap(model, "cuda", n_swap=20)   # the other blocks and all non-block weights move to the GPU
    model(...)                                       # forward pre/post hooks do the swapping; model.py is unchanged

The scheduling (which block sits in which slot, what is prefetched, when a slot may be overwritten) lives in
`BlockSwapper` and talks to a `Transport`; `CudaTransport` does pinned copies on a side stream ordered by CUDA
events, `SyncTransport` does plain copies (CPU, tests, any device without streams). Inference only: autograd
would keep references to slots that are overwritten, so a forward with grad enabled raises.
"""

from __future__ import annotations

import dataclasses
import logging
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from torch import nn

__all__ = [
    "Transport",
    "SyncTransport",
    "CudaTransport",
    "BlockSwapper",
    "BlockSwap",
    "swapped_indices",
    "install_block_swap",
    "conditioning_to",
    "set_vae_tiling",
]
log = logging.getLogger(__name__)


class Transport(Protocol):
    """How block weights move between host copies and device slots. Tokens are opaque (CUDA events or None)."""

    device: torch.device

    def host_copy(self, t: torch.Tensor) -> torch.Tensor:
        """The host-resident copy a swapped weight lives in."""
        ...

    def new_slot(self, like: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """Device buffers shaped like one block's tensors."""
        ...

    def load(self, slot: Sequence[torch.Tensor], host: Sequence[torch.Tensor], after: Any) -> Any:
        """Start copying host -> slot once token `after` (the slot's last use) is done; returns a ready token."""
        ...

    def wait(self, ready: Any) -> None:
        """Make the compute stream wait for a load."""
        ...

    def release(self) -> Any:
        """A token marking that the compute stream is done with the slot it just used."""
        ...


class SyncTransport:
    """Synchronous copies on the current stream: no overlap, but the same scheduling (CPU, tests, fallback)."""

    def __init__(self, device: torch.device | str = "cpu") -> None:
        self.device = torch.device(device)

    def host_copy(self, t: torch.Tensor) -> torch.Tensor:
        return t.detach().to("cpu", copy=True)

    def new_slot(self, like: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        return [torch.empty_like(t, device=self.device) for t in like]

    def load(self, slot: Sequence[torch.Tensor], host: Sequence[torch.Tensor], after: Any) -> Any:
        for dst, src in zip(slot, host):
            dst.copy_(src)
        return None

    def wait(self, ready: Any) -> None:
        return None

    def release(self) -> Any:
        return None


class CudaTransport:
    """Pinned host copies, non-blocking copies on a side stream, CUDA events between the streams."""

    def __init__(self, device: torch.device | str = "cuda") -> None:
        self.device = torch.device(device)
        if self.device.type != "cuda" or not torch.cuda.is_available():
            raise ValueError(f"CudaTransport needs a CUDA device; got {self.device} (use SyncTransport)")
        self.stream = torch.cuda.Stream(self.device)

    def host_copy(self, t: torch.Tensor) -> torch.Tensor:
        return t.detach().to("cpu").pin_memory()

    def new_slot(self, like: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        return [torch.empty_like(t, device=self.device) for t in like]

    def load(self, slot: Sequence[torch.Tensor], host: Sequence[torch.Tensor], after: Any) -> Any:
        with torch.cuda.stream(self.stream):
            if after is not None:
                self.stream.wait_event(after)
            for dst, src in zip(slot, host):
                dst.copy_(src, non_blocking=True)
            ready = torch.cuda.Event()
            ready.record(self.stream)
        return ready

    def wait(self, ready: Any) -> None:
        if ready is not None:
            torch.cuda.current_stream(self.device).wait_event(ready)

    def release(self) -> Any:
        done = torch.cuda.Event()
        done.record(torch.cuda.current_stream(self.device))
        return done


def _block_tensors(block: nn.Module) -> list[torch.Tensor]:
    """Every parameter and buffer of a block, in a fixed order (the identities the swapper re-points)."""
    return [t for _, t in sorted([*block.named_parameters(), *block.named_buffers()], key=lambda kv: kv[0])]


def _signature(block: nn.Module) -> list[tuple[str, tuple[int, ...], torch.dtype]]:
    return sorted((n, tuple(t.shape), t.dtype) for n, t in [*block.named_parameters(), *block.named_buffers()])


@dataclass
class SwapStats:
    """Counters of one swapper: loads issued, loads found prefetched, loads started on demand (misses)."""

    loads: int = 0
    prefetched: int = 0
    on_demand: int = 0


@dataclass
class BlockSwapper:
    """Scheduling of swapped blocks over a ring of `prefetch + 1` device slots.

    Blocks run in index order, forward after forward; after block i is set up, the next `prefetch` swapped blocks
    (cyclically, so the next forward's first one too) are loaded into free slots. A slot is overwritten only after
    the release token of its previous user. A call out of the expected order drops the prefetched loads and loads
    on demand, so an interrupted forward cannot leave a wrong block in place.
    """

    blocks: Sequence[nn.Module]
    swapped: Sequence[int]
    transport: Transport
    prefetch: int = 1
    stats: SwapStats = field(default_factory=SwapStats)

    def __post_init__(self) -> None:
        n = len(self.blocks)
        bad = [i for i in self.swapped if not 0 <= i < n]
        if bad or len(set(self.swapped)) != len(self.swapped):
            raise ValueError(f"swapped block indices {list(self.swapped)} must be distinct and in [0, {n})")
        if self.prefetch < 0:
            raise ValueError(f"prefetch must be >= 0, got {self.prefetch}")
        self.order = sorted(self.swapped)
        self.tensors: dict[int, list[torch.Tensor]] = {}
        self.host: dict[int, list[torch.Tensor]] = {}
        self.slots: list[list[torch.Tensor]] = []
        self.slot_free: list[Any] = []
        self.pending: deque[tuple[int, int, Any]] = deque()  # (block, slot, ready token), in use order
        self.active: tuple[int, int] | None = None  # (block, slot) between before() and after()
        self.next_slot = 0
        if not self.order:
            return
        sig = _signature(self.blocks[self.order[0]])
        odd = [i for i in self.order if _signature(self.blocks[i]) != sig]
        if odd:
            raise ValueError(
                f"blocks {odd} differ in parameter shapes/dtypes from block {self.order[0]}; cannot share slots"
            )
        for i in self.order:
            self.tensors[i] = _block_tensors(self.blocks[i])
            self.host[i] = [self.transport.host_copy(t) for t in self.tensors[i]]
            self._point(i, self.host[i])
        n_slots = min(self.prefetch + 1, len(self.order))
        self.slots = [self.transport.new_slot(self.host[self.order[0]]) for _ in range(n_slots)]
        self.slot_free = [None] * n_slots

    def _point(self, i: int, storage: Sequence[torch.Tensor]) -> None:
        for t, s in zip(self.tensors[i], storage):
            t.data = s

    def _issue(self, i: int) -> None:
        slot = self.next_slot
        self.next_slot = (slot + 1) % len(self.slots)
        ready = self.transport.load(self.slots[slot], self.host[i], self.slot_free[slot])
        self.pending.append((i, slot, ready))
        self.stats.loads += 1

    def _following(self, i: int) -> int:
        return self.order[(self.order.index(i) + 1) % len(self.order)]

    def before(self, i: int) -> None:
        """Called before block i runs: its weights are in a slot when this returns (on the compute stream)."""
        if i not in self.tensors:
            return
        if torch.is_grad_enabled():
            raise RuntimeError("block swapping is for inference: run the model under torch.no_grad() or inference_mode")
        if self.active is not None:  # the previous forward stopped inside a swapped block
            self.after(self.active[0])
        if self.pending and self.pending[0][0] == i:
            self.stats.prefetched += 1
        else:
            for _, slot, ready in self.pending:  # not what we prefetched: the slots are free once those copies end
                self.slot_free[slot] = ready
            self.pending.clear()
            self._issue(i)
            self.stats.on_demand += 1
        _, slot, ready = self.pending.popleft()
        self.transport.wait(ready)
        self._point(i, self.slots[slot])
        self.active = (i, slot)
        last = self.pending[-1][0] if self.pending else i
        while len(self.pending) < len(self.slots) - 1:
            last = self._following(last)
            self._issue(last)

    def after(self, i: int) -> None:
        """Called after block i ran: its slot may be refilled once the compute stream is past this point."""
        if self.active is None or self.active[0] != i:
            return
        slot = self.active[1]
        self.slot_free[slot] = self.transport.release()
        self._point(i, self.host[i])
        self.active = None

    def reset(self) -> None:
        """Forget prefetched loads and put every block back on its host copy."""
        if self.active is not None:
            self.after(self.active[0])
        for _, slot, ready in self.pending:
            self.slot_free[slot] = ready
        self.pending.clear()


def swapped_indices(num_blocks: int, n_swap: int) -> list[int]:
    """Which blocks to swap: `n_swap` of `num_blocks` spread evenly, so resident blocks' compute hides the copies."""
    if not 0 <= n_swap <= num_blocks:
        raise ValueError(f"cannot swap {n_swap} blocks: the model has {num_blocks} (choose 0..{num_blocks})")
    return sorted({int((k + 0.5) * num_blocks / n_swap) for k in range(n_swap)}) if n_swap else []


@dataclass
class BlockSwap:
    """An installed block swap: the swapper plus its hook handles. `remove(device)` undoes it."""

    model: nn.Module
    swapper: BlockSwapper
    handles: list = field(default_factory=list)

    def remove(self, device: torch.device | str | None = None) -> None:
        """Remove the hooks; swapped blocks stay on their host copies, or move to `device` when given."""
        self.swapper.reset()
        for h in self.handles:
            h.remove()
        self.handles.clear()
        self.model._block_swap = None
        if device is not None:
            for i in self.swapper.order:
                self.swapper.blocks[i].to(device)


def install_block_swap(
    model: nn.Module,
    device: torch.device | str,
    n_swap: int,
    prefetch: int = 1,
    transport: Transport | None = None,
) -> BlockSwap:
    """Put `model` on `device` except `n_swap` of its `blocks`, which stream in through forward hooks (see module doc).

    The transport defaults to CudaTransport on CUDA and SyncTransport elsewhere. Raises before moving anything
    when `n_swap` exceeds the block count or the device is unusable.
    """
    device = torch.device(device)
    blocks = model.blocks
    swapped = swapped_indices(len(blocks), n_swap)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"block swap to {device} asked but torch sees no CUDA device")
    if transport is None:
        transport = CudaTransport(device) if device.type == "cuda" else SyncTransport(device)
    if getattr(model, "_block_swap", None) is not None:
        raise ValueError("block swapping is already installed on this model; call .remove() on it first")
    swapped_ids = {id(t) for i in swapped for t in _block_tensors(blocks[i])}
    with torch.no_grad():
        for t in [*model.parameters(), *model.buffers()]:
            if id(t) not in swapped_ids:
                t.data = t.data.to(device)
    swapper = BlockSwapper(blocks, swapped, transport, prefetch)
    swap = BlockSwap(model, swapper)
    model._block_swap = swap  # set up once here, never in forward; lets a second install fail clearly
    for i in swapped:
        swap.handles.append(blocks[i].register_forward_pre_hook(lambda m, args, i=i: swapper.before(i)))
        swap.handles.append(blocks[i].register_forward_hook(lambda m, args, out, i=i: swapper.after(i)))
    log.info(
        "block swap: %d of %d blocks stream to %s (%d slots)",
        len(swapped),
        len(blocks),
        device,
        len(swapper.slots) if swapped else 0,
    )
    return swap


def conditioning_to(cond: Any, device: torch.device | str) -> Any:
    """A frozen dataclass (e.g. Conditioning) with every tensor, also inside tuples, moved to `device`."""

    def move(v: Any) -> Any:
        if isinstance(v, torch.Tensor):
            return v.to(device)
        if isinstance(v, tuple):
            return tuple(move(x) for x in v)
        return v

    return dataclasses.replace(cond, **{f.name: move(getattr(cond, f.name)) for f in dataclasses.fields(cond)})


def set_vae_tiling(vae: Any, tiling: Any | None) -> None:
    """Tiled decode through the VAE's optional `set_tiling(tiling)` (WanVAE: an encoders.Tiling; None turns it off).

    Raises for a VAE without the method instead of silently decoding whole frames.
    """
    setter = getattr(vae, "set_tiling", None)
    if not callable(setter):
        raise ValueError(f"{type(vae).__name__} has no tiled decode (no set_tiling method); turn VAE tiling off")
    setter(tiling)
