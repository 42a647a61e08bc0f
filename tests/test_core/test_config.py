"""Config: presets, JSON round trip, and inference from state-dict shapes."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from comfyui_cointeract.cointeract_core.model.config import (
    PRESETS,
    DiTConfig,
    config_from_json,
    config_to_json,
    from_state_dict,
)
from comfyui_cointeract.cointeract_core.model.dit import CoInteractDiT


def _meta_shapes(cfg: DiTConfig) -> dict[str, tuple[int, ...]]:
    with torch.device("meta"):
        return {k: tuple(v.shape) for k, v in CoInteractDiT(cfg).state_dict().items()}


@pytest.mark.parametrize("name", ["14B", "14B_cointeract"])
def test_infers_14B_from_shapes_alone(name):
    assert from_state_dict(_meta_shapes(PRESETS[name])) == PRESETS[name]


def test_infers_tiny_with_metadata(wan_fixture):
    shapes = {k[6:]: tuple(v.shape) for k, v in wan_fixture.items() if k.startswith("param.")}
    meta = {"config": '{"num_heads": 2, "text_len": 32, "audio_inject_layers": [0, 1]}'}
    assert from_state_dict(shapes, meta) == PRESETS["tiny"]


def test_infers_paper_variant_and_sizes():
    cfg = dataclasses.replace(
        PRESETS["tiny_cointeract"],
        moe=dataclasses.replace(PRESETS["tiny_cointeract"].moe, experts="paper", expert_dim=12),
    )
    meta = {"cointeract_config": config_to_json(cfg)}
    assert from_state_dict(_meta_shapes(cfg), meta) == cfg


def test_json_round_trip():
    for cfg in PRESETS.values():
        assert config_from_json(config_to_json(cfg)) == cfg


def test_non_s2v_state_dict_is_refused():
    with pytest.raises(ValueError, match="not a Wan2.2-S2V"):
        from_state_dict({"patch_embedding.weight": (5120, 16, 1, 2, 2), "blocks.0.ffn.0.weight": (13824, 5120)})


def test_ambiguous_injectors_need_metadata():
    shapes = _meta_shapes(dataclasses.replace(PRESETS["tiny"], num_layers=3, audio_inject_layers=(1, 2)))
    with pytest.raises(ValueError, match="audio injectors"):
        from_state_dict(shapes)


def test_invalid_configs_raise():
    with pytest.raises(ValueError, match="divisible"):
        DiTConfig(dim=100, num_heads=3)
    with pytest.raises(ValueError, match="audio_inject_layers"):
        DiTConfig(num_layers=2, audio_inject_layers=(0, 5))


def test_a_callers_config_fills_what_the_file_cannot_tell():
    cfg = dataclasses.replace(PRESETS["tiny"], num_layers=3, audio_inject_layers=(1, 2))
    assert from_state_dict(_meta_shapes(cfg), hint=cfg) == cfg
    shapes = _meta_shapes(cfg)
    metadata = {"config": '{"audio_inject_layers": [1, 2], "num_heads": 4}'}  # the file's own metadata wins
    assert from_state_dict(shapes, metadata, hint=dataclasses.replace(cfg, num_heads=2)).num_heads == 4


def test_unreadable_head_count_and_text_length_are_warned(caplog):
    cfg = dataclasses.replace(PRESETS["tiny"], audio_inject_layers=(0, 1))
    with caplog.at_level("WARNING"):
        guessed = from_state_dict(_meta_shapes(cfg))
    warned = " ".join(r.getMessage() for r in caplog.records)
    assert "num_heads" in warned and "text_len" in warned and guessed.text_len == 512
    caplog.clear()
    with caplog.at_level("WARNING"):
        from_state_dict(_meta_shapes(PRESETS["14B"]))  # the 14B width: the published values, no guess
    assert not caplog.records


def test_load_dit_uses_the_callers_config_when_the_metadata_lacks_it(tmp_path):
    from safetensors.torch import save_file

    from comfyui_cointeract.cointeract_core.weights.checkpoint import load_dit

    cfg = dataclasses.replace(PRESETS["tiny"], num_layers=3, audio_inject_layers=(1, 2))
    torch.manual_seed(0)
    model = CoInteractDiT(cfg)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, tmp_path / "dit.safetensors")
    with pytest.raises(ValueError, match="pass cfg"):
        load_dit(tmp_path / "dit.safetensors", dtype=torch.float32)
    loaded = load_dit(tmp_path / "dit.safetensors", dtype=torch.float32, cfg=cfg)
    assert loaded.cfg == cfg and torch.equal(loaded.blocks[1].ffn[0].weight, model.blocks[1].ffn[0].weight)
