"""Block-swap overhead vs blocks swapped (CUDA only; on a CPU it says so and exits).

Full-width 14B blocks (dim 5120, 40 heads, ffn 13824, bf16) at 480p x 81 frames (36,634 tokens), so each block's
copy-to-compute ratio is the real model's; only the block count is smaller (default 8). For each swap count:
seconds per forward, overhead vs all blocks resident, peak GPU memory (max_memory_allocated), bytes streamed per
forward; with prefetch 1 (copies overlap compute on a side stream) and, at the largest count, prefetch 0.

    python bench/block_swap.py                    # 8 blocks, swap 0, 2, 4, 6, 8
    python bench/block_swap.py --layers 12 --tokens 16000 --weights fp8
"""

from __future__ import annotations

import argparse
import gc

import _common as C
import torch

from comfyui_cointeract.cointeract_core.model.config import PRESETS
from comfyui_cointeract.cointeract_core.runtime.offload import install_block_swap, swapped_indices


def pinned_bandwidth(nbytes: int, device) -> float:
    """Host-to-device GB/s of one pinned copy of `nbytes`."""
    host = torch.empty(nbytes, dtype=torch.uint8).pin_memory()
    dev = torch.empty(nbytes, dtype=torch.uint8, device=device)
    secs = C.time_it(lambda: dev.copy_(host, non_blocking=True), device, repeats=5)
    return nbytes / secs / 1e9


def run(cfg, layout, device, weights: str, n_swap: int, prefetch: int, repeats: int) -> dict:
    model = C.build_synthetic(cfg, device, swapped_indices(cfg.num_layers, n_swap), weights)
    swap = install_block_swap(model, device, n_swap, prefetch=prefetch) if n_swap else None
    inputs = C.make_inputs(cfg, layout, device, torch.bfloat16)
    torch.cuda.reset_peak_memory_stats(device)

    def fwd():
        with torch.no_grad():
            model(**inputs)

    secs = C.time_it(fwd, device, repeats=repeats, warmup=1)
    out = dict(
        secs=secs,
        peak=torch.cuda.max_memory_allocated(device),
        block=sum(t.numel() * t.element_size() for t in [*model.blocks[0].parameters(), *model.blocks[0].buffers()]),
    )
    if swap is not None:
        out["stats"] = swap.swapper.stats
        swap.remove()
    model = inputs = swap = None
    gc.collect()
    torch.cuda.empty_cache()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    C.device_arg(parser)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=None, help="default: 480p x 81 frames (36,634)")
    parser.add_argument("--weights", default="bf16", choices=["bf16", "fp8"])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    device = C.pick_device(args.device)
    if device.type != "cuda":
        print("block_swap.py needs CUDA: block swapping streams weights from pinned host memory to a GPU")
        return
    big = PRESETS["14B_cointeract"]
    cfg = C.scaled_config(big.dim, args.layers, hoi=False)
    layout = C.LAYOUT_480P if args.tokens is None else C.layout_for_tokens(args.tokens, hoi=False)
    counts = sorted({round(k * args.layers / 4) for k in range(5)})
    runs = [(n, 1) for n in counts] + [(args.layers, 0)]
    rows, base = [], None
    for n_swap, prefetch in runs:
        r = run(cfg, layout, device, args.weights, n_swap, prefetch, args.repeats)
        base = base or r["secs"]
        streamed = n_swap * r["block"]
        stats = r.get("stats")
        hits = f"{stats.prefetched}/{stats.loads}" if stats else ""
        rows.append(
            [
                f"{n_swap}/{args.layers}",
                prefetch if n_swap else "",
                C.fmt_s(r["secs"]),
                f"{r['secs'] / base:.3f}x",
                C.gib(r["peak"]),
                C.gib(streamed),
                hits,
            ]
        )
    bw = pinned_bandwidth(run_block_bytes(cfg, args.weights), device)
    print(
        f"# Block-swap overhead on {C.describe_device(device)}, {args.weights}, {args.layers} blocks of the 14B width, "
        f"{layout.total:,} tokens; pinned host-to-device copy: {bw:.1f} GB/s\n"
    )
    print(
        C.table(
            [
                "swapped",
                "prefetch",
                "s/forward",
                "vs resident",
                "peak GiB",
                "GiB streamed per forward",
                "loads found prefetched",
            ],
            rows,
        )
    )


def run_block_bytes(cfg, weights: str) -> int:
    """Bytes of one block's weights (measured on a meta model)."""
    from comfyui_cointeract.cointeract_core.runtime.memory_plan import weight_bytes

    return weight_bytes(cfg, weights).block


if __name__ == "__main__":
    main()
