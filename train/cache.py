"""Latent cache: encode every clip once (VAE, text, audio) to sharded safetensors + a manifest; `CachedDataset`.

Per clip (reference §4.3): the joint 153-frame pass [motion 73 + target[:80]] -> 19 motion + 20 target latents;
the 81-frame pass with frame 0 replaced by the person image -> latents 1..20; person and product (one frame
each); pose and HOI (81 frames -> 21 latents, latent 0 dropped); the prompt and the HOI prompt (official prefix +
prompt) through the text encoder, the empty prompt once for the whole cache; wav2vec2 hidden states resampled
to 25 fps, the clip's own window of 4·F columns (the official code takes chunk [1] for audio longer than
3.24 s, mostly zeros: we take columns 0..79, the frames the target latents cover); router labels.

Layout of `out_dir`: `manifest.json` (format, version, config of encoders and sizes, one entry per sample
naming its shard, dropped rows with reasons), `shared.safetensors` (the empty prompt) and
`shard-NNNNN.safetensors` (tensors keyed `<sample key>/<name>`). Shards and the manifest are written
atomically, the manifest after its shard, so a crash leaves at worst an unlisted shard that the next run
overwrites. `build_cache` resumes: samples already listed (with their shard present) are skipped.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import torch

from ..cointeract_core.media.fileio import atomic_output
from ..cointeract_core.model.config import DiTConfig
from ..cointeract_core.pipeline.conditioning import HOI_PREFIX, resample_features
from ..cointeract_core.pipeline.protocols import AudioEncoder, TextEncoder, VideoVAE
from ..cointeract_core.weights.safetensors_io import write_safetensors
from .data import RawClip, RawClipDataset
from .sample import TrainSample

log = logging.getLogger(__name__)

__all__ = [
    "FORMAT",
    "VERSION",
    "build_cache",
    "encode_clip",
    "CachedDataset",
    "CacheError",
    "ShortAudioError",
    "check_model_fit",
]

FORMAT, VERSION = "cointeract-latent-cache", 1
MANIFEST, SHARED = "manifest.json", "shared.safetensors"
LATENTS = ("target_with_motion", "motion", "target_alone", "person", "product", "pose", "hoi")
EMBEDDINGS = ("prompt", "hoi_prompt", "audio")
LABELS = ("router_targets", "router_weights")


class CacheError(ValueError):
    """The cache folder is incomplete, corrupt or built with other settings; the message says what to do."""


class ShortAudioError(ValueError):
    """The clip's audio gives fewer feature columns than the clip needs (the row is skipped and counted)."""


def _video(frames: torch.Tensor, device: str | torch.device) -> torch.Tensor:
    """uint8 [T, H, W, 3] -> float [1, 3, T, H, W] in [-1, 1]."""
    return frames.to(device).permute(3, 0, 1, 2)[None].float() / 127.5 - 1.0


def _encode(vae: VideoVAE, frames: torch.Tensor, latents: int, device: str | torch.device) -> torch.Tensor:
    """uint8 [T, H, W, 3] -> [C, latents, h, w]; raises if the VAE gives another number of latent frames."""
    with torch.no_grad():
        lat = vae.encode(_video(frames, device))[0]
    if lat.shape[1] != latents:
        raise RuntimeError(f"the VAE gave {lat.shape[1]} latent frames for {frames.shape[0]}; expected {latents}")
    return lat


def _audio_window(audio: AudioEncoder, wave: torch.Tensor, columns: int, fps: float) -> torch.Tensor:
    """waveform [T] -> [L, A, columns] hidden states at `fps`, columns 0..columns-1 of the clip."""
    with torch.no_grad():
        feats = resample_features(audio.hidden_states(wave), audio.frame_rate, fps)  # [L, A, T25]
    if feats.shape[-1] < columns:
        raise ShortAudioError(
            f"the audio gives {feats.shape[-1]} feature columns at {fps:g} fps; the clip needs {columns} "
            f"(≥ {(columns + 1) / fps:.2f} s of audio)"
        )
    return feats[..., :columns]


def encode_clip(
    clip: RawClip, vae: VideoVAE, text_encoder: TextEncoder, audio_encoder: AudioEncoder, *, fps: float = 25.0
) -> dict[str, torch.Tensor]:
    """One clip -> its cached tensors (see TrainSample); `motion`/`product`/`pose`/`hoi`/`hoi_prompt` when present."""
    device = getattr(vae, "device", "cpu")
    frames = clip.video.shape[0]
    lat_frames, motion_lat = (frames - 1) // vae.temporal_factor, None
    out: dict[str, torch.Tensor] = {}
    if clip.motion is not None:
        m = 1 + (clip.motion.shape[0] - 1) // vae.temporal_factor
        joint = _encode(vae, torch.cat([clip.motion, clip.video[: frames - 1]]), m + lat_frames, device)
        out["motion"], out["target_with_motion"] = joint[:, :m], joint[:, m:]
        motion_lat = m
    first = torch.cat([clip.person[None], clip.video[1:]])  # frame 0 replaced by the person image
    out["target_alone"] = _encode(vae, first, 1 + lat_frames, device)[:, 1:]
    out["person"] = _encode(vae, clip.person[None], 1, device)
    if clip.product is not None:
        out["product"] = _encode(vae, clip.product[None], 1, device)
    for name in ("pose", "hoi"):
        if getattr(clip, name) is not None:
            out[name] = _encode(vae, getattr(clip, name), 1 + lat_frames, device)[:, 1:]
    prompts = [clip.prompt] + ([HOI_PREFIX + clip.prompt] if clip.hoi is not None else [])
    with torch.no_grad():
        embedded = text_encoder.encode(prompts)
    out["prompt"] = embedded[0]
    if clip.hoi is not None:
        out["hoi_prompt"] = embedded[1]
    out["audio"] = _audio_window(audio_encoder, clip.audio, 4 * lat_frames, fps)
    out["router_targets"], out["router_weights"] = clip.router_targets, clip.router_weights
    log.debug("encoded %s (motion latents: %s)", clip.key, motion_lat)
    return out


def _describe(obj: Any, fields: tuple[str, ...]) -> dict[str, Any]:
    """An encoder's identity for the manifest: class, declared attributes and an optional `name`."""
    info = {"class": f"{type(obj).__module__}.{type(obj).__qualname__}", "name": getattr(obj, "name", None)}
    return info | {f: getattr(obj, f, None) for f in fields}


def _config(dataset: RawClipDataset, vae, text_encoder, audio_encoder, dtype: torch.dtype) -> dict[str, Any]:
    spec = dataset.spec
    return {
        "height": dataset.height,
        "width": dataset.width,
        "patch": dataset.patch,
        "frames": spec.frames,
        "motion_frames": spec.motion_frames,
        "fps": spec.fps,
        "sample_rate": spec.sample_rate,
        "box_keys": spec.box_keys,
        "loudness_lufs": dataset.loudness_lufs,
        "dtype": str(dtype).removeprefix("torch."),
        "vae": _describe(vae, ("latent_channels", "spatial_factor", "temporal_factor")),
        "text_encoder": _describe(text_encoder, ("text_dim",)),
        "audio_encoder": _describe(audio_encoder, ("sample_rate", "num_layers", "feature_dim", "frame_rate")),
    }


def _write_json(path: Path, data: dict) -> None:
    with atomic_output(path) as tmp:
        tmp.write_text(json.dumps(data, indent=1))


def _read_manifest(out_dir: Path) -> dict[str, Any]:
    path = out_dir / MANIFEST
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError:
        raise CacheError(
            f"{out_dir} has no {MANIFEST}: it is not a latent cache. To have `cointeract train` build it, set "
            "data.encode.source to the data.csv of `cointeract prepare` and name the encoders in [data.encode]"
        ) from None
    except json.JSONDecodeError as err:
        raise CacheError(f"{path} is not valid JSON ({err}); delete the folder and build the cache again") from None
    if manifest.get("format") != FORMAT or manifest.get("version") != VERSION:
        raise CacheError(
            f"{path} is format {manifest.get('format')!r} version {manifest.get('version')!r}; this code reads "
            f"{FORMAT!r} version {VERSION}: rebuild the cache"
        )
    return manifest


def _resume(out_dir: Path, config: dict[str, Any]) -> dict[str, Any]:
    """The existing manifest (entries whose shard is missing removed) or a fresh one; CacheError on other settings."""
    if not (out_dir / MANIFEST).exists():
        return {"format": FORMAT, "version": VERSION, "config": config, "samples": [], "dropped": []}
    manifest = _read_manifest(out_dir)
    if manifest["config"] != config:
        diff = sorted(k for k in config if manifest["config"].get(k) != config[k])
        raise CacheError(
            f"the cache in {out_dir} was built with other settings ({', '.join(diff)} differ); "
            "use another out_dir, or delete this one to rebuild"
        )
    present = [s for s in manifest["samples"] if (out_dir / s["shard"]).is_file()]
    if len(present) < len(manifest["samples"]):
        log.warning(
            "%d cached samples lost their shard; they are encoded again", len(manifest["samples"]) - len(present)
        )
    manifest["samples"] = present
    return manifest


def _next_shard(manifest: dict[str, Any]) -> int:
    used = [int(s["shard"].removeprefix("shard-").removesuffix(".safetensors")) for s in manifest["samples"]]
    return max(used, default=-1) + 1


class _ShardWriter:
    """Collects encoded samples; each full shard is written, then the manifest that lists it."""

    def __init__(self, out_dir: Path, manifest: dict[str, Any], shard_size: int, dtype: torch.dtype) -> None:
        self.out_dir, self.manifest, self.shard_size, self.dtype = out_dir, manifest, shard_size, dtype
        self.tensors: dict[str, torch.Tensor] = {}
        self.entries: list[dict[str, Any]] = []
        self.index = _next_shard(manifest)

    def add(self, clip: RawClip, tensors: dict[str, torch.Tensor]) -> None:
        for name, t in tensors.items():
            t = t.detach().cpu()
            self.tensors[f"{clip.key}/{name}"] = t.to(self.dtype) if name not in LABELS else t.float()
        entry = {"key": clip.key, "row": clip.index, "product_scale": clip.product_scale, "tensors": sorted(tensors)}
        self.entries.append(entry)
        if len(self.entries) >= self.shard_size:
            self.flush()

    def flush(self) -> None:
        if not self.entries:
            return
        name = f"shard-{self.index:05d}.safetensors"
        write_safetensors(self.out_dir / name, self.tensors, {"format": FORMAT})
        self.manifest["samples"].extend({**e, "shard": name} for e in self.entries)
        _write_json(self.out_dir / MANIFEST, self.manifest)
        log.info("cache: wrote %s (%d samples, %d in total)", name, len(self.entries), len(self.manifest["samples"]))
        self.tensors, self.entries, self.index = {}, [], self.index + 1


def _encode_row(dataset: RawClipDataset, i: int, encoders: tuple) -> tuple[RawClip, dict] | tuple[str, str]:
    """(clip, tensors), or (reason, message) for a data problem; encoder failures propagate."""
    try:
        clip = dataset[i]
    except (OSError, ValueError) as err:  # media that passed validation but does not decode
        return "load_failed", str(err)
    try:
        return clip, encode_clip(clip, *encoders, fps=dataset.spec.fps)
    except ShortAudioError as err:
        return "short_audio", str(err)


def build_cache(
    dataset: RawClipDataset,
    vae: VideoVAE,
    text_encoder: TextEncoder,
    audio_encoder: AudioEncoder,
    out_dir: str | os.PathLike,
    *,
    shard_size: int = 32,
    dtype: torch.dtype = torch.bfloat16,
    dit_patch: int = 2,
    source: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Encode every row of `dataset` once into `out_dir` (resumable; run it on one process); returns the manifest.

    `source` (e.g. the CSV's path and sha256) is stored in the manifest once every row is done: it marks the cache
    complete for that CSV."""
    if dataset.patch != vae.spatial_factor * dit_patch:
        raise ValueError(
            f"the dataset's labels use {dataset.patch}-pixel tokens but the VAE and DiT give "
            f"{vae.spatial_factor}x{dit_patch} = {vae.spatial_factor * dit_patch}; build the dataset with that patch"
        )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    manifest = _resume(out, _config(dataset, vae, text_encoder, audio_encoder, dtype))
    if not (out / SHARED).is_file():
        with torch.no_grad():  # prompt dropout: "" for RGB, the HOI prefix alone for the HOI stream (official)
            empty, hoi_empty = text_encoder.encode(["", HOI_PREFIX])
        shared = {"empty_prompt": empty, "hoi_empty_prompt": hoi_empty}
        write_safetensors(out / SHARED, {k: v.detach().cpu().to(dtype) for k, v in shared.items()}, {"format": FORMAT})
    keys = {row.key for row in dataset.rows}
    stale = [s for s in manifest["samples"] if s["key"] not in keys]
    if stale:  # rows edited or removed since: their tensors stay in the shards but are no longer listed
        log.info("cache: %d cached samples are no longer rows of the dataset; dropped from the manifest", len(stale))
        manifest["samples"] = [s for s in manifest["samples"] if s["key"] in keys]
    done = {s["key"] for s in manifest["samples"]}
    dropped = [{"row": r, "reason": c, "message": m} for r, c, m in dataset.report().dropped]
    writer = _ShardWriter(out, manifest, shard_size, dtype)
    for i, row in enumerate(dataset.rows):
        if row.key not in done:
            result = _encode_row(dataset, i, (vae, text_encoder, audio_encoder))
            if isinstance(result[0], RawClip):
                writer.add(*result)
            else:
                log.warning("cache: row %d skipped (%s): %s", row.index, *result)
                dropped.append({"row": row.index, "reason": result[0], "message": result[1], "key": row.key})
    writer.flush()
    manifest["dropped"], manifest["dataset"] = dropped, dataset.report().summary()
    if source is not None:
        manifest["source"] = source
    _write_json(out / MANIFEST, manifest)
    log.info("cache %s: %d samples, %d rows dropped", out, len(manifest["samples"]), len(dropped))
    return manifest


def check_model_fit(config: dict[str, Any], dit: DiTConfig) -> None:
    """CacheError when the cache's encoders give other widths than the DiT takes (latent channels, text, audio)."""
    pairs = {
        "latent channels (VAE -> model in_dim)": (config["vae"]["latent_channels"], dit.in_dim),
        "text width (text encoder -> model text_dim)": (config["text_encoder"]["text_dim"], dit.text_dim),
        "audio layers (audio encoder -> model audio_layers)": (config["audio_encoder"]["num_layers"], dit.audio_layers),
        "audio width (audio encoder -> model audio_dim)": (config["audio_encoder"]["feature_dim"], dit.audio_dim),
    }
    bad = [f"{what}: {got} vs {want}" for what, (got, want) in pairs.items() if got is not None and got != want]
    if bad:
        raise CacheError(
            f"the latent cache does not fit the model ({'; '.join(bad)}); build the cache with the encoders of "
            "this model, or choose the model.preset the cache was built for"
        )


class CachedDataset(torch.utils.data.Dataset):
    """A latent cache folder as a Dataset of TrainSample; checks at open that every listed shard and key exists."""

    def __init__(self, out_dir: str | os.PathLike) -> None:
        from safetensors import safe_open

        self.dir = Path(out_dir)
        self.manifest = _read_manifest(self.dir)
        self.samples: list[dict[str, Any]] = self.manifest["samples"]
        self._handles: dict[str, Any] = {}
        for shard in sorted({s["shard"] for s in self.samples} | {SHARED}):
            if not (self.dir / shard).is_file():
                raise CacheError(
                    f"{self.dir / shard} is listed in {MANIFEST} but missing: the cache is incomplete. Run build_cache "
                    "again with the same dataset and encoders: it re-encodes the samples of missing shards"
                )
            with safe_open(self.dir / shard, framework="pt") as f:
                keys = set(f.keys())
            if shard == SHARED:
                self._has_hoi_empty = "hoi_empty_prompt" in keys  # caches built before it was stored lack it
            wanted = {"empty_prompt"} if shard == SHARED else set()
            wanted |= {f"{s['key']}/{n}" for s in self.samples if s["shard"] == shard for n in s["tensors"]}
            if wanted - keys:
                raise CacheError(
                    f"{self.dir / shard} lacks {len(wanted - keys)} tensors the manifest lists "
                    f"(e.g. {sorted(wanted - keys)[0]}): the shard is corrupt; delete it and run build_cache again"
                )

    @property
    def config(self) -> dict[str, Any]:
        return self.manifest["config"]

    def __len__(self) -> int:
        return len(self.samples)

    def __getstate__(self) -> dict[str, Any]:  # DataLoader workers open their own file handles
        return {**self.__dict__, "_handles": {}}

    def _get(self, shard: str, key: str) -> torch.Tensor:
        from safetensors import safe_open

        if shard not in self._handles:
            self._handles[shard] = safe_open(self.dir / shard, framework="pt")
        return self._handles[shard].get_tensor(key)

    def __getitem__(self, i: int) -> TrainSample:
        """Sample i as a TrainSample (latents [C, F, h, w]; absent parts None; target_with_motion = target_alone
        when the row has no motion video, as the official trainer then takes the person-first pass)."""
        entry = self.samples[i]
        t = {n: self._get(entry["shard"], f"{entry['key']}/{n}") for n in entry["tensors"]}
        return TrainSample(
            target_with_motion=t.get("target_with_motion", t["target_alone"]),
            motion=t.get("motion"),
            target_alone=t["target_alone"],
            person=t["person"],
            product=t.get("product"),
            product_scale=float(entry["product_scale"]),
            pose=t.get("pose"),
            hoi=t.get("hoi"),
            prompt=t["prompt"],
            empty_prompt=self._get(SHARED, "empty_prompt"),
            hoi_prompt=t.get("hoi_prompt"),
            audio=t["audio"],
            hoi_empty_prompt=self._get(SHARED, "hoi_empty_prompt") if self._has_hoi_empty and "hoi" in t else None,
            router_targets=t["router_targets"],
            router_weights=t["router_weights"],
        )
