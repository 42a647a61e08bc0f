"""`cointeract inspect`: what a checkpoint is, from its headers; `--against` checks a CoInteract file on a base."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from comfyui_cointeract.cointeract_core.model.config import PRESETS, config_to_json
from comfyui_cointeract.cointeract_core.model.dit import CoInteractDiT
from comfyui_cointeract.cointeract_core.weights import checkpoint as ck
from comfyui_cointeract.cointeract_core.weights import inspect as inspect_cli
from comfyui_cointeract.cointeract_core.weights.safetensors_io import write_safetensors

CFG = PRESETS["tiny_cointeract"]


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    """A sharded Wan base (bf16, `ffn.{0,2}`), a CoInteract file (LoRA rank 3 + MoE + HOI), a bad LoRA file."""
    root = tmp_path_factory.mktemp("inspect")
    torch.manual_seed(0)
    sd = CoInteractDiT(CFG).state_dict()
    own = [k for k in sd if ck.is_cointeract_key(k) and not k.startswith("cond_encoder.")]
    base = {ck.to_model_key(k, False): v.bfloat16() for k, v in sd.items() if k not in own}
    extra = {k: sd[k] for k in own}
    for i, name in enumerate(["m-00001-of-00002.safetensors", "m-00002-of-00002.safetensors"]):
        write_safetensors(root / name, {k: v for j, (k, v) in enumerate(sorted(base.items())) if j % 2 == i})
    weight_map = {k: f"m-0000{j % 2 + 1}-of-00002.safetensors" for j, k in enumerate(sorted(base))}
    (root / "m.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    lora = {}
    for module in ("blocks.0.self_attn.q", "blocks.1.ffn.ffn_base.0", "audio_injector.injector.1.o"):
        w = sd[f"{module}.weight"]
        lora[f"{module}.lora_A.default.weight"] = torch.zeros(3, w.shape[1])
        lora[f"{module}.lora_B.default.weight"] = torch.zeros(w.shape[0], 3)
    ck.save_cointeract_checkpoint(
        {**extra, **lora}, root / "checkpoint.safetensors", {"cointeract_config": config_to_json(CFG)}
    )
    bad = {
        "blocks.0.self_attn.q.lora_A.default.weight": torch.zeros(2, 5120),
        "blocks.0.self_attn.q.lora_B.default.weight": torch.zeros(5120, 2),
    }
    ck.save_cointeract_checkpoint(bad, root / "bad_lora.safetensors")
    (root / "notes.safetensors").write_text("this is not a checkpoint")
    return {
        "base": root / "m.safetensors.index.json",
        "shard": root / "m-00002-of-00002.safetensors",
        "ci": root / "checkpoint.safetensors",
        "bad_lora": root / "bad_lora.safetensors",
        "junk": root / "notes.safetensors",
    }


def test_describe_a_sharded_base(files):
    info = inspect_cli.describe(files["shard"])
    assert info["format"] == "sharded" and len(info["files"]) == 2
    assert info["family"] == "wan22_s2v" and "casual_audio_encoder" in info["looks_like"]
    assert info["config"]["dim"] == CFG.dim and info["config"]["num_layers"] == CFG.num_layers
    assert info["config"]["moe"] is None and info["config"]["hoi"] is None
    assert info["parts"] == {"lora": False, "moe": False, "hoi": False, "pose": True}
    assert info["dtypes"] == {"bfloat16": info["tensors"]} and info["lora"] is None
    assert info["parameters"] == sum(v.numel() for v in ck.read_state_dict(files["base"])[0].values())


def test_describe_a_cointeract_checkpoint(files):
    info = inspect_cli.describe(files["ci"])
    assert info["family"] == "cointeract" and info["format"] == "single" and info["config"] is None
    assert info["parts"] == {"lora": True, "moe": True, "hoi": True, "pose": False}
    assert info["lora"] == {"rank": 3, "targets": 3}
    assert info["moe"] == {"expert_dim": CFG.moe.expert_dim, "experts": ["face", "hand"], "blocks": CFG.num_layers}
    assert "cointeract_config" in info["metadata"] and info["dtypes"] == {"float32": info["tensors"]}


def test_main_prints_a_report(files, capsys):
    assert inspect_cli.main([str(files["base"]), str(files["ci"]), str(files["shard"])]) == 0
    out = capsys.readouterr().out
    assert out.count("wan22_s2v: Wan2.2-S2V") == 1  # the shard and the index are the same checkpoint
    assert "rank 3, 3 target modules" in out and "experts face, hand, expert_dim 8" in out
    assert f"dim {CFG.dim} · ffn {CFG.ffn_dim} · {CFG.num_layers} layers" in out


def test_against_reports_whether_the_combination_loads(files, capsys):
    assert inspect_cli.main([str(files["ci"]), "--against", str(files["base"])]) == 0
    out = capsys.readouterr().out
    assert "loads" in out and "3 merges" in out and "MoE (official, expert_dim 8) · HOI" in out
    assert inspect_cli.main([str(files["bad_lora"]), "--against", str(files["base"]), "--json"]) == 2
    result = json.loads(capsys.readouterr().out)[0]["check"]
    assert not result["ok"] and "does not fit blocks.0.self_attn.q.weight [64, 64]" in result["lora_error"]
    assert result["missing"] == [] and result["config"]["moe"] is None


@pytest.mark.parametrize("which", ["junk", "missing", "pickle"])
def test_bad_input_exits_2_with_a_message_and_no_traceback(files, capsys, which, tmp_path):
    path = {"junk": files["junk"], "missing": tmp_path / "absent.safetensors", "pickle": tmp_path / "w.pth"}[which]
    if which == "pickle":
        torch.save({}, path)
    assert inspect_cli.main([str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("cointeract inspect: ") and path.name in err and "Traceback" not in err


def test_against_a_non_s2v_base_is_bad_input(files, capsys, tmp_path):
    write_safetensors(
        tmp_path / "t2v.safetensors",
        {"patch_embedding.weight": torch.zeros(4, 16, 1, 2, 2), "head.modulation": torch.zeros(1, 2, 4)},
    )
    assert inspect_cli.main([str(files["ci"]), "--against", str(tmp_path / "t2v.safetensors")]) == 2
    assert "expected a Wan2.2-S2V checkpoint; t2v.safetensors looks like Wan2.1/2.2 T2V" in capsys.readouterr().err
