"""`cointeract train` builds its own latent cache from a `cointeract prepare` dataset (`[data.encode]`).

The cache (data.path) is built when it is missing, incomplete, or was built from another version of the CSV; a
complete cache of the same CSV (its sha256 is in the manifest) is used as it is, without loading any encoder.
Encoders load from local files only, nothing is downloaded: the Wan VAE, umT5 and wav2vec2 named in the config
(`cointeract_core.encoders`), or the codec and encoders of a toy bundle for toy-world data.
"""

from __future__ import annotations

import gc
import hashlib
import json
import logging
from pathlib import Path
from typing import Any

import torch

from ..cointeract_core.model.config import PRESETS, DiTConfig
from ..cointeract_core.pipeline.protocols import AudioEncoder, TextEncoder, VideoVAE
from .builders import DTYPES
from .cache import MANIFEST, CacheError, build_cache, check_model_fit
from .config import DataConfig, EncodeConfig
from .data import RawClipDataset
from .errors import UserError

log = logging.getLogger(__name__)

__all__ = ["SHIPPED_TOY_BUNDLE", "cache_is_current", "load_encoders", "ensure_cache", "build_configured_cache"]

SHIPPED_TOY_BUNDLE = Path(__file__).resolve().parents[1] / "cointeract_core/toy/assets/toy_bundle.safetensors"
Encoders = tuple[VideoVAE, TextEncoder, AudioEncoder]


def _source(csv_path: Path) -> dict[str, str]:
    """The CSV's identity as recorded in a complete cache's manifest."""
    return {"csv": str(csv_path.resolve()), "sha256": hashlib.sha256(csv_path.read_bytes()).hexdigest()}


def cache_is_current(cache_dir: Path, csv_path: Path) -> bool:
    """True when `cache_dir` holds a complete cache of this CSV's content (every listed shard present)."""
    try:
        manifest = json.loads((cache_dir / MANIFEST).read_text())
    except (OSError, ValueError):
        return False
    recorded = manifest.get("source") or {}
    shards = {s["shard"] for s in manifest.get("samples", [])}
    return recorded.get("sha256") == _source(csv_path)["sha256"] and all((cache_dir / s).is_file() for s in shards)


def _device(name: str) -> str:
    return ("cuda" if torch.cuda.is_available() else "cpu") if name == "auto" else name


def load_encoders(enc: EncodeConfig) -> Encoders:
    """The VAE, text and audio encoders `enc` names, from local files (FileNotFoundError naming a missing one)."""
    device = _device(enc.device)
    if enc.encoders == "toy":
        from ..cointeract_core.toy.bundle import load_bundle  # noqa: PLC0415

        bundle = Path(enc.toy_bundle) if enc.toy_bundle else SHIPPED_TOY_BUNDLE
        _, codec, text, audio = load_bundle(bundle)  # the bundle's DiT is not used
        log.info("cache encoders: the codec, text and audio encoders of the toy bundle %s", bundle)
        return codec, text, audio
    for name in ("vae", "text_encoder", "audio_encoder", "tokenizer"):
        path = getattr(enc, name)
        if path and not Path(path).expanduser().exists():
            raise FileNotFoundError(f"data.encode.{name} {path} does not exist; the encoders load from local files")
    from ..cointeract_core.encoders import UMT5TextEncoder, WanVAE, Wav2Vec2Features  # noqa: PLC0415

    vae = WanVAE.from_file(enc.vae, device=device)
    text = UMT5TextEncoder.from_file(enc.text_encoder, enc.tokenizer or None, device=device)
    audio = Wav2Vec2Features.from_file(enc.audio_encoder, device=device)
    return vae, text, audio


def _check_encoders_fit(encoders: Encoders, dit: DiTConfig, preset: str) -> None:
    vae, text, audio = encoders
    config = {
        "vae": {"latent_channels": vae.latent_channels},
        "text_encoder": {"text_dim": getattr(text, "text_dim", None)},
        "audio_encoder": {"num_layers": audio.num_layers, "feature_dim": audio.feature_dim},
    }
    try:
        check_model_fit(config, dit)
    except CacheError as err:
        raise UserError(f"data.encode: the encoders do not fit model.preset {preset!r}: {err}") from None


def build_configured_cache(data: DataConfig, preset: str) -> bool:
    """Build data.path from data.encode.source unless it is current (one process); True when it encoded."""
    csv_path, cache_dir = Path(data.encode.source), Path(data.path)
    if not csv_path.is_file():
        raise FileNotFoundError(f"data.encode.source {csv_path} does not exist (write it with `cointeract prepare`)")
    if cache_is_current(cache_dir, csv_path):
        log.info("latent cache %s is complete for %s", cache_dir, csv_path)
        return False
    enc, dit = data.encode, PRESETS[preset]
    encoders = load_encoders(enc)
    _check_encoders_fit(encoders, dit, preset)
    patch = encoders[0].spatial_factor * dit.patch_size[1]
    dataset = RawClipDataset(
        csv_path, None, enc.height, enc.width, patch=patch, loudness_lufs=-23.0 if enc.normalize_loudness else None
    )
    log.info("building the latent cache %s from %d rows of %s", cache_dir, len(dataset), csv_path)
    manifest = build_cache(
        dataset, *encoders, cache_dir, shard_size=enc.shard_size, dtype=DTYPES[enc.dtype],
        dit_patch=dit.patch_size[1], source=_source(csv_path),
    )  # fmt: skip
    if not manifest["samples"]:
        raise UserError(f"no sample could be cached from {csv_path}; the reasons are in {cache_dir / MANIFEST}")
    del encoders
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()  # the encoders' memory goes back before the DiT is built
    return True


def ensure_cache(accelerator: Any, data: DataConfig, preset: str) -> None:
    """The cache a config asks for, built on the main process of a one-process run; every process waits for it."""
    if data.kind != "cache" or not data.encode.source:
        return
    if accelerator.num_processes > 1 and not cache_is_current(Path(data.path), Path(data.encode.source)):
        raise UserError(
            f"the latent cache {data.path} must be built before a {accelerator.num_processes}-process run: run "
            "`cointeract train CONFIG --cache-only` once (one process), then launch the training"
        )
    if accelerator.is_main_process:
        build_configured_cache(data, preset)
    accelerator.wait_for_everyone()
