"""A few hundred steps on generated data whose hand / face tokens carry a latent pattern: the router learns them
(held-out recall well above the class prior) and the flow loss falls."""

from __future__ import annotations

import pytest

from comfyui_cointeract.cointeract_core.model.config import PRESETS
from comfyui_cointeract.train.builders import build_model, load_start_checkpoint
from comfyui_cointeract.train.config import SyntheticConfig
from comfyui_cointeract.train.evaluate import evaluate
from comfyui_cointeract.train.loop import train
from comfyui_cointeract.train.lora_peft import inject_lora
from comfyui_cointeract.train.synthetic import smoke_config, synthetic_dataset

pytestmark = pytest.mark.usefixtures("one_thread_per_module")


@pytest.mark.slow
def test_router_learns_hand_and_face_and_flow_loss_falls(tmp_path):
    cfg = smoke_config(
        tmp_path,
        (150, 150),
        lr=2e-3,
        data={"synthetic": SyntheticConfig(num_samples=32)},
        runtime={"checkpoint_every": 1000},
        optim={"warmup_steps": 10},
    )
    held_out = synthetic_dataset(PRESETS["tiny_cointeract"], SyntheticConfig(num_samples=24, seed=99))

    def model_from(export=None):
        model = build_model(cfg.model)
        inject_lora(model, cfg.lora)
        if export is not None:
            load_start_checkpoint(model, str(export), cfg.lora)
        return model

    before = evaluate(model_from(), held_out, cfg.stages[1], cfg.loss)
    result = train(cfg)
    after = evaluate(model_from(result.exports[-1]), held_out, cfg.stages[1], cfg.loss)
    rows = [
        (f"router recall {n}", f"router_recall_{n}", f"{after[f'router_prior_{n}']:.3f}")
        for n in ("hand", "face", "base")
    ]
    rows += [
        ("router balanced accuracy", "router_balanced_acc", "0.333 (chance)"),
        ("flow loss w(t)·MSE", "flow", ""),
        ("HOI loss", "hoi", ""),
        ("router CE", "router", ""),
    ]
    print(f"\n{'held-out: 24 samples, shift-5 timesteps':<40} before  after  class prior")
    for label, key, prior in rows:
        print(f"  {label:<38} {before[key]:.3f}   {after[key]:.3f}  {prior}")
    for name in ("hand", "face"):
        recall, prior = after[f"router_recall_{name}"], after[f"router_prior_{name}"]
        assert recall > max(0.4, 4 * prior), (name, recall, prior)
    assert after["router_balanced_acc"] > before["router_balanced_acc"] + 0.2
    assert after["router"] < 0.8 * before["router"]
    assert after["flow"] < 0.85 * before["flow"] and after["hoi"] < 0.85 * before["hoi"]
