"""Standalone encoders: Wan VAE (diffusers), umT5 (transformers), wav2vec2 (transformers) — tiny, random, offline.

Synthetic state dicts in the on-disk key names of the real files (Wan2.1_VAE.pth, ComfyUI's wan_2.1_vae /
umt5_xxl fp16 + scaled fp8 / audio_encoders wav2vec2, Wan's umt5 .pth, old HF wav2vec2) are written to disk
and loaded through the same `from_file` paths as the real files; the test-side renamings are written by hand
from the module trees, and the VAE one is checked against diffusers' own single-file converter.
"""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

import pytest
import torch

from comfyui_cointeract.cointeract_core.encoders import umt5, wan_vae, wav2vec
from comfyui_cointeract.cointeract_core.model.config import PRESETS
from comfyui_cointeract.cointeract_core.pipeline.protocols import AudioEncoder, TextEncoder, VideoVAE
from comfyui_cointeract.cointeract_core.weights.safetensors_io import write_safetensors

pytest.importorskip("diffusers")
pytest.importorskip("transformers")

SENTENCES = ["a woman holds a red bottle and talks", "the man shows a phone to the camera", "hello world",
             "Blurry, worst quality, static frame", "she smiles and points at the box"] * 4  # fmt: skip


def video(t: int = 5, h: int = 16, w: int = 24, seed: int = 0) -> torch.Tensor:
    return torch.rand(1, 3, t, h, w, generator=torch.Generator().manual_seed(seed)) * 2 - 1


# ---------------------------------------------------------------------------------------------- Wan VAE

RESNET_TO_WAN = {"norm1.gamma": "residual.0.gamma", "conv1.": "residual.2.", "norm2.gamma": "residual.3.gamma",
                 "conv2.": "residual.6.", "conv_shortcut.": "shortcut."}  # fmt: skip


def vae_to_wan_names(sd: dict, r: int) -> dict:
    """diffusers AutoencoderKLWan keys -> Wan's vae2_1.py names, written from Wan's module tree (by hand)."""
    out = {}
    for key, v in sd.items():
        k = key.replace("post_quant_conv.", "conv2.").replace("quant_conv.", "conv1.")
        k = k.replace(".conv_in.", ".conv1.").replace(".norm_out.", ".head.0.").replace(".conv_out.", ".head.2.")
        k = k.replace("mid_block.attentions.0.", "middle.1.").replace("encoder.down_blocks.", "encoder.downsamples.")
        k = re.sub(r"mid_block\.resnets\.(\d)\.", lambda m: f"middle.{2 * int(m[1])}.", k)
        k = re.sub(r"up_blocks\.(\d+)\.resnets\.(\d+)\.", lambda m: f"upsamples.{int(m[1]) * (r + 2) + int(m[2])}.", k)
        k = re.sub(r"up_blocks\.(\d+)\.upsamplers\.0\.", lambda m: f"upsamples.{int(m[1]) * (r + 2) + r + 1}.", k)
        for new, old in RESNET_TO_WAN.items():
            k = re.sub(rf"(\.(?:downsamples|upsamples|middle)\.\d+\.){re.escape(new)}", rf"\g<1>{old}", k)
        out[k] = v
    return out


@pytest.fixture(scope="module")
def tiny_vae() -> wan_vae.WanVAE:
    return wan_vae.WanVAE.from_config(seed=0)


def test_vae_shapes_range_and_protocol(tiny_vae: wan_vae.WanVAE) -> None:
    assert isinstance(tiny_vae, VideoVAE)
    assert (tiny_vae.latent_channels, tiny_vae.spatial_factor, tiny_vae.temporal_factor) == (16, 8, 4)
    z = tiny_vae.encode(video(9))
    assert z.shape == (1, 16, 3, 2, 3) and z.dtype == torch.float32
    out = tiny_vae.decode(z)
    assert out.shape == (1, 3, 9, 16, 24) and out.min() >= -1 and out.max() <= 1
    with pytest.raises(ValueError, match="1 \\+ 4k frames"):
        tiny_vae.encode(video(8))


def test_vae_latents_are_the_normalised_posterior_mean(tiny_vae: wan_vae.WanVAE) -> None:
    cfg, x = tiny_vae.model.config, video(5)
    mean, std = (torch.tensor(v).view(1, -1, 1, 1, 1) for v in (cfg.latents_mean, cfg.latents_std))
    with torch.no_grad():
        mu = tiny_vae.model.encode(x).latent_dist.mean
        z = tiny_vae.encode(x)
        torch.testing.assert_close(z, (mu - mean) / std)
        torch.testing.assert_close(tiny_vae.decode(z), tiny_vae.model.decode(z * std + mean).sample.clamp(-1, 1))


@pytest.mark.parametrize("meta", [True, False], ids=["full-size-meta", "narrow"])
def test_vae_key_mapping_equals_diffusers_single_file_converter(meta: bool) -> None:
    from diffusers import AutoencoderKLWan
    from diffusers.loaders.single_file_utils import convert_wan_vae_to_diffusers

    with torch.device("meta" if meta else "cpu"):  # full-size Wan 2.1 layout / same layout, 4 base channels
        model = AutoencoderKLWan() if meta else AutoencoderKLWan(base_dim=4)
    sd = model.state_dict()
    original = vae_to_wan_names(sd, r=2)
    for key in ("encoder.downsamples.3.shortcut.weight", "encoder.downsamples.5.time_conv.weight",
                "decoder.upsamples.3.time_conv.weight", "decoder.upsamples.4.shortcut.weight",
                "decoder.upsamples.11.resample.1.weight", "decoder.head.2.weight", "conv1.weight"):  # fmt: skip
        assert key in original, key  # module positions read off Wan's Encoder3d / Decoder3d
    assert "decoder.upsamples.11.time_conv.weight" not in original  # the last upsample is 2-D only
    reference = convert_wan_vae_to_diffusers(dict(original))
    assert set(reference) == set(sd)  # the hand-written renaming is the inverse of diffusers' own converter
    ours = wan_vae.wan_vae_to_diffusers(original)
    assert set(ours) == set(reference) and all(ours[k] is reference[k] for k in ours)
    assert len(sd) == (194 if meta else len(sd))
    cfg = wan_vae.wan_vae_config_from_state_dict(original)
    assert cfg["dim_mult"] == [1, 2, 4, 4] and cfg["num_res_blocks"] == 2
    assert cfg["temperal_downsample"] == [False, True, True] and cfg["z_dim"] == 16


def test_vae_loads_pth_comfy_safetensors_and_diffusers_folder(tiny_vae: wan_vae.WanVAE, tmp_path: Path) -> None:
    sd = tiny_vae.model.state_dict()
    original = vae_to_wan_names(sd, r=wan_vae.TINY_VAE_CONFIG["num_res_blocks"])  # 1 block: not the real layout
    torch.save(original, tmp_path / "Wan2.1_VAE.pth")
    write_safetensors(tmp_path / "wan_2.1_vae.safetensors", original)
    write_safetensors(
        tmp_path / "vae_diffusers_names.safetensors", {f"first_stage_model.{k}": v for k, v in sd.items()}
    )
    tiny_vae.model.save_pretrained(tmp_path / "diffusers_folder")
    for name in ("Wan2.1_VAE.pth", "wan_2.1_vae.safetensors", "diffusers_folder"):
        loaded = wan_vae.WanVAE.from_file(tmp_path / name).model.state_dict()
        assert loaded.keys() == sd.keys() and all(torch.equal(loaded[k], sd[k]) for k in sd), name
    x = video(5, 8, 8)
    z = tiny_vae.encode(x)
    vae = wan_vae.WanVAE.from_file(tmp_path / "wan_2.1_vae.safetensors")
    assert torch.equal(vae.encode(x), z) and torch.equal(vae.decode(z), tiny_vae.decode(z))
    with pytest.raises(ValueError, match="do not fit"):  # diffusers names, no config.json: the Wan 2.1 default size
        wan_vae.WanVAE.from_file(tmp_path / "vae_diffusers_names.safetensors")
    assert vae.mean.flatten()[[0, 7, 15]].tolist() == pytest.approx([-0.7571, 1.5508, -0.2921])  # Wan's constants
    assert vae.std.flatten()[[0, 8, 15]].tolist() == pytest.approx([2.8184, 3.2687, 1.9160])
    bf16 = wan_vae.WanVAE.from_file(tmp_path / "wan_2.1_vae.safetensors", dtype=torch.bfloat16)
    assert bf16.dtype == torch.bfloat16 and bf16.encode(x).dtype == torch.float32


def test_vae_tiling_is_used_only_above_the_tile(tiny_vae: wan_vae.WanVAE) -> None:
    z = torch.randn(1, 16, 1, 4, 4, generator=torch.Generator().manual_seed(0))  # one 32x32 frame
    plain = tiny_vae.decode(z)
    try:
        tiny_vae.set_tiling(wan_vae.Tiling(32, 32, 16, 16))
        assert torch.equal(tiny_vae.decode(z), plain)
        tiny_vae.set_tiling(wan_vae.Tiling(24, 24, 16, 16))
        tiled = tiny_vae.decode(z)
        assert tiled.shape == plain.shape and torch.isfinite(tiled).all() and not torch.equal(tiled, plain)
    finally:
        tiny_vae.set_tiling(None)
    assert wan_vae.Tiling.official() == wan_vae.Tiling(240, 416, 120, 208)


# ---------------------------------------------------------------------------------------------- errors


def tiny_dit_state() -> dict[str, torch.Tensor]:
    from comfyui_cointeract.cointeract_core.model.dit import CoInteractDiT

    with torch.device("meta"):
        shapes = {k: v.shape for k, v in CoInteractDiT(PRESETS["tiny"]).state_dict().items()}
    return {k: torch.zeros(s) for k, s in shapes.items()}


def test_wrong_files_are_named(tmp_path: Path) -> None:
    write_safetensors(
        tmp_path / "dit.safetensors", {f"model.diffusion_model.{k}": v for k, v in tiny_dit_state().items()}
    )
    write_safetensors(
        tmp_path / "t5.safetensors", {"encoder.block.0.layer.0.SelfAttention.q.weight": torch.zeros(2, 2)}
    )
    write_safetensors(tmp_path / "vae.safetensors", {"decoder.middle.0.residual.0.gamma": torch.zeros(2, 1, 1, 1)})
    with pytest.raises(ValueError, match="DiT.*Wan2.2-S2V"):
        wan_vae.WanVAE.from_file(tmp_path / "dit.safetensors")
    with pytest.raises(ValueError, match="T5 / umT5 text encoder"):
        wan_vae.WanVAE.from_file(tmp_path / "t5.safetensors")
    with pytest.raises(ValueError, match="Wan 2.1 VAE"):
        umt5.UMT5TextEncoder.from_file(tmp_path / "vae.safetensors")
    with pytest.raises(ValueError, match="Wan 2.1 VAE"):
        wav2vec.Wav2Vec2Features.from_file(tmp_path / "vae.safetensors")
    with pytest.raises(FileNotFoundError, match="no such file"):
        wan_vae.WanVAE.from_file(tmp_path / "missing.pth")
    torch.save({"weights": io.BytesIO(b"x")}, tmp_path / "code.pth")  # not loadable with weights_only=True
    with pytest.raises(ValueError, match="weights-only"):
        wan_vae.WanVAE.from_file(tmp_path / "code.pth")


# ---------------------------------------------------------------------------------------------- umT5


@pytest.fixture(scope="module")
def spiece() -> bytes:
    """A tiny SentencePiece unigram model with T5's special ids (pad 0, </s> 1, <unk> 2), trained offline."""
    sentencepiece = pytest.importorskip("sentencepiece")
    buf = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(SENTENCES), model_writer=buf, vocab_size=60, model_type="unigram", pad_id=0,
        eos_id=1, unk_id=2, bos_id=-1, character_coverage=1.0, hard_vocab_limit=False, minloglevel=2,
    )  # fmt: skip
    return buf.getvalue()


@pytest.fixture(scope="module")
def tokenizer_dir(spiece: bytes, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same vocabulary as a transformers tokenizer folder (tokenizer.json), as google/umt5-xxl ships one."""
    import sentencepiece
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    sp = sentencepiece.SentencePieceProcessor(model_proto=spiece)
    tok = Tokenizer(models.Unigram([(sp.id_to_piece(i), sp.get_score(i)) for i in range(sp.get_piece_size())], 2))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="always")
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    tok.decoder = decoders.Metaspace()
    folder = tmp_path_factory.mktemp("umt5_tokenizer")
    PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="</s>", pad_token="<pad>", unk_token="<unk>"
    ).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def tiny_t5(tokenizer_dir: Path) -> umt5.UMT5TextEncoder:
    enc = umt5.UMT5TextEncoder.from_config(None, tokenizer_dir, seed=0)
    with torch.no_grad():  # layer norms away from 1 so that a misplaced norm weight shows
        for name, p in enc.model.named_parameters():
            if name.endswith("layer_norm.weight"):
                p.add_(0.3 * torch.randn_like(p))
    return enc


PROMPTS = ["a woman  holds\ta red bottle ", "hello world &amp;amp; the box", "zebra " * 600]


def test_prompt_cleaning_and_tokenizers(spiece: bytes, tokenizer_dir: Path) -> None:
    assert umt5.clean_prompt("  a \n b\t\tc  ") == "a b c"
    assert umt5.clean_prompt("x &amp;amp; y") == "x & y" and umt5.clean_prompt("\u201cok\u2019") == "\"ok'"
    sp, hf = umt5._SentencePiece(spiece), umt5._Transformers(tokenizer_dir)
    for prompt in (umt5.clean_prompt(p) for p in PROMPTS):
        ids = sp(prompt, 512)
        assert ids == hf(prompt, 512) and ids[-1] == 1 and len(ids) <= 512
    assert len(sp(umt5.clean_prompt(PROMPTS[2]), 512)) == 512  # truncated, </s> kept


def test_umt5_encode_trims_and_ignores_padding(tiny_t5: umt5.UMT5TextEncoder) -> None:
    assert isinstance(tiny_t5, TextEncoder) and tiny_t5.text_dim == 32
    prompts = [*PROMPTS[:2], "zebra " * 30]
    out, ids = tiny_t5.encode(prompts), tiny_t5.tokenize(prompts)
    assert [o.shape for o in out] == [(len(i), 32) for i in ids] and len({len(i) for i in ids}) == 3
    assert tiny_t5.encode([]) == [] and len(tiny_t5.tokenize(PROMPTS[2:])[0]) == 512
    for prompt, emb, tokens in zip(prompts, out, ids):
        alone = tiny_t5.encode([prompt])[0]
        torch.testing.assert_close(emb, alone, atol=1e-5, rtol=1e-5)  # batch padding is masked out
        direct = tiny_t5.model(input_ids=torch.tensor([tokens])).last_hidden_state[0]
        torch.testing.assert_close(alone, direct, atol=1e-5, rtol=1e-5)


WAN_T5_NAMES = [("layer.0.layer_norm.weight", "norm1.weight"), ("layer.0.SelfAttention.relative_attention_bias.weight",
                "pos_embedding.embedding.weight"), ("layer.0.SelfAttention.", "attn."), ("layer.1.layer_norm.weight",
                "norm2.weight"), ("layer.1.DenseReluDense.wi_0.", "ffn.gate.0."), ("layer.1.DenseReluDense.wi_1.",
                "ffn.fc1."), ("layer.1.DenseReluDense.wo.", "ffn.fc2.")]  # fmt: skip


def t5_to_wan_names(sd: dict) -> dict:
    """transformers umT5 encoder keys -> Wan's wan/modules/t5.py T5Encoder names (by hand)."""
    out = {"token_embedding.weight": sd["shared.weight"], "norm.weight": sd["encoder.final_layer_norm.weight"]}
    for key, v in sd.items():
        m = re.match(r"^encoder\.block\.(\d+)\.(.*)$", key)
        if m:
            hf, wan = next(pair for pair in WAN_T5_NAMES if m[2].startswith(pair[0]))
            out[f"blocks.{m[1]}.{wan}{m[2][len(hf) :]}"] = v
    return out


def fp8_scaled(sd: dict) -> dict:
    """ComfyUI's scaled fp8 layout: fp8 linear weights + float32 `.scale_weight`, a `scaled_fp8` marker."""
    out = {"scaled_fp8": torch.empty(0, dtype=torch.float8_e4m3fn)}
    for key, v in sd.items():
        if v.ndim == 2 and ("SelfAttention." in key or "DenseReluDense." in key) and "relative" not in key:
            scale = v.abs().max() / 448.0
            out[key], out[key.replace(".weight", ".scale_weight")] = (v / scale).to(torch.float8_e4m3fn), scale
        else:
            out[key] = v.half()
    return out


def test_umt5_loads_comfy_wan_and_hf_files(tiny_t5: umt5.UMT5TextEncoder, spiece: bytes, tokenizer_dir: Path,
                                           tmp_path: Path) -> None:  # fmt: skip
    sd = {k: v for k, v in tiny_t5.model.state_dict().items() if k != "encoder.embed_tokens.weight"}
    spm_tensor = torch.frombuffer(bytearray(spiece), dtype=torch.uint8)
    write_safetensors(tmp_path / "umt5_xxl_fp32.safetensors", {**sd, "spiece_model": spm_tensor})
    torch.save(t5_to_wan_names(sd), tmp_path / "models_t5_umt5-xxl-enc-bf16.pth")
    tiny_t5.model.save_pretrained(tmp_path / "hf")
    for name in tokenizer_dir.iterdir():
        (tmp_path / "hf" / name.name).write_bytes(name.read_bytes())
    (tmp_path / "spm_only").mkdir()
    (tmp_path / "spm_only" / "spiece.model").write_bytes(spiece)  # read with sentencepiece itself
    expected = tiny_t5.encode(PROMPTS[:2])
    for name, tok in (("umt5_xxl_fp32.safetensors", None), ("models_t5_umt5-xxl-enc-bf16.pth", tokenizer_dir),
                      ("models_t5_umt5-xxl-enc-bf16.pth", tmp_path / "spm_only"), ("hf", None)):  # fmt: skip
        enc = umt5.UMT5TextEncoder.from_file(tmp_path / name, tokenizer=tok, dtype=torch.float32)
        loaded = enc.model.state_dict()
        assert all(torch.equal(loaded[k], v) for k, v in sd.items()), name
        assert enc.model.encoder.embed_tokens.weight is enc.model.shared.weight  # still tied
        assert all(torch.equal(a, b) for a, b in zip(enc.encode(PROMPTS[:2]), expected)), name
    assert set(umt5.wan_t5_to_hf(t5_to_wan_names(sd))) == set(sd)
    with pytest.raises(ValueError, match="no tokenizer"):
        umt5.UMT5TextEncoder.from_file(tmp_path / "models_t5_umt5-xxl-enc-bf16.pth")


def test_umt5_scaled_fp8_is_dequantised(tiny_t5: umt5.UMT5TextEncoder, tokenizer_dir: Path, tmp_path: Path) -> None:
    sd = {k: v for k, v in tiny_t5.model.state_dict().items() if k != "encoder.embed_tokens.weight"}
    scaled = fp8_scaled(sd)
    write_safetensors(tmp_path / "umt5_xxl_fp8_e4m3fn_scaled.safetensors", scaled)
    path = tmp_path / "umt5_xxl_fp8_e4m3fn_scaled.safetensors"
    enc = umt5.UMT5TextEncoder.from_file(path, tokenizer=tokenizer_dir, dtype=torch.float32)
    loaded = enc.model.state_dict()
    key = "encoder.block.1.layer.1.DenseReluDense.wo.weight"
    assert torch.equal(loaded[key], scaled[key].float() * scaled[key.replace(".weight", ".scale_weight")])
    assert torch.equal(loaded["shared.weight"], sd["shared.weight"].half().float())
    rel = (enc.encode(PROMPTS[:1])[0] - tiny_t5.encode(PROMPTS[:1])[0]).norm() / tiny_t5.encode(PROMPTS[:1])[0].norm()
    assert rel < 0.1  # fp8 rounding only


# ---------------------------------------------------------------------------------------------- wav2vec2

W2V_64 = {**wav2vec.TINY_WAV2VEC2_CONFIG, "hidden_size": 64, "num_attention_heads": 1}  # inferable from weights


def speech(seconds: float = 0.5, seed: int = 0) -> torch.Tensor:
    return 0.3 * torch.randn(int(16000 * seconds), generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def tiny_w2v() -> wav2vec.Wav2Vec2Features:
    return wav2vec.Wav2Vec2Features.from_config(W2V_64, seed=0)


def test_wav2vec_hidden_states_are_layer_inputs_and_final_norm(tiny_w2v: wav2vec.Wav2Vec2Features) -> None:
    assert isinstance(tiny_w2v, AudioEncoder) and (tiny_w2v.num_layers, tiny_w2v.feature_dim) == (3, 64)
    seen: dict[str, torch.Tensor] = {}
    layers = tiny_w2v.model.encoder.layers

    def keep(name: str, value: torch.Tensor | tuple) -> None:
        seen[name] = value[0] if isinstance(value, tuple) else value

    hooks = [
        layers[0].register_forward_pre_hook(lambda m, a: keep("in0", a)),
        layers[1].register_forward_pre_hook(lambda m, a: keep("in1", a)),
        layers[-1].register_forward_hook(lambda m, a, o: keep("out", o)),
    ]
    try:
        h = tiny_w2v.hidden_states(speech())
    finally:
        for hook in hooks:
            hook.remove()
    assert h.shape == (3, tiny_w2v.num_frames(8000), 64) and h.shape[1] == 799
    assert torch.equal(h[0], seen["in0"][0]) and torch.equal(h[1], seen["in1"][0])
    torch.testing.assert_close(h[2], tiny_w2v.model.encoder.layer_norm(seen["out"])[0])  # after the final LayerNorm
    assert not torch.allclose(h[2], seen["out"][0])  # (transformers 5's own hidden_states[-1] is this one)


def test_wav2vec_normalisation(tiny_w2v: wav2vec.Wav2Vec2Features) -> None:
    from transformers import Wav2Vec2FeatureExtractor

    x = speech() + 0.2
    reference = Wav2Vec2FeatureExtractor(do_normalize=True)(x.numpy(), sampling_rate=16000).input_values[0]
    torch.testing.assert_close(wav2vec.normalize_waveform(x), torch.as_tensor(reference), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(tiny_w2v.hidden_states(x), tiny_w2v.hidden_states(3 * x - 1), atol=1e-4, rtol=1e-4)
    with pytest.raises(ValueError, match="mono"):
        tiny_w2v.hidden_states(torch.stack([x, x]))
    with pytest.raises(ValueError, match="too short"):
        tiny_w2v.hidden_states(torch.zeros(10))


def test_wav2vec_loads_comfy_and_old_hf_names(tiny_w2v: wav2vec.Wav2Vec2Features, tmp_path: Path) -> None:
    sd = tiny_w2v.model.state_dict()
    assert "encoder.pos_conv_embed.conv.parametrizations.weight.original0" in sd  # ComfyUI's names too
    write_safetensors(tmp_path / "wav2vec2_tiny_fp32.safetensors", sd)  # ComfyUI audio_encoders: no config
    old = {f"wav2vec2.{k}".replace(".parametrizations.weight.original0", ".weight_g").replace(
        ".parametrizations.weight.original1", ".weight_v"): v for k, v in sd.items()}  # fmt: skip
    old.update({"lm_head.weight": torch.zeros(5, 64), "lm_head.bias": torch.zeros(5)})  # Wav2Vec2ForCTC
    (tmp_path / "hf").mkdir()
    shards = {"pytorch_model-00001-of-00002.bin": dict(list(old.items())[::2]),
              "pytorch_model-00002-of-00002.bin": dict(list(old.items())[1::2])}  # fmt: skip
    for name, part in shards.items():
        torch.save(part, tmp_path / "hf" / name)
    weight_map = {k: name for name, part in shards.items() for k in part}
    (tmp_path / "hf" / "pytorch_model.bin.index.json").write_text(json.dumps({"weight_map": weight_map}))
    (tmp_path / "hf" / "config.json").write_text(json.dumps(tiny_w2v.model.config.to_dict()))
    (tmp_path / "hf" / "preprocessor_config.json").write_text(json.dumps({"do_normalize": True}))
    x, expected = speech(), tiny_w2v.hidden_states(speech())
    for name in ("wav2vec2_tiny_fp32.safetensors", "hf"):
        assert torch.equal(wav2vec.Wav2Vec2Features.from_file(tmp_path / name).hidden_states(x), expected), name
    inferred = wav2vec.wav2vec2_config_from_state_dict(sd)
    assert {k: inferred[k] for k in W2V_64 if k in inferred} == {k: W2V_64[k] for k in inferred}


def test_features_to_fps_official_resampling() -> None:
    ramp = torch.arange(161.0).view(1, 161, 1).expand(2, 161, 3)  # [L, T50, A], value = frame index
    out = wav2vec.features_to_fps(ramp)
    assert out.shape == (2, 3, 80)  # 3.24 s -> 161 wav2vec frames -> 80 video frames
    torch.testing.assert_close(out[0, 0], torch.linspace(0, 160, 80))  # align_corners: ends kept, linear between
    assert wav2vec.features_to_fps(ramp, n_frames=81).shape == (2, 3, 81)
    assert wav2vec.features_to_fps(torch.zeros(1, 100, 1)).shape[-1] == 50
    assert wav2vec.features_to_fps(torch.zeros(1, 58, 1)).shape[-1] == 28  # int(58 / 50.0 * 25) = 28 in floats
    with pytest.raises(ValueError):
        wav2vec.features_to_fps(torch.zeros(1, 1, 1))
