"""CFG in the clip pipeline: one DiT call a step at cfg 1, the two branches as one batch of 2, lcm's seeded noise."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from comfyui_cointeract.cointeract_core.model.config import PRESETS
from comfyui_cointeract.cointeract_core.model.dit import CoInteractDiT
from comfyui_cointeract.cointeract_core.model.layout import SequenceLayout
from comfyui_cointeract.cointeract_core.pipeline import guidance
from comfyui_cointeract.cointeract_core.pipeline.clips import VideoOptions, generate
from comfyui_cointeract.cointeract_core.pipeline.conditioning import Conditioning
from comfyui_cointeract.cointeract_core.pipeline.noise import clip_renoise
from comfyui_cointeract.cointeract_core.sampling.sampler import SamplerConfig
from comfyui_cointeract.cointeract_core.toy.codec import ToyCodec

CFG = dataclasses.replace(PRESETS["tiny_cointeract"], in_dim=12, out_dim=12, cond_dim=12)


@pytest.fixture(scope="module")
def model() -> CoInteractDiT:
    from .conftest import randomize

    return randomize(CoInteractDiT(CFG)).eval()


def _cond(audio_frames: int = 90) -> Conditioning:
    gen = torch.Generator().manual_seed(3)
    codec = ToyCodec(1)
    img = lambda: codec.encode(torch.rand(1, 3, 1, 8, 16, generator=gen) * 2 - 1)  # noqa: E731
    txt = lambda n: torch.randn(1, n, CFG.text_dim, generator=gen)  # noqa: E731
    return Conditioning(
        person=img(), product=img(), product_scale=0.8, prompts=(txt(5), txt(7)), negative=txt(3),
        audio=torch.randn(1, 25, CFG.audio_dim, audio_frames, generator=gen), hoi_prompts=(txt(6),),
        hoi_negative=txt(4),
    )  # fmt: skip


def _counted(model: CoInteractDiT, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Batch sizes of every DiT forward."""
    batches, original = [], model.forward
    monkeypatch.setattr(model, "forward", lambda x, *a, **k: (batches.append(x.shape[0]), original(x, *a, **k))[1])
    return batches


@pytest.mark.parametrize(
    "cfg,batch,expected", [(1.0, "off", [1]), (1.0, "on", [1]), (7.0, "off", [1, 1]), (7.0, "on", [2])]
)
def test_dit_calls_per_step(model, monkeypatch, cfg, batch, expected):
    batches = _counted(model, monkeypatch)
    config = SamplerConfig(steps=3, cfg=cfg, cfg_batch=batch)
    generate(model, ToyCodec(1), _cond(), config, VideoOptions(max_clips=1))
    assert batches == expected * 3


def test_batched_cfg_equals_two_passes(model):
    """Two clips (motion from clip 1), product, HOI preview and router maps; contexts of different lengths."""
    cond, opts = _cond(150), VideoOptions(hoi_preview=True, router_maps=True)
    runs = {
        mode: generate(model, ToyCodec(1), cond, SamplerConfig(steps=3, cfg_batch=mode), opts) for mode in ("off", "on")
    }
    off, on = runs["off"], runs["on"]
    for a, b in [*zip(off.latents, on.latents), (off.hoi_frames, on.hoi_frames), (off.router_maps, on.router_maps)]:
        torch.testing.assert_close(b, a, rtol=0, atol=1e-4 * float(a.abs().max()))


def test_cpu_auto_stays_two_passes_and_cuda_auto_asks_the_planner(model, monkeypatch):
    layout = SequenceLayout(frames=20, latent_hw=(104, 60), product=True, motion=True)
    need = 2 * guidance.activation_bytes(model.cfg, layout) + guidance.DEFAULT_RESERVE
    assert not guidance.use_batched_cfg("auto", model, layout, "cpu")
    assert guidance.use_batched_cfg("on", model, layout, "cpu") and not guidance.use_batched_cfg(
        "off", model, layout, "cuda"
    )
    monkeypatch.setattr(guidance, "device_free_bytes", lambda device: need)
    assert guidance.use_batched_cfg("auto", model, layout, "cuda")
    monkeypatch.setattr(guidance, "device_free_bytes", lambda device: need - 1)
    assert not guidance.use_batched_cfg("auto", model, layout, "cuda")


def test_stack_branches_pads_text_and_refuses_different_settings():
    pos = dict(context=torch.ones(1, 5, 4), audio=torch.ones(1, 2), product_scale=0.8, person=torch.ones(1, 3))
    neg = dict(pos, context=torch.ones(1, 3, 4), audio=torch.zeros(1, 2))
    both = guidance.stack_branches(pos, neg)
    assert both["context"].shape == (2, 5, 4) and both["context"][1, 3:].abs().sum() == 0
    assert both["person"].shape == (2, 3) and both["product_scale"] == 0.8
    with pytest.raises(ValueError, match="differ in 'product_scale'"):
        guidance.stack_branches(pos, dict(neg, product_scale=1.0))


def test_lcm_noise_is_seeded_and_leaves_rgb_equal_with_the_hoi_preview(model):
    cond, cfg = _cond(150), SamplerConfig(steps=3, shift=5.0, cfg=1.0, sampler="lcm", seed=5)
    a = generate(model, ToyCodec(1), cond, cfg, VideoOptions())
    b = generate(model, ToyCodec(1), cond, cfg, VideoOptions(hoi_preview=True))
    c = generate(model, ToyCodec(1), cond, dataclasses.replace(cfg, seed=6), VideoOptions(max_clips=1))
    assert torch.equal(a.frames, b.frames) and not torch.equal(a.frames[:80], c.frames)


def test_clip_renoise_streams():
    state = torch.zeros(1, 4, 10, 2, 3)  # RGB frames 0..4, HOI frames 5..9
    with_hoi, rgb_only, again = clip_renoise(5, 5)(state), clip_renoise(5, 5)(state[:, :, :5]), clip_renoise(5, 5)
    assert torch.equal(with_hoi[:, :, :5], rgb_only) and not torch.equal(with_hoi[:, :, 5:], rgb_only)
    assert torch.equal(again(state), with_hoi) and not torch.equal(again(state), with_hoi)  # a stream moves on
    assert not torch.equal(clip_renoise(6, 5)(state), with_hoi)  # clip r uses seed + r
