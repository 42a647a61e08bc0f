"""The fast path against the official schedule: DiT passes per clip, CPU time and output error of each setting.

Two models, each sampled once with the official schedule (Euler, 40 steps, CFG: 80 DiT passes per clip) and once
per setting, the same seed and inputs:
- the shipped toy bundle on the toy assets' story (the demo's cfg 3 and shift 1, the values it was trained for;
  error of the decoded frames in [0, 1] and of the latents);
- a 14B-shaped DiT (the 14B proportions at width `--dim`, every weight random, official cfg 7 and shift 7) on
  random conditioning (error of the latents: there is no decoder worth the name).
Settings: Euler at 4× the steps (how far the official 40 steps are from the ODE they solve: errors below that are
discretisation, not quality), UniPC and DPM++ 2M at 20 (and 10) steps, cfg 1 (one pass a step), the step cache at
two thresholds, and the few-step settings step-distill LoRAs are made for (4 steps, cfg 1, shift 5: `lcm` as
lightx2v, `euler` as Wan2.2-Lightning). Without a distilled model the few-step rows only show the cost and how far
plain weights are from the official result; they are not a quality claim.

    python bench/fast_path.py                      # both models, 1 clip, 2 repeats (~15 min on 2 cores)
    python bench/fast_path.py --models toy --clips 2
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import math

import _common as C
import torch
from step_cache_toy import timed, toy_story

from comfyui_cointeract.cointeract_core.model.dit import CoInteractDiT
from comfyui_cointeract.cointeract_core.model.init import init_random
from comfyui_cointeract.cointeract_core.pipeline.clips import VideoOptions, generate
from comfyui_cointeract.cointeract_core.pipeline.conditioning import Conditioning
from comfyui_cointeract.cointeract_core.sampling.cache import StepCacheConfig
from comfyui_cointeract.cointeract_core.sampling.sampler import SamplerConfig
from comfyui_cointeract.cointeract_core.toy.codec import ToyCodec
from comfyui_cointeract.cointeract_core.weights.lora_stack import apply_loras
from comfyui_cointeract.train.demo.distill import compare

DISTILL_LORA = C.ROOT / "cointeract_core" / "toy" / "assets" / "toy_distill_lora.safetensors"


def settings(official: SamplerConfig) -> dict[str, SamplerConfig]:
    """Name -> SamplerConfig of every row, derived from the model's official schedule."""
    r = dataclasses.replace
    few = r(official, steps=4, cfg=1.0, shift=5.0)
    return {
        "official (euler 40, cfg)": official,
        "euler 160, cfg (the official ODE, finer)": r(official, steps=4 * official.steps),
        "unipc 20": r(official, sampler="unipc", steps=20),
        "dpmpp_2m 20": r(official, sampler="dpmpp_2m", steps=20),
        "unipc 10": r(official, sampler="unipc", steps=10),
        "euler 40, cfg 1": r(official, cfg=1.0),
        "euler 40, cache 0.05": r(official, cache=StepCacheConfig(threshold=0.05)),
        "euler 40, cache 0.1": r(official, cache=StepCacheConfig(threshold=0.1)),
        "unipc 20, cache 0.1 from step 4": r(official, sampler="unipc", steps=20, cache=StepCacheConfig(0.1, 4)),
        "lcm 4, cfg 1, shift 5 (lightx2v)": r(few, sampler="lcm"),
        "euler 4, cfg 1, shift 5 (Lightning)": few,
    }


def shaped_story(dim: int, layers: int, clips: int):
    """(14B-shaped random DiT, ToyCodec(1), random Conditioning) at a 16×16 latent, 80 frames a clip."""
    cfg = dataclasses.replace(C.scaled_config(dim, layers, text_len=64), in_dim=12, out_dim=12, cond_dim=12)
    model = init_random(CoInteractDiT(cfg), seed=1).eval()
    gen, codec = torch.Generator().manual_seed(3), ToyCodec(1)
    image = lambda: codec.encode(torch.rand(1, 3, 1, 16, 16, generator=gen) * 2 - 1)  # noqa: E731
    text = lambda: torch.randn(1, 24, cfg.text_dim, generator=gen)  # noqa: E731
    cond = Conditioning(
        person=image(),
        product=image(),
        product_scale=0.8,
        prompts=(text(),),
        negative=text(),
        audio=torch.randn(1, 25, cfg.audio_dim, 80 * clips, generator=gen),
    )
    return model, codec, cond


def run_model(name: str, model, codec, cond, official: SamplerConfig, clips: int, repeats: int, distilled=None) -> None:
    """Print one table: every setting against the official schedule on this model (and its distilled copy)."""
    opts = VideoOptions(max_clips=clips)
    run = lambda s, m=model: lambda: generate(m, codec, cond, s, opts)  # noqa: E731
    ref, ref_s = timed(run(official), repeats)
    rows, cases = [], [(label, sampler, model) for label, sampler in settings(official).items()]
    if distilled is not None:
        few = dataclasses.replace(official, steps=4, cfg=1.0, shift=5.0)
        cases += [("euler 4, cfg 1, shift 5 + the toy distill LoRA", few, distilled)]
    for label, sampler, net in cases:
        res, seconds = (ref, ref_s) if sampler is official else timed(run(sampler, net), repeats)
        e = compare(ref, res)
        run_passes = sum(res.passes_run) / clips
        skipped = sum(res.passes_skipped) / clips
        rows.append([
            label, f"{run_passes:.0f}" + (f" (+{skipped:.0f} cached)" if skipped else ""),
            f"{seconds / ref_s:.2f}x", f"{e['frames']:.2%}", f"{e['latents']:.2%}",
            "∞" if math.isinf(e["psnr"]) else f"{e['psnr']:.1f}",
        ])  # fmt: skip
    print(f"\n{name}: official = euler {official.steps} steps, cfg {official.cfg:g}, shift {official.shift:g}; "
          f"{clips} clip(s), CPU time of 1 thread, fastest of {repeats}")  # fmt: skip
    headers = ["setting", "DiT passes / clip", "CPU time", "frames rel. err", "latents rel. err", "PSNR dB"]
    print(C.table(headers, rows), flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", choices=("toy", "shaped"), default=["toy", "shaped"])
    p.add_argument("--clips", type=int, default=1)
    p.add_argument("--repeats", type=int, default=2, help="runs per setting; the fastest CPU time is kept")
    p.add_argument("--dim", type=int, default=256, help="width of the 14B-shaped DiT (multiple of 128)")
    p.add_argument("--layers", type=int, default=4)
    args = p.parse_args()
    torch.set_num_threads(1)
    if "toy" in args.models:
        model, codec, cond = toy_story(args.clips, hoi=False)
        distilled = copy.deepcopy(model)
        apply_loras(distilled, [(DISTILL_LORA, 1.0)])  # the shipped step-distill LoRA (train/demo/distill.py)
        official = SamplerConfig(cfg=3.0, shift=1.0)
        run_model("toy bundle", model, codec, cond, official, args.clips, args.repeats, distilled)
    if "shaped" in args.models:
        model, codec, cond = shaped_story(args.dim, args.layers, args.clips)
        label = f"14B-shaped DiT (width {args.dim}, {args.layers} blocks, random weights)"
        run_model(label, model, codec, cond, SamplerConfig(), args.clips, args.repeats)


if __name__ == "__main__":
    main()
