"""The toy text and audio encoders: protocol shapes, determinism, and that they carry real information."""

from __future__ import annotations

import math

import pytest
import torch

from comfyui_cointeract.cointeract_core.model.config import PRESETS
from comfyui_cointeract.cointeract_core.pipeline.protocols import AudioEncoder, TextEncoder
from comfyui_cointeract.cointeract_core.toy import TOY_VOCABULARY, ToyAudioFeatures, ToyTextEncoder
from comfyui_cointeract.cointeract_core.toy.text import tokenize

SR = 16000


def _tone(seconds: float, f0: float = 150.0, amp: float = 0.3) -> torch.Tensor:
    t = torch.arange(int(seconds * SR)) / SR
    return amp * sum(torch.sin(2 * math.pi * k * f0 * t) / k for k in range(1, 6))


def test_text_encoder_follows_the_protocol_and_the_toy_preset():
    enc = ToyTextEncoder(text_dim=PRESETS["toy"].text_dim, max_length=PRESETS["toy"].text_len)
    assert isinstance(enc, TextEncoder)
    out = enc.encode(["a person picks up a red bottle, then shows it while talking", ""])
    assert [tuple(x.shape) for x in out] == [(14, 32), (1, 32)]  # 13 tokens + end of sequence; "" -> </s> only
    assert all(x.dtype == torch.float32 for x in out)


def test_text_encoder_is_deterministic_across_instances():
    a = ToyTextEncoder().encode(["a person turns a green ball in both hands"])[0]
    b = ToyTextEncoder().encode(["a person turns a green ball in both hands"])[0]
    assert torch.equal(a, b)
    assert not torch.equal(a, ToyTextEncoder(seed=1).encode(["a person turns a green ball in both hands"])[0])


def test_different_words_give_different_embeddings():
    enc = ToyTextEncoder()
    table = enc.table[: len(TOY_VOCABULARY)]
    cos = torch.nn.functional.cosine_similarity(table[:, None], table[None], dim=-1)
    assert (cos - torch.eye(len(table))).abs().max() < 0.9  # no two vocabulary words alike
    red, blue = enc.encode(["a person holds a red box", "a person holds a blue box"])
    differs = (red - blue).abs().amax(-1) > 1e-6
    assert differs.tolist() == [False, False, False, False, True, False, False]  # only the colour token


def test_word_order_and_unknown_words():
    enc = ToyTextEncoder()
    a, b = enc.encode(["red box", "box red"])
    assert not torch.allclose(a, b)  # the position code tells the order
    assert torch.allclose(a[0] - 0.5 * enc.positions[0], b[1] - 0.5 * enc.positions[1])  # same word, same vector
    ids = enc.token_ids("a zebra xylophone")
    assert ids[0] == TOY_VOCABULARY.index("a") and all(i > enc.eos for i in ids[1:3]) and ids[-1] == enc.eos
    assert enc.token_ids("a zebra xylophone") == ToyTextEncoder().token_ids("a zebra xylophone")
    assert tokenize("Blurry, worst quality") == ["blurry", ",", "worst", "quality"]


def test_text_encoder_truncates_and_refuses_bad_input():
    enc = ToyTextEncoder(max_length=8)
    assert enc.encode(["a " * 50])[0].shape == (8, 32)
    with pytest.raises(TypeError, match="list of prompts"):
        enc.encode("a person")
    with pytest.raises(ValueError, match="text_dim"):
        ToyTextEncoder(text_dim=7)


def test_audio_features_follow_the_protocol_and_wav2vec2_framing():
    feats = ToyAudioFeatures(feature_dim=PRESETS["toy"].audio_dim)
    assert isinstance(feats, AudioEncoder)
    assert (feats.sample_rate, feats.num_layers, feats.frame_rate) == (16000, 25, 50.0)
    h = feats.hidden_states(_tone(3.24))
    assert h.shape == (25, 161, 16) and h.dtype == torch.float32  # 3.24 s -> 161 frames, as wav2vec2
    assert feats.hidden_states(_tone(1.0)).shape[1] == 49  # (16000 - 400) // 320 + 1
    assert torch.equal(h, ToyAudioFeatures(16).hidden_states(_tone(3.24)))


def test_voiced_and_silent_audio_give_different_features():
    feats = ToyAudioFeatures()
    voiced = feats.base_features(_tone(1.0))
    silent = feats.base_features(torch.zeros(SR))
    noise = feats.base_features(0.05 * torch.randn(SR, generator=torch.Generator().manual_seed(0)))
    voicing, energy = -2, -3
    assert voiced[:, voicing].min() > 0.9 and silent[:, voicing].max() == 0.0 and noise[:, voicing].max() < 0.4
    assert voiced[:, energy].min() > silent[:, energy].max() + 1.0
    assert (voiced - noise).abs().amax() > 0.5  # a hiss is not a voice


def test_features_run_at_50_hz():
    """A tone switched on at 1.0 s turns voicing on at feature frame 50 (20 ms per frame)."""
    wave = torch.cat([torch.zeros(SR), _tone(1.0)])
    voicing = ToyAudioFeatures().base_features(wave)[:, -2]
    onset = int((voicing > 0.5).nonzero()[0])
    assert 48 <= onset <= 50  # frame n covers samples 320n .. 320n + 400


def test_layers_are_smoothings_and_slopes_of_the_raw_features():
    gate = torch.repeat_interleave(torch.tensor([1.0, 0.0, 1.0, 0.0]), SR // 2)  # on/off every 0.5 s
    wave = _tone(2.0) * gate
    feats = ToyAudioFeatures()
    h = feats.hidden_states(wave)
    assert torch.equal(h[0], feats.base_features(wave))
    variation = (h[:, 1:] - h[:, :-1]).abs().mean((1, 2))
    assert variation[12] < variation[1] < variation[0]  # wider windows are smoother
    assert torch.allclose(h[1, 5], h[0, 4:7].mean(0), atol=1e-6)  # layer 1: centred mean of 3 frames
    steady = feats.hidden_states(_tone(2.0))
    assert steady[13:, 20:-20].abs().max() < 0.05  # slopes vanish on a steady tone
    assert h[13:, 20:-20].abs().max() > 0.1  # but not where the sound switches on and off


def test_audio_features_refuse_bad_input():
    feats = ToyAudioFeatures()
    with pytest.raises(ValueError, match="mono"):
        feats.hidden_states(torch.zeros(2, SR))
    with pytest.raises(ValueError, match="shorter than one"):
        feats.hidden_states(torch.zeros(100))
    with pytest.raises(ValueError, match="feature_dim"):
        ToyAudioFeatures(feature_dim=3)
