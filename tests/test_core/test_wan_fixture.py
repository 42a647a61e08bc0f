"""Our DiT against a run of the Wan2.2 reference code (tests/fixtures/wan_s2v_tiny.safetensors)."""

from __future__ import annotations

import pytest
import torch

from comfyui_cointeract.cointeract_core.model.config import PRESETS
from comfyui_cointeract.cointeract_core.model.dit import CoInteractDiT
from comfyui_cointeract.cointeract_core.model.layout import SequenceLayout
from comfyui_cointeract.cointeract_core.model.rope import rope_frequencies

CASES = {"motion": True, "drop_motion": False}


def _model(fx: dict) -> CoInteractDiT:
    model = CoInteractDiT(PRESETS["tiny"]).eval()
    model.load_state_dict({k[len("param.") :]: v for k, v in fx.items() if k.startswith("param.")}, strict=True)
    return model


def _args(fx: dict, motion: bool, audio_scale: float = 1.0) -> dict:
    args = dict(
        x=fx["input.x"][None],
        timestep=fx["input.t"].float(),
        context=fx["input.context"][None],
        audio=fx["input.audio_input"] * audio_scale,
        person=fx["input.ref_latents"],
        pose=fx["input.cond_states"],
    )
    if motion:
        args["motion"] = fx["input.motion_latents"]
    return args


def _close(a: torch.Tensor, b: torch.Tensor, tol: float = 1e-4) -> None:
    err = (a.double() - b.double()).abs().max().item()
    assert err <= tol * max(b.double().std().item(), 1.0), f"max abs error {err}"


@pytest.mark.parametrize(
    "case,motion,audio_scale", [("motion", True, 1.0), ("drop_motion", False, 1.0), ("null_audio", True, 0.0)]
)
def test_outputs_match_reference(wan_fixture, case, motion, audio_scale):
    with torch.no_grad():
        out = _model(wan_fixture)(**_args(wan_fixture, motion, audio_scale)).velocity[0]
    _close(out, wan_fixture[f"output.{case}"])


def test_rope_positions_match_reference(wan_fixture):
    layout = SequenceLayout(frames=3, latent_hw=(8, 16), motion=True)
    assert torch.equal(layout.positions(), wan_fixture["inter.motion.rope_positions_thw"])


@pytest.mark.parametrize("case", CASES)
def test_rope_multipliers_match_reference(wan_fixture, case):
    layout = SequenceLayout(frames=3, latent_hw=(8, 16), motion=CASES[case])
    freqs = rope_frequencies(layout.positions(), head_dim=64)
    ref = wan_fixture[f"inter.{case}.rope_freqs_real"][0]
    assert torch.allclose(torch.view_as_real(freqs), ref, atol=1e-12)


@pytest.mark.parametrize("case", CASES)
def test_intermediates_match_reference(wan_fixture, case):
    model, seen = _model(wan_fixture), {}
    model.blocks[0].register_forward_pre_hook(lambda m, a: seen.__setitem__("block0.in", a[0]))
    for i, block in enumerate(model.blocks):
        block.register_forward_hook(lambda m, a, o, i=i: seen.__setitem__(f"block{i}.out", o[0]))
    residuals = []
    model.audio_injector.register_forward_hook(lambda m, a, o: residuals.append(o))
    args = _args(wan_fixture, CASES[case])
    with torch.no_grad():
        model(**args)
        e0 = model._time(args["timestep"])[1]
        local, glob = model.encode_audio(args["audio"], frames=3)
        text = model._text(args["context"])
    pre = f"inter.{case}."
    for name in ("block0.in", "block0.out", "block1.out"):
        _close(seen[name], wan_fixture[pre + name])
    for i, res in enumerate(residuals):
        after = seen[f"block{i}.out"].clone()
        after[:, : res.shape[1]] += res
        _close(after, wan_fixture[f"{pre}block{i}.after_audio"])
    _close(e0, wan_fixture[pre + "e0"])
    _close(text, wan_fixture[pre + "context_emb"])
    _close(local, wan_fixture[pre + "merged_audio_emb"])
    _close(glob, wan_fixture[pre + "audio_emb_global"])
