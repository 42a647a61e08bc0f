"""`cointeract demo`: the toy world end to end on a CPU — data, both training stages, a long video, a report.

Steps: render toy-world clips (official CSV layout) and a held-out set, cache them, train the toy DiT from
scratch (stage 1 full attention, stage 2 asymmetric; each stage stops at its step count or its share of the time
budget), save the toy bundle, and generate a multi-clip video from a held-out person / product / speech / prompt
timeline twice (HOI preview off and on: the RGB frames must be identical). Writes demo.mp4 (with sound),
hoi_preview.mp4, router_heatmaps.mp4, curves.png, frame_grid.png, toy_bundle.safetensors, report.json/.txt.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import random
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch

from ...cointeract_core.toy.bundle import load_bundle, save_bundle
from ..config import LOSS_PRESETS, LossConfig
from ..metrics import MetricsLog
from .ablation import VARIANTS, ablation_table, run_variant
from .data import (
    cache_clips,
    demo_world,
    fit_toy_codec,
    held_out_inputs,
    toy_config,
    toy_encoders,
    write_clips,
    write_inputs,
)
from .report import generate_and_score, write_report
from .training import toy_model, toy_stages, train_stages

__all__ = ["main", "DEFAULT_MINUTES", "run_demo", "parse_args"]

log = logging.getLogger(__name__)

DEFAULT_MINUTES = 10.0
FACE_WEIGHT, HAND_WEIGHT = 2.0, 4.0  # region-weighted flow loss: the mouth and hands are small (issue 16)
MAX_MINUTES = 24 * 60


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="cointeract demo", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="cointeract-demo", help="output folder (refused when not empty, unless --force)")
    p.add_argument("--minutes", type=float, default=DEFAULT_MINUTES, help="time budget for the whole demo")
    p.add_argument("--seed", type=int, default=0, help="seeds data, init, training and sampling")
    p.add_argument("--force", action="store_true", help="write into a non-empty --out (its demo files are replaced)")
    p.add_argument(
        "--ablation",
        action="store_true",
        help="then train full / w/o MoE / w/o co-generation / w/o asymmetric mask, each with the main run's "
        "time budget, and print the table",
    )
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads; results are deterministic per count (1: fastest on a busy machine)",
    )
    p.add_argument("--train-clips", type=int, default=80, help="toy-world training clips (81 frames each)")
    p.add_argument("--eval-clips", type=int, default=4, help="held-out clips for router recall and losses")
    p.add_argument("--steps", type=int, nargs=2, default=(1600, 500), metavar=("STAGE1", "STAGE2"),
                   help="optimizer steps per stage (a stage also stops when its time share is spent)")  # fmt: skip
    p.add_argument("--lr", type=float, default=2e-3, help="peak learning rate of both stages (AdamW)")
    p.add_argument("--shift", type=float, default=1.0,
                   help="timestep shift in training and sampling (official 5 / 7 at 480p / 720p; the toy's 16 tokens "
                   "per frame want 1, see README)")  # fmt: skip
    p.add_argument("--face-weight", type=float, default=FACE_WEIGHT,
                   help="extra flow-loss weight of face tokens (trainer: loss.face_weight; 0: official)")  # fmt: skip
    p.add_argument("--hand-weight", type=float, default=HAND_WEIGHT,
                   help="extra flow-loss weight of hand tokens (trainer: loss.hand_weight; 0: official)")  # fmt: skip
    p.add_argument("--clips", type=int, default=2, help="80-frame clips to generate (>= 2 shows clip chaining)")
    p.add_argument("--sample-steps", type=int, default=20, help="sampler steps per clip")
    p.add_argument(
        "--cfg", type=float, default=3.0, help="classifier-free guidance vs the empty prompt and silent audio (1: off)"
    )
    args = p.parse_args(argv)
    _validate(p, args)
    return args


def _validate(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if not (args.minutes > 0) or args.minutes > MAX_MINUTES:
        p.error(f"--minutes must be in (0, {MAX_MINUTES}] (a day); got {args.minutes}")
    for name in ("threads", "train_clips", "eval_clips", "clips", "sample_steps"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1; got {getattr(args, name)}")
    if not (args.face_weight >= 0 and args.hand_weight >= 0):
        p.error(f"--face-weight and --hand-weight must be >= 0; got {args.face_weight}, {args.hand_weight}")
    if min(args.steps) < 1:
        p.error(f"--steps must be >= 1 for both stages; got {args.steps}")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        p.error(f"--out {out} is a file; give a folder")
    if out.is_dir() and any(out.iterdir()) and not args.force:
        p.error(f"--out {out} exists and is not empty; choose another folder or pass --force to replace its demo files")
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        p.error(f"--out {out} is not writable ({err.strerror or err}); choose a folder you can write to")


def seed_everything(seed: int, threads: int) -> None:
    """Threads and every RNG the demo touches (torch, numpy, random); deterministic algorithms where available."""
    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


class Budget:
    """Wall-clock deadlines: data and generation are fixed work; training gets the rest, split by planned steps."""

    def __init__(self, minutes: float) -> None:
        self.start, self.total = time.monotonic(), minutes * 60.0

    def left(self) -> float:
        return self.total - (time.monotonic() - self.start)

    def training(self, reserve_s: float, steps: tuple[int, int]) -> tuple[float, float]:
        """(stage 1, stage 2) seconds from what is left after reserving `reserve_s` for generation, in the ratio of
        the stages' planned steps."""
        avail, share = max(1.0, self.left() - reserve_s), steps[0] / (steps[0] + steps[1])
        return avail * share, avail * (1 - share)


def toy_loss(shift: float, face_weight: float = 0.0, hand_weight: float = 0.0) -> LossConfig:
    """The paper's loss weights (lambda_h = eta = 1: the router learns within minutes) at the toy's shift, with
    the face / hand region weights of the flow losses."""
    return dataclasses.replace(LOSS_PRESETS["paper"], shift=shift, face_weight=face_weight, hand_weight=hand_weight)


def _prepare_out(out: Path, force: bool) -> None:
    if force:
        for name in ("data", "cache"):
            shutil.rmtree(out / name, ignore_errors=True)


def run_demo(args: argparse.Namespace, report: dict) -> dict:
    """The whole demo; fills `report` as it goes (so an interrupted run still has what it finished)."""
    out, budget = Path(args.out), Budget(args.minutes)
    seed_everything(args.seed, args.threads)
    _prepare_out(out, args.force)
    cfg, world = toy_config(), demo_world()
    enc = toy_encoders(cfg, fit_toy_codec(world, args.seed))
    report.update(seed=args.seed, threads=args.threads, minutes=args.minutes, torch=torch.__version__, timings={})

    t = time.monotonic()
    train_csv = write_clips(out / "data" / "train", args.train_clips, world, args.seed, "world: training clips")
    eval_csv = write_clips(out / "data" / "held_out", args.eval_clips, world, args.seed + 1, "world: held-out clips")
    train_set = cache_clips(train_csv, out / "cache" / "train", world, enc, cfg.patch_size[1], "cache: training")
    eval_set = cache_clips(eval_csv, out / "cache" / "held_out", world, enc, cfg.patch_size[1], "cache: held-out")
    report["data"] = {"train_clips": len(train_set), "held_out_clips": len(eval_set)}
    report["timings"]["data_s"] = round(time.monotonic() - t, 1)

    t = time.monotonic()
    model = toy_model(cfg, args.seed)
    metrics = MetricsLog(out / "metrics.jsonl")
    metrics.truncate(0)
    records: list[dict] = []
    stages = toy_stages(tuple(args.steps), lr=args.lr)
    budgets = budget.training(reserve_s=0.05 * args.minutes * 60, steps=tuple(args.steps))
    loss = toy_loss(args.shift, args.face_weight, args.hand_weight)
    results = train_stages(
        model, train_set, stages, budgets, loss=loss, seed=args.seed,
        held_out=eval_set, on_step=lambda r: (records.append(r), metrics.write(r)),
    )  # fmt: skip
    report["stages"] = [vars(r) for r in results]
    report["deterministic"] = all(r.stopped_by == "steps" for r in results)
    report["timings"]["train_s"] = round(time.monotonic() - t, 1)
    report["records"] = records

    bundle = save_bundle(out / "toy_bundle.safetensors", model, enc.codec, enc.text, enc.audio)
    report["bundle"] = {"path": str(bundle), "bytes": bundle.stat().st_size}
    model, codec, text, audio = load_bundle(bundle)  # generate from what ships: fp16-stored weights
    held = held_out_inputs(world, args.seed, args.clips)
    report["inputs"] = write_inputs(held, out / "inputs")
    generate_and_score(report, out, (model, codec, text, audio), held, args)
    if args.ablation:
        rows = report.setdefault("ablation", {"rows": [], "budgets_s": budgets})["rows"]
        for name in VARIANTS:
            rows.append(run_variant(name, args, (train_set, eval_set), enc, held, budgets, loss))
            report["ablation"]["table"] = ablation_table(rows)
    return report


def main(argv: list[str] | None = None) -> int:
    """Entry point of `cointeract demo`."""
    args = parse_args(list(sys.argv[1:] if argv is None else argv))
    logging.getLogger().setLevel(logging.INFO)
    root = __package__.rsplit(".", 2)[0]  # the pack: comfyui_cointeract.train.demo -> comfyui_cointeract
    for noisy in (".train.cache", ".train.data", ".cointeract_core.media.loudness", ".cointeract_core.toy.bundle"):
        logging.getLogger(root + noisy).setLevel(logging.WARNING)  # per-clip lines would break the progress bars
    report: dict = {"finished": False, "interrupted": False}
    out, start = Path(args.out), time.monotonic()
    try:
        run_demo(args, report)
        report["finished"] = True
    except KeyboardInterrupt:
        report["interrupted"] = True
        log.warning("interrupted: writing what finished to %s", out)
    finally:
        report.setdefault("timings", {})["total_s"] = round(time.monotonic() - start, 1)
        write_report(report, out)
    print((out / "report.txt").read_text())  # the demo's output is its report
    return 0 if report["finished"] else 130
