"""Per-rank memory and communication of the 14B model at 480p / 720p (81 frames, product + motion) over 1-8 ranks.

Everything comes from the memory planner (cointeract_core/runtime/memory_plan.py) and the token layout; nothing is
measured. Columns:
- activations: `activation_bytes(cfg, layout, ranks)`, the peak of one forward at batch 1 on one Ulysses rank
  (embeddings, RoPE table, text and audio encoder replicated on every rank; the rest divided by the ranks);
- weights (SP): Ulysses inference replicates the whole model on every rank (`weight_bytes`, bf16 and fp8);
- weights (FSDP2): training shards the bf16 model over the ranks; a rank also holds the gathered block being run
  and the one prefetched (2 blocks);
- all-to-all: per forward each rank sends 4 tensors (q, k, v, attention output) of (S/N)·D bf16 values,
  (N-1)/N of them to other ranks, in every block (CFG doubles it per sampling step).

usage: python bench/multi_gpu_memory.py
"""

from __future__ import annotations

from comfyui_cointeract.cointeract_core.model.config import PRESETS
from comfyui_cointeract.cointeract_core.runtime.memory_plan import GiB, activation_bytes, video_layout, weight_bytes

RANKS = (1, 2, 4, 8)
SIZES = {"480p": (480, 832), "720p": (720, 1280)}


def all_to_all_bytes(tokens: int, dim: int, blocks: int, ranks: int) -> float:
    """Bytes one rank sends to other ranks per DiT forward (bf16 q, k, v and attention output, every block)."""
    return 4 * (tokens / ranks) * dim * (ranks - 1) / ranks * blocks * 2


def rows(preset: str = "14B_cointeract") -> list[tuple[str, int, int, float, float, float, float, float]]:
    """(size, tokens, ranks, activations, weights bf16, weights fp8, FSDP2 weights, all-to-all) in GiB."""
    cfg = PRESETS[preset]
    bf16, fp8 = weight_bytes(cfg, "bf16"), weight_bytes(cfg, "fp8")
    full = {w: wb.other + wb.num_blocks * wb.block for w, wb in (("bf16", bf16), ("fp8", fp8))}
    out = []
    for name, (h, w) in SIZES.items():
        layout = video_layout(h, w)
        for n in RANKS:
            fsdp = full["bf16"] / n + (2 * bf16.block if n > 1 else 0)
            out.append(
                (
                    name,
                    layout.total,
                    n,
                    activation_bytes(cfg, layout, n) / GiB,
                    full["bf16"] / GiB,
                    full["fp8"] / GiB,
                    fsdp / GiB,
                    all_to_all_bytes(layout.total, cfg.dim, bf16.num_blocks, n) / GiB,
                )
            )
    return out


def table() -> str:
    """The Markdown table the README quotes."""
    head = (
        "| size | tokens S | ranks | activations / rank | weights / rank (SP, bf16 / fp8) "
        "| weights / rank (FSDP2, bf16) | all-to-all sent / rank / forward |\n"
        "| --- | --- | --- | --- | --- | --- | --- |"
    )
    body = [
        f"| {s} | {t:,} | {n} | {a:.1f} GiB | {wb:.1f} / {wf:.1f} GiB | {fs:.1f} GiB | {c:.1f} GiB |"
        for s, t, n, a, wb, wf, fs, c in rows()
    ]
    return "\n".join([head, *body])


if __name__ == "__main__":
    print(table())
