"""`cointeract generate` (one video) and `cointeract batch CSV` (the official demos CSV layout).

Every input is validated before anything is written; videos are written to a temporary name and renamed, and a
JSON sidecar records every setting and seed. The flags live in cli_options, the models in engines, the CSV rows in
cases, what a video leaves on disk in outputs; this module runs them, under torchrun too.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

import torch

from ..media import load_audio, load_image, load_video
from ..sampling.sampler import SamplerConfig
from ..weights.lora_formats import LoRAError
from . import cli_options, distributed, preflight
from .build import InputOptions, build_conditioning
from .cases import Case, read_demo_csv
from .clips import VideoOptions, generate
from .engines import Engines, load_engines
from .outputs import build_sidecar, write_outputs

__all__ = ["main", "batch_main", "run_case"]
log = logging.getLogger(__name__)


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
    sidecar = build_sidecar(case, result, sampler, video, inputs, time.perf_counter() - start, engines.loras)
    if launch.writes:
        write_outputs(result, out, original.waveform, original.sample_rate, sidecar)
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


def main(argv: list[str] | None = None, engines: Engines | None = None) -> int:
    """`cointeract generate`: one person + product + prompt(s) + speech -> an mp4 with sound."""
    parser = argparse.ArgumentParser(prog="cointeract generate", description=main.__doc__)
    cli_options.add_case_args(parser)
    if engines is None:
        cli_options.add_model_args(parser)
    cli_options.add_run_args(parser)
    distributed.quiet_unless_first(parser)
    args = parser.parse_args(argv)
    if engines is None:
        cli_options.check_model_args(parser, args)
    case = Case(
        audio=Path(args.audio),
        person=Path(args.person),
        prompts=tuple(args.prompt),
        product=Path(args.product) if args.product else None,
        scale=args.scale,
        pose=Path(args.pose_video) if args.pose_video else None,
    )
    options = cli_options.parsed_options(parser, args)  # invalid options fail before any model is loaded
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


def batch_main(argv: list[str] | None = None, engines: Engines | None = None) -> int:
    """`cointeract batch CSV`: generate every row, skipping outputs that already exist."""
    parser = argparse.ArgumentParser(prog="cointeract batch", description=batch_main.__doc__)
    parser.add_argument("csv", help="the official demos CSV layout")
    parser.add_argument("--out-dir", required=True, help="outputs are written as <audio stem>.mp4 here")
    if engines is None:
        cli_options.add_model_args(parser)
    cli_options.add_run_args(parser)
    distributed.quiet_unless_first(parser)
    args = parser.parse_args(argv)
    if engines is None:
        cli_options.check_model_args(parser, args)
    options = cli_options.parsed_options(parser, args)
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
