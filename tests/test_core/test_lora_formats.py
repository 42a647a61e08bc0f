"""LoRA layouts: every way of writing one delta parses to that delta on the right parameter of our model; keys that
fit nothing are warned about once; files that fit nothing are refused with what they look like."""

from __future__ import annotations

import json
import logging

import pytest
import torch
import torch.nn.functional as F

from comfyui_cointeract.cointeract_core.model.config import PRESETS
from comfyui_cointeract.cointeract_core.model.dit import CoInteractDiT
from comfyui_cointeract.cointeract_core.weights.lora_delta import Update, to_kohya_state_dict
from comfyui_cointeract.cointeract_core.weights.lora_formats import LoRAError, lora_format, plan_lora, read_lora

Q = "blocks.0.self_attn.q"


def _params(preset: str) -> dict[str, tuple[int, ...]]:
    with torch.device("meta"):
        return {k: tuple(v.shape) for k, v in CoInteractDiT(PRESETS[preset]).named_parameters()}


MOE = _params("tiny_cointeract")  # dim 64, ffn 128, MoE: blocks.N.ffn.ffn_base.{0,2}
PLAIN = _params("tiny")  # dim 128, no MoE: blocks.N.ffn.{0,2}


def delta(u: Update) -> torch.Tensor:
    """scale·ΔW of an update as [rows, cols] float64."""
    return u.rows(0, u.shape[0])


@pytest.fixture(scope="module")
def factors() -> tuple[torch.Tensor, torch.Tensor, float]:
    """(A [4, 64], B [64, 4], alpha 2.0) of a rank-4 LoRA on blocks.0.self_attn.q; the delta is alpha/4 · B @ A."""
    gen = torch.Generator().manual_seed(0)
    return torch.randn(4, 64, generator=gen), torch.randn(64, 4, generator=gen), 2.0


def _forms(a: torch.Tensor, b: torch.Tensor, alpha: float) -> dict[str, tuple[dict, dict]]:
    """One delta written in every layout: name -> (state dict, metadata)."""
    s, al = alpha / a.shape[0], torch.tensor(alpha)
    peft_meta = {"lora_adapter_metadata": json.dumps({"transformer.r": 4, "transformer.lora_alpha": alpha})}
    return {
        "kohya": ({"lora_unet_blocks_0_self_attn_q.lora_down.weight": a,
                   "lora_unet_blocks_0_self_attn_q.lora_up.weight": b, "lora_unet_blocks_0_self_attn_q.alpha": al}, {}),
        "comfy": ({f"diffusion_model.{Q}.lora_down.weight": a, f"diffusion_model.{Q}.lora_up.weight": b,
                   f"diffusion_model.{Q}.alpha": al}, {}),
        "peft_folded": ({f"diffusion_model.{Q}.lora_A.weight": a, f"diffusion_model.{Q}.lora_B.weight": b * s}, {}),
        "peft_default": ({f"base_model.model.{Q}.lora_A.default.weight": a,
                          f"base_model.model.{Q}.lora_B.default.weight": b * s}, {}),
        "diffusers_meta": ({"transformer.blocks.0.attn1.to_q.lora_A.weight": a,
                            "transformer.blocks.0.attn1.to_q.lora_B.weight": b}, peft_meta),
        "dit_dot_lora": ({f"pipe.dit.{Q}.lora.down.weight": a, f"pipe.dit.{Q}.lora.up.weight": b,
                          f"pipe.dit.{Q}.alpha": al}, {}),
        "underscore_lora": ({f"model.diffusion_model.{Q}_lora.down.weight": a,
                             f"model.diffusion_model.{Q}_lora.up.weight": b * s}, {}),
        "linear_layer": ({f"{Q}.lora_linear_layer.down.weight": a, f"{Q}.lora_linear_layer.up.weight": b * s}, {}),
        "mochi": ({f"{Q}.lora_A": a, f"{Q}.lora_B": b * s}, {}),
        "lycoris_diffusers": ({"lycoris_blocks_0_attn1_to_q.lora_down.weight": a,
                               "lycoris_blocks_0_attn1_to_q.lora_up.weight": b,
                               "lycoris_blocks_0_attn1_to_q.alpha": al}, {}),
        "full_diff": ({f"diffusion_model.{Q}.diff": (s * b.double() @ a.double()).float()}, {}),
    }  # fmt: skip


@pytest.mark.parametrize("form", list(_forms(torch.zeros(4, 64), torch.zeros(64, 4), 2.0)))
def test_every_layout_parses_to_the_same_delta(factors, form):
    a, b, alpha = factors
    sd, meta = _forms(a, b, alpha)[form]
    updates = read_lora(sd, MOE, metadata=meta)
    assert list(updates) == [f"{Q}.weight"]
    expected = alpha / 4 * (b.double() @ a.double())
    torch.testing.assert_close(delta(updates[f"{Q}.weight"]), expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize(
    "key,params,target",
    [
        ("lora_unet_blocks_1_ffn_0", MOE, "blocks.1.ffn.ffn_base.0.weight"),
        ("lora_unet_blocks_1_ffn_0", PLAIN, "blocks.1.ffn.0.weight"),
        ("diffusion_model.blocks.1.ffn.2", MOE, "blocks.1.ffn.ffn_base.2.weight"),
        ("blocks.1.ffn.ffn_base.2", PLAIN, "blocks.1.ffn.2.weight"),  # our trainer's names on a model without MoE
        ("transformer.blocks.1.ffn.net.0.proj", MOE, "blocks.1.ffn.ffn_base.0.weight"),
        ("transformer.blocks.1.ffn.net.2", PLAIN, "blocks.1.ffn.2.weight"),
        ("transformer.blocks.0.attn2.to_out.0", MOE, "blocks.0.cross_attn.o.weight"),
        ("transformer.proj_out", MOE, "head.head.weight"),
        ("transformer.condition_embedder.time_embedder.linear_1", MOE, "time_embedding.0.weight"),
        ("lora_unet_audio_injector_injector_1_o", MOE, "audio_injector.injector.1.o.weight"),
    ],
)
def test_module_names_land_on_our_parameters(key, params, target):
    rows, cols = params[target]
    sd = {f"{key}.lora_down.weight": torch.ones(2, cols), f"{key}.lora_up.weight": torch.ones(rows, 2)}
    assert list(read_lora(sd, params)) == [target]


def test_diffusers_norm_names_are_swapped_and_full_deltas_land_on_bias_and_modulation():
    gen = torch.Generator().manual_seed(1)
    n3 = torch.randn(64, generator=gen)
    mod, head_mod, q_bias = torch.randn(1, 6, 64, generator=gen), torch.randn(1, 2, 64, generator=gen), torch.randn(64)
    diffusers = {"transformer.blocks.0.norm2.diff_b": n3, "transformer.blocks.0.scale_shift_table.diff": mod}
    lightx2v = {"diffusion_model.blocks.0.diff_m": mod, "diffusion_model.head.diff_m": head_mod,
                f"diffusion_model.{Q}.diff_b": q_bias, "diffusion_model.blocks.1.modulation.diff": mod}  # fmt: skip
    d = read_lora({**diffusers, "transformer.blocks.0.attn1.to_q.lora_A.weight": torch.ones(1, 64),
                   "transformer.blocks.0.attn1.to_q.lora_B.weight": torch.ones(64, 1)}, MOE)  # fmt: skip
    assert sorted(d) == ["blocks.0.modulation", "blocks.0.norm3.bias", f"{Q}.weight"]
    assert torch.equal(delta(d["blocks.0.norm3.bias"]).flatten().float(), n3)
    x = read_lora(lightx2v, MOE)
    assert sorted(x) == ["blocks.0.modulation", f"{Q}.bias", "blocks.1.modulation", "head.modulation"]
    assert torch.equal(delta(x["head.modulation"]).float().reshape(1, 2, 64), head_mod)


def test_peft_bias_and_alpha_metadata_scale_together():
    a, b, bias = torch.randn(8, 64), torch.randn(64, 8), torch.randn(64)
    meta = {"lora_adapter_metadata": json.dumps({"r": 8, "lora_alpha": 4, "alpha_pattern": {"attn1.to_k": 16}})}
    sd = {f"transformer.blocks.0.attn1.to_{n}.lora_{s}.weight": t for n in "qk" for s, t in (("A", a), ("B", b))}
    sd["transformer.blocks.0.attn1.to_q.lora_B.bias"] = bias
    updates = read_lora(sd, MOE, metadata=meta)
    assert updates[f"{Q}.weight"].scale == 0.5 and updates[f"{Q}.bias"].scale == 0.5
    assert updates["blocks.0.self_attn.k.weight"].scale == 2.0  # alpha_pattern
    torch.testing.assert_close(delta(updates[f"{Q}.bias"]).flatten(), 0.5 * bias.double())
    rs = json.dumps({"r": 8, "lora_alpha": 4, "use_rslora": True})
    assert read_lora(sd, MOE, metadata={"lora_adapter_metadata": rs})[f"{Q}.weight"].scale == 4 / 8**0.5


def test_loha_and_lokr_follow_their_formulas():
    gen = torch.Generator().manual_seed(2)
    w1a, w1b, w2a, w2b = (torch.randn(*s, generator=gen) for s in ((64, 3), (3, 64), (64, 3), (3, 64)))
    loha = {
        f"lycoris_blocks_0_self_attn_q.hada_{n}": t
        for n, t in zip(("w1_a", "w1_b", "w2_a", "w2_b"), (w1a, w1b, w2a, w2b))
    }
    loha["lycoris_blocks_0_self_attn_q.alpha"] = torch.tensor(1.5)
    got = delta(read_lora(loha, MOE)[f"{Q}.weight"])
    torch.testing.assert_close(got, 0.5 * (w1a.double() @ w1b.double()) * (w2a.double() @ w2b.double()))
    w1, k2a, k2b = torch.randn(4, 8, generator=gen), torch.randn(16, 2, generator=gen), torch.randn(2, 8, generator=gen)
    lokr = {f"{Q}.lokr_w1": w1, f"{Q}.lokr_w2_a": k2a, f"{Q}.lokr_w2_b": k2b, f"{Q}.alpha": torch.tensor(1.0)}
    got = delta(read_lora(lokr, MOE)[f"{Q}.weight"])
    torch.testing.assert_close(got, 0.5 * torch.kron(w1.double(), k2a.double() @ k2b.double()))
    whole = {f"{Q}.lokr_w1": w1, f"{Q}.lokr_w2": k2a @ k2b, f"{Q}.alpha": torch.tensor(7.0)}  # both whole: alpha unused
    torch.testing.assert_close(
        delta(read_lora(whole, MOE)[f"{Q}.weight"]), torch.kron(w1.double(), (k2a @ k2b).double())
    )


def test_locon_mid_equals_the_three_convolutions_in_a_row():
    gen = torch.Generator().manual_seed(3)
    down, mid, up = (
        torch.randn(3, 16, 1, 1, 1, generator=gen),
        torch.randn(3, 3, 1, 2, 2, generator=gen),
        torch.randn(64, 3, 1, 1, 1, generator=gen),
    )
    sd = {f"lora_unet_patch_embedding.lora_{n}.weight": t for n, t in (("down", down), ("mid", mid), ("up", up))}
    u = read_lora(sd, MOE)["patch_embedding.weight"]
    kernel = delta(u).reshape(MOE["patch_embedding.weight"]).float()
    x = torch.randn(1, 16, 2, 8, 8, generator=gen)
    chained = F.conv3d(F.conv3d(F.conv3d(x, down), mid, stride=(1, 2, 2)), up)
    torch.testing.assert_close(F.conv3d(x, kernel, stride=(1, 2, 2)), chained, rtol=1e-5, atol=1e-5)


def test_keys_of_an_i2v_lora_are_listed_in_one_warning(caplog):
    gen = torch.Generator().manual_seed(4)
    shapes = {"down": (4, 64), "up": (64, 4)}
    sd = {f"diffusion_model.blocks.{i}.cross_attn.{m}.lora_{s}.weight": torch.randn(*shapes[s], generator=gen)
          for i in range(2) for m in ("q", "k_img", "v_img") for s in ("down", "up")}  # fmt: skip
    sd.update(
        {
            "diffusion_model.blocks.0.cross_attn.norm_k_img.diff": torch.randn(64),
            "diffusion_model.img_emb.proj.1.diff_b": torch.randn(64),
            "diffusion_model.patch_embedding.diff": torch.randn(64, 36, 1, 2, 2),
        }
    )  # I2V: 36 input channels
    with caplog.at_level(logging.WARNING):
        updates = read_lora(sd, MOE, name="i2v.safetensors")
    assert sorted(updates) == ["blocks.0.cross_attn.q.weight", "blocks.1.cross_attn.q.weight"]
    (record,) = [r for r in caplog.records if r.levelno >= logging.WARNING]
    msg = record.getMessage()
    assert "i2v.safetensors: 11 of 15 keys are ignored" in msg and "10 fit no module" in msg and "k_img" in msg
    assert (
        "1 do not fit in shape (patch_embedding [64, 36, 1, 2, 2] vs patch_embedding.weight [64, 16, 1, 2, 2])" in msg
    )


@pytest.mark.parametrize(
    "sd,match",
    [
        ({"lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": torch.zeros(2, 8)}, "SDXL / SD1.5 keys"),
        ({"diffusion_model.double_blocks.0.img_attn.qkv.lora_A.weight": torch.zeros(2, 8)}, "Flux"),
        ({"transformer.double_blocks.0.img_attn_qkv.lora_A.weight": torch.zeros(2, 8)}, "HunyuanVideo"),
        ({"lora_te_text_model_encoder_layers_0_mlp_fc1.lora_down.weight": torch.zeros(2, 8)}, "text-encoder LoRA"),
        ({"diffusion_model.blocks.0.cross_attn.k_img.lora_A.weight": torch.zeros(2, 64)}, "Wan2.1 I2V image keys"),
        ({f"{Q}.lora_A.weight": torch.zeros(2, 5120), f"{Q}.lora_B.weight": torch.zeros(5120, 2)},
         r"a Wan LoRA for another model size \(blocks.0.self_attn.q \[5120, 5120\] vs .*q.weight \[64, 64\]"),
        ({"patch_embedding.weight": torch.zeros(8, 16, 1, 2, 2), "head.modulation": torch.zeros(1, 2, 8)},
         r"not a CoInteract finetune or LoRA but a full model \(Wan2.1/2.2 T2V"),
    ],
)  # fmt: skip
def test_a_file_that_fits_nothing_is_refused_with_what_it_looks_like(sd, match):
    with pytest.raises(LoRAError, match=match):
        read_lora(sd, MOE, name="other.safetensors")
    assert plan_lora({k: v.shape for k, v in sd.items()}, MOE, refuse=False).groups == {}


def test_malformed_and_unsupported_files_are_refused():
    with pytest.raises(LoRAError, match="lacks lora_up.weight"):
        read_lora({f"{Q}.lora_down.weight": torch.zeros(2, 64)}, MOE)
    with pytest.raises(LoRAError, match="GLoRA"):
        read_lora({f"{Q}.a1.weight": torch.zeros(2, 64), f"{Q}.a2.weight": torch.zeros(64, 2)}, MOE)
    with pytest.raises(LoRAError, match="two kinds of update"):
        mixed = {f"{Q}.diff": torch.zeros(64, 64), f"{Q}.lora_A.weight": torch.zeros(2, 64)}
        read_lora({**mixed, f"{Q}.lora_B.weight": torch.zeros(64, 2)}, MOE)


def test_format_names(factors):
    a, b, alpha = factors
    forms = _forms(a, b, alpha)
    names = {f: lora_format({k: v.shape for k, v in sd.items()}, meta)["format"] for f, (sd, meta) in forms.items()}
    assert names["kohya"] == names["comfy"] == "kohya" and names["peft_folded"] == "peft"
    assert names["diffusers_meta"] == "diffusers" and names["full_diff"] == "lightx2v"
    assert names["peft_default"] == "peft"  # prefixed: not the official CoInteract layout
    info = lora_format({k: v.shape for k, v in forms["diffusers_meta"][0].items()}, forms["diffusers_meta"][1])
    assert info["ranks"] == [4] and info["modules"] == 1 and info["alpha"] == "lora_adapter_metadata"
    official = {f"{Q}.lora_A.default.weight": (4, 64), f"{Q}.lora_B.default.weight": (64, 4)}
    assert lora_format(official)["format"] == "official"
    assert lora_format({f"{Q}.hada_w1_a": (64, 2), f"{Q}.hada_w1_b": (2, 64)})["format"] == "loha"
    assert lora_format({f"{Q}.lokr_w1": (4, 4)})["format"] == "lokr"


def test_updates_written_as_kohya_keys_parse_back_to_themselves(factors):
    a, b, alpha = factors
    sd = {**_forms(a, b, alpha)["kohya"][0], "diffusion_model.blocks.0.diff_m": torch.randn(1, 6, 64),
          "lycoris_blocks_1_self_attn_k.lokr_w1": torch.randn(8, 8),
          "lycoris_blocks_1_self_attn_k.lokr_w2": torch.randn(8, 8),
          "transformer.blocks.1.ffn.net.0.proj.lora_A.weight": torch.randn(2, 64),
          "transformer.blocks.1.ffn.net.0.proj.lora_B.weight": torch.randn(128, 2),
          "transformer.blocks.1.ffn.net.0.proj.lora_B.bias": torch.randn(128)}  # fmt: skip
    first = read_lora(sd, MOE, metadata={"lora_adapter_metadata": json.dumps({"lora_alpha": 1})})
    kohya, key_map = to_kohya_state_dict(first)
    assert key_map["blocks.1.ffn.0"] == "blocks.1.ffn.ffn_base.0.weight" and "blocks.0.modulation.diff" in kohya
    again = read_lora(kohya, MOE)
    assert sorted(again) == sorted(first)
    for key, u in first.items():
        torch.testing.assert_close(delta(again[key]), delta(u), rtol=0, atol=1e-12)
