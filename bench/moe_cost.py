"""MoE cost: the CoInteract DiT with its Human-Aware MoE vs the same DiT without it (issue 9; paper: 1.04x).

Prints forward time per step at t < 900 (experts on) and t >= 900 (experts and router skipped), the mean over the
official 40-step shift-7 schedule (its steps counted from the sampler's timesteps, each weighted by the measured
time of its regime), and how often the router / experts ran at t >= 900.
Config: the 14B proportions at a small width, with tokens/dim equal to 14B at 480p (same attention : linear mix).

    python bench/moe_cost.py                   # CPU: dim 256, 2 blocks; CUDA: dim 1280, 8 blocks
    python bench/moe_cost.py --dim 512 --layers 4 --device cuda
"""

from __future__ import annotations

import argparse
import dataclasses

import _common as C
import torch

from comfyui_cointeract.cointeract_core.model.dit import CoInteractDiT
from comfyui_cointeract.cointeract_core.model.moe import MoEFFN
from comfyui_cointeract.cointeract_core.sampling.sampler import model_timesteps, sigma_schedule


def build(cfg, device, dtype) -> tuple[CoInteractDiT, CoInteractDiT]:
    """(MoE model, the same weights without the MoE): the base FFN keys map ffn.ffn_base.* -> ffn.*."""
    moe = C.randomize_(CoInteractDiT(cfg)).eval()
    base = CoInteractDiT(dataclasses.replace(cfg, moe=None)).eval()
    sd = {k.replace(".ffn.ffn_base.", ".ffn."): v for k, v in moe.state_dict().items()}
    base.load_state_dict({k: v for k, v in sd.items() if k in base.state_dict()}, strict=True)
    return moe.to(device, dtype), base.to(device, dtype)


def count_moe_calls(model: CoInteractDiT) -> dict[str, int]:
    """Forward-hook counters on every router and expert module."""
    counts = {"router": 0, "experts": 0}
    for block in model.blocks:
        assert isinstance(block.ffn, MoEFFN)
        block.ffn.router.register_forward_hook(lambda *a: counts.__setitem__("router", counts["router"] + 1))
        for name in block.ffn.cfg.expert_names:
            block.ffn.expert(name).register_forward_hook(
                lambda *a: counts.__setitem__("experts", counts["experts"] + 1)
            )
    return counts


def measure(moe, base, fwd, device, repeats: int, steps: list[float], off_from: float) -> list[list[str]]:
    """Rows: t < 900, t >= 900, and the schedule mean; time (min over interleaved rounds) and counted FLOPs."""
    runs = {"on": (moe, 500.0), "base": (base, 500.0), "off": (moe, 950.0), "base_off": (base, 950.0)}
    secs = C.interleaved({k: (lambda m=m, t=t: fwd(m, t)) for k, (m, t) in runs.items()}, device, repeats)
    flops = {k: C.count_flops(lambda m=m, t=t: fwd(m, t)) for k, (m, t) in runs.items()}
    on = sum(t < off_from for t in steps)

    def mean(on_value: float, off_value: float) -> float:  # each step weighted by its regime
        return (on * on_value + (len(steps) - on) * off_value) / len(steps)

    def row(label: str, a: str, b: str, fa: str, fb: str) -> list[str]:
        t_a, t_b = (mean(secs[a], secs[b]), mean(secs[fa], secs[fb])) if a == "mean" else (secs[a], secs[b])
        return [label, C.fmt_s(t_a), C.fmt_s(t_b), f"{t_a / t_b:.3f}x", f"{flops[fa] / flops[fb]:.4f}x"]

    rows = [
        row("t = 500 (experts on)", "on", "base", "on", "base"),
        row("t = 950 (experts off)", "off", "base_off", "off", "base_off"),
    ]
    t_moe, t_base = mean(secs["on"], secs["off"]), mean(secs["base"], secs["base_off"])
    f_moe, f_base = mean(flops["on"], flops["off"]), mean(flops["base"], flops["base_off"])
    rows.append(
        [
            f"mean over the 40-step shift-7 schedule ({len(steps) - on} off, {on} on)",
            C.fmt_s(t_moe),
            C.fmt_s(t_base),
            f"{t_moe / t_base:.3f}x",
            f"{f_moe / f_base:.4f}x",
        ]
    )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    C.device_arg(parser)
    parser.add_argument("--dim", type=int, default=None)
    parser.add_argument("--layers", type=int, default=None)
    parser.add_argument("--tokens", type=int, default=None, help="default: dim x 7.16 (the 14B 480p tokens/dim)")
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args()
    device = C.pick_device(args.device)
    cuda = device.type == "cuda"
    dim, layers = args.dim or (1280 if cuda else 256), args.layers or (8 if cuda else 2)
    dtype = torch.bfloat16 if cuda else torch.float32
    layout = C.layout_for_tokens(args.tokens or round(C.TOKENS_PER_DIM_480P * dim), hoi=False)
    cfg = C.scaled_config(dim, layers, moe=True, hoi=False, text_len=C.proportional_text_len(layout.total))
    moe, base = build(cfg, device, dtype)
    counts = count_moe_calls(moe)
    inputs = C.make_inputs(cfg, layout, device, dtype)

    def fwd(model, t):
        with torch.no_grad():
            return model(**dict(inputs, timestep=torch.tensor([t], device=device)))

    steps = model_timesteps(sigma_schedule(40, 7.0)).tolist()
    rows = measure(moe, base, fwd, device, args.repeats, steps, cfg.moe.off_from_timestep)
    same_off = torch.equal(fwd(moe, 950.0).velocity, fwd(base, 950.0).velocity)
    counts.update(router=0, experts=0)
    fwd(moe, 950.0)
    print(f"# MoE cost on {C.describe_device(device)}, {dtype}")
    print(
        f"config: dim {dim}, {layers} blocks, ffn {cfg.ffn_dim}, experts {cfg.moe.expert_dim}, router {dim // 2}; "
        f"{layout.total:,} tokens ({layout.n_target:,} target), 480p mix without HOI, {cfg.text_len} text rows, "
        f"audio after blocks {cfg.audio_inject_layers}\n"
    )
    print(C.table(["per forward", "with MoE", "without MoE", "time ratio", "FLOP ratio (counted)"], rows))
    print(
        f"\nat t >= 900: router calls {counts['router']}, expert calls {counts['experts']}; "
        f"velocity equal to the model without MoE: {same_off}"
    )


if __name__ == "__main__":
    main()
