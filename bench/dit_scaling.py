"""DiT scaling: forward time and peak memory vs token count, with the 14B proportions at a small width.

Prints, per token count (480p token mix, HOI off, MoE on at t = 500): seconds per forward (a CFG sampler step is two
forwards), ratios to the smallest size, counted FLOPs, and the peak memory of the forward: on CUDA
max_memory_allocated (weights included); on CPU the weights plus the peak of live activation tensors
(memory_plan.TensorMemoryTracker). The planner's activation estimate (memory_plan.activation_bytes) is shown beside
the measured activations.

    python bench/dit_scaling.py                            # CPU: dim 256, 2 blocks, 500..4000 tokens
    python bench/dit_scaling.py --device cuda              # CUDA: dim 1280, 8 blocks, 4k..84.6k (720p) tokens, bf16
"""

from __future__ import annotations

import argparse

import _common as C
import torch

from comfyui_cointeract.cointeract_core.model.dit import CoInteractDiT
from comfyui_cointeract.cointeract_core.runtime import memory_plan


def measure(model, cfg, layout, device, dtype, repeats: int) -> dict:
    """Seconds per forward, FLOPs, activation peak and (CUDA) max_memory_allocated at one layout."""
    inputs = C.make_inputs(cfg, layout, device, dtype)

    def fwd():
        with torch.no_grad():
            return model(**inputs)

    secs = C.time_it(fwd, device, repeats)
    flops = C.count_flops(fwd)
    weights = sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        fwd()
        peak = torch.cuda.max_memory_allocated(device)
        act = peak - base
    else:
        with memory_plan.TensorMemoryTracker() as tracker:
            fwd()
        act, peak = tracker.peak, weights + tracker.peak
    return dict(secs=secs, flops=flops, peak=peak, act=act, est=memory_plan.activation_bytes(cfg, layout))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    C.device_arg(parser)
    parser.add_argument("--dim", type=int, default=None)
    parser.add_argument("--layers", type=int, default=None)
    parser.add_argument("--tokens", type=int, nargs="+", default=None)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    device = C.pick_device(args.device)
    cuda = device.type == "cuda"
    dim, layers = args.dim or (1280 if cuda else 256), args.layers or (8 if cuda else 2)
    sizes = args.tokens or (
        [4000, 16000, C.LAYOUT_480P.total, C.LAYOUT_720P.total] if cuda else [500, 1000, 2000, 4000]
    )
    dtype = torch.bfloat16 if cuda else torch.float32
    cfg = C.scaled_config(dim, layers, hoi=False)
    model = C.randomize_(CoInteractDiT(cfg)).eval().to(device, dtype)
    rows, first = [], None
    for size in sizes:
        layout = C.layout_for_tokens(size, hoi=False)
        r = measure(model, cfg, layout, device, dtype, args.repeats)
        first = first or (layout.total, r)
        n0, r0 = first
        rows.append(
            [
                f"{layout.total:,}",
                f"{layout.total / n0:.1f}x",
                C.fmt_s(r["secs"]),
                f"{r['secs'] / r0['secs']:.2f}x",
                f"{r['flops'] / r0['flops']:.2f}x",
                C.mib(r["peak"]),
                C.mib(r["act"]),
                C.mib(r["est"]),
            ]
        )
    print(f"# DiT scaling on {C.describe_device(device)}, {dtype}")
    print(
        f"config: dim {dim}, {layers} blocks, ffn {cfg.ffn_dim}, MoE on (t = 500), {cfg.text_len} text rows, "
        "480p token mix without HOI\n"
    )
    print(
        C.table(
            [
                "tokens",
                "tokens ratio",
                "s/forward",
                "time ratio",
                "FLOP ratio",
                "peak MiB",
                "activations MiB",
                "planner estimate MiB",
            ],
            rows,
        )
    )


if __name__ == "__main__":
    main()
