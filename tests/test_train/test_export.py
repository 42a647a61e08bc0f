"""The trainer's export: official CoInteract layout, loads through `load_dit`, reproduces the trained model, and the
official merge rule W += 1.0·B·A gives the same weights."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open

from comfyui_cointeract.cointeract_core.model.config import config_from_json
from comfyui_cointeract.cointeract_core.weights.checkpoint import is_cointeract_key, load_dit, to_model_key
from comfyui_cointeract.cointeract_core.weights.safetensors_io import write_safetensors
from comfyui_cointeract.train.builders import build_model, load_start_checkpoint
from comfyui_cointeract.train.config import (
    DropoutConfig,
    LoRAConfig,
    LossConfig,
    ModelConfig,
    StageConfig,
    SyntheticConfig,
)
from comfyui_cointeract.train.export import export_checkpoint
from comfyui_cointeract.train.loop import compute_losses, forward_batch
from comfyui_cointeract.train.lora_peft import inject_lora, lora_modules
from comfyui_cointeract.train.losses import FlowSchedule
from comfyui_cointeract.train.sampling import sample_generator
from comfyui_cointeract.train.stages import make_batch, set_trainable, stage_spans
from comfyui_cointeract.train.synthetic import synthetic_dataset

STAGE = StageConfig("stage1", "full", 1)
LORA = LoRAConfig(rank=4, alpha=12.0)  # alpha != rank, so folding alpha/r into B matters
TINY = ModelConfig(preset="tiny_cointeract", base_dtype="fp32", attention_backend="sdpa")
# What Wan's own config carries and shapes cannot tell (heads, text length, injector placement).
WAN_META = {"config": json.dumps({"num_heads": 2, "text_len": 16, "audio_inject_layers": [0, 1]})}


pytestmark = pytest.mark.usefixtures("one_thread_per_module")


def _batches(cfg, n: int = 4):
    schedule, samples = FlowSchedule(LossConfig()), synthetic_dataset(cfg, SyntheticConfig(num_samples=n))
    return [
        make_batch([s], [sample_generator(0, i, 0)], schedule, DropoutConfig(0, 0, 0, 0), STAGE)
        for i, s in enumerate(samples)
    ]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(Wan base file, trained peft model, export path): a few AdamW steps so LoRA, MoE and HOI all moved."""
    root = tmp_path_factory.mktemp("export")
    torch.manual_seed(0)
    model = build_model(TINY)
    base = {
        to_model_key(k, False): v.clone()
        for k, v in model.state_dict().items()
        if not is_cointeract_key(k) or k.startswith("cond_encoder.")
    }
    write_safetensors(root / "wan.safetensors", base, WAN_META)
    inject_lora(model, LORA)
    set_trainable(model, [STAGE])
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    for batch in _batches(model.cfg):
        compute_losses(forward_batch(model, batch, stage_spans([STAGE])[0]), batch, LossConfig()).total.backward()
        opt.step()
        opt.zero_grad()
    path = export_checkpoint(model, root / "cointeract.safetensors", lora=LORA, stage="stage1", step=4)
    return root / "wan.safetensors", model.eval(), path


def _outputs(model, batch):
    with torch.no_grad():
        return forward_batch(model, batch, stage_spans([STAGE])[0])


def test_export_layout_and_metadata(trained):
    _, model, path = trained
    with safe_open(path, "pt") as f:
        keys, meta = set(f.keys()), f.metadata()
        layer = lora_modules(model)["blocks.0.ffn.ffn_base.0"]
        b = f.get_tensor("blocks.0.ffn.ffn_base.0.lora_B.default.weight")
        assert torch.equal(b, layer.lora_B["default"].weight * (12.0 / 4))  # alpha/r folded into B
    assert all(is_cointeract_key(k) for k in keys)
    assert "audio_injector.injector.1.v.lora_A.default.weight" in keys and "blocks.1.ffn.router.3.bias" in keys
    assert "depth_head.head.weight" in keys and "blocks.0.depth_modulation" in keys
    assert not any("base_layer" in k or ".ffn.0." in k for k in keys)
    assert (meta["stage"], meta["step"], meta["rank"], meta["alpha"]) == ("stage1", "4", "4", "12.0")
    assert config_from_json(meta["cointeract_config"]) == model.cfg


def test_export_loads_through_load_dit_and_reproduces_the_trained_model(trained):
    wan, model, path = trained
    loaded = load_dit(wan, path, dtype=torch.float32)
    for batch in _batches(model.cfg, 2):
        ours, theirs = _outputs(model, batch), _outputs(loaded, batch)
        for a, b in (
            (ours.velocity, theirs.velocity),
            (ours.hoi_velocity, theirs.hoi_velocity),
            (ours.router_logits, theirs.router_logits),
        ):
            assert torch.allclose(a, b, rtol=1e-5, atol=1e-5 * float(a.abs().max())), float((a - b).abs().max())


def test_official_merge_rule_gives_the_same_weights(trained):
    wan, _, path = trained
    loaded = load_dit(wan, path, dtype=torch.float32).state_dict()
    with safe_open(wan, "pt") as f:
        weights = {to_model_key(k, True): f.get_tensor(k) for k in f.keys()}
    with safe_open(path, "pt") as f:
        ckpt = {k: f.get_tensor(k) for k in f.keys()}
    for key, b in ckpt.items():  # DiffSynth GeneralLoRALoader: every `.lora_B.` key, alpha = 1.0, no /r
        if ".lora_B." not in key:
            continue
        module = key.split(".lora_B.")[0]
        a = ckpt[key.replace(".lora_B.", ".lora_A.")]
        weights[f"{module}.weight"] = weights[f"{module}.weight"] + 1.0 * (b @ a)
    weights.update({k: v for k, v in ckpt.items() if ".lora_" not in k})  # MoE / HOI in full
    assert set(weights) == set(loaded)
    for key, w in weights.items():
        assert torch.equal(w, loaded[key]), (key, float((w - loaded[key]).abs().max()))


def test_a_fresh_run_can_start_from_the_export(trained):
    _, model, path = trained
    fresh = build_model(TINY)
    inject_lora(fresh, LORA)
    load_start_checkpoint(fresh, str(path), LORA)
    fresh.eval()
    for batch in _batches(model.cfg, 2):
        assert torch.allclose(_outputs(fresh, batch).velocity, _outputs(model, batch).velocity, atol=1e-6)
    with pytest.raises(ValueError, match="rank 4 but lora.rank is 8"):
        other = build_model(TINY)
        inject_lora(other, LoRAConfig(rank=8, alpha=8.0))
        load_start_checkpoint(other, str(path), LoRAConfig(rank=8, alpha=8.0))


def test_build_model_reads_a_wan_base_and_initialises_the_cointeract_parts(trained):
    wan, _, _ = trained
    model = build_model(ModelConfig(preset="tiny_cointeract", base=(str(wan),), base_dtype="fp32"))
    with safe_open(wan, "pt") as f:
        for key in f.keys():
            assert torch.equal(model.get_parameter(to_model_key(key, True)), f.get_tensor(key)), key
    assert not model.blocks[0].ffn.hand_expert.fc2.weight.any()  # official init: experts start at zero
    assert torch.equal(model.blocks[1].depth_modulation, model.blocks[1].modulation)  # HOI copies the RGB stream
    bf16 = build_model(ModelConfig(preset="tiny_cointeract", base=(str(wan),), base_dtype="bf16"))
    assert bf16.blocks[0].self_attn.q.weight.dtype == torch.bfloat16
