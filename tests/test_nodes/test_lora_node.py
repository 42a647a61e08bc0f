"""CoInteract LoRA outside ComfyUI (FallbackPatcher): every layout patches a copy exactly as the core merge does,
chained nodes stack, the loaded weights never change, I2V extras warn once, foreign files are refused."""

from __future__ import annotations

import copy
import json
import logging
from pathlib import Path

import pytest
import torch

from comfyui_cointeract import NODE_CLASS_MAPPINGS
from comfyui_cointeract.cointeract_core.weights.lora_formats import LoRAError
from comfyui_cointeract.cointeract_core.weights.lora_stack import apply_loras
from comfyui_cointeract.cointeract_core.weights.safetensors_io import write_safetensors
from comfyui_cointeract.nodes import services

NODE = NODE_CLASS_MAPPINGS["CoInteractLoRA"]


def _files(shapes: dict[str, tuple[int, ...]]) -> dict[str, tuple[dict, dict]]:
    """A small LoRA of each layout for the model with parameter `shapes`: name -> (state dict, metadata)."""
    g = torch.Generator().manual_seed(0)

    def r(*s: int) -> torch.Tensor:
        return torch.randn(*s, generator=g) * 0.1

    dim, ffn = shapes["blocks.0.self_attn.q.weight"][0], shapes["blocks.1.ffn.ffn_base.0.weight"][0]
    q, dq = "blocks.0.self_attn.q", "transformer.blocks.0.attn1.to_out.0"
    meta = {"lora_adapter_metadata": json.dumps({"transformer.r": 4, "transformer.lora_alpha": 2})}
    hada = {f"lycoris_blocks_0_self_attn_v.hada_{n}": r(*s) for n, s in
            (("w1_a", (dim, 3)), ("w1_b", (3, dim)), ("w2_a", (dim, 3)), ("w2_b", (3, dim)))}  # fmt: skip
    return {
        "kohya": ({"lora_unet_blocks_1_ffn_0.lora_down.weight": r(4, dim), "lora_unet_blocks_1_ffn_0.lora_up.weight":
                   r(ffn, 4), "lora_unet_blocks_1_ffn_0.alpha": torch.tensor(8.0)}, {}),
        "peft": ({f"diffusion_model.{q}.lora_A.default.weight": r(4, dim),
                  f"diffusion_model.{q}.lora_B.default.weight": r(dim, 4)}, {}),
        "diffusers": ({f"{dq}.lora_A.weight": r(4, dim), f"{dq}.lora_B.weight": r(dim, 4), f"{dq}.lora_B.bias": r(dim),
                       "transformer.blocks.1.norm2.diff_b": r(dim), "transformer.proj_out.lora_A.weight": r(2, dim),
                       "transformer.proj_out.lora_B.weight": r(shapes["head.head.weight"][0], 2)}, meta),
        "lightx2v": ({f"diffusion_model.{q}.lora_down.weight": r(4, dim),
                      f"diffusion_model.{q}.lora_up.weight": r(dim, 4), f"diffusion_model.{q}.diff_b": r(dim),
                      "diffusion_model.blocks.0.diff_m": r(1, 6, dim),
                      "diffusion_model.head.diff_m": r(1, 2, dim), "diffusion_model.blocks.1.norm3.diff": r(dim)}, {}),
        "loha": ({**hada, "lycoris_blocks_0_self_attn_v.alpha": torch.tensor(1.5)}, {}),
        "lokr": ({f"{q}.lokr_w1": r(4, 8), f"{q}.lokr_w2_a": r(dim // 4, 2), f"{q}.lokr_w2_b": r(2, dim // 8),
                  f"{q}.alpha": torch.tensor(1.0)}, {}),
        "i2v": ({f"diffusion_model.{q}.lora_down.weight": r(4, dim), f"diffusion_model.{q}.lora_up.weight": r(dim, 4),
                 "diffusion_model.blocks.0.cross_attn.k_img.lora_down.weight": r(4, dim),
                 "diffusion_model.blocks.0.cross_attn.k_img.lora_up.weight": r(dim, 4),
                 "diffusion_model.img_emb.proj.1.diff_b": r(dim)}, {}),
        "flux": ({"diffusion_model.double_blocks.0.img_attn.qkv.lora_A.weight": r(4, dim)}, {}),
    }  # fmt: skip


def run(**kwargs):
    return NODE().apply(**kwargs)[0]


@pytest.fixture
def setup(model_files: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """(model loaded by CoInteract Model Loader with MoE + HOI, {layout: path}) with the LoRAs in models/loras."""
    for folder in ("diffusion_models", "cointeract"):
        (tmp_path / folder).symlink_to(model_files / folder)
    (tmp_path / "loras").mkdir()
    monkeypatch.setattr(services, "comfy_available", lambda: False)
    monkeypatch.setenv(services.MODELS_DIR_ENV, str(tmp_path))
    loader = NODE_CLASS_MAPPINGS["CoInteractModelLoader"]()
    model = loader.load("base.safetensors", "ckpt.safetensors", 1.0, "fp32", "sdpa")[0]
    paths = {}
    for name, (sd, meta) in _files({k: tuple(v.shape) for k, v in model.model.named_parameters()}).items():
        paths[name] = tmp_path / "loras" / f"{name}.safetensors"
        write_safetensors(paths[name], sd, meta)
    return model, paths


def _patched_weights(patcher) -> dict[str, torch.Tensor]:
    dit = services.load_model(patcher)
    weights = {k: v.detach().clone() for k, v in dit.state_dict().items()}
    services.release_model(patcher)
    return weights


def test_inputs_keep_their_order_and_all_have_tooltips():
    required = NODE.INPUT_TYPES()["required"]
    assert list(required) == ["model", "lora_name", "strength"]
    assert all(spec[1].get("tooltip") for spec in required.values())


@pytest.mark.parametrize("layout", ["kohya", "peft", "diffusers", "lightx2v", "loha", "lokr"])
def test_every_layout_patches_a_copy_exactly_as_the_core_merge(setup, layout):
    model, paths = setup
    before = {k: v.clone() for k, v in model.model.state_dict().items()}
    patched = run(model=model, lora_name=f"{layout}.safetensors", strength=0.7)
    assert patched is not model and not model.patches
    got = _patched_weights(patched)
    reference = copy.deepcopy(model.model)
    changed = apply_loras(reference, [(paths[layout], 0.7)])
    assert changed and sorted(patched.patches) == changed
    assert all(torch.equal(got[k], v) for k, v in reference.state_dict().items())
    assert all(torch.equal(v, before[k]) for k, v in model.model.state_dict().items()), "loaded weights changed"


def test_chained_nodes_stack_their_strengths(setup):
    model, paths = setup
    chained = run(model=run(model=model, lora_name="lightx2v.safetensors", strength=0.5),
                  lora_name="peft.safetensors", strength=-0.3)  # fmt: skip
    reference = copy.deepcopy(model.model)
    apply_loras(reference, [(paths["lightx2v"], 0.5), (paths["peft"], -0.3)])
    got = _patched_weights(chained)
    assert all(torch.equal(got[k], v) for k, v in reference.state_dict().items())
    assert run(model=model, lora_name="flux.safetensors", strength=0.0) is model  # strength 0: not even read


def test_i2v_extras_warn_once_and_foreign_files_are_refused(setup, caplog):
    model, _ = setup
    with caplog.at_level(logging.WARNING):
        patched = run(model=model, lora_name="i2v.safetensors", strength=1.0)
    assert sorted(patched.patches) == ["blocks.0.self_attn.q.weight"]
    (warning,) = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert "i2v.safetensors: 3 of 5 keys are ignored" in warning and "cross_attn.k_img" in warning
    with pytest.raises(LoRAError, match="flux.safetensors does not fit this model.*Flux"):
        run(model=model, lora_name="flux.safetensors", strength=1.0)
