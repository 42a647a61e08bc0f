"""What trains: PEFT LoRA (official targets, audio injectors included), MoE and HOI in full, nothing else; stage 2
keeps the RGB loss independent of the HOI stream."""

from __future__ import annotations

import dataclasses
import re

import pytest
import torch

from comfyui_cointeract.train.builders import build_model
from comfyui_cointeract.train.config import (
    OFFICIAL_TRAINABLE,
    DropoutConfig,
    LoRAConfig,
    LossConfig,
    ModelConfig,
    StageConfig,
    SyntheticConfig,
)
from comfyui_cointeract.train.loop import compute_losses, forward_batch
from comfyui_cointeract.train.lora_peft import inject_lora, lora_modules
from comfyui_cointeract.train.losses import FlowSchedule, flow_loss
from comfyui_cointeract.train.sampling import sample_generator
from comfyui_cointeract.train.stages import drop_frozen_grads, make_batch, set_trainable, stage_spans
from comfyui_cointeract.train.synthetic import synthetic_sample

FULL = StageConfig("stage1", "full", 1)
ASYM = StageConfig("stage2", "asymmetric", 1)
TRAINABLE = re.compile(r"\.lora_[AB]\.default\.weight$|\.ffn\.(router|hand_expert|face_expert)\.|(^|\.)depth_")


pytestmark = pytest.mark.usefixtures("one_thread_per_module")


@pytest.fixture
def peft_model():
    """The tiny CoInteract DiT with LoRA (rank 4) whose B factors are non-zero, as after some training."""
    torch.manual_seed(0)
    model = build_model(ModelConfig(preset="tiny_cointeract", base_dtype="fp32", attention_backend="sdpa"))
    inject_lora(model, LoRAConfig(rank=4, alpha=8.0))
    with torch.no_grad():
        for layer in lora_modules(model).values():
            layer.lora_B["default"].weight.normal_(0, 0.1)
    set_trainable(model, [FULL, ASYM])
    return model.train()


def _batch(model, stage: StageConfig, t: float = 500.0):
    sample = synthetic_sample(model.cfg, SyntheticConfig(), 0)
    batch = make_batch(
        [sample], [sample_generator(0, 0, 0)], FlowSchedule(LossConfig()), DropoutConfig(0, 0, 0, 0), stage
    )
    return dataclasses.replace(batch, timestep=torch.tensor([t]))  # experts on (t < 900)


def test_lora_targets_are_the_official_ones_including_the_audio_injectors(peft_model):
    names = set(lora_modules(peft_model))
    layers = peft_model.cfg.num_layers
    expected = {f"blocks.{i}.{a}.{p}" for i in range(layers) for a in ("self_attn", "cross_attn") for p in "qkvo"}
    expected |= {f"blocks.{i}.ffn.ffn_base.{j}" for i in range(layers) for j in (0, 2)}
    expected |= {
        f"audio_injector.injector.{j}.{p}" for j in range(len(peft_model.cfg.audio_inject_layers)) for p in "qkvo"
    }
    assert names == expected


def test_only_lora_moe_and_hoi_parameters_get_gradients(peft_model):
    trainable = {n for n, p in peft_model.named_parameters() if p.requires_grad}
    assert trainable == {n for n, _ in peft_model.named_parameters() if TRAINABLE.search(n)}
    assert any("audio_injector" in n for n in trainable) and any("depth_modulation" in n for n in trainable)
    batch = _batch(peft_model, FULL)
    compute_losses(forward_batch(peft_model, batch, stage_spans([FULL])[0]), batch, LossConfig()).total.backward()
    with_grad = {n for n, p in peft_model.named_parameters() if p.grad is not None}
    assert with_grad == trainable  # every trainable tensor is reached, no frozen one gets a gradient
    assert all(peft_model.get_parameter(n).grad.abs().sum() > 0 for n in with_grad if "lora_B" in n)


def test_a_stage_trains_only_its_patterns(peft_model):
    lora_only = StageConfig("lora", "full", 1, trainable=(OFFICIAL_TRAINABLE[0],))
    per_stage = set_trainable(peft_model, [FULL, lora_only])
    batch = _batch(peft_model, FULL)
    compute_losses(forward_batch(peft_model, batch, stage_spans([FULL])[0]), batch, LossConfig()).total.backward()
    drop_frozen_grads(peft_model, per_stage["lora"])
    with_grad = {n for n, p in peft_model.named_parameters() if p.grad is not None}
    assert with_grad and all(".lora_" in n for n in with_grad)
    with pytest.raises(ValueError, match="match no parameter"):
        set_trainable(peft_model, [StageConfig("none", "full", 1, trainable=("nothing_is_called_this",))])


def _rgb_loss_and_grads(model, batch, span):
    model.zero_grad(set_to_none=True)
    out = forward_batch(model, batch, span)
    loss = flow_loss(out.velocity, batch.velocity, batch.weight)
    loss.backward()
    return loss.detach(), {n: p.grad for n, p in model.named_parameters() if p.requires_grad}


def test_stage2_rgb_loss_is_unchanged_by_hoi_tokens(peft_model):
    span = stage_spans([ASYM])[0]
    batch = _batch(peft_model, ASYM)
    assert batch.hoi is not None
    loss_hoi, grads_hoi = _rgb_loss_and_grads(peft_model, batch, span)
    no_hoi = dataclasses.replace(batch, hoi=None, hoi_context=None, hoi_velocity=None)
    loss_plain, grads_plain = _rgb_loss_and_grads(peft_model, no_hoi, span)
    assert torch.equal(loss_hoi, loss_plain)
    for name, g in grads_hoi.items():
        ref = grads_plain[name]
        if ref is None:  # HOI-only weights: the RGB loss gives them an exactly zero gradient
            assert g is None or not g.any(), name
            continue
        assert torch.equal(g, ref), name  # bitwise: the main stream's graph has the same shape (split_linear)
    full = dataclasses.replace(FULL)
    loss_full, _ = _rgb_loss_and_grads(peft_model, batch, stage_spans([full])[0])
    assert not torch.equal(loss_full, loss_hoi)  # stage 1 mixes the streams, so the test can tell
