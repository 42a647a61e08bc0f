"""Training config: TOML loading, presets, `--set` overrides, validation errors that name the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from comfyui_cointeract.train.config import LOSS_PRESETS, OFFICIAL_LORA_TARGETS
from comfyui_cointeract.train.config_load import apply_override, config_from_dict, load_config

EXAMPLE = Path(__file__).resolve().parents[2] / "train" / "example_config.toml"


def test_example_config_is_the_official_recipe():
    cfg = load_config(EXAMPLE)
    assert cfg.lora.rank == 128 and cfg.lora.alpha == 128 and cfg.lora.targets == OFFICIAL_LORA_TARGETS
    assert (cfg.loss.hoi_weight, cfg.loss.router_weight, cfg.loss.shift) == (0.5, 0.05, 5.0)
    assert (cfg.dropout.prompt, cfg.dropout.audio, cfg.dropout.motion, cfg.dropout.pose) == (0.1, 0.1, 0.4, 0.5)
    assert [(s.name, s.attention, s.steps) for s in cfg.stages] == [
        ("stage1", "full", 5000),
        ("stage2", "asymmetric", 2000),
    ]
    assert cfg.optim.weight_decay == 0.01 and cfg.optim.grad_clip == 1.0 and cfg.total_steps == 7000


def test_overrides_reach_every_field():
    cfg = load_config(
        EXAMPLE,
        [
            "stages.1.lr=2e-5",
            "loss.preset=paper",
            "lora.targets=['q', 'v']",
            "runtime.output_dir=elsewhere",
            "optim.betas=[0.8, 0.9]",
        ],
    )
    assert cfg.stages[1].lr == 2e-5 and cfg.stages[0].lr == 1e-5
    assert (cfg.loss.hoi_weight, cfg.loss.router_weight) == (1.0, 1.0)  # the preset replaced the official weights
    assert cfg.loss.shift == 5.0 and cfg.lora.targets == ("q", "v") and cfg.optim.betas == (0.8, 0.9)
    assert cfg.runtime.output_dir == "elsewhere"  # a bare word is taken as a string


def test_loss_preset_then_fields_and_per_stage_loss():
    raw = {
        "data": {"kind": "synthetic"},
        "loss": {"preset": "paper", "router_weight": 0.3},
        "stages": [{"name": "a", "attention": "full", "steps": 3, "loss": {"preset": "official"}}],
    }
    cfg = config_from_dict(raw)
    assert (cfg.loss.hoi_weight, cfg.loss.router_weight) == (1.0, 0.3)
    assert cfg.stage_loss(cfg.stages[0]) == LOSS_PRESETS["official"]


def test_stage_overrides_without_a_stages_table_start_from_the_defaults():
    raw = {"data": {"kind": "synthetic"}}
    apply_override(raw, "stages.0.steps=10")
    cfg = config_from_dict(raw)
    assert [s.steps for s in cfg.stages] == [10, 2000]


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (
            {"data": {"kind": "synthetic"}, "lora": {"rank": 4, "bogus": 1}},
            r"unknown key\(s\) \['bogus'\] in config.lora",
        ),
        ({"data": {"kind": "synthetic"}, "lora": {"rank": "4"}}, "config.lora.rank must be int"),
        ({"data": {"kind": "synthetic"}, "dropout": {"motion": 1.5}}, "dropout.motion must be a probability"),
        (
            {"data": {"kind": "synthetic"}, "stages": [{"name": "a", "attention": "diagonal", "steps": 1}]},
            r"config.stages.0.attention = 'diagonal'; choose one of \['full', 'asymmetric'\]",
        ),
        ({"data": {"kind": "synthetic"}, "loss": {"preset": "mine"}}, "loss.preset = 'mine'"),
        ({"data": {"kind": "cache"}}, "data.path is empty"),
        ({}, r"the \[data\] table is missing"),
        ({"data": {"kind": "synthetic"}, "stages": []}, "stages is empty"),
        ({"data": {"kind": "synthetic"}, "stages": [{"name": "a", "attention": "full"}]}, "steps"),
    ],
)
def test_bad_configs_name_the_problem(raw, message):
    with pytest.raises(ValueError, match=message):
        config_from_dict(raw)


def test_bad_override_and_bad_toml(tmp_path):
    with pytest.raises(ValueError, match="section.field=value"):
        apply_override({}, "no_equals_sign")
    with pytest.raises(ValueError, match="no item 5"):
        apply_override({"stages": [{}]}, "stages.5.lr=1")
    bad = tmp_path / "bad.toml"
    bad.write_text("[data\nkind = 1")
    with pytest.raises(ValueError, match="not valid TOML"):
        load_config(bad)
    with pytest.raises(FileNotFoundError):
        load_config(tmp_path / "missing.toml")


def test_config_to_toml_round_trips():
    import tomllib

    from comfyui_cointeract.train.config import config_to_toml

    cfg = load_config(EXAMPLE, ["stages.1.loss.preset=paper", "model.base=[]", "data.synthetic.seed=3"])
    assert config_from_dict(tomllib.loads(config_to_toml(cfg))) == cfg


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("model.preset=huge", r"model.preset = 'huge'; choose one of \['14B', '14B_cointeract', 'tiny', "),
        (
            "lora.targets=['q', 'qkv']",
            r"lora.targets \['qkv'\] match no linear layer of model.preset '14B_cointeract'.*'self_attn.q'",
        ),
    ],
)
def test_a_bad_preset_or_lora_target_fails_at_config_load_with_the_choices(override, message):
    with pytest.raises(ValueError, match=message):
        load_config(EXAMPLE, [override])


@pytest.fixture
def root_level():
    """`-v` sets the root logger to DEBUG for the process; put it back after the test."""
    import logging

    before = logging.getLogger().level
    yield
    logging.getLogger().setLevel(before)


def test_train_user_errors_are_one_line_and_v_adds_the_traceback(tmp_path, capsys, root_level):
    from comfyui_cointeract.cli import main as cli_main

    assert cli_main(["train", str(EXAMPLE), "--set", "lora.targets=['qkv']"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("cointeract train: lora.targets ['qkv'] match no linear layer")
    assert cli_main(["train", str(tmp_path / "missing.toml")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"cointeract train: training config {tmp_path / 'missing.toml'} does not exist"]
    assert cli_main(["train", str(EXAMPLE), "--set", "model.preset=huge", "-v"]) == 1
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and err.strip().splitlines()[-1].startswith(
        "cointeract train: model.preset = 'huge'"
    )


def test_cointeract_v_gives_the_traceback_in_a_real_process(tmp_path):
    import subprocess
    import sys

    command = [sys.executable, "-m", "comfyui_cointeract.cli", "train", str(EXAMPLE), "--set", "model.preset=huge"]
    plain = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert plain.returncode == 1 and "Traceback" not in plain.stderr
    assert plain.stderr.strip().splitlines() == [
        "cointeract train: model.preset = 'huge'; choose one of "
        "['14B', '14B_cointeract', 'tiny', 'tiny_cointeract', 'toy']"
    ]
    verbose = subprocess.run([*command[:3], "-v", *command[3:]], capture_output=True, text=True, timeout=120)
    assert verbose.returncode == 1 and "Traceback (most recent call last)" in verbose.stderr
