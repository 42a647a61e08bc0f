"""fp8 weight storage: round trips, outputs within tolerance of bf16, ComfyUI fp8_scaled files, errors."""

from __future__ import annotations

import copy

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from comfyui_cointeract.cointeract_core.model.config import PRESETS
from comfyui_cointeract.cointeract_core.model.dit import CoInteractDiT
from comfyui_cointeract.cointeract_core.weights import fp8, fp8_load, lora
from comfyui_cointeract.cointeract_core.weights.checkpoint import load_dit, save_dit

E4M3 = torch.float8_e4m3fn


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().float(), b.detach().float()
    return float((a - b).norm() / b.norm())


def test_quantize_tensor_round_trip():
    w = torch.randn(64, 48, generator=torch.Generator().manual_seed(0)) * 0.02
    w8, scale = fp8.quantize_tensor(w)
    assert w8.dtype == E4M3 and scale.dtype == torch.float32 and scale.shape == ()
    assert float(w8.float().abs().max()) == fp8.FP8_MAX  # the largest |w| maps to 448
    back = w8.float() * scale
    assert float(((back - w) / w.abs().clamp_min(1e-3 * float(w.abs().max()))).abs().max()) < 2**-3
    assert rel_err(back, w) < 0.03
    z8, zs = fp8.quantize_tensor(torch.zeros(3, 3))  # zero-initialised experts: no division by zero
    assert float(zs) == 1.0 and not z8.float().any()


def test_fp8_linear_matches_bf16_linear():
    torch.manual_seed(0)
    dense = nn.Linear(96, 80).to(torch.bfloat16)
    q = fp8.FP8Linear.from_linear(dense)
    x = torch.randn(3, 7, 96, dtype=torch.bfloat16)
    assert (
        q.weight.dtype == E4M3 and q.bias.dtype == torch.bfloat16 and [n for n, _ in q.named_parameters()] == ["bias"]
    )
    assert rel_err(q(x), dense(x)) < 0.03
    assert set(q.state_dict()) == {"weight", "scale_weight", "bias"}
    exact = torch.nn.functional.linear(x, q.weight.to(torch.bfloat16) * q.scale_weight.to(torch.bfloat16), q.bias)
    torch.testing.assert_close(q(x), exact, rtol=0, atol=0)  # ComfyUI's scaled_fp8 rounding


def test_dtype_casts_keep_fp8_storage():
    q = fp8.FP8Linear.from_linear(nn.Linear(8, 4).to(torch.bfloat16))
    w8, scale = q.weight.clone(), q.scale_weight.clone()
    q.to(torch.float32)
    assert q.weight.dtype == E4M3 and torch.equal(q.weight.view(torch.uint8), w8.view(torch.uint8))
    assert (
        q.bias.dtype == torch.float32 and q.scale_weight.dtype == torch.float32 and torch.equal(q.scale_weight, scale)
    )
    q.half()
    assert q.weight.dtype == E4M3 and q.bias.dtype == torch.float16


@pytest.mark.parametrize("preset", ["tiny", "tiny_cointeract"])
def test_quantized_model_within_tolerance_of_bf16(preset, randomize, make_inputs):
    cfg = PRESETS[preset]
    model = randomize(CoInteractDiT(cfg)).eval().to(torch.bfloat16)
    inputs = make_inputs(cfg)
    with torch.no_grad():
        ref = model(**inputs)
        q = copy.deepcopy(model)
        names = fp8.quantize_model_fp8(q)
        out = q(**inputs)
    linears = [n for n, m in model.named_modules() if type(m) is nn.Linear and n.startswith(fp8.QUANTIZED_MODULES)]
    assert sorted(names) == sorted(linears) and all(isinstance(q.get_submodule(n), fp8.FP8Linear) for n in names)
    assert type(q.text_embedding[0]) is nn.Linear  # outside the quantised modules
    bytes_of = lambda m: sum(t.numel() * t.element_size() for t in [*m.parameters(), *m.buffers()])  # noqa: E731
    assert bytes_of(q.blocks) < 0.55 * bytes_of(model.blocks)
    assert rel_err(out.velocity, ref.velocity) < 0.05
    if cfg.hoi:
        assert rel_err(out.hoi_velocity, ref.hoi_velocity) < 0.05


def test_quantize_errors(ci_model):
    model = copy.deepcopy(ci_model)
    with pytest.raises(ValueError, match="no nn.Linear layers"):
        fp8.quantize_model_fp8(model, modules=("nothing.",))
    lora_sd = {
        "blocks.0.self_attn.q.lora_A.default.weight": torch.zeros(2, ci_model.cfg.dim),
        "blocks.0.self_attn.q.lora_B.default.weight": torch.zeros(ci_model.cfg.dim, 2),
    }
    lora.apply_lora_unmerged(model, lora_sd)
    with pytest.raises(ValueError, match="unmerged LoRA"):
        fp8.quantize_model_fp8(model)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="not available on cuda|no bf16"):
            fp8.check_fp8_support("cuda")


def comfy_fp8_scaled_file(model: nn.Module, path, scale_input: bool = False) -> dict[str, torch.Tensor]:
    """A file laid out as ComfyUI saves `*_fp8_scaled.safetensors`, written with the safetensors library."""
    sd, gen = {}, torch.Generator().manual_seed(3)
    for key, value in model.state_dict().items():
        owner = key.rpartition(".")[0]
        if key.endswith(".weight") and key.startswith("blocks.") and type(model.get_submodule(owner)) is nn.Linear:
            scale = value.float().abs().max() / 448 * (1 + float(torch.rand((), generator=gen)))  # any scale works
            sd[key] = (value.float() / scale).to(E4M3)
            sd[f"{owner}.scale_weight"] = scale.reshape(())
            if scale_input:
                sd[f"{owner}.scale_input"] = torch.ones(())
        else:
            sd[key] = value.to(torch.bfloat16)
    sd["scaled_fp8"] = torch.empty(0, dtype=E4M3)
    save_file({f"model.diffusion_model.{k}": v.contiguous() for k, v in sd.items()}, str(path))
    return sd


def test_merging_a_lora_into_fp8_weights_says_how_to_do_it(ci_model):
    model = copy.deepcopy(ci_model)
    fp8.quantize_model_fp8(model)
    lora_sd = {
        "blocks.0.self_attn.q.lora_A.default.weight": torch.ones(2, ci_model.cfg.dim),
        "blocks.0.self_attn.q.lora_B.default.weight": torch.ones(ci_model.cfg.dim, 2),
    }
    before = model.blocks[0].self_attn.q.weight.clone()
    with pytest.raises(ValueError, match="store their weights in fp8.*load_dit_fp8"):
        lora.merge_lora(model, lora_sd)
    assert torch.equal(model.blocks[0].self_attn.q.weight.view(torch.uint8), before.view(torch.uint8))  # untouched


@pytest.mark.parametrize("preset", ["tiny", "tiny_cointeract"])
def test_load_comfyui_fp8_scaled(preset, tmp_path, randomize, make_inputs):
    cfg = PRESETS[preset]
    src = randomize(CoInteractDiT(cfg)).eval()
    ref_path = tmp_path / "ref.safetensors"
    save_dit(src, ref_path)  # gives the metadata (cointeract_config) the loader reads
    from safetensors import safe_open

    with safe_open(str(ref_path), "pt") as f:
        on_disk = {k: f.get_tensor(k) for k in f.keys()}
    disk_model = copy.deepcopy(src)
    disk_model.load_state_dict(on_disk)
    path = tmp_path / "wan_fp8_scaled.safetensors"
    sd = comfy_fp8_scaled_file(disk_model, path, scale_input=True)
    meta_cfg = src.cfg
    dense = load_dit(path, cfg=meta_cfg)
    for key, value in sd.items():
        scale_key = key.removesuffix(".weight") + ".scale_weight"
        if scale_key in sd:  # ComfyUI's manual cast: weight.to(bf16) * scale.to(bf16)
            expected = value.to(torch.bfloat16) * sd[scale_key].to(torch.bfloat16)
            torch.testing.assert_close(dense.state_dict()[key], expected, rtol=0, atol=0)
    stored = fp8_load.load_dit_fp8(path, cfg=meta_cfg)
    for key, value in sd.items():
        if value.dtype == E4M3 and value.numel():
            assert torch.equal(stored.state_dict()[key].view(torch.uint8), value.view(torch.uint8)), key
            torch.testing.assert_close(
                stored.state_dict()[key.removesuffix("weight") + "scale_weight"],
                sd[key.removesuffix("weight") + "scale_weight"],
            )
    inputs = make_inputs(cfg)
    with torch.no_grad():  # same weights, same rounding: fp8 storage computes exactly what the dense load does
        torch.testing.assert_close(stored(**inputs).velocity, dense(**inputs).velocity, rtol=0, atol=0)


def test_load_dit_fp8_quantises_bf16_files_and_merges_lora(tmp_path, ci_model, make_inputs, ci_cfg):
    base = tmp_path / "base.safetensors"
    save_dit(ci_model, base)
    gen = torch.Generator().manual_seed(5)
    d, rank = ci_cfg.dim, 4
    lora_sd = {}
    for blk in range(ci_cfg.num_layers):
        for name, (n_out, n_in) in {"self_attn.q": (d, d), "ffn.ffn_base.0": (ci_cfg.ffn_dim, d)}.items():
            lora_sd[f"blocks.{blk}.{name}.lora_A.default.weight"] = torch.randn(rank, n_in, generator=gen) * 0.1
            lora_sd[f"blocks.{blk}.{name}.lora_B.default.weight"] = torch.randn(n_out, rank, generator=gen) * 0.1
    extra = tmp_path / "cointeract.safetensors"
    save_file(lora_sd, str(extra))
    dense = load_dit(base, extra)
    stored = fp8_load.load_dit_fp8(base, extra)
    assert isinstance(stored.blocks[0].self_attn.q, fp8.FP8Linear) and isinstance(
        stored.blocks[1].ffn.ffn_base[0], fp8.FP8Linear
    )
    assert rel_err(stored.blocks[0].self_attn.q.dequantized_weight(), dense.blocks[0].self_attn.q.weight) < 0.03
    inputs = make_inputs(ci_cfg)
    with torch.no_grad():
        assert rel_err(stored(**inputs).velocity, dense(**inputs).velocity) < 0.05


def test_fp8_state_dict_reloads_as_scaled_fp8(tmp_path, ci_model, make_inputs, ci_cfg):
    q = copy.deepcopy(ci_model).to(torch.bfloat16)
    fp8.quantize_model_fp8(q)
    sd = fp8.fp8_state_dict(q)
    assert sd["scaled_fp8"].dtype == E4M3 and sd["scaled_fp8"].numel() == 0
    path = tmp_path / "ours_fp8.safetensors"
    save_file({k: v.contiguous() for k, v in sd.items()}, str(path), metadata={"format": "pt"})
    again = fp8_load.load_dit_fp8(path, cfg=ci_cfg)
    inputs = make_inputs(ci_cfg)
    with torch.no_grad():
        torch.testing.assert_close(again(**inputs).velocity, q(**inputs).velocity, rtol=0, atol=0)
    with pytest.raises(ValueError, match="no FP8Linear"):
        fp8.fp8_state_dict(ci_model)


def test_scale_keys_without_marker_are_unexpected(tmp_path, ci_model):
    sd = {k: v for k, v in ci_model.state_dict().items()}
    sd["blocks.0.self_attn.q.scale_weight"] = torch.ones(())
    path = tmp_path / "no_marker.safetensors"
    save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    with pytest.raises(ValueError, match="unexpected keys.*scale_weight"):
        load_dit(path, cfg=ci_model.cfg)


@pytest.mark.gpu
def test_fp8_on_cuda_within_tolerance_of_bf16(ci_model, ci_cfg, make_inputs):
    model = copy.deepcopy(ci_model).to("cuda", torch.bfloat16)
    inputs = {k: v.cuda() if isinstance(v, torch.Tensor) else v for k, v in make_inputs(ci_cfg).items()}
    with torch.no_grad():
        ref = model(**inputs).velocity
        fp8.quantize_model_fp8(model)
        assert model.blocks[0].self_attn.q.weight.is_cuda
        assert rel_err(model(**inputs).velocity, ref) < 0.05
