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
