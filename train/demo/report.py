"""Generation, scoring and the report of `cointeract demo`: videos, frame grid, curves, report.json / .txt."""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from ...cointeract_core.media import write_video
from ...cointeract_core.pipeline.build import InputOptions, build_conditioning
from ...cointeract_core.pipeline.clips import GenerationResult, VideoOptions, generate
from ...cointeract_core.pipeline.heatmaps import overlay_heatmaps
from ...cointeract_core.sampling.sampler import SamplerConfig
from ..toyworld.evaluation import ClipTruth, evaluate_clip
from ..toyworld.files import frame_grid, write_png
from .data import HeldOut
from .plot import draw_curves

__all__ = [
    "generate_and_score",
    "write_report",
    "format_report",
    "toy_input_options",
    "held_out_conditioning",
    "score",
]


def toy_input_options(height: int, width: int, clips: int | None) -> InputOptions:
    """Inference preprocessing as the toy was trained: cover-fit person, no product margin, -23 LUFS speech."""
    return InputOptions(
        height=height, width=width, person_fit="cover", product_margin=1.0, loudness_lufs=-23.0, max_clips=clips
    )


def _progress(desc: str, total: int):
    bar = tqdm(total=total, desc=desc, unit="step", dynamic_ncols=True)

    def callback(step: int, steps: int, _x: torch.Tensor) -> None:
        bar.update(1)

    return bar, callback


def _run(engines, cond, sampler: SamplerConfig, opts: VideoOptions, desc: str) -> tuple[GenerationResult, float]:
    model, codec = engines[0], engines[1]
    bar, callback = _progress(desc, sampler.steps * (opts.max_clips or 1))
    start = time.monotonic()
    try:
        result = generate(model, codec, cond, sampler, opts, callback)
    finally:
        bar.close()
    return result, time.monotonic() - start


def _uint8(frames: torch.Tensor) -> np.ndarray:
    return (frames * 255).round().clamp(0, 255).to(torch.uint8).numpy()


def held_out_conditioning(engines: tuple, held: HeldOut, clips: int, hoi: bool):
    """The held-out story's Conditioning (images, per-clip prompts, speech) through the toy encoders."""
    _, codec, text, audio = engines
    seq, cfg = held.sequence, held.sequence.config
    return build_conditioning(
        codec, text, audio, torch.from_numpy(held.person).float() / 255, list(held.prompts),
        torch.from_numpy(seq.audio), cfg.sample_rate, product=torch.from_numpy(held.product).float() / 255,
        hoi=hoi, opts=toy_input_options(cfg.height, cfg.width, clips),
    )  # fmt: skip


def score(frames: torch.Tensor, held: HeldOut) -> dict:
    """World evaluation of generated frames [T, H, W, 3] in [0, 1] against the held-out story's truth."""
    seq, cfg = held.sequence, held.sequence.config
    pixels = _uint8(frames)
    n = min(len(pixels), len(seq.frames))
    truth = ClipTruth.from_sequence(seq)
    return dataclasses.asdict(evaluate_clip(pixels[:n], cfg.fps, seq.audio, cfg.sample_rate, truth))


def generate_and_score(report: dict, out: Path, engines: tuple, held: HeldOut, args: argparse.Namespace) -> None:
    """Generate the held-out story twice (HOI preview off / on), write the videos and score them into `report`."""
    seq, cfg = held.sequence, held.sequence.config
    cond = held_out_conditioning(engines, held, args.clips, hoi=True)
    sampler = SamplerConfig(steps=args.sample_steps, cfg=args.cfg, shift=args.shift, seed=args.seed)
    plain_opts = VideoOptions(max_clips=args.clips)
    plain, plain_s = _run(engines, cond, sampler, plain_opts, "generate (RGB only)")
    rich_opts = dataclasses.replace(plain_opts, hoi_preview=True, router_maps=True)
    rich, rich_s = _run(engines, cond, sampler, rich_opts, "generate (+ HOI preview, router maps)")
    gen = report.setdefault("generation", {})
    gen.update(
        clips=len(plain.seeds), frames=int(plain.frames.shape[0]), sampler_steps=args.sample_steps, cfg=args.cfg,
        seconds_rgb_only=round(plain_s, 1), seconds_with_previews=round(rich_s, 1),
        rgb_equal_with_hoi_preview=bool(torch.equal(plain.frames, rich.frames)),
    )  # fmt: skip
    audio_t = torch.from_numpy(seq.audio)[None]
    write_video(out / "demo.mp4", plain.frames, plain.fps, audio_t, cfg.sample_rate)
    write_video(out / "hoi_preview.mp4", rich.hoi_frames, rich.fps, audio_t, cfg.sample_rate)
    maps = rich.router_maps  # None when every step is at t >= 900 (experts and router are off there)
    if maps is not None:
        write_video(out / "router_heatmaps.mp4", overlay_heatmaps(rich.frames[: maps.shape[0]], maps), rich.fps)
    write_png(out / "frame_grid.png", frame_grid(_uint8(plain.frames), columns=10, step=8, scale=2))
    truth = torch.from_numpy(seq.frames[: len(plain.frames)]).float() / 255
    report["world_eval"] = {"generated": score(plain.frames, held), "ground_truth": score(truth, held)}
    report["timings"]["generate_s"] = round(plain_s + rich_s, 1)


def _fmt(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def format_report(report: dict) -> str:
    """The human-readable report (what `cointeract demo` prints at the end)."""
    lines = ["CoInteract toy-world demo" + ("" if report.get("finished") else "  (INCOMPLETE: interrupted or failed)")]
    lines.append(f"seed {report.get('seed')}, {report.get('threads')} threads, torch {report.get('torch')}")
    for st in report.get("stages", []):
        fin, ho = st["final"], st["held_out"]
        lines.append(
            f"{st['name']}: {st['steps']}/{st['planned_steps']} steps in {st['seconds']:.0f} s (stopped by "
            f"{st['stopped_by']}); train EMA flow {_fmt(fin.get('flow'))} HOI {_fmt(fin.get('hoi'))}; held-out flow "
            f"{_fmt(ho.get('flow'))} HOI {_fmt(ho.get('hoi'))} router CE {_fmt(ho.get('router'))}"
        )
    if report.get("stages"):
        ho = report["stages"][-1]["held_out"]
        for name in ("hand", "face"):
            lines.append(
                f"router recall on held-out {name} tokens: {_fmt(ho.get(f'router_recall_{name}'))} "
                f"(class prior {_fmt(ho.get(f'router_prior_{name}'))})"
            )
    gen = report.get("generation")
    if gen and "rgb_equal_with_hoi_preview" in gen:
        lines.append(
            f"generated {gen['clips']} clips = {gen['frames']} frames ({gen['sampler_steps']} steps, "
            f"cfg {gen['cfg']}); "
            f"RGB torch.equal with HOI preview on/off: {gen['rgb_equal_with_hoi_preview']}"
        )
    ev = report.get("world_eval")
    if ev:
        lines.append(f"{'world eval':<22}{'generated':>12}{'ground truth':>14}")
        for key in ("contact_error_px", "penetration_rate", "lip_audio_r", "frame_difference", "centroid_jerk_px"):
            lines.append(f"  {key:<20}{_fmt(ev['generated'][key]):>12}{_fmt(ev['ground_truth'][key]):>14}")
    if "ablation" in report:
        lines += ["", *report["ablation"].get("table", [])]
    times = ", ".join(f"{k} {v} s" for k, v in report.get("timings", {}).items())
    lines.append(f"timings: {times}")
    if report.get("bundle"):
        lines.append(f"bundle: {report['bundle']['path']} ({report['bundle']['bytes'] / 1e6:.1f} MB)")
    return "\n".join(lines) + "\n"


def write_report(report: dict, out: Path) -> None:
    """report.json (everything, training records included), report.txt and curves.png (when there are records)."""
    out.mkdir(parents=True, exist_ok=True)
    records = report.get("records", [])
    if records:
        starts = [r["step"] - 1 for r in records if r["stage_step"] == 1][1:]
        draw_curves(records, out / "curves.png", starts)
    (out / "report.json").write_text(json.dumps(report, indent=1, default=str))
    (out / "report.txt").write_text(format_report(report))
