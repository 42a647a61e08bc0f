"""HOI stream cost: the CoInteract DiT with the HOI preview off vs on (issue 9; paper: the HOI branch costs nothing
at inference when dropped).

Prints forward time and counted FLOPs with the preview off and on, and two counters over the preview-off run:
calls of the HOI modules (`depth_patch_embedding`, `depth_head`) and tensor ops that read any HOI weight
(`depth_*`, including each block's `depth_modulation`, watched at the dispatcher). Both must be 0. Also checks that
the RGB velocity is bit-identical with the preview on and off (asymmetric attention: main tokens never see HOI).

    python bench/hoi_cost.py                    # CPU: dim 256, 2 blocks; CUDA: dim 1280, 8 blocks
"""

from __future__ import annotations

import argparse

import _common as C
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from comfyui_cointeract.cointeract_core.model.dit import CoInteractDiT


class WeightReads(TorchDispatchMode):
    """Counts tensor ops that take any of the watched tensors (by storage) as an input."""

    def __init__(self, watched: list[torch.Tensor]) -> None:
        super().__init__()
        self.ptrs = {t.untyped_storage().data_ptr() for t in watched}
        self.ops = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        tensors = [t for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)]
        self.ops += any(t.untyped_storage().data_ptr() in self.ptrs for t in tensors)
        return func(*args, **(kwargs or {}))


def hoi_counters(model: CoInteractDiT) -> tuple[dict[str, int], list[torch.Tensor]]:
    """Forward-hook call counter on the HOI modules, and the list of every HOI weight tensor."""
    calls = {"modules": 0}
    for name, module in model.named_children():
        if name.startswith("depth_") and name != "depth_cond_mask":  # the type embedding is read as a weight
            module.register_forward_hook(lambda *a: calls.__setitem__("modules", calls["modules"] + 1))
    weights = [p for n, p in model.named_parameters() if n.startswith("depth_") or ".depth_" in n]
    return calls, weights


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    C.device_arg(parser)
    parser.add_argument("--dim", type=int, default=None)
    parser.add_argument("--layers", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=9)
    args = parser.parse_args()
    device = C.pick_device(args.device)
    cuda = device.type == "cuda"
    dim, layers = args.dim or (1280 if cuda else 256), args.layers or (8 if cuda else 2)
    dtype = torch.bfloat16 if cuda else torch.float32
    on_layout = C.layout_for_tokens(round(C.TOKENS_PER_DIM_480P * dim * 67834 / 36634), hoi=True)
    cfg = C.scaled_config(dim, layers, text_len=C.proportional_text_len(on_layout.n_main))
    model = C.randomize_(CoInteractDiT(cfg)).eval().to(device, dtype)
    calls, weights = hoi_counters(model)
    on = C.make_inputs(cfg, on_layout, device, dtype)
    off = {k: v for k, v in on.items() if k not in ("hoi", "hoi_context")}

    def fwd(inputs):
        with torch.no_grad():
            return model(**inputs)

    secs = C.interleaved({"off": lambda: fwd(off), "on": lambda: fwd(on)}, device, args.repeats)
    flops = {k: C.count_flops(lambda v=v: fwd(v)) for k, v in (("off", off), ("on", on))}
    calls["modules"] = 0
    with WeightReads(weights) as reads_off:
        v_off = fwd(off).velocity
    n_off = calls["modules"]
    with WeightReads(weights) as reads_on:
        v_on = fwd(on).velocity
    print(f"# HOI preview cost on {C.describe_device(device)}, {dtype}")
    print(
        f"config: dim {dim}, {layers} blocks (MoE on, t = 500); preview off: {on_layout.n_main:,} tokens, "
        f"on: {on_layout.total:,} (+{on_layout.n_hoi:,} HOI tokens), 480p mix, asymmetric attention\n"
    )
    rows = [
        ["preview off", C.fmt_s(secs["off"]), "1.000x", "1.0000x", n_off, reads_off.ops],
        [
            "preview on",
            C.fmt_s(secs["on"]),
            f"{secs['on'] / secs['off']:.3f}x",
            f"{flops['on'] / flops['off']:.4f}x",
            calls["modules"] - n_off,
            reads_on.ops,
        ],
    ]
    print(
        C.table(
            ["forward", "time", "time ratio", "FLOP ratio (counted)", "HOI module calls", "ops reading HOI weights"],
            rows,
        )
    )
    print(
        f"\nRGB velocity bit-identical with the preview on and off: {torch.equal(v_on, v_off)} "
        f"(max |diff| {float((v_on - v_off).abs().max()):.3g})"
    )


if __name__ == "__main__":
    main()
