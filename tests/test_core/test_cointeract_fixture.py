"""Our DiT against a run of the official CoInteract code (tests/fixtures/cointeract_tiny.safetensors).

Covers MoE at t<900 and t≥900 (and the 899/900 boundary), product with scale 0.6, motion, pose, HOI in full and
asymmetric attention, and router logits.
"""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from comfyui_cointeract.cointeract_core.model.config import PRESETS
from comfyui_cointeract.cointeract_core.model.dit import CoInteractDiT
from comfyui_cointeract.cointeract_core.model.layout import SequenceLayout

CASES = {  # case -> (timestep, attention, product+motion, hoi)
    "full_t500": (500.0, "full", True, True),
    "full_t937": (937.0, "full", True, True),
    "asym_t500": (500.0, "asymmetric", True, True),
    "asym_t500_nohoi": (500.0, "asymmetric", True, False),
    "noprod_nomotion_t500": (500.0, "full", False, False),
    "t899": (899.0, "full", True, True),
    "t900": (900.0, "full", True, True),
}


@pytest.fixture(scope="module")
def fx(request) -> dict[str, torch.Tensor]:
    from pathlib import Path

    return load_file(Path(request.fspath).parents[1] / "fixtures" / "cointeract_tiny.safetensors")


@pytest.fixture(scope="module")
def model(fx) -> CoInteractDiT:
    m = CoInteractDiT(PRESETS["tiny_cointeract"]).eval()
    m.load_state_dict({k[len("param.") :]: v for k, v in fx.items() if k.startswith("param.")}, strict=True)
    return m


def _args(fx: dict, case: str) -> dict:
    t, mode, extras, hoi = CASES[case]
    args = dict(
        x=fx["input.x"][None],
        timestep=torch.tensor([t]),
        context=fx["input.context"][None],
        audio=fx["input.audio"],
        person=fx["input.ref_latent"][None],
        attention=mode,
        return_router=True,
    )
    if extras:
        args.update(
            product=fx["input.product_latent"][None],
            product_scale=float(fx["input.product_scale"]),
            motion=fx["input.motion_latents"][None],
            pose=fx["input.pose_latents"][None],
        )
    if hoi:
        args.update(hoi=fx["input.hoi_latents"][None], hoi_context=fx["input.hoi_context"][None])
    return args


def _close(a: torch.Tensor, b: torch.Tensor, tol: float = 1e-4) -> None:
    err = (a.double() - b.double()).abs().max().item()
    assert err <= tol * max(b.double().std().item(), 1.0), f"max abs error {err}"


@pytest.mark.parametrize("case", CASES)
def test_outputs_match_official(fx, model, case):
    with torch.no_grad():
        out = model(**_args(fx, case))
    _close(out.velocity[0], fx[f"output.{case}"])
    if CASES[case][3]:
        _close(out.hoi_velocity[0], fx[f"output.{case}.hoi"])
    _close(out.router_logits[:, 0], fx[f"output.{case}.router_logits"])


def test_positions_match_official(fx):
    layout = SequenceLayout(frames=3, latent_hw=(8, 16), product=True, product_scale=0.6, motion=True, hoi=True)
    assert torch.equal(layout.positions(), fx["inter.full_t500.rope_positions_thw"])


def test_intermediates_match_official(fx, model):
    seen = {}
    for i, block in enumerate(model.blocks):
        block.register_forward_hook(lambda m, a, o, i=i: seen.__setitem__(i, o[0]))
    residuals = []
    model.audio_injector.register_forward_hook(lambda m, a, o: residuals.append(o))
    args = _args(fx, "full_t500")
    with torch.no_grad():
        model(**args)
        local, glob = model.encode_audio(args["audio"], frames=3)
        e0 = model._time(args["timestep"])[1]
        text, hoi_text = model._text(args["context"]), model._text(args["hoi_context"])
    for i in (0, 1):
        after = seen[i].clone()
        after[:, : residuals[i].shape[1]] += residuals[i]
        _close(after, fx[f"inter.full_t500.block{i}.out"])
    for ours, name in [
        (local, "merged_audio_emb"),
        (glob, "audio_emb_global"),
        (e0, "t_mod"),
        (text, "context_emb"),
        (hoi_text, "depth_context"),
    ]:
        _close(ours, fx[f"inter.full_t500.{name}"])
