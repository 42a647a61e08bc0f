"""The 14B CoInteract DiT (synthetic weights) at 480p and 720p x 81 frames under a 24 GB cap: peak GPU memory
(torch.cuda.max_memory_allocated) and seconds per sampler step (CFG: two forwards), bf16 and fp8 weights, with the
block swap the memory planner picks and without block swap. Prints the README's markdown table.

The cap is torch.cuda.set_per_process_memory_fraction(cap / device memory) with cap = 23.5 GiB, what a 24 GiB card
(RTX 3090 / 4090) leaves after its CUDA context (the context itself is outside the cap), so an allocation past it
fails as on that card. The memory planner gets the same 23.5 GiB. A configuration that does not fit is reported as
such; with --uncapped-retry it is run again without the cap to report what it really needs.

    python bench/gpu_14b.py --res 480p --json /tmp/r.jsonl       # ~5 min on an H100
    python bench/gpu_14b.py --res 720p --json /tmp/r.jsonl       # ~9 min
    python bench/gpu_14b.py --table /tmp/r.jsonl                 # the merged markdown table
    python bench/gpu_14b.py --smoke --device cpu                 # control flow only: a small model on the CPU

Needs only torch, safetensors, einops, numpy and this checkout.
"""

from __future__ import annotations

import argparse
import gc
import json
import time
from pathlib import Path

import _common as C
import torch

from comfyui_cointeract.cointeract_core.model.config import PRESETS
from comfyui_cointeract.cointeract_core.runtime import memory_plan
from comfyui_cointeract.cointeract_core.runtime.compile import compile_blocks
from comfyui_cointeract.cointeract_core.runtime.offload import install_block_swap, swapped_indices

RESOLUTIONS = {"480p": (832, 480), "720p": (1280, 720), "smoke": (64, 64)}
HEADERS = [
    "resolution",
    "tokens",
    "weights",
    "block swap",
    "peak GiB (max_memory_allocated)",
    "s/step (CFG)",
    "planner estimate GiB",
    "device",
]


def step_inputs(cfg, layout, device) -> tuple[dict, dict]:
    """Positive and negative (negative prompt, zeroed audio) forward inputs of one CFG step."""
    pos = C.make_inputs(cfg, layout, device, torch.bfloat16, seed=0)
    negative_prompt = C.make_inputs(cfg, layout, device, torch.bfloat16, seed=1)["context"]
    neg = dict(pos, context=negative_prompt, audio=pos["audio"] * 0)
    return pos, neg


def run_once(cfg, layout, device, weights: str, n_swap: int, steps: int, compile_mode: str | None) -> dict:
    """Build, install the swap, one warm-up step, then `steps` timed steps: seconds/step and peak bytes."""
    t0 = time.perf_counter()
    model = C.build_synthetic(cfg, device, swapped_indices(cfg.num_layers, n_swap), weights)
    swap = install_block_swap(model, device, n_swap) if n_swap else None
    if compile_mode:
        compile_blocks(model, compile_mode)
    build_s = time.perf_counter() - t0
    pos, neg = step_inputs(cfg, layout, device)
    cuda = torch.device(device).type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)

    def step():
        with torch.no_grad():
            model(**pos)
            model(**neg)

    try:
        secs = C.time_it(step, device, repeats=steps, warmup=1)
        peak = torch.cuda.max_memory_allocated(device) if cuda else None
    finally:
        if swap is not None:
            swap.remove()
        model = pos = neg = swap = None  # drop the weights before the next configuration
        gc.collect()
        if cuda:
            torch.cuda.empty_cache()
    return {"s_per_step": secs, "peak_bytes": peak, "build_s": build_s}


def planned_swap(cfg, layout, weights: str, swap: str, cap: int) -> tuple[int | None, str, float]:
    """(blocks to swap or None if the planner says it cannot fit, note, planner estimate GiB)."""
    if swap == "none":
        return 0, "none", memory_plan.estimate_memory(cfg, layout, weights, 0).total / 2**30
    try:
        plan = memory_plan.plan_memory(cfg, layout, cap, weights)
    except memory_plan.MemoryPlanError as err:
        return None, f"planner: does not fit ({err})", float("nan")
    return plan.n_swap, f"{plan.n_swap}/{cfg.num_layers} (planner)", plan.estimate.total / 2**30


def run_config(args, cfg, res: str, weights: str, swap: str, device, cap: int | None) -> dict:
    """One table row (a dict, also written as JSON)."""
    layout = memory_plan.video_layout(*RESOLUTIONS[res], frames=81)
    n_swap, label, estimate = planned_swap(cfg, layout, weights, swap, cap)
    row = dict(
        resolution=res,
        tokens=layout.total,
        weights=weights,
        swap=label,
        estimate_gib=estimate,
        device=C.describe_device(device),
        cap_gib=cap / 2**30,
    )
    if n_swap is None:
        return dict(row, status="does not fit (planner)")
    try:
        row.update(run_once(cfg, layout, device, weights, n_swap, args.steps, args.compile), status="ok")
    except torch.OutOfMemoryError:
        gc.collect()
        torch.cuda.empty_cache()
        row["status"] = f"OOM under the {cap / 2**30:.0f} GiB cap"
        if args.uncapped_retry:
            torch.cuda.set_per_process_memory_fraction(1.0, device)
            try:
                row["uncapped"] = run_once(cfg, layout, device, weights, n_swap, args.steps, args.compile)
            finally:
                set_cap(device, cap)
    return row


def set_cap(device, cap: int | None) -> None:
    """Cap this process's CUDA allocator at `cap` bytes (no-op on the CPU)."""
    if cap is not None and torch.device(device).type == "cuda":
        total = torch.cuda.get_device_properties(device).total_memory
        torch.cuda.set_per_process_memory_fraction(min(1.0, cap / total), device)


def render(rows: list[dict]) -> str:
    out = []
    for r in rows:
        if r["status"] == "ok":
            peak = "n/a (CPU)" if r["peak_bytes"] is None else C.gib(r["peak_bytes"])
            secs = f"{r['s_per_step']:.2f}"
        else:
            un = r.get("uncapped")
            peak = r["status"] + (f"; uncapped peak {C.gib(un['peak_bytes'])}" if un and un["peak_bytes"] else "")
            secs = f"({un['s_per_step']:.2f} uncapped)" if un else "—"
        out.append(
            [
                r["resolution"],
                f"{r['tokens']:,}",
                r["weights"],
                r["swap"],
                peak,
                secs,
                f"{r['estimate_gib']:.1f}",
                r["device"],
            ]
        )
    return C.table(HEADERS, out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    C.device_arg(parser)
    parser.add_argument("--res", nargs="+", default=["480p", "720p"], choices=sorted(RESOLUTIONS))
    parser.add_argument("--weights", nargs="+", default=["bf16", "fp8"], choices=["bf16", "fp8"])
    parser.add_argument("--swap", nargs="+", default=["auto", "none"], choices=["auto", "none"])
    parser.add_argument("--cap-gib", type=float, default=23.5, help="allocator cap: a 24 GiB card less its context")
    parser.add_argument("--steps", type=int, default=2, help="timed CFG steps after one warm-up step")
    parser.add_argument("--compile", default=None, help="also torch.compile the blocks with this mode")
    parser.add_argument("--uncapped-retry", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--json", type=Path, default=None, help="append each row to this JSON-lines file")
    parser.add_argument("--table", type=Path, default=None, help="only print the table of a JSON-lines file")
    parser.add_argument("--smoke", action="store_true", help="a 4-block dim-256 model at 128x128: checks the flow")
    args = parser.parse_args()
    if args.table:
        print(render([json.loads(line) for line in args.table.read_text().splitlines() if line.strip()]))
        return
    device = C.pick_device(args.device, threads=2)
    if device.type != "cuda" and not args.smoke:
        print("gpu_14b.py needs CUDA (use --smoke --device cpu to check the control flow on a CPU)")
        return
    cfg = C.scaled_config(256, 4, hoi=False) if args.smoke else PRESETS["14B_cointeract"]
    cap = int(args.cap_gib * 2**30)
    if args.smoke:  # no cap on the CPU; plan for the fully swapped size, so swapping runs
        layout = memory_plan.video_layout(*RESOLUTIONS["smoke"])
        cap = memory_plan.estimate_memory(cfg, layout, "bf16", cfg.num_layers).total
        args.steps = 1
    set_cap(device, cap)
    rows = []
    for res in ["smoke"] if args.smoke else args.res:
        for weights in args.weights:
            for swap in args.swap:
                rows.append(run_config(args, cfg, res, weights, swap, device, cap))
                print(render(rows[-1:]).splitlines()[-1], flush=True)
                if args.json:
                    with args.json.open("a") as f:
                        f.write(json.dumps(rows[-1]) + "\n")
    model_name = "smoke model" if args.smoke else "14B DiT"
    print(f"\n# {model_name}, synthetic weights, HOI preview off, cap {cap / 2**30:.1f} GiB\n")
    print(render(rows))


if __name__ == "__main__":
    main()
