"""Toy bundle: one file round-trips the model (fp16 storage, zero tensors as shapes) and its encoders; damaged,
foreign and newer files are refused with messages that say what to do; the shipped bundle loads and generates."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from comfyui_cointeract.cointeract_core.model.config import PRESETS, MoEConfig
from comfyui_cointeract.cointeract_core.model.dit import CoInteractDiT
from comfyui_cointeract.cointeract_core.toy import ToyAudioFeatures, ToyCodec, ToyTextEncoder
from comfyui_cointeract.cointeract_core.toy.bundle import BundleError, bundle_info, is_bundle, load_bundle, save_bundle
from comfyui_cointeract.cointeract_core.weights.checkpoint import save_dit

SMALL = dataclasses.replace(  # over the lossless ToyCodec(8): 768 channels (the preset takes the 32-channel PCA)
    PRESETS["toy"], dim=32, ffn_dim=32, num_heads=2, num_layers=2, audio_inject_layers=(0, 1), moe=MoEConfig(8),
    in_dim=768, out_dim=768, cond_dim=768,
)  # fmt: skip
ASSETS = Path(__file__).resolve().parents[2] / "cointeract_core" / "toy" / "assets"


@pytest.fixture(scope="module")
def small_model() -> CoInteractDiT:
    torch.manual_seed(0)
    model = CoInteractDiT(SMALL)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn_like(p) * 0.02)
        model.frame_packer.proj_4x.weight.zero_()
    return model


def _encoders(seed: int = 3):
    return ToyCodec(8), ToyTextEncoder(SMALL.text_dim, SMALL.text_len, seed=seed), ToyAudioFeatures(SMALL.audio_dim)


@pytest.fixture(scope="module")
def bundle_path(small_model, tmp_path_factory) -> Path:
    return save_bundle(tmp_path_factory.mktemp("b") / "toy.safetensors", small_model, *_encoders())


def test_round_trip_restores_model_and_encoders(small_model, bundle_path):
    model, codec, text, audio = load_bundle(bundle_path)
    assert model.cfg == small_model.cfg and not model.training
    for key, value in small_model.state_dict().items():
        assert torch.equal(model.state_dict()[key], value.half().float()), key
    ref_codec, ref_text, ref_audio = _encoders()
    assert codec.spatial_factor == ref_codec.spatial_factor and audio.feature_dim == ref_audio.feature_dim
    assert torch.equal(text.table, ref_text.table) and text.seed == 3


def test_zero_tensors_are_stored_as_shapes(small_model, bundle_path):
    stored = 2 * sum(v.numel() for k, v in small_model.state_dict().items() if k != "frame_packer.proj_4x.weight")
    assert bundle_path.stat().st_size < stored + 100_000  # the 4x projection takes no bytes
    assert is_bundle(bundle_path) and bundle_info(bundle_path)["cointeract_bundle"] == "1"


def test_plain_dit_file_is_not_a_bundle(small_model, tmp_path):
    path = tmp_path / "dit.safetensors"
    save_dit(small_model, path)
    assert not is_bundle(path)
    with pytest.raises(BundleError, match="is a DiT checkpoint, not a toy bundle"):
        load_bundle(path)


def test_dit_loader_refuses_a_bundle_and_says_how_to_load_it(bundle_path, tmp_path):
    from comfyui_cointeract.cointeract_core.weights.checkpoint import load_dit

    with pytest.raises(ValueError, match="is a toy bundle .* Load it alone: `cointeract generate --bundle FILE`"):
        load_dit(bundle_path)
    plain = tmp_path / "dit.safetensors"
    save_dit(CoInteractDiT(dataclasses.replace(SMALL, moe=None, hoi=None)), plain)
    with pytest.raises(ValueError, match="is a toy bundle"):
        load_dit(plain, bundle_path)


def test_truncated_and_garbage_files_are_refused(bundle_path, tmp_path):
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(bundle_path.read_bytes()[: bundle_path.stat().st_size // 2])
    with pytest.raises(BundleError, match="damaged|truncated"):
        load_bundle(cut)
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a safetensors file at all")
    assert not is_bundle(junk)
    with pytest.raises(BundleError, match="not a readable safetensors file"):
        load_bundle(junk)
    with pytest.raises(BundleError, match="does not exist"):
        load_bundle(tmp_path / "missing.safetensors")


def test_newer_bundle_version_is_refused(small_model, tmp_path):
    path = save_bundle(tmp_path / "new.safetensors", small_model, *_encoders(), extra={"cointeract_bundle": "99"})
    with pytest.raises(BundleError, match="version-99 .*Update comfyui-cointeract"):
        load_bundle(path)


def test_encoders_must_fit_the_model(small_model, tmp_path):
    with pytest.raises(ValueError, match="do not fit the model"):
        save_bundle(tmp_path / "x.safetensors", small_model, ToyCodec(4), *_encoders()[1:])


def test_shipped_bundle_loads_and_generates():
    from comfyui_cointeract.cointeract_core.media import load_audio, load_image
    from comfyui_cointeract.cointeract_core.pipeline.build import InputOptions, build_conditioning
    from comfyui_cointeract.cointeract_core.pipeline.clips import VideoOptions, generate
    from comfyui_cointeract.cointeract_core.sampling.sampler import SamplerConfig

    model, codec, text, audio = load_bundle(ASSETS / "toy_bundle.safetensors")
    assert model.cfg.in_dim == codec.latent_channels == 32 and model.cfg.dim == PRESETS["toy"].dim
    assert (ASSETS / "toy_bundle.safetensors").stat().st_size < 12e6
    speech = load_audio(ASSETS / "speech.wav", sample_rate=16000)
    prompts = (ASSETS / "prompts.txt").read_text().splitlines()
    opts = InputOptions(height=64, width=64, person_fit="cover", product_margin=1.0, loudness_lufs=-23.0, max_clips=1)
    cond = build_conditioning(
        codec, text, audio, load_image(ASSETS / "person.png"), prompts, speech.waveform, 16000,
        product=load_image(ASSETS / "product.png"), opts=opts,
    )  # fmt: skip
    result = generate(model, codec, cond, SamplerConfig(steps=2, cfg=1.0, shift=5.0), VideoOptions(max_clips=1))
    assert result.frames.shape == (80, 64, 64, 3) and torch.isfinite(result.frames).all()


def test_pca_codec_round_trips_through_the_bundle(tmp_path):
    from comfyui_cointeract.cointeract_core.toy import fit_pca_codec

    gen = torch.Generator().manual_seed(0)
    videos = [torch.rand(1, 3, 9, 64, 64, generator=gen) * 2 - 1 for _ in range(2)]
    codec = fit_pca_codec(videos, channels=16)
    lat = codec.encode(videos[0])
    assert lat.shape == (1, 16, 3, 8, 8) and codec.decode(lat).shape == (1, 3, 9, 64, 64)
    again = codec.encode(codec.decode(lat))  # a projection (latent 0 loses its three unused frame slots)
    torch.testing.assert_close(again[:, :, 1:], lat[:, :, 1:], atol=1e-4, rtol=0)
    cfg = dataclasses.replace(SMALL, in_dim=16, out_dim=16, cond_dim=16)
    model = CoInteractDiT(cfg)
    path = save_bundle(tmp_path / "pca.safetensors", model, codec, *_encoders()[1:])
    loaded, codec2 = load_bundle(path)[:2]
    assert torch.equal(codec2.basis, codec.basis) and torch.equal(codec2.mean, codec.mean)
    assert set(loaded.state_dict()) == set(model.state_dict())
