"""Step cache on the shipped toy bundle: DiT passes skipped and the error against the same run without the cache.

Generates the toy assets' story (person, product, speech, two prompts; 2 clips; by default cfg 3 and shift 1, as
`cointeract demo` samples it) once without the cache and once per setting, and prints, per setting: passes skipped,
the relative L2 error of the frames and of the latents, the frames' PSNR, and the CPU-time ratio (one thread, the
fastest of `--repeats` runs; embedding, head, codec and the cache's bookkeeping are what a skipped pass still costs).

    python bench/step_cache_toy.py                            # 20 and 40 steps, thresholds 0.05 and 0.1
    python bench/step_cache_toy.py --steps 40 --thresholds 0.05 0.1 0.2 --start 10
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import time

import _common as C
import torch

from comfyui_cointeract.cointeract_core.media import load_audio, load_image
from comfyui_cointeract.cointeract_core.pipeline.build import InputOptions, build_conditioning
from comfyui_cointeract.cointeract_core.pipeline.clips import GenerationResult, VideoOptions, generate
from comfyui_cointeract.cointeract_core.sampling.cache import StepCacheConfig
from comfyui_cointeract.cointeract_core.sampling.sampler import SamplerConfig
from comfyui_cointeract.cointeract_core.toy.bundle import load_bundle

ASSETS = C.ROOT / "cointeract_core" / "toy" / "assets"


def toy_story(clips: int, hoi: bool):
    """(model, codec, Conditioning) of the toy assets, preprocessed as the toy was trained (as `cointeract demo`)."""
    model, codec, text, audio = load_bundle(ASSETS / "toy_bundle.safetensors", "cpu", torch.float32)
    speech = load_audio(ASSETS / "speech.wav", sample_rate=audio.sample_rate)
    prompts = [p for p in (ASSETS / "prompts.txt").read_text().splitlines() if p.strip()]
    opts = InputOptions(height=64, width=64, person_fit="cover", product_margin=1.0, loudness_lufs=-23.0,
                        max_clips=clips)  # fmt: skip
    person, product = load_image(ASSETS / "person.png"), load_image(ASSETS / "product.png")
    cond = build_conditioning(
        codec, text, audio, person, prompts, speech.waveform, speech.sample_rate, product=product, hoi=hoi, opts=opts
    )
    return model, codec, cond


def compare(ref: GenerationResult, res: GenerationResult) -> dict[str, float]:
    """Skipped fraction, relative L2 error of frames and latents, PSNR of the frames (in [0, 1])."""
    lat_ref, lat = torch.cat(ref.latents, dim=2), torch.cat(res.latents, dim=2)
    mse = float(((res.frames - ref.frames) ** 2).mean())
    return {
        "skipped": sum(res.passes_skipped) / (sum(res.passes_skipped) + sum(res.passes_run)),
        "frames": float((res.frames - ref.frames).norm() / ref.frames.norm()),
        "latents": float((lat - lat_ref).norm() / lat_ref.norm()),
        "psnr": 10 * math.log10(1 / mse) if mse > 0 else math.inf,
    }


def timed(run, repeats: int) -> tuple[GenerationResult, float]:
    """run() -> (its result, the least CPU seconds over `repeats` runs; interference only adds time)."""
    best, result = math.inf, None
    for _ in range(repeats):
        t = time.process_time()
        result = run()
        best = min(best, time.process_time() - t)
    return result, best


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, nargs="+", default=[20, 40])
    p.add_argument("--thresholds", type=float, nargs="+", default=[0.05, 0.1])
    p.add_argument("--start", type=int, nargs="+", help="warm-up steps to try (default: the config's, and steps/5)")
    p.add_argument("--end-full", type=int, default=StepCacheConfig().end_steps_full)
    p.add_argument("--max-skips", type=int, default=StepCacheConfig().max_consecutive, help="0: no cap")
    p.add_argument("--cfg", type=float, default=3.0, help="guidance scale (the demo's 3; official 7)")
    p.add_argument("--shift", type=float, default=1.0, help="sigma shift (the demo's 1; official 7)")
    p.add_argument("--clips", type=int, default=2)
    p.add_argument("--repeats", type=int, default=2, help="runs per setting; the fastest CPU time is kept")
    p.add_argument("--hoi", action="store_true", help="with the HOI preview (checks that the RGB frames are equal)")
    args = p.parse_args()
    torch.set_num_threads(1)
    model, codec, cond = toy_story(args.clips, args.hoi)
    opts = VideoOptions(max_clips=args.clips, hoi_preview=args.hoi)
    print("| steps | threshold | start | end full | max skips | passes skipped | frames rel. err | latents rel. err "
          "| PSNR dB | CPU time |")  # fmt: skip
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for steps in args.steps:
        base = SamplerConfig(steps=steps, cfg=args.cfg, shift=args.shift, seed=0)
        ref, ref_s = timed(lambda s=base: generate(model, codec, cond, s, opts), args.repeats)
        for start in args.start or sorted({StepCacheConfig().start_step, steps // 5}):
            for threshold in args.thresholds:
                sampler = dataclasses.replace(base, cache=StepCacheConfig(threshold, start, args.end_full,
                                                                          args.max_skips or None))  # fmt: skip
                res, res_s = timed(lambda s=sampler: generate(model, codec, cond, s, opts), args.repeats)
                m = compare(ref, res) | {"time": res_s / ref_s}
                row = f"| {steps} | {threshold} | {start} | {args.end_full} | {args.max_skips} | {m['skipped']:.1%} "
                row += f"| {m['frames']:.2%} | {m['latents']:.2%} | {m['psnr']:.1f} | {m['time']:.2f}x |"
                print(row, flush=True)


if __name__ == "__main__":
    main()
