"""Model configuration: frozen dataclasses, named presets, and inference from a checkpoint's shapes."""

from __future__ import annotations

import dataclasses
import json
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

import torch

log = logging.getLogger(__name__)

__all__ = ["MoEConfig", "HOIConfig", "DiTConfig", "PRESETS", "from_state_dict", "config_to_json", "config_from_json"]

# Official CoInteract keeps the Wan2.2 block list; injector j sits after block AUDIO_INJECT_14B[j].
AUDIO_INJECT_14B = (0, 4, 8, 12, 16, 20, 24, 27, 30, 33, 36, 39)


@dataclass(frozen=True)
class MoEConfig:
    """Human-Aware MoE FFN (arXiv 2604.19636 §3.2): base FFN + lightweight experts, router on target tokens."""

    expert_dim: int = 256
    # "official": hand + face experts, the router's base logit only enters the softmax.
    # "paper": a third `base` expert, out = FFN(x) + sum_{base,hand,face} p_e * E_e(x).
    experts: Literal["official", "paper"] = "official"
    # Expert contribution is switched off at timesteps >= this value (official: 900 on the raw [0, 1000] scale).
    off_from_timestep: float = 900.0

    @property
    def expert_names(self) -> tuple[str, ...]:
        return ("base", "hand", "face") if self.experts == "paper" else ("hand", "face")


@dataclass(frozen=True)
class HOIConfig:
    """HOI structure stream co-generated beside the RGB stream (own patch embed, modulation, type embed, head)."""

    # "wrap": the official code indexes the RoPE table with -w..-1, which wraps to 1024-w..1023 (default, exact).
    # "negative": true negative width positions -w..-1, what the official code means.
    width_positions: Literal["wrap", "negative"] = "wrap"


@dataclass(frozen=True)
class DiTConfig:
    """Wan2.2-S2V DiT hyper-parameters plus the optional CoInteract parts (MoE, HOI)."""

    dim: int = 5120
    ffn_dim: int = 13824
    num_heads: int = 40
    num_layers: int = 40
    freq_dim: int = 256
    text_dim: int = 4096
    text_len: int = 512
    in_dim: int = 16
    out_dim: int = 16
    patch_size: tuple[int, int, int] = (1, 2, 2)
    eps: float = 1e-6
    cond_dim: int | None = 16  # pose latent channels for `cond_encoder`; None = no pose module
    audio_dim: int = 1024
    audio_layers: int = 25  # wav2vec2 hidden states mixed by `casual_audio_encoder.weights`
    num_audio_tokens: int = 4
    audio_inject_layers: tuple[int, ...] = AUDIO_INJECT_14B
    motion_frames: tuple[int, int] = (73, 19)  # pixel frames of history, their latent frames
    zip_frame_buckets: tuple[int, int, int] = (1, 2, 16)  # FramePack: 1x, 2x, 4x latents, nearest first
    rope_theta: float = 10000.0
    moe: MoEConfig | None = None
    hoi: HOIConfig | None = None

    @property
    def head_dim(self) -> int:
        return self.dim // self.num_heads

    @property
    def patch_channels(self) -> int:
        return self.out_dim * self.patch_size[0] * self.patch_size[1] * self.patch_size[2]

    def __post_init__(self) -> None:
        if self.dim % self.num_heads:
            raise ValueError(f"dim {self.dim} is not divisible by num_heads {self.num_heads}")
        if self.head_dim % 2 or self.head_dim < 6:
            raise ValueError(f"head_dim {self.head_dim} must be even and >= 6 for 3-D RoPE")
        if self.dim % 4:
            raise ValueError(f"dim {self.dim} must be divisible by 4 (the audio encoder splits it in quarters)")
        bad = [i for i in self.audio_inject_layers if not 0 <= i < self.num_layers]
        if bad or len(set(self.audio_inject_layers)) != len(self.audio_inject_layers):
            raise ValueError(
                f"audio_inject_layers {self.audio_inject_layers} must be distinct blocks < {self.num_layers}"
            )
        if sum(self.zip_frame_buckets) != self.motion_frames[1]:
            raise ValueError(f"zip_frame_buckets {self.zip_frame_buckets} must sum to {self.motion_frames[1]}")

    def with_cointeract(self, expert_dim: int = 256, hoi: bool = True) -> DiTConfig:
        """This config plus the CoInteract MoE (and HOI stream when `hoi`)."""
        return dataclasses.replace(self, moe=MoEConfig(expert_dim=expert_dim), hoi=HOIConfig() if hoi else None)


PRESETS: dict[str, DiTConfig] = {
    # The config of shared/fixtures/wan_s2v_tiny.safetensors (a run of the Wan2.2 reference code).
    "tiny": DiTConfig(
        dim=128,
        ffn_dim=256,
        num_heads=2,
        num_layers=2,
        text_dim=64,
        text_len=32,
        audio_dim=24,
        audio_inject_layers=(0, 1),
    ),
    # Tiny CoInteract: head_dim 32, where the Wan and DiffSynth RoPE splits agree (12/10/10 real dims).
    "tiny_cointeract": DiTConfig(
        dim=64,
        ffn_dim=128,
        num_heads=2,
        num_layers=2,
        freq_dim=32,
        text_dim=32,
        text_len=16,
        audio_dim=24,
        audio_inject_layers=(0, 1),
        moe=MoEConfig(expert_dim=8),
        hoi=HOIConfig(),
    ),
    # The toy world's model (train/toyworld + cointeract_core/toy): 64x64 frames through the 32-channel PCA toy
    # codec (spatial factor 8) give 8x8 latents, so 4x4 = 16 tokens per latent frame and 320 target tokens per
    # 81-frame clip; 32 channels x 2x2 = 128 numbers per token, the DiT's width. (16 channels lose the mouth and
    # hands even on ground truth: lip r 0.58, penetration 0.41 after a round trip; 32: 0.82 / 0.12. The lossless
    # ToyCodec(8) gives 768 channels = 3072 numbers per token: a 128-wide DiT cannot learn to denoise that.)
    "toy": DiTConfig(
        dim=128,
        ffn_dim=256,
        num_heads=4,
        num_layers=4,
        freq_dim=64,
        text_dim=32,
        text_len=96,
        in_dim=32,
        out_dim=32,
        cond_dim=32,
        audio_dim=16,
        audio_inject_layers=(0, 1, 2, 3),
        moe=MoEConfig(expert_dim=32),
        hoi=HOIConfig(),
    ),
    "14B": DiTConfig(),
    "14B_cointeract": DiTConfig(moe=MoEConfig(expert_dim=256), hoi=HOIConfig()),
}


def config_to_json(cfg: DiTConfig) -> str:
    """Serialise a config for safetensors metadata (`cointeract_config`)."""
    return json.dumps(dataclasses.asdict(cfg), sort_keys=True)


def config_from_json(text: str) -> DiTConfig:
    """Inverse of `config_to_json`; unknown fields raise a ValueError naming them."""
    raw = json.loads(text)
    known = {f.name for f in dataclasses.fields(DiTConfig)}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ValueError(f"unknown config fields {unknown}; this file was written by a newer version")
    for key in ("patch_size", "audio_inject_layers", "motion_frames", "zip_frame_buckets"):
        if key in raw:
            raw[key] = tuple(raw[key])
    if raw.get("moe") is not None:
        raw["moe"] = MoEConfig(**raw["moe"])
    if raw.get("hoi") is not None:
        raw["hoi"] = HOIConfig(**raw["hoi"])
    return DiTConfig(**raw)


def _shape(sd: Mapping[str, torch.Tensor | tuple[int, ...]], key: str) -> tuple[int, ...] | None:
    value = sd.get(key)
    if value is None:
        return None
    return tuple(value.shape) if hasattr(value, "shape") else tuple(value)


def from_state_dict(
    sd: Mapping[str, torch.Tensor | tuple[int, ...]],
    metadata: Mapping[str, str] | None = None,
    num_heads: int | None = None,
    text_len: int | None = None,
    hint: DiTConfig | None = None,
) -> DiTConfig:
    """Infer a DiTConfig from a state dict's shapes (tensors or shape tuples, official key names).

    What shapes cannot tell (heads, text length, injector placement when ambiguous) comes from the arguments, the
    file's metadata (`config` as written by Wan/our tools), then `hint` (a caller's config). With none of them,
    the 14B width (5120) means the published 14B values; any other width is a guess (head_dim 128, 512 text
    rows) and is logged as a warning.
    """
    meta_cfg = {**_hint_fields(hint), **_metadata_fields(metadata)}
    patch = _shape(sd, "patch_embedding.weight")
    if patch is None or _shape(sd, "casual_audio_encoder.encoder.final_linear.weight") is None:
        raise ValueError("not a Wan2.2-S2V DiT state dict: patch_embedding / casual_audio_encoder keys are missing")
    dim, in_dim = patch[0], patch[1]
    blocks = {int(m.group(1)) for k in sd if (m := re.match(r"blocks\.(\d+)\.", k))}
    num_layers = max(blocks) + 1
    ffn = _shape(sd, "blocks.0.ffn.0.weight") or _shape(sd, "blocks.0.ffn.ffn_base.0.weight")
    if ffn is None:
        raise ValueError("cannot infer ffn_dim: neither blocks.0.ffn.0.weight nor blocks.0.ffn.ffn_base.0.weight")
    conv1_local = _shape(sd, "casual_audio_encoder.encoder.conv1_local.conv.weight")
    n_inject = len({int(m.group(1)) for k in sd if (m := re.match(r"audio_injector\.injector\.(\d+)\.", k))})
    head = _shape(sd, "head.head.weight")
    cond = _shape(sd, "cond_encoder.weight")
    inject = _inject_layers(meta_cfg, num_layers, n_inject)
    heads = num_heads or meta_cfg.get("num_heads") or _guess("num_heads", max(1, dim // 128), dim)
    fields = dict(
        dim=dim,
        ffn_dim=ffn[0],
        num_heads=heads,
        num_layers=num_layers,
        freq_dim=_shape(sd, "time_embedding.0.weight")[1],
        text_dim=_shape(sd, "text_embedding.0.weight")[1],
        text_len=text_len or meta_cfg.get("text_len") or _guess("text_len", 512, dim),
        in_dim=in_dim,
        out_dim=head[0] // (patch[2] * patch[3] * patch[4]),
        patch_size=tuple(patch[2:]),
        cond_dim=cond[1] if cond else None,
        audio_dim=conv1_local[1],
        audio_layers=_shape(sd, "casual_audio_encoder.weights")[1],
        num_audio_tokens=conv1_local[0] // (dim // 4),
        audio_inject_layers=inject,
        moe=_infer_moe(sd, meta_cfg),
        hoi=_infer_hoi(sd, meta_cfg),
    )
    if "eps" in meta_cfg:
        fields["eps"] = meta_cfg["eps"]
    return DiTConfig(**fields)


def _hint_fields(hint: DiTConfig | None) -> dict:
    """The fields of a caller's config that shapes cannot tell, in the metadata's form."""
    if hint is None:
        return {}
    return {
        "num_heads": hint.num_heads,
        "text_len": hint.text_len,
        "audio_inject_layers": hint.audio_inject_layers,
        "eps": hint.eps,
    }


def _guess(field: str, value: int, dim: int) -> int:
    """A field no tensor, metadata or caller gives: silent for the 14B width (published values), else a warning."""
    if dim != PRESETS["14B"].dim:
        log.warning(
            "%s is not in the file's metadata and cannot be read from its tensors; assuming %d (Wan's rule: "
            "head_dim 128, 512 text rows). If the model was made otherwise, pass cfg=DiTConfig(..., %s=N)",
            field,
            value,
            field,
        )
    return value


def _metadata_fields(metadata: Mapping[str, str] | None) -> dict:
    """Config fields stored by Wan tools (`config`) or by us (`cointeract_config`) in safetensors metadata."""
    if not metadata:
        return {}
    for key in ("cointeract_config", "config"):
        if key in metadata:
            try:
                return json.loads(metadata[key])
            except json.JSONDecodeError as err:
                raise ValueError(f"metadata '{key}' is not valid JSON: {err}") from err
    return {}


def _inject_layers(meta_cfg: dict, num_layers: int, n_inject: int) -> tuple[int, ...]:
    if "audio_inject_layers" in meta_cfg:
        layers = tuple(meta_cfg["audio_inject_layers"])
    elif n_inject == num_layers:
        layers = tuple(range(num_layers))
    else:
        layers = tuple(i for i in AUDIO_INJECT_14B if i < num_layers)
        if num_layers != PRESETS["14B"].num_layers and len(layers) == n_inject:
            log.warning(
                "audio injector placement is not in the file's metadata; assuming the 14B placement %s. If the model "
                "was made otherwise, pass cfg=DiTConfig(..., audio_inject_layers=(...))",
                layers,
            )
    if len(layers) != n_inject:
        raise ValueError(
            f"the file has {n_inject} audio injectors but the block list {layers} has {len(layers)}; "
            "pass the injector placement in the file's metadata ('config': {\"audio_inject_layers\": [...]})"
        )
    return layers


def _infer_moe(sd: Mapping, meta_cfg: dict) -> MoEConfig | None:
    fc1 = _shape(sd, "blocks.0.ffn.hand_expert.fc1.weight")
    if fc1 is None:
        return None
    paper = _shape(sd, "blocks.0.ffn.base_expert.fc1.weight") is not None
    extra = meta_cfg.get("moe") or {}
    return MoEConfig(
        expert_dim=fc1[0],
        experts="paper" if paper else "official",
        off_from_timestep=extra.get("off_from_timestep", 900.0),
    )


def _infer_hoi(sd: Mapping, meta_cfg: dict) -> HOIConfig | None:
    if _shape(sd, "depth_patch_embedding.weight") is None:
        return None
    extra = meta_cfg.get("hoi") or {}
    return HOIConfig(width_positions=extra.get("width_positions", "wrap"))
