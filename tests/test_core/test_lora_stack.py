"""Stacking LoRA files onto a loaded model: one delta in three layouts merges to the same weights, strengths add,
strength 0 leaves the model bit for bit, and a file that cannot apply changes nothing."""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch

from comfyui_cointeract.cointeract_core.model.config import PRESETS
from comfyui_cointeract.cointeract_core.model.dit import CoInteractDiT
from comfyui_cointeract.cointeract_core.weights.lora_formats import LoRAError
from comfyui_cointeract.cointeract_core.weights.lora_stack import apply_loras, parse_lora_spec

Q, FFN = "blocks.0.self_attn.q", "blocks.1.ffn.0"  # Wan names; FFN lands on blocks.1.ffn.ffn_base.0 (MoE)


def exact(gen: torch.Generator, *shape: int) -> torch.Tensor:
    """Random multiples of 1/32 in [-1/8, 1/8]: rank-4 products and their halves are exact in float32."""
    return torch.randint(-4, 5, shape, generator=gen).float() / 32


def three_forms(factors: dict[str, tuple[torch.Tensor, torch.Tensor]], bias: torch.Tensor) -> dict[str, dict]:
    """One delta (alpha 2 / rank 4 · B @ A per module, plus a bias delta on Q) as kohya, PEFT and full-diff files."""
    kohya, peft, diff = {}, {}, {}
    for module, (a, b) in factors.items():
        k = "lora_unet_" + module.replace(".", "_")
        kohya |= {f"{k}.lora_down.weight": a, f"{k}.lora_up.weight": b, f"{k}.alpha": torch.tensor(2.0)}
        peft |= {f"diffusion_model.{module}.lora_A.weight": a, f"diffusion_model.{module}.lora_B.weight": 0.5 * b}
        diff[f"diffusion_model.{module}.diff"] = (0.5 * b.double() @ a.double()).float()  # rounded once
    kohya[f"lora_unet_{Q.replace('.', '_')}.diff_b"] = diff[f"diffusion_model.{Q}.diff_b"] = bias
    peft[f"diffusion_model.{Q}.lora_B.bias"] = bias  # PEFT's bias: scale 1 here (alpha folded, no metadata)
    return {"kohya": kohya, "peft": peft, "diff": diff}


@pytest.fixture(scope="module")
def model() -> CoInteractDiT:
    torch.manual_seed(0)
    m = CoInteractDiT(PRESETS["tiny_cointeract"]).eval()
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(torch.randn_like(p) * 0.05)
    return m


def _factors(model: CoInteractDiT, gen: torch.Generator, make=exact) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    shapes = {Q: model.blocks[0].self_attn.q.weight.shape, FFN: model.blocks[1].ffn.ffn_base[0].weight.shape}
    return {m: (make(gen, 4, s[1]), make(gen, s[0], 4)) for m, s in shapes.items()}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_one_delta_in_three_layouts_merges_bit_identically(model, dtype):
    gen = torch.Generator().manual_seed(1)
    forms = three_forms(_factors(model, gen), exact(gen, 64))
    merged = {}
    for name, sd in forms.items():
        m = copy.deepcopy(model).to(dtype)
        updated = apply_loras(m, [(sd, 0.75)])
        assert updated == ["blocks.0.self_attn.q.bias", "blocks.0.self_attn.q.weight", "blocks.1.ffn.ffn_base.0.weight"]
        merged[name] = m.state_dict()
    base = copy.deepcopy(model).to(dtype).state_dict()
    for key in base:
        assert torch.equal(merged["kohya"][key], merged["peft"][key])
        assert torch.equal(merged["kohya"][key], merged["diff"][key])
    assert not torch.equal(merged["kohya"][f"{Q}.weight"], base[f"{Q}.weight"])


def test_random_float32_factors_differ_by_at_most_one_rounding(model):
    """With factors not exact in float32, kohya and PEFT (alpha/rank a power of two) still agree bit for bit; the full
    diff was rounded to float32 when it was written, which may move a merged weight by a float32 step."""
    gen = torch.Generator().manual_seed(2)
    forms = three_forms(_factors(model, gen, lambda g, *s: torch.randn(*s, generator=g) * 0.1), torch.randn(64))
    out = {}
    for name, sd in forms.items():
        m = copy.deepcopy(model)
        apply_loras(m, [(sd, 1.0)])
        out[name] = m.blocks[1].ffn.ffn_base[0].weight.detach()
    assert torch.equal(out["kohya"], out["peft"])
    stored = forms["diff"][f"diffusion_model.{FFN}.diff"].abs()  # its float32 rounding: half a step of the delta
    step = torch.finfo(torch.float32).eps * (out["kohya"].abs() + stored)
    assert ((out["kohya"] - out["diff"]).abs() <= step).all() and not torch.equal(out["kohya"], out["diff"])


def test_stacked_files_add_their_strengths_in_float64_and_round_once(model):
    gen = torch.Generator().manual_seed(3)
    first = three_forms(_factors(model, gen, lambda g, *s: torch.randn(*s, generator=g) * 0.1), torch.randn(64))
    second = {f"diffusion_model.{Q}.diff": torch.randn(64, 64, generator=gen) * 0.01}
    m = copy.deepcopy(model)
    apply_loras(m, [(first["kohya"], 0.6), (second, -1.3), (first["diff"], 0.0)])
    a, b = (first["peft"][f"diffusion_model.{Q}.lora_{s}.weight"].double() for s in "AB")  # B already halved
    w, d = model.blocks[0].self_attn.q.weight.double(), second[f"diffusion_model.{Q}.diff"].double()
    expected = (w + 0.6 * (b @ a) + -1.3 * d).float()
    assert torch.equal(m.blocks[0].self_attn.q.weight, expected)
    once = copy.deepcopy(model)
    apply_loras(once, [(first["peft"], 0.9)])
    twice = copy.deepcopy(model)
    apply_loras(twice, [(first["peft"], 0.4), (first["peft"], 0.5)])
    torch.testing.assert_close(twice.state_dict(), once.state_dict(), rtol=0, atol=1e-7)


def test_strength_zero_skips_the_file_and_a_bad_file_changes_nothing(model, tmp_path):
    before = copy.deepcopy(model.state_dict())
    gen = torch.Generator().manual_seed(4)
    good = three_forms(_factors(model, gen), exact(gen, 64))["kohya"]
    assert apply_loras(model, [(tmp_path / "never_read.safetensors", 0.0), (good, 0.0)]) == []
    sdxl = {"lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": torch.zeros(2, 8)}
    with pytest.raises(LoRAError, match="SDXL"):
        apply_loras(model, [(good, 1.0), (sdxl, 1.0)])
    dora = {**good, f"lora_unet_{Q.replace('.', '_')}.dora_scale": torch.ones(64, 1)}
    with pytest.raises(LoRAError, match="DoRA"):
        apply_loras(model, [(dora, 1.0)])
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


@pytest.mark.parametrize(
    "spec,expected",
    [
        ("a.safetensors", ("a.safetensors", 1.0)),
        ("loras/a.safetensors:0.6", ("loras/a.safetensors", 0.6)),
        ("a.safetensors:-1", ("a.safetensors", -1.0)),
        ("a.safetensors:.5e-1", ("a.safetensors", 0.05)),
        ("C:\\loras\\a.safetensors", ("C:\\loras\\a.safetensors", 1.0)),
        ("C:\\loras\\a.safetensors:1.5", ("C:\\loras\\a.safetensors", 1.5)),
        ("a:b.safetensors", ("a:b.safetensors", 1.0)),
    ],
)
def test_lora_spec_takes_only_a_trailing_number_as_strength(spec, expected):
    assert parse_lora_spec(spec) == expected


def test_a_trainer_export_merges_its_lora_and_replaces_its_trained_parts(model):
    gen = torch.Generator().manual_seed(5)
    router = torch.randn_like(model.blocks[0].ffn.router[3].weight)
    a, b = torch.randn(2, 64, generator=gen), torch.randn(64, 2, generator=gen)
    export = {"blocks.0.ffn.router.3.weight": router, f"{Q}.lora_A.default.weight": a, f"{Q}.lora_B.default.weight": b}
    m = copy.deepcopy(model)
    assert apply_loras(m, [(export, 0.5)]) == ["blocks.0.ffn.router.3.weight", f"{Q}.weight"]
    assert torch.equal(m.blocks[0].ffn.router[3].weight, router)  # trained in full: replaced, whatever the strength
    expected = (model.blocks[0].self_attn.q.weight.double() + 0.5 * (b.double() @ a.double())).float()
    assert torch.equal(m.blocks[0].self_attn.q.weight, expected)
    with pytest.raises(LoRAError, match="MoE"):  # the official strictness: parts the model lacks are named
        apply_loras(CoInteractDiT(dataclasses.replace(PRESETS["tiny_cointeract"], moe=None)), [(export, 1.0)])
