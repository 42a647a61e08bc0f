"""Node-test fixtures: ComfyUI-shaped stand-ins (VAE, CLIP, AUDIO_ENCODER_OUTPUT, IMAGE, AUDIO) and tiny model files.

- `FakeComfyVAE` behaves like comfy.sd.VAE for the Wan 2.1 VAE: 16 latent channels, 8x in space, 4x in time,
  `encode(IMAGE [N, H, W, 3])` -> raw latents [1, 16, 1 + (N-1)/4, H/8, W/8], `decode` -> [1, T, H, W, 3].
  Inside it is the toy codec (768 channels at 8x) projected onto 16 orthonormal directions, and its "raw"
  latents are the projection de-normalised with Wan's statistics, so the adapter's normalisation is exercised.
- `FakeClip` pads its embeddings with zero rows to `text_len`, as ComfyUI's umT5 pads to 512.
- `speech_output` is ComfyUI's AudioEncoderEncode layout (25 hidden states [1, T_a, D] and `audio_samples`).
- `model_dir` holds diffusion_models/base.safetensors (Wan2.2-S2V family, tiny), cointeract/ckpt.safetensors
  (LoRA + MoE + HOI) and loras/finetune.safetensors (our trainer's layout), found via COINTERACT_MODELS_DIR.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from comfyui_cointeract.cointeract_core.model.config import PRESETS, config_to_json
from comfyui_cointeract.cointeract_core.model.dit import CoInteractDiT
from comfyui_cointeract.cointeract_core.toy.audio import ToyAudioFeatures
from comfyui_cointeract.cointeract_core.toy.codec import ToyCodec
from comfyui_cointeract.cointeract_core.toy.text import ToyTextEncoder
from comfyui_cointeract.cointeract_core.weights.checkpoint import (
    cointeract_parts,
    save_cointeract_checkpoint,
    save_dit,
    write_safetensors,
)
from comfyui_cointeract.nodes import services

BASE_CFG = PRESETS["tiny"]  # in_dim 16 (as Wan), text_dim 64, text_len 32, audio 25 x 24
FULL_CFG = BASE_CFG.with_cointeract(expert_dim=8, hoi=True)
SPEECH_SECONDS = 3.6  # 179 wav2vec frames -> 89 video frames -> 2 clips


class FakeComfyVAE:
    """comfy.sd.VAE's interface for the Wan 2.1 VAE, over the toy codec (see module docstring)."""

    latent_channels = 16

    def __init__(self) -> None:
        self.codec = ToyCodec(8)
        q, _ = torch.linalg.qr(torch.randn(self.codec.latent_channels, 16, generator=torch.Generator().manual_seed(3)))
        self.proj = q.T.contiguous()  # [16, 768], orthonormal rows
        self.mean, self.std = services.wan21_latent_stats()
        self.calls = 0

    def spacial_compression_encode(self) -> int:
        return 8

    def temporal_compression_decode(self) -> int:
        return 4

    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        """IMAGE [N, H, W, 3] in 0..1 -> raw latents [1, 16, 1 + (N-1)/4, H/8, W/8]."""
        self.calls += 1
        video = pixels[..., :3].permute(3, 0, 1, 2)[None] * 2 - 1  # [1, 3, N, H, W]
        z = torch.einsum("kc,bcthw->bkthw", self.proj, self.codec.encode(video))
        return z * self.std + self.mean

    def decode(self, raw: torch.Tensor) -> torch.Tensor:
        """Raw latents [B, 16, T', h, w] -> frames [B, 1 + 4(T'-1), 8h, 8w, 3] in 0..1."""
        self.calls += 1
        z = torch.einsum("kc,bkthw->bcthw", self.proj, (raw - self.mean) / self.std)
        video = self.codec.decode(z)  # [B, 3, T, H, W]
        return ((video + 1) / 2).clamp(0, 1).permute(0, 2, 3, 4, 1)


class FakeClip:
    """ComfyUI CLIP's tokenize / encode_from_tokens, zero-padded to `text_len` rows like umT5's masked padding."""

    def __init__(self, text_dim: int = BASE_CFG.text_dim, text_len: int = BASE_CFG.text_len) -> None:
        self.encoder = ToyTextEncoder(text_dim=text_dim, max_length=text_len)
        self.text_len = text_len

    def tokenize(self, text: str) -> dict:
        return {"umt5xxl": [[(i, 1.0) for i in self.encoder.token_ids(text)]], "text": text}

    def encode_from_tokens(self, tokens: dict, return_pooled: bool = False, return_dict: bool = False):
        emb = self.encoder.encode([tokens["text"]])[0]
        cond = torch.nn.functional.pad(emb, (0, 0, 0, max(0, self.text_len - emb.shape[0])))[None]
        return {"cond": cond} if return_dict else cond


def speech(seconds: float, rate: int, channels: int = 1) -> torch.Tensor:
    """A speech-like signal [channels, T]: a 140 Hz voice with harmonics, syllables at 4 Hz."""
    t = torch.arange(int(seconds * rate)) / rate
    voice = sum(torch.sin(2 * math.pi * 140 * k * t) / k for k in (1, 2, 3))
    envelope = 0.5 + 0.5 * torch.sin(2 * math.pi * 4 * t)
    return (0.2 * voice * envelope).float().expand(channels, -1).clone()


def speech_output(waveform16k: torch.Tensor, feature_dim: int = BASE_CFG.audio_dim) -> dict:
    """ComfyUI's AUDIO_ENCODER_OUTPUT for a mono 16 kHz waveform [T], with toy features in place of wav2vec2."""
    hidden = ToyAudioFeatures(feature_dim).hidden_states(waveform16k)  # [25, T_a, D]
    layers = tuple(h[None] for h in hidden)
    return {"encoded_audio": layers[-1], "encoded_audio_all_layers": layers, "audio_samples": waveform16k.shape[-1]}


def _randomize(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.05)
    return model


def write_model_files(root: Path) -> None:
    """diffusion_models/base.safetensors, cointeract/ckpt.safetensors, loras/finetune.safetensors under `root`."""
    for folder in ("diffusion_models", "cointeract", "loras"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    save_dit(_randomize(CoInteractDiT(BASE_CFG), 0), root / "diffusion_models" / "base.safetensors")
    full = _randomize(CoInteractDiT(FULL_CFG), 1).state_dict()
    parts = {k: v for k, v in full.items() if any(cointeract_parts([k]).values()) and not k.startswith("cond_")}
    gen = torch.Generator().manual_seed(2)
    for i, module in enumerate(("blocks.0.self_attn.q", "blocks.1.ffn.ffn_base.0")):
        out_f, in_f = full[f"{module}.weight"].shape
        parts[f"{module}.lora_A.default.weight"] = torch.randn(4, in_f, generator=gen) * 0.1
        parts[f"{module}.lora_B.default.weight"] = torch.randn(out_f, 4, generator=gen) * 0.1 * (i + 1)
    meta = {"cointeract_config": config_to_json(FULL_CFG)}
    save_cointeract_checkpoint(parts, root / "cointeract" / "ckpt.safetensors", meta)
    finetune = {
        "blocks.0.self_attn.k.lora_A.default.weight": torch.randn(2, FULL_CFG.dim, generator=gen) * 0.1,
        "blocks.0.self_attn.k.lora_B.default.weight": torch.randn(FULL_CFG.dim, 2, generator=gen) * 0.1,
        "blocks.0.ffn.router.3.weight": torch.randn_like(parts["blocks.0.ffn.router.3.weight"]),
    }
    save_cointeract_checkpoint(finetune, root / "loras" / "finetune.safetensors", meta)
    hoi_only = {k: v for k, v in parts.items() if k.startswith("depth_")}
    save_cointeract_checkpoint(hoi_only, root / "loras" / "hoi_parts.safetensors", meta)
    t2v = {"patch_embedding.weight": torch.zeros(8, 16, 1, 2, 2), "head.modulation": torch.zeros(1, 2, 8)}
    write_safetensors(root / "loras" / "not_a_finetune.safetensors", t2v, {})


@pytest.fixture(scope="session")
def model_files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A models/ folder with the tiny base, CoInteract checkpoint and finetunes (written once per session)."""
    root = tmp_path_factory.mktemp("models")
    write_model_files(root)
    return root


@pytest.fixture
def model_dir(model_files: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """model_files, made the fallback models folder (COINTERACT_MODELS_DIR), outside ComfyUI."""
    monkeypatch.setattr(services, "comfy_available", lambda: False)
    monkeypatch.setenv(services.MODELS_DIR_ENV, str(model_files))
    return model_files


@pytest.fixture
def comfy_inputs() -> SimpleNamespace:
    """ComfyUI-shaped inputs: VAE, CLIP, IMAGE person / product, AUDIO (44.1 kHz stereo) and its encoder output."""
    gen = torch.Generator().manual_seed(0)
    audio = {"waveform": speech(SPEECH_SECONDS, 44100, channels=2)[None], "sample_rate": 44100}
    return SimpleNamespace(
        vae=FakeComfyVAE(),
        clip=FakeClip(),
        person=torch.rand(1, 96, 72, 3, generator=gen),
        product=torch.rand(1, 40, 40, 3, generator=gen),
        audio=audio,
        encoder_output=speech_output(speech(SPEECH_SECONDS, 16000)[0]),
        width=64,
        height=64,
    )


@pytest.fixture
def make_vae():
    return FakeComfyVAE


@pytest.fixture
def make_clip():
    return FakeClip


@pytest.fixture
def cfgs() -> SimpleNamespace:
    return SimpleNamespace(base=BASE_CFG, full=FULL_CFG, replace=dataclasses.replace)


@pytest.fixture(autouse=True)
def _nodes_on_one_thread(one_thread) -> None:
    """Every node test runs on one thread (`one_thread` in tests/conftest.py says why)."""
