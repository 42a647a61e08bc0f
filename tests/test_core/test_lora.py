"""LoRA: the official merge rule, unmerge, and the unmerged LoRALinear forward equal to the merged weights."""

from __future__ import annotations

import copy
import re

import pytest
import torch
from torch import nn

from comfyui_cointeract.cointeract_core.weights import lora as lora_lib

TARGETS = re.compile(r"(self_attn|cross_attn|injector\.\d+)\.[qkvo]\.weight$|ffn\.(ffn_base\.)?[02]\.weight$")


class Attn(nn.Module):
    def __init__(self, d: int) -> None:
        super().__init__()
        self.q, self.k, self.v, self.o = (nn.Linear(d, d) for _ in range(4))


class Block(nn.Module):
    """Linear-heavy stand-in with the Wan key layout (`self_attn.{q,k,v,o}`, `ffn.0/2` or `ffn.ffn_base.0/2`)."""

    def __init__(self, d: int, moe: bool) -> None:
        super().__init__()
        self.self_attn = Attn(d)
        ffn = nn.Sequential(nn.Linear(d, 2 * d), nn.GELU(approximate="tanh"), nn.Linear(2 * d, d))
        if moe:
            self.ffn = nn.Module()
            self.ffn.ffn_base = ffn
        else:
            self.ffn = ffn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.self_attn
        x = x + a.o(torch.tanh(a.q(x)) * a.k(x) + a.v(x))
        ffn = self.ffn.ffn_base if hasattr(self.ffn, "ffn_base") else self.ffn
        return x + ffn(x)


class StandIn(nn.Module):
    def __init__(self, d: int = 16, moe: bool = True, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.blocks = nn.ModuleList(Block(d, moe) for _ in range(2))
        self.proj = nn.Conv2d(d, d, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return self.proj(x.reshape(-1, x.shape[-1], 1, 1)).reshape(x.shape)


def make_lora(model: nn.Module, rank: int = 4, seed: int = 1, name: str = "{m}.lora_{s}.default.weight") -> dict:
    gen, out = torch.Generator().manual_seed(seed), {}
    for key, w in sorted(model.state_dict().items()):
        if TARGETS.search(key):
            m = key.removesuffix(".weight")
            out[name.format(m=m, s="A")] = torch.randn(rank, w.shape[1], generator=gen) / w.shape[1] ** 0.5
            out[name.format(m=m, s="B")] = torch.randn(w.shape[0], rank, generator=gen) * 0.2
    return out


def x_in(d: int = 16) -> torch.Tensor:
    return torch.randn(3, 5, d, generator=torch.Generator().manual_seed(3))


@pytest.mark.parametrize("moe", [True, False])
@pytest.mark.parametrize("strength", [1.0, 0.6])
def test_merged_equals_unmerged_and_both_undo(moe, strength):
    base = StandIn(moe=moe)
    lora = make_lora(base)
    before = {k: v.clone() for k, v in base.state_dict().items()}
    y0 = base(x_in())
    merged = copy.deepcopy(base)
    assert len(lora_lib.merge_lora(merged, lora, strength)) == 12
    unmerged = copy.deepcopy(base)
    wrapped = lora_lib.apply_lora_unmerged(unmerged, lora, strength)
    assert len(wrapped) == 12 and all(isinstance(unmerged.get_submodule(n), lora_lib.LoRALinear) for n in wrapped)
    assert set(unmerged.state_dict()) == set(before) | {f"{n}.lora_{s}.weight" for n in wrapped for s in "AB"}
    torch.testing.assert_close(merged(x_in()), unmerged(x_in()), rtol=0, atol=1e-5)
    assert (merged(x_in()) - y0).abs().max() > 1e-2
    assert lora_lib.remove_lora_unmerged(unmerged) == sorted(wrapped)
    assert torch.equal(unmerged(x_in()), y0) and set(unmerged.state_dict()) == set(before)
    lora_lib.unmerge_lora(merged, lora, strength)
    for key, value in merged.state_dict().items():
        torch.testing.assert_close(value, before[key], rtol=0, atol=1e-6)


def test_merged_equals_unmerged_on_the_real_tiny_model(ci_model):
    cfg = ci_model.cfg
    lora = make_lora(ci_model, rank=3)
    targets = {lora_lib._split(k)[0] for k in lora}
    assert any(".ffn.ffn_base." in t for t in targets) and any(t.startswith("audio_injector.") for t in targets)
    gen = torch.Generator().manual_seed(0)
    h = w = 8
    args = dict(
        x=torch.randn(1, cfg.in_dim, 2, h, w, generator=gen),
        timestep=torch.tensor([400.0]),
        context=torch.randn(1, 5, cfg.text_dim, generator=gen),
        audio=torch.randn(1, cfg.audio_layers, cfg.audio_dim, 8, generator=gen),
        person=torch.randn(1, cfg.in_dim, 1, h, w, generator=gen),
        hoi=torch.randn(1, cfg.in_dim, 2, h, w, generator=gen),
        hoi_context=torch.randn(1, 4, cfg.text_dim, generator=gen),
    )
    merged, unmerged = copy.deepcopy(ci_model), copy.deepcopy(ci_model)
    lora_lib.merge_lora(merged, lora, 0.8)
    lora_lib.apply_lora_unmerged(unmerged, lora, 0.8)
    with torch.no_grad():
        a, b, base = merged(**args), unmerged(**args), ci_model(**args)
    for got, ref in ((a.velocity, b.velocity), (a.hoi_velocity, b.hoi_velocity)):
        assert (got - ref).abs().max() <= 1e-5 * max(1.0, ref.std().item())
    assert (a.velocity - base.velocity).abs().max() > 1e-3


@pytest.mark.parametrize(
    "name",
    ["{m}.lora_{s}.weight", "diffusion_model.{m}.lora_{s}.default.weight", "pipe.dit.{m}.lora_{s}.default.weight"],
)
def test_key_forms_and_ffn_name_mapping(name):
    for moe, lora_moe in ((True, False), (False, True), (True, True)):
        model = StandIn(moe=moe)
        lora = make_lora(StandIn(moe=lora_moe), name=name)
        expected = copy.deepcopy(model)
        merged = lora_lib.merge_lora(model, lora)
        assert len(merged) == 12 and all(k in expected.state_dict() for k in merged)
        key = "blocks.1.ffn.ffn_base.2" if lora_moe else "blocks.1.ffn.2"
        a, b = (lora[name.format(m=key, s=s)] for s in "AB")
        weight = "blocks.1.ffn.ffn_base.2.weight" if moe else "blocks.1.ffn.2.weight"
        torch.testing.assert_close(model.state_dict()[weight], expected.state_dict()[weight] + b @ a, rtol=0, atol=1e-6)


def test_conv_1x1_variant_is_squeezed():
    model = StandIn()
    a, b = torch.randn(2, 16, 1, 1), torch.randn(16, 2, 1, 1)
    w0 = model.proj.weight.detach().clone()
    lora_lib.merge_lora(model, {"proj.lora_A.default.weight": a, "proj.lora_B.default.weight": b}, 0.5)
    torch.testing.assert_close(model.proj.weight, w0 + 0.5 * (b[..., 0, 0] @ a[..., 0, 0])[..., None, None])
    with pytest.raises(ValueError, match="nn.Linear"):
        lora_lib.apply_lora_unmerged(model, {"proj.lora_A.weight": a, "proj.lora_B.weight": b})


def test_state_dict_merge_leaves_the_callers_tensors_alone():
    sd = {k: v.clone() for k, v in StandIn().state_dict().items()}
    original = {k: v.clone() for k, v in sd.items()}
    view = dict(sd)
    keys = lora_lib.merge_lora(view, make_lora(StandIn()))
    assert all(torch.equal(sd[k], original[k]) for k in sd)
    assert all(not torch.equal(view[k], original[k]) for k in keys)


def test_bf16_weights_are_merged_in_float32(monkeypatch):
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(64, 48, generator=gen).bfloat16()
    a, b = torch.randn(4, 48, generator=gen).bfloat16(), torch.randn(64, 4, generator=gen).bfloat16()
    ref = (w.float() + 0.3 * b.float() @ a.float()).bfloat16()
    sd = {"m.weight": w}
    lora_lib.merge_lora(sd, {"m.lora_A.weight": a, "m.lora_B.weight": b}, 0.3)
    assert sd["m.weight"].dtype == torch.bfloat16
    assert (sd["m.weight"].float() - ref.float()).abs().max() <= ref.float().abs().max() * 2**-8
    monkeypatch.setattr(lora_lib, "_CHUNK", 100)  # several row chunks give the same result
    chunked = {"m.weight": torch.randn(64, 48, generator=gen)}
    whole = dict(chunked)
    pair = {"m.lora_A.weight": a.float(), "m.lora_B.weight": b.float()}
    lora_lib.merge_lora(chunked, pair)
    monkeypatch.setattr(lora_lib, "_CHUNK", 1 << 24)
    lora_lib.merge_lora(whole, pair)
    torch.testing.assert_close(chunked["m.weight"], whole["m.weight"], rtol=0, atol=1e-6)


def test_errors_name_the_problem():
    model = StandIn()
    lora = make_lora(model)
    with pytest.raises(ValueError, match="no partner.*blocks.0.self_attn.q.lora_A.default.weight"):
        lora_lib.merge_lora(model, {k: v for k, v in lora.items() if k != "blocks.0.self_attn.q.lora_B.default.weight"})
    stray = {
        "blocks.0.cross_attn.q.lora_A.weight": torch.zeros(2, 16),
        "blocks.0.cross_attn.q.lora_B.weight": torch.zeros(16, 2),
    }
    with pytest.raises(ValueError, match=r"1 LoRA targets are not modules of the model: blocks\.0\.cross_attn\.q"):
        lora_lib.merge_lora(model, {**lora, **stray})
    big = {
        "blocks.0.self_attn.q.lora_A.weight": torch.zeros(2, 5120),
        "blocks.0.self_attn.q.lora_B.weight": torch.zeros(5120, 2),
    }
    with pytest.raises(
        ValueError, match=r"\[2, 5120\].*\[5120, 2\] does not fit blocks\.0\.self_attn\.q\.weight \[16, 16\]"
    ):
        lora_lib.apply_lora_unmerged(model, big)
    with pytest.raises(ValueError, match="not a LoRA key"):
        lora_lib.lora_pairs(["blocks.0.q.lora_A.default.extra.weight"])


def test_lora_linear_starts_equal_to_its_base_and_exports_official_keys():
    base = nn.Linear(6, 5)
    layer = lora_lib.LoRALinear(base, rank=2)
    x = torch.randn(4, 6)
    assert torch.equal(layer(x), base(x)) and layer.weight is base.weight
    model = StandIn()
    lora = make_lora(model, name="{m}.lora_{s}.weight")
    lora_lib.apply_lora_unmerged(model, lora)
    exported = lora_lib.lora_state_dict(model)
    assert set(exported) == {lora_lib.official_lora_key(k) for k in lora}
    assert all(k.endswith(".default.weight") for k in exported)
    assert torch.equal(
        exported["blocks.0.ffn.ffn_base.0.lora_B.default.weight"], lora["blocks.0.ffn.ffn_base.0.lora_B.weight"]
    )


def test_key_helpers():
    assert lora_lib.is_lora_key("blocks.0.self_attn.q.lora_A.default.weight")
    assert not lora_lib.is_lora_key("blocks.0.self_attn.q.weight")
    assert (
        lora_lib.official_lora_key("pipe.dit.blocks.3.ffn.2.lora_B.weight")
        == "blocks.3.ffn.ffn_base.2.lora_B.default.weight"
    )
    assert lora_lib.lora_pairs(["x.lora_B.weight", "x.lora_A.weight"]) == {"x": ("x.lora_A.weight", "x.lora_B.weight")}
