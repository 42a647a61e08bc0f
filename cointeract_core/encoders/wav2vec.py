"""wav2vec2 speech features behind the `AudioEncoder` protocol, on transformers' `Wav2Vec2Model`.

Returns every hidden state, as Wan S2V and CoInteract use them: for wav2vec2-large that is 25 states,
index i < 24 the input of transformer layer i (index 0: after the positional convolution) and index 24 the
encoder output after its final LayerNorm (stable-layer-norm models), as transformers 4.x's
`output_hidden_states` (which the official code ran on) and ComfyUI's port return them. transformers 5
records the last layer's output *before* that LayerNorm as `hidden_states[-1]` (`capture_outputs(
tie_last_hidden_states=False)` on Wav2Vec2Model), so the last state is taken from `last_hidden_state`,
which is right on both major versions (checked with hooks in tests/test_core/test_encoders.py).

Weights, from local paths only: a transformers folder (config.json + model.safetensors or pytorch_model.bin,
`wav2vec2.` prefix of Wav2Vec2ForCTC and its `lm_head` dropped, old `weight_g`/`weight_v` weight-norm names
renamed), or ComfyUI's audio_encoders file (comfy/audio_encoders/wav2vec2.py mirrors transformers' names
without the prefix, weight norm as `parametrizations.weight.original0/1`; the config is read off the shapes).
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from ..pipeline.conditioning import resample_features
from ..weights.safetensors_io import PathLike
from .common import KeyView, assign_weights, describe_weights, read_weights, shapes_of

log = logging.getLogger(__name__)

__all__ = [
    "Wav2Vec2Features",
    "features_to_fps",
    "normalize_waveform",
    "wav2vec2_key",
    "wav2vec2_to_hf",
    "wav2vec2_config_from_state_dict",
    "TINY_WAV2VEC2_CONFIG",
]

TINY_WAV2VEC2_CONFIG: dict[str, Any] = {
    "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 48,
    "conv_dim": (16, 16), "conv_kernel": (10, 3), "conv_stride": (5, 2), "conv_bias": True,
    "num_conv_pos_embeddings": 16, "num_conv_pos_embedding_groups": 4,
    "feat_extract_norm": "layer", "do_stable_layer_norm": True,
}  # fmt: skip
_STRIDES = {10: 5, 3: 2, 2: 2}  # wav2vec2's conv stack: kernel -> stride (not stored in the weights)
_HEADS = ("lm_head.", "quantizer.", "project_q.", "project_hid.", "dropout_features.")  # CTC / pre-training heads


def normalize_waveform(waveform: torch.Tensor) -> torch.Tensor:
    """[T] -> (x - mean) / sqrt(var + 1e-7) with the population variance, as Wav2Vec2FeatureExtractor."""
    x = waveform.double()
    return ((x - x.mean()) / torch.sqrt(x.var(unbiased=False) + 1e-7)).float()


def features_to_fps(
    hidden: torch.Tensor, fps: float = 25.0, n_frames: int | None = None, frame_rate: float = 50.0
) -> torch.Tensor:
    """[L, T50, A] -> [L, A, N] as the official pipeline; the one implementation is conditioning.resample_features."""
    return resample_features(hidden, frame_rate, fps, n_frames)


def wav2vec2_key(key: str) -> str | None:
    """One Wav2Vec2ForCTC / old / ComfyUI key -> its Wav2Vec2Model key (None: a CTC / pre-training head)."""
    key = key.removeprefix("wav2vec2.")
    if key.startswith(_HEADS):
        return None
    key = key.replace(".weight_g", ".parametrizations.weight.original0")  # torch's old weight_norm names
    return key.replace(".weight_v", ".parametrizations.weight.original1")


def wav2vec2_to_hf(sd: Mapping[str, torch.Tensor]) -> KeyView:
    """A wav2vec2 state dict in any of those namings -> a lazy view with Wav2Vec2Model keys (same tensors)."""
    return KeyView(sd, {new: k for k in sd if (new := wav2vec2_key(k)) is not None})


def wav2vec2_config_from_state_dict(sd: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """Wav2Vec2Config fields read off the weights; heads = hidden / 64 and the standard conv strides are assumed."""
    shapes = shapes_of(sd)
    hidden = shapes["encoder.layer_norm.weight"][0]
    convs = sorted(int(k.split(".")[2]) for k in shapes if k.startswith("feature_extractor.conv_layers.") and
                   k.endswith(".conv.weight"))  # fmt: skip
    conv_shapes = [shapes[f"feature_extractor.conv_layers.{i}.conv.weight"] for i in convs]
    kernels = tuple(s[-1] for s in conv_shapes)
    if any(k not in _STRIDES for k in kernels):
        raise ValueError(f"unknown wav2vec2 conv kernels {kernels}; pass the model's config explicitly")
    pos = shapes["encoder.pos_conv_embed.conv.parametrizations.weight.original1"]  # [hidden, hidden/groups, K]
    layer_norm_convs = "feature_extractor.conv_layers.1.layer_norm.weight" in shapes
    return {"hidden_size": hidden, "num_attention_heads": max(1, hidden // 64),
            "num_hidden_layers": len({k.split(".")[2] for k in shapes if k.startswith("encoder.layers.")}),
            "intermediate_size": shapes["encoder.layers.0.feed_forward.intermediate_dense.weight"][0],
            "conv_dim": tuple(s[0] for s in conv_shapes), "conv_kernel": kernels,
            "conv_stride": tuple(_STRIDES[k] for k in kernels),
            "conv_bias": f"feature_extractor.conv_layers.{convs[-1]}.conv.bias" in shapes,
            "num_conv_pos_embeddings": pos[2], "num_conv_pos_embedding_groups": hidden // pos[1],
            "feat_extract_norm": "layer" if layer_norm_convs else "group",
            "do_stable_layer_norm": layer_norm_convs}  # fmt: skip


def _build(config: Mapping[str, Any]) -> Any:
    from transformers import Wav2Vec2Config, Wav2Vec2Model

    return Wav2Vec2Model(Wav2Vec2Config(**{**config, "layerdrop": 0.0}))


def _read_folder_json(path: Path, name: str) -> dict[str, Any] | None:
    file = path / name
    return json.loads(file.read_text()) if path.is_dir() and file.is_file() else None


class Wav2Vec2Features:
    """`AudioEncoder` over transformers' Wav2Vec2Model: 16 kHz mono waveform -> all hidden states at 50 Hz."""

    sample_rate = 16000
    frame_rate = 50.0

    def __init__(self, model: Any, normalize: bool = True) -> None:
        if getattr(model, "adapter", None) is not None:
            raise ValueError("wav2vec2 with an adapter (add_adapter=True) is not a speech feature encoder here")
        self.model = model.eval().requires_grad_(False)
        self.normalize = normalize
        self.num_layers = int(model.config.num_hidden_layers) + 1
        self.feature_dim = int(model.config.hidden_size)

    @classmethod
    def from_file(
        cls, path: PathLike, dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu",
        config: Mapping[str, Any] | None = None,
    ) -> Wav2Vec2Features:  # fmt: skip
        """Load a transformers wav2vec2 folder or ComfyUI's audio_encoders file (config: override the inferred one)."""
        path = Path(path).expanduser()
        raw = read_weights(path)
        sd = wav2vec2_to_hf(raw)
        if (
            "encoder.layers.0.attention.q_proj.weight" not in sd
            or "feature_extractor.conv_layers.0.conv.weight" not in sd
        ):
            raise ValueError(
                f"{path.name} is not a wav2vec2 model: it looks like {describe_weights(raw)}. Pass a transformers "
                "wav2vec2 folder (e.g. wav2vec2-large-xlsr-53-*) or ComfyUI's audio_encoders/wav2vec2_*.safetensors"
            )
        fields = dict(config or _read_folder_json(path, "config.json") or wav2vec2_config_from_state_dict(sd))
        # masked_spec_embed exists iff a masking probability is > 0; masking only happens in training, so the
        # probability follows the file (ComfyUI files always carry the tensor, some exports do not).
        fields.update(mask_time_prob=0.05 if "masked_spec_embed" in sd else 0.0, mask_feature_prob=0.0)
        model = assign_weights(lambda: _build(fields), sd, dtype, device, f"wav2vec2 {path.name}")
        normalize = bool((_read_folder_json(path, "preprocessor_config.json") or {}).get("do_normalize", True))
        log.info("loaded wav2vec2 (%d layers) from %s; input normalisation %s", model.config.num_hidden_layers, path,
                 "on" if normalize else "off")  # fmt: skip
        return cls(model, normalize)

    @classmethod
    def from_config(cls, config: Mapping[str, Any] | None = None, seed: int = 0) -> Wav2Vec2Features:
        """A randomly initialised model (default: TINY_WAV2VEC2_CONFIG), for tests."""
        torch.manual_seed(seed)
        return cls(_build(TINY_WAV2VEC2_CONFIG if config is None else config))

    @property
    def device(self) -> torch.device:
        return self.model.encoder.layer_norm.weight.device

    def num_frames(self, num_samples: int) -> int:
        """Feature frames for `num_samples` input samples (the conv stack's output length)."""
        n = num_samples
        for kernel, stride in zip(self.model.config.conv_kernel, self.model.config.conv_stride):
            n = math.floor((n - kernel) / stride) + 1
        return max(n, 0)

    @torch.no_grad()
    def hidden_states(self, waveform: torch.Tensor) -> torch.Tensor:
        """Mono waveform [T] at 16 kHz -> [num_layers, T50, feature_dim] float32 on the model's device."""
        if waveform.ndim != 1 or not waveform.is_floating_point():
            raise ValueError(f"expected a mono float waveform [T]; got {waveform.dtype} {list(waveform.shape)}")
        if self.num_frames(waveform.shape[0]) < 1:
            raise ValueError(f"{waveform.shape[0]} samples is too short for wav2vec2 (less than one feature frame)")
        x = normalize_waveform(waveform) if self.normalize else waveform.float()
        dtype = self.model.encoder.layer_norm.weight.dtype
        out = self.model(x[None].to(self.device, dtype), output_hidden_states=True)
        states = (*out.hidden_states[:-1], out.last_hidden_state)  # the last one after the final LayerNorm
        return torch.cat(states).float()  # [L, T50, A]
