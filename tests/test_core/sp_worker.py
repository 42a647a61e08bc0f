"""Run by tests/test_core/test_sequence_parallel.py under `torch.distributed.run` (gloo, CPU): every token layout
through the DiT sequence parallel over all ranks, and on rank 0 also in one process; rank 0 saves both.

usage: python -m torch.distributed.run --nproc-per-node N sp_worker.py OUT.safetensors HEADS
"""

from __future__ import annotations

import dataclasses
import sys

import torch
import torch.distributed as dist
from safetensors.torch import save_file

from comfyui_cointeract.cointeract_core.model.config import PRESETS
from comfyui_cointeract.cointeract_core.model.dit import CoInteractDiT
from comfyui_cointeract.cointeract_core.model.init import init_random
from comfyui_cointeract.cointeract_core.runtime.sequence_parallel import enable_sequence_parallel

ALL = dict(product=True, motion=True, pose=True, hoi=True)
NONE = dict(product=False, motion=False, pose=False, hoi=False)
# name -> (parts, frames, latent hw, timesteps, attention); 2 timesteps = a batch of 2 (the CFG batch)
CASES = {
    "hoi_full_t500": (ALL, 3, (8, 16), (500.0,), "full"),
    "hoi_asym_t500": (ALL, 3, (8, 16), (500.0,), "asymmetric"),
    "hoi_asym_t937": (ALL, 3, (8, 16), (937.0,), "asymmetric"),
    "plain_t500": (NONE, 3, (8, 16), (500.0,), "asymmetric"),
    "product_t500": (dict(NONE, product=True), 3, (8, 16), (500.0,), "asymmetric"),
    "motion_t500": (dict(NONE, motion=True), 3, (8, 16), (500.0,), "asymmetric"),
    "pose_t950": (dict(NONE, pose=True), 3, (8, 16), (950.0,), "asymmetric"),
    "all_nohoi_t500": (dict(ALL, hoi=False), 3, (8, 16), (500.0,), "asymmetric"),
    # odd token counts (uneven shares) and shares that start and end inside a frame (audio injector)
    "odd_plain_t500": (NONE, 4, (10, 14), (500.0,), "asymmetric"),
    "odd_all_asym_t500": (ALL, 4, (10, 14), (500.0,), "asymmetric"),
    "odd_motion_pose_t300": (dict(NONE, motion=True, pose=True), 5, (10, 14), (300.0,), "asymmetric"),
    "batch2_hoi_asym": (ALL, 3, (8, 16), (500.0, 950.0), "asymmetric"),
}


def inputs(cfg, parts: dict, frames: int, hw: tuple[int, int], ts: tuple[float, ...], seed: int) -> dict:
    """Random named inputs for CoInteractDiT.forward (batch = len(ts))."""
    gen = torch.Generator().manual_seed(seed)
    b, c, (h, w) = len(ts), cfg.in_dim, hw

    def rnd(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=gen)

    out = dict(
        x=rnd(b, c, frames, h, w),
        timestep=torch.tensor(ts),
        context=rnd(b, 5, cfg.text_dim),
        audio=rnd(b, cfg.audio_layers, cfg.audio_dim, 4 * frames),
        person=rnd(b, c, 1, h, w),
        return_router=True,
    )
    if parts["product"]:
        out.update(product=rnd(b, c, 1, h, w), product_scale=0.6)
    if parts["motion"]:
        out["motion"] = rnd(b, c, 19, h, w)
    if parts["pose"]:
        out["pose"] = 0.5 * rnd(b, cfg.cond_dim, frames, h, w)
    if parts["hoi"]:
        out.update(hoi=rnd(b, c, frames, h, w), hoi_context=rnd(b, 6, cfg.text_dim))
    return out


def outputs(model: CoInteractDiT, args: dict) -> dict[str, torch.Tensor]:
    with torch.no_grad():
        out = model(**args)
    named = {"velocity": out.velocity, "hoi_velocity": out.hoi_velocity, "router": out.router_logits}
    return {k: v.contiguous() for k, v in named.items() if v is not None}


def main(path: str, heads: int) -> None:
    dist.init_process_group("gloo")
    cfg = dataclasses.replace(PRESETS["tiny_cointeract"], num_heads=heads)
    model = init_random(CoInteractDiT(cfg), 1234).eval()
    saved = {}
    for i, (name, (parts, frames, hw, ts, mode)) in enumerate(CASES.items()):
        args = dict(inputs(cfg, parts, frames, hw, ts, seed=i), attention=mode)
        enable_sequence_parallel(model)
        sp = outputs(model, args)
        model.sequence_parallel = None
        if dist.get_rank() == 0:
            ref = outputs(model, args)
            saved.update({f"{name}.sp.{k}": v for k, v in sp.items()})
            saved.update({f"{name}.ref.{k}": v for k, v in ref.items()})
    if dist.get_rank() == 0:
        save_file(saved, path)
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
