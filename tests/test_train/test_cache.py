"""Latent cache: shapes, the joint motion pass, determinism, resume after a crash, manifest integrity errors."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from comfyui_cointeract.cointeract_core.pipeline.conditioning import HOI_PREFIX
from comfyui_cointeract.cointeract_core.toy.codec import ToyCodec
from comfyui_cointeract.train.cache import CachedDataset, CacheError, build_cache
from comfyui_cointeract.train.data import RawClipDataset
from comfyui_cointeract.train.sample import TrainSample


class TinyText:
    """Deterministic text encoder: one row per UTF-8 byte plus an end row, text_dim 6."""

    text_dim = 6

    def encode(self, prompts: list[str]) -> list[torch.Tensor]:
        out = []
        for p in prompts:
            codes = torch.tensor([*p.encode(), 0], dtype=torch.float32)
            out.append(torch.sin(codes[:, None] * torch.arange(1, 7) / 37.0))
        return out


class TinyAudio:
    """Deterministic 'wav2vec2': 3 layers x 4 features at 50 Hz (window 400, hop 320 samples, as wav2vec2)."""

    sample_rate, num_layers, feature_dim, frame_rate = 16000, 3, 4, 50.0

    def __init__(self, drop: int = 0) -> None:
        self.drop = drop

    def hidden_states(self, waveform: torch.Tensor) -> torch.Tensor:
        n = (waveform.shape[0] - 400) // 320 + 1 - self.drop
        w = waveform[: n * 320].reshape(n, 320)
        feats = torch.stack([w.abs().mean(1), w.square().mean(1), w.mean(1), w.amax(1)], -1)  # [n, 4]
        return torch.stack([feats * (layer + 1) for layer in range(3)])  # [3, n, 4]


class RecordingVAE(ToyCodec):
    """ToyCodec that records the frame count of every encode call and can fail after a number of calls."""

    def __init__(self, fail_after: int | None = None) -> None:
        super().__init__(spatial_factor=4)
        self.calls: list[int] = []
        self.fail_after = fail_after

    def encode(self, video: torch.Tensor) -> torch.Tensor:
        if self.fail_after is not None and len(self.calls) >= self.fail_after:
            raise RuntimeError("simulated crash")
        self.calls.append(video.shape[2])
        return super().encode(video)


class MemoDataset(RawClipDataset):
    """Loads each clip once per test module (loading itself is tested in test_data.py)."""

    def __getitem__(self, i: int):
        memo = self.__dict__.setdefault("_memo", {})
        if i not in memo:
            memo[i] = super().__getitem__(i)
        return memo[i]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory, kit_factory) -> RawClipDataset:
    kit = kit_factory(tmp_path_factory.mktemp("cache_data"))
    rows = [
        kit.row("full", seed=1, pose=True, hoi=True),
        kit.row("nomotion", seed=2, motion=False),
        kit.row("noproduct", seed=3, product=False),
    ]
    return MemoDataset(kit.csv(rows), None, 32, 32, patch=8, loudness_lufs=None)


def _all_tensors(out_dir) -> dict[str, torch.Tensor]:
    return {f"{p.name}:{k}": v for p in sorted(out_dir.glob("*.safetensors")) for k, v in load_file(p).items()}


def _same_samples(a: CachedDataset, b: CachedDataset) -> None:
    assert len(a) == len(b)
    for i in range(len(a)):
        sa, sb = a[i], b[i]
        for name in TrainSample.__dataclass_fields__:
            x, y = getattr(sa, name), getattr(sb, name)
            assert (x is None and y is None) or (torch.equal(x, y) if isinstance(x, torch.Tensor) else x == y), name


def test_shapes_and_contents(dataset, tmp_path):
    ds = dataset
    vae = RecordingVAE()
    manifest = build_cache(ds, vae, TinyText(), TinyAudio(), tmp_path / "cache", dtype=torch.float32, shard_size=2)
    cache = CachedDataset(tmp_path / "cache")
    assert len(cache) == 3 and manifest["dropped"] == [] and len(list((tmp_path / "cache").glob("shard-*"))) == 2
    c = 4 * 3 * 16  # toy codec channels at spatial factor 4
    full, nomotion, noproduct = cache[0], cache[1], cache[2]
    assert full.target_with_motion.shape == (c, 20, 8, 8) and full.motion.shape == (c, 19, 8, 8)
    assert full.target_alone.shape == (c, 20, 8, 8) and full.person.shape == (c, 1, 8, 8)
    assert full.product.shape == (c, 1, 8, 8) and full.pose.shape == (c, 20, 8, 8) and full.hoi.shape == (c, 20, 8, 8)
    prompt = ds[0].prompt
    assert torch.equal(full.prompt, TinyText().encode([prompt])[0])
    assert torch.equal(full.hoi_prompt, TinyText().encode([HOI_PREFIX + prompt])[0])
    assert torch.equal(full.empty_prompt, TinyText().encode([""])[0]) and full.empty_prompt.shape == (1, 6)
    assert torch.equal(full.hoi_empty_prompt, TinyText().encode([HOI_PREFIX])[0])  # HOI prompt dropout (official)
    assert noproduct.hoi_empty_prompt is None  # no HOI stream, no HOI prompt
    assert full.audio.shape == (3, 4, 80)
    assert full.router_targets.shape == (320, 3) and full.router_weights.shape == (320,)
    assert torch.equal(full.router_targets, ds[0].router_targets) and full.product_scale == 1.0
    assert nomotion.motion is None and torch.equal(nomotion.target_with_motion, nomotion.target_alone)
    assert noproduct.product is None and noproduct.pose is None and noproduct.hoi is None
    assert noproduct.hoi_prompt is None and noproduct.motion is not None
    # The VAE saw: two joint 153-frame passes (rows with motion), three 81-frame person-first passes, pose and HOI.
    assert sorted(vae.calls).count(153) == 2 and 73 not in vae.calls
    assert sorted(vae.calls).count(81) == 3 + 2 and vae.calls.count(1) == 3 + 2


def test_joint_pass_and_person_first_pass(dataset, tmp_path):
    ds = dataset
    build_cache(ds, ToyCodec(4), TinyText(), TinyAudio(), tmp_path / "cache", dtype=torch.float32)
    sample, clip = CachedDataset(tmp_path / "cache")[0], ds[0]
    to_vae = lambda f: f.permute(3, 0, 1, 2)[None].float() / 127.5 - 1  # noqa: E731
    joint = ToyCodec(4).encode(to_vae(torch.cat([clip.motion, clip.video[:80]])))[0]  # 153 frames -> 39 latents
    assert torch.equal(torch.cat([sample.motion, sample.target_with_motion], 1), joint)
    alone = ToyCodec(4).encode(to_vae(torch.cat([clip.person[None], clip.video[1:]])))[0]
    assert torch.equal(sample.target_alone, alone[:, 1:])
    assert torch.equal(sample.hoi, ToyCodec(4).encode(to_vae(clip.hoi))[0][:, 1:])
    # The toy codec is lossless: the target decodes to video frames 0..79 (joint) and 1..80 (person first).
    assert torch.equal(ToyCodec(4).decode(joint[None])[0][:, 73:], to_vae(clip.video[:80])[0])
    assert not torch.equal(sample.target_with_motion, sample.target_alone)


def test_deterministic_and_bf16_default(dataset, tmp_path):
    ds = dataset
    for name in ("a", "b"):
        build_cache(ds, ToyCodec(4), TinyText(), TinyAudio(), tmp_path / name, shard_size=2)
    a, b = _all_tensors(tmp_path / "a"), _all_tensors(tmp_path / "b")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert (tmp_path / "a/manifest.json").read_text() == (tmp_path / "b/manifest.json").read_text()
    sample = CachedDataset(tmp_path / "a")[0]
    assert sample.target_alone.dtype == torch.bfloat16 and sample.router_weights.dtype == torch.float32


def test_resume_after_crash(dataset, tmp_path):
    ds = dataset
    per_row = [6, 3, 3]  # VAE calls per row: full (joint, alone, person, product, pose, hoi), 3 and 3
    with pytest.raises(RuntimeError, match="simulated crash"):
        build_cache(ds, RecordingVAE(fail_after=per_row[0] + 2), TinyText(), TinyAudio(), tmp_path / "c", shard_size=1)
    assert [s["row"] for s in json.loads((tmp_path / "c/manifest.json").read_text())["samples"]] == [0]
    again = RecordingVAE()
    manifest = build_cache(ds, again, TinyText(), TinyAudio(), tmp_path / "c", shard_size=1)
    assert len(again.calls) == per_row[1] + per_row[2]  # only the rows not yet cached
    assert [s["row"] for s in manifest["samples"]] == [0, 1, 2]
    build_cache(ds, ToyCodec(4), TinyText(), TinyAudio(), tmp_path / "fresh", shard_size=1)
    _same_samples(CachedDataset(tmp_path / "c"), CachedDataset(tmp_path / "fresh"))
    third = RecordingVAE()
    build_cache(ds, third, TinyText(), TinyAudio(), tmp_path / "c", shard_size=1)
    assert third.calls == []  # everything cached: nothing encoded


def test_manifest_integrity_errors(dataset, tmp_path):
    ds = dataset
    out = tmp_path / "cache"
    build_cache(ds, RecordingVAE(), TinyText(), TinyAudio(), out, shard_size=1)
    (out / "shard-00001.safetensors").unlink()
    with pytest.raises(CacheError, match="shard-00001.safetensors is listed in manifest.json but missing"):
        CachedDataset(out)
    vae = RecordingVAE()
    build_cache(ds, vae, TinyText(), TinyAudio(), out, shard_size=1)  # re-encodes the lost sample only
    assert len(vae.calls) == 3 and len(CachedDataset(out)) == 3
    shard = sorted(out.glob("shard-*"))[0]
    tensors = load_file(shard)
    save_file({k: v for k, v in tensors.items() if not k.endswith("/audio")}, shard)
    with pytest.raises(CacheError, match="lacks 1 tensors .*audio"):
        CachedDataset(out)
    with pytest.raises(CacheError, match="other settings \\(dtype differ"):
        build_cache(ds, RecordingVAE(), TinyText(), TinyAudio(), out, dtype=torch.float16)
    with pytest.raises(CacheError, match="no manifest.json"):
        CachedDataset(tmp_path)
    (out / "manifest.json").write_text("{")
    with pytest.raises(CacheError, match="not valid JSON"):
        CachedDataset(out)


def test_short_audio_features_and_patch_mismatch(dataset, tmp_path):
    ds = dataset
    manifest = build_cache(ds, ToyCodec(4), TinyText(), TinyAudio(drop=4), tmp_path / "c", dtype=torch.float32)
    assert manifest["samples"] == [] and {d["reason"] for d in manifest["dropped"]} == {"short_audio"}
    assert "78 feature columns" in manifest["dropped"][0]["message"]
    with pytest.raises(ValueError, match="8-pixel tokens"):
        build_cache(ds, ToyCodec(8), TinyText(), TinyAudio(), tmp_path / "d")


def test_row_that_stops_loading_is_dropped(kit, tmp_path):
    ds = RawClipDataset(kit.csv([kit.row("a"), kit.row("b", seed=2)]), None, 32, 32, patch=8, loudness_lufs=None)
    (kit.root / "b/input.mkv").unlink()  # validated, then gone before caching
    manifest = build_cache(ds, ToyCodec(4), TinyText(), TinyAudio(), tmp_path / "c", dtype=torch.float32)
    assert [s["row"] for s in manifest["samples"]] == [0]
    assert [(d["row"], d["reason"]) for d in manifest["dropped"]] == [(1, "load_failed")]
    assert "input.mkv" in manifest["dropped"][0]["message"]


def test_caches_without_hoi_empty_prompt_still_load(dataset, tmp_path):
    """A cache written before `hoi_empty_prompt` was stored opens; its samples carry None (the trainer warns)."""
    from safetensors.torch import load_file, save_file

    build_cache(dataset, ToyCodec(4), TinyText(), TinyAudio(), tmp_path / "c", dtype=torch.float32)
    shared = tmp_path / "c" / "shared.safetensors"
    save_file({"empty_prompt": load_file(shared)["empty_prompt"]}, shared, metadata={"format": "pt"})
    sample = CachedDataset(tmp_path / "c")[0]
    assert sample.hoi is not None and sample.hoi_empty_prompt is None


def test_a_cache_that_does_not_fit_the_model_is_refused_by_the_trainer(dataset, tmp_path):
    from comfyui_cointeract.cointeract_core.model.config import PRESETS
    from comfyui_cointeract.train.builders import build_dataset
    from comfyui_cointeract.train.config import DataConfig

    build_cache(dataset, ToyCodec(4), TinyText(), TinyAudio(), tmp_path / "c", dtype=torch.float32)
    with pytest.raises(CacheError, match=r"latent channels \(VAE -> model in_dim\): 192 vs 16; text width .*: 6 vs 32"):
        build_dataset(DataConfig(path=str(tmp_path / "c")), PRESETS["tiny_cointeract"])
