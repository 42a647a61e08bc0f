"""The toy bundle: a trained toy model in one safetensors file (DiT + codec + text and audio encoders + config).

Tensors are the DiT's, under the official key names, stored in fp16. Metadata:

- `cointeract_bundle`: the format version (a newer file is refused with a message to update the package);
- `cointeract_config`: the DiT config (so `cointeract inspect` and `from_state_dict` read the file as a DiT);
- `toy_codec`, `toy_text`, `toy_audio`: the codec (`{"kind": "lossless", "spatial_factor": s}`, or `"pca"` whose
  basis / mean / scale are the tensors `toy_codec.*`), and the constructor arguments of `ToyTextEncoder` (its word
  table is drawn from its seed, so the seed is enough) and `ToyAudioFeatures`;
- `cointeract_bundle_zeros`: tensors that are all zeros, stored as their shapes only. The toy keeps FramePack's
  2x / 4x motion projections at zero (frozen): their (2, 4, 4) / (4, 8, 8) kernels are the bulk of a toy DiT
  (over the lossless 768-channel codec, 25 M of 32 M parameters), and leaving them out keeps the bundle small.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import torch
from torch import nn

from ..model.config import DiTConfig, config_from_json, config_to_json
from ..model.dit import CoInteractDiT
from ..weights.checkpoint import BUNDLE_KEY
from ..weights.safetensors_io import open_checkpoint, write_safetensors
from .audio import ToyAudioFeatures
from .codec import ToyCodec
from .pca_codec import PCAToyCodec
from .text import ToyTextEncoder

__all__ = ["BUNDLE_VERSION", "BundleError", "save_bundle", "load_bundle", "is_bundle", "bundle_info", "Bundle"]

log = logging.getLogger(__name__)

BUNDLE_VERSION = 1


class BundleError(ValueError):
    """The file is not a toy bundle, is damaged, or comes from a newer version; the message says what to do."""


Bundle = tuple[CoInteractDiT, "ToyCodec | PCAToyCodec", ToyTextEncoder, ToyAudioFeatures]
_CODEC = "toy_codec."  # tensor-name prefix of a PCA codec's basis and mean


def save_bundle(
    path: str | os.PathLike,
    model: nn.Module,
    codec: ToyCodec | PCAToyCodec,
    text: ToyTextEncoder,
    audio: ToyAudioFeatures,
    dtype: torch.dtype = torch.float16,
    extra: dict[str, str] | None = None,
) -> Path:
    """Write model + encoders to one safetensors file (atomically); all-zero tensors are stored as shapes only."""
    if not hasattr(model, "cfg") or not isinstance(model.cfg, DiTConfig):
        raise TypeError(f"expected a CoInteractDiT, got {type(model).__name__}")
    cfg = model.cfg
    fits = (codec.latent_channels, text.text_dim, audio.feature_dim) == (cfg.in_dim, cfg.text_dim, cfg.audio_dim)
    if not fits:
        raise ValueError(
            f"the encoders do not fit the model: codec {codec.latent_channels} channels, text {text.text_dim}, audio "
            f"{audio.feature_dim}; the model takes {cfg.in_dim}, {cfg.text_dim}, {cfg.audio_dim}"
        )
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    zeros = {k: list(v.shape) for k, v in state.items() if v.numel() > 1024 and not bool(v.any())}
    tensors = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items() if k not in zeros}
    codec_meta = {"kind": "lossless", "spatial_factor": codec.spatial_factor}
    if isinstance(codec, PCAToyCodec):
        codec_meta = {"kind": "pca", "spatial_factor": codec.spatial_factor, "channels": codec.latent_channels}
        tensors.update({_CODEC + n: getattr(codec, n).float() for n in ("basis", "mean", "scale")})
    meta = {
        "format": "pt",
        BUNDLE_KEY: str(BUNDLE_VERSION),
        "cointeract_config": config_to_json(model.cfg),
        "cointeract_bundle_zeros": json.dumps(zeros, sort_keys=True),
        "toy_codec": json.dumps(codec_meta),
        "toy_text": json.dumps(_text_params(text)),
        "toy_audio": json.dumps({"feature_dim": audio.feature_dim}),
        **(extra or {}),
    }
    path = Path(path)
    write_safetensors(path, tensors, meta)
    log.info(
        "wrote toy bundle %s (%.1f MB, %d tensors + %d zero)", path, path.stat().st_size / 1e6, len(tensors), len(zeros)
    )
    return path


def _text_params(text: ToyTextEncoder) -> dict:
    """Constructor arguments of a ToyTextEncoder; refuses one whose table is not the one its seed draws."""
    params = {"text_dim": text.text_dim, "max_length": text.max_length, "buckets": text.buckets, "seed": text.seed}
    if not torch.equal(ToyTextEncoder(**params).table, text.table):
        raise ValueError("the text encoder's word table is not the one its seed draws; bundles store the seed only")
    return params


def _codec(meta: dict, state: dict[str, torch.Tensor]) -> ToyCodec | PCAToyCodec:
    """The bundle's codec from its metadata (and, for PCA, its tensors, which are removed from `state`)."""
    kind = meta.pop("kind", "lossless")
    if kind == "lossless":
        return ToyCodec(meta["spatial_factor"])
    if kind != "pca":
        raise ValueError(f"unknown codec kind {kind!r}")
    basis, mean, scale = (state.pop(_CODEC + n).float().cpu() for n in ("basis", "mean", "scale"))
    return PCAToyCodec(basis, mean, scale, meta["spatial_factor"])


def _metadata(path: Path) -> dict[str, str]:
    """The file's safetensors metadata; BundleError when the file is missing, not safetensors, or damaged."""
    if path.is_dir():
        raise BundleError(f"toy bundle {path} is a folder; give the bundle file (.safetensors)")
    if not path.is_file():
        raise BundleError(f"toy bundle {path} does not exist")
    try:
        return dict(open_checkpoint(path).metadata or {})
    except Exception as err:  # noqa: BLE001 - any parse failure means the same thing to the user
        raise BundleError(
            f"{path} is not a readable safetensors file ({err}); it may be truncated: copy or download it again"
        ) from err


def is_bundle(path: str | os.PathLike) -> bool:
    """True when `path` is a safetensors file whose metadata marks it as a toy bundle (reads the header only)."""
    try:
        return BUNDLE_KEY in _metadata(Path(path))
    except BundleError:
        return False


def bundle_info(path: str | os.PathLike) -> dict[str, str]:
    """The bundle's metadata, checked: BundleError for a foreign file or a newer version."""
    path = Path(path)
    meta = _metadata(path)
    if BUNDLE_KEY not in meta:
        what = "a DiT checkpoint" if "cointeract_config" in meta else "some other safetensors file"
        raise BundleError(
            f"{path} is {what}, not a toy bundle (no '{BUNDLE_KEY}' metadata). Load DiT checkpoints with the "
            "regular loader (--dit / CoInteractModelLoader); toy bundles are written by `cointeract demo`"
        )
    try:
        version = int(meta[BUNDLE_KEY])
    except ValueError as err:
        raise BundleError(f"{path}: bundle version {meta[BUNDLE_KEY]!r} is not a number; the file is damaged") from err
    if version > BUNDLE_VERSION:
        raise BundleError(
            f"{path} is a version-{version} toy bundle; this package reads up to version {BUNDLE_VERSION}. "
            "Update comfyui-cointeract"
        )
    missing = [k for k in ("cointeract_config", "toy_codec", "toy_text", "toy_audio") if k not in meta]
    if missing:
        raise BundleError(f"{path}: bundle metadata lacks {missing}; the file is damaged, write it again")
    return meta


def load_bundle(
    path: str | os.PathLike, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32
) -> Bundle:
    """A bundle file -> (model in eval mode on `device` in `dtype`, codec, text encoder, audio encoder)."""
    path = Path(path)
    meta = bundle_info(path)
    try:
        cfg = config_from_json(meta["cointeract_config"])
        zeros = json.loads(meta.get("cointeract_bundle_zeros", "{}"))
        codec_meta = json.loads(meta["toy_codec"])
        text = ToyTextEncoder(**json.loads(meta["toy_text"]))
        audio = ToyAudioFeatures(**json.loads(meta["toy_audio"]))
    except (ValueError, TypeError, KeyError) as err:
        raise BundleError(f"{path}: bundle metadata is invalid ({err}); write the bundle again") from err
    with torch.device("meta"):
        model = CoInteractDiT(cfg)
    try:
        state = dict(open_checkpoint(path).iter(dtype=dtype, device=device))
    except Exception as err:  # noqa: BLE001
        raise BundleError(f"{path}: reading the weights failed ({err}); the file is damaged or truncated") from err
    state.update({k: torch.zeros(shape, dtype=dtype, device=device) for k, shape in zeros.items()})
    try:
        codec = _codec(codec_meta, state)
    except (ValueError, TypeError, KeyError) as err:
        raise BundleError(f"{path}: the codec entry is invalid ({err}); write the bundle again") from err
    expected = set(model.state_dict())
    if set(state) != expected:
        raise BundleError(
            f"{path}: the weights do not fit the bundle's config: missing {sorted(expected - set(state))[:5]}, "
            f"unexpected {sorted(set(state) - expected)[:5]}"
        )
    model.load_state_dict(state, strict=True, assign=True)
    return model.eval(), codec, text, audio
