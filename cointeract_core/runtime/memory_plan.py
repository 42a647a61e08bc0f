"""Memory planner: from free GPU memory, the token layout and the weight format, pick how many blocks to swap.

    device memory = weights outside the blocks + resident blocks + swap slots + activations + reserve

Weights are counted exactly from a meta-device model (fp8: FP8Linear layers as `quantize_model_fp8` makes them).
Activations follow the forward's live tensors at its peak, which is the RoPE of k in self-attention (B = 1, one
CFG branch at a time, bf16 compute, fp32 residual stream; flash / memory-efficient attention, so no S×S buffer):

    token embeddings kept by forward 4 + residual x 4 + modulated y 4 (fp32)
    + x in bf16 2 + q 2 + normed k 2 + rotated q/k 2 + k in float64 8 + its complex product 8   = 36 bytes·S·D
    + RoPE table 8·head_dim bytes per token + last audio residual 2·N_target·D + text 2·2·text_len·D
    + 2% for the small tensors (time embeddings, audio tokens, router logits)

Before the blocks, the wav2vec2 layer mix of the audio encoder holds 3 fp32 copies of the features (beside the
embedded tokens); at small token counts that is the peak.

`TensorMemoryTracker` measures the same quantity (peak bytes of live tensors) on any device, to check the model.
"""

from __future__ import annotations

import dataclasses
import functools
import weakref
from dataclasses import dataclass
from typing import Literal

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from ..model.attention import resolve_backend
from ..model.config import DiTConfig
from ..model.layout import SequenceLayout

__all__ = [
    "GiB",
    "Weights",
    "MemoryEstimate",
    "MemoryPlan",
    "MemoryPlanError",
    "video_layout",
    "weight_bytes",
    "activation_bytes",
    "estimate_memory",
    "plan_memory",
    "device_free_bytes",
    "TensorMemoryTracker",
]

GiB = 1 << 30
Weights = Literal["bf16", "fp8"]
BYTES_PER_TOKEN_DIM = 36  # see the module docstring
SMALL_TENSORS = 1.02
DEFAULT_RESERVE = GiB  # cuBLAS / attention workspaces, allocator fragmentation


def video_layout(
    height: int,
    width: int,
    frames: int = 81,
    *,
    product: bool = True,
    motion: bool = True,
    hoi: bool = False,
    vae_stride: int = 8,
    patch: tuple[int, int] = (2, 2),
) -> SequenceLayout:
    """The token layout of one clip: 81 frames -> 20 target latent frames (the pipeline keeps 80), latent = px/8."""
    if height % (vae_stride * patch[0]) or width % (vae_stride * patch[1]):
        raise ValueError(f"{height}x{width} is not a multiple of {vae_stride * patch[0]} pixels")
    return SequenceLayout(
        frames=(frames - 1) // 4,
        latent_hw=(height // vae_stride, width // vae_stride),
        patch_hw=patch,
        product=product,
        motion=motion,
        hoi=hoi,
    )


@dataclass(frozen=True)
class WeightBytes:
    """Bytes of the weights outside the blocks, of one block, and of the largest dequantised fp8 weight (bf16)."""

    other: int
    block: int
    num_blocks: int
    fp8_transient: int


@functools.lru_cache(maxsize=16)
def weight_bytes(cfg: DiTConfig, weights: Weights = "bf16") -> WeightBytes:
    """Exact weight bytes of `cfg` in bf16, or with the Linear layers fp8 (counted on a meta-device model)."""
    from ..model.dit import CoInteractDiT  # noqa: PLC0415 - model imports are heavy-ish; only the planner needs it
    from ..weights.fp8 import FP8Linear, quantize_model_fp8  # noqa: PLC0415 - only for the measured-weights path

    if weights not in ("bf16", "fp8"):
        raise ValueError(f"unknown weight format {weights!r}; choose 'bf16' or 'fp8'")
    with torch.device("meta"):
        model = CoInteractDiT(cfg).to(torch.bfloat16)
    if weights == "fp8":
        quantize_model_fp8(model)

    def size(module: torch.nn.Module) -> int:
        return sum(t.numel() * t.element_size() for t in [*module.parameters(), *module.buffers()])

    fp8_layers = [m for m in model.modules() if isinstance(m, FP8Linear)]
    transient = max((m.in_features * m.out_features * 2 for m in fp8_layers), default=0)
    return WeightBytes(size(model) - size(model.blocks), size(model.blocks[0]), len(model.blocks), transient)


def activation_bytes(cfg: DiTConfig, layout: SequenceLayout, ranks: int = 1) -> int:
    """Peak bytes of activations in one forward at batch 1 on one of `ranks` Ulysses ranks (see the docstring).

    Under sequence parallel (runtime/sequence_parallel.py) each rank embeds the whole sequence and its share is a
    view of it, so the token embeddings (4·S·D), the RoPE table, the text and the audio encoder are replicated;
    the other 32 bytes·S·D (a share's S/N tokens × D, or after the all-to-all all S tokens × D/N) and the audio
    residual divide by the ranks (the first S mod N ranks hold one token more)."""
    s, d = layout.total, cfg.dim
    share, target = -(-s // ranks), -(-layout.n_target // ranks)
    shared = 8 * cfg.head_dim * s + 4 * cfg.text_len * d  # RoPE table, text (and HOI text) embeddings
    blocks = 4 * s * d + (BYTES_PER_TOKEN_DIM - 4) * share * d + 2 * target * d + shared
    columns = 4 * layout.frames + cfg.motion_frames[0]  # audio features with the motion-prefix padding
    audio = 3 * cfg.audio_layers * cfg.audio_dim * columns * 4 + 4 * s * d + shared  # fp32 layer mix; embedded tokens
    return int(max(blocks, audio) * SMALL_TENSORS)


@dataclass(frozen=True)
class MemoryEstimate:
    """Device bytes of one configuration, by part."""

    n_swap: int
    slots: int
    other_weights: int
    resident_blocks: int
    slot_bytes: int
    activations: int
    reserve: int

    @property
    def total(self) -> int:
        return self.other_weights + self.resident_blocks + self.slot_bytes + self.activations + self.reserve

    def describe(self) -> str:
        """One line: total and parts in GiB."""
        parts = [
            ("weights outside blocks", self.other_weights),
            ("resident blocks", self.resident_blocks),
            (f"{self.slots} swap slots", self.slot_bytes),
            ("activations", self.activations),
            ("reserve", self.reserve),
        ]
        return f"{self.total / GiB:.2f} GiB = " + " + ".join(f"{n} {b / GiB:.2f}" for n, b in parts)


def estimate_memory(
    cfg: DiTConfig,
    layout: SequenceLayout,
    weights: Weights = "bf16",
    n_swap: int = 0,
    prefetch: int = 1,
    reserve_bytes: int = DEFAULT_RESERVE,
    _wb: WeightBytes | None = None,
) -> MemoryEstimate:
    """Device memory of running `layout` with `n_swap` swapped blocks and `prefetch + 1` slots."""
    wb = _wb or weight_bytes(cfg, weights)
    if not 0 <= n_swap <= wb.num_blocks:
        raise ValueError(f"cannot swap {n_swap} blocks: the model has {wb.num_blocks} (choose 0..{wb.num_blocks})")
    slots = min(prefetch + 1, n_swap)
    return MemoryEstimate(
        n_swap,
        slots,
        wb.other,
        (wb.num_blocks - n_swap) * wb.block,
        slots * wb.block,
        activation_bytes(cfg, layout) + wb.fp8_transient,
        reserve_bytes,
    )


@dataclass(frozen=True)
class MemoryPlan:
    """The fewest swapped blocks that fit: pass `n_swap` and `prefetch` to offload.install_block_swap."""

    n_swap: int
    prefetch: int
    weights: Weights
    tokens: int
    free_bytes: int
    estimate: MemoryEstimate


class MemoryPlanError(ValueError):
    """The request does not fit; the message gives the minimum memory and the settings that would fit."""


def _min_bytes(cfg, layout, weights, prefetch, reserve) -> int:
    wb = weight_bytes(cfg, weights)
    return estimate_memory(cfg, layout, weights, wb.num_blocks, prefetch, reserve, wb).total


def _max_tokens(cfg: DiTConfig, weights: Weights, prefetch: int, reserve: int, free: int) -> int:
    """Largest total token count whose fully swapped run fits in `free` (0 if none)."""
    wb = weight_bytes(cfg, weights)
    fixed = (
        wb.other + min(prefetch + 1, wb.num_blocks) * wb.block + wb.fp8_transient + reserve + 4 * cfg.text_len * cfg.dim
    )
    per_token = BYTES_PER_TOKEN_DIM * cfg.dim + 8 * cfg.head_dim + 2 * cfg.dim  # each token as a target token
    return max(0, int((free - fixed) / (per_token * SMALL_TENSORS)))


def _alternatives(cfg, layout, weights, prefetch, reserve, free) -> list[str]:
    options = []
    if weights == "bf16":
        options.append(("fp8 weights", layout, "fp8", prefetch))
    if layout.hoi:
        options.append(("HOI preview off", dataclasses.replace(layout, hoi=False), weights, prefetch))
    if prefetch > 0:
        options.append(("prefetch 0 (one swap slot, slower)", layout, weights, 0))
    if weights == "bf16" and layout.hoi:
        options.append(("fp8 weights and HOI preview off", dataclasses.replace(layout, hoi=False), "fp8", prefetch))
    found = []
    for label, lay, w, p in options:
        need = _min_bytes(cfg, lay, w, p, reserve)
        if need <= free:
            found.append(f"{label} (needs {need / GiB:.1f} GiB)")
    return found


def plan_memory(
    cfg: DiTConfig,
    layout: SequenceLayout,
    free_bytes: int,
    weights: Weights = "bf16",
    prefetch: int = 1,
    reserve_bytes: int = DEFAULT_RESERVE,
    attention_backend: str = "sdpa",
) -> MemoryPlan:
    """Fewest swapped blocks whose estimate fits `free_bytes`; raises MemoryPlanError saying what would fit."""
    resolve_backend(attention_backend)
    if prefetch < 0:
        raise ValueError(f"prefetch must be >= 0, got {prefetch}")
    wb = weight_bytes(cfg, weights)
    for n in range(wb.num_blocks + 1):
        est = estimate_memory(cfg, layout, weights, n, prefetch, reserve_bytes, wb)
        if est.total <= free_bytes:
            return MemoryPlan(n, prefetch, weights, layout.total, free_bytes, est)
    fits = _alternatives(cfg, layout, weights, prefetch, reserve_bytes, free_bytes)
    most = _max_tokens(cfg, weights, prefetch, reserve_bytes, free_bytes)
    raise MemoryPlanError(
        f"{layout.total:,} tokens with {weights} weights need at least {est.total / GiB:.1f} GiB with all "
        f"{wb.num_blocks} blocks swapped ({est.describe()}), but {free_bytes / GiB:.1f} GiB is free. "
        + (f"Settings that fit: {'; '.join(fits)}. " if fits else "")
        + (
            f"With these settings at most {most:,} tokens fit (a lower resolution or fewer frames)."
            if most
            else "Nothing fits: free GPU memory (close other programs) or use a larger GPU."
        )
    )


def device_free_bytes(device: torch.device | str) -> int:
    """Free bytes on a CUDA device, counting memory this process's allocator holds but does not use."""
    device = torch.device(device)
    if device.type != "cuda":
        raise ValueError(f"free memory is known for CUDA devices only, not {device}; pass free_bytes yourself")
    free, _ = torch.cuda.mem_get_info(device)
    return free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)


class TensorMemoryTracker(TorchDispatchMode):
    """Peak bytes of tensors allocated inside the `with` block and alive at the same time (any device).

    Counts each new storage once (views and in-place results are free); inputs created outside are not counted.
    """

    def __init__(self) -> None:
        super().__init__()
        self.refs: dict[int, int] = {}
        self.sizes: dict[int, int] = {}
        self.current = self.peak = 0

    def _drop(self, key: int) -> None:
        self.refs[key] -= 1
        if not self.refs[key]:
            self.current -= self.sizes.pop(key)
            del self.refs[key]

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = {
            t.untyped_storage().data_ptr() for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)
        }
        for t in tree_flatten(out)[0]:
            if not isinstance(t, torch.Tensor):
                continue
            key = t.untyped_storage().data_ptr()
            if key == 0 or (key in inputs and key not in self.refs):
                continue
            if key not in self.refs:
                self.refs[key], self.sizes[key] = 0, t.untyped_storage().nbytes()
                self.current += self.sizes[key]
                self.peak = max(self.peak, self.current)
            self.refs[key] += 1
            weakref.finalize(t, self._drop, key)
        return out
