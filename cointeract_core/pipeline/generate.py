"""`cointeract generate` (one video) and `cointeract batch CSV` (the official demos CSV layout).

Every input is validated before anything is written; videos are written to a temporary name and renamed, and a
JSON sidecar records every setting and seed.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import logging
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..errors import UserError
from ..media import atomic_output, load_audio, load_image, load_video, write_video
from ..sampling.cache import StepCacheConfig
from ..sampling.presets import SAMPLER_PRESETS
from ..sampling.sampler import CFG_BATCH, SAMPLERS, SCHEDULERS, SamplerConfig
from ..weights.lora_formats import LoRAError
from . import distributed, preflight
from .build import InputOptions, build_conditioning
from .checks import MAX_SIDE
from .clips import GenerationResult, VideoOptions, generate
from .heatmaps import overlay_heatmaps

__all__ = ["Case", "Engines", "main", "batch_main", "run_case", "load_engines"]
log = logging.getLogger(__name__)
MAX_SEED = 2**53 - 1  # as the sampler node (the editor's numbers are doubles)
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


@dataclass(frozen=True)
class Case:
    """One video to make: file paths and prompts (one per clip; the last repeats)."""

    audio: Path
    person: Path
    prompts: tuple[str, ...]
    product: Path | None = None
    scale: float = 1.0
    pose: Path | None = None


@dataclass
class Engines:
    """The loaded models: DiT plus the VideoVAE / TextEncoder / AudioEncoder protocol objects."""

    model: Any
    vae: Any
    text: Any
    audio: Any
    loras: tuple[tuple[str, float], ...] = ()  # (file, strength) merged into the model, for the sidecar


def _add_model_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("models (local files; nothing is downloaded)")
    g.add_argument("--bundle", help="a toy bundle (`cointeract demo`): DiT + codec + encoders in one file, fp32")
    g.add_argument("--dit", nargs="+", help="Wan2.2-S2V DiT: single file, any shard, index or folder")
    g.add_argument("--cointeract", help="CoInteract checkpoint (LoRA + MoE [+ HOI]) merged into the base")
    g.add_argument("--lora-strength", type=_number(float), default=1.0,
                   help="multiplier on the CoInteract LoRA (official 1.0)")  # fmt: skip
    g.add_argument(
        "--lora",
        action="append",
        default=[],
        type=_lora_arg,
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


def _lora_arg(text: str) -> tuple[str, float]:
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


def _add_run_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("generation")
    side = _number(int, 1, MAX_SIDE)
    g.add_argument("--height", type=side, help=f"frame height in pixels, rounded up to a multiple of 16 (832; toy 64; "
                   f"at most {MAX_SIDE})")  # fmt: skip
    g.add_argument("--width", type=side, help=f"frame width in pixels, rounded up to a multiple of 16 (480; toy 64; "
                   f"at most {MAX_SIDE})")  # fmt: skip
    g.add_argument("--clips", type=_number(int, 1), help="at most this many 80-frame clips (default: as long as the "
                   "audio)")  # fmt: skip
    g.add_argument("--seed", type=_number(int, 0, MAX_SEED), default=0,
                   help="clip r uses seed + r (0 reproduces the official noise)")  # fmt: skip
    g.add_argument("--preset", choices=list(SAMPLER_PRESETS), default="official",
                   help="sampler settings: official (euler, 40 steps, shift 7, cfg 7), distill (lcm, 4 steps, shift 5, "
                   "cfg 1: lightx2v step-distill LoRAs), lightning (euler, 4 steps, shift 5, cfg 1: Wan2.2-Lightning "
                   "LoRAs); the flags below override it")  # fmt: skip
    g.add_argument("--steps", type=int, help="sampler steps per clip (official 40)")
    g.add_argument("--cfg", type=float, help="guidance scale (official 7; 1 = one DiT call per step)")
    g.add_argument("--shift", type=float, help="sigma shift (official 7)")
    g.add_argument("--sampler", choices=SAMPLERS, help="solver (official euler)")
    g.add_argument("--scheduler", choices=SCHEDULERS, help="sigma table (official shifted)")
    g.add_argument("--step-list", type=_step_list, metavar="T,T,...",
                   help="explicit unshifted timesteps, e.g. 1000,750,500,250 (lightx2v denoising_step_list); sets "
                   "--scheduler step_list and --steps")  # fmt: skip
    g.add_argument("--cfg-batch", choices=CFG_BATCH, default="auto",
                   help="both CFG passes as one batch of 2: auto (CUDA, when memory allows), on, off")  # fmt: skip
    g.add_argument("--float-timesteps", action="store_true", help="do not round timesteps through bf16")
    g.add_argument("--audio-stride", type=_number(int, 1), default=80, help="audio columns per clip (official code: "
                   "81)")  # fmt: skip
    g.add_argument("--person-fit", choices=("stretch", "cover"), default="stretch")
    g.add_argument("--product-margin", type=_number(float, 1), default=1.25,
                   help="official inference 1.25, training 1.0")  # fmt: skip
    g.add_argument("--loudness", type=_number(float, -70, 0), help="normalise speech to this LUFS first (training "
                   "uses -23)")  # fmt: skip
    g.add_argument("--negative-prompt", help="replace the official negative prompt")
    g.add_argument("--allow-silence", action="store_true", help="accept silent audio (the lips will not move)")
    g.add_argument("--allow-empty-prompt", action="store_true")
    g.add_argument("--hoi-preview", action="store_true", help="also write the co-generated HOI stream (.hoi.mp4)")
    g.add_argument("--router-maps", action="store_true", help="also write hand/face router heatmaps (.router.mp4)")
    _add_cache_args(p)
    distributed.add_args(p)


def _number(kind: type, low: float = -math.inf, high: float = math.inf, *, above: bool = False):
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


def _add_cache_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("step cache (off unless --cache-threshold is given; README: Step cache)")
    d = StepCacheConfig()
    g.add_argument("--cache-threshold", type=_number(float, 0), help="skip the DiT blocks while the change predicted "
                   f"since the last full step stays under this (e.g. {d.threshold}; 0 never skips)")  # fmt: skip
    g.add_argument("--cache-start", type=_number(int, 0), help=f"first step that may be skipped ({d.start_step})")
    g.add_argument("--cache-end-full", type=_number(int, 0), help=f"last steps always run ({d.end_steps_full})")
    g.add_argument("--cache-max-skips", type=_number(int, 0), help=f"most steps skipped in a row "
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


def _step_list(text: str) -> tuple[float, ...]:
    """'1000,750,500,250' -> (1000.0, 750.0, 500.0, 250.0)."""
    try:
        return tuple(float(t) for t in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected timesteps like 1000,750,500,250, got {text!r}") from None


def _sampler_config(args: argparse.Namespace) -> SamplerConfig:
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
    sampler = dataclasses.replace(_sampler_config(args), cache=_cache_config(args))
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


def _parsed_options(parser: argparse.ArgumentParser, args: argparse.Namespace) -> tuple:
    """_options, with a bad value (e.g. --cfg nan) reported as a usage error before any model loads."""
    try:
        return _options(args)
    except ValueError as err:
        parser.error(str(err))


def _check_model_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
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


def load_engines(args: argparse.Namespace) -> Engines:
    """Load the DiT (+ CoInteract checkpoint) and the three encoders from local files, or a toy bundle."""
    if getattr(args, "bundle", None):
        from ..model.attention import resolve_backend
        from ..toy.bundle import load_bundle

        model, codec, text, audio = load_bundle(args.bundle, args.device, torch.float32)
        model.attention_backend = resolve_backend(args.attention)
        return Engines(model, codec, text, audio, _apply_loras(model, args.lora))
    from ..encoders import UMT5TextEncoder, WanVAE, Wav2Vec2Features
    from ..model.attention import resolve_backend
    from ..weights.checkpoint import load_dit

    model = load_dit(args.dit, args.cointeract, args.lora_strength, DTYPES[args.dtype], args.device)
    model.attention_backend = resolve_backend(args.attention)
    loras = _apply_loras(model, args.lora)
    vae = WanVAE.from_file(args.vae, device=args.device)
    text = UMT5TextEncoder.from_file(args.text_encoder, args.tokenizer, device=args.device)
    audio = Wav2Vec2Features.from_file(args.audio_encoder, device=args.device)
    return Engines(model, vae, text, audio, loras)


def _apply_loras(model: torch.nn.Module, loras: list[tuple[str, float]]) -> tuple[tuple[str, float], ...]:
    """Merge the --lora files into the freshly loaded DiT (the files are only read); LoRAError if one does not fit."""
    if loras:
        from ..weights.lora_stack import apply_loras

        apply_loras(model, loras)
    return tuple(loras)


def _progress(label: str):
    from tqdm import tqdm

    bar = tqdm(desc=label, unit="step", leave=False)

    def callback(step: int, total: int, _x: torch.Tensor) -> None:
        bar.total = total
        bar.n = step
        bar.refresh()

    return callback


def run_case(
    engines: Engines,
    case: Case,
    out: Path,
    sampler: SamplerConfig,
    video: VideoOptions,
    inputs: InputOptions,
    launch: distributed.Launch = distributed.ONE_PROCESS,
) -> dict:
    """Generate one video to `out` (.mp4) plus optional .hoi.mp4 / .router.mp4 and a .json sidecar. Under torchrun
    the first rank of the sequence-parallel group writes; the others write nothing and show no progress bar."""
    cond, original = distributed.together(launch, lambda: _case_inputs(engines, case, video, inputs), True)
    start = time.perf_counter()
    progress = _progress(out.name) if launch.writes else None
    result = generate(engines.model, engines.vae, cond, sampler, video, progress)
    sidecar = _sidecar(case, result, sampler, video, inputs, time.perf_counter() - start, engines.loras)
    if launch.writes:
        _write_outputs(result, out, original.waveform, original.sample_rate, sidecar)
    return sidecar


def _case_inputs(engines: Engines, case: Case, video: VideoOptions, inputs: InputOptions) -> tuple:
    """(Conditioning, the original audio) of a case, after the memory check: every input error surfaces here."""
    speech = load_audio(case.audio, sample_rate=engines.audio.sample_rate)
    original = load_audio(case.audio, sample_rate=None, mono=False)
    cond = build_conditioning(
        engines.vae,
        engines.text,
        engines.audio,
        load_image(case.person),
        list(case.prompts),
        speech.waveform,
        speech.sample_rate,
        product=None if case.product is None else load_image(case.product),
        product_scale=case.scale,
        pose=None if case.pose is None else load_video(case.pose, fps=25.0)[0],
        hoi=video.hoi_preview,
        opts=inputs,
    )
    device = str(next(engines.model.parameters()).device) if isinstance(engines.model, torch.nn.Module) else "cpu"
    preflight.check_engines_memory(engines.model, engines.vae, inputs, video.hoi_preview, device)
    return cond, original


def _write_outputs(result: GenerationResult, out: Path, audio: torch.Tensor, rate: int, sidecar: dict) -> None:
    """The video, its optional previews and the .json sidecar; on any failure none of them is left behind."""
    written: list[Path] = []
    try:
        write_video(out, result.frames, result.fps, audio, rate)
        written.append(out)
        if result.hoi_frames is not None:
            write_video(out.with_suffix(".hoi.mp4"), result.hoi_frames, result.fps, audio, rate)
            written.append(out.with_suffix(".hoi.mp4"))
        if result.router_maps is not None:
            overlay = overlay_heatmaps(result.frames[: result.router_maps.shape[0]], result.router_maps)
            write_video(out.with_suffix(".router.mp4"), overlay, result.fps, audio, rate)
            written.append(out.with_suffix(".router.mp4"))
        with atomic_output(out.with_suffix(".json")) as tmp:
            tmp.write_text(json.dumps(sidecar, indent=2))
    except BaseException:
        for path in written:
            path.unlink(missing_ok=True)
        raise


def _sidecar(case, result, sampler, video, inputs, seconds: float, loras: tuple = ()) -> dict:
    def plain(obj: Any) -> Any:
        return {k: str(v) if isinstance(v, Path) else v for k, v in dataclasses.asdict(obj).items()}

    return {
        "case": plain(case),
        "sampler": plain(sampler),
        "video": plain(video),
        "inputs": plain(inputs),
        "loras": [{"file": str(path), "strength": strength} for path, strength in loras],
        "seeds": result.seeds,
        "passes_run": result.passes_run,  # per clip: DiT forwards that ran the blocks
        "passes_skipped": result.passes_skipped,  # per clip: forwards the step cache skipped
        "clips": len(result.seeds),
        "frames": int(result.frames.shape[0]),
        "audio_frames": result.audio_frames,
        "seconds": round(seconds, 2),
    }


def _case_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("--person", required=True, help="person image (any size; RGBA/grayscale are converted)")
    p.add_argument("--product", help="product image")
    p.add_argument("--scale", type=_number(float, 0, above=True), default=1.0,
                   help="product RoPE scale (official CSV `scale`)")  # fmt: skip
    p.add_argument("--prompt", action="append", required=True, help="prompt; repeat for per-clip prompts")
    p.add_argument("--audio", required=True, help="speech (wav/mp3/m4a/flac; any rate, any channel count)")
    p.add_argument("--pose-video", help="pose video (resampled to 25 fps), as with checkpoint_pose.safetensors")
    p.add_argument("--out", required=True, help="output .mp4")


def main(argv: list[str] | None = None, engines: Engines | None = None) -> int:
    """`cointeract generate`: one person + product + prompt(s) + speech -> an mp4 with sound."""
    parser = argparse.ArgumentParser(prog="cointeract generate", description=main.__doc__)
    _case_parser(parser)
    if engines is None:
        _add_model_args(parser)
    _add_run_args(parser)
    distributed.quiet_unless_first(parser)
    args = parser.parse_args(argv)
    if engines is None:
        _check_model_args(parser, args)
    case = Case(
        audio=Path(args.audio),
        person=Path(args.person),
        prompts=tuple(args.prompt),
        product=Path(args.product) if args.product else None,
        scale=args.scale,
        pose=Path(args.pose_video) if args.pose_video else None,
    )
    options = _parsed_options(parser, args)  # invalid options fail before any model is loaded
    launch = distributed.start(args.sequence_parallel, getattr(args, "device", "cpu"))

    def setup() -> Engines:
        preflight.check_output_file(Path(args.out))
        if engines is None:
            preflight.check_models(args)
        return engines or _load(args, launch)

    try:
        engines = distributed.prepare(launch, setup)
    except LoRAError as err:
        return _refused(parser.prog, err)
    run_case(engines, case, Path(args.out), *options, launch)
    distributed.finish(launch)
    return 0


def _load(args: argparse.Namespace, launch: distributed.Launch) -> Engines:
    """The engines, loaded on this process's device."""
    args.device = launch.device
    return load_engines(args)


def _refused(prog: str, err: Exception) -> int:
    """A LoRA that does not fit: one message on stderr, exit code 2, nothing written."""
    print(f"{prog}: {err}", file=sys.stderr)
    return 2


def read_demo_csv(path: Path) -> list[Case]:
    """Rows of the official demos CSV (audio, person_image, prompt[, product_image, prompt2, prompt3, scale,
    pose_video]); relative paths resolve against the CSV's folder."""
    base = path.parent
    cases = []
    with path.open(newline="", encoding="utf-8") as f:
        for i, row in enumerate(csv.DictReader(f), start=2):
            missing = [c for c in ("audio", "person_image", "prompt") if not (row.get(c) or "").strip()]
            if missing:
                raise ValueError(f"{path.name} line {i}: missing {', '.join(missing)}")
            keys = ("product_image", "prompt2", "prompt3", "scale", "pose_video")
            opt = {k: (row.get(k) or "").strip() for k in keys}
            cases.append(
                Case(
                    audio=base / row["audio"].strip(),
                    person=base / row["person_image"].strip(),
                    prompts=tuple(p for p in (row["prompt"].strip(), opt["prompt2"], opt["prompt3"]) if p),
                    product=base / opt["product_image"] if opt["product_image"] else None,
                    scale=_csv_scale(opt["scale"], path.name, i),
                    pose=base / opt["pose_video"] if opt["pose_video"] else None,
                )
            )
    return cases


def _csv_scale(text: str, name: str, line: int) -> float:
    """The CSV `scale` column: a finite number > 0 (1.0 when empty)."""
    try:
        value = float(text) if text else 1.0
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value <= 0:
        raise UserError(f"{name} line {line}: scale must be a number > 0, got {text!r}")
    return value


def batch_main(argv: list[str] | None = None, engines: Engines | None = None) -> int:
    """`cointeract batch CSV`: generate every row, skipping outputs that already exist."""
    parser = argparse.ArgumentParser(prog="cointeract batch", description=batch_main.__doc__)
    parser.add_argument("csv", help="the official demos CSV layout")
    parser.add_argument("--out-dir", required=True, help="outputs are written as <audio stem>.mp4 here")
    if engines is None:
        _add_model_args(parser)
    _add_run_args(parser)
    distributed.quiet_unless_first(parser)
    args = parser.parse_args(argv)
    if engines is None:
        _check_model_args(parser, args)
    options = _parsed_options(parser, args)
    out_dir = Path(args.out_dir)
    launch = distributed.start(args.sequence_parallel, getattr(args, "device", "cpu"))
    todo: list[Case] = []

    def setup() -> Engines | None:
        preflight.check_output_dir(out_dir)
        cases = read_demo_csv(Path(args.csv))
        if engines is None:
            preflight.check_models(args)
        out_dir.mkdir(parents=True, exist_ok=True)
        group, groups = launch.share  # row i belongs to group i mod groups, whatever is already done
        mine = [c for i, c in enumerate(cases) if i % groups == group]
        todo.extend(c for c in mine if not (out_dir / f"{c.audio.stem}.mp4").exists())
        log.info("%d rows, %d here, %d of them already done", len(cases), len(mine), len(mine) - len(todo))
        return (engines or _load(args, launch)) if todo else None

    try:
        engines = distributed.prepare(launch, setup)
    except LoRAError as err:
        return _refused(parser.prog, err)
    for case in todo:
        run_case(engines, case, out_dir / f"{case.audio.stem}.mp4", *options, launch)
    distributed.finish(launch)
    return 0
