"""Checkpoint files: layouts, errors, model families, strict meta-device loading, save round trips, peak RSS."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

import pytest
import safetensors
import safetensors.torch
import torch

from comfyui_cointeract.cointeract_core.model.config import PRESETS, DiTConfig, config_to_json
from comfyui_cointeract.cointeract_core.model.dit import CoInteractDiT
from comfyui_cointeract.cointeract_core.weights import checkpoint as ck
from comfyui_cointeract.cointeract_core.weights import lora as lora_lib
from comfyui_cointeract.cointeract_core.weights.safetensors_io import write_safetensors

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
LORA_TARGETS = re.compile(r"(self_attn|cross_attn|injector\.\d+)\.[qkvo]\.weight$|ffn\.(ffn_base\.)?[02]\.weight$")


# ---------------------------------------------------------------------------------------------- helpers


def random_state(cfg: DiTConfig, seed: int = 0) -> dict[str, torch.Tensor]:
    """A state dict of `cfg` with every tensor random (zero-initialised parts included)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.device("meta"):
        shapes = {k: v.shape for k, v in CoInteractDiT(cfg).state_dict().items()}
    return {k: torch.randn(s, generator=gen) / max(1, s[-1]) ** 0.5 for k, s in sorted(shapes.items())}


def split_official(sd: Mapping[str, torch.Tensor]) -> tuple[dict, dict]:
    """Model state dict -> (Wan2.2-S2V base with `ffn.{0,2}` keys, CoInteract MoE + HOI tensors)."""
    base = {ck.to_model_key(k, False): v for k, v in sd.items() if not ck.is_cointeract_key(k) or "cond_encoder" in k}
    extra = {k: v for k, v in sd.items() if ck.is_cointeract_key(k) and "cond_encoder" not in k}
    return base, extra


def make_lora(sd: Mapping[str, torch.Tensor], rank: int = 3, seed: int = 1) -> dict[str, torch.Tensor]:
    """Official-layout LoRA (`X.lora_A.default.weight`) on every q/k/v/o and base-FFN weight of `sd`."""
    gen, out = torch.Generator().manual_seed(seed), {}
    for key in sorted(k for k in sd if LORA_TARGETS.search(k)):
        module, (o, i) = key.removesuffix(".weight"), sd[key].shape
        out[f"{module}.lora_A.default.weight"] = torch.randn(rank, i, generator=gen) / i**0.5
        out[f"{module}.lora_B.default.weight"] = torch.randn(o, rank, generator=gen) * 0.1
    return out


def inputs(cfg: DiTConfig, frames: int = 2, hw: tuple[int, int] = (8, 8), t: float = 500.0) -> dict:
    gen = torch.Generator().manual_seed(7)

    def rnd(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=gen)

    c = cfg.in_dim
    out = dict(
        x=rnd(1, c, frames, *hw),
        timestep=torch.tensor([t]),
        context=rnd(1, 5, cfg.text_dim),
        audio=rnd(1, cfg.audio_layers, cfg.audio_dim, 4 * frames),
        person=rnd(1, c, 1, *hw),
        motion=rnd(1, c, 19, *hw),
    )
    if cfg.hoi:
        out.update(hoi=rnd(1, c, frames, *hw), hoi_context=rnd(1, 4, cfg.text_dim), attention="full")
    return out


def forward(model: torch.nn.Module, cfg: DiTConfig) -> torch.Tensor:
    with torch.no_grad():
        return model(**inputs(cfg)).velocity


def write_sharded(sd: Mapping[str, torch.Tensor], folder: Path, n: int = 3, prefix: str = "") -> Path:
    """The original Wan layout: `diffusion_pytorch_model-0000i-of-0000n.safetensors` + index.json."""
    folder.mkdir(parents=True, exist_ok=True)
    keys, weight_map = sorted(sd), {}
    for i in range(n):
        name = f"diffusion_pytorch_model-{i + 1:05d}-of-{n:05d}.safetensors"
        part = {prefix + k: sd[k] for k in keys[i::n]}
        write_safetensors(folder / name, part, {"format": "pt"})
        weight_map.update(dict.fromkeys(part, name))
    index = folder / "diffusion_pytorch_model.safetensors.index.json"
    index.write_text(json.dumps({"metadata": {"total_size": 123}, "weight_map": weight_map}))
    return index


def meta_config(cfg: DiTConfig) -> dict[str, str]:
    return {"cointeract_config": config_to_json(cfg)}


def assert_same_state(model: torch.nn.Module, expected: Mapping[str, torch.Tensor]) -> None:
    got = model.state_dict()
    assert set(got) == set(expected)
    bad = [k for k in got if not torch.equal(got[k], expected[k].to(got[k].dtype))]
    assert not bad, bad[:5]


# ---------------------------------------------------------------------------------------------- file layouts


def test_safetensors_round_trip_all_dtypes_and_library_compatibility(tmp_path):
    gen = torch.Generator().manual_seed(0)
    sd = {
        "a.f32": torch.randn(3, 4, generator=gen),
        "a.bf16": torch.randn(5, generator=gen).bfloat16(),
        "a.f16": torch.randn(2, 2, 2, generator=gen).half(),
        "a.f64": torch.randn(3, generator=gen).double(),
        "b.i64": torch.arange(6).reshape(2, 3),
        "b.i8": torch.tensor([-1, 2], dtype=torch.int8),
        "b.u8": torch.tensor([1, 255], dtype=torch.uint8),
        "b.bool": torch.tensor([True, False, True]),
        "c.scalar": torch.tensor(3.5),
        "c.empty": torch.zeros(0, 3),
        "c.fp8": torch.randn(4).to(torch.float8_e4m3fn),
    }
    ours, theirs = tmp_path / "ours.safetensors", tmp_path / "theirs.safetensors"
    write_safetensors(ours, sd, {"note": "hi"})
    safetensors.torch.save_file(sd, theirs, metadata={"note": "hi"})
    for path in (ours, theirs):
        got, meta = ck.read_state_dict(path)
        assert meta["note"] == "hi" and set(got) == set(sd)
        for k, v in sd.items():
            assert got[k].dtype == v.dtype and got[k].shape == v.shape
            assert torch.equal(got[k].reshape(-1).view(torch.uint8), v.reshape(-1).view(torch.uint8))
    with safetensors.safe_open(ours, "pt") as f:
        assert f.metadata()["note"] == "hi"
        assert torch.equal(f.get_tensor("a.bf16"), sd["a.bf16"])
    lazy = dict(ck.iter_state_dict(ours, dtype=torch.float32))
    assert lazy["a.bf16"].dtype == torch.float32 and lazy["b.i64"].dtype == torch.int64


@pytest.mark.parametrize("prefix", ["model.diffusion_model.", "diffusion_model.", ""])
def test_prefixes_are_stripped_and_other_components_ignored(tmp_path, prefix):
    sd = {"patch_embedding.weight": torch.ones(2), "blocks.0.modulation": torch.zeros(1, 6, 2)}
    extra = {"first_stage_model.decoder.weight": torch.ones(1)} if prefix else {}
    write_safetensors(tmp_path / "m.safetensors", {**{prefix + k: v for k, v in sd.items()}, **extra})
    ckpt = ck.open_checkpoint(tmp_path / "m.safetensors")
    assert ckpt.prefix == prefix and set(ckpt.entries) == set(sd) and ckpt.format == "single"


def test_sharded_set_opens_from_index_any_shard_folder_or_all_shards(tmp_path):
    sd = random_state(PRESETS["tiny"])
    index = write_sharded(sd, tmp_path / "wan", prefix="model.diffusion_model.")
    shards = sorted((tmp_path / "wan").glob("*-of-*.safetensors"))
    for given in (index, shards[1], tmp_path / "wan", shards):
        ckpt = ck.open_checkpoint(given)
        assert ckpt.format == "sharded" and len(ckpt.files) == 3 and set(ckpt.entries) == set(sd)
        assert ckpt.metadata["total_size"] == "123"
    got, _ = ck.read_state_dict(shards[2])
    assert all(torch.equal(got[k], sd[k]) for k in sd)


def test_missing_shard_is_named(tmp_path):
    index = write_sharded(random_state(PRESETS["tiny"]), tmp_path / "wan")
    (tmp_path / "wan" / "diffusion_pytorch_model-00002-of-00003.safetensors").unlink()
    for given in (index, tmp_path / "wan" / "diffusion_pytorch_model-00001-of-00003.safetensors"):
        with pytest.raises(FileNotFoundError, match=r"1 are missing.*00002-of-00003\.safetensors.*download"):
            ck.open_checkpoint(given)


def test_shard_without_index_and_index_mismatch(tmp_path):
    index = write_sharded(random_state(PRESETS["tiny"]), tmp_path / "wan")
    raw = json.loads(index.read_text())
    key = next(iter(raw["weight_map"]))
    raw["weight_map"][key] = next(v for v in raw["weight_map"].values() if v != raw["weight_map"][key])
    index.write_text(json.dumps(raw))
    with pytest.raises(ValueError, match="do not hold them"):
        ck.open_checkpoint(index)
    index.unlink()
    with pytest.raises(FileNotFoundError, match="one shard of a sharded checkpoint.*index"):
        ck.open_checkpoint(tmp_path / "wan" / "diffusion_pytorch_model-00001-of-00003.safetensors")


def test_truncated_file_is_detected_from_the_header(tmp_path):
    path = tmp_path / "m.safetensors"
    write_safetensors(path, {"w": torch.randn(64, 64)})
    data = path.read_bytes()
    path.write_bytes(data[:-100])
    with pytest.raises(ValueError, match=r"m\.safetensors is truncated.*download it again"):
        ck.open_checkpoint(path)
    path.write_bytes(data[:20])
    with pytest.raises(ValueError, match="not a safetensors file"):
        ck.open_checkpoint(path)


@pytest.mark.parametrize(
    "content", [b"", b"abc", b"PK\x03\x04" + bytes(200), b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}     "]
)
def test_non_safetensors_file(tmp_path, content):
    path = tmp_path / "x.safetensors"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=r"x\.safetensors is not a safetensors file"):
        ck.open_checkpoint(path)


@pytest.mark.parametrize("suffix", [".pth", ".bin", ".ckpt", ".pt"])
def test_pickles_are_refused(tmp_path, suffix):
    path = tmp_path / f"model{suffix}"
    torch.save({"w": torch.ones(1)}, path)
    with pytest.raises(ValueError, match="pickle.*safetensors.*weights_only=True"):
        ck.open_checkpoint(path)


def test_missing_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.safetensors"):
        ck.open_checkpoint(tmp_path / "nope.safetensors")


def test_atomic_write_keeps_the_old_file_when_writing_fails(tmp_path):
    path = tmp_path / "m.safetensors"
    write_safetensors(path, {"w": torch.ones(3)})

    class Failing(dict):
        reads = 0

        def __getitem__(self, key):
            Failing.reads += 1
            if Failing.reads > 2:
                raise RuntimeError("disk full")
            return super().__getitem__(key)

    with pytest.raises(RuntimeError, match="disk full"):
        write_safetensors(path, Failing(a=torch.zeros(2), b=torch.zeros(2)))
    assert [p.name for p in tmp_path.iterdir()] == ["m.safetensors"]
    assert torch.equal(ck.read_state_dict(path)[0]["w"], torch.ones(3))


# ---------------------------------------------------------------------------------------------- families


def reference_keys(fixtures_dir: Path) -> dict[str, list[int]]:
    """Names and shapes of the Wan2.2-S2V-14B state dict (the reference model built on the meta device)."""
    return json.loads((fixtures_dir / "wan-s2v-14b-keys.json").read_text())


FAMILIES = [
    "wan22_s2v",
    "wan_t2v",
    "wan_i2v",
    "wan_i2v ",
    "wan_ti2v",
    "wan_vace",
    "wan_animate",
    "cointeract",
    "unknown",
]


def _families(fixtures_dir: Path) -> dict[str, dict[str, tuple[int, ...]]]:
    s2v = {k: tuple(v) for k, v in reference_keys(fixtures_dir).items()}
    audio = ("casual_audio_encoder.", "audio_injector.", "cond_encoder.", "frame_packer.", "trainable_cond_mask.")
    t2v = {k: v for k, v in s2v.items() if not k.startswith(audio)}
    i2v21 = {**t2v, "patch_embedding.weight": (5120, 36, 1, 2, 2), "img_emb.proj.0.bias": (1280,)}
    lora = {
        "blocks.0.self_attn.q.lora_A.default.weight": (128, 5120),
        "blocks.0.self_attn.q.lora_B.default.weight": (5120, 128),
    }
    return {
        "wan22_s2v": s2v,
        "wan_t2v": t2v,
        "wan_i2v": i2v21,
        "wan_i2v ": {**t2v, "patch_embedding.weight": (5120, 36, 1, 2, 2)},
        "wan_ti2v": {**t2v, "patch_embedding.weight": (3072, 48, 1, 2, 2)},
        "wan_vace": {
            **t2v,
            "vace_patch_embedding.weight": (5120, 96, 1, 2, 2),
            "vace_blocks.0.after_proj.weight": (5120, 5120),
        },
        "wan_animate": {
            **i2v21,
            "pose_patch_embedding.weight": (5120, 16, 1, 2, 2),
            "face_adapter.fuser_blocks.0.k_norm.weight": (128,),
        },
        "cointeract": {**lora, "blocks.0.ffn.router.0.weight": (2560, 5120), "depth_cond_mask.weight": (1, 5120)},
        "unknown": {"model.layers.0.weight": (4, 4)},
    }


@pytest.mark.parametrize("family", FAMILIES)
def test_detect_family(family, fixtures_dir):
    assert ck.detect_family(_families(fixtures_dir)[family]) == family.strip()


def test_base_loader_names_the_family_it_was_given(tmp_path):
    i2v = {
        "patch_embedding.weight": torch.zeros(8, 36, 1, 2, 2),
        "head.modulation": torch.zeros(1, 2, 8),
        "img_emb.proj.0.bias": torch.zeros(8),
        "blocks.0.ffn.0.weight": torch.zeros(4, 8),
    }
    write_safetensors(tmp_path / "wan21_i2v.safetensors", i2v)
    with pytest.raises(
        ValueError,
        match=r"expected a Wan2.2-S2V checkpoint; wan21_i2v.safetensors looks like "
        r"Wan2\.1 I2V \(has img_emb\.\*\)",
    ):
        ck.load_dit(tmp_path / "wan21_i2v.safetensors")
    write_safetensors(tmp_path / "coin.safetensors", {"depth_cond_mask.weight": torch.zeros(1, 8)})
    with pytest.raises(ValueError, match="pass it as the CoInteract checkpoint"):
        ck.load_dit(tmp_path / "coin.safetensors")


# ---------------------------------------------------------------------------------------------- 14B key layout


def test_14b_preset_has_exactly_the_reference_keys_and_shapes(fixtures_dir):
    with torch.device("meta"):
        model = CoInteractDiT(PRESETS["14B"])
    got = {k: list(v.shape) for k, v in model.state_dict().items()}
    assert got == reference_keys(fixtures_dir)
    assert not list(model.buffers())


def test_14b_cointeract_moves_the_ffn_and_adds_the_official_keys(fixtures_dir):
    reference = {k: tuple(v) for k, v in reference_keys(fixtures_dir).items()}
    with torch.device("meta"):
        got = {k: tuple(v.shape) for k, v in CoInteractDiT(PRESETS["14B_cointeract"]).state_dict().items()}
    moved = {ck.to_model_key(k, True): v for k, v in reference.items()}
    assert {k: got[k] for k in moved} == moved
    new = {k: v for k, v in got.items() if k not in moved}
    per_block = {
        "ffn.router.0.weight": (2560, 5120),
        "ffn.router.0.bias": (2560,),
        "ffn.router.2.weight": (2560,),
        "ffn.router.2.bias": (2560,),
        "ffn.router.3.weight": (3, 2560),
        "ffn.router.3.bias": (3,),
        "depth_modulation": (1, 6, 5120),
        **{f"ffn.{e}_expert.fc1.weight": (256, 5120) for e in ("hand", "face")},
        **{f"ffn.{e}_expert.fc1.bias": (256,) for e in ("hand", "face")},
        **{f"ffn.{e}_expert.fc2.weight": (5120, 256) for e in ("hand", "face")},
        **{f"ffn.{e}_expert.fc2.bias": (5120,) for e in ("hand", "face")},
    }
    expected = {f"blocks.{i}.{k}": v for i in range(40) for k, v in per_block.items()}
    expected.update(
        {
            "depth_patch_embedding.weight": (5120, 16, 1, 2, 2),
            "depth_patch_embedding.bias": (5120,),
            "depth_head.head.weight": (64, 5120),
            "depth_head.head.bias": (64,),
            "depth_head.modulation": (1, 2, 5120),
            "depth_cond_mask.weight": (1, 5120),
        }
    )
    assert new == expected
    assert all(ck.is_cointeract_key(k) for k in new)


# ---------------------------------------------------------------------------------------------- load_dit


def test_load_dit_from_a_prefixed_single_file_reproduces_the_wan_fixture(tmp_path, wan_fixture):
    params = {k.removeprefix("param."): v for k, v in wan_fixture.items() if k.startswith("param.")}
    meta = safetensors.safe_open(FIXTURES / "wan_s2v_tiny.safetensors", "pt").metadata()
    path = tmp_path / "wan2.2_s2v_tiny_bf16.safetensors"
    write_safetensors(path, {f"model.diffusion_model.{k}": v for k, v in params.items()}, {"config": meta["config"]})
    model = ck.load_dit(path, dtype=torch.float32)
    assert model.cfg == PRESETS["tiny"]
    assert_same_state(model, params)
    args = dict(
        x=wan_fixture["input.x"][None],
        timestep=wan_fixture["input.t"].float(),
        context=wan_fixture["input.context"][None],
        audio=wan_fixture["input.audio_input"],
        person=wan_fixture["input.ref_latents"],
        pose=wan_fixture["input.cond_states"],
        motion=wan_fixture["input.motion_latents"],
    )
    with torch.no_grad():
        out = model(**args).velocity[0]
    ref = wan_fixture["output.motion"]
    assert (out - ref).abs().max() <= 1e-4 * ref.std()


def test_official_files_load_like_the_official_state_dict(tmp_path):
    """The CoInteract fixture's params as the official files (Wan shards + CoInteract file) == load_state_dict."""
    fx = safetensors.torch.load_file(FIXTURES / "cointeract_tiny.safetensors")
    params = {k.removeprefix("param."): v for k, v in fx.items() if k.startswith("param.")}
    cfg = PRESETS["tiny_cointeract"]
    base, extra = split_official(params)
    index = write_sharded(base, tmp_path / "Wan2.2-S2V", n=2)
    ck.save_cointeract_checkpoint(extra, tmp_path / "checkpoint.safetensors", meta_config(cfg))
    model = ck.load_dit(index, tmp_path / "checkpoint.safetensors", dtype=torch.float32)
    assert model.cfg == cfg
    reference = CoInteractDiT(cfg).eval()
    reference.load_state_dict(params, strict=True)
    assert_same_state(model, params)
    assert torch.equal(forward(model, cfg), forward(reference, cfg))


def test_cointeract_checkpoint_merges_lora_then_loads_moe_and_hoi(tmp_path, ci_model):
    ci_cfg = ci_model.cfg
    sd = {k: v.clone() for k, v in ci_model.state_dict().items()}
    base, extra = split_official(sd)
    lora = make_lora(sd)
    write_safetensors(tmp_path / "base.safetensors", {f"diffusion_model.{k}": v for k, v in base.items()})
    ck.save_cointeract_checkpoint({**extra, **lora}, tmp_path / "ci.safetensors", meta_config(ci_cfg))
    model = ck.load_dit(
        tmp_path / "base.safetensors", tmp_path / "ci.safetensors", lora_strength=0.7, dtype=torch.float32
    )
    expected = dict(sd)
    merged = lora_lib.merge_lora(expected, lora, 0.7)
    assert len(merged) == len(lora) // 2 and any("ffn.ffn_base.0" in k for k in merged)
    assert any(k.startswith("audio_injector.injector.") for k in merged)
    assert_same_state(model, expected)
    assert not torch.equal(model.state_dict()["blocks.0.self_attn.q.weight"], sd["blocks.0.self_attn.q.weight"])


def test_lora_only_checkpoint_builds_without_moe_and_maps_ffn_base(tmp_path):
    cfg = PRESETS["tiny_cointeract"]
    sd = random_state(cfg)
    base, _ = split_official(sd)
    lora = make_lora(sd)
    write_safetensors(tmp_path / "base.safetensors", base)
    write_safetensors(tmp_path / "lora.safetensors", lora, meta_config(cfg))
    model = ck.load_dit(tmp_path / "base.safetensors", tmp_path / "lora.safetensors", dtype=torch.float32)
    assert model.cfg.moe is None and model.cfg.hoi is None and model.cfg.num_heads == cfg.num_heads
    a, b = lora["blocks.1.ffn.ffn_base.2.lora_A.default.weight"], lora["blocks.1.ffn.ffn_base.2.lora_B.default.weight"]
    torch.testing.assert_close(model.blocks[1].ffn[2].weight, base["blocks.1.ffn.2.weight"] + b @ a, rtol=0, atol=1e-6)


def test_config_asking_for_hoi_is_built_without_it_when_the_file_has_none(tmp_path):
    ci_cfg = PRESETS["tiny_cointeract"]
    sd = random_state(ci_cfg)
    base, extra = split_official(sd)
    extra = {k: v for k, v in extra.items() if "depth" not in k}
    write_safetensors(tmp_path / "base.safetensors", base)
    ck.save_cointeract_checkpoint(extra, tmp_path / "ci.safetensors")
    model = ck.load_dit(tmp_path / "base.safetensors", tmp_path / "ci.safetensors", dtype=torch.float32, cfg=ci_cfg)
    assert model.cfg.hoi is None and model.cfg.moe == ci_cfg.moe and model.cfg.num_heads == ci_cfg.num_heads
    assert not hasattr(model, "depth_head")


def test_pose_checkpoint_replaces_cond_encoder(tmp_path):
    ci_cfg = PRESETS["tiny_cointeract"]
    sd = random_state(ci_cfg)
    base, extra = split_official(sd)
    pose = {"cond_encoder.weight": torch.randn_like(sd["cond_encoder.weight"]), "cond_encoder.bias": torch.zeros(64)}
    write_safetensors(tmp_path / "base.safetensors", base)
    ck.save_cointeract_checkpoint({**extra, **pose}, tmp_path / "pose.safetensors", meta_config(ci_cfg))
    model = ck.load_dit(tmp_path / "base.safetensors", tmp_path / "pose.safetensors", dtype=torch.float32)
    assert torch.equal(model.cond_encoder.weight, pose["cond_encoder.weight"])


def test_lora_that_does_not_fit_names_the_key_and_both_shapes(tmp_path):
    ci_cfg = PRESETS["tiny_cointeract"]
    sd = random_state(ci_cfg)
    base, extra = split_official(sd)
    big = {
        "blocks.0.self_attn.q.lora_A.default.weight": torch.zeros(2, 5120),
        "blocks.0.self_attn.q.lora_B.default.weight": torch.zeros(5120, 2),
    }
    write_safetensors(tmp_path / "base.safetensors", base)
    ck.save_cointeract_checkpoint({**extra, **big}, tmp_path / "ci.safetensors", meta_config(ci_cfg))
    with pytest.raises(
        ValueError,
        match=r"blocks\.0\.self_attn\.q\.lora_A\.default\.weight \[2, 5120\].*"
        r"\[5120, 2\] does not fit blocks\.0\.self_attn\.q\.weight \[64, 64\]",
    ):
        ck.load_dit(tmp_path / "base.safetensors", tmp_path / "ci.safetensors")


def test_strict_load_lists_missing_unexpected_and_mismatched_keys(tmp_path):
    cfg = PRESETS["tiny"]
    sd = random_state(cfg)
    dropped = sorted(k for k in sd if ".cross_attn." in k)
    broken = {k: v for k, v in sd.items() if k not in dropped}
    broken["blocks.1.self_attn.q.bias"] = torch.zeros(7)
    broken["blocks.0.extra.weight"] = torch.zeros(1)
    write_safetensors(tmp_path / "base.safetensors", broken, {"config": json.dumps({"num_heads": 2, "text_len": 32})})
    with pytest.raises(ValueError) as err:
        ck.load_dit(tmp_path / "base.safetensors")
    msg = str(err.value)
    assert f"{len(dropped)} missing keys" in msg and f"({len(dropped) - 10} more)" in msg
    assert "blocks.0.cross_attn.k.bias" in msg
    assert "1 unexpected keys" in msg and "blocks.0.extra.weight" in msg
    assert "blocks.1.self_attn.q.bias: file [7] vs model [128]" in msg


def test_default_dtype_is_bf16_and_every_tensor_is_materialised(tmp_path, ci_model):
    ci_cfg = ci_model.cfg
    base, extra = split_official(ci_model.state_dict())
    write_safetensors(tmp_path / "base.safetensors", base)
    ck.save_cointeract_checkpoint(extra, tmp_path / "ci.safetensors", meta_config(ci_cfg))
    model = ck.load_dit(tmp_path / "base.safetensors", tmp_path / "ci.safetensors")
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    assert not any(p.is_meta for p in model.parameters()) and not model.training
    torch.testing.assert_close(model.head.head.weight, ci_model.head.head.weight.bfloat16(), rtol=0, atol=0)


def test_save_then_load_gives_identical_outputs(tmp_path, ci_model):
    ci_cfg = ci_model.cfg
    ck.save_dit(ci_model, tmp_path / "full.safetensors", {"note": "x"})
    meta = safetensors.safe_open(tmp_path / "full.safetensors", "pt").metadata()
    assert meta["note"] == "x" and json.loads(meta["cointeract_config"])["num_heads"] == ci_cfg.num_heads
    model = ck.load_dit(tmp_path / "full.safetensors", dtype=torch.float32)
    assert model.cfg == ci_cfg
    assert_same_state(model, ci_model.state_dict())
    assert torch.equal(forward(model, ci_cfg), forward(ci_model, ci_cfg))


def test_save_dit_refuses_unmerged_lora(tmp_path, ci_model):
    lora_lib.apply_lora_unmerged(ci_model, make_lora(ci_model.state_dict()))
    with pytest.raises(ValueError, match="unmerged LoRA"):
        ck.save_dit(ci_model, tmp_path / "x.safetensors")
    assert not list(tmp_path.iterdir())


def test_save_cointeract_checkpoint_writes_the_official_layout(tmp_path):
    tensors = {
        "pipe.dit.blocks.0.self_attn.q.lora_A.weight": torch.zeros(2, 4),
        "blocks.0.self_attn.q.lora_B.default.weight": torch.zeros(4, 2),
        "blocks.0.ffn.0.lora_A.weight": torch.zeros(2, 4),
        "diffusion_model.blocks.0.ffn.router.0.weight": torch.zeros(2, 4),
        "depth_cond_mask.weight": torch.zeros(1, 4),
    }
    ck.save_cointeract_checkpoint(tensors, tmp_path / "c.safetensors", {"step": "500"})
    ckpt = ck.open_checkpoint(tmp_path / "c.safetensors")
    assert sorted(ckpt.entries) == [
        "blocks.0.ffn.ffn_base.0.lora_A.default.weight",
        "blocks.0.ffn.router.0.weight",
        "blocks.0.self_attn.q.lora_A.default.weight",
        "blocks.0.self_attn.q.lora_B.default.weight",
        "depth_cond_mask.weight",
    ]
    assert ckpt.metadata == {"format": "pt", "step": "500"} and ck.detect_family(ckpt.shapes()) == "cointeract"
    with pytest.raises(ValueError, match="not a CoInteract key"):
        ck.save_cointeract_checkpoint({"blocks.0.self_attn.q.weight": torch.zeros(1)}, tmp_path / "d.safetensors")
    with pytest.raises(TypeError, match="must be str"):
        ck.save_cointeract_checkpoint({"depth_cond_mask.weight": torch.zeros(1)}, tmp_path / "d.safetensors", {"n": 1})


# ---------------------------------------------------------------------------------------------- peak memory

RSS_SCRIPT = """
import resource, sys, torch
from comfyui_cointeract.cointeract_core.weights.checkpoint import load_dit


def peak_rss():
    # VmHWM is this process's own high-water mark; ru_maxrss also counts the parent's RSS at fork/exec time.
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


before = peak_rss()
model = load_dit(sys.argv[1], dtype=torch.bfloat16)
peak = peak_rss()
held = sum(p.numel() * p.element_size() for p in model.parameters())
print(before, peak, held)
"""


@pytest.mark.slow
def test_loading_a_2gb_checkpoint_keeps_peak_rss_near_one_copy(tmp_path):
    cfg = DiTConfig(dim=2048, ffn_dim=8192, num_heads=16, num_layers=12, audio_inject_layers=(0, 4, 8))
    with torch.device("meta"):
        shapes = {k: v.shape for k, v in CoInteractDiT(cfg).state_dict().items()}
    gen, shard, size, n, weight_map = torch.Generator().manual_seed(0), {}, 0, 0, {}

    def flush() -> None:
        nonlocal shard, size, n
        name = f"diffusion_pytorch_model-{n + 1:05d}-of-99999.safetensors"
        write_safetensors(tmp_path / name, shard)
        weight_map.update(dict.fromkeys(shard, name))
        shard, size, n = {}, 0, n + 1

    for key, shape in sorted(shapes.items()):  # bf16 matrices, fp32 vectors; at most one shard in memory
        dtype = torch.bfloat16 if len(shape) > 1 else torch.float32
        shard[key] = torch.randn(shape, generator=gen, dtype=torch.float32).to(dtype)
        size += shard[key].numel() * shard[key].element_size()
        if size > 300e6:
            flush()
    flush()
    index = tmp_path / "diffusion_pytorch_model.safetensors.index.json"
    index.write_text(json.dumps({"weight_map": weight_map}))
    file_bytes = sum(p.stat().st_size for p in tmp_path.glob("*.safetensors"))
    assert file_bytes > 1.8e9
    try:
        run = subprocess.run([sys.executable, "-c", RSS_SCRIPT, str(index)], capture_output=True, text=True, check=True)
        before, peak, held = (int(x) for x in run.stdout.split())
    finally:
        for path in tmp_path.iterdir():
            path.unlink()
    print(
        f"weights {file_bytes / 1e9:.2f} GB; peak RSS {before / 1e9:.2f} GB after imports, {peak / 1e9:.2f} GB loaded"
    )
    assert held >= 0.95 * file_bytes
    assert peak < 1.5 * file_bytes + 500e6, f"peak RSS {peak / 1e9:.2f} GB for {file_bytes / 1e9:.2f} GB of weights"
    assert peak - before < 1.25 * file_bytes, f"load added {(peak - before) / 1e9:.2f} GB"
