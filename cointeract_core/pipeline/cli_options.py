"""The flags of `cointeract generate` / `batch` and their parsing into SamplerConfig, VideoOptions and InputOptions.

Every flag is checked by argparse (`number`, `lora_arg`, `step_list`) or by `parsed_options`, so a bad value is a
usage error before any model loads.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
from pathlib import Path

import torch

from ..sampling.cache import StepCacheConfig
from ..sampling.presets import SAMPLER_PRESETS
from ..sampling.sampler import CFG_BATCH, SAMPLERS, SCHEDULERS, SamplerConfig
from . import distributed
from .build import InputOptions
from .checks import MAX_SIDE
from .clips import VideoOptions

__all__ = [
    "DTYPES",
    "MAX_SEED",
    "add_case_args",
    "add_model_args",
    "add_run_args",
    "check_model_args",
    "parsed_options",
    "sampler_config",
]
MAX_SEED = 2**53 - 1  # as the sampler node (the editor's numbers are doubles)
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def number(kind: type, low: float = -math.inf, high: float = math.inf, *, above: bool = False):
    """An argparse type: a finite `kind` in [low, high] (low excluded when `above`)."""
    name = "an integer" if kind is int else "a finite number"
    wanted = (f"> {low}" if above else f">= {low}") if high == math.inf else f"from {low} to {high}"
    wanted = "" if low == -math.inf and high == math.inf else wanted

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {name}, got {text!r}") from None
        if not math.isfinite(value) or value < low or value > high or (above and value == low):
            raise argparse.ArgumentTypeError(f"expected {name} {wanted}".rstrip() + f", got {text}")
        return value

    return parse


def lora_arg(text: str) -> tuple[str, float]:
    """argparse type of --lora: `FILE[:STRENGTH]` -> (FILE, strength); the file must exist."""
    from ..weights.lora_stack import parse_lora_spec

    path, strength = parse_lora_spec(text)
    head, _, tail = text.rpartition(":")
    if not Path(path).is_file() and head and Path(head).is_file():
        raise argparse.ArgumentTypeError(f"the strength of {head} must be a number, got {tail!r}")
    if not Path(path).is_file():
        what = "is a folder; give the LoRA file" if Path(path).is_dir() else "not found"
        raise argparse.ArgumentTypeError(f"LoRA file {what}: {path}")
    if not math.isfinite(strength):
        raise argparse.ArgumentTypeError(f"the strength of {path} must be a finite number, got {strength}")
    return path, strength


def step_list(text: str) -> tuple[float, ...]:
    """'1000,750,500,250' -> (1000.0, 750.0, 500.0, 250.0)."""
    try:
        return tuple(float(t) for t in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected timesteps like 1000,750,500,250, got {text!r}") from None


def add_case_args(p: argparse.ArgumentParser) -> None:
    """The inputs and output of one `cointeract generate` video."""
    p.add_argument("--person", required=True, help="person image (any size; RGBA/grayscale are converted)")
    p.add_argument("--product", help="product image")
    p.add_argument("--scale", type=number(float, 0, above=True), default=1.0,
                   help="product RoPE scale (official CSV `scale`)")  # fmt: skip
    p.add_argument("--prompt", action="append", required=True, help="prompt; repeat for per-clip prompts")
    p.add_argument("--audio", required=True, help="speech (wav/mp3/m4a/flac; any rate, any channel count)")
    p.add_argument("--pose-video", help="pose video (resampled to 25 fps), as with checkpoint_pose.safetensors")
    p.add_argument("--out", required=True, help="output .mp4")


def add_model_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("models (local files; nothing is downloaded)")
    g.add_argument("--bundle", help="a toy bundle (`cointeract demo`): DiT + codec + encoders in one file, fp32")
    g.add_argument("--dit", nargs="+", help="Wan2.2-S2V DiT: single file, any shard, index or folder")
    g.add_argument("--cointeract", help="CoInteract checkpoint (LoRA + MoE [+ HOI]) merged into the base")
    g.add_argument("--lora-strength", type=number(float), default=1.0,
                   help="multiplier on the CoInteract LoRA (official 1.0)")  # fmt: skip
    g.add_argument(
        "--lora",
        action="append",
        default=[],
        type=lora_arg,
        metavar="FILE[:STRENGTH]",
        help="a Wan / CoInteract LoRA merged into the DiT at STRENGTH (default 1; repeat to stack): kohya, PEFT, "
        "diffusers, lightx2v (diff / diff_b / diff_m), LoHa, LoKr",
    )
    g.add_argument("--vae", help="Wan2.1_VAE.pth, ComfyUI wan_2.1_vae.safetensors or diffusers folder")
    g.add_argument("--text-encoder", help="umT5-XXL: HF folder, ComfyUI umt5_xxl file or Wan .pth")
    g.add_argument("--tokenizer", help="umT5 tokenizer folder (google/umt5-xxl) if the text encoder has none")
    g.add_argument("--audio-encoder", help="wav2vec2 folder or ComfyUI audio_encoders file")
    g.add_argument("--dtype", choices=sorted(DTYPES), default="bf16", help="DiT weight dtype")
    g.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="torch device")
    g.add_argument("--attention", default="sdpa", help="attention backend: sdpa, xformers, flash_attn or auto")


def check_model_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Either --bundle, or all of --dit, --vae, --text-encoder and --audio-encoder."""
    files = {
        "--dit": args.dit,
        "--vae": args.vae,
        "--text-encoder": args.text_encoder,
        "--audio-encoder": args.audio_encoder,
    }
    if args.bundle and any(files.values()):
        parser.error(f"--bundle replaces {', '.join(k for k, v in files.items() if v)}; give one or the other")
    missing = [k for k, v in files.items() if not v]
    if not args.bundle and missing:
        parser.error(f"the following arguments are required: {', '.join(missing)} (or --bundle for a toy bundle)")


def add_run_args(p: argparse.ArgumentParser) -> None:
    """Size, seed, sampler, input handling and extra outputs; then the step cache and torchrun flags."""
    g = p.add_argument_group("generation")
    side = number(int, 1, MAX_SIDE)
    g.add_argument("--height", type=side, help=f"frame height in pixels, rounded up to a multiple of 16 (832; toy 64; "
                   f"at most {MAX_SIDE})")  # fmt: skip
    g.add_argument("--width", type=side, help=f"frame width in pixels, rounded up to a multiple of 16 (480; toy 64; "
                   f"at most {MAX_SIDE})")  # fmt: skip
    g.add_argument("--clips", type=number(int, 1), help="at most this many 80-frame clips (default: as long as the "
                   "audio)")  # fmt: skip
    g.add_argument("--seed", type=number(int, 0, MAX_SEED), default=0,
                   help="clip r uses seed + r (0 reproduces the official noise)")  # fmt: skip
    _add_sampler_args(g)
    g.add_argument("--audio-stride", type=number(int, 1), default=80, help="audio columns per clip (official code: "
                   "81)")  # fmt: skip
    g.add_argument("--person-fit", choices=("stretch", "cover"), default="stretch")
    g.add_argument("--product-margin", type=number(float, 1), default=1.25,
                   help="official inference 1.25, training 1.0")  # fmt: skip
    g.add_argument("--loudness", type=number(float, -70, 0), help="normalise speech to this LUFS first (training "
                   "uses -23)")  # fmt: skip
    g.add_argument("--negative-prompt", help="replace the official negative prompt")
    g.add_argument("--allow-silence", action="store_true", help="accept silent audio (the lips will not move)")
    g.add_argument("--allow-empty-prompt", action="store_true")
    g.add_argument("--hoi-preview", action="store_true", help="also write the co-generated HOI stream (.hoi.mp4)")
    g.add_argument("--router-maps", action="store_true", help="also write hand/face router heatmaps (.router.mp4)")
    _add_cache_args(p)
    distributed.add_args(p)


def _add_sampler_args(g: argparse._ArgumentGroup) -> None:
    g.add_argument("--preset", choices=list(SAMPLER_PRESETS), default="official",
                   help="sampler settings: official (euler, 40 steps, shift 7, cfg 7), distill (lcm, 4 steps, shift 5, "
                   "cfg 1: lightx2v step-distill LoRAs), lightning (euler, 4 steps, shift 5, cfg 1: Wan2.2-Lightning "
                   "LoRAs); the flags below override it")  # fmt: skip
    g.add_argument("--steps", type=int, help="sampler steps per clip (official 40)")
    g.add_argument("--cfg", type=float, help="guidance scale (official 7; 1 = one DiT call per step)")
    g.add_argument("--shift", type=float, help="sigma shift (official 7)")
    g.add_argument("--sampler", choices=SAMPLERS, help="solver (official euler)")
    g.add_argument("--scheduler", choices=SCHEDULERS, help="sigma table (official shifted)")
    g.add_argument("--step-list", type=step_list, metavar="T,T,...",
                   help="explicit unshifted timesteps, e.g. 1000,750,500,250 (lightx2v denoising_step_list); sets "
                   "--scheduler step_list and --steps")  # fmt: skip
    g.add_argument("--cfg-batch", choices=CFG_BATCH, default="auto",
                   help="both CFG passes as one batch of 2: auto (CUDA, when memory allows), on, off")  # fmt: skip
    g.add_argument("--float-timesteps", action="store_true", help="do not round timesteps through bf16")


def _add_cache_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("step cache (off unless --cache-threshold is given; README: Step cache)")
    d = StepCacheConfig()
    g.add_argument("--cache-threshold", type=number(float, 0), help="skip the DiT blocks while the change predicted "
                   f"since the last full step stays under this (e.g. {d.threshold}; 0 never skips)")  # fmt: skip
    g.add_argument("--cache-start", type=number(int, 0), help=f"first step that may be skipped ({d.start_step})")
    g.add_argument("--cache-end-full", type=number(int, 0), help=f"last steps always run ({d.end_steps_full})")
    g.add_argument("--cache-max-skips", type=number(int, 0), help=f"most steps skipped in a row "
                   f"({d.max_consecutive}; 0: no cap)")  # fmt: skip


def _cache_config(args: argparse.Namespace) -> StepCacheConfig | None:
    """The --cache-* options as a StepCacheConfig; None when --cache-threshold is not given."""
    given = {"start_step": args.cache_start, "end_steps_full": args.cache_end_full}
    given = {k: v for k, v in given.items() if v is not None}
    if args.cache_max_skips is not None:
        given["max_consecutive"] = args.cache_max_skips or None
    if args.cache_threshold is None:
        if given:
            raise ValueError("--cache-start / --cache-end-full / --cache-max-skips need --cache-threshold")
        return None
    return StepCacheConfig(threshold=args.cache_threshold, **given)


def sampler_config(args: argparse.Namespace) -> SamplerConfig:
    """The preset, overridden by the sampler flags that were given; raises ValueError on bad values."""
    given = {k: getattr(args, k) for k in ("steps", "shift", "cfg", "sampler", "scheduler")}
    given = {k: v for k, v in given.items() if v is not None}
    if args.step_list:
        given = {"scheduler": "step_list", "steps": len(args.step_list), **given, "step_list": args.step_list}
    return dataclasses.replace(
        SAMPLER_PRESETS[args.preset], seed=args.seed, quantize_timesteps=not args.float_timesteps,
        cfg_batch=args.cfg_batch, **given,
    )  # fmt: skip


def _options(args: argparse.Namespace) -> tuple[SamplerConfig, VideoOptions, InputOptions]:
    sampler = dataclasses.replace(sampler_config(args), cache=_cache_config(args))
    video = VideoOptions(
        audio_stride=args.audio_stride, max_clips=args.clips, hoi_preview=args.hoi_preview, router_maps=args.router_maps
    )
    extra = {"negative_prompt": args.negative_prompt} if args.negative_prompt else {}
    toy = bool(getattr(args, "bundle", None))
    inputs = InputOptions(
        height=args.height or (64 if toy else 832),
        width=args.width or (64 if toy else 480),
        person_fit=args.person_fit,
        product_margin=args.product_margin,
        loudness_lufs=args.loudness,
        allow_empty_prompt=args.allow_empty_prompt,
        allow_silence=args.allow_silence,
        max_clips=args.clips,
        **extra,
    )
    return sampler, video, inputs


def parsed_options(
    parser: argparse.ArgumentParser, args: argparse.Namespace
) -> tuple[SamplerConfig, VideoOptions, InputOptions]:
    """(SamplerConfig, VideoOptions, InputOptions) of the flags, with a bad value (e.g. --cfg nan) reported as a
    usage error before any model loads."""
    try:
        return _options(args)
    except ValueError as err:
        parser.error(str(err))
