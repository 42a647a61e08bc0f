"""Conditioning builder: official preprocessing defaults, prompts and HOI prefixes, audio windows, pose chunks."""

from __future__ import annotations

import logging
import math

import pytest
import torch

from comfyui_cointeract.cointeract_core.errors import UserError
from comfyui_cointeract.cointeract_core.pipeline.build import InputOptions, build_conditioning, frame_size, pose_latents
from comfyui_cointeract.cointeract_core.pipeline.conditioning import HOI_PREFIX
from comfyui_cointeract.cointeract_core.toy.audio import ToyAudioFeatures
from comfyui_cointeract.cointeract_core.toy.codec import ToyCodec
from comfyui_cointeract.cointeract_core.toy.text import ToyTextEncoder

OPTS = InputOptions(height=30, width=60)


def _speech(seconds: float) -> torch.Tensor:
    t = torch.arange(int(seconds * 16000)) / 16000
    return 0.3 * torch.sin(2 * math.pi * 200 * t) * (torch.sin(2 * math.pi * 3 * t) > 0)


class _Recorder(ToyTextEncoder):
    def encode(self, prompts):
        self.seen = list(prompts)
        return super().encode(prompts)


def test_builds_official_layout():
    text, codec = _Recorder(32), ToyCodec(2)
    cond = build_conditioning(
        codec,
        text,
        ToyAudioFeatures(16),
        torch.rand(50, 40, 3),
        ["one", "two"],
        _speech(4.0),
        16000,
        product=torch.rand(20, 20, 3),
        product_scale=0.7,
        hoi=True,
        opts=OPTS,
    )
    assert frame_size(OPTS, codec) == (32, 60)  # rounded up to multiples of stride 2 x patch 2
    assert cond.person.shape == (1, 48, 1, 16, 30) and cond.product.shape == cond.person.shape
    assert cond.audio.shape[:2] == (1, 25) and cond.audio.shape[-1] in (99, 100)
    assert len(cond.prompts) == 2 and len(cond.hoi_prompts) == 2
    assert text.seen[3] == HOI_PREFIX + "one" and text.seen[2].startswith("Blurry, worst quality")
    product = codec.decode(cond.product)[0, :, 0]  # product fitted with the 1/1.25 margin on black
    assert product[:, :2].max() == -1 and product[:, :, :5].max() == -1


def test_pose_chunks_pad_black_and_drop_the_repeated_first_latent():
    codec = ToyCodec(2)
    frames = torch.randint(0, 255, (100, 32, 64, 3), dtype=torch.uint8)
    chunks = pose_latents(codec, frames, n_clips=2, hw=(32, 64))
    assert [c.shape for c in chunks] == [(1, 48, 20, 16, 32)] * 2
    second = codec.decode(torch.cat([codec.encode(torch.zeros(1, 3, 1, 32, 64)), chunks[1]], dim=2))[0, :, 1:]
    assert torch.allclose(second[:, :20], frames[80:].permute(3, 0, 1, 2).float() / 255 * 2 - 1, atol=1e-5)
    assert second[:, 20:].max() == -1  # past the end of the pose video: black


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(prompts=[""]), "prompt is empty"),
        (dict(waveform=torch.zeros(16000)), "silent"),
        (dict(product_scale=0.0), "product scale"),
        (dict(opts=InputOptions(height=8, width=64)), "too small"),
        (dict(product=torch.rand(1, 1, 3)), r"product image is 1x1 \(WxH\); it must be at least 16x16"),
        (dict(product=torch.rand(300, 15, 3)), "product image is 15x300"),
        (dict(waveform=_speech(0.04)), r"the speech is 0.04 s; at least 0.10 s is needed"),
    ],
)
def test_bad_inputs(kwargs, match):
    args = dict(prompts=["hello"], waveform=_speech(1.0), opts=OPTS)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        build_conditioning(
            ToyCodec(2),
            ToyTextEncoder(32),
            ToyAudioFeatures(16),
            torch.rand(16, 16, 3),
            args.pop("prompts"),
            args.pop("waveform"),
            16000,
            **args,
        )


def test_a_tiny_person_image_is_refused_naming_the_minimum():
    with pytest.raises(UserError, match=r"person image is 1x1 \(WxH\); it must be at least 16x16 pixels"):
        build_conditioning(
            ToyCodec(2), ToyTextEncoder(32), ToyAudioFeatures(16), torch.rand(1, 1, 3), ["hi"], _speech(1.0), 16000,
            opts=OPTS,
        )  # fmt: skip


def test_resizes_are_logged_with_before_and_after(caplog):
    with caplog.at_level(logging.INFO):
        build_conditioning(
            ToyCodec(2), ToyTextEncoder(32), ToyAudioFeatures(16), torch.rand(3000, 200, 3), ["hi"], _speech(1.0),
            16000, product=torch.rand(40, 30, 3), opts=OPTS,
        )  # fmt: skip
    lines = [r.getMessage() for r in caplog.records]
    assert sum("person image 200x3000 (WxH) -> " in m and "stretched" in m for m in lines) == 1
    assert sum(m.startswith("product image 30x40 (WxH) -> ") for m in lines) == 1
