"""Long-video pipeline on the tiny model with the lossless toy codec: chaining, audio windows, seeds, HOI preview."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from comfyui_cointeract.cointeract_core.model.config import PRESETS
from comfyui_cointeract.cointeract_core.model.dit import CoInteractDiT
from comfyui_cointeract.cointeract_core.pipeline.clips import VideoOptions, generate
from comfyui_cointeract.cointeract_core.pipeline.conditioning import Conditioning, clip_count, resample_features
from comfyui_cointeract.cointeract_core.pipeline.heatmaps import overlay_heatmaps
from comfyui_cointeract.cointeract_core.sampling.sampler import SamplerConfig
from comfyui_cointeract.cointeract_core.toy.codec import ToyCodec

CFG = dataclasses.replace(PRESETS["tiny_cointeract"], in_dim=12, out_dim=12, cond_dim=12)
FAST = SamplerConfig(steps=3, seed=11)


@pytest.fixture
def model(randomize) -> CoInteractDiT:
    return randomize(CoInteractDiT(CFG)).eval()


def _cond(audio_frames: int = 150, hoi: bool = True) -> Conditioning:
    gen = torch.Generator().manual_seed(3)
    codec = ToyCodec(1)
    img = lambda: codec.encode(torch.rand(1, 3, 1, 8, 16, generator=gen) * 2 - 1)  # noqa: E731
    txt = lambda: torch.randn(1, 5, CFG.text_dim, generator=gen)  # noqa: E731
    return Conditioning(
        person=img(),
        product=img(),
        product_scale=0.8,
        prompts=(txt(), txt()),
        negative=txt(),
        audio=torch.randn(1, 25, CFG.audio_dim, audio_frames, generator=gen),
        hoi_prompts=(txt(),) if hoi else None,
        hoi_negative=txt() if hoi else None,
    )


def test_two_clips_chain_motion_and_audio(model):
    cond, codec, seen = _cond(), ToyCodec(1), []
    original = model.forward
    model.forward = lambda *a, **k: (seen.append(k), original(*a, **k))[1]
    res = generate(model, codec, cond, FAST, VideoOptions())
    assert clip_count(150) == 2 and res.frames.shape == (160, 8, 16, 3) and res.seeds == [11, 12]
    assert res.motion_latents[0] is None
    expected = codec.encode(res.frames[80 - 73 : 80].permute(3, 0, 1, 2)[None] * 2 - 1)
    assert torch.allclose(res.motion_latents[1], expected, atol=1e-6)
    positive = [k for k in seen if k["audio"].abs().sum() > 0]
    assert torch.equal(positive[0]["audio"], cond.audio[..., :80])
    assert torch.equal(positive[-1]["audio"][..., :70], cond.audio[..., 80:150])  # advances 80, zero-padded
    assert positive[-1]["audio"][..., 70:].abs().sum() == 0
    assert torch.equal(positive[-1]["context"], cond.prompts[1]) and seen[-1]["motion"] is not None
    assert all(torch.equal(k["audio"], torch.zeros_like(k["audio"])) for k in seen if k not in positive)


def test_official_audio_stride_is_an_option(model):
    cond, seen = _cond(), []
    original = model.forward
    model.forward = lambda *a, **k: (seen.append(k["audio"]), original(*a, **k))[1]
    generate(model, ToyCodec(1), cond, FAST, VideoOptions(audio_stride=81))
    assert torch.equal(seen[-2][..., :69], cond.audio[..., 81:150])


def test_same_seed_same_frames_and_hoi_preview_leaves_rgb_equal(model):
    cond = _cond(90)
    a = generate(model, ToyCodec(1), cond, FAST, VideoOptions(max_clips=1))
    b = generate(model, ToyCodec(1), cond, FAST, VideoOptions(max_clips=1, hoi_preview=True, router_maps=True))
    assert torch.equal(a.frames, b.frames) and a.hoi_frames is None
    assert b.hoi_frames.shape == a.frames.shape and not torch.equal(b.hoi_frames, a.frames)
    assert b.router_maps.shape == (80, 4, 8, 2) and 0 <= b.router_maps.min() and b.router_maps.max() <= 1
    c = generate(model, ToyCodec(1), cond, dataclasses.replace(FAST, seed=12), VideoOptions(max_clips=1))
    assert not torch.equal(a.frames, c.frames)
    overlay = overlay_heatmaps(b.frames, b.router_maps)
    assert overlay.shape == b.frames.shape and 0 <= overlay.min() and overlay.max() <= 1


def test_seed_zero_reproduces_the_official_noise_draw(model):
    seen = []
    original = model.forward
    model.forward = lambda x, *a, **k: (seen.append(x.clone()), original(x, *a, **k))[1]
    generate(model, ToyCodec(1), _cond(80), SamplerConfig(steps=1, seed=0), VideoOptions())
    official = torch.randn(1, 12, 21, 8, 16, generator=torch.Generator("cpu").manual_seed(0))[:, :, 1:]
    assert torch.equal(seen[0], official)


def test_hoi_preview_needs_hoi_weights(randomize):
    model = randomize(CoInteractDiT(dataclasses.replace(CFG, hoi=None))).eval()
    with pytest.raises(ValueError, match="without HOI weights"):
        generate(model, ToyCodec(1), _cond(), FAST, VideoOptions(hoi_preview=True))


def test_feature_resampling_50_to_25_fps():
    hidden = torch.arange(161.0)[None, :, None].expand(25, 161, 3)
    out = resample_features(hidden, frame_rate=50.0)
    assert out.shape == (25, 3, 80)  # 3.24 s: 161 wav2vec frames -> 80 video frames
    assert out[0, 0, 0] == 0 and out[0, 0, -1] == 160  # align_corners keeps both ends
