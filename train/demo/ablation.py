"""`cointeract demo --ablation`: the paper's ablation on the toy world, every variant with the same budget.

Variants (arXiv 2604.19636, Table 3 in shape): full (the demo's own run); w/o MoE (no router, no experts); w/o
co-generation (the HOI stream is never trained, nor generated); w/o asymmetric mask (stage 2 keeps full attention,
so the HOI stream must be co-generated at inference too). Each row: held-out RGB and HOI losses after each stage,
router recall (hand, face), world scores of the generated held-out video, and inference time relative to w/o MoE.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import time
from collections.abc import Sequence

from ...cointeract_core.pipeline.clips import VideoOptions, generate
from ...cointeract_core.sampling.sampler import SamplerConfig
from ..sample import TrainSample
from .data import HeldOut, ToyEncoders, toy_config
from .report import held_out_conditioning, score
from .training import toy_model, toy_stages, train_stages

__all__ = ["VARIANTS", "run_variant", "ablation_table"]

# name -> (MoE on, HOI co-generated in training, stage-2 attention)
VARIANTS = {
    "full": (True, True, "asymmetric"),
    "w/o MoE": (False, True, "asymmetric"),
    "w/o co-generation": (True, False, "asymmetric"),
    "w/o asymmetric mask": (True, True, "full"),
}


def _inference(model, enc: ToyEncoders, held: HeldOut, args: argparse.Namespace, full_attention: bool):
    """Generate the held-out story (HOI co-generated when the model attends to it) -> (frames, seconds)."""
    engines = (model, enc.codec, enc.text, enc.audio)
    cond = held_out_conditioning(engines, held, args.clips, hoi=full_attention)
    opts = VideoOptions(
        max_clips=args.clips, hoi_preview=full_attention, attention="full" if full_attention else "asymmetric"
    )
    sampler = SamplerConfig(steps=args.sample_steps, cfg=args.cfg, shift=args.shift, seed=args.seed)
    start = time.monotonic()
    result = generate(model, enc.codec, cond, sampler, opts)
    return result.frames, time.monotonic() - start


def run_variant(
    name: str,
    args: argparse.Namespace,
    data: tuple[Sequence[TrainSample], Sequence[TrainSample]],
    enc: ToyEncoders,
    held: HeldOut,
    budgets_s: tuple[float, float],
    loss,
) -> dict:
    """Train one variant from the same init seed and data, generate, score -> its table row."""
    moe, hoi, attention = VARIANTS[name]
    cfg = toy_config(enc.codec.latent_channels)
    cfg = cfg if moe else dataclasses.replace(cfg, moe=None)
    model = toy_model(cfg, args.seed)
    stages = toy_stages(tuple(args.steps), lr=args.lr, hoi=hoi, stage2_attention=attention)
    results = train_stages(model, data[0], stages, budgets_s, loss=loss, seed=args.seed, held_out=data[1])
    frames, seconds = _inference(model, enc, held, args, full_attention=attention == "full")
    last = results[-1].held_out
    return {
        "variant": name,
        "steps": [r.steps for r in results],
        "rgb_loss": [r.held_out.get("flow") for r in results],
        "hoi_loss": [r.held_out.get("hoi") if hoi else None for r in results],
        "recall_hand": last.get("router_recall_hand") if moe else None,
        "recall_face": last.get("router_recall_face") if moe else None,
        "world": score(frames, held),
        "inference_s": seconds,
    }


def ablation_table(rows: list[dict]) -> list[str]:
    """Rows -> aligned text lines (inference cost relative to w/o MoE)."""
    base = next((r["inference_s"] for r in rows if r["variant"] == "w/o MoE"), None)

    def f(v, digits: int = 3) -> str:
        return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{digits}f}"

    head = (
        f"{'variant':<20}{'RGB s1/s2':>14}{'HOI s1/s2':>14}{'recall h/f':>12}{'contact':>9}{'penetr.':>9}"
        f"{'lip r':>8}{'jerk':>7}{'cost':>7}"
    )
    lines = ["ablation (held-out losses after stage 1 / 2; world scores of the generated video)", head]
    for r in rows:
        w = r["world"]
        cost = r["inference_s"] / base if base else None
        lines.append(
            f"{r['variant']:<20}{f(r['rgb_loss'][0]) + '/' + f(r['rgb_loss'][-1]):>14}"
            f"{f(r['hoi_loss'][0]) + '/' + f(r['hoi_loss'][-1]):>14}"
            f"{f(r['recall_hand'], 2) + '/' + f(r['recall_face'], 2):>12}{f(w['contact_error_px'], 2):>9}"
            f"{f(w['penetration_rate'], 2):>9}{f(w['lip_audio_r'], 2):>8}{f(w['centroid_jerk_px'], 2):>7}"
            f"{f(cost, 2) + 'x':>7}"
        )
    return lines
