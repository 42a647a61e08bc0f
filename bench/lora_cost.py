"""LoRA merged vs unmerged: forward time of the DiT with the CoInteract LoRA merged into W (what load_dit does)
vs kept as separate factors (lora.apply_lora_unmerged, what training and strength sliders use).

Targets as the official LoRA: q, k, v, o of self-, cross- and audio-injector attention, and both base FFN linears;
rank = dim/40 (the official 128 at dim 5120) unless --rank is given.

    python bench/lora_cost.py                   # CPU: dim 256, 2 blocks
    python bench/lora_cost.py --device cuda     # CUDA: dim 1280, 8 blocks, bf16
"""

from __future__ import annotations

import argparse
import copy
import re

import _common as C
import torch

from comfyui_cointeract.cointeract_core.model.dit import CoInteractDiT
from comfyui_cointeract.cointeract_core.weights import lora

TARGETS = re.compile(r"(\.[qkvo]|\.ffn\.ffn_base\.[02])\.weight$")


def make_lora(model, rank: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random PEFT-named factors (A and B both non-zero, so the update is real) for every official target."""
    gen, out = torch.Generator().manual_seed(seed), {}
    for key, w in model.state_dict().items():
        if TARGETS.search(key) and w.ndim == 2:
            m = key.removesuffix(".weight")
            out[f"{m}.lora_A.default.weight"] = torch.randn(rank, w.shape[1], generator=gen) / w.shape[1] ** 0.5
            out[f"{m}.lora_B.default.weight"] = torch.randn(w.shape[0], rank, generator=gen) * 0.01
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    C.device_arg(parser)
    parser.add_argument("--dim", type=int, default=None)
    parser.add_argument("--layers", type=int, default=None)
    parser.add_argument("--rank", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=9)
    args = parser.parse_args()
    device = C.pick_device(args.device)
    cuda = device.type == "cuda"
    dim, layers = args.dim or (1280 if cuda else 256), args.layers or (8 if cuda else 2)
    rank, dtype = args.rank or max(1, dim // 40), torch.bfloat16 if cuda else torch.float32
    layout = C.layout_for_tokens(round(C.TOKENS_PER_DIM_480P * dim), hoi=False)
    cfg = C.scaled_config(dim, layers, hoi=False, text_len=C.proportional_text_len(layout.total))
    base = C.randomize_(CoInteractDiT(cfg)).eval()
    factors = make_lora(base, rank)
    merged, unmerged = copy.deepcopy(base), copy.deepcopy(base)
    names = lora.merge_lora(merged, factors)
    lora.apply_lora_unmerged(unmerged, factors)
    merged, unmerged = merged.to(device, dtype), unmerged.to(device, dtype)
    inputs = C.make_inputs(cfg, layout, device, dtype)

    def fwd(model):
        with torch.no_grad():
            return model(**inputs).velocity

    secs = C.interleaved({"merged": lambda: fwd(merged), "unmerged": lambda: fwd(unmerged)}, device, args.repeats)
    flops = {k: C.count_flops(lambda m=m: fwd(m)) for k, m in (("merged", merged), ("unmerged", unmerged))}
    out_m, out_u = fwd(merged).float(), fwd(unmerged).float()
    rel = float((out_m - out_u).norm() / out_m.norm())
    print(f"# LoRA merged vs unmerged on {C.describe_device(device)}, {dtype}")
    print(f"config: dim {dim}, {layers} blocks, rank {rank} on {len(names)} linears; {layout.total:,} tokens\n")
    rows = [
        [k, C.fmt_s(secs[k]), f"{secs[k] / secs['merged']:.3f}x", f"{flops[k] / flops['merged']:.4f}x"]
        for k in ("merged", "unmerged")
    ]
    print(C.table(["LoRA", "s/forward", "time ratio", "FLOP ratio (counted)"], rows))
    print(f"\nrelative difference of the two outputs: {rel:.2g}")


if __name__ == "__main__":
    main()
